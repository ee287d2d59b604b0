/* dissector._crows: rawcap.calls version-2 rows packed in C.
 *
 * The compiled twin of schemas/calls.py:call_rows (msgpack's Packer over each call's values,
 * the pure-Python reference, which stays the fallback and the test oracle): the same bytes.
 *
 *   setup(Call, FIELDS)            the class whose slots are read, in FIELDS order
 *   pack_rows(calls) -> list[bytes]
 *   pack_row(call) -> bytes        pack_rows([call])[0], for a call as it is made (its values
 *                                  still in the CPU's caches)
 *
 * A row is the msgpack array of a call's field values; values are packed as msgpack-python's
 * Packer(use_bin_type=True) does: None, bool, int (the smallest encoding), float (64-bit),
 * str (UTF-8; fixstr/str8/16/32), bytes (bin8/16/32), tuple/list (arrays), dict (maps, in
 * insertion order). A call holding anything else (or a str that is not valid UTF-8, an int
 * outside 64 bits, an object nested deeper than 16 levels) is handed to the reference
 * packer: rows are always what msgpack would write. tests/dissector/test_rows.py holds the
 * two to the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include "_cbuf.h"

#define MAX_FIELDS 64

static PyTypeObject *call_type;
static Py_ssize_t offsets[MAX_FIELDS];
static int n_fields;
static PyObject *fallback; /* the reference: one call -> bytes */

static inline int put1(Buf *b, unsigned char c) { return put(b, &c, 1); }

static int put_be(Buf *b, unsigned char tag, uint64_t v, int n) {
    unsigned char s[9];
    s[0] = tag;
    for (int i = 0; i < n; i++) s[1 + i] = (unsigned char)(v >> (8 * (n - 1 - i)));
    return put(b, s, 1 + n);
}

static int put_len(Buf *b, Py_ssize_t n, unsigned char fix, int fixmax, unsigned char t8,
                   unsigned char t16, unsigned char t32) {
    if (n < fixmax) return put1(b, (unsigned char)(fix | n));
    if (t8 && n < 256) return put_be(b, t8, (uint64_t)n, 1);
    if (n < 65536) return put_be(b, t16, (uint64_t)n, 2);
    if ((uint64_t)n <= 0xffffffffu) return put_be(b, t32, (uint64_t)n, 4);
    return 1;
}

/* 0: packed, 1: not ours (the reference packs this call), -1: error */
static int pack(Buf *b, PyObject *o, int depth) {
    if (depth > 16) return 1;
    if (o == Py_None) return put1(b, 0xc0);
    if (o == Py_True) return put1(b, 0xc3);
    if (o == Py_False) return put1(b, 0xc2);
    if (PyLong_CheckExact(o)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(o);
            if (u == (unsigned long long)-1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 1;
            }
            return put_be(b, 0xcf, u, 8);
        }
        if (overflow < 0) return 1;
        if (v == -1 && PyErr_Occurred()) return -1;
        if (v >= 0) {
            if (v < 128) return put1(b, (unsigned char)v);
            if (v < 256) return put_be(b, 0xcc, (uint64_t)v, 1);
            if (v < 65536) return put_be(b, 0xcd, (uint64_t)v, 2);
            if (v <= 0xffffffffLL) return put_be(b, 0xce, (uint64_t)v, 4);
            return put_be(b, 0xcf, (uint64_t)v, 8);
        }
        if (v >= -32) return put1(b, (unsigned char)(0xe0 | (v + 32)));
        if (v >= -128) return put_be(b, 0xd0, (uint64_t)(uint8_t)(int8_t)v, 1);
        if (v >= -32768) return put_be(b, 0xd1, (uint64_t)(uint16_t)(int16_t)v, 2);
        if (v >= -2147483648LL) return put_be(b, 0xd2, (uint64_t)(uint32_t)(int32_t)v, 4);
        return put_be(b, 0xd3, (uint64_t)v, 8);
    }
    if (PyUnicode_CheckExact(o)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (s == NULL) {
            PyErr_Clear();
            return 1;
        }
        int r = put_len(b, n, 0xa0, 32, 0xd9, 0xda, 0xdb);
        return r ? r : put(b, s, n);
    }
    if (PyTuple_CheckExact(o) || PyList_CheckExact(o)) {
        PyObject **items = PySequence_Fast_ITEMS(o);
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        int r = put_len(b, n, 0x90, 16, 0, 0xdc, 0xdd);
        for (Py_ssize_t i = 0; !r && i < n; i++) r = pack(b, items[i], depth + 1);
        return r;
    }
    if (PyDict_CheckExact(o)) {
        int r = put_len(b, PyDict_GET_SIZE(o), 0x80, 16, 0, 0xde, 0xdf);
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (!r && PyDict_Next(o, &pos, &k, &v)) {
            r = pack(b, k, depth + 1);
            if (!r) r = pack(b, v, depth + 1);
        }
        return r;
    }
    if (PyFloat_CheckExact(o)) {
        union { double d; uint64_t u; } x;
        x.d = PyFloat_AS_DOUBLE(o);
        return put_be(b, 0xcb, x.u, 8);
    }
    if (PyBytes_CheckExact(o)) {
        Py_ssize_t n = PyBytes_GET_SIZE(o);
        int r = put_len(b, n, 0, 0, 0xc4, 0xc5, 0xc6);
        return r ? r : put(b, PyBytes_AS_STRING(o), n);
    }
    return 1;
}

static PyObject *setup(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cls, *fields, *ref;
    if (!PyArg_ParseTuple(args, "O!OO", &PyType_Type, &cls, &fields, &ref)) return NULL;
    PyObject *seq = PySequence_Fast(fields, "FIELDS is not a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_FIELDS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many fields");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyDict_GetItemWithError(((PyTypeObject *)cls)->tp_dict,
                                              PySequence_Fast_GET_ITEM(seq, i));
        if (d == NULL || !PyObject_TypeCheck(d, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            Py_DECREF(seq);
            if (!PyErr_Occurred()) PyErr_Format(PyExc_TypeError, "field %zd is not an object slot", i);
            return NULL;
        }
        offsets[i] = ((PyMemberDescrObject *)d)->d_member->offset;
    }
    Py_DECREF(seq);
    Py_INCREF(cls);
    Py_XSETREF(call_type, (PyTypeObject *)cls);
    Py_INCREF(ref);
    Py_XSETREF(fallback, ref);
    n_fields = (int)n;
    Py_RETURN_NONE;
}

/* one call's row into b (emptied first): 0 packed, 1 not ours (for the reference), -1 error */
static int pack_call(Buf *b, PyObject *c) {
    b->len = 0;
    if (Py_TYPE(c) != call_type) return 1;
    int r = put_len(b, n_fields, 0x90, 16, 0, 0xdc, 0xdd);
    for (int f = 0; !r && f < n_fields; f++) {
        PyObject *v = *(PyObject **)((char *)c + offsets[f]);
        r = v == NULL ? 1 : pack(b, v, 0);
    }
    return r;
}

static Buf one_buf;

static PyObject *pack_row(PyObject *self, PyObject *c) {
    (void)self;
    if (call_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "dissector._crows.setup() was not called");
        return NULL;
    }
    int r = pack_call(&one_buf, c);
    if (r < 0) return NULL;
    return r == 0 ? PyBytes_FromStringAndSize(one_buf.p, one_buf.len)
                  : PyObject_CallOneArg(fallback, c);
}

static PyObject *pack_rows(PyObject *self, PyObject *calls) {
    (void)self;
    if (call_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "dissector._crows.setup() was not called");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(calls, "calls is not a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    Buf b = {NULL, 0, 0};
    if (out == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PySequence_Fast_GET_ITEM(seq, i), *row = NULL;
        int r = pack_call(&b, c);
        if (r < 0) goto fail;
        row = r == 0 ? PyBytes_FromStringAndSize(b.p, b.len) : PyObject_CallOneArg(fallback, c);
        if (row == NULL) goto fail;
        PyList_SET_ITEM(out, i, row);
    }
    PyMem_Free(b.p);
    Py_DECREF(seq);
    return out;
fail:
    PyMem_Free(b.p);
    Py_XDECREF(out);
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, "setup(Call, FIELDS, reference): what pack_rows reads"},
    {"pack_rows", pack_rows, METH_O, "pack_rows(calls) -> list[bytes]: version-2 rows"},
    {"pack_row", pack_row, METH_O, "pack_row(call) -> bytes: pack_rows([call])[0]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_crows",
                                    "rawcap.calls rows packed in C (twin of call_rows)", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__crows(void) { return PyModule_Create(&module); }
