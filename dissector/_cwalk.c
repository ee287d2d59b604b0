/* dissector._cwalk: the flow table's record walk in C.
 *
 * The compiled twin of dissector/_engine.py:Dissector._py_walk (the pure-Python reference,
 * which stays the fallback and the test oracle): the same calls on the same objects, in the
 * same order, so the calls that come out are the same.
 *
 *   setup(Flow, TcpStream, Half, ReassemblyStats)   the classes whose slots are read
 *   walk(dissector, buf, off, hsize, mul_a, mul_b, big_endian) -> (records, end offset)
 *
 * Records of hsize bytes whose first 16 are (a, b, caplen, _) u32 (big- or little-endian),
 * each followed by its frame; the frame's time is a * mul_a + b * mul_b. An untagged IPv4
 * TCP segment of a flow already in dissector.flows is handled here: a flow detection gave up
 * on is forgotten at FIN/RST; an in-order data segment (no SYN/FIN/RST, nothing held out of
 * order, the side not closed) advances the half's next sequence number, the stream's time
 * and byte counter, and goes straight to stream.sink.on_data; any other segment of the flow
 * goes to stream.segment. Every other frame (a new flow, UDP, IPv6, VLAN, fragments, every
 * 65536th record for the idle sweep, and objects of other types than those set up) goes to
 * dissector.packet(ts, frame). dissector.packets counts every frame either way; it is kept
 * exact before each call of dissector.packet (which reads it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    PyTypeObject *type;
    Py_ssize_t off[8];
} Layout;

/* Flow: ignored, stream; Stream: halves, closed, last_ts, stats, sink; Half: next_seq, ooo,
 * fin_seq; Stats: bytes_delivered */
static Layout flow_l, stream_l, half_l, stats_l;
static PyObject *s_on_data, *s_segment, *s_forget, *s_packet, *s_packets, *empty;

#define SLOT(o, l, i) (*(PyObject **)((char *)(o) + (l).off[i]))

static int layout(Layout *l, PyObject *cls, const char *const *names, int n) {
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "a class expected");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        PyObject *d = PyObject_GetAttrString(cls, names[i]);
        if (d == NULL) return -1;
        int ok = PyObject_TypeCheck(d, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok) l->off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "%R.%s is not an object slot", cls, names[i]);
            return -1;
        }
    }
    Py_INCREF(cls);
    Py_XSETREF(l->type, (PyTypeObject *)cls);
    return 0;
}

static PyObject *setup(PyObject *self, PyObject *args) {
    (void)self;
    static const char *const fl[] = {"ignored", "stream"};
    static const char *const st[] = {"halves", "closed", "last_ts", "stats", "sink"};
    static const char *const hf[] = {"next_seq", "ooo", "fin_seq"};
    static const char *const ss[] = {"bytes_delivered"};
    PyObject *f, *s, *h, *c;
    if (!PyArg_ParseTuple(args, "OOOO", &f, &s, &h, &c)) return NULL;
    if (layout(&flow_l, f, fl, 2) < 0 || layout(&stream_l, s, st, 5) < 0 ||
        layout(&half_l, h, hf, 3) < 0 || layout(&stats_l, c, ss, 1) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static inline uint32_t rd32(const unsigned char *p, int big) {
    return big ? ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3])
               : ((uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0]);
}
static inline unsigned be16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }

/* dissector.packets += pending */
static int add_packets(PyObject *dis, long long *pending) {
    if (!*pending) return 0;
    PyObject *cur = PyObject_GetAttr(dis, s_packets);
    if (cur == NULL) return -1;
    PyObject *inc = PyLong_FromLongLong(*pending);
    PyObject *sum = inc ? PyNumber_Add(cur, inc) : NULL;
    Py_DECREF(cur);
    Py_XDECREF(inc);
    if (sum == NULL) return -1;
    int r = PyObject_SetAttr(dis, s_packets, sum);
    Py_DECREF(sum);
    *pending = 0;
    return r;
}

static int call_forget(PyObject *dis, PyObject *flow) {
    PyObject *r = PyObject_CallMethodOneArg(dis, s_forget, flow);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* stream.segment(d, seq, flags, payload, ts) */
static int call_segment(PyObject *stream, PyObject *d, uint32_t seq, unsigned flags,
                        PyObject *payload, PyObject *ts) {
    PyObject *seq_o = PyLong_FromUnsignedLong(seq), *flags_o = PyLong_FromUnsignedLong(flags);
    PyObject *r = NULL;
    if (seq_o && flags_o) {
        PyObject *a[] = {stream, d, seq_o, flags_o, payload, ts};
        r = PyObject_VectorcallMethod(s_segment, a, 6 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_XDECREF(seq_o);
    Py_XDECREF(flags_o);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* The fast path for one TCP segment of a known flow: 1 done, 0 not ours (types), -1 error. */
static int known_flow(PyObject *dis, PyObject *ent, const unsigned char *fr, Py_ssize_t caplen,
                      uint64_t ts) {
    if (!PyTuple_CheckExact(ent) || PyTuple_GET_SIZE(ent) != 2) return 0;
    PyObject *flow = PyTuple_GET_ITEM(ent, 0), *d = PyTuple_GET_ITEM(ent, 1);
    if (Py_TYPE(flow) != flow_l.type) return 0;
    PyObject *ignored = SLOT(flow, flow_l, 0), *stream = SLOT(flow, flow_l, 1);
    if (ignored == NULL || stream == NULL || Py_TYPE(stream) != stream_l.type) return 0;
    PyObject *halves = SLOT(stream, stream_l, 0);
    long di = PyLong_AsLong(d);
    if (di == -1 && PyErr_Occurred()) return -1;
    if (halves == NULL || !PyTuple_CheckExact(halves) || di < 0 || di >= PyTuple_GET_SIZE(halves))
        return 0;
    PyObject *half = PyTuple_GET_ITEM(halves, di);
    if (Py_TYPE(half) != half_l.type) return 0;
    unsigned flags = fr[47];
    unsigned total = be16(fr + 16), hl = (unsigned)(fr[46] >> 4) * 4;
    long plen = (long)total - 20 - (long)hl;
    uint32_t seq = (uint32_t)fr[38] << 24 | (uint32_t)fr[39] << 16 | (uint32_t)fr[40] << 8 | fr[41];
    int ign = PyObject_IsTrue(ignored);
    if (ign < 0) return -1;
    if (ign) {
        if (flags & 0x05) return call_forget(dis, flow) < 0 ? -1 : 1;
        return 1;
    }
    PyObject *ts_o = NULL, *payload = NULL;
    int rc = -1;
    if (plen > 0) {
        Py_ssize_t p0 = 34 + (Py_ssize_t)hl, n = plen < caplen - p0 ? plen : caplen - p0;
        if (n < 0) n = 0;
        payload = PyBytes_FromStringAndSize(n ? (const char *)fr + p0 : NULL, n);
        ts_o = PyLong_FromUnsignedLongLong(ts);
        if (payload == NULL || ts_o == NULL) goto done;
        PyObject *next = SLOT(half, half_l, 0), *ooo = SLOT(half, half_l, 1);
        PyObject *fin = SLOT(half, half_l, 2), *closed = SLOT(stream, stream_l, 1);
        if (next == NULL || ooo == NULL || fin == NULL || closed == NULL) {
            rc = 0;
            goto done;
        }
        int in_order = 0;
        if (!(flags & 0x07) && PyLong_CheckExact(next) && fin == Py_None) {
            unsigned long long nv = PyLong_AsUnsignedLongLong(next);
            if (nv == (unsigned long long)-1 && PyErr_Occurred()) PyErr_Clear();
            else if (nv == seq) {
                int held = PyObject_IsTrue(ooo), shut = held < 0 ? -1 : PyObject_IsTrue(closed);
                if (held < 0 || shut < 0) goto done;
                in_order = !held && !shut;
            }
        }
        if (in_order) {
            PyObject *stats = SLOT(stream, stream_l, 3), *sink = SLOT(stream, stream_l, 4);
            if (stats == NULL || sink == NULL || Py_TYPE(stats) != stats_l.type) {
                rc = 0;
                goto done;
            }
            PyObject *nx = PyLong_FromUnsignedLong((seq + (uint32_t)n) & 0xFFFFFFFFu);
            if (nx == NULL) goto done;
            Py_XSETREF(SLOT(half, half_l, 0), nx);
            Py_INCREF(ts_o);
            Py_XSETREF(SLOT(stream, stream_l, 2), ts_o);
            PyObject *bd = SLOT(stats, stats_l, 0), *nn = PyLong_FromSsize_t(n);
            PyObject *sum = bd && nn ? PyNumber_Add(bd, nn) : NULL;
            Py_XDECREF(nn);
            if (sum == NULL) goto done;
            Py_XSETREF(SLOT(stats, stats_l, 0), sum);
            PyObject *a[] = {sink, d, payload, ts_o};
            PyObject *r = PyObject_VectorcallMethod(s_on_data, a,
                                                    4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            if (r == NULL) goto done;
            Py_DECREF(r);
        } else if (call_segment(stream, d, seq, flags, payload, ts_o) < 0) {
            goto done;
        }
    } else if (flags & 0x07) {
        ts_o = PyLong_FromUnsignedLongLong(ts);
        if (ts_o == NULL || call_segment(stream, d, seq, flags, empty, ts_o) < 0) goto done;
    } else {
        return 1; /* a pure ACK changes nothing for reassembly */
    }
    {
        PyObject *closed = SLOT(stream, stream_l, 1);
        int shut = closed ? PyObject_IsTrue(closed) : 0;
        if (shut < 0 || (shut && call_forget(dis, flow) < 0)) goto done;
    }
    rc = 1;
done:
    Py_XDECREF(payload);
    Py_XDECREF(ts_o);
    return rc;
}

static PyObject *walk(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "walk(dissector, buf, off, hsize, mul_a, mul_b, big_endian)");
        return NULL;
    }
    if (flow_l.type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "dissector._cwalk.setup() was not called");
        return NULL;
    }
    PyObject *dis = args[0];
    Py_ssize_t off = PyLong_AsSsize_t(args[2]), hsize = PyLong_AsSsize_t(args[3]);
    unsigned long long mul_a = PyLong_AsUnsignedLongLong(args[4]);
    unsigned long long mul_b = PyLong_AsUnsignedLongLong(args[5]);
    int big = PyObject_IsTrue(args[6]);
    if (PyErr_Occurred() || big < 0) return NULL;
    if (hsize < 16 || off < 0) {
        PyErr_SetString(PyExc_ValueError, "bad record layout");
        return NULL;
    }
    PyObject *flows = PyObject_GetAttrString(dis, "flows");
    if (flows == NULL) return NULL;
    if (!PyDict_Check(flows)) {
        Py_DECREF(flows);
        PyErr_SetString(PyExc_TypeError, "dissector.flows is not a dict");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(args[1], &v, PyBUF_SIMPLE) < 0) {
        Py_DECREF(flows);
        return NULL;
    }
    const unsigned char *buf = v.buf;
    Py_ssize_t n = v.len;
    long long count = 0, pending = 0;
    int failed = 0;
    while (off + hsize <= n) {
        const unsigned char *h = buf + off;
        uint32_t a = rd32(h, big), b = rd32(h + 4, big), caplen = rd32(h + 8, big);
        Py_ssize_t start = off + hsize, end = start + (Py_ssize_t)caplen;
        if (end > n) break;
        uint64_t ts = (uint64_t)a * mul_a + (uint64_t)b * mul_b;
        count++;
        const unsigned char *fr = buf + start;
        if (caplen >= 54 && (count & 0xFFFF) && be16(fr + 12) == 0x0800 && fr[14] == 0x45 &&
            fr[23] == 6 && !(be16(fr + 20) & 0x3FFF)) {
            PyObject *src = PyBytes_FromStringAndSize((const char *)fr + 26, 4);
            PyObject *dst = PyBytes_FromStringAndSize((const char *)fr + 30, 4);
            PyObject *sp = PyLong_FromLong((long)be16(fr + 34)), *dp = PyLong_FromLong((long)be16(fr + 36));
            PyObject *key = src && dst && sp && dp ? PyTuple_Pack(4, src, sp, dst, dp) : NULL;
            Py_XDECREF(src);
            Py_XDECREF(dst);
            Py_XDECREF(sp);
            Py_XDECREF(dp);
            if (key == NULL) { failed = 1; break; }
            PyObject *ent = PyDict_GetItemWithError(flows, key);
            Py_DECREF(key);
            if (ent == NULL && PyErr_Occurred()) { failed = 1; break; }
            if (ent != NULL) {
                Py_INCREF(ent);
                int r = known_flow(dis, ent, fr, (Py_ssize_t)caplen, ts);
                Py_DECREF(ent);
                if (r < 0) { failed = 1; break; }
                if (r > 0) {
                    pending++;
                    off = end;
                    continue;
                }
            }
        }
        if (add_packets(dis, &pending) < 0) { failed = 1; break; }
        PyObject *frame = PyBytes_FromStringAndSize((const char *)fr, (Py_ssize_t)caplen);
        PyObject *ts_o = frame ? PyLong_FromUnsignedLongLong(ts) : NULL;
        PyObject *r = NULL;
        if (ts_o != NULL) {
            PyObject *a2[] = {dis, ts_o, frame};
            r = PyObject_VectorcallMethod(s_packet, a2, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        }
        Py_XDECREF(frame);
        Py_XDECREF(ts_o);
        if (r == NULL) { failed = 1; break; }
        Py_DECREF(r);
        off = end;
    }
    PyBuffer_Release(&v);
    Py_DECREF(flows);
    if (failed) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        add_packets(dis, &pending);
        PyErr_Clear();
        PyErr_Restore(et, ev, tb);
        return NULL;
    }
    if (add_packets(dis, &pending) < 0) return NULL;
    return Py_BuildValue("(Ln)", count, off);
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, "setup(Flow, TcpStream, Half, ReassemblyStats)"},
    {"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL,
     "walk(dissector, buf, off, hsize, mul_a, mul_b, big_endian) -> (records, end offset)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cwalk",
                                    "the flow table's record walk in C (twin of Dissector._py_walk)",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cwalk(void) {
    s_on_data = PyUnicode_InternFromString("on_data");
    s_segment = PyUnicode_InternFromString("segment");
    s_forget = PyUnicode_InternFromString("_forget");
    s_packet = PyUnicode_InternFromString("packet");
    s_packets = PyUnicode_InternFromString("packets");
    empty = PyBytes_FromStringAndSize(NULL, 0);
    if (!s_on_data || !s_segment || !s_forget || !s_packet || !s_packets || !empty) return NULL;
    return PyModule_Create(&module);
}
