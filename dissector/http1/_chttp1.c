/* dissector.http1._chttp1: the HTTP/1 reader in C.
 *
 * The compiled twin of dissector/http1/_parser.py:PyHTTP1Reader and of
 * dissector/http1/_head.py:py_parse_head (the pure-Python references, which stay the
 * fallback and the test oracle): same input, same events and state, same error text.
 * tests/dissector/test_http1_twin.py and test_http1_head.py hold them to that.
 * longer than 600 lines: one extension module is one C file (the head parser and the reader
 * share their tables and the event constructors), and it mirrors two Python modules.
 *
 * Part 1, parse_head:
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
#include <structmember.h>
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

/* ---------------------------------------------------------------------------------------
 * Part 2, Reader: dissector/http1/_parser.py:PyHTTP1Reader, method by method.
 *
 * Python objects it needs (event classes, errors, NEED_DATA, the State members, the
 * resync patterns) are handed over once by setup(); events are built by filling their
 * slots directly (what _events.py's new_* functions do from Python).
 * ------------------------------------------------------------------------------------- */

enum { S_IDLE, S_BODY_LENGTH, S_CHUNK_SIZE, S_CHUNK_DATA, S_TRAILERS, S_BODY_EOF, S_SWITCHED,
       S_RESYNC, S_ERROR, N_STATES };
enum { W_HEAD_NO_BODY, W_HEAD_LENGTH, W_HEAD_CHUNKED, W_HEAD_EOF, W_SWITCH, W_BODY_DONE, W_CHUNK,
       W_LAST_CHUNK, W_CHUNK_DONE, W_TRAILERS_DONE, W_EOF, W_FOUND, W_GAP, W_MALFORMED,
       W_GAP_IN_BODY };
static const char *const WHAT[] = {"head-no-body", "head-length", "head-chunked", "head-eof",
                                   "switch", "body-done", "chunk", "last-chunk", "chunk-done",
                                   "trailers-done", "eof", "found", "gap", "malformed",
                                   "gap-in-body"};

#define MAX_HEAD (64 * 1024)
#define MAX_LINE 4096
#define FAR ((long long)1 << 62) /* a chunk size beyond this is never reached */

/* dissector/http1/_state.py's table; a pair it does not hold is a parser bug: KeyError. */
static int step(int st, int what) {
    switch (what) {
    case W_GAP: return st == S_SWITCHED ? S_SWITCHED : S_RESYNC;
    case W_MALFORMED: return S_ERROR;
    case W_HEAD_NO_BODY: if (st == S_IDLE) return S_IDLE; break;
    case W_HEAD_LENGTH: if (st == S_IDLE) return S_BODY_LENGTH; break;
    case W_HEAD_CHUNKED: if (st == S_IDLE) return S_CHUNK_SIZE; break;
    case W_HEAD_EOF: if (st == S_IDLE) return S_BODY_EOF; break;
    case W_SWITCH: if (st == S_IDLE) return S_SWITCHED; break;
    case W_BODY_DONE: if (st == S_BODY_LENGTH) return S_IDLE; break;
    case W_CHUNK: if (st == S_CHUNK_SIZE) return S_CHUNK_DATA; break;
    case W_LAST_CHUNK: if (st == S_CHUNK_SIZE) return S_TRAILERS; break;
    case W_CHUNK_DONE: if (st == S_CHUNK_DATA) return S_CHUNK_SIZE; break;
    case W_TRAILERS_DONE: if (st == S_TRAILERS) return S_IDLE; break;
    case W_EOF: if (st == S_BODY_EOF) return S_IDLE; break;
    case W_FOUND: if (st == S_RESYNC) return S_IDLE; break;
    case W_GAP_IN_BODY: if (st == S_BODY_LENGTH || st == S_BODY_EOF) return st; break;
    }
    PyErr_Format(PyExc_KeyError, "no HTTP/1 transition for state %d on %s", st, WHAT[what]);
    return -1;
}

typedef struct {
    PyTypeObject *cls;
    Py_ssize_t off[6];
    int n;
} EventClass;

static EventClass ev_request, ev_response, ev_end, ev_resync;
static PyObject *Malformed, *Truncated, *NEED_DATA, *STATES[N_STATES], *REQ_START, *RESP_START;
static PyObject *str_CLIENT, *str_SERVER, *str_CONNECT, *str_HEAD, *empty_bytes;
static int ready = 0;

static int event_class(EventClass *ec, PyObject *cls, int n) {
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "event class expected");
        return -1;
    }
    PyObject *slots = PyObject_GetAttrString(cls, "__slots__");
    if (slots == NULL) return -1;
    PyObject *seq = PySequence_Fast(slots, "__slots__ is not a sequence");
    Py_DECREF(slots);
    if (seq == NULL) return -1;
    if (PySequence_Fast_GET_SIZE(seq) != n) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_TypeError, "%R: expected %d slots", cls, n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        PyObject *d = PyDict_GetItemWithError(((PyTypeObject *)cls)->tp_dict,
                                              PySequence_Fast_GET_ITEM(seq, i));
        if (d == NULL || !PyObject_TypeCheck(d, &PyMemberDescr_Type)) {
            Py_DECREF(seq);
            if (!PyErr_Occurred()) PyErr_Format(PyExc_TypeError, "%R: slot %d is not a member", cls, i);
            return -1;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_TypeError, "%R: slot %d is not an object slot", cls, i);
            return -1;
        }
        ec->off[i] = m->offset;
    }
    Py_DECREF(seq);
    Py_INCREF(cls);
    ec->cls = (PyTypeObject *)cls;
    ec->n = n;
    return 0;
}

/* An event with its slots filled from vals (references stolen, NULLs mean failure). */
static PyObject *make_event(EventClass *ec, PyObject **vals) {
    PyObject *o = NULL;
    for (int i = 0; i < ec->n; i++)
        if (vals[i] == NULL) goto fail;
    o = ec->cls->tp_alloc(ec->cls, 0);
    if (o == NULL) goto fail;
    for (int i = 0; i < ec->n; i++) {
        PyObject **slot = (PyObject **)((char *)o + ec->off[i]);
        Py_XSETREF(*slot, vals[i]);
        vals[i] = NULL;
    }
    return o;
fail:
    for (int i = 0; i < ec->n; i++) Py_XDECREF(vals[i]);
    return NULL;
}

static PyObject *setup(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *req, *resp, *end, *resync, *malformed, *truncated, *need, *states, *rq, *rs;
    PyObject *client, *server;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOO", &req, &resp, &end, &resync, &malformed,
                          &truncated, &need, &states, &rq, &rs, &client, &server))
        return NULL;
    if (event_class(&ev_request, req, 6) < 0 || event_class(&ev_response, resp, 6) < 0 ||
        event_class(&ev_end, end, 4) < 0 || event_class(&ev_resync, resync, 2) < 0)
        return NULL;
    if (!PyTuple_Check(states) || PyTuple_GET_SIZE(states) != N_STATES) {
        PyErr_SetString(PyExc_TypeError, "states: a tuple of the 9 State members in order");
        return NULL;
    }
    for (int i = 0; i < N_STATES; i++) {
        STATES[i] = PyTuple_GET_ITEM(states, i);
        Py_INCREF(STATES[i]);
    }
    Malformed = malformed; Truncated = truncated; NEED_DATA = need;
    REQ_START = rq; RESP_START = rs; str_CLIENT = client; str_SERVER = server;
    Py_INCREF(malformed); Py_INCREF(truncated); Py_INCREF(need); Py_INCREF(rq); Py_INCREF(rs);
    Py_INCREF(client); Py_INCREF(server);
    ready = 1;
    Py_RETURN_NONE;
}

typedef struct {
    PyObject_HEAD
    PyObject *role;
    int client;
    int state;
    PyObject *buf;     /* bytearray */
    PyObject *ts;      /* int */
    long long max_body;
    long long remaining;
    long long body_len;
    PyObject *body;    /* bytearray */
    int body_trunc;
    PyObject *methods; /* collections.deque */
    int eof;
    PyObject *lost_pending;
    long last_status;
    int end_ready;
} Reader;

static PyObject *deque_type;

static inline Py_ssize_t blen(PyObject *ba) { return PyByteArray_GET_SIZE(ba); }
static inline unsigned char *bptr(PyObject *ba) { return (unsigned char *)PyByteArray_AS_STRING(ba); }

static int del_front(PyObject *ba, Py_ssize_t n) {
    if (n <= 0) return 0;
    return PySequence_DelSlice(ba, 0, n);
}

static int append_bytes(PyObject *ba, const void *p, Py_ssize_t n) {
    if (n <= 0) return 0;
    Py_ssize_t old = blen(ba);
    if (PyByteArray_Resize(ba, old + n) < 0) return -1;
    memcpy(bptr(ba) + old, p, (size_t)n);
    return 0;
}

/* _fail(msg): the flow is poisoned; returns NULL with Malformed(msg) set. */
static PyObject *fail_obj(Reader *r, PyObject *msg) {
    if (msg == NULL) return NULL;
    int st = step(r->state, W_MALFORMED);
    r->state = st;
    if (PyByteArray_Resize(r->buf, 0) < 0) {
        Py_DECREF(msg);
        return NULL;
    }
    PyErr_SetObject(Malformed, msg);
    Py_DECREF(msg);
    return NULL;
}

static PyObject *fail(Reader *r, const char *msg) { return fail_obj(r, PyUnicode_FromString(msg)); }

static int set_state(Reader *r, int what) {
    int st = step(r->state, what);
    if (st < 0) return -1;
    r->state = st;
    return 0;
}

/* _keep(chunk): count it, keep what fits under max_body. */
static int keep(Reader *r, const unsigned char *p, Py_ssize_t n) {
    r->body_len += n;
    long long room = r->max_body - blen(r->body);
    if (room > 0 && append_bytes(r->body, p, n < room ? n : (Py_ssize_t)room) < 0) return -1;
    if (n > room) r->body_trunc = 1;
    return 0;
}

static PyObject *new_end(Reader *r, long long body_bytes, PyObject *body, int trunc) {
    PyObject *vals[4] = {PyLong_FromLongLong(body_bytes), body, PyBool_FromLong(trunc), r->ts};
    Py_INCREF(r->ts);
    return make_event(&ev_end, vals);
}

/* _end(what) */
static PyObject *end_message(Reader *r, int what) {
    if (set_state(r, what) < 0) return NULL;
    PyObject *body;
    if (blen(r->body)) {
        body = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(r->body), blen(r->body));
        PyObject *fresh = PyByteArray_FromStringAndSize(NULL, 0);
        if (body == NULL || fresh == NULL) {
            Py_XDECREF(body);
            Py_XDECREF(fresh);
            return NULL;
        }
        Py_SETREF(r->body, fresh);
    } else {
        body = empty_bytes;
        Py_INCREF(body);
    }
    return new_end(r, r->body_len, body, r->body_trunc);
}

static PyObject *truncated(const char *fmt, long long n) {
    if (n < 0) PyErr_SetString(Truncated, fmt);
    else PyErr_Format(Truncated, fmt, n);
    return NULL;
}

static PyObject *head(Reader *r) {
    PyObject *buf = r->buf;
    if (blen(buf) == 0) { Py_INCREF(NEED_DATA); return NEED_DATA; }
    Py_ssize_t k = 0;
    while (blen(buf) - k >= 2 && bptr(buf)[k] == '\r' && bptr(buf)[k + 1] == '\n') k += 2;
    if (k && del_front(buf, k) < 0) return NULL;
    unsigned char *p = bptr(buf);
    Py_ssize_t n = blen(buf), end = -1;
    for (Py_ssize_t i = find_crlf(p, 0, n); i >= 0; i = find_crlf(p, i + 1, n))
        if (i + 3 < n && p[i + 2] == '\r' && p[i + 3] == '\n') { end = i; break; }
    if (end < 0) {
        if (n > MAX_HEAD) return fail(r, "HTTP/1 head larger than 64 KiB");
        if (r->eof && n) {
            if (PyByteArray_Resize(buf, 0) < 0) return NULL;
            return truncated("flow ended inside an HTTP/1 head (%lld bytes)", n);
        }
        if (n && !((p[0] >= 'a' && p[0] <= 'z') || (p[0] >= 'A' && p[0] <= 'Z')))
            return fail(r, "HTTP/1 start line does not start with a letter");
        Py_INCREF(NEED_DATA);
        return NEED_DATA;
    }
    PyObject *t = parse(p, end, r->client);
    if (t == NULL) return NULL;
    if (PyUnicode_Check(t)) return fail_obj(r, t);
    if (del_front(buf, end + 4) < 0) { Py_DECREF(t); return NULL; }
    PyObject *first = PyTuple_GET_ITEM(t, 0), *length = PyTuple_GET_ITEM(t, 4);
    int chunked = PyTuple_GET_ITEM(t, 5) == Py_True;
    long long len = length == Py_None ? -1 : PyLong_AsLongLong(length);
    long long head_bytes = end + 4;
    r->body_len = 0;
    if (blen(r->body)) {
        PyObject *fresh = PyByteArray_FromStringAndSize(NULL, 0);
        if (fresh == NULL) { Py_DECREF(t); return NULL; }
        Py_SETREF(r->body, fresh);
    }
    r->body_trunc = 0;
    int what;
    PyObject *vals[6];
    for (int i = 0; i < 4; i++) { vals[i] = PyTuple_GET_ITEM(t, i); Py_INCREF(vals[i]); }
    vals[4] = r->ts; Py_INCREF(r->ts);
    vals[5] = PyLong_FromLongLong(head_bytes);
    PyObject *ev;
    if (r->client) {
        what = chunked ? W_HEAD_CHUNKED : len > 0 ? W_HEAD_LENGTH : W_HEAD_NO_BODY;
        if (first == str_CONNECT) what = W_HEAD_NO_BODY;
        ev = make_event(&ev_request, vals);
    } else {
        long status = PyLong_AsLong(first);
        ev = make_event(&ev_response, vals);
        if (ev == NULL) { Py_DECREF(t); return NULL; }
        r->last_status = status;
        if (status >= 100 && status < 200) {
            what = status == 101 ? W_SWITCH : W_HEAD_NO_BODY;
            if (status == 101 && PyObject_Length(r->methods) > 0) {
                PyObject *m = PyObject_CallMethod(r->methods, "popleft", NULL);
                if (m == NULL) { Py_DECREF(ev); Py_DECREF(t); return NULL; }
                Py_DECREF(m);
            }
            Py_DECREF(t);
            if (set_state(r, what) < 0) { Py_DECREF(ev); return NULL; }
            return ev;
        }
        PyObject *method = NULL;
        if (PyObject_Length(r->methods) > 0) {
            method = PyObject_CallMethod(r->methods, "popleft", NULL);
            if (method == NULL) { Py_DECREF(ev); Py_DECREF(t); return NULL; }
        }
        int is_head = method != NULL && PyUnicode_Check(method) &&
                      PyUnicode_Compare(method, str_HEAD) == 0;
        int is_connect = method != NULL && PyUnicode_Check(method) &&
                         PyUnicode_Compare(method, str_CONNECT) == 0;
        Py_XDECREF(method);
        if (is_head || status == 204 || status == 304) what = W_HEAD_NO_BODY;
        else if (is_connect && status >= 200 && status < 300) what = W_SWITCH;
        else if (chunked) what = W_HEAD_CHUNKED;
        else if (len >= 0) what = len ? W_HEAD_LENGTH : W_HEAD_NO_BODY;
        else what = W_HEAD_EOF;
    }
    Py_DECREF(t);
    if (ev == NULL) return NULL;
    if (set_state(r, what) < 0) { Py_DECREF(ev); return NULL; }
    r->remaining = len > 0 ? len : 0;
    if (what == W_HEAD_NO_BODY) r->end_ready = 1;
    return ev;
}

static PyObject *resync(Reader *r) {
    PyObject *m = PyObject_CallMethod(r->client ? REQ_START : RESP_START, "search", "O", r->buf);
    if (m == NULL) return NULL;
    if (m == Py_None) {
        Py_DECREF(m);
        Py_ssize_t n = blen(r->buf);
        if (n > 64 && del_front(r->buf, n - 64) < 0) return NULL;
        if (r->eof && PyByteArray_Resize(r->buf, 0) < 0) return NULL;
        Py_INCREF(NEED_DATA);
        return NEED_DATA;
    }
    PyObject *start = PyObject_CallMethod(m, "start", NULL);
    Py_DECREF(m);
    if (start == NULL) return NULL;
    Py_ssize_t s = PyLong_AsSsize_t(start);
    Py_DECREF(start);
    if (s < 0 && PyErr_Occurred()) return NULL;
    if (del_front(r->buf, s) < 0) return NULL;
    if (set_state(r, W_FOUND) < 0) return NULL;
    return head(r);
}

static PyObject *body_length(Reader *r) {
    Py_ssize_t n = blen(r->buf);
    if (n) {
        long long take = r->remaining < n ? r->remaining : n;
        if (take == n && blen(r->body) == 0 && take <= r->max_body) {
            /* the whole (rest of the) body arrived with the head: keep it as is */
            PyObject *fresh = PyByteArray_FromStringAndSize(NULL, 0);
            if (fresh == NULL) return NULL;
            r->body_len += take;
            Py_SETREF(r->body, r->buf);
            r->buf = fresh;
        } else {
            if (keep(r, bptr(r->buf), (Py_ssize_t)take) < 0) return NULL;
            if (del_front(r->buf, (Py_ssize_t)take) < 0) return NULL;
        }
        r->remaining -= take;
    }
    if (r->remaining == 0) return end_message(r, W_BODY_DONE);
    if (r->eof) return truncated("flow ended %lld bytes before the end of a body", r->remaining);
    Py_INCREF(NEED_DATA);
    return NEED_DATA;
}

static PyObject *body_eof(Reader *r) {
    Py_ssize_t n = blen(r->buf);
    if (n) {
        if (keep(r, bptr(r->buf), n) < 0) return NULL;
        if (PyByteArray_Resize(r->buf, 0) < 0) return NULL;
    }
    if (r->eof) return end_message(r, W_EOF);
    Py_INCREF(NEED_DATA);
    return NEED_DATA;
}

static inline int is_space(unsigned char c) {  /* bytes.strip()'s whitespace */
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

static inline int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* int(line, 16) for a chunk size line (line = size before any ';', stripped); 1 = ok,
 * 0 = ValueError (bad), -1 = other error. Plain hex digits are read here, anything else
 * (sign, 0x, underscores, huge) by Python's int() itself. */
static int chunk_size(const unsigned char *p, Py_ssize_t n, long long *out) {
    if (n > 0 && n <= 15) {
        long long v = 0;
        Py_ssize_t i = 0;
        for (; i < n; i++) {
            int h = hexval(p[i]);
            if (h < 0) break;
            v = v * 16 + h;
        }
        if (i == n) { *out = v; return 1; }
    }
    PyObject *b = PyBytes_FromStringAndSize((const char *)p, n);
    if (b == NULL) return -1;
    PyObject *v = PyObject_CallFunction((PyObject *)&PyLong_Type, "Oi", b, 16);
    Py_DECREF(b);
    if (v == NULL) {
        if (PyErr_ExceptionMatches(PyExc_ValueError)) { PyErr_Clear(); return 0; }
        return -1;
    }
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    Py_DECREF(v);
    if (overflow > 0 || x > FAR) x = FAR;
    else if (overflow < 0) x = -1;
    *out = x;
    return 1;
}

static PyObject *chunked_body(Reader *r) {
    PyObject *buf = r->buf;
    for (;;) {
        int st = r->state;
        if (st == S_CHUNK_SIZE) {
            Py_ssize_t i = find_crlf(bptr(buf), 0, blen(buf));
            if (i < 0) {
                if (blen(buf) > MAX_LINE) return fail(r, "chunk size line too long");
                break;
            }
            const unsigned char *p = bptr(buf);
            const unsigned char *semi = memchr(p, ';', (size_t)i);
            Py_ssize_t s = 0, e = semi ? semi - p : i;
            while (s < e && is_space(p[s])) s++;
            while (e > s && is_space(p[e - 1])) e--;
            PyObject *line = PyBytes_FromStringAndSize((const char *)p + s, e - s);
            if (line == NULL) return NULL;
            long long size = 0;
            int ok = chunk_size(p + s, e - s, &size);
            if (del_front(buf, i + 2) < 0 || ok < 0) { Py_DECREF(line); return NULL; }
            if (ok == 0) {
                PyObject *msg = error_repr("bad chunk size ", (const unsigned char *)PyBytes_AS_STRING(line),
                                           PyBytes_GET_SIZE(line), 20, 1);
                Py_DECREF(line);
                return fail_obj(r, msg);
            }
            Py_DECREF(line);
            if (size < 0) return fail(r, "negative chunk size");
            if (size == 0) {
                if (set_state(r, W_LAST_CHUNK) < 0) return NULL;
            } else {
                r->remaining = size;
                if (set_state(r, W_CHUNK) < 0) return NULL;
            }
        } else if (st == S_CHUNK_DATA) {
            if (r->remaining) {
                long long take = r->remaining < blen(buf) ? r->remaining : blen(buf);
                if (take) {
                    if (keep(r, bptr(buf), (Py_ssize_t)take) < 0) return NULL;
                    if (del_front(buf, (Py_ssize_t)take) < 0) return NULL;
                    r->remaining -= take;
                }
                if (r->remaining) break;
            }
            if (blen(buf) < 2) break;
            if (bptr(buf)[0] != '\r' || bptr(buf)[1] != '\n')
                return fail(r, "chunk data not followed by CRLF");
            if (del_front(buf, 2) < 0) return NULL;
            if (set_state(r, W_CHUNK_DONE) < 0) return NULL;
        } else { /* TRAILERS */
            Py_ssize_t n = blen(buf);
            if (n >= 2 && bptr(buf)[0] == '\r' && bptr(buf)[1] == '\n') {
                if (del_front(buf, 2) < 0) return NULL;
                return end_message(r, W_TRAILERS_DONE);
            }
            const unsigned char *p = bptr(buf);
            Py_ssize_t end = -1;
            for (Py_ssize_t i = find_crlf(p, 0, n); i >= 0; i = find_crlf(p, i + 1, n))
                if (i + 3 < n && p[i + 2] == '\r' && p[i + 3] == '\n') { end = i; break; }
            if (end < 0) {
                if (n > MAX_HEAD) return fail(r, "trailer section too large");
                break;
            }
            if (del_front(buf, end + 4) < 0) return NULL;
            return end_message(r, W_TRAILERS_DONE);
        }
    }
    if (r->eof) return truncated("flow ended inside a chunked body", -1);
    Py_INCREF(NEED_DATA);
    return NEED_DATA;
}

static PyObject *Reader_next_event(Reader *r, PyObject *unused) {
    (void)unused;
    if (r->lost_pending != NULL) {
        PyObject *ev = r->lost_pending;
        r->lost_pending = NULL;
        return ev;
    }
    if (r->end_ready) {
        r->end_ready = 0;
        Py_INCREF(empty_bytes);
        return new_end(r, 0, empty_bytes, 0);
    }
    switch (r->state) {
    case S_IDLE:
        if (blen(r->buf)) return head(r);
        Py_INCREF(NEED_DATA);
        return NEED_DATA;
    case S_BODY_LENGTH: return body_length(r);
    case S_CHUNK_SIZE: case S_CHUNK_DATA: case S_TRAILERS: return chunked_body(r);
    case S_BODY_EOF: return body_eof(r);
    case S_RESYNC: return resync(r);
    case S_ERROR:
        PyErr_SetString(Malformed, "HTTP/1 flow already failed");
        return NULL;
    }
    Py_INCREF(NEED_DATA);
    return NEED_DATA; /* SWITCHED */
}

static int as_ll(PyObject *o, long long *out) {
    *out = PyLong_AsLongLong(o);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* (first, ts_ns=0) of feed(data, ts_ns=0) / feed_gap(nbytes, ts_ns=0): r->ts is set. */
static PyObject *two_args(Reader *r, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                          const char *usage) {
    PyObject *ts = nargs > 1 ? args[1] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    int bad = nargs < 1 || nargs + nkw > 2;
    for (Py_ssize_t i = 0; !bad && i < nkw; i++) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "ts_ns") == 0)
            ts = args[nargs + i];
        else
            bad = 1;
    }
    if (bad) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    if (ts == NULL) ts = PyLong_FromLong(0);
    else Py_INCREF(ts);
    if (ts == NULL) return NULL;
    Py_SETREF(r->ts, ts);
    return args[0];
}

static PyObject *Reader_feed(Reader *r, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames) {
    PyObject *data = two_args(r, args, nargs, kwnames, "feed(data, ts_ns=0)");
    if (data == NULL) return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(data, &v, PyBUF_SIMPLE) < 0) return NULL;
    int st = r->state, rc = 0;
    if (st == S_BODY_LENGTH && blen(r->buf) == 0 && v.len <= r->remaining) {
        /* a body segment is counted (and kept up to the cap), never buffered */
        r->remaining -= v.len;
        r->body_len += v.len;
        long long room = r->max_body - blen(r->body);
        if (room > 0) rc = append_bytes(r->body, v.buf, v.len < room ? v.len : (Py_ssize_t)room);
        if (v.len > room) r->body_trunc = 1;
    } else if (st != S_ERROR && st != S_SWITCHED) {
        rc = append_bytes(r->buf, v.buf, v.len);
    }
    PyBuffer_Release(&v);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Reader_feed_gap(Reader *r, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames) {
    PyObject *first = two_args(r, args, nargs, kwnames, "feed_gap(nbytes, ts_ns=0)");
    long long nbytes;
    if (first == NULL || as_ll(first, &nbytes) < 0) return NULL;
    int st = r->state;
    if (st == S_ERROR || st == S_SWITCHED) Py_RETURN_NONE;
    Py_ssize_t n = blen(r->buf);
    if (nbytes && ((st == S_BODY_LENGTH && n + nbytes < r->remaining) || st == S_BODY_EOF)) {
        /* lost bytes inside a body of known extent: count them, stay in sync */
        if (set_state(r, W_GAP_IN_BODY) < 0) return NULL;
        if (n) {
            if (keep(r, bptr(r->buf), n) < 0) return NULL;
            if (st == S_BODY_LENGTH) r->remaining -= n;
            if (PyByteArray_Resize(r->buf, 0) < 0) return NULL;
        }
        if (st == S_BODY_LENGTH) r->remaining -= nbytes;
        r->body_len += nbytes;
        r->body_trunc = 1;
        Py_RETURN_NONE;
    }
    int in_message = (st != S_IDLE && st != S_RESYNC) || n > 0;
    if (set_state(r, W_GAP) < 0) return NULL;
    if (PyByteArray_Resize(r->buf, 0) < 0) return NULL;
    r->end_ready = 0;
    PyObject *vals[2] = {r->ts, PyBool_FromLong(in_message)};
    Py_INCREF(r->ts);
    PyObject *ev = make_event(&ev_resync, vals);
    if (ev == NULL) return NULL;
    Py_XSETREF(r->lost_pending, ev);
    Py_RETURN_NONE;
}

static PyObject *Reader_feed_eof(Reader *r, PyObject *unused) {
    (void)unused;
    r->eof = 1;
    Py_RETURN_NONE;
}

static PyObject *Reader_expect(Reader *r, PyObject *method) {
    PyObject *x = PyObject_CallMethod(r->methods, "append", "O", method);
    if (x == NULL) return NULL;
    Py_DECREF(x);
    Py_RETURN_NONE;
}

static PyObject *Reader_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"role", "max_body", NULL};
    PyObject *role;
    long long max_body = 65536;
    if (!ready) {
        PyErr_SetString(PyExc_RuntimeError, "dissector.http1._chttp1.setup() was not called");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$L", names, &role, &max_body)) return NULL;
    int client = PyUnicode_Check(role) && PyUnicode_Compare(role, str_CLIENT) == 0;
    int server = PyUnicode_Check(role) && PyUnicode_Compare(role, str_SERVER) == 0;
    if (PyErr_Occurred()) return NULL;
    if (!client && !server) {
        PyErr_Format(PyExc_ValueError, "role must be %R or %R", str_CLIENT, str_SERVER);
        return NULL;
    }
    Reader *r = (Reader *)type->tp_alloc(type, 0);
    if (r == NULL) return NULL;
    Py_INCREF(role);
    r->role = role;
    r->client = client;
    r->state = S_IDLE;
    r->buf = PyByteArray_FromStringAndSize(NULL, 0);
    r->body = PyByteArray_FromStringAndSize(NULL, 0);
    r->ts = PyLong_FromLong(0);
    r->methods = PyObject_CallNoArgs(deque_type);
    r->max_body = max_body;
    if (r->buf == NULL || r->body == NULL || r->ts == NULL || r->methods == NULL) {
        Py_DECREF(r);
        return NULL;
    }
    return (PyObject *)r;
}

static int Reader_traverse(Reader *r, visitproc visit, void *arg) {
    Py_VISIT(r->role);
    Py_VISIT(r->buf);
    Py_VISIT(r->ts);
    Py_VISIT(r->body);
    Py_VISIT(r->methods);
    Py_VISIT(r->lost_pending);
    return 0;
}

static int Reader_clear(Reader *r) {
    Py_CLEAR(r->role);
    Py_CLEAR(r->buf);
    Py_CLEAR(r->ts);
    Py_CLEAR(r->body);
    Py_CLEAR(r->methods);
    Py_CLEAR(r->lost_pending);
    return 0;
}

static void Reader_dealloc(Reader *r) {
    PyObject_GC_UnTrack(r);
    Reader_clear(r);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

#define LL_GETSET(field)                                                                     \
    static PyObject *get_##field(Reader *r, void *c) { (void)c; return PyLong_FromLongLong(r->field); } \
    static int set_##field(Reader *r, PyObject *v, void *c) {                                \
        (void)c;                                                                             \
        if (v == NULL) { PyErr_SetString(PyExc_AttributeError, "cannot delete"); return -1; } \
        return as_ll(v, &r->field);                                                          \
    }
LL_GETSET(remaining)
LL_GETSET(body_len)
LL_GETSET(max_body)

#define BOOL_GETSET(field)                                                                   \
    static PyObject *get_##field(Reader *r, void *c) { (void)c; return PyBool_FromLong(r->field); } \
    static int set_##field(Reader *r, PyObject *v, void *c) {                                \
        (void)c;                                                                             \
        int t = v == NULL ? -1 : PyObject_IsTrue(v);                                         \
        if (t < 0) { if (v == NULL) PyErr_SetString(PyExc_AttributeError, "cannot delete"); return -1; } \
        r->field = t;                                                                        \
        return 0;                                                                            \
    }
BOOL_GETSET(body_trunc)
BOOL_GETSET(eof)
BOOL_GETSET(end_ready)

#define BA_GETSET(field)                                                                     \
    static PyObject *get_##field(Reader *r, void *c) { (void)c; Py_INCREF(r->field); return r->field; } \
    static int set_##field(Reader *r, PyObject *v, void *c) {                                \
        (void)c;                                                                             \
        if (v == NULL || !PyByteArray_CheckExact(v)) {                                       \
            PyErr_SetString(PyExc_TypeError, #field " must be a bytearray");                 \
            return -1;                                                                       \
        }                                                                                    \
        Py_INCREF(v);                                                                        \
        Py_SETREF(r->field, v);                                                              \
        return 0;                                                                            \
    }
BA_GETSET(buf)
BA_GETSET(body)

static PyObject *get_state(Reader *r, void *c) { (void)c; Py_INCREF(STATES[r->state]); return STATES[r->state]; }
static PyObject *get_ts(Reader *r, void *c) { (void)c; Py_INCREF(r->ts); return r->ts; }
static int set_ts(Reader *r, PyObject *v, void *c) {
    (void)c;
    if (v == NULL || !PyLong_Check(v)) { PyErr_SetString(PyExc_TypeError, "ts must be an int"); return -1; }
    Py_INCREF(v);
    Py_SETREF(r->ts, v);
    return 0;
}
static PyObject *get_last_status(Reader *r, void *c) { (void)c; return PyLong_FromLong(r->last_status); }
static PyObject *get_role(Reader *r, void *c) { (void)c; Py_INCREF(r->role); return r->role; }
static PyObject *get_methods(Reader *r, void *c) { (void)c; Py_INCREF(r->methods); return r->methods; }

static PyGetSetDef Reader_getset[] = {
    {"remaining", (getter)get_remaining, (setter)set_remaining, NULL, NULL},
    {"body_len", (getter)get_body_len, (setter)set_body_len, NULL, NULL},
    {"max_body", (getter)get_max_body, (setter)set_max_body, NULL, NULL},
    {"body_trunc", (getter)get_body_trunc, (setter)set_body_trunc, NULL, NULL},
    {"eof", (getter)get_eof, (setter)set_eof, NULL, NULL},
    {"end_ready", (getter)get_end_ready, (setter)set_end_ready, NULL, NULL},
    {"buf", (getter)get_buf, (setter)set_buf, NULL, NULL},
    {"body", (getter)get_body, (setter)set_body, NULL, NULL},
    {"ts", (getter)get_ts, (setter)set_ts, NULL, NULL},
    {"state", (getter)get_state, NULL, NULL, NULL},
    {"last_status", (getter)get_last_status, NULL, NULL, NULL},
    {"role", (getter)get_role, NULL, NULL, NULL},
    {"methods", (getter)get_methods, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Reader_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))Reader_feed, METH_FASTCALL | METH_KEYWORDS,
     "feed(data, ts_ns=0): buffer bytes of this direction"},
    {"feed_gap", (PyCFunction)(void (*)(void))Reader_feed_gap, METH_FASTCALL | METH_KEYWORDS,
     "feed_gap(nbytes, ts_ns=0): nbytes were lost (0: unknown)"},
    {"feed_eof", (PyCFunction)Reader_feed_eof, METH_NOARGS, "the direction ended"},
    {"expect", (PyCFunction)Reader_expect, METH_O, "expect(method): the request a response answers"},
    {"next_event", (PyCFunction)Reader_next_event, METH_NOARGS,
     "one event, or NEED_DATA; raises Malformed (poisoned) or Truncated"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dissector.http1._chttp1.HTTP1Reader",
    .tp_doc = "Sans-I/O HTTP/1.x reader for one direction (compiled twin of PyHTTP1Reader).",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Reader_new,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_traverse = (traverseproc)Reader_traverse,
    .tp_clear = (inquiry)Reader_clear,
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
};

static PyMethodDef methods[] = {
    {"parse_head", (PyCFunction)(void (*)(void))parse_head, METH_FASTCALL,
     "parse_head(buf, end, is_request) -> tuple | str: one HTTP/1 head (see _head.py)"},
    {"setup", setup, METH_VARARGS,
     "setup(Request, Response, EndOfMessage, Resync, Malformed, Truncated, NEED_DATA, states, "
     "req_start, resp_start, CLIENT, SERVER): the Python objects the reader hands out"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_chttp1",
                                    "HTTP/1 reader in C (twin of _parser.py and _head.py)", -1,
                                    methods};

PyMODINIT_FUNC PyInit__chttp1(void) {
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
    str_CONNECT = method_str[7];
    str_HEAD = method_str[4];
    empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    PyObject *collections = PyImport_ImportModule("collections");
    if (collections == NULL || empty_bytes == NULL) return NULL;
    deque_type = PyObject_GetAttrString(collections, "deque");
    Py_DECREF(collections);
    if (deque_type == NULL || PyType_Ready(&ReaderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "HTTP1Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
