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

**Changed ranges only.** A large file whose chunk list mostly matches the old file's (a pack
with a few entries edited) is diffed range by range: the spans both files hold (equal chunk ids,
:func:`matching_spans`) become HDiffPatch covers as they are, and only the changed regions of
the new file are searched, against the old bytes no span uses (an edited or moved entry's old
bytes are there). The result is joined into one ordinary HDiffPatch patch (the same container
and applier; nothing new for the engine), so the cost follows the change, not the file:
measured on the demo catalog at 300 MB, a 107 MB pack 28.4 -> ~4 CPU s, and every patch 0-5%
*smaller* than the whole-file diff (spurious matches far away code worse than literals). The
joined patch is applied once and compared with the new file before it is returned; a mismatch
falls back to the whole-file diff.

Applying a patch is defensive: the old file must hash to the expected SHA-256,
the output size is checked against the expected size *before* the output is
allocated, and the output must hash to the expected SHA-256.  Every failure is
a :class:`~patcher.errors.DeltaError`.

Building runs in worker processes (bsdiff4 holds the GIL) and is scheduled
against a memory limit, because a single bsdiff of a 64 MiB file needs ~1 GiB.
"""

from __future__ import annotations

import bisect
import bz2
import enum
import hashlib
import itertools
import multiprocessing
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import blake3
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
    "Span",
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
    "job_cost",
    "matching_spans",
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


Span = tuple[int, int, int]
"""(offset in the new file, offset in the old file, length) of bytes both files hold."""

RANGES_MIN_FILE = 1 * _MiB
"""Files smaller than this are diffed whole (milliseconds either way)."""

_CODER_ALL_MAX = 1 * _MiB  # plain patches up to this size try every coder (bytes count there)
_BOTH_MAX = 32 * _MiB  # files up to this size with a small range patch: the whole-file one too
_INCOMPRESSIBLE = 0.98  # lzma2 and bzip2 above this share of the plain patch: try zstd too
_MOVE_PROBE = (2 * 1024, 8 * 1024, 32 * 1024)  # FastCDC sizes of the pieces that find moves
_MOVED_MIN = 64 * 1024  # moved bytes that make a joined search worth its cost


def build_hdiff(old: bytes, new: bytes, spans: Sequence[Span] = ()) -> bytes:
    """Return the smallest HDiffPatch patch (one match search, then each coder) turning
    ``old`` into ``new``.

    ``spans``: ranges both files hold (:func:`matching_spans`); when given, only the regions
    between them are searched and the pieces are joined into one patch (see the module notes).
    Coders: lzma2 and bzip2 always (lzma2 wins on most data, bzip2 on match-heavy control
    streams, and costs little); zstd only for small patches or when neither of those
    compressed (incompressible payloads, where zstd's smaller containers win by a few bytes;
    elsewhere it lost every time, for up to 7 CPU s on a 10 MB plain patch). Besides
    HDiffPatch's own container (one coder for every section), the sectioned container
    (:func:`_sectioned`) with each section coded by the coder that codes it smallest.
    """
    import hdiffpatch  # a C extension: loaded only where patches are built or applied

    try:
        plain = bzip2 = None
        checked = _checked_spans(old, new, spans)
        if checked and max(len(old), len(new)) >= RANGES_MIN_FILE:
            plain, bzip2 = _ranged_plain(old, new, checked)
            # our own serialisation: proven on the real applier before it is published
            if hdiffpatch.apply(old, plain) != new:
                plain = bzip2 = None
        plains = [] if plain is None else [(plain, bzip2)]
        if plain is None or (len(plain) <= _CODER_ALL_MAX and max(len(old), len(new)) <= _BOTH_MAX):
            # a small patch of a file this size: the whole-file search costs a few seconds at
            # most and, where the patch is the whole step, its bytes count (a 6 MB executable's
            # edit: 2,419 B whole-file vs 2,464 B by ranges, the covers of the spans)
            plains.append((hdiffpatch.diff(old, new, "none", validate=False,
                                           big_cache_match=len(old) >= RANGES_MIN_FILE), None))
        best = plains[0][0]
        for candidate_plain, candidate_bzip2 in plains:
            coded = _coded(candidate_plain, candidate_bzip2)
            for candidate in [candidate_plain, *coded, *_sectioned(candidate_plain, coded)]:
                if len(candidate) < len(best):
                    best = candidate
        return best
    except (hdiffpatch.HDiffPatchError, ValueError, MemoryError) as exc:
        raise DeltaError(f"HDiffPatch patch could not be built: {exc}") from exc


def _coded(plain: bytes, bzip2: bytes | None = None) -> list[bytes]:
    """``plain`` re-coded by the coders worth running (the strongest setting of each that
    apply() decodes; ``bzip2``: its bzip2 coding, when already made). lzma2 always: it won by
    up to 6.6% on large patches, where a 1 MiB sample (tail or spread) mispredicted it both
    ways."""
    import hdiffpatch

    coded = [hdiffpatch.recompress(plain, hdiffpatch.Lzma2Config(level=9, window=26)),
             bzip2 or hdiffpatch.recompress(plain, hdiffpatch.BZip2Config(level=9))]
    if len(plain) <= _CODER_ALL_MAX or min(map(len, coded)) > _INCOMPRESSIBLE * len(plain):
        coded.append(hdiffpatch.recompress(plain, hdiffpatch.ZStdConfig(level=22, window=27)))
    return coded


def _ranged_plain(old: bytes, new: bytes, spans: Sequence[Span]) -> tuple[bytes, bytes | None]:
    """(uncompressed range patch, its bzip2 coding when two were compared).

    Spans in old order: each changed region is searched between its neighbouring spans; when
    small content-defined pieces of a region sit in another region's window and not in its own
    (:func:`_moved_bytes`: entries too small to keep a whole chunk moved, as in a repack), one
    joined search over every unused old byte is made too and the one bzip2 codes smaller is
    kept (bzip2 ranked them as lzma2 did on the demo packs, at a seventh of its cost). Spans
    out of order (entries moved): the joined search."""
    import hdiffpatch

    if not all(a[1] + a[2] <= b[1] for a, b in itertools.pairwise(spans)):
        return _hdiff_ranges(old, new, spans, joined=True), None
    plain = _hdiff_ranges(old, new, spans, joined=False)
    regions, _unused = _pieces(spans, len(old), len(new))
    if _moved_bytes(old, new, regions, _windows(spans, regions, len(old))) < _MOVED_MIN:
        return plain, None
    other = _hdiff_ranges(old, new, spans, joined=True)
    coder = hdiffpatch.BZip2Config(level=9)
    ranked = sorted(((len(coded), i, p, coded) for i, p in enumerate((plain, other))
                     for coded in [hdiffpatch.recompress(p, coder)]))
    return ranked[0][2], ranked[0][3]


def matching_spans(old_chunks: Iterable[tuple[int, int, str]],
                   new_chunks: Iterable[tuple[int, int, str]]) -> tuple[Span, ...]:
    """The new file's chunks that the old file holds, as merged spans (pure).

    Chunks are (offset, size, id) with content ids; a chunk the old file holds more than once
    maps to the copy that continues the previous span, so that unchanged stretches merge."""
    where: dict[str, list[int]] = {}
    for offset, _size, cid in old_chunks:
        where.setdefault(cid, []).append(offset)
    spans: list[Span] = []
    for offset, size, cid in new_chunks:
        places = where.get(cid)
        if not places:
            continue
        if spans:
            n, o, length = spans[-1]
            if n + length == offset and o + length in places:
                spans[-1] = (n, o, length + size)
                continue
        spans.append((offset, places[0], size))
    return tuple(spans)


def _checked_spans(old: bytes, new: bytes, spans: Sequence[Span]) -> list[Span]:
    """Spans in new-file order, within both files, not overlapping, whose bytes are equal
    (a memcmp: a stale chunk list only costs the range diff, never a wrong patch)."""
    out: list[Span] = []
    end = 0
    old_view, new_view = memoryview(old), memoryview(new)
    for n, o, length in sorted(spans):
        if (length > 0 and n >= end and o >= 0 and n + length <= len(new)
                and o + length <= len(old) and old_view[o:o + length] == new_view[n:n + length]):
            out.append((n, o, length))
            end = n + length
    return out


def _gaps(ranges: Sequence[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The parts of [0, size) no range covers, as (start, end), in order (pure)."""
    out = []
    pos = 0
    for start, end in sorted(ranges):
        if start > pos:
            out.append((pos, min(start, size)))
        pos = max(pos, end)
    if pos < size:
        out.append((pos, size))
    return [(a, b) for a, b in out if b > a]


def _pieces(spans: Sequence[Span], old_size: int,
            new_size: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(changed regions of the new file, old bytes no span uses), each as (start, end) in
    file order (pure): what a range patch searches."""
    return (_gaps([(n, n + length) for n, _o, length in spans], new_size),
            _gaps([(o, o + length) for _n, o, length in spans], old_size))


def _hdiff_ranges(old: bytes, new: bytes, spans: Sequence[Span], *, joined: bool) -> bytes:
    """One uncompressed HDiffPatch (HDIFF13) patch: ``spans`` as covers with a zero
    difference, and the new file's changed regions searched in the old bytes no span uses:
    region by region between their neighbouring spans (spans in old order only), or
    ``joined`` in one search (the regions joined, against every unused old byte). A joined
    search's covers are mapped back to file positions (split where a joined piece ends), its
    difference runs split at region ends; the runs are interleaved with the spans' zero runs
    (the applier reads them sequentially over the whole new file), and the literal bytes are
    kept as they are (uncovered bytes, in new-file order either way)."""
    regions, unused = _pieces(spans, len(old), len(new))
    found: list[Span] = []
    region_runs: list[tuple[bytes, bytes]] = []
    literals: list[bytes] = []
    if not joined:
        # nothing moved: each region against the old bytes between its neighbouring spans
        # (measured on the demo packs: 1-5% smaller than one search over every unused old byte,
        # whose far, spurious matches code worse than literals)
        for (a, b), (lo, hi) in zip(regions, _windows(spans, regions, len(old)), strict=True):
            part = _search(old[lo:hi], new[a:b])
            found.extend((n + a, o + lo, size) for n, o, size in part[0])
            region_runs.append((part[1], part[2]))
            literals.append(part[3])
    else:
        # entries moved: what a region holds may sit anywhere in the unused old bytes
        changed = b"".join(new[a:b] for a, b in regions)
        part = _search(b"".join(old[a:b] for a, b in unused), changed)
        found = _map_covers(part[0], regions, unused)
        region_runs = _split_runs(part[1], part[2], [b - a for a, b in regions])
        literals.append(part[3])
    covers = sorted([*spans, *found])
    parts = iter(region_runs)
    ctrl: list[bytes] = []
    code: list[bytes] = []
    for _start, length, is_span in sorted([(n, length, True) for n, _o, length in spans]
                                          + [(a, b - a, False) for a, b in regions]):
        if is_span:
            ctrl.append(_rle_zero_run(length))
        else:
            part_ctrl, part_code = next(parts)
            ctrl.append(part_ctrl)
            code.append(part_code)
    cover_buf = bytearray()
    old_back = new_back = 0
    for n, o, length in covers:
        cover_buf += _pack(old_back - o, 1, 1) if o < old_back else _pack(o - old_back, 0, 1)
        cover_buf += _pack(n - new_back) + _pack(length)
        old_back, new_back = o + length, n + length
    ctrl_buf, code_buf, literal_buf = b"".join(ctrl), b"".join(code), b"".join(literals)
    sections = (bytes(cover_buf), ctrl_buf, code_buf, literal_buf)
    return b"".join((_plain_header(len(new), len(old), len(covers), list(map(len, sections))),
                     *sections))


def _moved_bytes(old: bytes, new: bytes, regions: Sequence[tuple[int, int]],
                 windows: Sequence[tuple[int, int]]) -> int:
    """Bytes of the changed regions found, as small content-defined pieces, in the old window
    of another region but not in their own: content a region-by-region search cannot see.
    FastCDC and BLAKE3 run at ~0.6 GB/s: a few hundredths of the search's cost."""
    from fastcdc.fastcdc_cy import fastcdc_cy

    def pieces(view: memoryview) -> dict[bytes, int]:
        if not len(view):
            return {}
        return {blake3.blake3(view[c.offset:c.offset + c.length]).digest(): c.length
                for c in fastcdc_cy(view, *_MOVE_PROBE)}

    old_view, new_view = memoryview(old), memoryview(new)
    own = [set(pieces(old_view[lo:hi])) for lo, hi in windows]
    anywhere = set().union(*own)
    moved = 0
    for (a, b), mine in zip(regions, own, strict=True):
        moved += sum(size for pid, size in pieces(new_view[a:b]).items()
                     if pid in anywhere and pid not in mine)
    return moved


def _search(old: bytes, new: bytes) -> tuple[list[Span], bytes, bytes, bytes]:
    """:func:`_parse_plain_hdiff` of an uncompressed HDiffPatch search of ``new`` in ``old``;
    with nothing to search in or for, ``new`` as literals."""
    import hdiffpatch

    if not old or not new:
        return [], _rle_zero_run(len(new)), b"", new
    # the match cache (a bloom filter, ~1 byte per old byte) gives the same patch 18-30% faster
    # on large searches (measured: 29 MB executable 13.1 -> 10.7 CPU s, 20 MB pack 7.8 -> 5.4)
    return _parse_plain_hdiff(hdiffpatch.diff(old, new, "none", validate=False,
                                              big_cache_match=len(old) >= RANGES_MIN_FILE))


def _windows(spans: Sequence[Span], regions: Sequence[tuple[int, int]],
             old_size: int) -> list[tuple[int, int]]:
    """For spans in old order, each region's old window: from the old end of the span before
    it to the old start of the span after it (pure)."""
    end_at = {n + length: o + length for n, o, length in spans}
    start_at = {n: o for n, o, _length in spans}
    out = []
    for a, b in regions:
        lo = end_at.get(a, 0)
        out.append((lo, max(lo, start_at.get(b, old_size))))
    return out


def _map_covers(found: Sequence[Span], regions: Sequence[tuple[int, int]],
                unused: Sequence[tuple[int, int]]) -> list[Span]:
    """Covers of the joined search, in file positions, split where a joined piece ends."""
    def starts(pieces: Sequence[tuple[int, int]]) -> list[int]:
        out, pos = [], 0
        for a, b in pieces:
            out.append(pos)
            pos += b - a
        return out

    new_at, old_at = starts(regions), starts(unused)
    mapped = []
    for n, o, length in found:
        while length > 0:
            i = bisect.bisect_right(new_at, n) - 1
            j = bisect.bisect_right(old_at, o) - 1
            take = min(length, new_at[i] + regions[i][1] - regions[i][0] - n,
                       old_at[j] + unused[j][1] - unused[j][0] - o)
            if take <= 0:
                raise ValueError("a cover outside the searched pieces")
            mapped.append((regions[i][0] + n - new_at[i], unused[j][0] + o - old_at[j], take))
            n, o, length = n + take, o + take, length - take
    return mapped


def _split_runs(ctrl: bytes, code: bytes, lengths: Sequence[int]) -> list[tuple[bytes, bytes]]:
    """HDiffPatch's difference runs (control records: 2-bit type, length - 1; run codes: one
    value byte for a set run, the bytes of a copy run) cut into consecutive pieces of
    ``lengths`` bytes of output, a record that straddles a cut becoming two of its type."""
    out = []
    pos = code_pos = 0
    kind = left = value_at = 0
    for need in lengths:
        piece_ctrl = bytearray()
        piece_code = bytearray()
        while need:
            if not left:
                kind = ctrl[pos] >> 6
                left, _tag, pos = _unpack(ctrl, pos, 2)
                left += 1
                value_at = code_pos
                code_pos += 1 if kind == _RLE_SET else left if kind == _RLE_COPY else 0
            take = min(left, need)
            piece_ctrl += _pack(take - 1, kind, 2)
            if kind == _RLE_SET:
                piece_code += code[value_at:value_at + 1]
            elif kind == _RLE_COPY:
                piece_code += code[value_at:value_at + take]
                value_at += take
            left -= take
            need -= take
        out.append((bytes(piece_ctrl), bytes(piece_code)))
    if left or pos != len(ctrl) or code_pos != len(code):
        raise ValueError("difference runs of another length than the changed regions")
    return out


def _pack(value: int, tag: int = 0, tag_bits: int = 0) -> bytes:
    """HDiffPatch's packed unsigned integer with ``tag_bits`` high tag bits in its first byte
    (``hpatch_packUIntWithTag``): most significant 7-bit group first, high bit = more follow."""
    groups = []
    while value > (1 << (7 - tag_bits)) - 1:
        groups.append(value & 0x7F)
        value >>= 7
    out = bytearray([value | (tag << (8 - tag_bits)) | ((1 if groups else 0) << (7 - tag_bits))])
    while groups:
        group = groups.pop()
        out.append(group | (0x80 if groups else 0))
    return bytes(out)


_PACKED_MAX_BYTES = 10  # a 64-bit value packs into at most 10 bytes


def _unpack(view: bytes, pos: int, tag_bits: int = 0) -> tuple[int, int, int]:
    """(value, tag, position after it): the inverse of :func:`_pack`. At most
    ``_PACKED_MAX_BYTES`` bytes are read (ValueError past them): an unsigned patch's header
    cannot make the reader build ever larger integers (quadratic time)."""
    byte = view[pos]
    tag = byte >> (8 - tag_bits) if tag_bits else 0
    value = byte & ((1 << (7 - tag_bits)) - 1)
    more = byte & (1 << (7 - tag_bits))
    pos += 1
    end = pos + _PACKED_MAX_BYTES - 1
    while more:
        if pos >= end:
            raise ValueError("packed integer too long")
        byte = view[pos]
        value = (value << 7) | (byte & 0x7F)
        more = byte & 0x80
        pos += 1
    return value, tag, pos


def _packed_fields(view: bytes, pos: int, count: int) -> tuple[list[int], int]:
    """``count`` packed integers from ``pos`` (a header's fields) and the position after them;
    ValueError when the header ends first or an integer is too long."""
    fields = []
    try:
        for _ in range(count):
            value, _tag, pos = _unpack(view, pos)
            fields.append(value)
    except IndexError as exc:
        raise ValueError("truncated header") from exc
    return fields, pos


_RLE_SET = 2  # a run of one value byte (0 and 1: runs of 0 and of 255, no value byte)
_RLE_COPY = 3  # bytes copied from the run codes


def _rle_zero_run(length: int) -> bytes:
    """A run-length control record: ``length`` zero difference bytes (type 0, length - 1)."""
    return _pack(length - 1, 0, 2) if length else b""


def _parse_plain_hdiff(patch: bytes) -> tuple[list[Span], bytes, bytes, bytes]:
    """(covers, difference run controls, run codes, literal bytes) of an uncompressed HDIFF13
    patch, covers as absolute (new position, old position, length)."""
    _new, _old, count, (cover_buf, ctrl, code, literals) = _plain_sections(patch)
    covers: list[Span] = []
    old_back = new_back = pos = 0
    for _ in range(count):
        inc, negative, pos = _unpack(cover_buf, pos, 1)
        o = old_back - inc if negative else old_back + inc
        gap, _tag, pos = _unpack(cover_buf, pos)
        length, _tag, pos = _unpack(cover_buf, pos)
        covers.append((new_back + gap, o, length))
        old_back, new_back = o + length, new_back + gap + length
    if pos != len(cover_buf):
        raise ValueError("unexpected HDiffPatch cover stream")
    return covers, ctrl, code, literals


# ------------------------------------------------------------------ the sectioned container
#
# HDiffPatch's own container codes its four sections (covers, difference run controls, run
# codes, literal bytes) with one coder. They differ: on the demo executable's 1.1.0 -> 1.2.0 edit
# (29 MB, 129,639-byte plain patch) bzip2 codes the run controls smallest (34,272 vs lzma2
# 35,491), zstd-22 the literals (1,226 vs bzip2 1,487, lzma2 1,472), and the covers are best left
# raw: 41,489 B coded per section against 41,758 B for the best single coder, which is what
# brought that step under HDiffPatch's own patch (the best peer).
#
# Layout (no magic: the method says HDiffPatch, and HDIFF13's first byte is "H", 0x48):
#   one byte 0x80 | cover coder << 6 | ctrl coder << 4 | code coder << 2 | literal coder
#   (the cover coder is one bit, raw or lzma2; the others two bits, :class:`_Coder`),
#   the plain header's seven sizes as HDiffPatch packs them (new, old, cover count, and the four
#   sections' plain lengths), then each section: its stored length (omitted for a raw section,
#   whose length is its plain one, and for the last section, which runs to the end) and bytes.
# The applier rebuilds the plain HDIFF13 patch (each section decoded to exactly its declared
# length) and hands it to HDiffPatch; an engine older than this container refuses it as a bad
# magic and fetches that file's chunks instead (nothing else in the step is lost).


class _Coder(enum.IntEnum):
    RAW = 0
    BZIP2 = 1
    LZMA2 = 2
    ZSTD = 3


_SECTIONED_FLAG = 0x80
_SECTION_SLACK = 64 * 1024  # declared plain sections may pass 3x the new size by this much
# Sections up to this size are also coded here with settings HDiffPatch's containers do not use
# (lzma2 "extreme", no literal context; magicless zstd-22): where bytes count most, for little
# CPU (lzma2 extreme codes ~1 MB/s: a 1 MiB section would cost a second for ~1% of it)
_SECTION_EXTRA_MAX = 256 * 1024


def _lzma2_filters(plain_len: int, **options: int) -> list[dict[str, int]]:
    """A raw LZMA2 chain whose dictionary the decoder derives from the section's plain length
    (a power of two from 4 KiB to 64 MiB): no properties are stored."""
    import lzma

    dict_size = 1 << min(26, max(12, _ceil_log2(max(1, plain_len))))
    return [{"id": lzma.FILTER_LZMA2, "dict_size": dict_size, **options}]


def _code_section(data: bytes, *, cover: bool,
                  coded: Sequence[tuple[_Coder, bytes]] = ()) -> tuple[_Coder, bytes]:
    """The smallest coding of one section that decodes back to it (raw when nothing codes it
    smaller). ``coded``: the section as HDiffPatch's own containers coded it (free to reuse);
    small sections are coded here too, with settings those containers do not use."""
    import lzma

    candidates = [(_Coder.RAW, data), *coded]
    if len(data) <= _SECTION_EXTRA_MAX:
        preset = 9 | lzma.PRESET_EXTREME
        for extra in ({}, {"lc": 0}):  # no literal context: better on bytes with no text in them
            candidates.append((_Coder.LZMA2, lzma.compress(
                data, format=lzma.FORMAT_RAW,
                filters=_lzma2_filters(len(data), preset=preset, **extra))))
        if not cover:
            params = zstandard.ZstdCompressionParameters.from_level(
                22, source_size=len(data), write_content_size=False, write_checksum=False,
                write_dict_id=False, format=zstandard.FORMAT_ZSTD1_MAGICLESS)
            candidates.append((_Coder.ZSTD, zstandard.ZstdCompressor(
                compression_params=params).compress(data)))
    allowed = (_Coder.RAW, _Coder.LZMA2) if cover else tuple(_Coder)
    for coder, stored in sorted(candidates, key=lambda c: (len(c[1]), c[0])):
        try:
            if coder in allowed and _decode_section(coder, stored, len(data), 0) == data:
                return coder, stored
        except (ValueError, OSError, EOFError, lzma.LZMAError, zstandard.ZstdError):
            continue  # a coding this applier would not read back: not a candidate
    return _Coder.RAW, data


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _classic_sections(patch: bytes) -> list[tuple[_Coder, bytes] | None]:
    """Each section of a coded HDIFF13 patch as this container stores it (None: stored raw
    there): bzip2 streams as they are, lzma2 without HDiffPatch's property byte (the dictionary
    is derived from the length here), zstd frames without their magic."""
    name_end = patch.index(b"\0", len(_HDIFF_MAGIC))
    kind = {b"bz2": _Coder.BZIP2, b"lzma2": _Coder.LZMA2, b"zstd": _Coder.ZSTD}.get(
        patch[len(_HDIFF_MAGIC):name_end])
    fields, pos = _packed_fields(patch, name_end + 1, 11)
    out: list[tuple[_Coder, bytes] | None] = []
    for plain_len, stored_len in zip(fields[3::2], fields[4::2], strict=True):
        data = patch[pos:pos + (stored_len or plain_len)]
        pos += stored_len or plain_len
        if not stored_len or kind is None:
            out.append(None)
        elif kind is _Coder.LZMA2:
            out.append((kind, data[1:]))
        elif kind is _Coder.ZSTD:
            out.append((kind, data[len(_ZSTD_MAGIC):]) if data.startswith(_ZSTD_MAGIC) else None)
        else:
            out.append((kind, data))
    return out


def _sectioned(plain: bytes, coded: Sequence[bytes] = ()) -> list[bytes]:
    """``plain`` (an uncompressed HDIFF13 patch) in the sectioned container, or nothing when
    its layout is not the one this module reads and writes. ``coded``: HDiffPatch's own
    codings of ``plain``, whose sections are reused (no section is coded twice by a coder)."""
    try:
        new_size, old_size, count, sections = _plain_sections(plain)
        reused = [_classic_sections(c) for c in coded if c.startswith(_HDIFF_MAGIC) and c != plain]
    except (ValueError, IndexError):
        return []
    choices = []
    for i, data in enumerate(sections):
        offered = [c for r in reused if (c := r[i]) is not None]
        choices.append(_code_section(data, cover=i == 0, coded=offered))
    flags = _SECTIONED_FLAG | (1 if choices[0][0] else 0) << 6
    for shift, (coder, _data) in zip((4, 2, 0), choices[1:], strict=True):
        flags |= coder << shift
    out = bytearray([flags])
    for value in (new_size, old_size, count, *map(len, sections)):
        out += _pack(value)
    for i, (coder, data) in enumerate(choices):
        if coder is not _Coder.RAW and i < len(choices) - 1:
            out += _pack(len(data))
        out += data
    patch = bytes(out)
    try:
        proven = _unsectioned(patch, new_size) == plain
    except (ValueError, DeltaError):  # e.g. sections past the applier's bound: not a candidate
        return []
    return [patch] if proven else []


def _plain_sections(plain: bytes) -> tuple[int, int, int, list[bytes]]:
    """(new size, old size, cover count, the four sections: covers, difference run controls,
    run codes, literal bytes) of an uncompressed HDIFF13 patch."""
    prefix = _HDIFF_MAGIC + b"\0"
    if not plain.startswith(prefix):
        raise ValueError("not an uncompressed HDiffPatch patch")
    fields, pos = _packed_fields(plain, len(prefix), 11)
    new_size, old_size, count, n_cover, z1, n_ctrl, z2, n_code, z3, n_lit, z4 = fields
    if z1 or z2 or z3 or z4 or pos + n_cover + n_ctrl + n_code + n_lit != len(plain):
        raise ValueError("unexpected HDiffPatch layout")
    sections = []
    for n in (n_cover, n_ctrl, n_code, n_lit):
        sections.append(plain[pos:pos + n])
        pos += n
    return new_size, old_size, count, sections


def _plain_header(new_size: int, old_size: int, count: int, lengths: Sequence[int]) -> bytes:
    n_cover, n_ctrl, n_code, n_lit = lengths
    return b"".join((_HDIFF_MAGIC, b"\0", *(_pack(v) for v in (
        new_size, old_size, count, n_cover, 0, n_ctrl, 0, n_code, 0, n_lit, 0))))


def _sectioned_sizes(patch: bytes) -> tuple[int, int, int, list[int], int]:
    """(new size, old size, cover count, plain section lengths, position after the header)."""
    if not patch or not patch[0] & _SECTIONED_FLAG:
        raise ValueError("not a sectioned HDiffPatch patch (bad first byte)")
    fields, pos = _packed_fields(patch, 1, 7)
    new_size, old_size, count, *lengths = fields
    return new_size, old_size, count, lengths, pos


def _unsectioned(patch: bytes, new_size: int) -> bytes:
    """The plain HDIFF13 patch a sectioned one holds; every section decodes to exactly its
    declared length, and those lengths are bounded by ``new_size`` before any is decoded."""
    import lzma

    try:
        return _decode_sections(patch, new_size)
    except (IndexError, lzma.LZMAError) as exc:
        raise ValueError(f"corrupt section: {exc}") from exc


def _decode_sections(patch: bytes, new_size: int) -> bytes:
    declared_new, old_size, count, lengths, pos = _sectioned_sizes(patch)
    if declared_new != new_size:
        raise DeltaError(f"output size mismatch: hdiffpatch patch declares {declared_new} "
                         f"bytes, expected {new_size}")
    if sum(lengths) > 3 * new_size + _SECTION_SLACK:
        raise ValueError(f"sections of {sum(lengths)} bytes for a {new_size}-byte output")
    flags = patch[0]
    coders = [_Coder.LZMA2 if flags >> 6 & 1 else _Coder.RAW,
              *(_Coder(flags >> shift & 3) for shift in (4, 2, 0))]
    parts = [_plain_header(new_size, old_size, count, lengths)]
    for i, (coder, length) in enumerate(zip(coders, lengths, strict=True)):
        last = i == len(coders) - 1
        if coder is _Coder.RAW:
            stored = length
        elif last:
            stored = len(patch) - pos
        else:
            stored, _tag, pos = _unpack(patch, pos)
        if pos + stored > len(patch) or (last and pos + stored != len(patch)):
            raise ValueError(f"section {i} is truncated or followed by extra bytes")
        data = patch[pos:pos + stored]
        pos += stored
        plain = _decode_section(coder, data, length, i)
        if len(plain) != length:
            raise ValueError(f"section {i} decodes to {len(plain)} bytes, not {length}")
        parts.append(plain)
    return b"".join(parts)


def _decode_section(coder: _Coder, data: bytes, length: int, index: int) -> bytes:
    """One section decoded, never past ``length + 1`` bytes (the caller checks the length)."""
    import lzma

    if coder is _Coder.BZIP2:
        return _bz2_bounded(memoryview(data), length, f"section {index}")
    if coder is _Coder.LZMA2:
        decoder = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=_lzma2_filters(length))
        plain = decoder.decompress(data, max_length=length + 1)
        if len(plain) == length and not decoder.eof:
            raise ValueError(f"section {index} is truncated or longer than declared")
        return plain
    if coder is _Coder.ZSTD:
        window = 1 << min(27, max(20, _ceil_log2(max(1, length))))
        reader = zstandard.ZstdDecompressor(
            max_window_size=window, format=zstandard.FORMAT_ZSTD1_MAGICLESS,
        ).stream_reader(data)
        return reader.read(length + 1)  # bounded: a frame may not inflate past its length
    return data


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
        # without a dictionary the window covers the whole file and LDM only costs time
        # (measured on a 36 MB new pack: 19.2 -> 15.5 CPU s, 182 bytes smaller)
        enable_ldm=old_size > 0,
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


def hdiff_sizes(patch: bytes) -> tuple[int, int]:
    """(new size, old size) declared by an HDiffPatch header (HDiffPatch's own container or the
    sectioned one), refusing foreign containers."""
    if patch[:1] and patch[0] & _SECTIONED_FLAG:
        new_size, old_size, _count, _lengths, _pos = _sectioned_sizes(patch)
        return new_size, old_size
    view = memoryview(patch)
    if len(view) < len(_HDIFF_MAGIC) or view[: len(_HDIFF_MAGIC)] != _HDIFF_MAGIC:
        raise ValueError("not an HDiffPatch patch (bad magic)")
    end = bytes(view[len(_HDIFF_MAGIC) : len(_HDIFF_MAGIC) + 16]).find(b"\0")
    coder = bytes(view[len(_HDIFF_MAGIC) : len(_HDIFF_MAGIC) + max(end, 0)])
    if end < 0 or coder not in _HDIFF_TYPES:
        raise ValueError(f"unsupported HDiffPatch coder {coder!r}")
    (new_size, old_size), _pos = _packed_fields(patch, len(_HDIFF_MAGIC) + end + 1, 2)
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
    if patch[0] & _SECTIONED_FLAG:
        patch = _unsectioned(patch, new_size)
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
    ``spans``: the ranges both files hold (:func:`matching_spans` of their chunk lists): the
    HDiffPatch method then diffs only the regions between them.
    """

    key: str
    old_path: Path | None
    new_path: Path
    budget: int
    spans: tuple[Span, ...] = ()


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
            candidate = build_hdiff(old, new, job.spans)
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
    methods: tuple[PatchMethod, ...] | None = None, spans: Sequence[Span] = (),
) -> int:
    """Upper estimate of a patch job's peak RAM in bytes (both files are held in memory).

    zstd: the inputs, the output buffer, the dictionary's match tables twice (built,
    then copied into the compression context) and the LDM table; measured within a few
    percent for 11-63 MiB files.  bsdiff: ~17x the larger file plus the new file, while
    the finished zstd patch (at most about the new size) is still held.  HDiffPatch: ~8x
    the larger file (suffix array and match cache) plus both files; with ``spans``, 8x the
    largest changed region instead, plus both files and the uncompressed patch and its
    check (at most about twice the new size).  ``methods`` None:
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
        searched, held = max(old_size, new_size), 2 * new_size
        if spans and max(old_size, new_size) >= RANGES_MIN_FILE:
            regions, unused = _pieces(spans, old_size, new_size)
            if max(old_size, new_size) > _BOTH_MAX:  # smaller files may be searched whole too
                searched = max(sum(b - a for a, b in regions), sum(b - a for a, b in unused))
            held = 5 * new_size  # the joined pieces, the plain patch and the output of its check
        # + the match cache, about one byte per searched old byte
        peaks.append((_HDIFF_RAM_FACTOR + 1) * searched + old_size + held + _ZSTD_OVERHEAD)
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
    methods, estimate, _cost = _plan_and_cost(job, level, memory_limit)
    return methods, estimate


def _plan_and_cost(job: PatchJob, level: int,
                   memory_limit: int) -> tuple[tuple[PatchMethod, ...], int, float]:
    methods, new_size, old_size = _job_plan(job)
    old = old_size or 0
    while True:
        estimate = estimate_job_memory(old, new_size, bsdiff=False, level=level, methods=methods,
                                       spans=job.spans)
        if estimate <= memory_limit or len(methods) == 1:
            return methods, estimate, job_cost(methods, old_size, new_size, job.spans)
        # drop the hungriest method first: bsdiff, then HDiffPatch
        hungry = PatchMethod.BSDIFF if PatchMethod.BSDIFF in methods else PatchMethod.HDIFF
        methods = tuple(m for m in methods if m is not hungry) or (PatchMethod.ZSTD,)


# CPU seconds per MB, measured on the demo catalog's 20-107 MB files (one core): a zstd-19 frame
# of a new file 0.6, a zstd-19 patch 0.6 of the new plus 0.3 of the old file, HDiffPatch's search
# 0.2 of both files (or of the changed regions and their old windows), its coders 0.7 of the
# bytes the old file does not hold, bsdiff 0.5 of both files.
_COST_PER_MB = {"zstd": 0.6, "zstd_dict": 0.3, "search": 0.2, "code": 0.7, "bsdiff": 0.5}


def job_cost(methods: Sequence[PatchMethod], old_size: int | None, new_size: int,
             spans: Sequence[Span] = ()) -> float:
    """Rough CPU seconds of a job, to start the longest first (pure): with two workers, a
    long job started last is what the step waits for."""
    mb = 1e-6
    old = old_size or 0
    cost = 0.0
    if PatchMethod.ZSTD in methods:
        cost += (_COST_PER_MB["zstd"] * new_size + _COST_PER_MB["zstd_dict"] * old) * mb
    if PatchMethod.HDIFF in methods:
        held = sum(length for _n, _o, length in spans)
        searched = old + new_size
        if spans and max(old, new_size) >= RANGES_MIN_FILE:
            regions, unused = _pieces(spans, old, new_size)
            searched = sum(b - a for a, b in regions) + sum(b - a for a, b in unused)
        cost += (_COST_PER_MB["search"] * searched
                 + _COST_PER_MB["code"] * max(new_size - held, 0)) * mb
    if PatchMethod.BSDIFF in methods:
        cost += _COST_PER_MB["bsdiff"] * (old + new_size) * mb
    return cost


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
    with ``workers == 1`` they run one by one in this process.  Jobs start longest first
    (:func:`job_cost`), and a job starts only while the memory estimates of all running jobs
    stay within ``memory_limit``; jobs under 64 MiB of estimate run in this process while the
    workers run.  A method that would not fit is not run; a job that
    still does not fit runs alone.  Results come back in job order.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if memory_limit <= 0:
        raise ValueError(f"memory_limit must be positive, got {memory_limit}")
    _check_level(level)
    planned = [_plan_and_cost(job, level, memory_limit) for job in jobs]
    plans = [(methods, estimate) for methods, estimate, _cost in planned]

    # Small jobs cost less than a worker's start-up (~0.3 s to spawn and import): run them
    # here, while the workers build the big ones.
    small = [i for i, (_m, est) in enumerate(plans) if est < _INLINE_MAX_ESTIMATE]
    big = [i for i in range(len(jobs)) if i not in set(small)]
    results: list[PatchResult | None] = [None] * len(jobs)
    if workers == 1 or len(big) <= 1:
        small, big = list(range(len(jobs))), []
    if not big:
        for i in small:
            results[i] = _build_best_patch(jobs[i], level=level, methods=plans[i][0])
        return [r for r in results if r is not None]

    # longest first (by the cost model), so that no long job starts while the other worker
    # is about to go idle; memory still gates each start
    pending = sorted(big, key=lambda i: (-planned[i][2], i))
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
                for i in small:
                    results[i] = _build_best_patch(jobs[i], level=level, methods=plans[i][0])
                small = []
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    index = running.pop(future)
                    in_use -= plans[index][1]
                    results[index] = future.result()
        except BrokenProcessPool as exc:
            raise DeltaError(f"a patch worker died (out of memory?): {exc}") from exc
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]
