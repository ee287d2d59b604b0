/* rawcap.pcap._fastpcap: batch body -> pcapng Enhanced Packet Blocks, in C.
 *
 * The compiled twin of rawcap/pcap/_convert.py's epbs_py (the pure-Python reference, which
 * stays the fallback and the test oracle): same input, same output byte for byte, same
 * errors. The layouts it walks and writes are declared in schemas/ (batch body: _batch.py,
 * tpacket.py) and rawcap/pcap/_blocks.py (EPB); the constants below repeat them, and the
 * golden vectors of tests/rawcap/pcap/ check that its output matches byte for byte.
 *
 * One call walks one decompressed batch body (layout "rec" or "tpacket3", schemas/FORMAT.md),
 * keeps the packets with lo <= ts < hi, and returns their EPBs (if_tsresol = 9: the 64-bit
 * timestamp is in nanoseconds) as one bytes object, interface description blocks included
 * where an interface is first used.
 *
 *   epbs(body, layout, count, lo, hi, hi_open, resolve) -> (bytes, packets, packet_bytes)
 *
 * layout 0 = rec, 1 = tpacket3; count = the header's packet count; hi_open: no upper bound;
 * resolve(ifindex) -> (interface id, IDB bytes or b"") is called once per interface and
 * call, on its first packet inside the window. A record or frame that runs past its block
 * or the body, or a packet count other than ``count``, raises Overrun (a ValueError); the
 * caller maps it to schemas.errors.RecordOverrun. The walk runs without the GIL; it takes
 * the GIL back only to call resolve or to grow the output.
 *
 *   epbs_zstd(frame, body_len, layout, count, lo, hi, hi_open, resolve) -> same, or None
 *
 * does the same for a batch body still compressed: one zstd frame inflated (checksum
 * verified) into a buffer reused from call to call, which stays in the CPU cache for the
 * walk, instead of a fresh ~1 MiB Python bytes per batch. libzstd is loaded at run time
 * (dlopen, no build dependency) by zstd_open(path, version), which binds it only if it is
 * that zstd release: rawcap/pcap/_convert.py asks for the release python-zstandard decodes with,
 * because releases differ in what they call corrupt (1.5.4 inflates a frame with a flipped
 * bit that 1.5.7 rejects, content checksum and all). zstd_available() says whether one is
 * bound. None means "not here": no libzstd bound, more or less than one whole frame, or a
 * frame that does not inflate to exactly body_len bytes; the caller then takes the Python
 * decompression path, which accepts or rejects the body with its own reasons.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static PyObject *Overrun;

static inline uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }
static inline void wr32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

#define REC_HDR 24
#define BLOCK_DESC 48
#define SLL_OFF 48
#define SLL_END 68 /* SOCKADDR_LL_OFFSET + sizeof(sockaddr_ll) */
#define TP_STATUS_VLAN_VALID (1u << 4)
#define TP_STATUS_VLAN_TPID_VALID (1u << 6)

typedef struct {
    int32_t ifindex;
    uint32_t id;
} IfEnt;

typedef struct {
    PyObject *out;          /* bytes being filled (owned) */
    Py_ssize_t len, cap;
    PyThreadState *ts;      /* non-NULL while the GIL is released */
    PyObject *resolve;
    IfEnt *ifs;
    size_t nifs, capifs;
    size_t last;            /* index of the last interface used */
    char err[160];          /* message for Overrun, raised once the GIL is back */
    int failed;             /* 1: Overrun in err; 2: a Python error is set */
} Ctx;

static inline void gil_take(Ctx *c) { if (c->ts) { PyEval_RestoreThread(c->ts); c->ts = NULL; } }
static inline void gil_drop(Ctx *c) { if (!c->ts) c->ts = PyEval_SaveThread(); }

static int overrun(Ctx *c, const char *fmt, unsigned long long a, unsigned long long b) {
    PyOS_snprintf(c->err, sizeof c->err, fmt, a, b);
    c->failed = 1;
    return -1;
}

static int reserve(Ctx *c, Py_ssize_t need) {
    if (c->len + need <= c->cap)
        return 0;
    Py_ssize_t ncap = c->cap * 2;
    if (ncap < c->len + need)
        ncap = c->len + need + 4096;
    gil_take(c);
    int rc = _PyBytes_Resize(&c->out, ncap);
    gil_drop(c);
    if (rc < 0) {
        c->failed = 2;
        return -1;
    }
    c->cap = ncap;
    return 0;
}

/* Interface id of ifindex; calls resolve (with the GIL) on the first use. */
static int iface_id(Ctx *c, int32_t ifindex, uint32_t *id) {
    if (c->nifs && c->ifs[c->last].ifindex == ifindex) {
        *id = c->ifs[c->last].id;
        return 0;
    }
    for (size_t i = 0; i < c->nifs; i++) {
        if (c->ifs[i].ifindex == ifindex) {
            c->last = i;
            *id = c->ifs[i].id;
            return 0;
        }
    }
    gil_take(c);
    int ok = -1;
    unsigned long idv = 0;
    Py_buffer idb = {0};
    int have_idb = 0;
    PyObject *res = PyObject_CallFunction(c->resolve, "i", (int)ifindex);
    if (res == NULL)
        goto done;
    if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 2) {
        PyErr_SetString(PyExc_TypeError, "resolve() must return (interface id, IDB bytes)");
        goto done;
    }
    idv = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(res, 0));
    if (PyErr_Occurred())
        goto done;
    if (idv > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_OverflowError, "interface id does not fit in 32 bits");
        goto done;
    }
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(res, 1), &idb, PyBUF_SIMPLE) < 0)
        goto done;
    have_idb = 1;
    if (c->nifs == c->capifs) {
        size_t ncap = c->capifs ? c->capifs * 2 : 8;
        IfEnt *n = PyMem_Realloc(c->ifs, ncap * sizeof(IfEnt));
        if (n == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        c->ifs = n;
        c->capifs = ncap;
    }
    if (idb.len > 0) {
        if (c->len + idb.len > c->cap) {
            Py_ssize_t ncap = c->cap * 2;
            if (ncap < c->len + idb.len)
                ncap = c->len + idb.len + 4096;
            if (_PyBytes_Resize(&c->out, ncap) < 0)
                goto done;
            c->cap = ncap;
        }
        memcpy(PyBytes_AS_STRING(c->out) + c->len, idb.buf, (size_t)idb.len);
        c->len += idb.len;
    }
    c->ifs[c->nifs].ifindex = ifindex;
    c->ifs[c->nifs].id = (uint32_t)idv;
    c->last = c->nifs++;
    *id = (uint32_t)idv;
    ok = 0;
done:
    if (have_idb)
        PyBuffer_Release(&idb);
    Py_XDECREF(res);
    if (ok < 0)
        c->failed = 2;
    gil_drop(c);
    return ok;
}

/* One EPB: header, data (with an 802.1Q tag inserted after byte 12 if tag != NULL), pad,
 * trailing length. caplen/origlen are the lengths as written (tag included). */
static int put_epb(Ctx *c, uint32_t id, uint64_t ts, const unsigned char *data, uint64_t caplen,
                   uint64_t origlen, const unsigned char *tag) {
    if (origlen > 0xFFFFFFFFull || caplen > 0xFFFFFFF0ull)
        return overrun(c, "packet length %llu/%llu does not fit a pcapng block", caplen, origlen);
    uint32_t pad = (uint32_t)(-caplen & 3);
    uint32_t blen = (uint32_t)(32 + caplen + pad);
    if (reserve(c, blen) < 0)
        return -1;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(c->out) + c->len;
    wr32(o, 6);
    wr32(o + 4, blen);
    wr32(o + 8, id);
    wr32(o + 12, (uint32_t)(ts >> 32));
    wr32(o + 16, (uint32_t)ts);
    wr32(o + 20, (uint32_t)caplen);
    wr32(o + 24, (uint32_t)origlen);
    o += 28;
    if (tag) {
        memcpy(o, data, 12);
        memcpy(o + 12, tag, 4);
        memcpy(o + 16, data + 12, (size_t)(caplen - 16));
    } else {
        memcpy(o, data, (size_t)caplen);
    }
    o += caplen;
    memset(o, 0, pad);
    wr32(o + pad, blen);
    c->len += blen;
    return 0;
}

typedef struct {
    uint64_t lo, hi;
    int hi_open;
    long long count;
    unsigned long long n, nbytes;
} Walk;

static inline int in_window(const Walk *w, uint64_t ts) { return ts >= w->lo && (w->hi_open || ts < w->hi); }

static int walk_records(Ctx *c, Walk *w, const unsigned char *b, uint64_t end) {
    uint64_t pos = 0;
    for (long long i = 0; i < w->count; i++) {
        if (pos + REC_HDR > end)
            return overrun(c, "record %llu header runs past the end of the body", (unsigned long long)i, 0);
        const unsigned char *r = b + pos;
        uint64_t ts = rd64(r);
        uint32_t caplen = rd32(r + 8), origlen = rd32(r + 12);
        int32_t ifindex = (int32_t)rd32(r + 16);
        pos += REC_HDR;
        if (pos + caplen > end)
            return overrun(c, "record %llu (%llu bytes) runs past the end of the body",
                           (unsigned long long)i, caplen);
        if (in_window(w, ts)) {
            uint32_t id;
            if (iface_id(c, ifindex, &id) < 0 || put_epb(c, id, ts, b + pos, caplen, origlen, NULL) < 0)
                return -1;
            w->n++;
            w->nbytes += caplen;
        }
        pos += caplen;
    }
    if (pos != end)
        return overrun(c, "%llu bytes left after the last of %llu records", end - pos,
                       (unsigned long long)(w->count < 0 ? 0 : w->count));
    return 0;
}

static int walk_blocks(Ctx *c, Walk *w, const unsigned char *b, uint64_t end) {
    uint64_t pos = 0, seen = 0;
    while (pos < end) {
        if (pos + BLOCK_DESC > end)
            return overrun(c, "TPACKET_V3 block descriptor runs past the end of the body", 0, 0);
        const unsigned char *d = b + pos;
        uint32_t num = rd32(d + 12), first_off = rd32(d + 16), blk_len = rd32(d + 20);
        if (blk_len < BLOCK_DESC || pos + blk_len > end)
            return overrun(c, "TPACKET_V3 block of %llu bytes runs past the end of the body", blk_len, 0);
        uint64_t block_end = pos + blk_len;
        uint64_t frame = pos + first_off;
        for (uint32_t i = 0; i < num; i++) {
            if (frame + SLL_END > block_end)
                return overrun(c, "frame %llu header runs past the end of its block", i, 0);
            const unsigned char *f = b + frame;
            uint32_t nxt = rd32(f), sec = rd32(f + 4), nsec = rd32(f + 8);
            uint64_t snaplen = rd32(f + 12), length = rd32(f + 16);
            uint32_t status = rd32(f + 20);
            uint16_t mac = rd16(f + 24);
            uint32_t tci = rd32(f + 32);
            uint16_t tpid = rd16(f + 36);
            int32_t ifindex = (int32_t)rd32(f + SLL_OFF + 4);
            uint64_t start = frame + mac;
            if (start + snaplen > block_end)
                return overrun(c, "frame %llu (%llu bytes) runs past the end of its block", i, snaplen);
            seen++;
            if (w->count < 0 || seen > (uint64_t)w->count)
                return overrun(c, "body holds more than the %llu packets its header announces",
                               (unsigned long long)w->count, 0);
            uint64_t ts = (uint64_t)sec * 1000000000ull + nsec;
            if (in_window(w, ts)) {
                unsigned char tag[4];
                const unsigned char *tagp = NULL;
                uint64_t cap = snaplen, orig = length;
                if ((status & TP_STATUS_VLAN_VALID) && snaplen >= 12) {
                    uint16_t t = ((status & TP_STATUS_VLAN_TPID_VALID) && tpid) ? tpid : 0x8100;
                    tag[0] = (unsigned char)(t >> 8);
                    tag[1] = (unsigned char)t;
                    tag[2] = (unsigned char)(tci >> 8);
                    tag[3] = (unsigned char)tci;
                    tagp = tag;
                    cap += 4;
                    orig += 4;
                }
                uint32_t id;
                if (iface_id(c, ifindex, &id) < 0 || put_epb(c, id, ts, b + start, cap, orig, tagp) < 0)
                    return -1;
                w->n++;
                w->nbytes += cap;
            }
            if (nxt == 0 && i + 1 < num)
                return overrun(c, "frame %llu has no successor but the block announces %llu", i, num);
            frame += nxt;
        }
        pos = block_end;
    }
    if (w->count < 0 || seen != (uint64_t)w->count)
        return overrun(c, "body holds %llu packets, header announces %lld", seen, (unsigned long long)w->count);
    return 0;
}

/* Output buffer sized for the usual case: an EPB is at most 11 bytes longer than its rec
 * record (and shorter than its tpacket3 frame); IDBs and odd inputs grow it. */
static int ctx_init(Ctx *c, PyObject *resolve, Py_ssize_t body_len, int layout, long long count) {
    memset(c, 0, sizeof *c);
    c->resolve = resolve;
    Py_ssize_t est = body_len + 256;
    if (layout == 0) {
        long long recs = count < 0 ? 0 : count;
        if (recs > body_len / REC_HDR + 1)
            recs = body_len / REC_HDR + 1;
        est += 12 * (Py_ssize_t)recs;
    }
    c->out = PyBytes_FromStringAndSize(NULL, est);
    if (c->out == NULL)
        return -1;
    c->cap = est;
    return 0;
}

static int walk(Ctx *c, Walk *w, int layout, const unsigned char *body, Py_ssize_t len) {
    return layout == 0 ? walk_records(c, w, body, (uint64_t)len) : walk_blocks(c, w, body, (uint64_t)len);
}

/* The result tuple, or NULL with the walk's error set (the GIL is held). */
static PyObject *finish(Ctx *c, Walk *w, int rc) {
    PyMem_Free(c->ifs);
    if (rc < 0) {
        Py_XDECREF(c->out);
        if (c->failed == 1)
            PyErr_SetString(Overrun, c->err);
        else if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "_fastpcap: failed without an error");
        return NULL;
    }
    if (_PyBytes_Resize(&c->out, c->len) < 0)
        return NULL;
    return Py_BuildValue("NKK", c->out, w->n, w->nbytes);
}

static int check_layout(int layout) {
    if (layout != 0 && layout != 1) {
        PyErr_SetString(PyExc_ValueError, "layout must be 0 (rec) or 1 (tpacket3)");
        return -1;
    }
    return 0;
}

static PyObject *epbs(PyObject *self, PyObject *args) {
    Py_buffer body;
    int layout, hi_open;
    long long count;
    unsigned long long lo, hi;
    PyObject *resolve;
    if (!PyArg_ParseTuple(args, "y*iLKKpO:epbs", &body, &layout, &count, &lo, &hi, &hi_open, &resolve))
        return NULL;
    Ctx c;
    if (check_layout(layout) < 0 || ctx_init(&c, resolve, body.len, layout, count) < 0) {
        PyBuffer_Release(&body);
        return NULL;
    }
    Walk w = {lo, hi, hi_open, count, 0, 0};
    gil_drop(&c);
    int rc = walk(&c, &w, layout, body.buf, body.len);
    gil_take(&c);
    PyBuffer_Release(&body);
    return finish(&c, &w, rc);
}

/* -- libzstd, loaded at run time ------------------------------------------------------- */
typedef struct ZSTD_DCtx_s ZSTD_DCtx;
typedef struct {
    int state; /* 1: a libzstd is bound (zstd_bind) */
    ZSTD_DCtx *(*create)(void);
    size_t (*free)(ZSTD_DCtx *);
    size_t (*decompress)(ZSTD_DCtx *, void *, size_t, const void *, size_t);
    unsigned (*is_error)(size_t);
    size_t (*frame_size)(const void *, size_t);
} ZstdApi;
static ZstdApi zs;

#define ZSTD_MAGIC 0xFD2FB528u

/* Whether a libzstd is bound (zstd_open). */
static int zstd_load(void) { return zs.state > 0; }

/* Bind the libzstd at path if it is release `version` (ZSTD_versionNumber, e.g. 10507);
 * called with the GIL held, the stable (non-experimental) API only. Once one is bound, it
 * stays (a context made with it may be in use); another path is then accepted only if it
 * asks for the same release. */
static int zstd_bind(const char *path, unsigned version) {
    static unsigned bound;
    if (zs.state > 0)
        return bound == version;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
        return 0;
    ZstdApi z = {.state = 1};
    unsigned (*version_number)(void);
    *(void **)&version_number = dlsym(h, "ZSTD_versionNumber");
    *(void **)&z.create = dlsym(h, "ZSTD_createDCtx");
    *(void **)&z.free = dlsym(h, "ZSTD_freeDCtx");
    *(void **)&z.decompress = dlsym(h, "ZSTD_decompressDCtx");
    *(void **)&z.is_error = dlsym(h, "ZSTD_isError");
    *(void **)&z.frame_size = dlsym(h, "ZSTD_findFrameCompressedSize");
    if (!version_number || version_number() != version || !z.create || !z.free || !z.decompress ||
        !z.is_error || !z.frame_size) {
        dlclose(h);
        return 0;
    }
    bound = version;
    zs = z;
    return 1;
}

/* A decompression context and its output buffer, kept for the next call (taken and given
 * back with the GIL held, so a few threads can convert at once without a lock). */
typedef struct {
    ZSTD_DCtx *dctx;
    unsigned char *buf;
    size_t cap;
} Scratch;

#define POOL 4
static Scratch *pool[POOL];
static int npool;

static Scratch *scratch_take(size_t need) {
    Scratch *s = npool ? pool[--npool] : PyMem_RawCalloc(1, sizeof(Scratch));
    if (s == NULL)
        return NULL;
    if (s->dctx == NULL && (s->dctx = zs.create()) == NULL)
        goto fail;
    if (s->cap < need) {
        unsigned char *b = realloc(s->buf, need);
        if (b == NULL)
            goto fail;
        s->buf = b;
        s->cap = need;
    }
    return s;
fail:
    if (s->dctx)
        zs.free(s->dctx);
    free(s->buf);
    PyMem_RawFree(s);
    return NULL;
}

static void scratch_give(Scratch *s) {
    if (npool < POOL) {
        pool[npool++] = s;
        return;
    }
    zs.free(s->dctx);
    free(s->buf);
    PyMem_RawFree(s);
}

/* Exactly one whole zstd frame that inflates to exactly len bytes (no GIL needed). */
static int inflate_one_frame(Scratch *s, const unsigned char *src, size_t srclen, size_t len) {
    if (srclen < 4 || rd32(src) != ZSTD_MAGIC)
        return 0; /* a skippable frame or not zstd: the Python path says what it is */
    size_t fsize = zs.frame_size(src, srclen);
    if (zs.is_error(fsize) || fsize != srclen)
        return 0;
    size_t got = zs.decompress(s->dctx, s->buf, len, src, srclen);
    return !zs.is_error(got) && got == len;
}

static PyObject *epbs_zstd(PyObject *self, PyObject *args) {
    Py_buffer frame;
    Py_ssize_t body_len;
    int layout, hi_open;
    long long count;
    unsigned long long lo, hi;
    PyObject *resolve;
    if (!PyArg_ParseTuple(args, "y*niLKKpO:epbs_zstd", &frame, &body_len, &layout, &count, &lo, &hi,
                          &hi_open, &resolve))
        return NULL;
    if (check_layout(layout) < 0) {
        PyBuffer_Release(&frame);
        return NULL;
    }
    Scratch *s = NULL;
    if (body_len <= 0 || !zstd_load() || (s = scratch_take((size_t)body_len)) == NULL) {
        PyBuffer_Release(&frame);
        Py_RETURN_NONE; /* nothing to inflate, or no libzstd (or no memory): the Python path */
    }
    Ctx c;
    if (ctx_init(&c, resolve, body_len, layout, count) < 0) {
        scratch_give(s);
        PyBuffer_Release(&frame);
        return NULL;
    }
    Walk w = {lo, hi, hi_open, count, 0, 0};
    gil_drop(&c);
    int ok = inflate_one_frame(s, frame.buf, (size_t)frame.len, (size_t)body_len);
    int rc = ok ? walk(&c, &w, layout, s->buf, body_len) : 0;
    gil_take(&c);
    scratch_give(s);
    PyBuffer_Release(&frame);
    if (!ok) {
        PyMem_Free(c.ifs);
        Py_DECREF(c.out);
        Py_RETURN_NONE;
    }
    return finish(&c, &w, rc);
}

static PyObject *zstd_available(PyObject *self, PyObject *unused) {
    return PyBool_FromLong(zstd_load());
}

static PyObject *zstd_open(PyObject *self, PyObject *args) {
    const char *path;
    unsigned int version;
    if (!PyArg_ParseTuple(args, "sI:zstd_open", &path, &version))
        return NULL;
    return PyBool_FromLong(zstd_bind(path, version));
}

static PyMethodDef methods[] = {
    {"epbs", epbs, METH_VARARGS,
     "epbs(body, layout, count, lo, hi, hi_open, resolve) -> (bytes, packets, packet_bytes)"},
    {"epbs_zstd", epbs_zstd, METH_VARARGS,
     "epbs_zstd(frame, body_len, layout, count, lo, hi, hi_open, resolve) -> epbs()'s result or None"},
    {"zstd_available", zstd_available, METH_NOARGS, "zstd_available() -> whether a libzstd is bound"},
    {"zstd_open", zstd_open, METH_VARARGS,
     "zstd_open(path, version) -> whether the libzstd at path, of that release, is bound"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "rawcap.pcap._fastpcap",
    "Batch body to pcapng EPBs in C (twin of rawcap.pcap._convert.epbs_py).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastpcap(void) {
    PyObject *m = PyModule_Create(&moddef);
    if (m == NULL)
        return NULL;
    Overrun = PyErr_NewException("rawcap.pcap._fastpcap.Overrun", PyExc_ValueError, NULL);
    if (Overrun == NULL || PyModule_AddObjectRef(m, "Overrun", Overrun) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
