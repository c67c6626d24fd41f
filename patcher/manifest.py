"""The manifest: what one product version contains and where every chunk is stored.

Serialized as JSON (compact, chunk rows as arrays), zstd-compressed, signed with Ed25519
(see ``patcher.signing``). ``parse_manifest`` is the strict loader: every rejection raises a
``ManifestError`` naming the code and the offending field.
"""

from __future__ import annotations

import binascii
import json
import json.scanner
import operator
import re
import sys
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import ItemsView, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import accumulate, chain, compress, repeat, tee
from typing import Any, overload

import zstandard

from patcher.chunking import CHUNK_MAX
from patcher.errors import ManifestError
from patcher.ids import RESERVED_PREFIX, is_id

FORMAT_VERSION = 1

# Size limits of the loader: generous for a 100+ GB game, tight enough to refuse a bomb.
MAX_COMPRESSED_BYTES = 256 * 1024 * 1024
# Decompressed JSON. A publisher manifest costs ~185 JSON bytes per unique chunk and ~2x zstd, so
# 256 MiB holds ~1.4M unique chunks (~90 GiB at the 64 KiB average chunk) and parsing that many
# takes ~1.6 GB of RAM already; MAX_FILES/MAX_CHUNKS are reached only by far smaller rows.
MAX_JSON_BYTES = 256 * 1024 * 1024
# Past MIN_JSON_BUDGET, the JSON may be at most MAX_EXPANSION_RATIO times the compressed bytes:
# real manifests expand ~2x (random hex ids), the most repetitive valid ones measured ~700x
# (100k empty files under 1000-byte paths), while zstd turns padding into ~30000x. So a bomb that
# is small on the wire is refused after MIN_JSON_BUDGET bytes. encode_manifest applies the same
# budget, so the publisher never signs a manifest the loader refuses.
MIN_JSON_BUDGET = 32 * 1024 * 1024
MAX_EXPANSION_RATIO = 1024
_READ_SIZE = 1024 * 1024  # decompression step: memory never exceeds the budget by more
MAX_FILES = 1_000_000
MAX_CHUNKS = 20_000_000
MAX_PATH_BYTES = 1024
MAX_PATH_DEPTH = 64
MAX_FILE_SIZE = 1 << 42  # 4 TiB
MAX_BLOCK_RAW = 16 * 1024 * 1024
# the first bytes of the manifest's binary form (``patcher.manifestbin``); a JSON form starts
# with a zstd frame's magic
BINARY_MAGIC = b"LMANBIN\x01"


def is_binary_manifest(blob: bytes | bytearray | memoryview) -> bool:
    return bytes(blob[: len(BINARY_MAGIC)]) == BINARY_MAGIC


_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_DRIVE = re.compile(r"\A[A-Za-z]:")
_FORBIDDEN_CHAR = re.compile(r"[\x00-\x1f:]")  # control characters and ':'
_WINDOWS_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{i}" for i in range(1, 10)] + [f"lpt{i}" for i in range(1, 10)]
)
# Names the engine creates inside and next to install folders (``.launcher-staging``,
# ``<dest>.launcher-move``, ``RESERVED_PREFIX``): no manifest path component may start with it,
# in any case.


def is_reserved_name(component: str) -> bool:
    """True for a path component the launcher keeps for itself (compared case-insensitively,
    as Windows and macOS filesystems fold case)."""
    # casefold maps each character on its own, so folding the first characters is enough
    head = component[: len(RESERVED_PREFIX)]
    return head.startswith(".") and head.casefold().startswith(RESERVED_PREFIX)


class Codec(StrEnum):
    RAW = "raw"
    ZSTD = "zstd"
    ZSTD_DICT = "zstd-dict"  # zstd frame needing the product dictionary named in the manifest


class SaveRoot(StrEnum):
    """Well-known roots that save-game folder patterns are relative to."""

    INSTALL = "install"
    DATA_HOME = "data_home"
    CONFIG_HOME = "config_home"
    DOCUMENTS = "documents"


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    offset: int
    size: int
    id: str


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    mode: int
    hash_sha256: str
    # a tuple when built from objects; a ``FileChunks`` view of the ``ChunkTable`` when decoded
    chunks: Sequence[ChunkEntry]

    @property
    def executable(self) -> bool:
        return bool(self.mode & 0o111)


@dataclass(frozen=True, slots=True)
class Block:
    """A stored frame in a pack: one or more consecutive chunks compressed together."""

    pack: str
    offset: int
    stored_size: int
    raw_size: int
    codec: Codec


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    block: int  # index into Manifest.blocks
    offset: int  # offset of the chunk inside the block's uncompressed bytes


@dataclass(frozen=True, slots=True)
class LaunchEntry:
    name: str
    executable: str
    arguments: tuple[str, ...] = ()
    working_dir: str = ""
    environment: tuple[tuple[str, str], ...] = ()  # extra variables for the game's process


@dataclass(frozen=True, slots=True)
class SaveLocation:
    root: SaveRoot
    path: str
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Manifest:
    product_id: str
    version_id: str
    files: tuple[FileEntry, ...]
    blocks: tuple[Block, ...]
    # a dict when built from objects; a ``ChunkLocations`` view of the table when decoded
    chunks: Mapping[str, ChunkLocation]
    dirs: tuple[str, ...] = ()
    launch: tuple[LaunchEntry, ...] = ()
    saves: tuple[SaveLocation, ...] = ()
    dictionary: str | None = None  # BLAKE3 of the zstd dictionary for Codec.ZSTD_DICT blocks
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    _by_path: dict[str, FileEntry] = field(default_factory=dict, compare=False, repr=False)
    _table: ChunkTable | None = field(default=None, compare=False, repr=False)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry | None:
        if not self._by_path:
            self._by_path.update((f.path, f) for f in self.files)
        return self._by_path.get(path)

    def chunk_sizes(self) -> dict[str, int]:
        return {c.id: c.size for f in self.files for c in f.chunks}

    def table(self) -> ChunkTable:
        """The manifest's chunks in arrays (the planner's input): the decoder's own, or built
        once from the objects of a manifest made in memory."""
        if self._table is None:
            object.__setattr__(self, "_table", ChunkTable.build(self.files, self.chunks))
        assert self._table is not None
        return self._table


# ---------------------------------------------------------------------------------------------
# Serialization


def manifest_to_dict(m: Manifest) -> dict[str, Any]:
    return {
        "formatVersion": m.format_version,
        "productId": m.product_id,
        "versionId": m.version_id,
        "createdAt": m.created_at,
        "dictionary": m.dictionary,
        "files": [
            {
                "path": f.path,
                "size": f.size,
                "mode": f.mode,
                "hash_sha256": f.hash_sha256,
                "chunks": [[c.offset, c.size, c.id] for c in f.chunks],
            }
            for f in m.files
        ],
        "dirs": list(m.dirs),
        "launch": launch_doc(m.launch),
        "saves": saves_doc(m.saves),
        "blocks": [[b.pack, b.offset, b.stored_size, b.raw_size, b.codec.value] for b in m.blocks],
        "chunks": {cid: [loc.block, loc.offset] for cid, loc in sorted(m.chunks.items())},
    }


def launch_doc(launch: Sequence[LaunchEntry]) -> list[dict[str, Any]]:
    """The launch entries as both forms of the manifest write them."""
    return [
        {
            "name": e.name,
            "executable": e.executable,
            "arguments": list(e.arguments),
            "working_dir": e.working_dir,
            # only when set: manifests without it keep their exact bytes (and signatures)
            **({"environment": dict(e.environment)} if e.environment else {}),
        }
        for e in launch
    ]


def saves_doc(saves: Sequence[SaveLocation]) -> list[dict[str, Any]]:
    """The save locations as both forms of the manifest write them."""
    return [{"root": s.root.value, "path": s.path, "include": list(s.include),
             "exclude": list(s.exclude)} for s in saves]


def manifest_to_json(m: Manifest) -> bytes:
    return json.dumps(manifest_to_dict(m), separators=(",", ":"), ensure_ascii=False).encode()


MANIFEST_LEVEL = 10


def compress_manifest_json(raw: bytes, level: int = MANIFEST_LEVEL) -> bytes:
    """The signed bytes of a manifest's JSON. Deterministic for one zstd version: an engine
    that rebuilds a manifest from a patch compresses the JSON the same way and checks the
    signature over the result (a different result only means a fallback to the full manifest)."""
    return zstandard.ZstdCompressor(level=level).compress(raw)


def encode_manifest(m: Manifest, level: int = MANIFEST_LEVEL) -> bytes:
    """JSON + zstd: the exact bytes that are signed and served."""
    raw = manifest_to_json(m)
    parse_manifest(json.loads(raw))  # validate_manifest, on the JSON this serialises once
    blob = compress_manifest_json(raw, level)
    if len(blob) > MAX_COMPRESSED_BYTES:
        raise ManifestError("MANIFEST_TOO_LARGE", "manifest", f"{len(blob)} compressed bytes")
    if len(raw) > json_budget(len(blob)):
        raise ManifestError(
            "MANIFEST_TOO_LARGE", "manifest", _over_budget(f"expands to {len(raw)} bytes", len(blob))
        )
    return blob


def json_budget(compressed_size: int) -> int:
    """The most JSON bytes a manifest of ``compressed_size`` bytes may decompress to."""
    return min(MAX_JSON_BYTES, max(MIN_JSON_BUDGET, compressed_size * MAX_EXPANSION_RATIO))


def _over_budget(what: str, compressed_size: int) -> str:
    return (
        f"{what}, over the {json_budget(compressed_size)}-byte budget of {compressed_size} "
        f"compressed bytes (JSON is at most {MAX_JSON_BYTES} bytes and, past {MIN_JSON_BUDGET}, "
        f"at most {MAX_EXPANSION_RATIO}x the compressed size)"
    )


def _decompress_json(blob: bytes) -> bytearray:
    """Stream-decompress one zstd frame, refusing it the moment it outgrows its budget.

    Memory stays within the budget plus one read step, whatever the frame header claims.
    """
    budget = json_budget(len(blob))
    try:
        declared = zstandard.get_frame_parameters(blob).content_size
    except zstandard.ZstdError as exc:
        raise ManifestError("MANIFEST_CORRUPT", "manifest", f"not a zstd frame: {exc}") from exc
    known = declared != zstandard.CONTENTSIZE_UNKNOWN
    if known and declared > budget:
        raise ManifestError(
            "MANIFEST_TOO_LARGE", "manifest",
            _over_budget(f"frame header declares {declared} bytes", len(blob)),
        )
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True) as reader:
            while piece := reader.read(_READ_SIZE):
                if len(out) + len(piece) > budget:
                    raise ManifestError(
                        "MANIFEST_TOO_LARGE", "manifest",
                        _over_budget(f"expands past {budget} bytes", len(blob)),
                    )
                out += piece
    except zstandard.ZstdError as exc:
        raise ManifestError("MANIFEST_CORRUPT", "manifest", f"not a zstd frame: {exc}") from exc
    if known and len(out) != declared:
        # A truncated frame (or a second one) ends without an error from the stream reader.
        raise ManifestError(
            "MANIFEST_CORRUPT", "manifest", f"{len(out)} bytes, the frame header says {declared}"
        )
    return out


def decode_manifest(blob: bytes) -> Manifest:
    """Decompress and parse manifest bytes, with size limits before and during decompression:
    the JSON form, or the binary one (``patcher.manifestbin``: its magic comes first).

    The canonical layout is read as a stream into arrays (``_stream_manifest``); any other
    document, valid or not, goes through ``json.loads`` and the strict loader, so every
    rejection keeps its code and message."""
    if len(blob) > MAX_COMPRESSED_BYTES:
        raise ManifestError("MANIFEST_TOO_LARGE", "manifest", f"{len(blob)} compressed bytes")
    if is_binary_manifest(blob):  # the binary form (``patcher.manifestbin``)
        from patcher.manifestbin import decode_manifest_binary

        return decode_manifest_binary(blob)
    try:
        return _stream_manifest(blob)
    except (_NotCanonical, ManifestError):
        pass
    return _decode_strict(blob)


def _decode_strict(blob: bytes) -> Manifest:
    """``json.loads`` and the strict loader: the reference the streaming loader must agree with."""
    raw = _decompress_json(blob)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError("MANIFEST_CORRUPT", "manifest", f"not JSON: {exc}") from exc
    except RecursionError as exc:
        # valid JSON can nest deeper than json's C reader recurses; no manifest nests past 4
        raise ManifestError("MANIFEST_CORRUPT", "manifest",
                            "not a manifest: values nested too deeply to read") from exc
    del raw
    return compact(parse_manifest(doc))


def compact(m: Manifest) -> Manifest:
    """``m`` with its chunks in a ``ChunkTable`` (what a decoded manifest holds)."""
    table = ChunkTable.build(m.files, m.chunks)
    files: list[FileEntry] = []
    row = 0
    for f in m.files:
        files.append(FileEntry(f.path, f.size, f.mode, f.hash_sha256,
                               FileChunks(table, row, row + len(f.chunks))))
        row += len(f.chunks)
    return Manifest(
        product_id=m.product_id, version_id=m.version_id, files=tuple(files), blocks=m.blocks,
        chunks=ChunkLocations(table), dirs=m.dirs, launch=m.launch, saves=m.saves,
        dictionary=m.dictionary, created_at=m.created_at, format_version=m.format_version,
        _table=table,
    )


# ---------------------------------------------------------------------------------------------
# Strict loader


def _need(doc: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(doc, dict):
        raise ManifestError("MANIFEST_SCHEMA", where, "expected an object")
    if key not in doc:
        raise ManifestError("MANIFEST_SCHEMA", f"{where}.{key}".lstrip("."), "missing")
    value = doc[key]
    # bool is an int subclass; a JSON true must never pass for a size.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ManifestError("MANIFEST_SCHEMA", f"{where}.{key}".lstrip("."), "wrong type bool")
    if not isinstance(value, kind):
        name = type(value).__name__
        raise ManifestError("MANIFEST_SCHEMA", f"{where}.{key}".lstrip("."), f"wrong type {name}")
    return value


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError("MANIFEST_SCHEMA", where, "expected an integer")
    if not lo <= value <= hi:
        raise ManifestError("MANIFEST_LIMIT", where, f"{value} outside [{lo}, {hi}]")
    return value


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError("MANIFEST_SCHEMA", where, "expected a list of strings")
    if len(value) > 1000:
        raise ManifestError("MANIFEST_LIMIT", where, "too many entries")
    return tuple(value)


def check_relative_path(path: str, where: str) -> str:
    """Accept only normalized relative POSIX paths that are safe on every OS we target."""
    if not path:
        raise ManifestError("MANIFEST_PATH_INVALID", where, "empty path")
    if "\x00" in path:
        raise ManifestError("MANIFEST_PATH_INVALID", where, "NUL byte in path")
    if "\\" in path:
        raise ManifestError("MANIFEST_PATH_INVALID", where, f"backslash in {path!r}")
    if path.startswith("/"):
        raise ManifestError("MANIFEST_PATH_INVALID", where, f"absolute path {path!r}")
    if _DRIVE.match(path):
        raise ManifestError("MANIFEST_PATH_INVALID", where, f"drive letter in {path!r}")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise ManifestError("MANIFEST_LIMIT", where, "path too long")
    parts = path.split("/")
    if len(parts) > MAX_PATH_DEPTH:
        raise ManifestError("MANIFEST_LIMIT", where, "path too deep")
    for part in parts:
        if part in ("", ".", ".."):
            raise ManifestError("MANIFEST_PATH_INVALID", where, f"not normalized: {path!r}")
        if _FORBIDDEN_CHAR.search(part):
            raise ManifestError("MANIFEST_PATH_INVALID", where, f"forbidden character in {path!r}")
        if part.split(".")[0].lower() in _WINDOWS_RESERVED or part.endswith((" ", ".")):
            raise ManifestError("MANIFEST_PATH_INVALID", where, f"reserved name in {path!r}")
        if is_reserved_name(part):
            raise ManifestError(
                "MANIFEST_PATH_INVALID", where,
                f"reserved name {part!r} in {path!r}: names starting with {RESERVED_PREFIX!r} "
                "belong to the launcher",
            )
    return path


def check_id(value: Any, where: str) -> str:
    """Product and version ids: safe as one path segment of a URL or a folder name."""
    if not isinstance(value, str) or not is_id(value):
        raise ManifestError("MANIFEST_SCHEMA", where, "expected an id of [A-Za-z0-9._-], max 128")
    return value


def _hex(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise ManifestError("MANIFEST_SCHEMA", where, "expected 64 lowercase hex digits")
    return value


def _parse_chunks(raw: Any, size: int, where: str) -> tuple[ChunkEntry, ...]:
    if not isinstance(raw, list):
        raise ManifestError("MANIFEST_SCHEMA", where, "expected a list")
    out: list[ChunkEntry] = []
    expected = 0
    for j, row in enumerate(raw):
        w = f"{where}[{j}]"
        if not isinstance(row, list) or len(row) != 3:
            raise ManifestError("MANIFEST_SCHEMA", w, "expected [offset, size, id]")
        offset = _int(row[0], f"{w}.offset", 0, MAX_FILE_SIZE)
        csize = _int(row[1], f"{w}.size", 1, CHUNK_MAX)
        if offset != expected:
            raise ManifestError("MANIFEST_CHUNKS_TILING", w, f"offset {offset}, expected {expected}")
        expected += csize
        out.append(ChunkEntry(offset, csize, _hex(row[2], f"{w}.id")))
    if expected != size:
        raise ManifestError("MANIFEST_CHUNKS_TILING", where, f"chunks cover {expected} of {size} bytes")
    return tuple(out)


def _parse_files(raw: Any) -> tuple[FileEntry, ...]:
    if not isinstance(raw, list):
        raise ManifestError("MANIFEST_SCHEMA", "files", "expected a list")
    if len(raw) > MAX_FILES:
        raise ManifestError("MANIFEST_LIMIT", "files", f"{len(raw)} files")
    files: list[FileEntry] = []
    for i, doc in enumerate(raw):
        w = f"files[{i}]"
        path = check_relative_path(_need(doc, "path", str, w), f"{w}.path")
        size = _int(_need(doc, "size", int, w), f"{w}.size", 0, MAX_FILE_SIZE)
        mode = _int(_need(doc, "mode", int, w), f"{w}.mode", 0, 0o777)
        sha = _hex(_need(doc, "hash_sha256", str, w), f"{w}.hash_sha256")
        chunks = _parse_chunks(_need(doc, "chunks", list, w), size, f"{w}.chunks")
        files.append(FileEntry(path, size, mode, sha, chunks))
    return tuple(files)


def _parse_blocks(raw: Any) -> tuple[Block, ...]:
    if not isinstance(raw, list):
        raise ManifestError("MANIFEST_SCHEMA", "blocks", "expected a list")
    if len(raw) > MAX_CHUNKS:
        raise ManifestError("MANIFEST_LIMIT", "blocks", f"{len(raw)} blocks")
    blocks: list[Block] = []
    for i, row in enumerate(raw):
        w = f"blocks[{i}]"
        if not isinstance(row, list) or len(row) != 5:
            raise ManifestError("MANIFEST_SCHEMA", w, "expected [pack, offset, stored, raw, codec]")
        pack = _hex(row[0], f"{w}.pack")
        offset = _int(row[1], f"{w}.offset", 0, 1 << 40)
        stored = _int(row[2], f"{w}.stored", 1, MAX_BLOCK_RAW + 65536)
        raw_size = _int(row[3], f"{w}.raw", 1, MAX_BLOCK_RAW)
        if row[4] not in Codec.__members__.values():
            raise ManifestError("MANIFEST_SCHEMA", f"{w}.codec", f"unknown codec {row[4]!r}")
        codec = Codec(row[4])
        if codec is Codec.RAW and stored != raw_size:
            raise ManifestError("MANIFEST_SCHEMA", w, "raw block with stored != raw size")
        blocks.append(Block(pack, offset, stored, raw_size, codec))
    return tuple(blocks)


def _parse_chunk_locations(
    raw: Any, blocks: tuple[Block, ...], files: tuple[FileEntry, ...]
) -> dict[str, ChunkLocation]:
    if not isinstance(raw, dict):
        raise ManifestError("MANIFEST_SCHEMA", "chunks", "expected an object")
    if len(raw) > MAX_CHUNKS:
        raise ManifestError("MANIFEST_LIMIT", "chunks", f"{len(raw)} chunks")
    sizes: dict[str, int] = {}
    for f in files:
        for c in f.chunks:
            sizes[c.id] = c.size
    out: dict[str, ChunkLocation] = {}
    for cid, row in raw.items():
        w = f"chunks[{cid!r}]"
        _hex(cid, w)
        if not isinstance(row, list) or len(row) != 2:
            raise ManifestError("MANIFEST_SCHEMA", w, "expected [block, offset]")
        bidx = _int(row[0], f"{w}.block", 0, len(blocks) - 1)
        off = _int(row[1], f"{w}.offset", 0, MAX_BLOCK_RAW)
        if cid not in sizes:
            raise ManifestError("MANIFEST_SCHEMA", w, "chunk not used by any file")
        if off + sizes[cid] > blocks[bidx].raw_size:
            raise ManifestError("MANIFEST_CHUNKS_TILING", w, "chunk overruns its block")
        out[cid] = ChunkLocation(bidx, off)
    missing = sizes.keys() - out.keys()
    if missing:
        raise ManifestError("MANIFEST_SCHEMA", "chunks", f"no location for chunk {min(missing)}")
    return out


def parse_launch(raw: Any) -> tuple[LaunchEntry, ...]:
    if not isinstance(raw, list) or len(raw) > 64:
        raise ManifestError("MANIFEST_SCHEMA", "launch", "expected a list of at most 64 entries")
    out = []
    for i, doc in enumerate(raw):
        w = f"launch[{i}]"
        wd = _need(doc, "working_dir", str, w)
        out.append(
            LaunchEntry(
                name=_need(doc, "name", str, w)[:200],
                executable=check_relative_path(_need(doc, "executable", str, w), f"{w}.executable"),
                arguments=_str_list(_need(doc, "arguments", list, w), f"{w}.arguments"),
                working_dir=check_relative_path(wd, f"{w}.working_dir") if wd else "",
                environment=parse_environment(doc.get("environment", {}), f"{w}.environment"),
            )
        )
    return tuple(out)


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def parse_environment(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    """A launch entry's extra environment: at most 64 variables with plain names and values
    of at most 4096 characters without NUL; names the launcher sets itself are refused."""
    if not isinstance(raw, dict) or len(raw) > 64:
        raise ManifestError("MANIFEST_SCHEMA", where, "expected an object of at most 64 variables")
    out = []
    for name, value in sorted(raw.items()):
        if not isinstance(name, str) or not ENV_NAME.match(name) or name.startswith("LAUNCHER_"):
            raise ManifestError("MANIFEST_SCHEMA", where, f"bad variable name {name!r}")
        if not isinstance(value, str) or len(value) > 4096 or "\0" in value:
            raise ManifestError("MANIFEST_SCHEMA", f"{where}.{name}", "expected a short string")
        out.append((name, value))
    return tuple(out)


def parse_saves(raw: Any) -> tuple[SaveLocation, ...]:
    if not isinstance(raw, list) or len(raw) > 64:
        raise ManifestError("MANIFEST_SCHEMA", "saves", "expected a list of at most 64 entries")
    out = []
    for i, doc in enumerate(raw):
        w = f"saves[{i}]"
        root = _need(doc, "root", str, w)
        if root not in SaveRoot.__members__.values():
            raise ManifestError("MANIFEST_SCHEMA", f"{w}.root", f"unknown root {root!r}")
        out.append(
            SaveLocation(
                root=SaveRoot(root),
                path=check_relative_path(_need(doc, "path", str, w), f"{w}.path"),
                include=_str_list(_need(doc, "include", list, w), f"{w}.include"),
                exclude=_str_list(_need(doc, "exclude", list, w), f"{w}.exclude"),
            )
        )
    return tuple(out)


def check_collisions(files: tuple[FileEntry, ...], dirs: tuple[str, ...]) -> None:
    """Refuse paths that collide case-insensitively or where a file is also a directory."""
    seen: dict[str, str] = {}
    parents: set[str] = set()
    for kind, paths in (("files", [f.path for f in files]), ("dirs", list(dirs))):
        for i, path in enumerate(paths):
            key = path.casefold()
            if key in seen:
                raise ManifestError(
                    "MANIFEST_PATH_COLLISION", f"{kind}[{i}]", f"{path!r} collides with {seen[key]!r}"
                )
            seen[key] = path
            parts = key.split("/")
            parents.update("/".join(parts[:n]) for n in range(1, len(parts)))
    for i, f in enumerate(files):
        if f.path.casefold() in parents:
            raise ManifestError("MANIFEST_PATH_COLLISION", f"files[{i}]", f"{f.path!r} is also a folder")


def parse_manifest(doc: Any) -> Manifest:
    version = _need(doc, "formatVersion", int, "")
    if version != FORMAT_VERSION:
        raise ManifestError("MANIFEST_FORMAT_UNSUPPORTED", "formatVersion", f"{version}")
    files = _parse_files(_need(doc, "files", list, ""))
    dirs = tuple(
        check_relative_path(d, f"dirs[{i}]")
        for i, d in enumerate(_str_list_any(_need(doc, "dirs", list, ""), "dirs"))
    )
    check_collisions(files, dirs)
    blocks = _parse_blocks(_need(doc, "blocks", list, ""))
    dictionary = doc.get("dictionary")
    if dictionary is not None:
        _hex(dictionary, "dictionary")
    if dictionary is None and any(b.codec is Codec.ZSTD_DICT for b in blocks):
        raise ManifestError("MANIFEST_SCHEMA", "dictionary", "zstd-dict blocks need a dictionary")
    manifest = Manifest(
        product_id=check_id(_need(doc, "productId", str, ""), "productId"),
        version_id=check_id(_need(doc, "versionId", str, ""), "versionId"),
        created_at=str(doc.get("createdAt", ""))[:64],
        files=files,
        dirs=dirs,
        blocks=blocks,
        chunks=_parse_chunk_locations(_need(doc, "chunks", dict, ""), blocks, files),
        launch=parse_launch(doc.get("launch", [])),
        saves=parse_saves(doc.get("saves", [])),
        dictionary=dictionary,
    )
    total_chunks = sum(len(f.chunks) for f in files)
    if total_chunks > MAX_CHUNKS:
        raise ManifestError("MANIFEST_LIMIT", "files", f"{total_chunks} chunks")
    return manifest


def _str_list_any(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError("MANIFEST_SCHEMA", where, "expected a list of strings")
    if len(value) > MAX_FILES:
        raise ManifestError("MANIFEST_LIMIT", where, "too many entries")
    return value


def validate_manifest(m: Manifest) -> None:
    """Run the strict loader over an in-memory manifest (the publisher never signs a bad one)."""
    parse_manifest(json.loads(manifest_to_json(m)))


# ---------------------------------------------------------------------------------------------
# Compact representation: memory flat in the chunk count
#
# A 16 GiB game has ~260k chunks; one ChunkEntry object with a 64-character id per chunk and a
# dict of ChunkLocation objects cost ~1 KB per chunk (255 MB held, 306 MB peak while parsing).
# Here a chunk costs ~60 bytes in a few arrays; ChunkEntry/ChunkLocation objects are built when
# someone reads them.


def _u32(n: int = 0) -> array[int]:
    return array("I", bytes(4 * n))


def _group(keys: array[int], n: int) -> tuple[array[int], array[int]]:
    """(start, order): the indices ``i`` with ``keys[i] == k`` are ``order[start[k]:start[k + 1]]``,
    in increasing order, for keys in ``range(n)`` (a counting sort: no per-item objects)."""
    # the counts in a list (its indexing the interpreter specialises; they are small ints, no
    # object each), the prefix sum by accumulate in C, fill pointers and order in arrays: a
    # list of fill pointers made an int object per increment (16 GiB: 57 ms, not 110)
    start = array("I", accumulate(_counts(keys, n), initial=0))
    fill = array("I", start)
    order = _u32(len(keys))
    for i, k in enumerate(keys):
        order[fill[k]] = i
        fill[k] += 1
    return start, order


def _counts(keys: Iterable[int], n: int) -> list[int]:
    count = [0] * n
    for k in keys:
        count[k] += 1
    return count


def _by_offset(block: array[int], block_offset: array[int], row_chunk: array[int]) -> array[int]:
    """The unique chunks ordered by (block, offset in the block), ties by index. The publisher
    packs chunks into blocks in the order their first rows come, so that order is tried first:
    the rows whose chunk's (block, offset) key is above every key before it. If there are as
    many such rows as chunks, they name every chunk once (their keys strictly increase) and
    first (a chunk named before had a key at most the maximum, which only grows): that is the
    sorted order, with no ties to break. Otherwise one stable sort by the combined key."""
    n = len(block)
    # (block << 32 | offset) as one 64-bit int per chunk, interleaved in C
    pairs = _u32(2 * n)
    lo, hi = (0, 1) if sys.byteorder == "little" else (1, 0)
    pairs[lo::2], pairs[hi::2] = block_offset, block
    key = array("Q", pairs.tobytes())
    del pairs
    # in C, one row at a time: no list or dict of 260k ints at 16 GiB (~9,000 page faults)
    keys, running = tee(map(key.__getitem__, row_chunk))
    above = map(operator.gt, keys, chain((-1,), accumulate(running, max)))
    first = array("I", compress(row_chunk, above))
    if len(first) == n:
        return first
    return array("I", sorted(range(n), key=key.__getitem__))


def _keys(ids: bytes | bytearray) -> array[int]:
    """The first 8 bytes of every 32-byte id as big-endian integers: sorted ids give sorted
    keys, so ``bisect`` (in C over the array) finds an id without a dict of 260k strings."""
    keys = array("Q", memoryview(ids).cast("Q")[::4].tobytes())  # copied in C, no int each
    if sys.byteorder == "little":
        keys.byteswap()
    return keys


class ChunkTable:
    """Every chunk row of every file and every unique chunk's location, in arrays.

    Unique chunks are sorted by id (``ids``: 32 raw bytes each); a file's rows are a slice of
    the ``row_*`` arrays (``row_chunk`` = the unique chunk's index)."""

    __slots__ = (
        "_block_start",
        "_by_block",
        "_lazy",
        "_rows_of",
        "block",
        "block_offset",
        "ids",
        "keys",
        "row_chunk",
        "row_file",
        "row_offset",
        "row_size",
        "size",
    )

    def __init__(self, ids: bytes | bytearray, block: array[int], block_offset: array[int],
                 size: array[int],
                 row_offset: array[int], row_size: array[int], row_chunk: array[int],
                 row_file: array[int]) -> None:
        self.ids = ids
        self.keys = _keys(ids)
        self.block = block
        self.block_offset = block_offset
        self.size = size  # of the last row naming the chunk (what the loader always checked)
        self.row_offset = row_offset
        self.row_size = row_size
        self.row_chunk = row_chunk
        self.row_file = row_file
        self._block_start: array[int] | None = None
        self._by_block: tuple[array[int], array[int]] | None = None
        self._rows_of: tuple[array[int], array[int]] | None = None
        # the two orders are built on first use, which may be on several block workers at once
        # (a fresh install's plan needs neither: the first blocks' processing builds them while
        # the other ranges' bytes arrive); built once, not once per thread
        self._lazy = threading.Lock()

    def __len__(self) -> int:
        return len(self.block)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled or deep-copied without its lock (a new one comes with the copy)."""
        return {name: getattr(self, name) for name in self.__slots__ if name != "_lazy"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self._lazy = threading.Lock()

    def hex_id(self, u: int) -> str:
        return self.ids[32 * u : 32 * u + 32].hex()  # bytes or bytearray (the decoder's, uncopied)

    def find(self, cid: object) -> int:
        """The unique index of a hex chunk id, -1 when the manifest has no such chunk."""
        if not isinstance(cid, str) or len(cid) != 64:
            return -1
        try:
            key = int(cid[:16], 16)
        except ValueError:
            return -1
        keys, u = self.keys, bisect_left(self.keys, key)
        if u >= len(keys) or keys[u] != key:
            return -1
        if self.hex_id(u) == cid:
            return u
        try:
            rid = bytes.fromhex(cid)
        except ValueError:
            return -1
        v = _in_group(self.ids, keys, u, rid)
        return v if v >= 0 and self.hex_id(v) == cid else -1

    def entry(self, row: int) -> ChunkEntry:
        return ChunkEntry(self.row_offset[row], self.row_size[row],
                          self.hex_id(self.row_chunk[row]))

    def block_start(self) -> array[int]:
        """``by_block()``'s start alone (how many unique chunks each block holds, summed): what
        a plan needs, without the order (~1 ms of the 4-5 ms at the 1 GiB demo)."""
        if self._block_start is None:
            nblocks = (max(self.block) + 1) if len(self.block) else 0
            self._block_start = array("I", accumulate(_counts(self.block, nblocks), initial=0))
        return self._block_start

    def by_block(self) -> tuple[array[int], array[int]]:
        """(start, order): the unique chunks of block b are ``order[start[b]:start[b + 1]]``,
        by their offset in the block, ties by index (no per-chunk objects held)."""
        if self._by_block is None:
            with self._lazy:
                if self._by_block is None:
                    self._by_block = (self.block_start(), _by_offset(
                        self.block, self.block_offset, self.row_chunk))
        return self._by_block

    def rows_of(self) -> tuple[array[int], array[int]]:
        """(start, rows): the file rows of unique chunk u are ``rows[start[u]:start[u + 1]]``."""
        if self._rows_of is None:
            with self._lazy:
                if self._rows_of is None:
                    self._rows_of = _group(self.row_chunk, len(self.block))
        return self._rows_of

    @classmethod
    def build(cls, files: Sequence[FileEntry], chunks: Mapping[str, ChunkLocation]) -> ChunkTable:
        """The table of a manifest built from objects (the publisher's, a test's)."""
        items = sorted(chunks.items())
        index = {cid: u for u, (cid, _) in enumerate(items)}
        ids = binascii.unhexlify("".join(cid for cid, _ in items))
        size = _u32(len(items))
        row_offset, row_size, row_chunk, row_file = array("Q"), _u32(), _u32(), _u32()
        for fi, f in enumerate(files):
            for c in f.chunks:
                u = index[c.id]
                size[u] = c.size
                row_offset.append(c.offset)
                row_size.append(c.size)
                row_chunk.append(u)
                row_file.append(fi)
        return cls(ids, array("I", (loc.block for _, loc in items)),
                   array("I", (loc.offset for _, loc in items)), size, row_offset, row_size,
                   row_chunk, row_file)


class FileChunks(Sequence[ChunkEntry]):
    """A file's chunks as a read-only sequence of ``ChunkEntry``, built on access."""

    __slots__ = ("_start", "_stop", "_table")

    def __init__(self, table: ChunkTable, start: int, stop: int) -> None:
        self._table, self._start, self._stop = table, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    @overload
    def __getitem__(self, i: int) -> ChunkEntry: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[ChunkEntry]: ...
    def __getitem__(self, i: int | slice) -> ChunkEntry | Sequence[ChunkEntry]:
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step == 1:
                return FileChunks(self._table, self._start + lo, self._start + max(lo, hi))
            return tuple(self[j] for j in range(lo, hi, step))
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("chunk index out of range")
        return self._table.entry(self._start + i)

    def __iter__(self) -> Iterator[ChunkEntry]:
        t = self._table
        offsets, sizes, chunk, ids = t.row_offset, t.row_size, t.row_chunk, t.ids
        for r in range(self._start, self._stop):
            u = chunk[r]
            yield ChunkEntry(offsets[r], sizes[r], ids[32 * u : 32 * u + 32].hex())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"FileChunks({list(self)!r})"

    def rows(self) -> tuple[array[int], array[int], list[bytes | bytearray]]:
        """(offsets, sizes, 32-byte ids) of the file's chunks, without ChunkEntry objects."""
        t, lo, hi = self._table, self._start, self._stop
        return (t.row_offset[lo:hi], t.row_size[lo:hi],
                [t.ids[32 * u : 32 * u + 32] for u in t.row_chunk[lo:hi]])


def chunk_rows(chunks: Sequence[ChunkEntry]
               ) -> tuple[Sequence[int], Sequence[int], Sequence[bytes | bytearray]]:
    """(offsets, sizes, raw 32-byte ids) of a file's chunks, from the arrays when it has them."""
    if isinstance(chunks, FileChunks):
        return chunks.rows()
    return ([c.offset for c in chunks], [c.size for c in chunks],
            [bytes.fromhex(c.id) for c in chunks])


class ChunkLocations(Mapping[str, ChunkLocation]):
    """``Manifest.chunks`` over a ``ChunkTable``: hex id -> ChunkLocation, in id order."""

    __slots__ = ("_table",)

    def __init__(self, table: ChunkTable) -> None:
        self._table = table

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, cid: str) -> ChunkLocation:
        u = self._table.find(cid)
        if u < 0:
            raise KeyError(cid)
        return ChunkLocation(self._table.block[u], self._table.block_offset[u])

    def __contains__(self, cid: object) -> bool:
        return self._table.find(cid) >= 0

    def __iter__(self) -> Iterator[str]:
        text = binascii.hexlify(self._table.ids).decode()
        return (text[64 * u : 64 * u + 64] for u in range(len(self._table)))

    def items(self) -> ItemsView[str, ChunkLocation]:
        return _LocationItems(self)

    def __repr__(self) -> str:
        return f"ChunkLocations({len(self)} chunks)"


class _LocationItems(ItemsView[str, ChunkLocation]):
    def __iter__(self) -> Iterator[tuple[str, ChunkLocation]]:
        locations: ChunkLocations = self._mapping  # type: ignore[attr-defined]
        t = locations._table
        return zip(iter(locations),
                   map(ChunkLocation, t.block, t.block_offset), strict=True)


# ---------------------------------------------------------------------------------------------
# Streaming loader of the canonical form
#
# ``manifest_to_json`` writes one exact layout. ``decode_manifest`` reads that layout as it
# decompresses (a window of ~2 MiB, never the whole JSON, never a Python object per chunk row)
# into a ``ChunkTable``. Anything else -- another key order, whitespace, escapes in strings,
# or any value the strict loader would refuse -- is read again by ``json.loads`` and
# ``parse_manifest``, which accept every valid document and raise the exact error.

# a row or header of the fast path is never longer (paths are <= 1 KiB); dirs, launch and saves
# values may be, and grow the window. Small: the window is a transient of every parse.
_LOOKAHEAD = 256 * 1024
# rows and locations are read a span of at most this many bytes at a time: the span's copy,
# its pieces and numbers (a few times the span) then stay below malloc's mmap threshold and
# reuse the memory the last span freed, where 256 KiB spans had fresh pages mapped (and
# unmapped) each time (1 GiB demo: ~500 fewer page faults, 16 GiB streamed ~400)
_SPAN = 128 * 1024
_MAX_VALUE = 64 * 1024 * 1024
# documents up to this size (a ~1.5 GiB game's) are decompressed in one piece
_WHOLE_MAX = 4 * 1024 * 1024
_STR = rb'"([^"\\\x00-\x1f]{0,4096})"'
_NUM = rb"(0|[1-9][0-9]{0,15})"
_HEAD = re.compile(
    rb'\{"formatVersion":1,"productId":' + _STR + rb',"versionId":' + _STR
    + rb',"createdAt":' + _STR + rb',"dictionary":(null|"[0-9a-f]{64}"),"files":\['
)
_FILE = re.compile(
    rb'\{"path":' + _STR + rb',"size":' + _NUM + rb',"mode":' + _NUM
    + rb',"hash_sha256":"([0-9a-f]{64})","chunks":\['
)
# the grammar of a chunk row and of a location (_split_rows reads them without a regex)
_ROW = rb'\[' + _NUM + rb',' + _NUM + rb',"([0-9a-f]{64})"\]'
_BLOCK = rb'\["([0-9a-f]{64})",' + _NUM + rb"," + _NUM + rb"," + _NUM + rb',"(raw|zstd|zstd-dict)"\]'
_BLOCKS = re.compile(_BLOCK)
_LOC = rb'"([0-9a-f]{64})":\[' + _NUM + rb"," + _NUM + rb"\]"
_JSON = json.JSONDecoder()
_SCAN = json.scanner.make_scanner(_JSON)  # type: ignore[arg-type]  # (typeshed: a context)


class _NotCanonical(Exception):
    """The fast path cannot read this document: the general loader will."""


class _Window:
    """The decompressed JSON, read a window at a time with the loader's size budget."""

    def __init__(self, blob: bytes) -> None:
        self.budget = json_budget(len(blob))
        try:
            self.declared = zstandard.get_frame_parameters(blob).content_size
        except zstandard.ZstdError as exc:
            raise ManifestError("MANIFEST_CORRUPT", "manifest", f"not a zstd frame: {exc}") from exc
        if self.declared != zstandard.CONTENTSIZE_UNKNOWN and self.declared > self.budget:
            raise _NotCanonical  # the general loader names the error
        self.blob_size = len(blob)
        self.pos = 0
        self.reader: zstandard.ZstdDecompressionReader | None = None
        if self.declared != zstandard.CONTENTSIZE_UNKNOWN and self.declared <= _WHOLE_MAX:
            # a small document in one piece: no window copied again at each refill, and one
            # call into zstd (which checks the size the header declares and, here, that no
            # byte follows the frame)
            try:
                self.buf = zstandard.ZstdDecompressor().decompress(blob, allow_extra_data=False)
            except zstandard.ZstdError as exc:
                raise _NotCanonical from exc
            self.total, self.eof, self.whole = len(self.buf), True, True
            return
        self.reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)
        self.whole = False
        self.buf = b""
        self.total = 0
        self.eof = False

    def fill(self, need: int = _LOOKAHEAD) -> None:
        if self.eof or len(self.buf) - self.pos >= need:
            return
        # the rest of the window as a view: copied once, by the join
        parts: list[bytes | memoryview] = [memoryview(self.buf)[self.pos :]]
        have = len(parts[0])
        assert self.reader is not None  # eof from the start otherwise
        while have < need + _LOOKAHEAD:
            try:
                piece = self.reader.read(_LOOKAHEAD)
            except zstandard.ZstdError as exc:
                raise _NotCanonical from exc
            if not piece:
                self.eof = True
                break
            self.total += len(piece)
            if self.total > self.budget:
                raise _NotCanonical
            parts.append(piece)
            have += len(piece)
        self.buf = b"".join(parts)
        self.pos = 0

    def match(self, pattern: re.Pattern[bytes]) -> re.Match[bytes]:
        self.fill()
        m = pattern.match(self.buf, self.pos)
        if m is None:
            raise _NotCanonical
        self.pos = m.end()
        return m

    def take(self, literal: bytes) -> bool:
        self.fill()
        if self.buf.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def expect(self, literal: bytes) -> None:
        if not self.take(literal):
            raise _NotCanonical

    def value(self) -> Any:
        """One JSON value (dirs, launch, saves), decoded by ``json``; the window grows until the
        value fits (or the document ends: then it is not canonical)."""
        size = _LOOKAHEAD
        while True:
            self.fill(size)
            window = self.buf[self.pos : self.pos + size]
            try:
                text = window.decode("utf-8", "surrogateescape")
                value, end = _JSON.raw_decode(text)
                used = len(text[:end].encode("utf-8", "surrogateescape"))
                window[:used].decode("utf-8")  # strict, as json.loads would be
            except RecursionError as exc:  # nested past json's limit: the strict loader names it
                raise _NotCanonical from exc
            except ValueError as exc:
                if len(window) < size or size >= _MAX_VALUE:
                    raise _NotCanonical from exc
                size *= 4
                continue
            self.pos += used
            return value

    def finish(self) -> None:
        self.fill()
        if self.pos != len(self.buf) or not self.eof:
            raise _NotCanonical
        if self.declared != zstandard.CONTENTSIZE_UNKNOWN and self.total != self.declared:
            raise _NotCanonical
        if self.reader is not None:
            self.reader.close()  # type: ignore[no-untyped-call]
        self.buf = b""  # the last window is not held while the table is linked


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _NotCanonical from exc


def _check(ok: bool) -> None:
    if not ok:
        raise _NotCanonical


def _runs(w: _Window, row: re.Pattern[bytes], close: bytes, sep: bytes,
          fixed: int) -> Iterator[list[Any]]:
    """The rows of a non-empty JSON list (or object) of one row shape, as lists of matched
    groups, a window at a time, up to and including the closing bracket (``close`` = the last
    row's end and the bracket: it occurs nowhere else in such a list). ``findall`` skips what
    does not match, so the rows' lengths (``fixed`` bytes of punctuation plus their groups)
    plus one byte between each two rows must add up to the span read, and those bytes must be
    commas between rows: ``sep`` (a row's last byte, the comma, the next row's first byte)
    occurs nowhere inside a row, so each of its occurrences holds one of the in-between bytes
    -- as many occurrences as rows less one leave no byte that is not such a comma."""
    while True:
        w.fill()
        start = w.pos
        at = w.buf.find(close, start)
        final = at >= 0
        if final:
            stop = at + 1
        else:
            stop = w.buf.rfind(b"],", start) + 1
            if stop <= start:
                raise _NotCanonical
        rows = row.findall(w.buf, start, stop)
        if not rows or (fixed + 1) * len(rows) - 1 + sum(map(len, chain.from_iterable(rows))) \
                != stop - start or w.buf.count(sep, start, stop) != len(rows) - 1:
            raise _NotCanonical
        w.pos = stop + 1
        yield rows
        if final:
            return


def _spans(w: _Window, close: bytes, last: bool = False) -> Iterator[bytes]:
    """The rows of a non-empty JSON list (or object) as spans of the window, each from a row's
    first byte to a row's last, a window at a time, up to the closing bracket (``close`` = the
    last row's end and the bracket: it occurs nowhere else in such a list). What lies between
    the rows of a span is checked by whoever reads it (``_split_rows``). The document's
    ``last`` list ends one byte before the document: its close is looked for only there."""
    while True:
        w.fill()
        start = w.pos
        # fill() holds at least this: no search past it (a long list would be searched whole
        # for each of its windows)
        end = start + _SPAN
        at = w.buf.find(close, max(start, len(w.buf) - len(close) - 1) if last else start, end)
        final = at >= 0
        stop = at + 1 if final else w.buf.rfind(b"],", start, end) + 1
        if stop <= start:
            raise _NotCanonical
        w.pos = stop + 1
        yield w.buf[start:stop]
        if final:
            return


_HEX_DIGITS = b"0123456789abcdef"


def _split_rows(span: bytes, unit: bytes) -> list[bytes]:
    """A span of rows split at its quotes, once checked that its bytes other than hex digits
    are the canonical layout's punctuation, ``unit`` a row's (``[,,""]`` for chunk rows,
    ``"":[,]`` for locations), rows joined by commas. Then every byte between two quotes is a
    hex digit (the odd pieces are the ids), and the even pieces hold the numbers and the
    punctuation: digits out of place there leave them no JSON list of two numbers a row
    (``_json_numbers``), so no regex walks the bytes and no object is made per field."""
    skeleton = span.translate(None, _HEX_DIGITS)
    n = (len(skeleton) + 1) // (len(unit) + 1)
    _check(n > 0 and skeleton == unit + (b"," + unit) * (n - 1))
    return span.split(b'"')


def _json_numbers(text: bytes, count: int) -> list[int]:
    """The rows' numbers, as the flat JSON list ``text`` the caller made of them: ``json``
    reads the digits in C and refuses leading zeros; a number out of place or missing leaves
    a document that is not one list of ``count`` items. Only the hex digits and the layout's
    punctuation are there (``_split_rows``): no 'e', no float, every item an int."""
    _check(b"e" not in text)
    try:
        numbers, end = _SCAN(text.decode("ascii"), 0)  # json.loads less its per-call Python
    except (ValueError, StopIteration) as exc:  # StopIteration: no JSON value at all
        raise _NotCanonical from exc
    _check(end == len(text) and isinstance(numbers, list) and len(numbers) == count)
    return numbers  # type: ignore[no-any-return]


def _hex_ids(hexes: list[bytes]) -> bytes:
    """32 raw bytes from each id of 64 hex digits (``_split_rows`` let no other byte in)."""
    joined = b"".join(hexes)
    # none longer than 64 and 64 on average: all 64 long
    _check(len(joined) == 64 * len(hexes) and max(map(len, hexes)) == 64)
    try:
        return binascii.unhexlify(joined)
    except ValueError as exc:
        raise _NotCanonical from exc


def _extend(into: array[int], numbers: list[int]) -> None:
    """Ints into an array; one past the array's range is for the strict loader, which names
    the field and its limit."""
    try:
        into.fromlist(numbers)
    except OverflowError as exc:
        raise _NotCanonical from exc


def _read_rows(w: _Window, row_offset: array[int], row_size: array[int], ids: bytearray,
               row_chunk: array[int], index: dict[bytes, int] | None, size: int) -> None:
    """A file's chunk rows (after ``"chunks":[``), checked to tile the file exactly; each row's
    chunk looked up in ``index`` (the locations' hex ids: ``len(index)`` for none) into
    ``row_chunk``, or, without an index, its id as 32 raw bytes in ``ids``."""
    expected = 0
    if w.take(b"]"):
        _check(size == 0)
        return
    for span in _spans(w, b"]]"):
        parts = _split_rows(span, b'[,,""]')
        hexes = parts[1::2]
        # [o,s,],[o,s,] -> [o,s,o,s]
        numbers = _json_numbers(b"".join(parts[0::2]).replace(b",]", b"]").replace(b"],[", b","),
                                2 * len(hexes))
        del parts
        sizes = numbers[1::2]
        _check(max(sizes) <= CHUNK_MAX and min(sizes) >= 1)
        tiling = list(accumulate(sizes, initial=expected))
        expected = tiling.pop()
        _check(numbers[0::2] == tiling)
        _extend(row_offset, tiling)
        row_size.fromlist(sizes)
        if index is not None:
            # equal to a location's id: 64 hex digits, as the locations' ids are checked
            row_chunk.fromlist(list(map(index.get, hexes, repeat(len(index)))))
        else:
            ids += _hex_ids(hexes)
    _check(expected == size)


def _read_locations(w: _Window, index: dict[bytes, int] | None
                    ) -> tuple[bytearray, array[int], array[int]]:
    """The chunks' locations (after ``"chunks":{``, up to their closing ``]}``): the ids as 32
    raw bytes each (and, when given an ``index``, its hex text -> its index), blocks and
    offsets."""
    ids = bytearray()
    block, block_offset = _u32(), _u32()
    previous = b""
    if w.take(b"}"):
        return ids, block, block_offset
    for span in _spans(w, b"]}", last=True):
        parts = _split_rows(span, b'"":[,]')
        hexes = parts[1::2]
        # :[b,o],:[b,o] -> [b,o,b,o]
        numbers = _json_numbers(
            b"".join(parts[0::2]).translate(None, b":").replace(b"],[", b","), 2 * len(hexes))
        del parts
        # strictly increasing ids: sorted as the publisher writes them, no duplicate key
        _check(previous < hexes[0] and all(map(operator.lt, hexes, hexes[1:])))
        previous = hexes[-1]
        ids += _hex_ids(hexes)
        if index is not None:
            index.update(zip(hexes, range(len(block), len(block) + len(hexes)), strict=True))
        _extend(block, numbers[0::2])
        _extend(block_offset, numbers[1::2])
        _check(len(block) <= MAX_CHUNKS)
    return ids, block, block_offset


_LOCATIONS = b',"chunks":{'


def _stream_manifest(blob: bytes) -> Manifest:
    w = _Window(blob)
    head = w.match(_HEAD)
    product_id, version_id = check_id(_text(head[1]), "productId"), check_id(_text(head[2]), "versionId")
    created_at = _text(head[3])[:64]
    dictionary = None if head[4] == b"null" else head[4][1:-1].decode()
    del head  # a match holds the whole buffer
    # A document in one piece has its locations (its last member) read first, into a dict
    # over their ids' hex text: each span of file rows then looks its ids up at once and keeps
    # none (the rows' ids held as text until the end cost ~110 bytes a row, 1.8 MB and ~450
    # page faults at the 1 GiB demo). The locations begin at the last ',"chunks":{' (no byte
    # of theirs is a '{'); the files and blocks, read next, must end exactly there. A streamed
    # document, whatever its size, holds no object per chunk: rows' ids as raw bytes, bisected.
    index: dict[bytes, int] | None = None
    at = loc_end = -1
    if w.whole:
        at = w.buf.rfind(_LOCATIONS) + len(_LOCATIONS)
        _check(at >= len(_LOCATIONS))
        resume, w.pos = w.pos, at
        index = {}
        ids, block, block_offset = _read_locations(w, index)
        loc_end, w.pos = w.pos, resume
    # files: headers as objects, chunk rows into arrays
    heads: list[tuple[str, int, int, str, int, int]] = []
    row_offset, row_size, row_ids, row_chunk = array("Q"), _u32(), bytearray(), _u32()
    if not w.take(b"]"):
        while True:
            f = w.match(_FILE)
            path = check_relative_path(_text(f[1]), f"files[{len(heads)}].path")
            size, mode, sha = int(f[2]), int(f[3]), f[4].decode()
            del f
            _check(size <= MAX_FILE_SIZE and mode <= 0o777)
            first = len(row_size)
            _read_rows(w, row_offset, row_size, row_ids, row_chunk, index, size)
            w.expect(b"}")
            heads.append((path, size, mode, sha, first, len(row_size)))
            _check(len(heads) <= MAX_FILES and len(row_size) <= MAX_CHUNKS)
            if w.take(b"]"):
                break
            w.expect(b",")
    del index
    w.expect(b',"dirs":')
    dirs_raw = w.value()
    w.expect(b',"launch":')
    launch_raw = w.value()
    w.expect(b',"saves":')
    saves_raw = w.value()
    w.expect(b',"blocks":[')
    blocks: list[Block] = []
    packs: dict[bytes, str] = {}
    codecs = {b"raw": Codec.RAW, b"zstd": Codec.ZSTD, b"zstd-dict": Codec.ZSTD_DICT}
    if not w.take(b"]"):
        for rows in _runs(w, _BLOCKS, b"]]", b"],[", 10):
            # a column at a time (in C), not a block at a time
            pack_col, offset_col, stored_col, raw_col, codec_col = zip(*rows, strict=True)
            offsets, stored = list(map(int, offset_col)), list(map(int, stored_col))
            raw_sizes, kinds = list(map(int, raw_col)), list(map(codecs.__getitem__, codec_col))
            is_raw = list(map(operator.is_, kinds, repeat(Codec.RAW)))
            _check(max(offsets) <= 1 << 40 and min(stored) >= 1
                   and max(stored) <= MAX_BLOCK_RAW + 65536
                   and min(raw_sizes) >= 1 and max(raw_sizes) <= MAX_BLOCK_RAW
                   and all(map(operator.eq, compress(stored, is_raw), compress(raw_sizes, is_raw))))
            names = map(packs.setdefault, pack_col, map(bytes.decode, pack_col))  # one str a pack
            blocks += map(Block, names, offsets, stored, raw_sizes, kinds)
            _check(len(blocks) <= MAX_CHUNKS)
    w.expect(_LOCATIONS)
    if w.whole:
        _check(w.pos == at)  # the locations read first are the document's
        w.pos = loc_end
    else:
        ids, block, block_offset = _read_locations(w, None)
    w.expect(b"}")
    w.finish()
    _check(not block or (max(block) < len(blocks) and max(block_offset) <= MAX_BLOCK_RAW))
    table = _link(ids, block, block_offset, blocks, row_offset, row_size, row_ids, heads,
                  row_chunk if w.whole else None)
    del row_ids
    files = tuple(FileEntry(path, size, mode, sha, FileChunks(table, lo, hi))
                  for path, size, mode, sha, lo, hi in heads)
    dirs = tuple(check_relative_path(d, f"dirs[{i}]")
                 for i, d in enumerate(_str_list_any(dirs_raw, "dirs")))
    check_collisions(files, dirs)
    _check(dictionary is not None or all(b.codec is not Codec.ZSTD_DICT for b in blocks))
    return Manifest(
        product_id=product_id, version_id=version_id, created_at=created_at, files=files,
        dirs=dirs, blocks=tuple(blocks), chunks=ChunkLocations(table),
        launch=parse_launch(launch_raw), saves=parse_saves(saves_raw), dictionary=dictionary,
        _table=table,
    )


def _in_group(ids: bytes | bytearray, keys: Sequence[int], u: int, rid: bytes | bytearray) -> int:
    """The index of the 32-byte id ``rid`` among the ids sharing the key (first 8 bytes) of
    index ``u``, the group's first, or -1. The ids are sorted, so a group is searched by
    bisection: ids sharing their first 8 bytes (never seen from BLAKE3, but a document can
    hold any) cost the log of the group per lookup, not its length (a linear walk made a
    document of K such ids take K² steps: 5 s at 8,000, days within the size budget)."""
    hi = bisect_right(keys, keys[u], u)
    v = u + bisect_left(range(u, hi), rid, key=lambda i: ids[32 * i : 32 * i + 32])
    return v if v < hi and ids[32 * v : 32 * v + 32] == rid else -1


def _relink(ids: bytearray, keys: array[int], row_ids: bytearray, row_chunk: array[int]) -> None:
    """Rows whose id shares its first 8 bytes with another id (or has no location at all)."""
    n = len(keys)
    for r, u in enumerate(row_chunk):
        rid = row_ids[32 * r : 32 * r + 32]
        if u < n and ids[32 * u : 32 * u + 32] == rid:
            continue
        # the row's key is the group's (bisect_left found its first index), or it has none
        v = _in_group(ids, keys, u, rid) if u < n and keys[u] == int.from_bytes(rid[:8], "big") else -1
        if v < 0:
            raise _NotCanonical
        row_chunk[r] = v


def _link(ids: bytearray, block: array[int], block_offset: array[int], blocks: list[Block],
          row_offset: array[int], row_size: array[int], row_ids: bytearray,
          heads: list[tuple[str, int, int, str, int, int]],
          row_chunk: array[int] | None) -> ChunkTable:
    """Each file row's unique chunk, with the loader's checks: every row has a location,
    every location is used, no chunk overruns its block. ``row_chunk``: the rows' chunks
    already looked up (a document read in one piece), else found from ``row_ids``."""
    if row_chunk is not None:
        size = _sizes(len(block), row_chunk, row_size)
    else:
        row_chunk, size = _link_large(ids, _keys(ids), row_size, row_ids)
    raw_sizes = [b.raw_size for b in blocks]
    _check(all(map(operator.le, map(operator.add, block_offset, size),
                   map(raw_sizes.__getitem__, block))))
    row_file = _u32(len(row_chunk))
    for fi, (*_, lo, hi) in enumerate(heads):
        row_file[lo:hi] = array("I", [fi]) * (hi - lo)
    return ChunkTable(ids, block, block_offset, size, row_offset, row_size, row_chunk, row_file)


def _sizes(n: int, row_chunk: array[int], row_size: array[int]) -> array[int]:
    """Each of the ``n`` chunks' size: its last row's, as in the strict loader; a row without
    a location (``n``) or a location no row names is refused."""
    _check(not row_chunk or max(row_chunk) < n)
    size = [-1] * n  # a list: its indexing is the interpreter's own, an array's a call
    for u, s in zip(row_chunk, row_size, strict=True):
        size[u] = s
    _check(-1 not in size)
    return array("I", size)


def _link_small(loc_hex: list[bytes], row_hex: list[bytes], row_size: array[int]
                ) -> tuple[array[int], array[int]]:
    """``_link``'s lookups with a dict over the ids' hex text (``loc_hex`` sorted, unique), as
    ``_stream_manifest`` does them a span of rows at a time."""
    n = len(loc_hex)
    index = dict(zip(loc_hex, range(n), strict=True))
    chunks = array("I", map(index.get, row_hex, repeat(n)))  # n: no location
    return chunks, _sizes(n, chunks, row_size)


def _bisect_rows(keys: array[int], row_ids: bytearray) -> array[int]:
    """``bisect_left(keys, key)`` for each row's key (its id's first 8 bytes), each bisect
    within the keys sharing the key's first 12 bits (~64 at 260k chunks: 6 probes, not 18,
    each making an int of a 64-bit key). The bounds of those ranges are looked up by the ids'
    first 2 bytes, which are copied out of the ids in C."""
    start = [bisect_left(keys, j << 52) for j in range(4097)]
    # by 16-bit prefix: the range of its 12-bit one (65,536 references to 4,097 ints)
    lo = list(chain.from_iterable(map(repeat, start[:-1], repeat(16))))
    hi = list(chain.from_iterable(map(repeat, start[1:], repeat(16))))
    pairs = bytearray(2 * (len(row_ids) // 32))  # the first two bytes of each id
    first, second = (0, 1) if sys.byteorder == "big" else (1, 0)
    pairs[first::2], pairs[second::2] = row_ids[0::32], row_ids[1::32]
    prefix = array("H", pairs)
    del pairs
    return array("I", map(bisect_left, repeat(keys), _keys(row_ids),
                          map(lo.__getitem__, prefix), map(hi.__getitem__, prefix)))


def _link_large(ids: bytearray, keys: array[int], row_size: array[int], row_ids: bytearray
                ) -> tuple[array[int], array[int]]:
    """``_link``'s lookups by bisect over the sorted ids' keys, without an object per chunk."""
    n = len(keys)
    row_chunk = _bisect_rows(keys, row_ids)
    # every row's id equals the id found for it: the ids found, gathered a slice at a time
    # (a few thousand 32-byte pieces alive at once), compared with the rows' own
    found = n > 0 and max(row_chunk, default=0) < n
    step = 4096
    for lo in range(0, len(row_chunk) if found else 0, step):
        part = row_chunk[lo : lo + step]
        if b"".join([ids[32 * u : 32 * u + 32] for u in part]) != \
                row_ids[32 * lo : 32 * (lo + len(part))]:
            found = False
            break
    if not found and len(row_chunk):
        _relink(ids, keys, row_ids, row_chunk)
    size = _u32(n)
    used = bytearray(n)  # not a set of ints: 15 MB at 260k chunks, more than the whole table
    for u, s in zip(row_chunk, row_size, strict=True):
        size[u] = s  # the last row's size wins, as in the strict loader
        used[u] = 1
    _check(used.count(0) == 0)
    return row_chunk, size
