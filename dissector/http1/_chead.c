/* dissector.http1._chead: one HTTP/1 head (start line + header block) parsed in C.
 *
 * The compiled twin of dissector/http1/_head.py:py_parse_head (the pure-Python reference,
 * which stays the fallback and the test oracle): same input, same tuple, same error text.
 *
 *   parse_head(buf, end, is_request) -> tuple | str
 *
 * buf[:end] is the head without its final CRLFCRLF. A request gives
 * (method, target, version, headers, content_length or None, chunked), a response
 * (status, reason, version, headers, content_length or None, chunked); headers is a tuple of
 * (name, value) str pairs (latin-1, values stripped of SP/HTAB). A malformed head gives the
 * error message (str) instead. Rules, in the order the reference applies them:
 *   1. the block after the start line, with a CRLF appended, is split at CRLF; each line must
 *      hold a ':' with a non-empty name before it that does not end in SP/HTAB, and no CR or
 *      LF: else "bad HTTP/1 header line <repr(line[:40])>";
 *   2. each Content-Length (name matched ASCII case-insensitively): ASCII digits, at most 18,
 *      else "bad Content-Length <repr(value[:20])>"; a different second value:
 *      "conflicting Content-Length headers";
 *   3. the last Transfer-Encoding: chunked when its last comma-separated coding is "chunked";
 *   4. request line: exactly three space-separated parts, a known method, HTTP/1.<digit>;
 *      status line: HTTP/1.<digit> SP three ASCII digits, >= 100; reason = from offset 13.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static const char *const METHODS[] = {"GET", "POST", "PUT", "DELETE", "HEAD",
                                      "OPTIONS", "PATCH", "CONNECT", "TRACE"};
#define N_METHODS 9
static PyObject *method_str[N_METHODS];
static PyObject *version_str[10];

static inline int is_ows(unsigned char c) { return c == ' ' || c == '\t'; }

static inline unsigned char lower(unsigned char c) {
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

static int eq_nocase(const unsigned char *p, Py_ssize_t n, const char *lit) {
    Py_ssize_t m = (Py_ssize_t)strlen(lit);
    if (n != m) return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower(p[i]) != (unsigned char)lit[i]) return 0;
    return 1;
}

static PyObject *latin1(const unsigned char *p, Py_ssize_t n) {
    return PyUnicode_DecodeLatin1((const char *)p, n, NULL);
}

/* "<prefix><repr(text)>" where text is p[:min(n, cap)] as latin-1 str (or bytes). */
static PyObject *error_repr(const char *prefix, const unsigned char *p, Py_ssize_t n,
                            Py_ssize_t cap, int as_bytes) {
    if (n > cap) n = cap;
    PyObject *obj = as_bytes ? PyBytes_FromStringAndSize((const char *)p, n) : latin1(p, n);
    if (obj == NULL) return NULL;
    PyObject *r = PyObject_Repr(obj);
    Py_DECREF(obj);
    if (r == NULL) return NULL;
    PyObject *msg = PyUnicode_FromFormat("%s%U", prefix, r);
    Py_DECREF(r);
    return msg;
}

/* First "\r\n" in p[from:n], or -1. */
static Py_ssize_t find_crlf(const unsigned char *p, Py_ssize_t from, Py_ssize_t n) {
    while (from + 1 < n) {
        const unsigned char *q = memchr(p + from, '\r', (size_t)(n - from - 1));
        if (q == NULL) return -1;
        Py_ssize_t i = q - p;
        if (p[i + 1] == '\n') return i;
        from = i + 1;
    }
    return -1;
}

typedef struct {
    Py_ssize_t vs, ve; /* value, stripped */
} Span;

static PyObject *parse(const unsigned char *p, Py_ssize_t n, int is_request) {
    Py_ssize_t s_end = find_crlf(p, 0, n);
    Py_ssize_t b0 = s_end < 0 ? n : s_end + 2; /* block = p[b0:n] */
    if (s_end < 0) s_end = n;
    PyObject *headers = NULL, *length = NULL, *result = NULL;
    int chunked = 0;
    Span cl_stack[8], *cl = cl_stack;
    Py_ssize_t n_cl = 0, cap_cl = 8;
    Py_ssize_t te_vs = -1, te_ve = -1;

    if (b0 < n) {
        /* Lines of block + "\r\n": pieces between CRLFs, the last ending at the appended one. */
        PyObject *list = PyList_New(0);
        if (list == NULL) return NULL;
        Py_ssize_t pos = b0;
        for (;;) {
            Py_ssize_t ls = pos, le;
            Py_ssize_t c = find_crlf(p, pos, n);
            int last = c < 0;
            le = last ? n : c;
            /* validate: a ':' with a good name before it, no CR/LF anywhere */
            const unsigned char *colon = memchr(p + ls, ':', (size_t)(le - ls));
            int bad = colon == NULL || colon == p + ls || is_ows(colon[-1]) ||
                      memchr(p + ls, '\r', (size_t)(le - ls)) != NULL ||
                      memchr(p + ls, '\n', (size_t)(le - ls)) != NULL;
            if (bad) {
                Py_DECREF(list);
                if (cl != cl_stack) PyMem_Free(cl);
                return error_repr("bad HTTP/1 header line ", p + ls, le - ls, 40, 0);
            }
            Py_ssize_t ce = colon - p, vs = ce + 1, ve = le;
            while (vs < ve && is_ows(p[vs])) vs++;
            while (ve > vs && is_ows(p[ve - 1])) ve--;
            PyObject *name = latin1(p + ls, ce - ls);
            PyObject *value = name ? latin1(p + vs, ve - vs) : NULL;
            PyObject *pair = value ? PyTuple_Pack(2, name, value) : NULL;
            Py_XDECREF(name);
            Py_XDECREF(value);
            if (pair == NULL || PyList_Append(list, pair) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(list);
                if (cl != cl_stack) PyMem_Free(cl);
                return NULL;
            }
            Py_DECREF(pair);
            if (ce - ls == 14 && eq_nocase(p + ls, 14, "content-length")) {
                if (n_cl == cap_cl) {
                    Span *grown = PyMem_Malloc(sizeof(Span) * (size_t)(cap_cl * 2));
                    if (grown == NULL) {
                        Py_DECREF(list);
                        if (cl != cl_stack) PyMem_Free(cl);
                        return PyErr_NoMemory();
                    }
                    memcpy(grown, cl, sizeof(Span) * (size_t)n_cl);
                    if (cl != cl_stack) PyMem_Free(cl);
                    cl = grown;
                    cap_cl *= 2;
                }
                cl[n_cl].vs = vs;
                cl[n_cl].ve = ve;
                n_cl++;
            } else if (ce - ls == 17 && eq_nocase(p + ls, 17, "transfer-encoding")) {
                te_vs = vs;
                te_ve = ve;
            }
            if (last) break;
            pos = c + 2;
        }
        headers = PyList_AsTuple(list);
        Py_DECREF(list);
        if (headers == NULL) {
            if (cl != cl_stack) PyMem_Free(cl);
            return NULL;
        }
        long long have = -1;
        for (Py_ssize_t k = 0; k < n_cl; k++) {
            Py_ssize_t vs = cl[k].vs, ve = cl[k].ve;
            int ok = ve > vs && ve - vs <= 18;
            long long v = 0;
            for (Py_ssize_t i = vs; ok && i < ve; i++) {
                if (p[i] < '0' || p[i] > '9') ok = 0;
                else v = v * 10 + (p[i] - '0');
            }
            if (!ok) {
                result = error_repr("bad Content-Length ", p + vs, ve - vs, 20, 0);
                goto done;
            }
            if (have >= 0 && have != v) {
                result = PyUnicode_FromString("conflicting Content-Length headers");
                goto done;
            }
            have = v;
        }
        if (have >= 0 && (length = PyLong_FromLongLong(have)) == NULL) goto done;
        if (te_vs >= 0) {
            Py_ssize_t s = te_vs;
            for (Py_ssize_t i = te_ve - 1; i >= te_vs; i--)
                if (p[i] == ',') { s = i + 1; break; }
            Py_ssize_t e = te_ve;
            while (s < e && is_ows(p[s])) s++;
            while (e > s && is_ows(p[e - 1])) e--;
            chunked = eq_nocase(p + s, e - s, "chunked");
        }
    } else {
        headers = PyTuple_New(0);
        if (headers == NULL) return NULL;
    }
    if (length == NULL) {
        length = Py_None;
        Py_INCREF(length);
    }

    if (is_request) {
        const unsigned char *sp1 = memchr(p, ' ', (size_t)s_end);
        const unsigned char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(p + s_end - sp1 - 1)) : NULL;
        const unsigned char *sp3 = sp2 ? memchr(sp2 + 1, ' ', (size_t)(p + s_end - sp2 - 1)) : NULL;
        PyObject *method = NULL, *version = NULL;
        if (sp2 != NULL && sp3 == NULL) {
            Py_ssize_t ml = sp1 - p;
            for (int k = 0; k < N_METHODS; k++)
                if ((Py_ssize_t)strlen(METHODS[k]) == ml && memcmp(p, METHODS[k], (size_t)ml) == 0) {
                    method = method_str[k];
                    break;
                }
            const unsigned char *v = sp2 + 1;
            if (p + s_end - v == 8 && memcmp(v, "HTTP/1.", 7) == 0 && v[7] >= '0' && v[7] <= '9')
                version = version_str[v[7] - '0'];
        }
        if (method == NULL || version == NULL) {
            result = error_repr("bad HTTP/1 request line ", p, s_end, 60, 1);
            goto done;
        }
        PyObject *target = latin1(sp1 + 1, sp2 - sp1 - 1);
        if (target == NULL) goto done;
        result = PyTuple_Pack(6, method, target, version, headers, length,
                              chunked ? Py_True : Py_False);
        Py_DECREF(target);
    } else {
        int ok = s_end >= 12 && memcmp(p, "HTTP/1.", 7) == 0 && p[7] >= '0' && p[7] <= '9' &&
                 p[8] == ' ';
        for (int i = 9; ok && i < 12; i++)
            if (p[i] < '0' || p[i] > '9') ok = 0;
        if (!ok) {
            result = error_repr("bad HTTP/1 status line ", p, s_end, 60, 1);
            goto done;
        }
        long status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
        if (status < 100) {
            result = PyUnicode_FromFormat("bad HTTP/1 status %ld", status);
            goto done;
        }
        PyObject *st = PyLong_FromLong(status);
        PyObject *reason = st ? latin1(p + (s_end > 13 ? 13 : s_end), s_end > 13 ? s_end - 13 : 0)
                              : NULL;
        if (reason != NULL)
            result = PyTuple_Pack(6, st, reason, version_str[p[7] - '0'], headers, length,
                                  chunked ? Py_True : Py_False);
        Py_XDECREF(st);
        Py_XDECREF(reason);
    }
done:
    if (cl != cl_stack) PyMem_Free(cl);
    Py_XDECREF(headers);
    Py_XDECREF(length);
    return result;
}

static PyObject *parse_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "parse_head(buf, end, is_request)");
        return NULL;
    }
    Py_ssize_t end = PyLong_AsSsize_t(args[1]);
    if (end == -1 && PyErr_Occurred()) return NULL;
    int is_request = PyObject_IsTrue(args[2]);
    if (is_request < 0) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    if (end < 0 || end > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "end is outside the buffer");
        return NULL;
    }
    PyObject *r = parse((const unsigned char *)view.buf, end, is_request);
    PyBuffer_Release(&view);
    return r;
}

static PyMethodDef methods[] = {
    {"parse_head", (PyCFunction)(void (*)(void))parse_head, METH_FASTCALL,
     "parse_head(buf, end, is_request) -> tuple | str: one HTTP/1 head (see _head.py)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_chead",
                                    "HTTP/1 head parsing in C (twin of _head.py)", -1, methods};

PyMODINIT_FUNC PyInit__chead(void) {
    for (int k = 0; k < N_METHODS; k++) {
        method_str[k] = PyUnicode_InternFromString(METHODS[k]);
        if (method_str[k] == NULL) return NULL;
    }
    for (int k = 0; k < 10; k++) {
        char v[9];
        snprintf(v, sizeof v, "HTTP/1.%d", k);
        version_str[k] = PyUnicode_InternFromString(v);
        if (version_str[k] == NULL) return NULL;
    }
    return PyModule_Create(&module);
}
