"""The manifest: what one product version contains and where every chunk is stored.

Serialized as JSON (compact, chunk rows as arrays), zstd-compressed, signed with Ed25519
(see ``patcher.signing``). ``parse_manifest`` is the strict loader: every rejection raises a
``ManifestError`` naming the code and the offending field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import zstandard

from patcher.chunking import CHUNK_MAX
from patcher.errors import ManifestError
from patcher.ids import is_id

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

_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_DRIVE = re.compile(r"\A[A-Za-z]:")
_FORBIDDEN_CHAR = re.compile(r"[\x00-\x1f:]")  # control characters and ':'
_WINDOWS_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{i}" for i in range(1, 10)] + [f"lpt{i}" for i in range(1, 10)]
)
# Names the engine creates inside and next to install folders (``.launcher-staging``,
# ``<dest>.launcher-move``): no manifest path component may start with it, in any case.
RESERVED_PREFIX = ".launcher-"


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
    chunks: tuple[ChunkEntry, ...]

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
    chunks: dict[str, ChunkLocation]
    dirs: tuple[str, ...] = ()
    launch: tuple[LaunchEntry, ...] = ()
    saves: tuple[SaveLocation, ...] = ()
    dictionary: str | None = None  # BLAKE3 of the zstd dictionary for Codec.ZSTD_DICT blocks
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    _by_path: dict[str, FileEntry] = field(default_factory=dict, compare=False, repr=False)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry | None:
        if not self._by_path:
            self._by_path.update((f.path, f) for f in self.files)
        return self._by_path.get(path)

    def chunk_sizes(self) -> dict[str, int]:
        return {c.id: c.size for f in self.files for c in f.chunks}


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
        "launch": [
            {
                "name": e.name,
                "executable": e.executable,
                "arguments": list(e.arguments),
                "working_dir": e.working_dir,
                # only when set: manifests without it keep their exact bytes (and signatures)
                **({"environment": dict(e.environment)} if e.environment else {}),
            }
            for e in m.launch
        ],
        "saves": [
            {"root": s.root.value, "path": s.path, "include": list(s.include), "exclude": list(s.exclude)}
            for s in m.saves
        ],
        "blocks": [[b.pack, b.offset, b.stored_size, b.raw_size, b.codec.value] for b in m.blocks],
        "chunks": {cid: [loc.block, loc.offset] for cid, loc in sorted(m.chunks.items())},
    }


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
    validate_manifest(m)
    raw = manifest_to_json(m)
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
    """Decompress and parse manifest bytes, with size limits before and during decompression."""
    if len(blob) > MAX_COMPRESSED_BYTES:
        raise ManifestError("MANIFEST_TOO_LARGE", "manifest", f"{len(blob)} compressed bytes")
    raw = _decompress_json(blob)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError("MANIFEST_CORRUPT", "manifest", f"not JSON: {exc}") from exc
    return parse_manifest(doc)


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
