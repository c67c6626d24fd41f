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
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include "blake3.h"

/* A copy of (offset, size) uint64 pairs, checked and then read without the GIL: the caller's
   buffer may be changed by another thread meanwhile (or not be aligned for uint64 loads).
   NULL with MemoryError set. */
static uint64_t *copied_pairs(const Py_buffer *spans) {
    uint64_t *sp = (uint64_t *)PyMem_Malloc(spans->len > 0 ? (size_t)spans->len : 1);
    if (sp == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(sp, spans->buf, (size_t)spans->len);
    return sp;
}

static void blake3_of(const uint8_t *data, size_t size, uint8_t out[32]) {
    blake3_hasher hasher;
    blake3_hasher_init(&hasher);
    blake3_hasher_update(&hasher, data, size);
    blake3_hasher_finalize(&hasher, out, 32);
}

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
    if ((sp = copied_pairs(&spans)) == NULL) {
        goto done;
    }
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
    for (Py_ssize_t i = 0; i < n; i++) {
        blake3_of(bytes + sp[2 * i], (size_t)sp[2 * i + 1], digest + 32 * i);
    }
    Py_END_ALLOW_THREADS
done:
    PyMem_Free(sp);
    PyBuffer_Release(&data);
    PyBuffer_Release(&spans);
    return out;
}

/* check_chunks(fd, spans, ids, buf, read_bytes) -> bytes: one flag per chunk of a file, 0
   when its bytes hash to its id, 1 when they do not, 2 when the file ends before it. The
   chunks (``spans``: native uint64 (file offset, size) pairs, in file order) are read with
   pread into ``buf``, whole chunks up to ``read_bytes`` per read (one chunk when larger), and
   hashed, all without the GIL. Verify reads a piece of a file through this one call: with a
   Python call per chunk (~4 per read) two workers handed the GIL back and forth ~12,000 times
   per 330 MB, and kept ~8% below ``cat`` cold even with the hashing taken out (session 30).
   OSError for a failed read; ValueError for a chunk larger than ``buf`` or bad arguments. */
static PyObject *check_chunks(PyObject *self, PyObject *args) {
    int fd;
    Py_buffer spans, ids, buf;
    Py_ssize_t read_bytes;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*y*w*n", &fd, &spans, &ids, &buf, &read_bytes)) {
        return NULL;
    }
    PyObject *out = NULL;
    uint64_t *sp = NULL;
    Py_ssize_t n = spans.len / 16;
    if (spans.len % 16 != 0 || ids.len != 32 * n) {
        PyErr_SetString(PyExc_ValueError, "spans: not (offset, size) uint64 pairs, one id each");
        goto done;
    }
    if ((sp = copied_pairs(&spans)) == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (sp[2 * i + 1] > (uint64_t)buf.len || sp[2 * i] > (uint64_t)INT64_MAX - sp[2 * i + 1]
            || (i > 0 && sp[2 * i] < sp[2 * i - 2] + sp[2 * i - 1])) {
            PyErr_Format(PyExc_ValueError,
                         "chunk %zd: larger than the %zd-byte buffer, or out of file order", i,
                         buf.len);
            goto done;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) {
        goto done;
    }
    char *flags = PyBytes_AS_STRING(out);
    uint8_t *data = (uint8_t *)buf.buf;
    const uint8_t *want = (const uint8_t *)ids.buf;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    uint8_t digest[32];
    Py_ssize_t i = 0;
    while (i < n && !err) {
        uint64_t start = sp[2 * i];
        Py_ssize_t j = i + 1;
        while (j < n && sp[2 * j] + sp[2 * j + 1] - start <= (uint64_t)read_bytes
               && sp[2 * j] + sp[2 * j + 1] - start <= (uint64_t)buf.len) {
            j++;
        }
        size_t want_len = (size_t)(sp[2 * (j - 1)] + sp[2 * (j - 1) + 1] - start);
        size_t got = 0;
        while (got < want_len) {
            ssize_t r = pread(fd, data + got, want_len - got, (off_t)(start + got));
            if (r < 0) {
                if (errno == EINTR) {
                    continue;
                }
                err = errno;
                break;
            }
            if (r == 0) {
                break;  /* the file ends here */
            }
            got += (size_t)r;
        }
        for (Py_ssize_t k = i; k < j && !err; k++) {
            uint64_t lo = sp[2 * k] - start, size = sp[2 * k + 1];
            if (lo + size > got) {
                flags[k] = 2;
                continue;
            }
            blake3_of(data + lo, (size_t)size, digest);
            flags[k] = memcmp(digest, want + 32 * k, 32) == 0 ? 0 : 1;
        }
        i = j;
    }
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        Py_CLEAR(out);
    }
done:
    PyMem_Free(sp);
    PyBuffer_Release(&spans);
    PyBuffer_Release(&ids);
    PyBuffer_Release(&buf);
    return out;
}

static PyMethodDef methods[] = {
    {"check_chunks", check_chunks, METH_VARARGS,
     "check_chunks(fd, spans, ids, buf, read_bytes) -> bytes: per chunk 0 ok, 1 wrong, 2 cut"},
    {"hash_spans", hash_spans, METH_VARARGS,
     "hash_spans(data, spans) -> bytes: BLAKE3 of each (offset, size) uint64 pair's span"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_blake3batch", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__blake3batch(void) { return PyModule_Create(&module); }
