"""Manifest diff (patcher.diff) and update sizing (patcher.sizing) over real published builds."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest

from backend.democatalog import generate
from patcher.deltaindex import DeltaIndex
from patcher.diff import ChunkSource, ManifestDiff, Move, chunk_sources, diff_manifests
from patcher.manifest import Block, ChunkEntry, ChunkLocation, Codec, FileEntry, Manifest
from patcher.publish import publish
from patcher.sizing import (
    blocks_bytes,
    blocks_for,
    choose_patches,
    chunk_share,
    install_bytes,
    update_cost,
)
from patcher.store import Store
from testing.testdata import KiB, MiB, rand, text


def write_build(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def old_files() -> dict[str, bytes]:
    change = rand(3, 1 * MiB)
    return {
        "keep.txt": text(1, 120 * KiB),
        "assets/common.dat": rand(2, 400 * KiB),
        "rename_me.bin": rand(4, 300 * KiB),
        "gone.txt": text(5, 40 * KiB),
        "change.bin": change,
        "lib/a.so": rand(6, 200 * KiB),
        "x.txt": b"content X\n" * 100,
        "y.txt": b"content Y\n" * 100,
        "e1": b"",
    }


def new_files() -> dict[str, bytes]:
    old = old_files()
    change = old["change.bin"]
    lib = bytearray(old["lib/a.so"])
    lib[100 * KiB : 100 * KiB + 16] = b"PATCHED-16-BYTES"
    return {
        "keep.txt": old["keep.txt"],
        "assets/common.dat": old["assets/common.dat"],
        "renamed/moved.bin": old["rename_me.bin"],
        "copies/keep-copy.txt": old["keep.txt"],
        "change.bin": change[: 512 * KiB] + b"inserted bytes" * 50 + change[512 * KiB :],
        "lib/a.so": bytes(lib),
        # a new file: the tail of an old file followed by fresh bytes
        "added.dat": old["assets/common.dat"][100 * KiB :] + rand(7, 200 * KiB),
        "brand_new.bin": rand(8, 250 * KiB),
        "x.txt": old["y.txt"],  # swapped contents
        "y.txt": old["x.txt"],
        "e2": b"",
    }


@dataclass
class Pair:
    store: Store
    old_build: Path
    new_build: Path
    old: Manifest
    new: Manifest
    diff: ManifestDiff


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("diff")
    ob = write_build(base / "old", old_files())
    nb = write_build(base / "new", new_files())
    s = Store(base / "store")
    publish(s, "p", "1", ob, workers=1, patch_previous=0)
    publish(s, "p", "2", nb, workers=1, patch_previous=0)
    old, new = s.read_manifest("p", "1"), s.read_manifest("p", "2")
    yield Pair(s, ob, nb, old, new, diff_manifests(old, new))
    s.close()


# -- classification ------------------------------------------------------------------------------


def test_classification(pair: Pair) -> None:
    d = pair.diff
    assert sorted(d.unchanged) == ["assets/common.dat", "keep.txt"]
    assert sorted(d.moved, key=lambda m: m.target) == [
        Move("keep.txt", "copies/keep-copy.txt"),
        Move("e1", "e2"),
        Move("rename_me.bin", "renamed/moved.bin"),
        Move("y.txt", "x.txt"),
        Move("x.txt", "y.txt"),
    ]
    assert sorted(d.removed) == ["e1", "gone.txt", "rename_me.bin"]
    assert sorted(d.changed) == ["change.bin", "lib/a.so"]
    assert sorted(d.added) == ["added.dat", "brand_new.bin"]
    assert d.rebuilt == d.changed + d.added


def test_every_new_file_is_classified_once(pair: Pair) -> None:
    d = pair.diff
    targets = list(d.unchanged) + [m.target for m in d.moved] + list(d.changed) + list(d.added)
    assert sorted(targets) == sorted(f.path for f in pair.new.files)
    new_paths = {f.path for f in pair.new.files}
    assert sorted(d.removed) == sorted(f.path for f in pair.old.files if f.path not in new_paths)


def test_moved_files_are_not_downloaded(pair: Pair) -> None:
    d = pair.diff
    for m in d.moved:
        src, target = pair.old.file(m.source), pair.new.file(m.target)
        assert src is not None and target is not None
        assert src.hash_sha256 == target.hash_sha256 and src.size == target.size
        assert m.target not in d.rebuilt
    renamed = pair.new.file("renamed/moved.bin")
    assert renamed is not None and renamed.chunks
    assert not {c.id for c in renamed.chunks} & (set(d.download) | set(d.reusable))
    cost = update_cost(pair.old, pair.new, None)
    assert "renamed/moved.bin" not in cost.patched_files


def test_reusable_chunks_point_at_real_bytes_of_the_old_version(pair: Pair) -> None:
    d = pair.diff
    assert d.reusable
    old_chunks = {(f.path, c.offset): c for f in pair.old.files for c in f.chunks}
    for cid, src in d.reusable.items():
        assert isinstance(src, ChunkSource)
        row = old_chunks.get((src.path, src.offset))
        assert row is not None, f"{src} is not a chunk of the old manifest"
        assert row.id == cid and row.size == src.size
        with (pair.old_build / src.path).open("rb") as fh:
            fh.seek(src.offset)
            data = fh.read(src.size)
        assert len(data) == src.size
        assert blake3.blake3(data).hexdigest() == cid


def test_reuse_across_files(pair: Pair) -> None:
    """added.dat reuses the tail of assets/common.dat; change.bin most of itself."""
    d = pair.diff
    added = pair.new.file("added.dat")
    assert added is not None
    sources = {d.reusable[c.id].path for c in added.chunks if c.id in d.reusable}
    assert sources == {"assets/common.dat"}
    reused = sum(c.size for c in added.chunks if c.id in d.reusable)
    assert reused >= 200 * KiB
    change = pair.new.file("change.bin")
    assert change is not None
    reused = sum(c.size for c in change.chunks if c.id in d.reusable)
    assert reused >= change.size * 0.75
    brand_new = pair.new.file("brand_new.bin")
    assert brand_new is not None
    assert all(c.id in d.download for c in brand_new.chunks)


def test_download_set_excludes_everything_the_old_version_has(pair: Pair) -> None:
    d = pair.diff
    old_ids = {c.id for f in pair.old.files for c in f.chunks}
    rebuilt = [pair.new.file(p) for p in d.rebuilt]
    needed = {c.id: c.size for f in rebuilt if f is not None for c in f.chunks}
    assert d.download
    assert not set(d.download) & old_ids
    assert set(d.download) | set(d.reusable) == set(needed)
    assert not set(d.download) & set(d.reusable)
    assert set(d.reusable) == set(needed) & old_ids
    assert all(d.download[cid] == needed[cid] for cid in d.download)
    assert d.download_bytes == sum(needed[cid] for cid in d.download)
    # the new chunks are exactly what the publisher stored for the new version
    assert set(d.download) <= set(pair.new.chunks) - set(pair.old.chunks)


def test_chunk_sources_is_the_first_occurrence(pair: Pair) -> None:
    src = chunk_sources(pair.old)
    first: dict[str, tuple[str, int]] = {}
    for f in pair.old.files:
        for c in f.chunks:
            first.setdefault(c.id, (f.path, c.offset))
    assert {cid: (s.path, s.offset) for cid, s in src.items()} == first


def test_diff_with_itself(pair: Pair) -> None:
    d = diff_manifests(pair.new, pair.new)
    assert sorted(d.unchanged) == sorted(f.path for f in pair.new.files)
    assert (d.moved, d.removed, d.changed, d.added) == ((), (), (), ())
    assert d.reusable == {} and d.download == {} and d.download_bytes == 0


def test_diff_from_nothing_downloads_everything(pair: Pair) -> None:
    empty = Manifest("p", "0", (), (), {})
    d = diff_manifests(empty, pair.new)
    assert sorted(d.added) == sorted(f.path for f in pair.new.files)
    assert d.reusable == {}
    assert d.download == pair.new.chunk_sizes()
    back = diff_manifests(pair.new, empty)
    assert sorted(back.removed) == sorted(f.path for f in pair.new.files)
    assert back.download == {} and back.rebuilt == ()


def test_diff_is_pure_over_hand_made_manifests() -> None:
    """No store needed: manifests whose packs do not exist diff the same way."""

    def cid(n: int) -> str:
        return hashlib.sha256(bytes([n])).hexdigest()

    def manifest(version: str, files: dict[str, list[tuple[int, int]]]) -> Manifest:
        entries = []
        locs: dict[str, ChunkLocation] = {}
        for path, rows in files.items():
            chunks, off = [], 0
            for n, size in rows:
                chunks.append(ChunkEntry(off, size, cid(n)))
                locs.setdefault(cid(n), ChunkLocation(0, 0))
                off += size
            sha = hashlib.sha256(repr(rows).encode()).hexdigest()
            entries.append(FileEntry(path, off, 0o644, sha, tuple(chunks)))
        return Manifest("p", version, tuple(entries), (Block("f" * 64, 0, 10, 10, Codec.RAW),), locs)

    old = manifest("1", {"a": [(1, 100), (2, 50)], "b": [(3, 70)], "c": [(4, 10)]})
    new = manifest("2", {"a": [(1, 100), (5, 60)], "b2": [(3, 70)], "d": [(2, 50), (6, 5)]})
    d = diff_manifests(old, new)
    assert d.changed == ("a",) and d.added == ("d",) and d.moved == (Move("b", "b2"),)
    assert sorted(d.removed) == ["b", "c"] and d.unchanged == ()
    assert d.reusable == {cid(1): ChunkSource("a", 0, 100), cid(2): ChunkSource("a", 100, 50)}
    assert d.download == {cid(5): 60, cid(6): 5}
    assert diff_manifests(old, new) == d  # deterministic, inputs untouched
    assert old.files[0].chunks[1].id == cid(2)


# -- sizing --------------------------------------------------------------------------------------


def test_update_cost_without_patches(pair: Pair) -> None:
    cost = update_cost(pair.old, pair.new, None)
    d = pair.diff
    assert cost.patched_files == () and cost.patch_bytes == 0
    assert cost.full_bytes == install_bytes(pair.new)
    assert cost.download_bytes == cost.chunk_bytes
    assert cost.chunk_bytes == blocks_bytes(pair.new, blocks_for(pair.new, d.download))
    assert 0 < cost.download_bytes < cost.full_bytes
    rebuilt = [pair.new.file(p) for p in d.rebuilt]
    moved = [pair.new.file(m.target) for m in d.moved]
    assert cost.write_bytes == sum(f.size for f in rebuilt + moved if f is not None)
    reused = sum(c.size for f in rebuilt if f is not None for c in f.chunks
                 if c.id not in d.download)
    assert cost.reused_bytes == reused > 0


def test_install_bytes_counts_each_block_once(pair: Pair) -> None:
    for m in (pair.old, pair.new):
        used = {loc.block for loc in m.chunks.values()}
        assert used == set(range(len(m.blocks)))
        assert install_bytes(m) == sum(m.blocks[i].stored_size for i in used)
        assert install_bytes(m) == blocks_bytes(m, range(len(m.blocks)))
    # a first version uses all of its blocks: the chunk shares add up to the install
    shares = sum(chunk_share(pair.old, cid, size) for cid, size in pair.old.chunk_sizes().items())
    assert shares == pytest.approx(install_bytes(pair.old))
    # a later version also references old blocks holding chunks it no longer uses
    shares = sum(chunk_share(pair.new, cid, size) for cid, size in pair.new.chunk_sizes().items())
    assert shares < install_bytes(pair.new)


def test_small_change_costs_less_than_a_full_install(tmp_path: Path) -> None:
    files = {"big.txt": text(1, 2 * MiB), "tex.dds": rand(2, 2 * MiB), "cfg.ini": b"a = 1\n" * 50}
    b1 = write_build(tmp_path / "b1", files)
    files["cfg.ini"] = b"a = 2\n" * 50
    big = files["big.txt"]
    files["big.txt"] = big[:1 * MiB] + b"one more line\n" + big[1 * MiB :]
    b2 = write_build(tmp_path / "b2", files)
    s = Store(tmp_path / "store")
    try:
        publish(s, "p", "1", b1, workers=1, patch_previous=0)
        publish(s, "p", "2", b2, workers=1, patch_previous=0)
        old, new = s.read_manifest("p", "1"), s.read_manifest("p", "2")
    finally:
        s.close()
    cost = update_cost(old, new, None)
    assert cost.download_bytes <= cost.full_bytes
    assert cost.download_bytes < cost.full_bytes / 4
    assert cost.reused_bytes > 1 * MiB


def test_identical_versions_cost_nothing(tmp_path: Path) -> None:
    b = write_build(tmp_path / "b", {"a.bin": rand(1, 600 * KiB), "t.txt": text(2, 300 * KiB)})
    s = Store(tmp_path / "store")
    try:
        publish(s, "p", "1", b, workers=1)
        r = publish(s, "p", "2", b, workers=1)
        assert r.new_chunks == 0
        old, new = s.read_manifest("p", "1"), s.read_manifest("p", "2")
        delta = s.read_delta("p", "1", "2")
    finally:
        s.close()
    assert delta is not None and delta.patches == ()
    for d in (delta, None):
        cost = update_cost(old, new, d)
        assert (cost.download_bytes, cost.chunk_bytes, cost.patch_bytes) == (0, 0, 0)
        assert (cost.write_bytes, cost.reused_bytes, cost.patched_files) == (0, 0, ())
        assert cost.full_bytes == install_bytes(new) > 0


# -- sizing with real patches (demo catalog) -----------------------------------------------------


@dataclass
class Demo:
    old: Manifest
    new: Manifest
    delta: DeltaIndex


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    base = tmp_path_factory.mktemp("demo")
    generate(base / "builds", size_mb=2)
    s = Store(base / "store")
    try:
        for v in ("1.0.0", "1.1.0"):
            publish(s, "star-courier", v, base / "builds" / "star-courier" / v, workers=1)
        delta = s.read_delta("star-courier", "1.0.0", "1.1.0")
        assert delta is not None
        yield Demo(s.read_manifest("star-courier", "1.0.0"),
                   s.read_manifest("star-courier", "1.1.0"), delta)
    finally:
        s.close()


def test_recompiled_executable_is_patched(demo: Demo) -> None:
    assert any(p.path == "bin/star-courier" for p in demo.delta.patches)
    with_patches = update_cost(demo.old, demo.new, demo.delta)
    without = update_cost(demo.old, demo.new, None)
    assert "bin/star-courier" in with_patches.patched_files
    assert with_patches.patch_bytes == sum(
        p.patch_size for p in demo.delta.patches if p.path in with_patches.patched_files
    )
    assert with_patches.download_bytes == with_patches.chunk_bytes + with_patches.patch_bytes
    assert without.download_bytes <= without.full_bytes
    assert with_patches.download_bytes <= with_patches.full_bytes
    assert with_patches.chunk_bytes <= without.chunk_bytes
    assert with_patches.write_bytes == without.write_bytes


def test_patches_never_make_an_update_bigger(demo: Demo) -> None:
    with_patches = update_cost(demo.old, demo.new, demo.delta)
    without = update_cost(demo.old, demo.new, None)
    assert with_patches.download_bytes <= without.download_bytes


def test_chosen_patches_make_the_update_smaller(demo: Demo) -> None:
    """Patches are chosen together (a patch pays for the stored blocks it frees, and small files
    sharing a block free it only jointly), so no single patch is held to its own chunks' share:
    what must hold is that the chosen set downloads less than chunks alone."""
    d = diff_manifests(demo.old, demo.new)
    chosen = choose_patches(demo.old, demo.new, d, demo.delta)
    assert "bin/star-courier" in chosen
    for path in chosen:
        assert demo.new.file(path) is not None and path in d.rebuilt
    with_patches = update_cost(demo.old, demo.new, demo.delta)
    chunks_only = update_cost(demo.old, demo.new, None)
    assert set(with_patches.patched_files) == set(chosen)
    assert with_patches.download_bytes < chunks_only.download_bytes


def test_stale_or_useless_patches_are_not_chosen(demo: Demo) -> None:
    d = diff_manifests(demo.old, demo.new)
    exe = next(p for p in demo.delta.patches if p.path == "bin/star-courier")

    def only(entry: object) -> DeltaIndex:
        return dataclasses.replace(demo.delta, patches=(entry,))  # type: ignore[arg-type]

    assert "bin/star-courier" in choose_patches(demo.old, demo.new, d, only(exe))
    stale_from = dataclasses.replace(exe, from_sha256="0" * 64)
    stale_to = dataclasses.replace(exe, to_sha256="0" * 64)
    too_big = dataclasses.replace(exe, patch_size=10 * exe.to_size)
    unknown = dataclasses.replace(exe, path="no/such/file")
    for entry in (stale_from, stale_to, too_big, unknown):
        assert choose_patches(demo.old, demo.new, d, only(entry)) == {}
        assert "bin/star-courier" not in update_cost(demo.old, demo.new, only(entry)).patched_files
    assert choose_patches(demo.old, demo.new, d, None) == {}


def test_demo_update_classification(demo: Demo) -> None:
    d = diff_manifests(demo.old, demo.new)
    assert "bin/star-courier" in d.changed
    assert Move("lib/libphysics.so", "lib/plugins/libphysics.so") in d.moved
    assert "lib/libphysics.so" in d.removed
    old_ids = {c.id for f in demo.old.files for c in f.chunks}
    assert not set(d.download) & old_ids
    cost = update_cost(demo.old, demo.new, demo.delta)
    assert cost.download_bytes < cost.full_bytes / 2


def test_the_engines_plan_fetches_exactly_what_the_backend_quoted(demo: Demo) -> None:
    """One cost computation: the engine's update plan needs exactly the blocks (and patches)
    that ``update_cost`` — the backend's ``updates/check`` figure — counted."""
    from engine.core.updateplan import BuildMethod, plan_update
    from patcher.sizing import blocks_bytes, blocks_for

    for delta in (demo.delta, None):
        cost = update_cost(demo.old, demo.new, delta)
        plan = plan_update(demo.old, demo.new, delta)
        assert plan.download_bytes == cost.download_bytes
        assert blocks_bytes(demo.new, blocks_for(demo.new, plan.fetch)) == cost.chunk_bytes
        patched = sorted(demo.new.files[b.file_index].path for b in plan.builds
                         if b.method is BuildMethod.PATCH)
        assert tuple(patched) == cost.patched_files
