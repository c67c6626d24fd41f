"""Per-file binary delta patches between two releases of a game.

For every file that changed between two versions the publisher ships whichever
is smallest of an HDiffPatch patch, a bsdiff patch, a zstd patch, or the file's
new chunks.  This
module builds and applies the two patch kinds and says which one (if any) beats
the chunks, whose size the caller passes in as the *budget*.

Why two methods (measured on real releases):

* **bsdiff** (suffix-array diff + bzip2) wins on large executables, where a code
  change shifts thousands of addresses by small amounts.  Building a patch
  needs about 17x the file size in RAM, so it is only tried for files up to
  ``BSDIFF_MAX_FILE``.
* **zstd**, with the old file as a raw-content dictionary, wins on small
  libraries and data and works for any size.  zstd only finds matches in the
  part of a dictionary that its match tables cover, and the level presets cover
  just a few MiB: with them a large old file is silently indexed only at its
  tail.  So the parameters are derived from the file sizes: the window covers
  old+new, the hash and binary-tree tables cover the whole old file, and the
  match finder is at least ``btlazy2`` (with zstd 1.5.7 the fast/dfast/lazy match
  finders lose most of a large dictionary).  Long-distance matching is enabled
  too, but dictionary matches come from the sized tables: measured on zstd
  1.5.7, LDM does not change the patch size.

* **HDiffPatch** (``hdiffpatch``: suffix-array matching with a choice of entropy
  coders) builds a patch 3-10x faster than a level-19 zstd patch in ~8x the file
  size of RAM, and on data files (packs of textures, audio, levels) matched or
  beat both others (measured on the demo catalog).  The match search runs once
  with no compression; re-coding the result with lzma2, zstd and bzip2 costs
  milliseconds, and the smallest is kept.

Which methods run is decided before running any, from the file's kind and size
(:func:`plan_methods`): HDiffPatch always; bsdiff only for executables and
libraries up to ``BSDIFF_MAX_FILE`` (where its approximate matching of shifted
addresses wins); zstd for files up to ``ZSTD_FULL_MAX`` (it wins on small text
files, where every byte of container counts) -- above that its cost grows with
the file, not with the change (56 CPU s for a 20 kB patch of a 100 MB pack).

Applying a patch is defensive: the old file must hash to the expected SHA-256,
the output size is checked against the expected size *before* the output is
allocated, and the output must hash to the expected SHA-256.  Every failure is
a :class:`~patcher.errors.DeltaError`.

Building runs in worker processes (bsdiff4 holds the GIL) and is scheduled
against a memory limit, because a single bsdiff of a 64 MiB file needs ~1 GiB.
"""

from __future__ import annotations

import bz2
import enum
import hashlib
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import bsdiff4
import bsdiff4.core
import zstandard

from patcher.errors import DeltaError

__all__ = [
    "BSDIFF_MAX_FILE",
    "BSDIFF_SKIP_SHARE",
    "PatchJob",
    "PatchMethod",
    "PatchResult",
    "apply_patch",
    "apply_patch_to_proven",
    "build_best_patch",
    "build_bsdiff",
    "build_hdiff",
    "build_patches",
    "build_zstd",
    "estimate_job_memory",
    "hdiff_sizes",
    "is_executable",
    "plan_methods",
]


class PatchMethod(enum.StrEnum):
    """How a patch turns the old file into the new one."""

    BSDIFF = "bsdiff"
    ZSTD = "zstd"
    HDIFF = "hdiffpatch"


BSDIFF_MAX_FILE = 64 * 1024 * 1024
"""bsdiff is only tried when both the old and the new file are at most this big."""

BSDIFF_SKIP_SHARE = 0.05
"""bsdiff runs after HDiffPatch only while HDiffPatch's patch is under this share of the new
file. bsdiff's edge is approximate matching of code whose addresses shifted by a small edit;
measured on the demo executable (29 MB): HDiffPatch patch 1.9% of the file -> bsdiff 8% smaller,
0.14% -> 2% larger, 10.9% (a rewrite) -> 6% larger for 20 of the step's 80 CPU seconds."""

ZSTD_FULL_MAX = 16 * 1024 * 1024
"""zstd patches are only built when both files are at most this big (cost grows with the file)."""

HDIFF_MAX_FILE = 1024 * 1024 * 1024
"""HDiffPatch holds both files and a suffix array (~8x the old file) in RAM."""

# ELF, PE, Mach-O (32/64, both byte orders, fat): executables and libraries, where bsdiff's
# approximate matching of shifted addresses wins (measured: 88.7 kB vs 120 kB HDiffPatch).
_EXECUTABLE_MAGIC = (b"\x7fELF", b"MZ", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf",
                     b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")
_EXECUTABLE_SUFFIXES = (".exe", ".dll", ".so", ".dylib", ".bin")

_MiB = 1024 * 1024

# Levels below this use match finders (fast, dfast, greedy, lazy) that index only
# part of a large raw-content dictionary; the binary-tree finders index all of it.
_MIN_ZSTD_LEVEL = 13
# Table caps bound zstd's memory, about 2 x 4 x (2**hash_log + 2**chain_log) bytes
# (the dictionary's tables are built once, then copied into the compression context),
# i.e. 9-18x the old file: full coverage of old files up to 128 MiB, for ~1.2 GiB.
_HASH_LOG_CAP = 25
_CHAIN_LOG_CAP = 27
_LDM_HASH_LOG_CAP = 22  # 8-byte entries: at most 32 MiB
_ZSTD_OVERHEAD = 8 * _MiB
_INLINE_MAX_ESTIMATE = 64 * _MiB  # jobs this small run in the publishing process
_BSDIFF_RAM_FACTOR = 17

# No patch of a method can be smaller than these (an empty frame / an empty
# BSDIFF40 patch: 32-byte header plus three empty bzip2 streams).
_ZSTD_MIN_PATCH = 9
_BSDIFF_MIN_PATCH = 74

_HDIFF_RAM_FACTOR = 8
_HDIFF_MAGIC = b"HDIFF13&"

_HDIFF_TYPES = {b"", b"lzma2", b"zstd", b"bz2"}  # compress-type names in the header

_BSDIFF_MAGIC = b"BSDIFF40"
_BSDIFF_HEADER = 32
_BSDIFF_CONTROL_ENTRY = 24


# --------------------------------------------------------------------------- building


def build_bsdiff(old: bytes, new: bytes) -> bytes:
    """Return a BSDIFF40 patch turning ``old`` into ``new`` (needs ~17x the size in RAM)."""
    try:
        return bytes(bsdiff4.diff(old, new))
    except ValueError as exc:
        raise DeltaError(f"bsdiff patch could not be built: {exc}") from exc


def build_zstd(old: bytes, new: bytes, level: int = 19) -> bytes:
    """Return a zstd frame of ``new`` compressed with ``old`` as a raw-content dictionary.

    ``level`` is 1..22; levels below 13 are treated as 13, because the faster match
    finders miss most of a large dictionary.  The frame records the content size and
    carries no checksum (:func:`apply_patch` verifies SHA-256 instead).
    """
    params = _zstd_params(len(old), len(new), level)
    try:
        compressor = zstandard.ZstdCompressor(
            dict_data=_raw_dict(old), compression_params=params
        )
        return compressor.compress(new)
    except zstandard.ZstdError as exc:
        raise DeltaError(f"zstd patch could not be built: {exc}") from exc


def build_hdiff(old: bytes, new: bytes) -> bytes:
    """Return the smallest HDiffPatch patch (one match search, then each coder) turning
    ``old`` into ``new``."""
    import hdiffpatch  # a C extension: loaded only where patches are built or applied

    try:
        plain = hdiffpatch.diff(old, new, "none", validate=False)
        best = plain
        # the strongest setting of each coder apply() decodes; re-coding costs milliseconds
        coders = (hdiffpatch.Lzma2Config(level=9, window=26),
                  hdiffpatch.ZStdConfig(level=22, window=27), hdiffpatch.BZip2Config(level=9))
        for coder in coders:
            coded = hdiffpatch.recompress(plain, coder)
            if len(coded) < len(best):
                best = coded
        return best
    except (hdiffpatch.HDiffPatchError, ValueError, MemoryError) as exc:
        raise DeltaError(f"HDiffPatch patch could not be built: {exc}") from exc


def _ceil_log2(n: int) -> int:
    return max(n - 1, 0).bit_length()


def _window_log(total: int) -> int:
    """Window log covering ``total`` bytes (old + new), within zstd's limits."""
    return min(max(_ceil_log2(total), zstandard.WINDOWLOG_MIN), zstandard.WINDOWLOG_MAX)


def _zstd_params(old_size: int, new_size: int, level: int) -> zstandard.ZstdCompressionParameters:
    _check_level(level)
    level = max(level, _MIN_ZSTD_LEVEL)
    base = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=new_size, dict_size=old_size
    )
    window_log = _window_log(old_size + new_size)
    dict_log = _ceil_log2(max(old_size, 1))
    # A dictionary is loaded only up to 2**max(hash_log + 3, chain_log + 1) bytes from
    # its end, and the binary tree links positions up to 2**(chain_log - 1) back: size
    # both from the old file instead of the level preset.  Measured on 11-63 MiB
    # binaries: chain_log = dict_log - 1 .. dict_log + 2 give the same patch size,
    # dict_log - 2 makes it ~200x larger; a hash_log below dict_log - 3 costs nothing.
    hash_log = min(max(base.hash_log, dict_log - 3), _HASH_LOG_CAP)
    chain_log = min(max(base.chain_log, dict_log), _CHAIN_LOG_CAP)
    ldm_hash_log = min(max(window_log - 4, zstandard.HASHLOG_MIN), _LDM_HASH_LOG_CAP)
    return zstandard.ZstdCompressionParameters.from_level(
        level,
        source_size=new_size,
        dict_size=old_size,
        window_log=window_log,
        hash_log=hash_log,
        chain_log=chain_log,
        strategy=max(base.strategy, zstandard.STRATEGY_BTLAZY2),
        enable_ldm=True,
        ldm_hash_log=ldm_hash_log,
        write_content_size=True,
        write_checksum=False,
        write_dict_id=False,
    )


def _check_level(level: int) -> None:
    if not 1 <= level <= zstandard.MAX_COMPRESSION_LEVEL:
        raise ValueError(f"zstd level must be 1..{zstandard.MAX_COMPRESSION_LEVEL}, got {level}")


def _raw_dict(old: bytes) -> zstandard.ZstdCompressionDict | None:
    # An empty file makes no dictionary; builder and applier agree on that.
    if not old:
        return None
    return zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


# --------------------------------------------------------------------------- applying


def apply_patch(
    method: PatchMethod,
    old: bytes,
    patch: bytes,
    *,
    old_sha256: str,
    new_sha256: str | None,
    new_size: int,
) -> bytes:
    """Apply ``patch`` to ``old`` and return the new file's bytes.

    Refuses (:class:`DeltaError`, code ``DELTA_PATCH_APPLICATION_FAILED``) when ``old``
    does not hash to ``old_sha256`` (input hash), when the patch is corrupt or truncated,
    when it would produce other than ``new_size`` bytes (checked before the output is
    allocated), or when the output does not hash to ``new_sha256`` (output hash).
    ``new_sha256`` None: the caller hashes the output itself and checks it later (an update
    document's patches, whose outputs the new manifest's signature proves).
    """
    try:
        method = PatchMethod(method)
    except ValueError as exc:
        raise DeltaError(f"unknown patch method {method!r}") from exc
    actual_old = _sha256(old)
    if actual_old != old_sha256.lower():
        raise DeltaError(
            f"input hash mismatch: old file has sha256 {actual_old}, "
            f"the {method} patch expects {old_sha256}"
        )
    return apply_patch_to_proven(method, old, patch, new_sha256=new_sha256, new_size=new_size)


def apply_patch_to_proven(
    method: PatchMethod,
    old: bytes,
    patch: bytes,
    *,
    new_sha256: str | None,
    new_size: int,
) -> bytes:
    """:func:`apply_patch` for an ``old`` whose SHA-256 the caller has already checked (an
    update document's derivation hashes each installed source once, while reading it, however
    many patches name it). Everything else is checked as there."""
    if new_size < 0:
        raise DeltaError(f"invalid expected output size {new_size}")
    try:
        method = PatchMethod(method)
    except ValueError as exc:
        raise DeltaError(f"unknown patch method {method!r}") from exc
    try:
        if method is PatchMethod.ZSTD:
            out = _apply_zstd(old, patch, new_size)
        elif method is PatchMethod.HDIFF:
            out = _apply_hdiff(old, patch, new_size)
        else:
            out = _apply_bsdiff(old, patch, new_size)
    except (zstandard.ZstdError, ValueError, OSError, EOFError, MemoryError) as exc:
        raise DeltaError(f"corrupt {method} patch: {exc}") from exc

    if len(out) != new_size:
        raise DeltaError(
            f"output size mismatch: {method} patch produced {len(out)} bytes, expected {new_size}"
        )
    if new_sha256 is None:
        return out
    actual_new = _sha256(out)
    if actual_new != new_sha256.lower():
        raise DeltaError(
            f"output hash mismatch: {method} patch produced sha256 {actual_new}, "
            f"expected {new_sha256}"
        )
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _apply_zstd(old: bytes, patch: bytes, new_size: int) -> bytes:
    frame = zstandard.get_frame_parameters(patch)
    # decompress() allocates the size declared in the frame header, ignoring
    # max_output_size, so a declared size is checked first.
    if frame.content_size not in (zstandard.CONTENTSIZE_UNKNOWN, new_size):
        raise DeltaError(
            f"output size mismatch: zstd patch declares {frame.content_size} bytes, "
            f"expected {new_size}"
        )
    decompressor = zstandard.ZstdDecompressor(
        dict_data=_raw_dict(old),
        max_window_size=1 << _window_log(len(old) + new_size),
    )
    return decompressor.decompress(patch, max_output_size=new_size, allow_extra_data=False)


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    """HDiffPatch's packed unsigned integer: 7-bit groups, most significant first, the high
    bit set on every byte but the last. Returns (value, position after it)."""
    value = 0
    for _ in range(10):
        if pos >= len(view):
            raise ValueError("truncated header")
        byte = view[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, pos
    raise ValueError("header integer too long")


def hdiff_sizes(patch: bytes) -> tuple[int, int]:
    """(new size, old size) declared by an HDiffPatch header, refusing foreign containers."""
    view = memoryview(patch)
    if len(view) < len(_HDIFF_MAGIC) or view[: len(_HDIFF_MAGIC)] != _HDIFF_MAGIC:
        raise ValueError("not an HDiffPatch patch (bad magic)")
    end = bytes(view[len(_HDIFF_MAGIC) : len(_HDIFF_MAGIC) + 16]).find(b"\0")
    coder = bytes(view[len(_HDIFF_MAGIC) : len(_HDIFF_MAGIC) + max(end, 0)])
    if end < 0 or coder not in _HDIFF_TYPES:
        raise ValueError(f"unsupported HDiffPatch coder {coder!r}")
    new_size, pos = _varint(view, len(_HDIFF_MAGIC) + end + 1)
    old_size, _ = _varint(view, pos)
    return new_size, old_size


def _apply_hdiff(old: bytes, patch: bytes, new_size: int) -> bytes:
    import hdiffpatch

    # The applier allocates what the header declares: check it against what the signed index
    # says before anything is allocated.
    declared_new, declared_old = hdiff_sizes(patch)
    if declared_new != new_size:
        raise DeltaError(
            f"output size mismatch: hdiffpatch patch declares {declared_new} bytes, "
            f"expected {new_size}"
        )
    if declared_old != len(old):
        raise ValueError(f"patch is for a {declared_old}-byte old file, not {len(old)} bytes")
    try:
        return hdiffpatch.apply(old, patch)
    except hdiffpatch.HDiffPatchError as exc:
        raise ValueError(str(exc)) from exc


def _apply_bsdiff(old: bytes, patch: bytes, new_size: int) -> bytes:
    # bsdiff4.patch() would decompress the blocks without any bound; parse the
    # BSDIFF40 container here so that no block can inflate past what new_size allows.
    view = memoryview(patch)
    if len(view) < _BSDIFF_HEADER or view[:8] != _BSDIFF_MAGIC:
        raise ValueError("not a BSDIFF40 patch (bad magic or truncated header)")
    len_control = _offtin(view[8:16])
    len_diff = _offtin(view[16:24])
    len_new = _offtin(view[24:32])
    if len_new != new_size:
        raise DeltaError(
            f"output size mismatch: bsdiff patch declares {len_new} bytes, expected {new_size}"
        )
    if len_control < 0 or len_diff < 0 or _BSDIFF_HEADER + len_control + len_diff > len(view):
        raise ValueError("truncated patch (block lengths exceed the patch)")
    start_diff = _BSDIFF_HEADER + len_control
    start_extra = start_diff + len_diff
    control = _bz2_bounded(
        view[_BSDIFF_HEADER:start_diff], _BSDIFF_CONTROL_ENTRY * (new_size + 1), "control"
    )
    if len(control) % _BSDIFF_CONTROL_ENTRY:
        raise ValueError("control block is not a whole number of entries")
    diff = _bz2_bounded(view[start_diff:start_extra], new_size, "diff")
    extra = _bz2_bounded(view[start_extra:], new_size, "extra")
    return bytes(bsdiff4.core.patch(old, new_size, control, diff, extra))


def _offtin(buf: memoryview) -> int:
    """Decode bsdiff's 8-byte sign-magnitude little-endian integer."""
    raw = bytes(buf)
    magnitude = int.from_bytes(raw[:7] + bytes([raw[7] & 0x7F]), "little")
    return -magnitude if raw[7] & 0x80 else magnitude


def _bz2_bounded(data: memoryview, limit: int, what: str) -> bytes:
    decompressor = bz2.BZ2Decompressor()
    out = decompressor.decompress(data, max_length=limit + 1)
    if len(out) > limit:
        raise ValueError(f"{what} block inflates past {limit} bytes")
    if not decompressor.eof:
        raise ValueError(f"{what} block is truncated")
    if decompressor.unused_data:
        raise ValueError(f"{what} block has trailing data")
    return out


# --------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class PatchJob:
    """One changed file: ``budget`` is the size of the alternative (its new chunks).

    ``old_path`` None: a file with no predecessor, whose "patch" is the whole new file as one
    strong zstd frame (blocks are compressed at a fast level for publishing speed).
    """

    key: str
    old_path: Path | None
    new_path: Path
    budget: int


@dataclass(frozen=True)
class PatchResult:
    """The best patch for a job, or ``method``/``data`` None when none beats the budget.

    ``sizes`` maps each method that was actually tried to its patch size.
    """

    key: str
    method: PatchMethod | None
    data: bytes | None
    sizes: dict[str, int]


def is_executable(name: str, head: bytes) -> bool:
    """An executable or library, by its first bytes or its name."""
    return head.startswith(_EXECUTABLE_MAGIC) or name.lower().endswith(_EXECUTABLE_SUFFIXES)


def plan_methods(name: str, head: bytes, old_size: int | None, new_size: int) -> tuple[PatchMethod, ...]:
    """The methods worth running for one file, chosen before running any (pure).

    ``old_size`` None: no predecessor, only a whole-file zstd frame applies. Otherwise
    HDiffPatch always (fast, and the best on data files), bsdiff for executables and libraries,
    zstd while the files are small enough for its cost not to matter.
    """
    if old_size is None:
        return (PatchMethod.ZSTD,)
    biggest = max(old_size, new_size)
    methods: list[PatchMethod] = []
    if biggest <= ZSTD_FULL_MAX:
        methods.append(PatchMethod.ZSTD)
    if biggest <= HDIFF_MAX_FILE:
        methods.append(PatchMethod.HDIFF)
    if biggest <= BSDIFF_MAX_FILE and is_executable(name, head):
        methods.append(PatchMethod.BSDIFF)
    if not methods:  # too big for the suffix-array methods: zstd is the only one that scales
        methods.append(PatchMethod.ZSTD)
    return tuple(methods)


def build_best_patch(job: PatchJob, *, level: int = 19) -> PatchResult:
    """Build the smallest patch for ``job`` that is smaller than ``job.budget``, running the
    methods :func:`plan_methods` picks for it."""
    _check_level(level)
    return _build_best_patch(job, level=level, methods=_job_plan(job)[0])


def _build_best_patch(job: PatchJob, *, level: int, methods: tuple[PatchMethod, ...]) -> PatchResult:
    _check_level(level)
    sizes: dict[str, int] = {}
    if job.budget <= _ZSTD_MIN_PATCH:  # nothing can be smaller than the budget
        return PatchResult(job.key, None, None, sizes)
    old = _read(job, job.old_path) if job.old_path is not None else b""
    new = _read(job, job.new_path)

    best_method: PatchMethod | None = None
    best = b""
    for method in methods:
        bar = min(job.budget, len(best)) if best_method is not None else job.budget
        if method is PatchMethod.BSDIFF and bar <= _BSDIFF_MIN_PATCH:
            continue  # provably cannot win
        hdiff = sizes.get(PatchMethod.HDIFF.value)
        if method is PatchMethod.BSDIFF and hdiff is not None and hdiff > BSDIFF_SKIP_SHARE * len(new):
            continue  # a rewrite, not an edit: HDiffPatch's exact matching wins (see the constant)
        if method is PatchMethod.ZSTD:
            candidate = build_zstd(old, new, level)
        elif method is PatchMethod.HDIFF:
            candidate = build_hdiff(old, new)
        else:
            candidate = build_bsdiff(old, new)
        sizes[method.value] = len(candidate)
        if best_method is None or len(candidate) < len(best):
            best_method, best = method, candidate

    if best_method is None or len(best) >= job.budget:
        return PatchResult(job.key, None, None, sizes)
    return PatchResult(job.key, best_method, best, sizes)


def _read(job: PatchJob, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DeltaError(f"{job.key}: cannot read {path}: {exc}") from exc


# --------------------------------------------------------------------------- scheduling


def estimate_job_memory(
    old_size: int, new_size: int, *, bsdiff: bool, level: int = 19,
    methods: tuple[PatchMethod, ...] | None = None,
) -> int:
    """Upper estimate of a patch job's peak RAM in bytes (both files are held in memory).

    zstd: the inputs, the output buffer, the dictionary's match tables twice (built,
    then copied into the compression context) and the LDM table; measured within a few
    percent for 11-63 MiB files.  bsdiff: ~17x the larger file plus the new file, while
    the finished zstd patch (at most about the new size) is still held.  HDiffPatch: ~8x
    the larger file (suffix array and match cache) plus both files.  ``methods`` None:
    zstd, plus bsdiff when ``bsdiff`` (the estimate before methods were chosen by kind).
    """
    if methods is None:
        methods = (PatchMethod.ZSTD, PatchMethod.BSDIFF) if bsdiff else (PatchMethod.ZSTD,)
    peaks = [old_size + new_size + _ZSTD_OVERHEAD]
    if PatchMethod.ZSTD in methods:
        params = _zstd_params(old_size, new_size, level)
        tables = 4 * ((1 << params.hash_log) + (1 << params.chain_log))
        peaks.append(old_size + 2 * new_size + 2 * tables + 8 * (1 << params.ldm_hash_log)
                     + _ZSTD_OVERHEAD)
    if PatchMethod.BSDIFF in methods:
        peaks.append(_BSDIFF_RAM_FACTOR * max(old_size, new_size) + 2 * new_size)
    if PatchMethod.HDIFF in methods:
        peaks.append(_HDIFF_RAM_FACTOR * max(old_size, new_size) + old_size + 2 * new_size
                     + _ZSTD_OVERHEAD)
    return max(peaks)


def _job_plan(job: PatchJob) -> tuple[tuple[PatchMethod, ...], int, int | None]:
    try:
        new_size = job.new_path.stat().st_size
        old_size = job.old_path.stat().st_size if job.old_path is not None else None
        with job.new_path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise DeltaError(f"{job.key}: cannot read input: {exc}") from exc
    return plan_methods(job.key, head, old_size, new_size), new_size, old_size


def _plan(job: PatchJob, level: int, memory_limit: int) -> tuple[tuple[PatchMethod, ...], int]:
    """(methods to run, memory estimate) for a job; methods that cannot fit are dropped."""
    methods, new_size, old_size = _job_plan(job)
    old = old_size or 0
    while True:
        estimate = estimate_job_memory(old, new_size, bsdiff=False, level=level, methods=methods)
        if estimate <= memory_limit or len(methods) == 1:
            return methods, estimate
        # drop the hungriest method first: bsdiff, then HDiffPatch
        hungry = PatchMethod.BSDIFF if PatchMethod.BSDIFF in methods else PatchMethod.HDIFF
        methods = tuple(m for m in methods if m is not hungry) or (PatchMethod.ZSTD,)


def _run_job(job: PatchJob, level: int, methods: tuple[PatchMethod, ...]) -> PatchResult:
    """Worker entry point (module level so that it pickles)."""
    return _build_best_patch(job, level=level, methods=methods)


def build_patches(
    jobs: Sequence[PatchJob],
    *,
    workers: int = 2,
    memory_limit: int = 2 * 1024**3,
    level: int = 19,
) -> list[PatchResult]:
    """Build the best patch of every job, in parallel and within ``memory_limit``.

    Jobs run in up to ``workers`` processes (spawned, so a threaded caller is safe);
    with ``workers == 1`` they run one by one in this process.  Jobs start largest
    estimate first, and a job starts only while the estimates of all running jobs
    stay within ``memory_limit``.  A method that would not fit is not run; a job that
    still does not fit runs alone.  Results come back in job order.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if memory_limit <= 0:
        raise ValueError(f"memory_limit must be positive, got {memory_limit}")
    _check_level(level)
    plans = [_plan(job, level, memory_limit) for job in jobs]

    # Small jobs cost less than a worker's start-up (~0.3 s to spawn and import): run them
    # here, and spawn workers only for the big ones.
    small = [i for i, (_m, est) in enumerate(plans) if est < _INLINE_MAX_ESTIMATE]
    big = [i for i in range(len(jobs)) if i not in set(small)]
    results: list[PatchResult | None] = [None] * len(jobs)
    if workers == 1 or len(big) <= 1:
        small, big = list(range(len(jobs))), []
    for i in small:
        results[i] = _build_best_patch(jobs[i], level=level, methods=plans[i][0])
    if not big:
        return [r for r in results if r is not None]

    pending = sorted(big, key=lambda i: (-plans[i][1], i))
    running: dict[Future[PatchResult], int] = {}
    in_use = 0
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(big)), mp_context=context) as pool:
        try:
            while pending or running:
                for index in list(pending):
                    if len(running) >= workers:
                        break
                    methods, estimate = plans[index]
                    if running and in_use + estimate > memory_limit:
                        continue
                    running[pool.submit(_run_job, jobs[index], level, methods)] = index
                    pending.remove(index)
                    in_use += estimate
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    index = running.pop(future)
                    in_use -= plans[index][1]
                    results[index] = future.result()
        except BrokenProcessPool as exc:
            raise DeltaError(f"a patch worker died (out of memory?): {exc}") from exc
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]
