"""Manifest diff A → B: a pure function over two manifests, no I/O.

It answers what an update needs: files unchanged, moved (same SHA-256 at another path), removed,
changed and added; for every chunk B needs, whether A's files already hold it (source file and
offset) or it must be downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from patcher.manifest import Manifest


@dataclass(frozen=True, slots=True)
class ChunkSource:
    path: str
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Move:
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class ManifestDiff:
    unchanged: tuple[str, ...]
    moved: tuple[Move, ...]  # target files whose whole content is an old file elsewhere
    removed: tuple[str, ...]
    changed: tuple[str, ...]  # same path, other content
    added: tuple[str, ...]  # new path with new content
    reusable: dict[str, ChunkSource]  # chunk id of B -> where A's files hold it
    download: dict[str, int]  # chunk id of B that A lacks -> size

    @property
    def download_bytes(self) -> int:
        return sum(self.download.values())

    @property
    def rebuilt(self) -> tuple[str, ...]:
        """Files that must be assembled from chunks or patches."""
        return self.changed + self.added


def chunk_sources(manifest: Manifest) -> dict[str, ChunkSource]:
    """First place each chunk occurs in a manifest's files."""
    out: dict[str, ChunkSource] = {}
    for f in manifest.files:
        for c in f.chunks:
            out.setdefault(c.id, ChunkSource(f.path, c.offset, c.size))
    return out


def diff_manifests(old: Manifest, new: Manifest) -> ManifestDiff:
    old_by_path = {f.path: f for f in old.files}
    new_paths = {f.path for f in new.files}
    old_by_sha: dict[str, str] = {}
    for f in old.files:
        old_by_sha.setdefault(f.hash_sha256, f.path)

    unchanged: list[str] = []
    moved: list[Move] = []
    changed: list[str] = []
    added: list[str] = []
    for f in new.files:
        prev = old_by_path.get(f.path)
        if prev is not None and prev.hash_sha256 == f.hash_sha256:
            unchanged.append(f.path)
        elif f.hash_sha256 in old_by_sha:
            moved.append(Move(old_by_sha[f.hash_sha256], f.path))
        elif prev is not None:
            changed.append(f.path)
        else:
            added.append(f.path)
    removed = tuple(p for p in old_by_path if p not in new_paths)

    sources = chunk_sources(old)
    rebuild = set(changed) | set(added)
    reusable: dict[str, ChunkSource] = {}
    download: dict[str, int] = {}
    for f in new.files:
        if f.path not in rebuild:
            continue
        for c in f.chunks:
            src = sources.get(c.id)
            if src is not None:
                reusable[c.id] = src
            else:
                download[c.id] = c.size
    return ManifestDiff(
        tuple(unchanged), tuple(moved), removed, tuple(changed), tuple(added), reusable, download
    )
