/* The BLAKE3 digests of a block's chunks in one call, the GIL released once.
 *
 * The block workers check every chunk of a ~1 MiB block (16 on average) against its id. With
 * the blake3 package each chunk is one call that releases the GIL and takes it back: with six
 * workers and the event loop, a worker that finished hashing 64 KiB (~10 us) waited for the GIL
 * far longer than that, sixteen times a block (py-spy: most of the workers' time). Built by
 * scripts/build_native.sh from Debian's BLAKE3 C sources (package librust-blake3-dev); the
 * engine hashes chunk by chunk with the blake3 package when this module is missing
 * (engine/io/blockio.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include "blake3.h"

/* hash_spans(data, spans) -> bytes: the 32-byte BLAKE3 digest of each span of ``data``, the
   spans given as native uint64 (offset, size) pairs; ValueError for a span outside data. The
   data buffer is held (exported) for the call: a bytearray cannot be resized meanwhile. */
static PyObject *hash_spans(PyObject *self, PyObject *args) {
    Py_buffer data, spans;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*", &data, &spans)) {
        return NULL;
    }
    PyObject *out = NULL;
    uint64_t *sp = NULL;
    if (spans.len % 16 != 0) {
        PyErr_SetString(PyExc_ValueError, "spans: not (offset, size) pairs of uint64");
        goto done;
    }
    Py_ssize_t n = spans.len / 16;
    /* a copy, checked and then read without the GIL: the caller's buffer may be changed by
       another thread meanwhile (or not be aligned for uint64 loads) */
    sp = (uint64_t *)PyMem_Malloc(spans.len > 0 ? (size_t)spans.len : 1);
    if (sp == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(sp, spans.buf, (size_t)spans.len);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (sp[2 * i] > (uint64_t)data.len || sp[2 * i + 1] > (uint64_t)data.len - sp[2 * i]) {
            PyErr_Format(PyExc_ValueError, "span %zd outside the %zd bytes of data", i, data.len);
            goto done;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, n * 32);
    if (out == NULL) {
        goto done;
    }
    uint8_t *digest = (uint8_t *)PyBytes_AS_STRING(out);
    const uint8_t *bytes = (const uint8_t *)data.buf;
    Py_BEGIN_ALLOW_THREADS
    blake3_hasher hasher;
    for (Py_ssize_t i = 0; i < n; i++) {
        blake3_hasher_init(&hasher);
        blake3_hasher_update(&hasher, bytes + sp[2 * i], (size_t)sp[2 * i + 1]);
        blake3_hasher_finalize(&hasher, digest + 32 * i, 32);
    }
    Py_END_ALLOW_THREADS
done:
    PyMem_Free(sp);
    PyBuffer_Release(&data);
    PyBuffer_Release(&spans);
    return out;
}

static PyMethodDef methods[] = {
    {"hash_spans", hash_spans, METH_VARARGS,
     "hash_spans(data, spans) -> bytes: BLAKE3 of each (offset, size) uint64 pair's span"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_blake3batch", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__blake3batch(void) { return PyModule_Create(&module); }
