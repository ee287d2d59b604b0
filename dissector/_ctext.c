/* dissector._ctext: the text lines of `rawcap dissect` built in C.
 *
 * The compiled twin of dissector/_text.py:py_lines (format_call over each call, each line
 * ended by "\n": the pure-Python reference, which stays the fallback and the test oracle):
 * the same text.
 *
 *   setup(Call, reference)     the class whose slots are read; reference(call) -> str
 *   lines(calls) -> str        every call's line followed by "\n"
 *
 * A line is "TIME PROTO SRC > DST SUMMARY LATENCY[  [incomplete: ERROR]]" exactly as
 * format_call writes it: TIME the request (else response) time as ISO-8601 UTC with
 * nanoseconds ("-" when both are 0), PROTO padded to 5 characters, an end "ip:port" with
 * " (namespace/workload)" or " (workload)" when the workload is known, SUMMARY as
 * Call.summary (HTTP and DNS here; redis and postgres calls run Call.summary itself),
 * LATENCY in ms with 3 decimals as Python's float formatting writes it (PyOS_double_to_string)
 * or "-". A call whose fields are not the plain types a dissector writes (a str subclass, a
 * bool where an int belongs, an int beyond 64 bits, a str that is not valid UTF-8, a time
 * outside years 1970-9999) or that is not exactly of the set-up class is handed to the
 * reference: lines are always what format_call would write. tests/dissector/test_text.py
 * holds the two to the same text.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#define CBUF_FIRST_CAP (1 << 16)
#include "_cbuf.h"

enum {
    F_PROTO, F_SRC_IP, F_SRC_PORT, F_DST_IP, F_DST_PORT, F_REQ_TS, F_RESP_TS, F_LATENCY,
    F_METHOD, F_PATH, F_STATUS, F_GRPC, F_QNAME, F_QTYPE, F_RCODE, F_COMPLETE, F_ERROR,
    F_SRC_WL, F_DST_WL, F_SRC_NS, F_DST_NS, N_FIELDS
};
static const char *const field_names[N_FIELDS] = {
    "proto", "src_ip", "src_port", "dst_ip", "dst_port", "req_ts_ns", "resp_ts_ns",
    "latency_ns", "method", "path", "status", "grpc_status", "qname", "qtype", "rcode",
    "complete", "error", "src_workload", "dst_workload", "src_namespace", "dst_namespace",
};

static PyTypeObject *call_type;
static Py_ssize_t offsets[N_FIELDS];
static PyObject *fallback; /* the reference: one call -> its line (without "\n") */
static PyObject *s_summary;

#define FIELD(c, f) (*(PyObject **)((char *)(c) + offsets[f]))
#define NOT_OURS 1

#define PUTS(b, lit) put((b), (lit), (Py_ssize_t)(sizeof(lit) - 1))

/* a plain str's UTF-8 bytes; NOT_OURS for a subclass, another type or lone surrogates */
static int put_str(Buf *b, PyObject *o) {
    if (o == NULL || !PyUnicode_CheckExact(o)) return NOT_OURS;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(o, &n);
    if (s == NULL) {
        PyErr_Clear();
        return NOT_OURS;
    }
    return put(b, s, n);
}

/* a plain int as a C long long; NOT_OURS for bool, a subclass, another type or > 64 bits */
static int get_ll(PyObject *o, long long *v) {
    if (o == NULL || !PyLong_CheckExact(o)) return NOT_OURS;
    int overflow = 0;
    *v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow) return NOT_OURS;
    if (*v == -1 && PyErr_Occurred()) return -1;
    return 0;
}

static int put_ll(Buf *b, long long v) {
    char s[24], *e = s + sizeof s, *p = e;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--p = '-';
    return put(b, p, e - p);
}

static int put_int(Buf *b, PyObject *o) {
    long long v;
    int r = get_ll(o, &v);
    return r ? r : put_ll(b, v);
}

/* "YYYY-mm-ddTHH:MM:SS" of a second since the epoch (proleptic Gregorian, UTC), the last
 * one cached: calls come in time order. */
static long long cached_sec = -1;
static char cached_text[64];

static void civil(long long sec, char *out) {
    long long days = sec / 86400, rem = sec % 86400;
    /* H. Hinnant's civil_from_days */
    long long z = days + 719468;
    long long era = z / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long y = yoe + era * 400;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    long long d = doy - (153 * mp + 2) / 5 + 1;
    long long m = mp < 10 ? mp + 3 : mp - 9;
    if (m <= 2) y += 1;
    snprintf(out, 64, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lld", y, m, d, rem / 3600,
             rem / 60 % 60, rem % 60);
}

/* 9999-12-31T23:59:59 */
#define MAX_SEC 253402300799LL

static int put_time(Buf *b, long long ns) {
    long long sec = ns / 1000000000LL, frac = ns % 1000000000LL;
    if (ns < 0 || sec > MAX_SEC) return NOT_OURS;
    if (sec != cached_sec) {
        civil(sec, cached_text);
        cached_sec = sec;
    }
    if (grow(b, 30) < 0) return -1;
    char *p = b->p + b->len;
    memcpy(p, cached_text, 19);
    p[19] = '.';
    for (int i = 28; i >= 20; i--) {
        p[i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    p[29] = 'Z';
    b->len += 30;
    return 0;
}

/* "ip:port", " (namespace/workload)" or " (workload)" when the workload is known */
static int put_end(Buf *b, PyObject *c, int ip, int port, int wl, int ns) {
    int r = put_str(b, FIELD(c, ip));
    if (!r) r = PUTS(b, ":");
    if (!r) r = put_int(b, FIELD(c, port));
    if (r) return r;
    PyObject *w = FIELD(c, wl), *n = FIELD(c, ns);
    if (w == NULL || !PyUnicode_CheckExact(w) || n == NULL || !PyUnicode_CheckExact(n))
        return NOT_OURS;
    if (PyUnicode_GET_LENGTH(w) == 0) return 0;
    r = PUTS(b, " (");
    if (!r && PyUnicode_GET_LENGTH(n)) {
        r = put_str(b, n);
        if (!r) r = PUTS(b, "/");
    }
    if (!r) r = put_str(b, w);
    if (!r) r = PUTS(b, ")");
    return r;
}

static int put_summary(Buf *b, PyObject *c, PyObject *proto) {
    int r;
    if (PyUnicode_CompareWithASCIIString(proto, "dns") == 0) {
        r = put_str(b, FIELD(c, F_QNAME));
        if (!r) r = PUTS(b, " type=");
        if (!r) r = put_int(b, FIELD(c, F_QTYPE));
        if (!r) r = PUTS(b, " rcode=");
        if (!r) r = put_int(b, FIELD(c, F_RCODE));
        return r;
    }
    if (PyUnicode_CompareWithASCIIString(proto, "redis") == 0 ||
        PyUnicode_CompareWithASCIIString(proto, "postgres") == 0) {
        PyObject *s = PyObject_CallMethodNoArgs(c, s_summary);
        if (s == NULL) return -1;
        r = put_str(b, s);
        Py_DECREF(s);
        return r;
    }
    long long grpc;
    r = get_ll(FIELD(c, F_GRPC), &grpc);
    if (!r) r = put_str(b, FIELD(c, F_METHOD));
    if (!r) r = PUTS(b, " ");
    if (!r) r = put_str(b, FIELD(c, F_PATH));
    if (!r) r = PUTS(b, " -> ");
    if (!r) r = put_int(b, FIELD(c, F_STATUS));
    if (!r && grpc >= 0) {
        r = PUTS(b, " grpc-status=");
        if (!r) r = put_ll(b, grpc);
    }
    return r;
}

/* one call's line (without "\n"): 0 written, NOT_OURS (the reference writes it), -1 error */
static int line(Buf *b, PyObject *c) {
    for (int f = 0; f < N_FIELDS; f++)
        if (FIELD(c, f) == NULL) return NOT_OURS;
    long long req, resp, lat;
    int r = get_ll(FIELD(c, F_REQ_TS), &req);
    if (!r) r = get_ll(FIELD(c, F_RESP_TS), &resp);
    if (!r) r = get_ll(FIELD(c, F_LATENCY), &lat);
    if (r) return r;
    PyObject *complete = FIELD(c, F_COMPLETE), *proto = FIELD(c, F_PROTO);
    if ((complete != Py_True && complete != Py_False) || !PyUnicode_CheckExact(proto))
        return NOT_OURS;
    long long ts = req ? req : resp;
    r = ts ? put_time(b, ts) : PUTS(b, "-");
    if (!r) r = PUTS(b, " ");
    if (!r) r = put_str(b, proto);
    for (Py_ssize_t k = PyUnicode_GET_LENGTH(proto); !r && k < 5; k++) r = PUTS(b, " ");
    if (!r) r = PUTS(b, " ");
    if (!r) r = put_end(b, c, F_SRC_IP, F_SRC_PORT, F_SRC_WL, F_SRC_NS);
    if (!r) r = PUTS(b, " > ");
    if (!r) r = put_end(b, c, F_DST_IP, F_DST_PORT, F_DST_WL, F_DST_NS);
    if (!r) r = PUTS(b, " ");
    if (!r) r = put_summary(b, c, proto);
    if (!r) r = PUTS(b, " ");
    if (r) return r;
    if (lat > 0 && lat < 1000000000000000LL && lat % 1000 != 500) {
        /* lat / 1e6 is within 1e-7 of the exact quotient, which is at least 1e-6 away from
         * a rounding boundary (unless lat ends in 500): the rounded microseconds are the
         * digits Python's correctly rounded ".3f" writes */
        long long us = lat / 1000 + (lat % 1000 > 500);
        long long m = us % 1000;
        char s[6] = {'.', (char)('0' + m / 100), (char)('0' + m / 10 % 10), (char)('0' + m % 10),
                     'm', 's'};
        r = put_ll(b, us / 1000);
        if (!r) r = put(b, s, 6);
    } else if (lat) {
        char *s = PyOS_double_to_string((double)lat / 1e6, 'f', 3, 0, NULL);
        if (s == NULL) return -1;
        r = put(b, s, (Py_ssize_t)strlen(s));
        PyMem_Free(s);
        if (!r) r = PUTS(b, "ms");
    } else {
        r = PUTS(b, "-");
    }
    if (!r && complete == Py_False) {
        r = PUTS(b, "  [incomplete: ");
        if (!r) r = put_str(b, FIELD(c, F_ERROR));
        if (!r) r = PUTS(b, "]");
    }
    return r;
}

static PyObject *setup(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cls, *ref;
    if (!PyArg_ParseTuple(args, "O!O", &PyType_Type, &cls, &ref)) return NULL;
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *d = PyObject_GetAttrString(cls, field_names[i]);
        if (d == NULL) return NULL;
        int ok = PyObject_TypeCheck(d, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok) offsets[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "%R.%s is not an object slot", cls, field_names[i]);
            return NULL;
        }
    }
    Py_INCREF(cls);
    Py_XSETREF(call_type, (PyTypeObject *)cls);
    Py_INCREF(ref);
    Py_XSETREF(fallback, ref);
    Py_RETURN_NONE;
}

static PyObject *lines(PyObject *self, PyObject *calls) {
    (void)self;
    if (call_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "dissector._ctext.setup() was not called");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(calls, "calls is not a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Buf b = {NULL, 0, 0};
    PyObject *out = NULL;
    if (grow(&b, 1) < 0) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t start = b.len;
        int r = Py_TYPE(c) == call_type ? line(&b, c) : NOT_OURS;
        if (r < 0) goto done;
        if (r == NOT_OURS) {
            /* the reference's line; lone surrogates pass through UTF-8 and back unchanged */
            b.len = start;
            PyObject *s = PyObject_CallOneArg(fallback, c);
            if (s == NULL) goto done;
            PyObject *enc = PyUnicode_Check(s) ? PyUnicode_AsEncodedString(s, "utf-8",
                                                                           "surrogatepass")
                                               : NULL;
            if (enc == NULL && !PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "format_call returned a non-str");
            Py_DECREF(s);
            if (enc == NULL) goto done;
            r = put(&b, PyBytes_AS_STRING(enc), PyBytes_GET_SIZE(enc));
            Py_DECREF(enc);
            if (r < 0) goto done;
        }
        if (PUTS(&b, "\n") < 0) goto done;
    }
    out = PyUnicode_DecodeUTF8(b.p, b.len, "surrogatepass");
done:
    PyMem_Free(b.p);
    Py_DECREF(seq);
    return out;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, "setup(Call, reference): what lines reads, and its fallback"},
    {"lines", lines, METH_O, "lines(calls) -> str: format_call of each call, each + newline"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ctext",
                                    "the text lines of rawcap dissect in C (twin of py_lines)",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ctext(void) {
    s_summary = PyUnicode_InternFromString("summary");
    if (s_summary == NULL) return NULL;
    return PyModule_Create(&module);
}
