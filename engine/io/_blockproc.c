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
 *
 * Direct writes: where a file also has an O_DIRECT fd, the whole pages of a run go through it
 * and only its partial first and last pages through the page cache. Writing a game through
 * the page cache cost the kernel a copy and page bookkeeping per byte, the flusher's
 * writeback, and the install's fdatasyncs waited for that writeback; on two cores that was
 * CPU the download needed. The block is decoded at the address whose offset within a page
 * matches its first run's file offset, so a block that fills one run of one file (most of a
 * fresh install's) is written with no copy; other runs go through an aligned bounce buffer.
 * A file system that refuses a direct write (EINVAL) gets that run through the page cache.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h> /* sync_file_range (Python.h defines _GNU_SOURCE) */
#include <stdbool.h>
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

/* What O_DIRECT asks of offsets, lengths and addresses: 4096 covers the logical block sizes
   of the disks a game lands on (512 and 4096). Runs shorter than DIRECT_MIN stay buffered:
   two partial pages and a short synchronous write would cost more than they save. */
#define PAGE 4096
#define DIRECT_MIN (64 * 1024)

/* Each worker thread's decompression context and output buffer, reused block after block (a
   new context and 1 MiB buffer per block cost an allocation each and cold caches); freed when
   the thread ends (the key's destructor). */
typedef struct {
    ZSTD_DCtx *dctx;
    uint8_t *buf;  /* PAGE-aligned, PAGE bytes more than cap: a block starts at any phase */
    size_t cap;
    uint8_t *bounce;  /* PAGE-aligned: a run's whole pages when they are not aligned in buf */
    size_t bounce_cap;
} worker_t;

static pthread_key_t worker_key;

static void worker_free(void *p) {
    worker_t *w = (worker_t *)p;
    ZSTD_freeDCtx(w->dctx);
    free(w->buf);
    free(w->bounce);
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
        /* grown by a quarter at least: block sizes vary (a 1 MiB block holds whole chunks),
           and growing to each larger one freed and mapped fresh pages several times per
           thread */
        size_t grown = w->cap + w->cap / 4;  /* cap was allocated: far from overflowing */
        size_t cap = need > grown ? need : grown;
        void *buf = NULL;
        if (need > SIZE_MAX - PAGE) {
            return NULL;
        }
        if (posix_memalign(&buf, PAGE, cap + PAGE) != 0) {
            cap = need;  /* no room for the headroom: what this block needs */
            if (posix_memalign(&buf, PAGE, cap + PAGE) != 0) {
                return NULL;
            }
        }
        free(w->buf);
        w->buf = (uint8_t *)buf;
        w->cap = cap;
    }
    return w;
}

/* This thread's bounce buffer with room for ``need`` bytes, or NULL. No GIL. */
static uint8_t *bounce(worker_t *w, size_t need) {
    if (w->bounce_cap < need) {
        void *buf = NULL;
        if (posix_memalign(&buf, PAGE, need) != 0) {
            return NULL;
        }
        free(w->bounce);
        w->bounce = (uint8_t *)buf;
        w->bounce_cap = need;
    }
    return w->bounce;
}

/* A chunk write: ``fd`` at ``offset`` gets span ``span`` of the decoded block; ``dfd`` is the
   same file opened with O_DIRECT, or -1. */
typedef struct {
    int64_t fd, dfd, offset, span;
} write_t;

/* A run: the sorted writes [first, stop) follow each other in one file up to ``end``;
   ``contiguous`` when their bytes also follow each other in the block (one piece of memory). */
typedef struct {
    Py_ssize_t first, stop;
    int64_t end;
    bool contiguous;
} run_t;

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

/* ``len`` bytes at ``offset``: pwritev_all of one piece. 0 or errno. */
static int pwrite_all(int fd, const uint8_t *p, size_t len, off_t offset) {
    struct iovec one = {(void *)p, len};
    return pwritev_all(fd, &one, len > 0, offset);
}

/* The contiguous bytes ``p[0..len)`` at ``offset``: whole pages through ``dfd`` (from ``p`` when
   they are aligned there, else through the bounce buffer), the partial pages at both ends
   through ``fd``. A direct write the file system refuses (EINVAL), or one cut short, is
   finished through ``fd``. 0 or errno (ENOMEM: no bounce buffer). */
static int write_run(worker_t *w, int fd, int dfd, const uint8_t *p, size_t len, int64_t offset) {
    int64_t first = (offset + PAGE - 1) / PAGE * PAGE, last = (offset + (int64_t)len) / PAGE * PAGE;
    if (dfd < 0 || len < DIRECT_MIN || last - first < PAGE) {
        return pwrite_all(fd, p, len, (off_t)offset);
    }
    size_t head = (size_t)(first - offset), whole = (size_t)(last - first);
    int err = pwrite_all(fd, p, head, (off_t)offset);
    if (err != 0) {
        return err;
    }
    const uint8_t *src = p + head;
    if ((uintptr_t)src % PAGE != 0) {
        uint8_t *b = w != NULL ? bounce(w, whole) : NULL;
        if (b == NULL) {
            return ENOMEM;
        }
        memcpy(b, src, whole);
        src = b;
    }
    size_t done = 0;
    while (done < whole) {
        ssize_t n = pwrite(dfd, src + done, whole - done, (off_t)(first + (int64_t)done));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno != EINVAL) {
            return errno;
        }
        if (n <= 0 || (size_t)n % PAGE != 0) {
            /* refused, or cut off mid-page: the rest through the page cache (a partial
               page written directly is rewritten whole there) */
            size_t at = n > 0 ? done + (size_t)n / PAGE * PAGE : done;
            err = pwrite_all(fd, p + head + at, whole - at, (off_t)(first + (int64_t)at));
            if (err != 0) {
                return err;
            }
            break;
        }
        done += (size_t)n;
    }
    return pwrite_all(fd, p + head + whole, len - head - whole, (off_t)last);
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
    Py_ssize_t n = spans_in.len / 16, m = writes_in.len / 32;
    if (spans_in.len % 16 != 0 || writes_in.len % 32 != 0 || ids_in.len != 32 * n) {
        PyErr_SetString(PyExc_TypeError, "spans: uint64 (offset, size) pairs; ids: 32 bytes "
                        "each; writes: int64 (fd, direct fd or -1, offset, span) quads");
        goto done;
    }
    if (raw_size < 0) {
        PyErr_SetString(PyExc_TypeError, "raw_size < 0");
        goto done;
    }
    /* copies, checked and then read without the GIL: another thread may change the caller's
       buffers meanwhile (or they may not be aligned for 8-byte loads). One allocation: spans,
       writes, ids, digests, iovecs, runs. */
    size_t span_bytes = (size_t)spans_in.len, write_bytes = (size_t)writes_in.len;
    mem = PyMem_Malloc(span_bytes + write_bytes + 64 * (size_t)n +
                       (sizeof(struct iovec) + sizeof(run_t)) * ((size_t)m + 1));
    if (mem == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    uint64_t *sp = (uint64_t *)mem;
    write_t *wr = (write_t *)((uint8_t *)mem + span_bytes);
    uint8_t *ids = (uint8_t *)wr + write_bytes;
    uint8_t *digests = ids + 32 * n;
    struct iovec *iov = (struct iovec *)(digests + 32 * n);
    run_t *runs = (run_t *)(iov + m + 1);
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
        /* the last test keeps the end of a run of writes (offset + size), rounded up to a
           page, within int64 */
        if (wr[i].fd < 0 || wr[i].fd > INT_MAX || wr[i].dfd < -1 || wr[i].dfd > INT_MAX ||
            wr[i].offset < 0 || wr[i].span < 0 || wr[i].span >= n ||
            (uint64_t)wr[i].offset > (uint64_t)INT64_MAX - PAGE - sp[2 * wr[i].span + 1]) {
            PyErr_Format(PyExc_TypeError, "write %zd: not (fd, direct fd or -1, offset >= 0, "
                         "span < %zd)", i, n);
            goto done;
        }
    }
    /* runs of consecutive pieces per file (a block's chunks mostly follow each other in one
       file), found before decoding: the block is decoded at the phase of the longest run that
       goes direct, where its whole pages need no bounce copy */
    qsort(wr, (size_t)m, sizeof *wr, by_file_offset);
    Py_ssize_t nruns = 0;
    size_t phase = 0;
    bool direct = false;
    int64_t longest = 0;
    for (Py_ssize_t i = 0; i < m; nruns++) {
        run_t *r = &runs[nruns];
        r->first = i;
        r->end = wr[i].offset;
        r->contiguous = true;
        bool started = false;
        uint64_t next = 0;
        for (; i < m && wr[i].fd == wr[r->first].fd && wr[i].offset == r->end; i++) {
            uint64_t at = sp[2 * wr[i].span], size = sp[2 * wr[i].span + 1];
            if (size > 0) {
                r->contiguous = r->contiguous && (!started || at == next);
                started = true;
                next = at + size;
            }
            r->end += (int64_t)size;
        }
        r->stop = i;
        const write_t *head = &wr[r->first];
        /* what write_run sends direct: a run of one piece of the block, DIRECT_MIN or more */
        if (head->dfd >= 0 && r->contiguous && r->end - head->offset >= DIRECT_MIN) {
            direct = true;
            if (r->end - head->offset > longest) {
                longest = r->end - head->offset;
                phase = (size_t)(((head->offset - (int64_t)sp[2 * head->span]) % PAGE + PAGE) %
                                 PAGE);
            }
        }
    }

    int status = DONE, err = 0;
    size_t code = 0;  /* zstd's error code, or the decoded size that differs */
    Py_ssize_t bad = -1;
    const uint8_t *data = (const uint8_t *)stored.buf;
    worker_t *w = NULL;
    Py_BEGIN_ALLOW_THREADS
    if (zstd) {
        /* a frame that says its size: checked before decoding (the Python path's message), and
           before the thread's buffer grows to the size the manifest gives */
        unsigned long long said = ZSTD_getFrameContentSize(data, (size_t)stored.len);
        if (said != ZSTD_CONTENTSIZE_UNKNOWN && said != ZSTD_CONTENTSIZE_ERROR &&
            said != (unsigned long long)raw_size) {
            status = SIZE_DIFFERS;
            code = (size_t)said;
        } else if ((w = worker(raw_size > 0 ? (size_t)raw_size : 1)) == NULL) {
            status = NO_MEMORY;
        } else {
            code = ZSTD_decompressDCtx(w->dctx, w->buf + phase, (size_t)raw_size, data,
                                       (size_t)stored.len);
            if (ZSTD_isError(code)) {
                status = ZSTD_FAILED;
            } else if (code != (size_t)raw_size) {
                status = SIZE_DIFFERS;
            }
            data = w->buf + phase;
        }
    } else if ((!stored.readonly || direct) && stored.len > 0) {
        /* a raw block in a buffer another thread could change between the hash and the write:
           what is hashed and written is a private copy; and one written direct is copied to
           the phase of its longest run (else each run would need the bounce buffer: a copy
           all the same, and a second buffer per thread). A read-only buffer written through
           the page cache is not copied: the range threads hand theirs over read-only (no other
           thread writes it), and raw blocks are most of a game of compressed media (628 of
           the 1 GiB demo's 1,066 MB) */
        if ((w = worker((size_t)stored.len)) == NULL) {
            status = NO_MEMORY;
        } else {
            memcpy(w->buf + phase, data, (size_t)stored.len);
            data = w->buf + phase;
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
    if (status == DONE && bad < 0 && w == NULL && direct) {
        w = worker(1);  /* a read-only raw block: its bounce buffer, if a run needs one */
    }
    if (status == DONE && bad < 0) {
        /* one write per run: direct when its bytes are one piece of the block, else one
           pwritev through the page cache */
        for (Py_ssize_t k = 0; k < nruns && err == 0; k++) {
            const run_t *r = &runs[k];
            const write_t *head = &wr[r->first];
            int count = 0;
            for (Py_ssize_t j = r->first; j < r->stop; j++) {
                uint64_t size = sp[2 * wr[j].span + 1];
                if (size > 0) {
                    iov[count].iov_base = (void *)(data + sp[2 * wr[j].span]);
                    iov[count].iov_len = (size_t)size;
                    count++;
                }
            }
            if (count > 0 && r->contiguous) {
                err = write_run(w, (int)head->fd, (int)head->dfd, (const uint8_t *)iov[0].iov_base,
                                (size_t)(r->end - head->offset), head->offset);
            } else {
                err = pwritev_all((int)head->fd, iov, count, (off_t)head->offset);
            }
#ifdef SYNC_FILE_RANGE_WRITE
            /* the run's writeback starts now, beside the download: the journal's and the last
               files' fdatasyncs then find it on its way instead of writing all the install's
               dirty pages at the end (~0.1 s of waiting on a 1 GiB game). Whole pages only: a
               page the next run also writes is left to those fdatasyncs (where pages stay
               stable during writeback, btrfs with checksums, the next write would wait for
               it); pages written direct have nothing to write back. Its failure is not this
               write's: an I/O error surfaces in the fdatasyncs. */
            int64_t first = (head->offset + PAGE - 1) / PAGE * PAGE, last = r->end / PAGE * PAGE;
            if (err == 0 && last > first) {
                (void)sync_file_range((int)head->fd, (off_t)first, (off_t)(last - first),
                                      SYNC_FILE_RANGE_WRITE);
            }
#endif
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

/* An array of unsigned integers as the table keeps them (array 'I', 'L' or 'Q'), read by
   index. Held for the call: the caller keeps the GIL, so nothing resizes it meanwhile. */
typedef struct {
    Py_buffer view;
    Py_ssize_t n;
    bool wide;
} uints_t;

static int uints_get(PyObject *obj, uints_t *a, const char *name) {
    if (PyObject_GetBuffer(obj, &a->view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    const char *f = a->view.format != NULL ? a->view.format : "B";
    if (*f == '@' || *f == '=') {
        f++;
    }
    bool unsigned_int = (f[0] == 'I' || f[0] == 'L' || f[0] == 'Q') && f[1] == '\0';
    if (!unsigned_int || (a->view.itemsize != 4 && a->view.itemsize != 8)) {
        PyErr_Format(PyExc_TypeError, "%s: an array of unsigned 32- or 64-bit integers", name);
        PyBuffer_Release(&a->view);
        return -1;
    }
    a->wide = a->view.itemsize == 8;
    a->n = a->view.len / a->view.itemsize;
    return 0;
}

static inline uint64_t uints_at(const uints_t *a, Py_ssize_t i) {
    /* memcpy: a buffer need not be aligned for its item size (a sliced memoryview) */
    if (a->wide) {
        uint64_t v;
        memcpy(&v, (const uint8_t *)a->view.buf + 8 * i, 8);
        return v;
    }
    uint32_t v;
    memcpy(&v, (const uint8_t *)a->view.buf + 4 * i, 4);
    return v;
}

/* gather(ids, block_offset, size, rows_start, rows, row_file, row_offset, order, lo, hi):
   what ``process`` needs of the unique chunks order[lo:hi] (one block's, by their offset in
   it), read straight from the manifest's chunk table (patcher/manifest.py ChunkTable): in
   Python the same loops made a tuple and a list per chunk while holding the GIL, ~20 us a
   block that six range threads queued for. Returns (spans, ids, writes, per_file): spans
   and ids as ``process`` takes them, writes as int64 (file index, file offset, span) triples
   for ``bind``, per_file {file index: (chunk writes, bytes)}. IndexError when the table's
   arrays do not hold what they name. */
static PyObject *gather(PyObject *self, PyObject *args) {
    PyObject *objs[8];
    Py_ssize_t lo, hi;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOOnn", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4],
                          &objs[5], &objs[6], &objs[7], &lo, &hi)) {
        return NULL;
    }
    static const char *names[8] = {"ids", "block_offset", "size", "rows_start", "rows",
                                   "row_file", "row_offset", "order"};
    Py_buffer ids;
    uints_t a[7];
    int held = 0;
    PyObject *spans = NULL, *out_ids = NULL, *writes = NULL, *per_file = NULL, *out = NULL;
    int64_t *files = NULL; /* (file index, chunk writes, bytes) per file the block touches */
    if (PyObject_GetBuffer(objs[0], &ids, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    for (; held < 7; held++) {
        if (uints_get(objs[held + 1], &a[held], names[held + 1]) < 0) {
            goto done;
        }
    }
    const uints_t *offs = &a[0], *sizes = &a[1], *start = &a[2], *rows = &a[3],
                  *row_file = &a[4], *row_offset = &a[5], *order = &a[6];
    if (lo < 0 || hi < lo || hi > order->n) {
        PyErr_Format(PyExc_IndexError, "chunks [%zd, %zd) of an order of %zd", lo, hi, order->n);
        goto done;
    }
    Py_ssize_t n = hi - lo, m = 0, nfiles = 0;
    /* every index checked before anything is read through it */
    for (Py_ssize_t i = lo; i < hi; i++) {
        uint64_t u = uints_at(order, i);
        if (u >= (uint64_t)sizes->n || u >= (uint64_t)offs->n ||
            u + 1 >= (uint64_t)start->n || 32 * (u + 1) > (uint64_t)ids.len) {
            PyErr_Format(PyExc_IndexError, "chunk %llu outside the table", (unsigned long long)u);
            goto done;
        }
        uint64_t first = uints_at(start, (Py_ssize_t)u), stop = uints_at(start, (Py_ssize_t)u + 1);
        if (first > stop || stop > (uint64_t)rows->n) {
            PyErr_Format(PyExc_IndexError, "rows of chunk %llu outside the table",
                         (unsigned long long)u);
            goto done;
        }
        for (uint64_t k = first; k < stop; k++) {
            uint64_t r = uints_at(rows, (Py_ssize_t)k);
            if (r >= (uint64_t)row_file->n || r >= (uint64_t)row_offset->n ||
                uints_at(row_file, (Py_ssize_t)r) > (uint64_t)INT64_MAX ||
                uints_at(row_offset, (Py_ssize_t)r) > (uint64_t)INT64_MAX) {
                PyErr_Format(PyExc_IndexError, "row %llu outside the table",
                             (unsigned long long)r);
                goto done;
            }
        }
        m += (Py_ssize_t)(stop - first);
    }
    spans = PyBytes_FromStringAndSize(NULL, 16 * n);
    out_ids = PyBytes_FromStringAndSize(NULL, 32 * n);
    writes = PyBytes_FromStringAndSize(NULL, 24 * m);
    files = PyMem_Malloc(3 * sizeof(int64_t) * (size_t)(m + 1));
    if (spans == NULL || out_ids == NULL || writes == NULL || files == NULL) {
        if (files == NULL) {
            PyErr_NoMemory();
        }
        goto done;
    }
    uint64_t *sp = (uint64_t *)PyBytes_AS_STRING(spans);
    uint8_t *id = (uint8_t *)PyBytes_AS_STRING(out_ids);
    int64_t *wr = (int64_t *)PyBytes_AS_STRING(writes);
    Py_ssize_t w = 0, last = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t u = (Py_ssize_t)uints_at(order, lo + i);
        uint64_t size = uints_at(sizes, u);
        sp[2 * i] = uints_at(offs, u);
        sp[2 * i + 1] = size;
        memcpy(id + 32 * i, (const uint8_t *)ids.buf + 32 * u, 32);
        for (uint64_t k = uints_at(start, u); k < uints_at(start, u + 1); k++, w++) {
            Py_ssize_t r = (Py_ssize_t)uints_at(rows, (Py_ssize_t)k);
            int64_t fi = (int64_t)uints_at(row_file, r);
            wr[3 * w] = fi;
            wr[3 * w + 1] = (int64_t)uints_at(row_offset, r);
            wr[3 * w + 2] = i;
            /* a block's chunks mostly follow each other in one file: the last one first */
            if (last < 0 || files[3 * last] != fi) {
                for (last = 0; last < nfiles && files[3 * last] != fi; last++) {
                }
                if (last == nfiles) {
                    files[3 * nfiles] = fi;
                    files[3 * nfiles + 1] = files[3 * nfiles + 2] = 0;
                    nfiles++;
                }
            }
            files[3 * last + 1] += 1;
            files[3 * last + 2] += (int64_t)size;
        }
    }
    per_file = PyDict_New();
    if (per_file == NULL) {
        goto done;
    }
    for (Py_ssize_t f = 0; f < nfiles; f++) {
        PyObject *key = PyLong_FromLongLong(files[3 * f]);
        PyObject *value = Py_BuildValue("(LL)", (long long)files[3 * f + 1],
                                        (long long)files[3 * f + 2]);
        int failed = key == NULL || value == NULL || PyDict_SetItem(per_file, key, value) < 0;
        Py_XDECREF(key);
        Py_XDECREF(value);
        if (failed) {
            goto done;
        }
    }
    out = PyTuple_Pack(4, spans, out_ids, writes, per_file);
done:
    PyMem_Free(files);
    Py_XDECREF(spans);
    Py_XDECREF(out_ids);
    Py_XDECREF(writes);
    Py_XDECREF(per_file);
    for (int i = 0; i < held; i++) {
        PyBuffer_Release(&a[i].view);
    }
    PyBuffer_Release(&ids);
    return out;
}

/* bind(writes, fds): ``gather``'s (file index, file offset, span) triples as ``process``'s
   (fd, direct fd or -1, file offset, span) quads, the fds from {file index: (fd, direct fd)}
   (engine/io/staging.py Staging.held). KeyError for a file the dict does not hold. */
static PyObject *bind(PyObject *self, PyObject *args) {
    Py_buffer in;
    PyObject *fds, *out = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*O!", &in, &PyDict_Type, &fds)) {
        return NULL;
    }
    Py_ssize_t m = in.len / 24;
    if (in.len % 24 != 0) {
        PyErr_SetString(PyExc_TypeError, "writes: int64 (file index, offset, span) triples");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, 32 * m);
    if (out == NULL) {
        goto done;
    }
    int64_t *quads = (int64_t *)PyBytes_AS_STRING(out);
    int64_t last = -1, fd = -1, dfd = -1;
    for (Py_ssize_t i = 0; i < m; i++) {
        int64_t triple[3];
        memcpy(triple, (const uint8_t *)in.buf + 24 * i, sizeof triple);
        if (i == 0 || triple[0] != last) {
            PyObject *key = PyLong_FromLongLong(triple[0]);
            if (key == NULL) {
                Py_CLEAR(out);
                goto done;
            }
            PyObject *pair = PyDict_GetItemWithError(fds, key); /* borrowed */
            if (pair == NULL) {
                if (!PyErr_Occurred()) {
                    PyErr_SetObject(PyExc_KeyError, key);
                }
                Py_DECREF(key);
                Py_CLEAR(out);
                goto done;
            }
            Py_DECREF(key);
            /* exact ints only: converting anything else could run Python code that changes
               ``fds`` and frees the borrowed pair */
            if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
                !PyLong_CheckExact(PyTuple_GET_ITEM(pair, 0)) ||
                !PyLong_CheckExact(PyTuple_GET_ITEM(pair, 1))) {
                PyErr_SetString(PyExc_TypeError, "fds: {file index: (fd, direct fd)} of ints");
                Py_CLEAR(out);
                goto done;
            }
            fd = PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 0));
            if (fd == -1 && PyErr_Occurred()) {
                Py_CLEAR(out);
                goto done;
            }
            dfd = PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 1));
            if (dfd == -1 && PyErr_Occurred()) {
                Py_CLEAR(out);
                goto done;
            }
            last = triple[0];
        }
        quads[4 * i] = fd;
        quads[4 * i + 1] = dfd;
        quads[4 * i + 2] = triple[1];
        quads[4 * i + 3] = triple[2];
    }
done:
    PyBuffer_Release(&in);
    return out;
}

static PyMethodDef methods[] = {
    {"process", process, METH_VARARGS,
     "process(stored, zstd, raw_size, spans, ids, writes) -> -1, or the first chunk whose "
     "BLAKE3 differs from its id (nothing written then)"},
    {"gather", gather, METH_VARARGS,
     "gather(ids, block_offset, size, rows_start, rows, row_file, row_offset, order, lo, hi) "
     "-> (spans, ids, writes, per_file) of one block's chunks"},
    {"bind", bind, METH_VARARGS,
     "bind(writes, fds) -> writes as (fd, direct fd, offset, span) quads"},
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
    PyObject *m = PyModule_Create(&module);
    /* read by engine/io/staging.py's test: its DIRECT_MIN (no direct fd for smaller files)
       must be this one */
    if (m != NULL && PyModule_AddIntConstant(m, "DIRECT_MIN", DIRECT_MIN) != 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
