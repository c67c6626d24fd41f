"""What an install or an update costs to download: pure functions over manifests.

A chunk is fetched as part of its block (a zstd frame of consecutive chunks), so the cost of a
set of chunks is the stored size of the distinct blocks that hold them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from patcher.deltaindex import DeltaIndex, PatchEntry
from patcher.diff import ManifestDiff, diff_manifests
from patcher.manifest import Manifest
from patcher.updatedoc import UpdateDoc, as_delta_index


@dataclass(frozen=True, slots=True)
class UpdateCost:
    download_bytes: int  # blocks + patches actually fetched
    chunk_bytes: int  # stored bytes of blocks fetched
    patch_bytes: int
    reused_bytes: int  # bytes of rebuilt files copied from local files
    write_bytes: int  # bytes written to build the new files (unchanged files cost nothing)
    full_bytes: int  # a fresh install's download
    patches: tuple[PatchEntry, ...]  # the patches chosen (by path)

    @property
    def patched_files(self) -> tuple[str, ...]:
        return tuple(p.path for p in self.patches)


def blocks_for(manifest: Manifest, chunk_ids: Iterable[str]) -> set[int]:
    return {manifest.chunks[c].block for c in chunk_ids}


def blocks_bytes(manifest: Manifest, blocks: Iterable[int]) -> int:
    return sum(manifest.blocks[b].stored_size for b in blocks)


def install_bytes(manifest: Manifest) -> int:
    return blocks_bytes(manifest, blocks_for(manifest, manifest.chunks))


def chunk_share(manifest: Manifest, chunk_id: str, size: int) -> float:
    """Stored bytes attributable to one chunk: its share of its block."""
    block = manifest.blocks[manifest.chunks[chunk_id].block]
    return size * block.stored_size / block.raw_size


def choose_patches(
    old: Manifest, new: Manifest, diff: ManifestDiff, delta: DeltaIndex | None
) -> dict[str, PatchEntry]:
    """Per rebuilt file, the patch to use when it makes the update smaller.

    A chunk is fetched with its whole block, so patches save only the blocks that no chunk-built
    file still needs. The cheapest of two searches wins: greedy additions (each patch must pay
    for the blocks it frees) and pruning from all patches (finds blocks freed only jointly).
    """
    if delta is None:
        return {}
    rebuilt = set(diff.rebuilt)
    candidates: list[PatchEntry] = []
    for p in delta.patches:
        target = new.file(p.path)
        if p.path not in rebuilt or target is None or target.hash_sha256 != p.to_sha256:
            continue
        if p.source_path is not None:  # None: a whole-file frame, applied to empty input
            src = old.file(p.source_path)
            if src is None or src.hash_sha256 != p.from_sha256:
                continue
        candidates.append(p)
    users: dict[int, set[str]] = {}
    for path in diff.rebuilt:
        f = new.file(path)
        assert f is not None
        for c in f.chunks:
            if c.id in diff.download:
                users.setdefault(new.chunks[c.id].block, set()).add(path)

    def alternative(p: PatchEntry) -> float:
        target = new.file(p.path)
        assert target is not None
        return sum(chunk_share(new, c.id, c.size) for c in target.chunks if c.id in diff.download)

    def cost(chosen: set[str]) -> int:
        blocks = sum(new.blocks[b].stored_size for b, paths in users.items() if not paths <= chosen)
        return blocks + sum(p.patch_size for p in candidates if p.path in chosen)

    # greedy from nothing: each patch must pay for itself with the blocks it frees
    greedy: set[str] = set()
    for p in sorted(candidates, key=lambda p: alternative(p) - p.patch_size, reverse=True):
        if cost(greedy | {p.path}) < cost(greedy):
            greedy.add(p.path)
    # pruning from everything: patches that free a block only together (one block shared by
    # several changed files) are found here
    pruned = {p.path for p in candidates}
    improved = True
    while improved:
        improved = False
        for p in sorted(candidates, key=lambda p: p.patch_size, reverse=True):
            if p.path in pruned and cost(pruned - {p.path}) <= cost(pruned):
                pruned.discard(p.path)
                improved = True
    best = min((greedy, pruned), key=cost)
    return {p.path: p for p in candidates if p.path in best}


def update_cost(old: Manifest, new: Manifest, delta: DeltaIndex | None,
                diff: ManifestDiff | None = None) -> UpdateCost:
    """What an update costs: the one computation the backend reports (``updates/check``) and
    the engine plans by (``engine.core.updateplan.plan_update``)."""
    diff = diff or diff_manifests(old, new)
    patches = choose_patches(old, new, diff, delta)
    need: set[str] = set()
    reused = 0
    write = 0
    for path in diff.rebuilt:
        f = new.file(path)
        assert f is not None
        write += f.size
        if path in patches:
            continue
        for c in f.chunks:
            if c.id in diff.download:
                need.add(c.id)
            else:
                reused += c.size
    for m in diff.moved:
        f = new.file(m.target)
        write += f.size if f is not None else 0
    chunk_bytes = blocks_bytes(new, blocks_for(new, need))
    patch_bytes = sum(p.patch_size for p in patches.values())
    return UpdateCost(
        download_bytes=chunk_bytes + patch_bytes,
        chunk_bytes=chunk_bytes,
        patch_bytes=patch_bytes,
        reused_bytes=reused,
        write_bytes=write,
        full_bytes=install_bytes(new),
        patches=tuple(patches[path] for path in sorted(patches)),
    )


def doc_update_cost(old: Manifest, new: Manifest, doc: UpdateDoc, doc_size: int,
                    diff: ManifestDiff | None = None) -> tuple[int, UpdateCost]:
    """(bytes an engine fetches, the plan's cost) for an update through a format-3 document:
    the new manifest's signature, the document (inline patches included), the blocks and the
    chosen patches that are separate files."""
    from patcher.signing import SIGNATURE_SIZE

    cost = update_cost(old, new, as_delta_index(doc, old, new), diff)
    inline = {p.patch_id for p in doc.patches if p.data is not None}
    external = sum(p.patch_size for p in cost.patches if p.patch_id not in inline)
    return SIGNATURE_SIZE + doc_size + cost.chunk_bytes + external, cost
