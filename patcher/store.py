"""The content store a publisher writes and a CDN serves.

Layout (``ROOT/cdn`` is what any static host, nginx or S3 bucket serves; the rest stays private)::

    ROOT/signing.key                               Ed25519 private key, mode 0600
    ROOT/index.sqlite                              chunk index, versions, patches (publisher only)
    ROOT/cdn/<product>/packs/<blake3>.pack         immutable packs of blocks
    ROOT/cdn/<product>/manifests/<version>.manifest  zstd JSON, signed bytes
    ROOT/cdn/<product>/manifests/<version>.sig     64-byte Ed25519 signature
    ROOT/cdn/<product>/manifests/<version>.bmanifest  the same manifest's binary form
                                                   (``patcher.manifestbin``), signed: .bsig
    ROOT/cdn/<product>/deltas/<from>--<to>.delta   signed delta index, format 1 (+ .sig)
    ROOT/cdn/<product>/deltas/<from>--<to>.v2.delta  format 2: every patch kind (+ .v2.sig)
    ROOT/cdn/<product>/deltas/<from>--<to>.v3.delta  format 3: the unsigned update document
    ROOT/cdn/<product>/patches/<blake3>.patch      per-file binary patches
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from patcher.deltaindex import DeltaIndex, decode_delta_index
from patcher.errors import ManifestError, StoreError
from patcher.manifest import Codec, Manifest, decode_manifest
from patcher.manifestbin import encode_manifest_binary
from patcher.packs import decompress_block
from patcher.signing import (
    load_or_create_private_key,
    load_signed_manifest,
    public_key_hex,
    verify_signature,
)
from patcher.updatedoc import UpdateDoc, decode_update_doc

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    product TEXT NOT NULL, id TEXT NOT NULL, pack TEXT NOT NULL, block_offset INTEGER NOT NULL,
    stored_size INTEGER NOT NULL, raw_size INTEGER NOT NULL, codec TEXT NOT NULL,
    offset_in_block INTEGER NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (product, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    product TEXT NOT NULL, version TEXT NOT NULL, seq INTEGER NOT NULL, created_at TEXT NOT NULL,
    total_size INTEGER NOT NULL, file_count INTEGER NOT NULL, manifest_size INTEGER NOT NULL,
    PRIMARY KEY (product, version)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS file_hashes (
    product TEXT NOT NULL, blake3 TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (product, blake3)
) WITHOUT ROWID;
"""
SCHEMA_VERSION = "1"


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    id: str
    pack: str
    block_offset: int
    stored_size: int
    raw_size: int
    codec: Codec
    offset_in_block: int
    size: int


@dataclass(frozen=True, slots=True)
class VersionRecord:
    product: str
    version: str
    seq: int
    created_at: str
    total_size: int
    file_count: int
    manifest_size: int


def atomic_write(path: Path, data: bytes) -> None:
    """Write then rename, so readers (and a CDN) never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cdn = root / "cdn"
        self.cdn.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(root / "index.sqlite", timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
        )
        self._db.commit()
        self._key: Ed25519PrivateKey | None = None

    def close(self) -> None:
        self._db.close()

    # -- keys ---------------------------------------------------------------------------------
    @property
    def signing_key(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = load_or_create_private_key(self.root / "signing.key")
        return self._key

    @property
    def public_key_hex(self) -> str:
        return public_key_hex(self.signing_key)

    # -- paths (relative to the CDN root are what URLs carry) ---------------------------------
    @staticmethod
    def pack_rel(product: str, pack: str) -> str:
        return f"{product}/packs/{pack}.pack"

    @staticmethod
    def manifest_rel(product: str, version: str) -> str:
        return f"{product}/manifests/{version}.manifest"

    @staticmethod
    def manifest_bin_rel(product: str, version: str) -> str:
        """The manifest's binary form (``patcher.manifestbin``), beside the JSON one."""
        return f"{product}/manifests/{version}.bmanifest"

    @staticmethod
    def manifest_bin_sig_rel(product: str, version: str) -> str:
        return f"{product}/manifests/{version}.bsig"

    @staticmethod
    def delta_rel(product: str, from_version: str, to_version: str) -> str:
        return f"{product}/deltas/{from_version}--{to_version}.delta"

    @staticmethod
    def delta_v2_rel(product: str, from_version: str, to_version: str) -> str:
        """Format-2 delta index (every patch kind; see ``patcher.deltaindex``)."""
        return f"{product}/deltas/{from_version}--{to_version}.v2.delta"

    @staticmethod
    def delta_v3_rel(product: str, from_version: str, to_version: str) -> str:
        """Format-3 update document (see ``patcher.updatedoc``): unsigned, checked through the
        new manifest's signature."""
        return f"{product}/deltas/{from_version}--{to_version}.v3.delta"

    @staticmethod
    def patch_rel(product: str, patch_id: str) -> str:
        return f"{product}/patches/{patch_id}.patch"

    def path(self, rel: str) -> Path:
        return self.cdn / rel

    # -- chunk index --------------------------------------------------------------------------
    def lookup_chunks(self, product: str, ids: Iterable[str]) -> dict[str, ChunkRecord]:
        out: dict[str, ChunkRecord] = {}
        id_list = list(ids)
        for i in range(0, len(id_list), 500):
            batch = id_list[i : i + 500]
            marks = ",".join("?" * len(batch))
            rows = self._db.execute(
                "SELECT id, pack, block_offset, stored_size, raw_size, codec, offset_in_block, size"
                f" FROM chunks WHERE product = ? AND id IN ({marks})",
                (product, *batch),
            )
            for r in rows:
                out[r[0]] = ChunkRecord(r[0], r[1], r[2], r[3], r[4], Codec(r[5]), r[6], r[7])
        return out

    def known_files(self, product: str, digests: Iterable[str]) -> dict[str, tuple[int, str]]:
        """BLAKE3 of a whole published file -> (size, SHA-256): lets a publish recognise a file
        it has chunked before without chunking and hashing it again."""
        out: dict[str, tuple[int, str]] = {}
        ids = list(digests)
        for i in range(0, len(ids), 500):
            batch = ids[i: i + 500]
            rows = self._db.execute(
                "SELECT blake3, size, sha256 FROM file_hashes WHERE product = ? AND blake3 IN "
                f"({','.join('?' * len(batch))})", (product, *batch))
            out.update((r[0], (r[1], r[2])) for r in rows)
        return out

    def add_file_hashes(self, db: sqlite3.Connection, product: str,
                        rows: Iterable[tuple[str, int, str]]) -> None:
        db.executemany("INSERT OR IGNORE INTO file_hashes VALUES (?, ?, ?, ?)",
                       [(product, *r) for r in rows])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._db:
            yield self._db

    def add_chunks(self, db: sqlite3.Connection, product: str, recs: Iterable[ChunkRecord],
                   *, replace: bool = False) -> None:
        """Index chunk locations; ``replace``: chunks stored again move to their new place."""
        verb = "REPLACE" if replace else "IGNORE"
        db.executemany(
            f"INSERT OR {verb} INTO chunks VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (product, r.id, r.pack, r.block_offset, r.stored_size, r.raw_size, r.codec.value,
                 r.offset_in_block, r.size)
                for r in recs
            ],
        )

    # -- versions -----------------------------------------------------------------------------
    def products(self) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT product FROM versions ORDER BY product")
        return [r[0] for r in rows]

    def versions(self, product: str) -> list[VersionRecord]:
        rows = self._db.execute(
            "SELECT product, version, seq, created_at, total_size, file_count, manifest_size"
            " FROM versions WHERE product = ? ORDER BY seq",
            (product,),
        )
        return [VersionRecord(*r) for r in rows]

    def version(self, product: str, version: str) -> VersionRecord | None:
        return next((v for v in self.versions(product) if v.version == version), None)

    def add_version(self, db: sqlite3.Connection, manifest: Manifest, manifest_size: int) -> None:
        seq = db.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM versions WHERE product = ?",
            (manifest.product_id,),
        ).fetchone()[0]
        db.execute(
            "INSERT INTO versions VALUES (?,?,?,?,?,?,?)",
            (manifest.product_id, manifest.version_id, seq, manifest.created_at,
             manifest.total_size, len(manifest.files), manifest_size),
        )

    # -- signed documents ---------------------------------------------------------------------
    def read_manifest(self, product: str, version: str) -> Manifest:
        """A published version's manifest. The JSON form's signature is checked first, always:
        a version whose canonical document is not signed is not read (nor offered by the
        backend). It is decoded from the binary form when that is published and sound (a 16 GiB
        game's in ~0.16 s where the JSON takes ~0.75: the backend's first grant of a game
        waited on it), else from the JSON."""
        blob = self._signed_json(product, version)
        try:
            binary = self.path(self.manifest_bin_rel(product, version)).read_bytes()
            binary_sig = self.path(self.manifest_bin_sig_rel(product, version)).read_bytes()
        except FileNotFoundError:
            return decode_manifest(blob)
        try:
            return load_signed_manifest(binary, binary_sig, self.signing_key.public_key())
        except ManifestError as exc:
            log.error("the binary manifest of %s %s is unusable (%s): reading its JSON; "
                      "republish the version to write it again", product, version, exc)
            return decode_manifest(blob)

    def _signed_json(self, product: str, version: str) -> bytes:
        """The JSON form's bytes, their signature checked."""
        rel = self.manifest_rel(product, version)
        try:
            blob = self.path(rel).read_bytes()
            sig = self.path(rel).with_suffix(".sig").read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(f"no manifest for {product} {version}", code="VERSION_NOT_FOUND") from exc
        verify_signature(blob, sig, self.signing_key.public_key())
        return blob

    def write_binary_manifest(self, json_blob: bytes) -> None:
        """The binary form of a published manifest (``json_blob``: its JSON form's signed
        bytes) and its signature. It is written from the JSON's manifest and decoded back and
        compared with it before it is signed: the two forms never say different things."""
        manifest = decode_manifest(json_blob)
        blob = encode_manifest_binary(manifest)
        if decode_manifest(blob) != manifest:
            raise StoreError(f"the binary form of {manifest.product_id} {manifest.version_id} "
                             "does not match its JSON form", code="MANIFEST_INVALID")
        product, version = manifest.product_id, manifest.version_id
        atomic_write(self.path(self.manifest_bin_sig_rel(product, version)),
                     self.signing_key.sign(blob))
        atomic_write(self.path(self.manifest_bin_rel(product, version)), blob)

    def ensure_binary_manifest(self, product: str, version: str) -> bool:
        """Write a published version's binary form if it has none (versions published before
        the form existed) or one that fails its signature; True when it was written."""
        try:
            verify_signature(self.path(self.manifest_bin_rel(product, version)).read_bytes(),
                             self.path(self.manifest_bin_sig_rel(product, version)).read_bytes(),
                             self.signing_key.public_key())
            return False
        except (OSError, ManifestError):
            pass
        self.write_binary_manifest(self._signed_json(product, version))
        return True

    def read_delta(self, product: str, from_version: str, to_version: str,
                   format_version: int = 2) -> DeltaIndex | None:
        """The step's delta index: format 2 when published (what current engines use), else
        format 1; ``format_version=1``: what an engine released before format 2 uses."""
        path = self.path(self.delta_rel(product, from_version, to_version))
        v2 = self.path(self.delta_v2_rel(product, from_version, to_version))
        if format_version >= 2 and v2.exists():
            path = v2
        if not path.exists():
            return None
        blob = path.read_bytes()
        sig = path.with_suffix(".sig").read_bytes()
        verify_signature(blob, sig, self.signing_key.public_key())
        return decode_delta_index(blob)

    def read_update_doc(self, product: str, old: Manifest, to_version: str
                        ) -> tuple[UpdateDoc, int] | None:
        """The step's format-3 document and its size in bytes, when published."""
        path = self.path(self.delta_v3_rel(product, old.version_id, to_version))
        if not path.exists():
            return None
        blob = path.read_bytes()
        return decode_update_doc(blob, old), len(blob)


class BlockReader:
    """Reads chunks back out of a store's packs (publisher patch building, store verification)."""

    def __init__(self, store: Store, manifest: Manifest) -> None:
        self.store = store
        self.manifest = manifest
        self._cached: tuple[int, bytes] | None = None

    def block(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        b = self.manifest.blocks[index]
        path = self.store.path(self.store.pack_rel(self.manifest.product_id, b.pack))
        with path.open("rb") as fh:
            fh.seek(b.offset)
            stored = fh.read(b.stored_size)
        if len(stored) != b.stored_size:
            raise StoreError(f"pack {b.pack} truncated at block {index}", code="STORE_CORRUPT")
        raw = decompress_block(stored, b.codec, b.raw_size)
        self._cached = (index, raw)
        return raw

    def chunk(self, chunk_id: str, size: int) -> bytes:
        loc = self.manifest.chunks[chunk_id]
        return self.block(loc.block)[loc.offset : loc.offset + size]

    def extract(self, path: str, dest: Path) -> None:
        entry = self.manifest.file(path)
        if entry is None:
            raise StoreError(f"{path} not in {self.manifest.version_id}", code="FILE_NOT_FOUND")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("wb") as fh:
            for c in entry.chunks:
                fh.write(self.chunk(c.id, c.size))
