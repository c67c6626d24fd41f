"""The manifest's binary form: the same content as the JSON form, in columns a loader takes
whole instead of parsing a row at a time.

The JSON form (``patcher.manifest``) stays the canonical document: the CDN serves it, update
deltas patch it, its signature is what makes a version offered. The binary form is published
beside it, signed with the same key over its own bytes, for the readers whose wait shows: an
install's first byte, and the store's reads (the backend's first grant of a game). Decoding
the 1 GiB demo's JSON (16,420 chunk rows) takes ~40 ms of Python even with the streaming
loader; these columns load in a few, and are checked as strictly as the JSON is (same
limits, same error codes).

Layout: ``BINARY_MAGIC`` then one zstd frame (its content size declared) holding

- a little-endian u32, the length of a JSON header: format, product, version, creation time,
  dictionary, dirs, launch entries, saves, the files as ``[path, size, mode, sha256, rows]``,
  the packs' ids, and the number of chunks, rows and blocks;
- then the columns, little-endian, in this order: the unique chunks' ids (32 bytes each,
  sorted, no repeats), their blocks (u32), their offsets in the block (u32); every file row's
  size (u32) and its chunk's index (u32), files in order, each file's rows tiling it (the
  offsets are the sizes' running sum, so they are not stored); every block's pack index (u32),
  offset in the pack (u64), stored size (u32), raw size (u32) and codec (u8: raw, zstd,
  zstd-dict).
"""

from __future__ import annotations

import json
import operator
import struct
import sys
from array import array
from collections import deque
from itertools import accumulate, islice
from typing import Any

import zstandard

from patcher.chunking import CHUNK_MAX
from patcher.errors import ManifestError
from patcher.manifest import (
    BINARY_MAGIC,
    FORMAT_VERSION,
    MANIFEST_LEVEL,
    MAX_BLOCK_RAW,
    MAX_CHUNKS,
    MAX_COMPRESSED_BYTES,
    MAX_FILE_SIZE,
    MAX_FILES,
    MAX_JSON_BYTES,
    Block,
    ChunkLocations,
    ChunkTable,
    Codec,
    FileChunks,
    FileEntry,
    Manifest,
    _hex,
    _int,
    _need,
    _str_list_any,
    check_collisions,
    check_id,
    check_relative_path,
    is_binary_manifest,
    json_budget,
    launch_doc,
    parse_launch,
    parse_saves,
    saves_doc,
)

_CODECS = (Codec.RAW, Codec.ZSTD, Codec.ZSTD_DICT)  # the codec byte is an index here
_CODEC_BYTE = {c: i for i, c in enumerate(_CODECS)}
_HEADER_MAX = 64 * 1024 * 1024
# the fewest bytes a row, a location and a block take in the JSON form: [0,1,"<64 hex>"],
# "<64 hex>":[0,0], ["<64 hex>",0,1,1,"raw"], each with its comma
_JSON_ROW, _JSON_LOCATION, _JSON_BLOCK = 73, 73, 81
# the columns' bytes per unique chunk, per row, per block
_PER_CHUNK, _PER_ROW, _PER_BLOCK = 32 + 4 + 4, 4 + 4, 4 + 8 + 4 + 4 + 1


def _le(kind: str, values: Any) -> bytes:
    a = array(kind, values)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def encode_manifest_binary(m: Manifest, level: int = MANIFEST_LEVEL) -> bytes:
    """The binary form of a manifest (which the publisher has validated as JSON already)."""
    table = m.table()
    packs: dict[str, int] = {}
    for b in m.blocks:
        packs.setdefault(b.pack, len(packs))
    files = []
    row = 0
    for f in m.files:
        files.append([f.path, f.size, f.mode, f.hash_sha256, len(f.chunks)])
        row += len(f.chunks)
    header = {
        "formatVersion": m.format_version, "productId": m.product_id,
        "versionId": m.version_id, "createdAt": m.created_at, "dictionary": m.dictionary,
        "dirs": list(m.dirs),
        "launch": launch_doc(m.launch), "saves": saves_doc(m.saves),
        "files": files, "packs": list(packs),
        "chunks": len(table), "rows": row, "blocks": len(m.blocks),
    }
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    body = b"".join([
        struct.pack("<I", len(head)), head,
        bytes(table.ids), _le("I", table.block), _le("I", table.block_offset),
        _le("I", table.row_size), _le("I", table.row_chunk),
        _le("I", (packs[b.pack] for b in m.blocks)), _le("Q", (b.offset for b in m.blocks)),
        _le("I", (b.stored_size for b in m.blocks)), _le("I", (b.raw_size for b in m.blocks)),
        bytes(_CODEC_BYTE[b.codec] for b in m.blocks),
    ])
    blob = BINARY_MAGIC + zstandard.ZstdCompressor(level=level, write_content_size=True).compress(body)
    if len(blob) > MAX_COMPRESSED_BYTES:
        raise ManifestError("MANIFEST_TOO_LARGE", "manifest", f"{len(blob)} compressed bytes")
    return blob


def _corrupt(detail: str) -> ManifestError:
    return ManifestError("MANIFEST_CORRUPT", "manifest", f"binary form: {detail}")


def _column(body: memoryview, at: int, kind: str, count: int) -> tuple[array[int], int]:
    a = array(kind)
    end = at + a.itemsize * count
    a.frombytes(body[at:end])
    if sys.byteorder == "big":
        a.byteswap()
    return a, end


def _body(blob: bytes) -> bytes:
    """The frame's content, within the loader's budget (declared up front: no bomb is
    decompressed past it)."""
    frame = blob[len(BINARY_MAGIC):]
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
    except zstandard.ZstdError as exc:
        raise _corrupt(f"not a zstd frame: {exc}") from exc
    if declared == zstandard.CONTENTSIZE_UNKNOWN:
        raise _corrupt("the frame does not declare its size")
    if declared > json_budget(len(blob)):
        raise ManifestError("MANIFEST_TOO_LARGE", "manifest",
                            f"binary form declares {declared} bytes, over the budget of "
                            f"{json_budget(len(blob))} for {len(blob)} compressed bytes")
    try:
        body = zstandard.ZstdDecompressor().decompress(frame, max_output_size=declared,
                                                       allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise _corrupt(f"zstd: {exc}") from exc
    if len(body) != declared:
        raise _corrupt(f"{len(body)} bytes, the frame header says {declared}")
    return body


def _header(body: bytes) -> tuple[dict[str, Any], int]:
    if len(body) < 4:
        raise _corrupt("no header")
    (size,) = struct.unpack_from("<I", body)
    if size > min(_HEADER_MAX, len(body) - 4):
        raise _corrupt(f"a header of {size} bytes in a body of {len(body)}")
    try:
        header = json.loads(body[4 : 4 + size])
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _corrupt(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise _corrupt("header is not an object")
    return header, 4 + size


def _files(header: dict[str, Any]) -> list[tuple[str, int, int, str, int]]:
    raw = _need(header, "files", list, "")
    if len(raw) > MAX_FILES:
        raise ManifestError("MANIFEST_LIMIT", "files", f"{len(raw)} files")
    out = []
    for i, row in enumerate(raw):
        w = f"files[{i}]"
        if not isinstance(row, list) or len(row) != 5:
            raise ManifestError("MANIFEST_SCHEMA", w, "expected [path, size, mode, sha256, rows]")
        if not isinstance(row[0], str):
            raise ManifestError("MANIFEST_SCHEMA", f"{w}.path", "expected a string")
        out.append((check_relative_path(row[0], f"{w}.path"),
                    _int(row[1], f"{w}.size", 0, MAX_FILE_SIZE),
                    _int(row[2], f"{w}.mode", 0, 0o777),
                    _hex(row[3], f"{w}.hash_sha256"),
                    _int(row[4], f"{w}.rows", 0, MAX_CHUNKS)))
    return out


def decode_manifest_binary(blob: bytes) -> Manifest:
    """The manifest of a binary form, checked as ``parse_manifest`` checks the JSON one (a
    ``ManifestError`` naming the code and field), or ``MANIFEST_CORRUPT`` for a layout that
    does not add up."""
    if len(blob) > MAX_COMPRESSED_BYTES:
        raise ManifestError("MANIFEST_TOO_LARGE", "manifest", f"{len(blob)} compressed bytes")
    if not is_binary_manifest(blob):
        raise _corrupt("no magic")
    body = _body(blob)
    header, at = _header(body)
    version = _need(header, "formatVersion", int, "")
    if version != FORMAT_VERSION:
        raise ManifestError("MANIFEST_FORMAT_UNSUPPORTED", "formatVersion", f"{version}")
    product_id = check_id(_need(header, "productId", str, ""), "productId")
    version_id = check_id(_need(header, "versionId", str, ""), "versionId")
    created_at = str(header.get("createdAt", ""))[:64]
    dictionary = header.get("dictionary")
    if dictionary is not None:
        _hex(dictionary, "dictionary")
    heads = _files(header)
    dirs = tuple(check_relative_path(d, f"dirs[{i}]")
                 for i, d in enumerate(_str_list_any(_need(header, "dirs", list, ""), "dirs")))
    launch = parse_launch(header.get("launch", []))
    saves = parse_saves(header.get("saves", []))
    packs = [_hex(p, f"packs[{i}]") for i, p in enumerate(_need(header, "packs", list, ""))]
    n = _int(_need(header, "chunks", int, ""), "chunks", 0, MAX_CHUNKS)
    rows = _int(_need(header, "rows", int, ""), "rows", 0, MAX_CHUNKS)
    nblocks = _int(_need(header, "blocks", int, ""), "blocks", 0, MAX_CHUNKS)
    # no bigger than its JSON form may be: the binary form is ~10x denser, so its own
    # decompression budget would let it describe what the JSON loaders refuse as too large.
    # (The JSON's budget per compressed byte is not applied: the binary form of a game of
    # repeated chunks compresses far better than its JSON, and would be refused where the JSON
    # is taken.)
    least_json = _JSON_ROW * rows + _JSON_LOCATION * n + _JSON_BLOCK * nblocks
    if least_json > MAX_JSON_BYTES:
        raise ManifestError("MANIFEST_TOO_LARGE", "manifest",
                            f"{rows} rows, {n} chunks and {nblocks} blocks: at least "
                            f"{least_json} bytes as JSON, over its {MAX_JSON_BYTES}")
    if sum(h[4] for h in heads) != rows:
        raise _corrupt(f"the files' rows add up to {sum(h[4] for h in heads)}, not {rows}")
    if len(body) - at != n * _PER_CHUNK + rows * _PER_ROW + nblocks * _PER_BLOCK:
        raise _corrupt(f"{len(body) - at} bytes of columns for {n} chunks, {rows} rows and "
                       f"{nblocks} blocks")

    view = memoryview(body)
    ids = bytes(view[at : at + 32 * n])
    at += 32 * n
    block, at = _column(view, at, "I", n)
    block_offset, at = _column(view, at, "I", n)
    row_size, at = _column(view, at, "I", rows)
    row_chunk, at = _column(view, at, "I", rows)
    pack_of, at = _column(view, at, "I", nblocks)
    offsets, at = _column(view, at, "Q", nblocks)
    stored, at = _column(view, at, "I", nblocks)
    raw_sizes, at = _column(view, at, "I", nblocks)
    codec_of = view[at : at + nblocks]
    del view

    blocks = _blocks(packs, pack_of, offsets, stored, raw_sizes, codec_of)
    if dictionary is None and any(b.codec is Codec.ZSTD_DICT for b in blocks):
        raise ManifestError("MANIFEST_SCHEMA", "dictionary", "zstd-dict blocks need a dictionary")
    _check_ids(ids)
    if rows and (min(row_size) < 1 or max(row_size) > CHUNK_MAX):
        raise ManifestError("MANIFEST_LIMIT", "files", f"a chunk size outside [1, {CHUNK_MAX}]")
    if rows and max(row_chunk) >= n:
        raise ManifestError("MANIFEST_SCHEMA", "chunks", "a file row names no chunk location")
    row_offset = _tiling(heads, row_size)
    size = _chunk_sizes(n, row_chunk, row_size)
    if n and max(block) >= nblocks:
        raise ManifestError("MANIFEST_LIMIT", "chunks", f"a chunk in a block past {nblocks}")
    if n and max(block_offset) > MAX_BLOCK_RAW:
        raise ManifestError("MANIFEST_LIMIT", "chunks", f"a chunk offset past {MAX_BLOCK_RAW}")
    block_raw = [b.raw_size for b in blocks]
    if not all(map(operator.le, map(operator.add, block_offset, size),
                   map(block_raw.__getitem__, block))):
        raise ManifestError("MANIFEST_CHUNKS_TILING", "chunks", "a chunk overruns its block")
    row_file = array("I", bytes(4 * rows))
    lo = 0
    for fi, head in enumerate(heads):
        row_file[lo : lo + head[4]] = array("I", [fi]) * head[4]
        lo += head[4]
    table = ChunkTable(ids, block, block_offset, size, row_offset, row_size, row_chunk, row_file)
    files, lo = [], 0
    for path, fsize, mode, sha, count in heads:
        files.append(FileEntry(path, fsize, mode, sha, FileChunks(table, lo, lo + count)))
        lo += count
    check_collisions(tuple(files), dirs)
    return Manifest(
        product_id=product_id, version_id=version_id, created_at=created_at, files=tuple(files),
        dirs=dirs, blocks=blocks, chunks=ChunkLocations(table), launch=launch, saves=saves,
        dictionary=dictionary, _table=table,
    )


def _blocks(packs: list[str], pack_of: array[int], offsets: array[int], stored: array[int],
            raw_sizes: array[int], codec_of: memoryview) -> tuple[Block, ...]:
    if not pack_of:
        return ()
    if max(pack_of) >= len(packs):
        raise ManifestError("MANIFEST_SCHEMA", "blocks", "a block names no pack")
    if max(offsets) > 1 << 40:
        raise ManifestError("MANIFEST_LIMIT", "blocks", "a block offset past 2^40")
    if min(stored) < 1 or max(stored) > MAX_BLOCK_RAW + 65536:
        raise ManifestError("MANIFEST_LIMIT", "blocks",
                            f"a stored size outside [1, {MAX_BLOCK_RAW + 65536}]")
    if min(raw_sizes) < 1 or max(raw_sizes) > MAX_BLOCK_RAW:
        raise ManifestError("MANIFEST_LIMIT", "blocks", f"a raw size outside [1, {MAX_BLOCK_RAW}]")
    if max(codec_of) >= len(_CODECS):
        raise ManifestError("MANIFEST_SCHEMA", "blocks", f"unknown codec {max(codec_of)}")
    codecs = list(map(_CODECS.__getitem__, codec_of))
    blocks = tuple(map(Block, map(packs.__getitem__, pack_of), offsets, stored, raw_sizes,
                       codecs))
    if any(b.codec is Codec.RAW and b.stored_size != b.raw_size for b in blocks):
        raise ManifestError("MANIFEST_SCHEMA", "blocks", "raw block with stored != raw size")
    return blocks


def _check_ids(ids: bytes) -> None:
    """Sorted and unique: each id's first 8 bytes (big-endian) rise, compared in C; only where
    two are equal (never seen from BLAKE3, but a document can hold any) the whole ids are."""
    keys = array("Q", memoryview(ids).cast("Q")[::4].tobytes())
    if sys.byteorder == "little":
        keys.byteswap()
    if all(map(operator.lt, keys, islice(keys, 1, None))):
        return
    if not all(map(operator.le, keys, islice(keys, 1, None))):
        raise ManifestError("MANIFEST_SCHEMA", "chunks", "chunk ids not in ascending order")
    for i in range(len(keys) - 1):
        if keys[i] == keys[i + 1] and ids[32 * i : 32 * i + 32] >= ids[32 * i + 32 : 32 * i + 64]:
            raise ManifestError("MANIFEST_SCHEMA", "chunks", "chunk ids repeated or unsorted")


def _tiling(heads: list[tuple[str, int, int, str, int]], row_size: array[int]) -> array[int]:
    """Every row's offset in its file (the running sum of the file's sizes), each file's rows
    covering it exactly."""
    row_offset: array[int] = array("Q")
    lo = 0
    for i, (_, fsize, _, _, count) in enumerate(heads):
        tiling = list(accumulate(row_size[lo : lo + count], initial=0))
        if tiling.pop() != fsize:
            raise ManifestError("MANIFEST_CHUNKS_TILING", f"files[{i}].chunks",
                                f"chunks cover {sum(row_size[lo:lo + count])} of {fsize} bytes")
        row_offset.fromlist(tiling)
        lo += count
    return row_offset


def _chunk_sizes(n: int, row_chunk: array[int], row_size: array[int]) -> array[int]:
    """Each chunk's size, its last row's (as the JSON loaders take it); a chunk no row names
    is refused."""
    size = [-1] * n
    deque(map(size.__setitem__, row_chunk, row_size), maxlen=0)  # the loop in C
    if -1 in size:
        raise ManifestError("MANIFEST_SCHEMA", "chunks", "chunk not used by any file")
    return array("I", size)
