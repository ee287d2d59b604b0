/* A growable byte buffer for the dissector's compiled twins (_crows.c, _ctext.c): one
 * PyMem allocation that doubles as it fills, reused between calls by its owner.
 * Define CBUF_FIRST_CAP before including to choose the first allocation's size. */
#ifndef RAWCAP_DISSECTOR_CBUF_H
#define RAWCAP_DISSECTOR_CBUF_H

#include <Python.h>
#include <string.h>

#ifndef CBUF_FIRST_CAP
#define CBUF_FIRST_CAP 1024
#endif

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Buf;

/* room for `need` more bytes; -1 with MemoryError set when the allocation fails */
static int grow(Buf *b, Py_ssize_t need) {
    if (b->len + need <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : CBUF_FIRST_CAP;
    while (cap < b->len + need) cap *= 2;
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int put(Buf *b, const void *s, Py_ssize_t n) {
    if (grow(b, n) < 0) return -1;
    memcpy(b->p + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

#endif
