/* rawcap.kafka._recvbuf: a receive buffer that is already the bytes object handed on.
 *
 *   new_frame(n) -> (bytes, writable memoryview of its n bytes)
 *
 * The plaintext Kafka client (rawcap/kafka/_wire.py) receives each fetch response with one
 * recv_into(MSG_WAITALL) straight into the bytes object its records are then views of: no
 * bytearray to copy out of. The caller must fill the buffer before anyone else sees the
 * bytes (whose hash is not cached until then) and release the view afterwards. Without this
 * extension the client receives into a bytearray and copies it once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *new_frame(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "frame size must be >= 0");
        return NULL;
    }
    PyObject *b = PyBytes_FromStringAndSize(NULL, n);
    if (b == NULL)
        return NULL;
    PyObject *view = PyMemoryView_FromMemory(PyBytes_AS_STRING(b), n, PyBUF_WRITE);
    if (view == NULL) {
        Py_DECREF(b);
        return NULL;
    }
    return Py_BuildValue("NN", b, view);
}

static PyMethodDef methods[] = {
    {"new_frame", new_frame, METH_O, "new_frame(n) -> (bytes, writable memoryview of it), to be filled first"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "rawcap.kafka._recvbuf",
    "Receive buffers that are bytes objects already (for rawcap.kafka._wire).", -1, methods,
};

PyMODINIT_FUNC PyInit__recvbuf(void) { return PyModule_Create(&moddef); }
