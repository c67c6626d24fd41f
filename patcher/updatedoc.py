"""The update document (format 3): one small, unsigned file per version step that carries the
file patches and the new manifest, as little as the engine cannot compute itself.

Why unsigned: its only product is the new manifest, which the engine checks against the new
version's own signature (64 bytes, fetched anyway) before it trusts anything; every file is then
built exactly as with the signed format-2 index (patches applied only to a local file whose
SHA-256 the *installed* signed manifest gives, outputs checked against the *new* signed
manifest). A wrong or hostile document can only make that signature check fail, and the engine
then falls back to the signed format-2 index and the full manifest. What a hostile document can
still make the engine do before the check is bounded: documents up to ``MAX_DOC_BYTES``,
patch outputs up to ``MAX_DERIVED_OUTPUT`` (each patch's header is checked against it before
anything is allocated), JSON up to the manifest loader's ``MAX_JSON_BYTES``.

How it stays small (measured: 1.8 kB of metadata for a 57-byte step before, see
docs/benchmarks-update-size.md):

* the engine derives what a patch determines: it applies the document's patches to the
  installed files, then chunks (FastCDC) and hashes (BLAKE3, SHA-256) the outputs, exactly as
  the publisher did, so the patched files' rows (~40 bytes per chunk) need not be shipped;
* from those rows and the installed manifest it predicts the new manifest
  (:func:`predict_manifest`: the same block order rules as the publisher, new chunks packed into
  new blocks in file order), and the document carries only a zstd patch of the new manifest's
  JSON against that prediction (new block rows, the date, the rows of files built from chunks);
* patches up to ``INLINE_MAX`` bytes travel inside the document (one request, no 32-byte ids),
  larger ones stay ``patches/<blake3>.patch`` files named by the document.

Layout: one zstd frame holding ``varint(len(header)) header inline-patches manifest-delta``,
where the header is compact JSON ``{"p": [[target, source, method, size, where], ...]}``: target
and source are indexes into the installed manifest's files (or a path string for a target the
installed version lacks; source ``null`` for a whole-file frame), method ``z``/``b``/``h``, size
the output's byte count, where the inline patch's length or ``[patch id, patch size]``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

import blake3
import zstandard

from patcher.deltaindex import EMPTY_SHA256, DeltaIndex, PatchEntry
from patcher.errors import ManifestError
from patcher.manifest import (
    MAX_JSON_BYTES,
    Block,
    ChunkLocation,
    Codec,
    FileEntry,
    Manifest,
    check_relative_path,
    manifest_to_json,
)
from patcher.packs import BLOCK_TARGET_RAW, OWN_BLOCKS_MIN, RESTORE_LIVE_MIN

DOC_FORMAT = 3
MAX_DOC_BYTES = 64 * 1024 * 1024
# Inline patches cost no id and no request; past this a separate file costs relatively nothing.
INLINE_MAX = 64 * 1024
# A patch output the engine builds in memory before the signature is checked; the publisher
# leaves larger outputs out of the document (their files are then shipped the format-2 way).
MAX_DERIVED_OUTPUT = 1024 * 1024 * 1024
_METHODS = {"z": "zstd", "b": "bsdiff", "h": "hdiffpatch"}
_CODES = {v: k for k, v in _METHODS.items()}
_PLACEHOLDER_PACK = "0" * 64
_DELTA_LEVEL = 22


@dataclass(frozen=True, slots=True)
class DocPatch:
    path: str  # target path in the new version
    source_path: str | None  # installed file it applies to; None: a whole-file frame
    method: str
    to_size: int
    data: bytes | None  # inline bytes; None: fetched as patches/<patch_id>.patch
    patch_id: str
    patch_size: int


@dataclass(frozen=True, slots=True)
class UpdateDoc:
    patches: tuple[DocPatch, ...]
    manifest_delta: bytes  # zstd frame: the new manifest JSON, the prediction as dictionary


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        if pos >= len(buf):
            raise ValueError("truncated header length")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
    raise ValueError("header length too long")


def encode_update_doc(doc: UpdateDoc, old: Manifest) -> bytes:
    index = {f.path: i for i, f in enumerate(old.files)}
    rows: list[list[object]] = []
    inline: list[bytes] = []
    for p in doc.patches:
        target: object = index.get(p.path, p.path)
        source = index[p.source_path] if p.source_path is not None else None
        where: object
        if p.data is not None:
            where = len(p.data)
            inline.append(p.data)
        else:
            where = [p.patch_id, p.patch_size]
        rows.append([target, source, _CODES[p.method], p.to_size, where])
    header = json.dumps({"p": rows}, separators=(",", ":")).encode()
    body = bytes([DOC_FORMAT]) + _varint(len(header)) + header + b"".join(inline) + doc.manifest_delta
    params = zstandard.ZstdCompressionParameters.from_level(
        19, write_checksum=False, write_content_size=True, write_dict_id=False)
    return zstandard.ZstdCompressor(compression_params=params).compress(body)


def decode_update_doc(blob: bytes, old: Manifest) -> UpdateDoc:
    """Parse a document against the installed manifest; every malformed part raises
    ``ManifestError`` (code ``UPDATE_DOC_INVALID``) naming it."""
    def bad(where: str, why: str) -> ManifestError:
        return ManifestError("UPDATE_DOC_INVALID", where, why)

    if len(blob) > MAX_DOC_BYTES:
        raise bad("document", f"{len(blob)} bytes, over {MAX_DOC_BYTES}")
    try:
        declared = zstandard.get_frame_parameters(blob).content_size
        if declared == zstandard.CONTENTSIZE_UNKNOWN or declared > MAX_DOC_BYTES:
            raise bad("document", f"declares {declared} bytes")
        body = zstandard.ZstdDecompressor().decompress(blob, max_output_size=MAX_DOC_BYTES,
                                                       allow_extra_data=False)
        if not body or body[0] != DOC_FORMAT:
            raise bad("formatVersion", f"not a format-{DOC_FORMAT} update document")
        size, pos = _read_varint(body, 1)
        head = json.loads(body[pos: pos + size])
        pos += size
    except (zstandard.ZstdError, ValueError) as exc:
        raise bad("document", str(exc)) from exc
    if not isinstance(head, dict) or not isinstance(head.get("p"), list):
        raise bad("p", "expected a list of patches")
    patches: list[DocPatch] = []
    for i, row in enumerate(head["p"]):
        w = f"p[{i}]"
        if not isinstance(row, list) or len(row) != 5:
            raise bad(w, "expected [target, source, method, size, where]")
        target, source, code, to_size, where = row
        path = _old_path(old, target, w) if isinstance(target, int) else target
        if not isinstance(path, str):
            raise bad(w, "target is neither a file index nor a path")
        path = check_relative_path(path, f"{w}.target")
        source_path = None if source is None else _old_path(old, source, w)
        if code not in _METHODS or (source_path is None and code != "z"):
            raise bad(w, f"method {code!r}")
        if type(to_size) is not int or not 0 <= to_size <= MAX_DERIVED_OUTPUT:
            raise bad(w, f"output size {to_size!r}")
        if type(where) is int:
            if not 0 < where <= INLINE_MAX or pos + where > len(body):
                raise bad(w, f"inline patch of {where} bytes")
            data = bytes(body[pos: pos + where])
            pos += where
            patches.append(DocPatch(path, source_path, _METHODS[code], to_size, data,
                                    blake3.blake3(data).hexdigest(), len(data)))
        elif (isinstance(where, list) and len(where) == 2 and isinstance(where[0], str)
              and len(where[0]) == 64 and all(c in "0123456789abcdef" for c in where[0])
              and type(where[1]) is int and 0 < where[1] <= MAX_DERIVED_OUTPUT):
            patches.append(DocPatch(path, source_path, _METHODS[code], to_size, None,
                                    where[0], where[1]))
        else:
            raise bad(w, "patch is neither inline nor [id, size]")
    if len({p.path for p in patches}) != len(patches):
        raise bad("p", "a target twice")
    return UpdateDoc(tuple(patches), bytes(body[pos:]))


def _old_path(old: Manifest, index: object, where: str) -> str:
    if type(index) is not int or not 0 <= index < len(old.files):
        raise ManifestError("UPDATE_DOC_INVALID", where, f"no installed file {index!r}")
    return old.files[index].path


def derived_entry(path: str, size: int, sha256: str, chunks: Sequence[tuple[int, int, str]],
                  old: Manifest, source_path: str | None) -> FileEntry:
    """The row a patched file gets in the prediction: what its output determines, and the mode
    of the file it was patched from (a changed mode is carried by the manifest delta)."""
    from patcher.manifest import ChunkEntry

    src = old.file(source_path) if source_path is not None else None
    mode = src.mode if src is not None else 0o644
    return FileEntry(path, size, mode, sha256, tuple(ChunkEntry(o, s, c) for o, s, c in chunks))


def _group(files: Sequence[FileEntry], seen: set[str]) -> list[list[tuple[str, int]]]:
    """New blocks as the publisher groups them (``patcher.publish._group_blocks``): chunks not in
    ``seen``, in file order, about ``BLOCK_TARGET_RAW`` each, a file with ``OWN_BLOCKS_MIN`` of
    them in blocks of its own. Each block: (chunk id, offset in the block)."""
    blocks: list[list[tuple[str, int]]] = []
    block: list[tuple[str, int]] = []
    raw = 0
    for f in files:
        fresh = [c for c in f.chunks if c.id not in seen]
        if not fresh:
            continue
        own = sum(c.size for c in fresh) >= OWN_BLOCKS_MIN
        if own and block:
            blocks.append(block)
            block, raw = [], 0
        for c in fresh:
            if c.id in seen:
                continue
            seen.add(c.id)
            block.append((c.id, raw))
            raw += c.size
            if raw >= BLOCK_TARGET_RAW:
                blocks.append(block)
                block, raw = [], 0
        if own and block:
            blocks.append(block)
            block, raw = [], 0
    if block:
        blocks.append(block)
    return blocks


def predict_manifest(old: Manifest, to_version: str, derived: Sequence[FileEntry]) -> Manifest:
    """The new manifest as far as the installed one and the patched files' rows tell (pure).

    The publisher's rules (``patcher.publish``), applied to what is known: chunks the installed
    version lacks go into new blocks; needed chunks of installed blocks that the new version
    needs less than ``RESTORE_LIVE_MIN`` of are stored again in new blocks after them; blocks the
    installed version used keep their order, new ones follow by first use. New blocks' pack,
    offsets and stored sizes are unknown (placeholders), and files built from chunks keep their
    old rows: every miss costs bytes in the manifest delta, never correctness (the result is
    checked against the signature)."""
    by_path = {f.path: f for f in derived}
    files = [by_path.get(f.path, f) for f in old.files]
    old_paths = {f.path for f in old.files}
    files += [f for f in derived if f.path not in old_paths]
    sizes = {c.id: c.size for f in files for c in f.chunks}
    live: dict[int, int] = {}
    for cid, size in sizes.items():
        loc = old.chunks.get(cid)
        if loc is not None:
            live[loc.block] = live.get(loc.block, 0) + size
    sparse = {b for b, n in live.items() if n < RESTORE_LIVE_MIN * old.blocks[b].raw_size}
    restore = {cid for cid in sizes if cid in old.chunks and old.chunks[cid].block in sparse}
    fresh = _group(files, set(old.chunks))
    if restore:
        fresh += _group(files, set(sizes) - restore)
    # where each chunk is: ("old", block) or ("new", number), and its offset
    where: dict[str, tuple[bool, int, int]] = {}
    for n, block in enumerate(fresh):
        for cid, offset in block:
            where[cid] = (True, n, offset)
    for cid in sizes:
        if cid not in where:
            loc = old.chunks[cid]
            where[cid] = (False, loc.block, loc.offset)
    order: list[tuple[bool, int]] = []
    first: set[tuple[bool, int]] = set()
    for f in files:
        for c in f.chunks:
            key = where[c.id][:2]
            if key not in first:
                first.add(key)
                order.append(key)
    rank = {key: i for i, key in enumerate(order)}
    order.sort(key=lambda k: (1, rank[k]) if k[0] else (0, k[1]))
    number = {key: i for i, key in enumerate(order)}
    blocks: list[Block] = []
    for is_new, b in order:
        if is_new:
            raw = sum(sizes[cid] for cid, _ in fresh[b])
            blocks.append(Block(_PLACEHOLDER_PACK, 0, raw, raw, Codec.ZSTD))
        else:
            blocks.append(old.blocks[b])
    chunks: dict[str, ChunkLocation] = {}
    for cid, (is_new, b, offset) in where.items():
        chunks[cid] = ChunkLocation(number[(is_new, b)], offset)
    return Manifest(
        product_id=old.product_id, version_id=to_version, files=tuple(files),
        blocks=tuple(blocks), chunks=chunks, dirs=old.dirs, launch=old.launch, saves=old.saves,
        dictionary=old.dictionary, created_at=old.created_at, format_version=old.format_version,
    )


def build_manifest_delta(predicted_json: bytes, new_json: bytes) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        _DELTA_LEVEL, source_size=len(new_json), dict_size=len(predicted_json),
        window_log=_window_log(len(predicted_json) + len(new_json)),
        write_checksum=False, write_content_size=True, write_dict_id=False)
    dict_data = zstandard.ZstdCompressionDict(predicted_json,
                                              dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=dict_data, compression_params=params).compress(new_json)


def apply_manifest_delta(predicted_json: bytes, delta: bytes) -> bytes:
    """The new manifest's JSON, bounded by the manifest loader's JSON limit."""
    try:
        declared = zstandard.get_frame_parameters(delta).content_size
        if declared == zstandard.CONTENTSIZE_UNKNOWN or declared > MAX_JSON_BYTES:
            raise ManifestError("MANIFEST_PATCH_FAILED", "manifestDelta",
                                f"declares {declared} bytes")
        dict_data = zstandard.ZstdCompressionDict(predicted_json,
                                                  dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        return zstandard.ZstdDecompressor(
            dict_data=dict_data, max_window_size=1 << _window_log(len(predicted_json) + declared),
        ).decompress(delta, max_output_size=declared, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ManifestError("MANIFEST_PATCH_FAILED", "manifestDelta", str(exc)) from exc


def _window_log(total: int) -> int:
    log = max(total - 1, 1).bit_length()
    return min(max(log, zstandard.WINDOWLOG_MIN), zstandard.WINDOWLOG_MAX)


def predicted_json(old: Manifest, to_version: str, derived: Sequence[FileEntry]) -> bytes:
    return manifest_to_json(predict_manifest(old, to_version, derived))


def as_delta_index(doc: UpdateDoc, old: Manifest, new: Manifest) -> DeltaIndex:
    """The document's patches as format-2 entries, hashes from the two signed manifests, for
    the planner (``patcher.sizing.choose_patches``); entries whose files do not match either
    manifest are left out (their files are built from chunks)."""
    entries: list[PatchEntry] = []
    for p in doc.patches:
        target = new.file(p.path)
        src = old.file(p.source_path) if p.source_path is not None else None
        if target is None or target.size != p.to_size or (p.source_path is not None and src is None):
            continue
        entries.append(PatchEntry(p.path, p.source_path,
                                  src.hash_sha256 if src is not None else EMPTY_SHA256,
                                  target.hash_sha256, target.size, p.method, p.patch_id,
                                  p.patch_size))
    return DeltaIndex(new.product_id, old.version_id, new.version_id, tuple(entries))


def doc_patch(entry: PatchEntry, data: bytes) -> DocPatch:
    """A format-2 entry as it goes into a document (inline when small)."""
    inline = data if len(data) <= INLINE_MAX else None
    return replace(DocPatch(entry.path, entry.source_path, entry.method, entry.to_size, None,
                            entry.patch_id, entry.patch_size), data=inline)
