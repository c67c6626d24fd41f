"""Update and repair planning: pure functions from manifests to the cheapest verified work.

For every file the new version changes, the plan picks one build method:
- MOVE: the whole content exists as another local file (a rename): clone or copy it;
- PATCH: a published binary patch is smaller than the file's missing chunks;
- CHUNKS: copy every chunk the install already holds (BLAKE3-checked when read), fetch the rest.
Unchanged files are not touched. The plan states its costs before anything starts.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

from engine.core.planner import ChunkWrite, Wanted
from patcher.deltaindex import DeltaIndex, PatchEntry
from patcher.diff import ChunkSource, chunk_sources, diff_manifests
from patcher.manifest import Manifest
from patcher.sizing import blocks_bytes, blocks_for, update_cost


class BuildMethod(StrEnum):
    CHUNKS = "chunks"
    PATCH = "patch"
    MOVE = "move"


@dataclass(frozen=True, slots=True)
class LocalCopy:
    """One chunk read from the current install (and verified) into staged files."""

    chunk_id: str
    size: int
    source_path: str
    source_offset: int
    writes: tuple[ChunkWrite, ...]


@dataclass(frozen=True, slots=True)
class FileBuild:
    file_index: int
    method: BuildMethod
    patch: PatchEntry | None = None
    move_source: str | None = None


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    builds: tuple[FileBuild, ...]
    copies: tuple[LocalCopy, ...]
    fetch: Wanted
    remove: tuple[str, ...]
    chunk_download_bytes: int  # stored bytes of blocks to fetch
    patch_bytes: int
    reused_bytes: int  # bytes copied from local files
    write_bytes: int  # bytes written into staged files
    peak_extra_bytes: int  # extra disk while both versions exist
    full_bytes: int  # what a fresh install would download

    @property
    def download_bytes(self) -> int:
        return self.chunk_download_bytes + self.patch_bytes

    def summary(self) -> dict[str, int]:
        """The plan's costs, as the fields of the ``updatePlan`` event."""
        return {"download_bytes": self.download_bytes, "patch_bytes": self.patch_bytes,
                "reused_bytes": self.reused_bytes, "write_bytes": self.write_bytes,
                "peak_extra_disk_bytes": self.peak_extra_bytes,
                "full_download_bytes": self.full_bytes,
                "files_rebuilt": len(self.builds), "files_removed": len(self.remove)}


def chunk_build(new: Manifest, file_index: int,
                sources: dict[str, ChunkSource]) -> tuple[list[LocalCopy], Wanted]:
    """How to assemble one file from chunks: local copies where possible, fetches otherwise."""
    copies: dict[str, list[ChunkWrite]] = defaultdict(list)
    fetch: dict[str, list[ChunkWrite]] = defaultdict(list)
    sizes: dict[str, int] = {}
    for c in new.files[file_index].chunks:
        sizes[c.id] = c.size
        (copies if c.id in sources else fetch)[c.id].append(ChunkWrite(file_index, c.offset))
    local = [LocalCopy(cid, sizes[cid], sources[cid].path, sources[cid].offset, tuple(ws))
             for cid, ws in copies.items()]
    return local, dict(fetch)


def merge_wanted(into: dict[str, list[ChunkWrite]], more: Wanted) -> None:
    for cid, writes in more.items():
        into.setdefault(cid, []).extend(writes)


def _finish(new: Manifest, builds: list[FileBuild], copies: list[LocalCopy],
            fetch: dict[str, list[ChunkWrite]], remove: tuple[str, ...]) -> UpdatePlan:
    patch_bytes = sum(b.patch.patch_size for b in builds if b.patch is not None)
    reused = sum(c.size * len(c.writes) for c in copies)
    write = sum(new.files[b.file_index].size for b in builds)
    return UpdatePlan(
        builds=tuple(builds), copies=tuple(copies), fetch=dict(fetch), remove=remove,
        chunk_download_bytes=blocks_bytes(new, blocks_for(new, fetch)),
        patch_bytes=patch_bytes, reused_bytes=reused, write_bytes=write,
        peak_extra_bytes=write,
        full_bytes=blocks_bytes(new, blocks_for(new, new.chunks)),
    )


def plan_update(old: Manifest, new: Manifest, delta: DeltaIndex | None) -> UpdatePlan:
    """The work of an update; its costs are ``patcher.sizing.update_cost``'s (what the backend
    told the player before the update started), not a second computation of them."""
    diff = diff_manifests(old, new)
    cost = update_cost(old, new, delta, diff)
    index = {f.path: i for i, f in enumerate(new.files)}
    sources = chunk_sources(old)
    patches = {p.path: p for p in cost.patches}
    builds: list[FileBuild] = []
    copies: list[LocalCopy] = []
    fetch: dict[str, list[ChunkWrite]] = {}
    for move in diff.moved:
        builds.append(FileBuild(index[move.target], BuildMethod.MOVE, move_source=move.source))
    for path in diff.rebuilt:
        fi = index[path]
        if path in patches:
            builds.append(FileBuild(fi, BuildMethod.PATCH, patch=patches[path]))
            continue
        builds.append(FileBuild(fi, BuildMethod.CHUNKS))
        local, wanted = chunk_build(new, fi, sources)
        copies.extend(local)
        merge_wanted(fetch, wanted)
    return UpdatePlan(
        builds=tuple(builds), copies=tuple(copies), fetch=dict(fetch), remove=diff.removed,
        chunk_download_bytes=cost.chunk_bytes, patch_bytes=cost.patch_bytes,
        reused_bytes=cost.reused_bytes, write_bytes=cost.write_bytes,
        peak_extra_bytes=cost.write_bytes, full_bytes=cost.full_bytes)


def with_rebuilds(plan: UpdatePlan, new: Manifest, extra: set[int],
                  sources: dict[str, ChunkSource]) -> UpdatePlan:
    """``plan`` plus chunk rebuilds of ``extra`` files (unchanged files found missing or damaged)."""
    have = {b.file_index for b in plan.builds}
    builds = list(plan.builds)
    copies = list(plan.copies)
    fetch: dict[str, list[ChunkWrite]] = {cid: list(ws) for cid, ws in plan.fetch.items()}
    for fi in sorted(extra - have):
        builds.append(FileBuild(fi, BuildMethod.CHUNKS))
        local, wanted = chunk_build(new, fi, sources)
        copies.extend(local)
        merge_wanted(fetch, wanted)
    return _finish(new, builds, copies, fetch, plan.remove)


def plan_repair(manifest: Manifest, damaged: set[int], missing_sources: set[str]) -> UpdatePlan:
    """Rebuild the damaged files of an install from its own good chunks plus downloads.

    ``missing_sources``: paths that cannot serve as chunk sources (missing or damaged files
    are still tried: every copied chunk is BLAKE3-checked and fetched when it fails).
    """
    sources = {cid: src for cid, src in chunk_sources_excluding(manifest, missing_sources).items()}
    builds: list[FileBuild] = []
    copies: list[LocalCopy] = []
    fetch: dict[str, list[ChunkWrite]] = {}
    for fi in sorted(damaged):
        builds.append(FileBuild(fi, BuildMethod.CHUNKS))
        local, wanted = chunk_build(manifest, fi, sources)
        copies.extend(local)
        merge_wanted(fetch, wanted)
    return _finish(manifest, builds, copies, fetch, ())


def chunk_sources_excluding(manifest: Manifest, paths: set[str]) -> dict[str, ChunkSource]:
    out: dict[str, ChunkSource] = {}
    for f in manifest.files:
        if f.path in paths:
            continue
        for c in f.chunks:
            out.setdefault(c.id, ChunkSource(f.path, c.offset, c.size))
    return out


def local_build_memory(b: FileBuild, old: Manifest) -> int:
    """The bytes a local build holds in memory at once: a patch holds its source, itself and
    the file it makes (the appliers work on whole buffers), and one more buffer of the larger
    of the two (zstd copies the source into its dictionary, hdiff decodes its sections:
    measured 193-198 MiB at the peak for a 64 MiB file, where source + patch + output made
    129); a move streams."""
    p = b.patch
    if b.method is not BuildMethod.PATCH or p is None:
        return 0
    source = old.file(p.source_path) if p.source_path is not None else None
    source_size = source.size if source is not None else 0
    return source_size + p.patch_size + p.to_size + max(source_size, p.to_size)


def may_start_local_build(running: int, in_use: int, cost: int, max_running: int,
                          memory_limit: int) -> bool:
    """Whether the next local build (in plan order) starts now: a free slot, and its memory
    beside the running builds' within the limit — or it runs alone, when it cannot fit at all."""
    if running == 0:
        return True
    return running < max_running and in_use + cost <= memory_limit
