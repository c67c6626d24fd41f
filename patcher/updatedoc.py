"""The update document (format 3): one small, unsigned file per version step that carries the
file patches and the new manifest, as little as the engine cannot compute itself.

Why unsigned: its only product is the new manifest, which the engine checks against the new
version's own signature (64 bytes, fetched anyway) before it trusts anything; every file is then
built exactly as with the signed format-2 index (patches applied only to a local file whose
SHA-256 the *installed* signed manifest gives, outputs checked against the *new* signed
manifest). A wrong or hostile document can only make that signature check fail, and the engine
then falls back to the signed format-2 index and the full manifest. What a hostile document can
still make the engine do before the check is bounded, and checked before any of it runs
(:func:`check_doc_work`): documents up to ``MAX_DOC_BYTES``; a predicted file list within the
manifest loader's limits (``MAX_FILES`` files, ``MAX_CHUNKS`` rows, ``MAX_JSON_BYTES`` of JSON,
no path twice); and one byte budget, :func:`work_budget` of the installed size, for everything
read, fetched and built (patch outputs up to ``MAX_DERIVED_OUTPUT`` each, their installed
sources, the external patches). A document past any of it is refused with a ``DeltaError``
naming the limit, and the engine takes the signed format-2 path instead.

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

from collections.abc import Sequence
from dataclasses import dataclass, replace

import blake3
import zstandard

from patcher.chunking import CHUNK_MAX
from patcher.deltaindex import EMPTY_SHA256, DeltaIndex, PatchEntry
from patcher.errors import DeltaError, ManifestError
from patcher.manifest import (
    MAX_BLOCK_RAW,
    MAX_CHUNKS,
    MAX_FILES,
    MAX_JSON_BYTES,
    Block,
    ChunkLocation,
    Codec,
    FileEntry,
    Manifest,
    check_relative_path,
    manifest_to_json,
)
from patcher.packs import BLOCK_TARGET_RAW, OWN_BLOCKS_MIN, PACK_TARGET_SIZE, RESTORE_LIVE_MIN

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
# The work budget: what a document may make the engine read, fetch and build before the new
# signature is checked. Sources are counted once each, so they never pass 1x the installed
# size; outputs and external patches get 2x more (a step that patches every file of a version
# that doubles); the constant is for small games. The demo catalog's published steps use 1.44x
# at most (--size 8, 1.2.0 -> 2.0.0: 0.73x outputs, 0.59x sources, 0.12x external). A step past
# it is still installed, through the signed format-2 index (it costs that index's bytes).
WORK_FACTOR = 3
WORK_SLACK = 64 * 1024 * 1024
# Lower bounds of the JSON a predicted row costs (manifest_to_json): a file row without its path
# ({"path":"","size":0,"mode":420,"hash_sha256":"<64>","chunks":[]},) and a chunk row
# ([0,1,"<64>"],). Lower bounds, so a document is refused only when its prediction is certainly
# past the loader's limit.
_FILE_JSON_MIN = 120
_CHUNK_JSON_MIN = 72
# MOVE steps copy installed rows under new paths: a version renames each installed file at most
# once, and copies beyond that are rare (the publisher moves a file whose content an installed
# file has). So the rows they copy may not pass the installed version's rows by more than this
# (~4 GiB of copies at the 64 KiB average chunk); past it a tiny document could fill the
# prediction with copies of one big row up to the loader's JSON limit (the review: 2000 copies
# of a 1000-chunk file, 155 MiB of JSON from 2 KB).
MOVE_SLACK_ROWS = 65_536
# Likewise the files MOVE and NEW steps add: at most the installed count + this. Without it a
# 100 KB document of a million NEW steps (short sequential names compress to ~0.1 byte each)
# made a 131 MB prediction (9.6 CPU-s, 755 MiB peak) before the signature could refuse it.
ADD_SLACK_FILES = 65_536
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
class NewBlocks:
    """What the engine cannot compute about the new version's new blocks: their stored sizes
    in the order they were written (0: stored raw) and the packs they went to. Offsets follow
    (blocks are appended to packs in that order, a new pack past ``PACK_TARGET_SIZE``)."""

    stored: tuple[int, ...] = ()
    packs: tuple[str, ...] = ()


KEEP, DROP, MOVE, NEW = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class LayoutOp:
    """One step of the new file list over the installed one, read with a cursor: ``KEEP n``
    installed files in order (their rows, or the derived rows of patched ones), ``DROP n``
    (removed or moved away), ``MOVE`` installed file ``index``'s row under ``path`` (same
    content), ``NEW`` ``path`` (a derived row, or one the manifest delta supplies)."""

    op: int
    n: int = 0  # count (KEEP, DROP) or installed file index (MOVE)
    path: str = ""


@dataclass(frozen=True, slots=True)
class UpdateDoc:
    patches: tuple[DocPatch, ...]
    manifest_delta: bytes  # zstd frame: the new manifest JSON, the prediction as dictionary
    blocks: NewBlocks = NewBlocks()
    layout: tuple[LayoutOp, ...] | None = None  # None: the installed order, new paths last


def file_layout(old: Manifest, new: Manifest) -> tuple[LayoutOp, ...]:
    """The publisher's side: the new file list as cursor steps over the installed one."""
    index = {f.path: i for i, f in enumerate(old.files)}
    by_sha: dict[str, int] = {}
    for i, f in enumerate(old.files):
        by_sha.setdefault(f.hash_sha256, i)
    ops: list[LayoutOp] = []

    def step(op: int, n: int) -> None:
        if ops and ops[-1].op == op:
            ops[-1] = LayoutOp(op, ops[-1].n + n)
        else:
            ops.append(LayoutOp(op, n))

    cursor = 0
    for f in new.files:
        j = index.get(f.path)
        same = j is not None and old.files[j].hash_sha256 == f.hash_sha256
        if j is not None and j >= cursor and (same or f.hash_sha256 not in by_sha):
            if j > cursor:
                step(DROP, j - cursor)
            step(KEEP, 1)
            cursor = j + 1
        elif f.hash_sha256 in by_sha:
            ops.append(LayoutOp(MOVE, by_sha[f.hash_sha256], f.path))
        elif j is not None:
            ops.append(LayoutOp(MOVE, j, f.path))
        else:
            ops.append(LayoutOp(NEW, 0, f.path))
    return tuple(ops)


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


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 1

    def varint(self, limit: int, what: str) -> int:
        value = shift = 0
        for _ in range(10):
            if self.pos >= len(self.buf):
                raise ValueError(f"truncated at {what}")
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if value > limit:
                    raise ValueError(f"{what} {value} over {limit}")
                return value
        raise ValueError(f"{what}: integer too long")

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.buf):
            raise ValueError(f"truncated at {what}")
        out = self.buf[self.pos: self.pos + n]
        self.pos += n
        return out


def encode_update_doc(doc: UpdateDoc, old: Manifest) -> bytes:
    """Binary, inside one zstd frame: format byte; patch count, then per patch target
    (installed file index + 1, or 0 and a length-prefixed UTF-8 path), source (index + 1, 0:
    none), method byte, output size, inline length (0: external, then a 32-byte id and its
    size); new block count, their stored sizes; pack count, 32-byte pack ids; inline patch
    bytes; the manifest delta (the rest)."""
    index = {f.path: i for i, f in enumerate(old.files)}
    out = bytearray([DOC_FORMAT])
    out += _varint(len(doc.patches))
    inline: list[bytes] = []
    for p in doc.patches:
        if p.path in index:
            out += _varint(index[p.path] + 1)
        else:
            name = p.path.encode()
            out += _varint(0) + _varint(len(name)) + name
        out += _varint(index[p.source_path] + 1 if p.source_path is not None else 0)
        out += _CODES[p.method].encode() + _varint(p.to_size)
        if p.data is not None:
            out += _varint(len(p.data))
            inline.append(p.data)
        else:
            out += _varint(0) + bytes.fromhex(p.patch_id) + _varint(p.patch_size)
    out += _varint(len(doc.blocks.stored)) + b"".join(_varint(n) for n in doc.blocks.stored)
    out += _varint(len(doc.blocks.packs)) + b"".join(bytes.fromhex(h) for h in doc.blocks.packs)
    layout = doc.layout or ()
    out += _varint(len(layout) + 1 if doc.layout is not None else 0)
    for step in layout:
        out += _varint(step.op | step.n << 2)
        if step.op in (MOVE, NEW):
            name = step.path.encode()
            out += _varint(len(name)) + name
    body = bytes(out) + b"".join(inline) + doc.manifest_delta
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
    except zstandard.ZstdError as exc:
        raise bad("document", str(exc)) from exc
    if not body or body[0] != DOC_FORMAT:
        raise bad("formatVersion", f"not a format-{DOC_FORMAT} update document")
    r = _Reader(body)
    rows: list[tuple[str, str | None, str, int, int, str, int]] = []
    try:
        # counts are capped by what check_doc_work accepts, so that no count makes these loops
        # build more objects than an acceptable document could use: targets are installed
        # files or added ones (at most the installed count + ADD_SLACK_FILES)
        most_files = min(MAX_FILES, 2 * len(old.files) + ADD_SLACK_FILES)
        for i in range(r.varint(min(len(body), most_files), "patch count")):
            w = f"patches[{i}]"
            target = r.varint(len(old.files), f"{w}.target")
            if target:
                path = old.files[target - 1].path
            else:
                raw = r.take(r.varint(4096, f"{w}.path length"), f"{w}.path")
                try:
                    path = check_relative_path(raw.decode(), f"{w}.path")
                except UnicodeDecodeError as exc:
                    raise bad(f"{w}.path", "not UTF-8") from exc
            source = r.varint(len(old.files), f"{w}.source")
            source_path = old.files[source - 1].path if source else None
            code = r.take(1, f"{w}.method").decode("latin-1")
            if code not in _METHODS or (source_path is None and code != "z"):
                raise bad(f"{w}.method", f"{code!r}" + ("" if source_path else " without a source"))
            to_size = r.varint(MAX_DERIVED_OUTPUT, f"{w}.size")
            length = r.varint(INLINE_MAX, f"{w}.inline length")
            if length:
                rows.append((path, source_path, _METHODS[code], to_size, length, "", length))
            else:
                patch_id = r.take(32, f"{w}.id").hex()
                rows.append((path, source_path, _METHODS[code], to_size, 0, patch_id,
                             max(1, r.varint(MAX_DERIVED_OUTPUT, f"{w}.patch size"))))
        stored = tuple(r.varint(MAX_BLOCK_RAW, "block size")
                       for _ in range(r.varint(min(len(body), MAX_CHUNKS), "block count")))
        packs = tuple(r.take(32, "pack").hex()
                      for _ in range(r.varint(len(stored) + 1, "pack count")))
        layout: list[LayoutOp] | None = None
        # KEEP and DROP steps move the cursor over at least one installed file each, MOVE and
        # NEW steps add a file each
        count = r.varint(min(len(body), most_files + 1), "layout length")
        if count:
            layout, cursor = [], 0
            for k in range(count - 1):
                word = r.varint(len(old.files) << 2 | 3, f"layout[{k}]")
                op, n = word & 3, word >> 2
                path = ""
                if op in (MOVE, NEW):
                    raw = r.take(r.varint(4096, f"layout[{k}] path length"), f"layout[{k}]")
                    try:
                        path = check_relative_path(raw.decode(), f"layout[{k}].path")
                    except UnicodeDecodeError as exc:
                        raise bad(f"layout[{k}].path", "not UTF-8") from exc
                if op in (KEEP, DROP):
                    cursor += n
                if cursor > len(old.files) or (op == MOVE and n >= len(old.files)):
                    raise bad(f"layout[{k}]", "past the installed files")
                if op in (KEEP, DROP) and not n:  # never written: one byte, one object each
                    raise bad(f"layout[{k}]", "keeps or drops no file")
                layout.append(LayoutOp(op, n, path))
        patches: list[DocPatch] = []
        for path, source_path, method, to_size, length, patch_id, size in rows:
            data = r.take(length, f"{path}: inline patch") if length else None
            if data is not None:
                patch_id = blake3.blake3(data).hexdigest()
            patches.append(DocPatch(path, source_path, method, to_size, data, patch_id, size))
    except ValueError as exc:
        raise bad("document", str(exc)) from exc
    if len({p.path for p in patches}) != len(patches):
        raise bad("patches", "a target twice")
    return UpdateDoc(tuple(patches), bytes(body[r.pos:]), NewBlocks(stored, packs),
                     tuple(layout) if layout is not None else None)


@dataclass(frozen=True, slots=True)
class DocWork:
    """What deriving a document's manifest costs, known from the document and the installed
    manifest alone (pure): the predicted file list's size, and the bytes it makes the engine
    build (patch outputs), read (installed sources, each once) and fetch (external patches)."""

    files: int
    rows: int
    json_bytes: int  # a lower bound
    output_bytes: int
    source_bytes: int
    external_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.output_bytes + self.source_bytes + self.external_bytes


def work_budget(installed_size: int) -> int:
    """The most bytes (:attr:`DocWork.total_bytes`) a document for an installed version of
    ``installed_size`` bytes may cost before the new manifest's signature is checked."""
    return WORK_FACTOR * installed_size + WORK_SLACK


def _derived_rows(size: int) -> int:
    # every FastCDC chunk is at most CHUNK_MAX: the fewest rows an output of `size` gets
    return -(-size // CHUNK_MAX)


def doc_work(doc: UpdateDoc, old: Manifest) -> DocWork:
    """Count what the prediction would hold and what deriving it costs, without building
    either: O(installed files + document). Raises ``DeltaError`` naming the limit as soon as the
    count passes one, so a hostile layout costs at most the count up to the limit:
    ``UPDATE_DOC_PATH_TWICE`` (a manifest never holds a path twice: repeating one is how a tiny
    document would copy one big row thousands of times), ``UPDATE_DOC_TOO_MANY_ROWS`` for MOVE
    steps copying more rows than ``MOVE_SLACK_ROWS`` past the installed ones,
    ``UPDATE_DOC_TOO_MANY_FILES`` for MOVE and NEW steps adding more files than
    ``ADD_SLACK_FILES`` past the installed count, ``UPDATE_DOC_TOO_MANY_FILES`` /
    ``_TOO_MANY_ROWS`` / ``_JSON_TOO_LARGE`` (past the manifest loader's ``MAX_FILES``,
    ``MAX_CHUNKS``, ``MAX_JSON_BYTES``: the signed manifest could not be that big)."""
    derived = {p.path: _derived_rows(p.to_size) for p in doc.patches}
    files = rows = json = moved = added = 0
    seen: set[str] = set()
    move_limit = sum(len(f.chunks) for f in old.files) + MOVE_SLACK_ROWS
    add_limit = len(old.files) + ADD_SLACK_FILES

    def add_new(path: str, n_rows: int) -> None:
        nonlocal added
        added += 1
        if added > add_limit:
            raise DeltaError(f"the layout adds over {add_limit} files (the installed "
                             f"{len(old.files)} + {ADD_SLACK_FILES})",
                             code="UPDATE_DOC_TOO_MANY_FILES")
        add(path, n_rows)

    def add(path: str, n_rows: int) -> None:
        nonlocal files, rows, json
        if path in seen:
            raise DeltaError(f"the predicted file list holds {path!r} twice",
                             code="UPDATE_DOC_PATH_TWICE")
        seen.add(path)
        files += 1
        rows += n_rows
        json += _FILE_JSON_MIN + len(path.encode()) + _CHUNK_JSON_MIN * n_rows
        if files > MAX_FILES:
            raise DeltaError(f"the prediction holds over {MAX_FILES} files",
                             code="UPDATE_DOC_TOO_MANY_FILES")
        if rows > MAX_CHUNKS:
            raise DeltaError(f"the prediction holds over {MAX_CHUNKS} chunk rows",
                             code="UPDATE_DOC_TOO_MANY_ROWS")
        if json > MAX_JSON_BYTES:
            raise DeltaError(f"the prediction is over {MAX_JSON_BYTES} JSON bytes",
                             code="UPDATE_DOC_JSON_TOO_LARGE")

    if doc.layout is None:
        for f in old.files:
            add(f.path, derived.get(f.path, len(f.chunks)))
        for p in doc.patches:
            if p.path not in seen:
                add_new(p.path, derived[p.path])
    else:
        cursor = 0
        for step in doc.layout:
            if step.op == KEEP:
                for f in old.files[cursor: cursor + step.n]:
                    add(f.path, derived.get(f.path, len(f.chunks)))
            if step.op in (KEEP, DROP):
                cursor += step.n
            elif step.op == MOVE:
                n_rows = derived.get(step.path, len(old.files[step.n].chunks))
                moved += n_rows
                if moved > move_limit:
                    raise DeltaError(f"MOVE steps copy over {move_limit} rows (the installed "
                                     f"version's {move_limit - MOVE_SLACK_ROWS} + "
                                     f"{MOVE_SLACK_ROWS})", code="UPDATE_DOC_TOO_MANY_ROWS")
                add_new(step.path, n_rows)
            else:
                add_new(step.path, derived.get(step.path, 0))
    output, source, external = _work_bytes(doc, old)
    return DocWork(files, rows, json, output, source, external)


def _work_bytes(doc: UpdateDoc, old: Manifest) -> tuple[int, int, int]:
    """(patch output, installed sources, each counted once, external patches) in bytes."""
    source = 0
    for path in {p.source_path for p in doc.patches if p.source_path is not None}:
        entry = old.file(path)
        source += entry.size if entry is not None else 0
    return (sum(p.to_size for p in doc.patches), source,
            sum(p.patch_size for p in doc.patches if p.data is None))


def check_doc_work(doc: UpdateDoc, old: Manifest) -> DocWork:
    """:func:`doc_work` within the manifest loader's limits, and its bytes within the
    :func:`work_budget` of the installed size (checked first: sums over the patches), else
    ``DeltaError`` with the code naming the limit (``UPDATE_DOC_OVER_BUDGET`` for the bytes).
    Run before anything is fetched, read or built: a refused document has cost its own bytes
    and this count."""
    output, source, external = _work_bytes(doc, old)
    budget = work_budget(old.total_size)
    if output + source + external > budget:
        raise DeltaError(
            f"deriving it costs {output + source + external} bytes ({output} of patch output, "
            f"{source} of installed sources, {external} of external patches), over the budget "
            f"of {budget} ({WORK_FACTOR}x the installed {old.total_size} bytes + {WORK_SLACK})",
            code="UPDATE_DOC_OVER_BUDGET")
    return doc_work(doc, old)


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


def _predicted_files(old: Manifest, derived: Sequence[FileEntry],
                     layout: Sequence[LayoutOp] | None = None) -> list[FileEntry]:
    by_path = {f.path: f for f in derived}
    if layout is None:
        files = [by_path.get(f.path, f) for f in old.files]
        old_paths = {f.path for f in old.files}
        return files + [f for f in derived if f.path not in old_paths]
    files, cursor = [], 0
    for step in layout:
        if step.op == KEEP:
            files += [by_path.get(f.path, f) for f in old.files[cursor: cursor + step.n]]
        if step.op in (KEEP, DROP):
            cursor += step.n
        elif step.op == MOVE:
            f = old.files[step.n]
            files.append(by_path.get(step.path)
                         or FileEntry(step.path, f.size, f.mode, f.hash_sha256, f.chunks))
        else:  # a new path: derived, or a placeholder the manifest delta fills in
            files.append(by_path.get(step.path) or FileEntry(step.path, 0, 0o644, "0" * 64, ()))
    return files


def new_block_groups(old: Manifest, files: Sequence[FileEntry]) -> list[list[tuple[str, int]]]:
    """The new blocks a version with ``files`` gets after ``old``, in the order the publisher
    writes them: chunks the installed version lacks, then needed chunks of installed blocks the
    new version needs less than ``RESTORE_LIVE_MIN`` of (stored again)."""
    sizes = {c.id: c.size for f in files for c in f.chunks}
    live: dict[int, int] = {}
    for cid, size in sizes.items():
        loc = old.chunks.get(cid)
        if loc is not None:
            live[loc.block] = live.get(loc.block, 0) + size
    sparse = {b for b, n in live.items() if n < RESTORE_LIVE_MIN * old.blocks[b].raw_size}
    restore = {cid for cid in sizes if cid in old.chunks and old.chunks[cid].block in sparse}
    groups = _group(files, set(old.chunks))
    if restore:
        groups += _group(files, set(sizes) - restore)
    return groups


def new_blocks_info(old: Manifest, new: Manifest, derived: Sequence[FileEntry],
                    layout: Sequence[LayoutOp] | None = None) -> NewBlocks:
    """The publisher's side: for each new block the prediction will make, the stored size and
    pack of the real block holding its first chunk (a wrong guess costs bytes, not
    correctness)."""
    stored: list[int] = []
    packs: list[str] = []
    for group in new_block_groups(old, _predicted_files(old, derived, layout)):
        loc = new.chunks.get(group[0][0])
        if loc is None:
            stored.append(0)
            continue
        block = new.blocks[loc.block]
        stored.append(0 if block.codec is Codec.RAW else block.stored_size)
        if block.pack not in packs:
            packs.append(block.pack)
    return NewBlocks(tuple(stored), tuple(packs))


def predict_manifest(old: Manifest, to_version: str, derived: Sequence[FileEntry],
                     blocks: NewBlocks = NewBlocks(),
                     layout: Sequence[LayoutOp] | None = None) -> Manifest:
    """The new manifest as far as the installed one and the patched files' rows tell (pure).

    The publisher's rules (``patcher.publish``), applied to what is known: chunks the installed
    version lacks go into new blocks; needed chunks of installed blocks that the new version
    needs less than ``RESTORE_LIVE_MIN`` of are stored again in new blocks after them; blocks the
    installed version used keep their order, new ones follow by first use. New blocks' pack,
    offsets and stored sizes are unknown (placeholders), and files built from chunks keep their
    old rows: every miss costs bytes in the manifest delta, never correctness (the result is
    checked against the signature)."""
    files = _predicted_files(old, derived, layout)
    sizes = {c.id: c.size for f in files for c in f.chunks}
    fresh = new_block_groups(old, files)
    # where the new blocks were written: the document's stored sizes, packs filled in order
    placed: list[tuple[str, int, int, Codec]] = []  # pack, offset, stored size, codec
    pack, offset = 0, 0
    for n, group in enumerate(fresh):
        raw = sum(sizes[cid] for cid, _ in group)
        stored = blocks.stored[n] if n < len(blocks.stored) else raw
        codec = Codec.ZSTD if stored else Codec.RAW
        stored = stored or raw
        if offset >= PACK_TARGET_SIZE:
            pack, offset = pack + 1, 0
        name = blocks.packs[pack] if pack < len(blocks.packs) else _PLACEHOLDER_PACK
        placed.append((name, offset, stored, codec))
        offset += stored
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
    rows: list[Block] = []
    for is_new, b in order:
        if is_new:
            name, at, stored, codec = placed[b]
            rows.append(Block(name, at, stored, sum(sizes[cid] for cid, _ in fresh[b]), codec))
        else:
            rows.append(old.blocks[b])
    chunks: dict[str, ChunkLocation] = {}
    for cid, (is_new, b, offset) in where.items():
        chunks[cid] = ChunkLocation(number[(is_new, b)], offset)
    return Manifest(
        product_id=old.product_id, version_id=to_version, files=tuple(files),
        blocks=tuple(rows), chunks=chunks, dirs=old.dirs, launch=old.launch, saves=old.saves,
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


def predicted_json(old: Manifest, to_version: str, derived: Sequence[FileEntry],
                   blocks: NewBlocks = NewBlocks(),
                   layout: Sequence[LayoutOp] | None = None) -> bytes:
    return manifest_to_json(predict_manifest(old, to_version, derived, blocks, layout))


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
