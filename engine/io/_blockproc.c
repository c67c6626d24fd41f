/* One fetched block decompressed, its chunks checked and written, in one call that releases
 * the GIL once.
 *
 * In Python a block worker released the GIL for zstd, took it back, released it for the
 * hashing (engine/io/_blake3batch.c), took it back, and again for each pwritev: with six
 * workers and the event loop on two cores, py-spy showed the workers mostly waiting to take
 * the GIL back after each of those calls. Here the block's bytes go through libzstd, BLAKE3
 * and pwritev with no Python in between. Built by scripts/build_native.sh (libzstd-dev and
 * Debian's BLAKE3 C sources); without it engine/io/blockio.py does the same in Python.
 *
 * The rule of the Python path holds: every chunk's BLAKE3 is checked before any byte of the
 * block is written, and a block with a chunk that differs writes nothing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h> /* sync_file_range (Python.h defines _GNU_SOURCE) */
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <zstd.h>
#include "blake3.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

/* Each worker thread's decompression context and output buffer, reused block after block (a
   new context and 1 MiB buffer per block cost an allocation each and cold caches); freed when
   the thread ends (the key's destructor). */
typedef struct {
    ZSTD_DCtx *dctx;
    uint8_t *buf;
    size_t cap;
} worker_t;

static pthread_key_t worker_key;

static void worker_free(void *p) {
    worker_t *w = (worker_t *)p;
    ZSTD_freeDCtx(w->dctx);
    free(w->buf);
    free(w);
}

/* This thread's context with room for ``need`` bytes, or NULL (out of memory). No GIL. */
static worker_t *worker(size_t need) {
    worker_t *w = (worker_t *)pthread_getspecific(worker_key);
    if (w == NULL) {
        w = (worker_t *)calloc(1, sizeof *w);
        if (w == NULL) {
            return NULL;
        }
        w->dctx = ZSTD_createDCtx();
        if (w->dctx == NULL || pthread_setspecific(worker_key, w) != 0) {
            ZSTD_freeDCtx(w->dctx);
            free(w);
            return NULL;
        }
    }
    if (w->cap < need) {
        uint8_t *buf = (uint8_t *)malloc(need);
        if (buf == NULL) {
            return NULL;
        }
        free(w->buf);
        w->buf = buf;
        w->cap = need;
    }
    return w;
}

/* A chunk write: ``fd`` at ``offset`` gets span ``span`` of the decoded block. */
typedef struct {
    int64_t fd, offset, span;
} write_t;

static int by_file_offset(const void *a, const void *b) {
    const write_t *x = (const write_t *)a, *y = (const write_t *)b;
    if (x->fd != y->fd) {
        return x->fd < y->fd ? -1 : 1;
    }
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* All of iov[0..count) at ``offset``: pwritev until done (short writes, EINTR). 0 or errno. */
static int pwritev_all(int fd, struct iovec *iov, int count, off_t offset) {
    while (count > 0) {
        ssize_t n = pwritev(fd, iov, count < IOV_MAX ? count : IOV_MAX, offset);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno;
        }
        if (n == 0) {
            return EIO;
        }
        offset += n;
        while (count > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            count--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

enum { DONE, NO_MEMORY, ZSTD_FAILED, SIZE_DIFFERS, WRITE_FAILED };

/* process(stored, zstd, raw_size, spans, ids, writes) -> int; see _blockproc.pyi. */
static PyObject *process(PyObject *self, PyObject *args) {
    Py_buffer stored, spans_in, ids_in, writes_in;
    int zstd;
    Py_ssize_t raw_size;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*pny*y*y*", &stored, &zstd, &raw_size, &spans_in, &ids_in,
                          &writes_in)) {
        return NULL;
    }
    PyObject *out = NULL;
    void *mem = NULL;
    Py_ssize_t n = spans_in.len / 16, m = writes_in.len / 24;
    if (spans_in.len % 16 != 0 || writes_in.len % 24 != 0 || ids_in.len != 32 * n) {
        PyErr_SetString(PyExc_TypeError, "spans: uint64 (offset, size) pairs; ids: 32 bytes "
                        "each; writes: int64 (fd, offset, span) triples");
        goto done;
    }
    if (raw_size < 0) {
        PyErr_SetString(PyExc_TypeError, "raw_size < 0");
        goto done;
    }
    /* copies, checked and then read without the GIL: another thread may change the caller's
       buffers meanwhile (or they may not be aligned for 8-byte loads). One allocation: spans,
       writes, ids, digests, iovecs. */
    size_t span_bytes = (size_t)spans_in.len, write_bytes = (size_t)writes_in.len;
    mem = PyMem_Malloc(span_bytes + write_bytes + 64 * (size_t)n +
                       sizeof(struct iovec) * ((size_t)m + 1));
    if (mem == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    uint64_t *sp = (uint64_t *)mem;
    write_t *wr = (write_t *)((uint8_t *)mem + span_bytes);
    uint8_t *ids = (uint8_t *)wr + write_bytes;
    uint8_t *digests = ids + 32 * n;
    struct iovec *iov = (struct iovec *)(digests + 32 * n);
    memcpy(sp, spans_in.buf, span_bytes);
    memcpy(wr, writes_in.buf, write_bytes);
    memcpy(ids, ids_in.buf, 32 * (size_t)n);
    uint64_t data_len = zstd ? (uint64_t)raw_size : (uint64_t)stored.len;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (sp[2 * i] > data_len || sp[2 * i + 1] > data_len - sp[2 * i]) {
            /* a ValueError, like a block that does not decode: the manifest's spans do not fit
               the block's bytes */
            PyErr_Format(PyExc_ValueError, "chunk %zd outside the block's %llu bytes", i,
                         (unsigned long long)data_len);
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        /* the last test keeps the end of a run of writes (offset + size) within int64 */
        if (wr[i].fd < 0 || wr[i].fd > INT_MAX || wr[i].offset < 0 || wr[i].span < 0 ||
            wr[i].span >= n || (uint64_t)wr[i].offset > (uint64_t)INT64_MAX - sp[2 * wr[i].span + 1]) {
            PyErr_Format(PyExc_TypeError, "write %zd: not (fd, offset >= 0, span < %zd)", i, n);
            goto done;
        }
    }

    int status = DONE, err = 0;
    size_t code = 0;  /* zstd's error code, or the decoded size that differs */
    Py_ssize_t bad = -1;
    const uint8_t *data = (const uint8_t *)stored.buf;
    Py_BEGIN_ALLOW_THREADS
    if (zstd) {
        /* a frame that says its size: checked before decoding (the Python path's message), and
           before the thread's buffer grows to the size the manifest gives */
        unsigned long long said = ZSTD_getFrameContentSize(data, (size_t)stored.len);
        worker_t *w = NULL;
        if (said != ZSTD_CONTENTSIZE_UNKNOWN && said != ZSTD_CONTENTSIZE_ERROR &&
            said != (unsigned long long)raw_size) {
            status = SIZE_DIFFERS;
            code = (size_t)said;
        } else if ((w = worker(raw_size > 0 ? (size_t)raw_size : 1)) == NULL) {
            status = NO_MEMORY;
        } else {
            code = ZSTD_decompressDCtx(w->dctx, w->buf, (size_t)raw_size, data,
                                       (size_t)stored.len);
            if (ZSTD_isError(code)) {
                status = ZSTD_FAILED;
            } else if (code != (size_t)raw_size) {
                status = SIZE_DIFFERS;
            }
            data = w->buf;
        }
    } else if (!stored.readonly && stored.len > 0) {
        /* a raw block in a buffer another thread could change between the hash and the write:
           what is hashed and written is a private copy (one memcpy; raw blocks are the rare
           incompressible ones) */
        worker_t *w = worker((size_t)stored.len);
        if (w == NULL) {
            status = NO_MEMORY;
        } else {
            memcpy(w->buf, data, (size_t)stored.len);
            data = w->buf;
        }
    }
    if (status == DONE) {
        blake3_hasher hasher;
        for (Py_ssize_t i = 0; i < n; i++) {
            blake3_hasher_init(&hasher);
            blake3_hasher_update(&hasher, data + sp[2 * i], (size_t)sp[2 * i + 1]);
            blake3_hasher_finalize(&hasher, digests + 32 * i, 32);
        }
        for (Py_ssize_t i = 0; i < n && bad < 0; i++) {
            if (memcmp(digests + 32 * i, ids + 32 * i, 32) != 0) {
                bad = i;
            }
        }
    }
    if (status == DONE && bad < 0) {
        /* runs of consecutive pieces per file, one pwritev each (a block's chunks mostly follow
           each other in one file) */
        qsort(wr, (size_t)m, sizeof *wr, by_file_offset);
        for (Py_ssize_t i = 0; i < m && err == 0;) {
            int count = 0;
            int64_t end = wr[i].offset;
            Py_ssize_t j = i;
            for (; j < m && wr[j].fd == wr[i].fd && wr[j].offset == end; j++) {
                uint64_t size = sp[2 * wr[j].span + 1];
                if (size > 0) {
                    iov[count].iov_base = (void *)(data + sp[2 * wr[j].span]);
                    iov[count].iov_len = (size_t)size;
                    count++;
                }
                end += (int64_t)size;
            }
            err = pwritev_all((int)wr[i].fd, iov, count, (off_t)wr[i].offset);
#ifdef SYNC_FILE_RANGE_WRITE
            /* the run's writeback starts now, beside the download: the journal's and the last
               files' fdatasyncs then find it on its way instead of writing all the install's
               dirty pages at the end (~0.1 s of waiting on a 1 GiB game). Whole pages only: a
               page the next run also writes is left to those fdatasyncs (where pages stay
               stable during writeback, btrfs with checksums, the next write would wait for
               it). Its failure is not this write's: an I/O error surfaces in the fdatasyncs. */
            int64_t first = (wr[i].offset + 4095) / 4096 * 4096, last = end / 4096 * 4096;
            if (err == 0 && last > first) {
                (void)sync_file_range((int)wr[i].fd, (off_t)first, (off_t)(last - first),
                                      SYNC_FILE_RANGE_WRITE);
            }
#endif
            i = j;
        }
        if (err != 0) {
            status = WRITE_FAILED;
        }
    }
    Py_END_ALLOW_THREADS

    switch (status) {
    case NO_MEMORY:
        PyErr_NoMemory();
        break;
    case ZSTD_FAILED:
        PyErr_Format(PyExc_ValueError, "zstd: %s", ZSTD_getErrorName(code));
        break;
    case SIZE_DIFFERS:
        PyErr_Format(PyExc_ValueError, "decoded %zu bytes, expected %zd", code, raw_size);
        break;
    case WRITE_FAILED:
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        break;
    default:
        out = PyLong_FromSsize_t(bad);
    }
done:
    PyMem_Free(mem);
    PyBuffer_Release(&stored);
    PyBuffer_Release(&spans_in);
    PyBuffer_Release(&ids_in);
    PyBuffer_Release(&writes_in);
    return out;
}

static PyMethodDef methods[] = {
    {"process", process, METH_VARARGS,
     "process(stored, zstd, raw_size, spans, ids, writes) -> -1, or the first chunk whose "
     "BLAKE3 differs from its id (nothing written then)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_blockproc", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__blockproc(void) {
    static int key_made = 0;
    if (!key_made) {
        if (pthread_key_create(&worker_key, worker_free) != 0) {
            PyErr_SetString(PyExc_OSError, "pthread_key_create failed");
            return NULL;
        }
        key_made = 1;
    }
    return PyModule_Create(&module);
}
