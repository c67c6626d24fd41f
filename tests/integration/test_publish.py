"""The publisher and the content format it writes (patcher.publish, packs, store, signing).

Real build folders in tmp_path, a real store, real zstd/BLAKE3/Ed25519/bsdiff: no mocks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
import zstandard

from backend.democatalog import LAUNCHER_BUILD, generate
from patcher.chunking import CHUNK_MAX
from patcher.delta import PatchMethod, apply_patch
from patcher.deltaindex import EMPTY_SHA256
from patcher.errors import ManifestError, PublishError
from patcher.manifest import (
    Codec,
    LaunchEntry,
    Manifest,
    SaveLocation,
    SaveRoot,
    decode_manifest,
    is_binary_manifest,
)
from patcher.packs import (
    BLOCK_TARGET_RAW,
    PackWriter,
    compress_block,
    decompress_block,
)
from patcher.publish import BUILD_METADATA, PublishReport, publish
from patcher.signing import generate_key, load_public_key, load_signed_manifest, verify_signature
from patcher.store import BlockReader, Store
from testing.testdata import KiB, MiB, rand, text
from tests.conftest import cli

METADATA = {
    "launch": [
        {"name": "Play", "executable": "bin/game", "arguments": ["--fullscreen", "-x"],
         "working_dir": "bin"},
        {"name": "Editor", "executable": "tools/editor.sh"},
    ],
    "saves": [
        {"root": "install", "path": "saves", "include": ["*.sav"], "exclude": ["tmp*"]},
        {"root": "data_home", "path": "Alpha/profiles"},
    ],
}


# -- data and helpers ----------------------------------------------------------------------------




def write_build(root: Path, files: dict[str, bytes], *, executables: tuple[str, ...] = (),
                dirs: tuple[str, ...] = (), metadata: dict[str, object] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, 0o755 if rel in executables else 0o644)
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    if metadata is not None:
        (root / BUILD_METADATA).write_text(json.dumps(metadata))
    return root


def base_files() -> dict[str, bytes]:
    shared = text(10, 300 * KiB)
    return {
        "bin/game": rand(1, 600 * KiB) + text(2, 200 * KiB),
        "tools/editor.sh": b"#!/bin/sh\necho editor\n",
        "data/random.bin": rand(3, 1536 * KiB),
        "data/text.txt": text(4, 1 * MiB),
        "data/shared.txt": shared,
        "data/copy of shared.txt": shared,  # duplicate content, a name with spaces
        "empty.txt": b"",
        "sub/dir/nested.cfg": b"[section]\nkey = value\n" * 20,
        "sub/launcher-build.json": b'{"not": "the root metadata"}',
    }


def small_files() -> dict[str, bytes]:
    """A quick build with the same layout as base_files (a few hundred KB)."""
    shared = text(10, 20 * KiB)
    return {
        "bin/game": rand(1, 100 * KiB),
        "tools/editor.sh": b"#!/bin/sh\necho editor\n",
        "data/random.bin": rand(3, 150 * KiB),
        "data/text.txt": text(4, 100 * KiB),
        "data/shared.txt": shared,
        "empty.txt": b"",
        "sub/dir/nested.cfg": b"[section]\nkey = value\n" * 20,
    }


BASE_DIRS = ("mods", "saves/slots/deep", "sub/emptyfolder")
BASE_EXEC = ("bin/game", "tools/editor.sh")


def files_on_disk(build: Path) -> dict[str, Path]:
    return {
        p.relative_to(build).as_posix(): p
        for p in sorted(build.rglob("*"))
        if p.is_file() and p.relative_to(build).as_posix() != BUILD_METADATA
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cdn_snapshot(store: Store) -> dict[str, bytes]:
    """Every file the CDN serves, with its bytes."""
    return {
        p.relative_to(store.cdn).as_posix(): p.read_bytes()
        for p in sorted(store.cdn.rglob("*"))
        if p.is_file()
    }


def pack_listing(store: Store, product: str) -> list[str]:
    folder = store.path(f"{product}/packs")
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def manifest_bytes(store: Store, product: str, version: str) -> tuple[bytes, bytes]:
    p = store.path(store.manifest_rel(product, version))
    return p.read_bytes(), p.with_suffix(".sig").read_bytes()


def assert_extracts(store: Store, manifest: Manifest, build: Path, dest: Path) -> None:
    """Every file of the manifest rebuilt from the store is byte-identical to the build's."""
    reader = BlockReader(store, manifest)
    on_disk = files_on_disk(build)
    assert sorted(f.path for f in manifest.files) == sorted(on_disk)
    for f in manifest.files:
        out = dest / f.path
        reader.extract(f.path, out)
        data = out.read_bytes()
        source = on_disk[f.path].read_bytes()
        assert len(data) == f.size == len(source)
        assert sha256(data) == f.hash_sha256 == sha256(source), f.path
        assert data == source


@dataclass
class Published:
    store: Store
    build: Path
    report: PublishReport
    manifest: Manifest
    product: str = "alpha"
    version: str = "1.0"


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    base = tmp_path_factory.mktemp("published")
    build = write_build(base / "build", base_files(), executables=BASE_EXEC, dirs=BASE_DIRS,
                        metadata=METADATA)
    s = Store(base / "store")
    report = publish(s, "alpha", "1.0", build, workers=1)
    yield Published(s, build, report, s.read_manifest("alpha", "1.0"))
    s.close()


# -- a first publish -----------------------------------------------------------------------------


def test_report_of_a_first_publish(published: Published) -> None:
    r, m = published.report, published.manifest
    files = files_on_disk(published.build)
    assert (r.product_id, r.version_id, r.already_published) == ("alpha", "1.0", False)
    assert r.files == len(files) == len(m.files)
    assert r.total_bytes == sum(p.stat().st_size for p in files.values()) == m.total_size
    ids = {c.id for f in m.files for c in f.chunks}
    assert r.chunks == len(ids) == len(m.chunks)
    assert r.new_chunks == r.chunks and r.reused_chunks == 0
    packs = published.store.path("alpha/packs")
    assert r.stored_bytes == sum(p.stat().st_size for p in packs.glob("*.pack"))
    assert r.install_bytes == sum(b.stored_size for b in m.blocks)
    assert r.stored_bytes < r.total_bytes  # text compressed, duplicates stored once
    assert r.patches == ()
    d = r.to_dict()
    assert d["new_chunks"] == r.new_chunks and d["patch_bytes"] == 0 and d["patches"] == []
    json.dumps(d)


def test_every_file_reconstructs_byte_for_byte(published: Published, tmp_path: Path) -> None:
    assert_extracts(published.store, published.manifest, published.build, tmp_path / "out")


def test_every_chunk_in_the_store_has_its_blake3_id(published: Published) -> None:
    m = published.manifest
    reader = BlockReader(published.store, m)
    sizes = m.chunk_sizes()
    for cid, size in sizes.items():
        data = reader.chunk(cid, size)
        assert len(data) == size
        assert blake3.blake3(data).hexdigest() == cid


def test_manifest_document_on_disk(published: Published) -> None:
    blob, sig = manifest_bytes(published.store, "alpha", "1.0")
    assert len(sig) == 64
    doc = json.loads(zstandard.ZstdDecompressor().decompress(blob, max_output_size=64 * MiB))
    assert doc["formatVersion"] == 1
    assert (doc["productId"], doc["versionId"]) == ("alpha", "1.0")
    assert doc["createdAt"] and doc["dictionary"] is None
    paths = [f["path"] for f in doc["files"]]
    assert BUILD_METADATA not in paths  # read, not shipped
    assert "sub/launcher-build.json" in paths  # only the build root's file is metadata
    for f in doc["files"]:
        assert set(f) == {"path", "size", "mode", "hash_sha256", "chunks"}
        assert f["mode"] in (0o755, 0o644)
        pos = 0
        for off, size, cid in f["chunks"]:
            assert off == pos and 0 < size <= CHUNK_MAX and len(cid) == 64
            pos += size
        assert pos == f["size"]
    for b in doc["blocks"]:
        assert len(b) == 5 and b[4] in ("raw", "zstd")
    assert set(doc["chunks"]) == {c[2] for f in doc["files"] for c in f["chunks"]}
    assert decode_manifest(blob) == published.manifest


def test_the_binary_form_is_published_signed_and_backfilled(published: Published,
                                                             tmp_path: Path) -> None:
    """Beside the JSON, the manifest's binary form, signed with the same key over its own
    bytes, decoding to the same manifest; a store without it (published before the form
    existed) gets it from ``ensure_binary_manifest``, once."""
    s = published.store
    binary = s.path(s.manifest_bin_rel("alpha", "1.0"))
    sig = s.path(s.manifest_bin_sig_rel("alpha", "1.0"))
    assert is_binary_manifest(binary.read_bytes())
    s.signing_key.public_key().verify(sig.read_bytes(), binary.read_bytes())
    assert decode_manifest(binary.read_bytes()) == published.manifest
    copy = tmp_path / "store"
    shutil.copytree(s.root, copy)
    old = Store(copy)
    try:
        for path in (old.path(old.manifest_bin_rel("alpha", "1.0")),
                     old.path(old.manifest_bin_sig_rel("alpha", "1.0"))):
            path.unlink()
        assert old.read_manifest("alpha", "1.0") == published.manifest  # from the JSON
        assert old.ensure_binary_manifest("alpha", "1.0")
        assert not old.ensure_binary_manifest("alpha", "1.0")
        blob = old.path(old.manifest_bin_rel("alpha", "1.0")).read_bytes()
        old.signing_key.public_key().verify(
            old.path(old.manifest_bin_sig_rel("alpha", "1.0")).read_bytes(), blob)
        assert decode_manifest(blob) == published.manifest
        # a damaged binary form: read past (the JSON's manifest), and written again
        damaged = bytearray(blob)
        damaged[len(damaged) // 2] ^= 1
        old.path(old.manifest_bin_rel("alpha", "1.0")).write_bytes(bytes(damaged))
        assert old.read_manifest("alpha", "1.0") == published.manifest
        assert old.ensure_binary_manifest("alpha", "1.0")
        assert old.path(old.manifest_bin_rel("alpha", "1.0")).read_bytes() == blob
        # a version whose JSON (the canonical document) fails its signature is not read, however
        # sound its binary form
        json_sig = old.path(old.manifest_rel("alpha", "1.0")).with_suffix(".sig")
        json_sig.write_bytes(bytes(64))
        with pytest.raises(ManifestError) as info:
            old.read_manifest("alpha", "1.0")
        assert info.value.code == "MANIFEST_SIGNATURE_INVALID"
    finally:
        old.close()


def test_metadata_is_read_into_launch_and_saves(published: Published) -> None:
    m = published.manifest
    assert m.launch == (
        LaunchEntry("Play", "bin/game", ("--fullscreen", "-x"), "bin"),
        LaunchEntry("Editor", "tools/editor.sh", (), ""),
    )
    assert m.saves == (
        SaveLocation(SaveRoot.INSTALL, "saves", ("*.sav",), ("tmp*",)),
        SaveLocation(SaveRoot.DATA_HOME, "Alpha/profiles", ("*",), ()),
    )
    assert m.file(BUILD_METADATA) is None


def test_empty_directories_are_recorded(published: Published) -> None:
    # only leaf folders that are empty; folders holding files or folders are implied
    assert sorted(published.manifest.dirs) == sorted(BASE_DIRS)


def test_executable_bit_is_kept(published: Published) -> None:
    modes = {f.path: f.mode for f in published.manifest.files}
    for path, mode in modes.items():
        assert mode == (0o755 if path in BASE_EXEC else 0o644), path


def test_empty_file_and_duplicates(published: Published) -> None:
    m = published.manifest
    empty = m.file("empty.txt")
    assert empty is not None
    assert empty.size == 0 and empty.chunks == () and empty.hash_sha256 == sha256(b"")
    a, b = m.file("data/shared.txt"), m.file("data/copy of shared.txt")
    assert a is not None and b is not None
    assert a.chunks == b.chunks and a.hash_sha256 == b.hash_sha256


def test_each_chunk_is_stored_once(published: Published) -> None:
    m = published.manifest
    raw_total = sum(b.raw_size for b in m.blocks)
    assert raw_total == sum(m.chunk_sizes().values())
    assert published.report.new_chunks == len(m.chunk_sizes())


def test_signature_verifies_with_the_store_key_only(published: Published, tmp_path: Path) -> None:
    blob, sig = manifest_bytes(published.store, "alpha", "1.0")
    pub = load_public_key(published.store.public_key_hex)
    assert load_signed_manifest(blob, sig, pub) == published.manifest
    with pytest.raises(ManifestError) as exc:
        load_signed_manifest(blob, sig, generate_key().public_key())
    assert exc.value.code == "MANIFEST_SIGNATURE_INVALID"
    tampered = bytearray(blob)
    tampered[len(tampered) // 2] ^= 1
    with pytest.raises(ManifestError) as exc:
        load_signed_manifest(bytes(tampered), sig, pub)
    assert exc.value.code == "MANIFEST_SIGNATURE_INVALID"
    with pytest.raises(ManifestError) as exc:
        load_signed_manifest(blob, sig[:63], pub)
    assert exc.value.code == "MANIFEST_SIGNATURE_INVALID"


def test_signing_key_is_private_and_stable(published: Published) -> None:
    key = published.store.root / "signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    assert not any(p.name == "signing.key" for p in published.store.cdn.rglob("*"))
    again = Store(published.store.root)
    try:
        assert again.public_key_hex == published.store.public_key_hex
        assert again.read_manifest("alpha", "1.0") == published.manifest
    finally:
        again.close()


def test_pack_files_are_named_by_blake3_of_their_content(published: Published) -> None:
    packs = published.store.path("alpha/packs")
    names = [p for p in packs.iterdir()]
    assert names and all(p.suffix == ".pack" for p in names), "no temp files may be left"
    for p in names:
        assert blake3.blake3(p.read_bytes()).hexdigest() == p.stem
    assert {b.pack for b in published.manifest.blocks} == {p.stem for p in names}


def test_blocks_tile_the_packs(published: Published) -> None:
    by_pack: dict[str, list[tuple[int, int]]] = {}
    for b in published.manifest.blocks:
        by_pack.setdefault(b.pack, []).append((b.offset, b.stored_size))
    for pack, blocks in by_pack.items():
        size = published.store.path(published.store.pack_rel("alpha", pack)).stat().st_size
        pos = 0
        for off, stored in sorted(blocks):
            assert off == pos
            pos += stored
        assert pos == size


def test_blocks_group_chunks_in_file_order(published: Published) -> None:
    m = published.manifest
    # at most about 1 MiB of raw data per block (a file with much new data gets blocks of its
    # own, so blocks may end early at a file boundary)
    for b in m.blocks:
        assert 0 < b.raw_size < BLOCK_TARGET_RAW + CHUNK_MAX
    assert sum(b.raw_size >= BLOCK_TARGET_RAW for b in m.blocks) >= len(m.blocks) // 3
    # chunks sit in the blocks in first-use order, across file boundaries, tiling each block
    order = []
    seen: set[str] = set()
    for f in m.files:
        for c in f.chunks:
            if c.id not in seen:
                seen.add(c.id)
                loc = m.chunks[c.id]
                order.append((loc.block, loc.offset, c.size))
    assert order == sorted(order)
    pos: dict[int, int] = {}
    for block, offset, size in order:
        assert offset == pos.get(block, 0)
        pos[block] = offset + size
    assert [pos[i] for i in range(len(m.blocks))] == [b.raw_size for b in m.blocks]


def test_block_codecs_match_their_bytes(published: Published) -> None:
    for b in published.manifest.blocks:
        path = published.store.path(published.store.pack_rel("alpha", b.pack))
        with path.open("rb") as fh:
            fh.seek(b.offset)
            stored = fh.read(b.stored_size)
        if b.codec is Codec.RAW:
            assert b.stored_size == b.raw_size
        else:
            assert b.codec is Codec.ZSTD
            assert b.stored_size < b.raw_size * 0.97
            params = zstandard.get_frame_parameters(stored)
            assert params.content_size == b.raw_size
        assert len(decompress_block(stored, b.codec, b.raw_size)) == b.raw_size


def test_no_leftovers_in_store(published: Published) -> None:
    leftovers = [p for p in published.store.root.rglob("*") if ".tmp-" in p.name
                 or p.name.startswith(".patchwork-")]
    assert leftovers == []


# -- codecs --------------------------------------------------------------------------------------


def test_incompressible_data_is_stored_raw(store: Store, tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", {"tex.dds": rand(5, 2 * MiB), "snd.ogg": rand(6, 700 * KiB)})
    publish(store, "rnd", "1", build, workers=1)
    m = store.read_manifest("rnd", "1")
    assert m.blocks and all(b.codec is Codec.RAW for b in m.blocks)
    assert all(b.stored_size == b.raw_size for b in m.blocks)
    assert_extracts(store, m, build, tmp_path / "out")


def test_text_is_stored_with_zstd(store: Store, tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", {"a.lua": text(7, 1500 * KiB), "b.ini": text(8, 300 * KiB)})
    r = publish(store, "txt", "1", build, workers=1)
    m = store.read_manifest("txt", "1")
    assert m.blocks and all(b.codec is Codec.ZSTD for b in m.blocks)
    assert r.stored_bytes < r.total_bytes / 2
    assert_extracts(store, m, build, tmp_path / "out")


@pytest.mark.parametrize("level", [1, 3, 9])
def test_compress_block_levels(level: int) -> None:
    noise = rand(level, 256 * KiB)
    data, codec = compress_block(noise, level)
    assert codec is Codec.RAW and data == noise
    words = text(level, 256 * KiB)
    data, codec = compress_block(words, level)
    assert codec is Codec.ZSTD and len(data) < len(words) / 2
    assert decompress_block(data, codec, len(words)) == words


def test_compressible_blocks_get_the_strong_parameters() -> None:
    from patcher.packs import STRONG_PARAMS

    words = text(5, 512 * KiB)
    fast = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(words)
    data, codec = compress_block(words, 3)
    assert codec is Codec.ZSTD and decompress_block(data, codec, len(words)) == words
    strong = zstandard.ZstdCompressor(compression_params=STRONG_PARAMS).compress(words)
    assert len(strong) < len(fast) and data == strong  # one strong pass, no level-3 pass kept


def test_a_block_the_samples_misjudge_still_gets_the_strong_pass() -> None:
    from patcher.packs import PROBE_SAMPLE, PROBE_SAMPLES, STRONG_PARAMS, looks_compressible

    # noise where the probe samples, text everywhere else
    raw = bytearray(text(6, 1 * MiB))
    step = (len(raw) - PROBE_SAMPLE) // (PROBE_SAMPLES - 1)
    for i in range(PROBE_SAMPLES):
        raw[i * step : i * step + PROBE_SAMPLE] = rand(60 + i, PROBE_SAMPLE)
    block = bytes(raw)
    assert not looks_compressible(block)
    data, codec = compress_block(block, 3)
    fast = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(block)
    strong = zstandard.ZstdCompressor(compression_params=STRONG_PARAMS).compress(block)
    assert codec is Codec.ZSTD and data == min(fast, strong, key=len)
    assert decompress_block(data, codec, len(block)) == block


def _store_bytes(store: Store, product: str, version: str) -> tuple[Manifest, dict[str, bytes]]:
    m = store.read_manifest(product, version)
    packs = {p.name: p.read_bytes() for p in store.path(f"{product}/packs").iterdir()}
    return dataclasses.replace(m, created_at=""), packs


def test_the_pipeline_writes_the_same_packs_whatever_its_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks are compressed on threads while the next files are chunked and written in block
    order: one worker with one block in flight, or two with many, give the same bytes."""
    import patcher.publish as pub

    files = {f"f{i:02d}.bin": (text(20 + i, (i % 5) * 90 * KiB + 3 * KiB) + rand(i, 40 * KiB))
             for i in range(14)}
    files["big.pak"] = rand(7, 1200 * KiB) + text(8, 2 * MiB)
    files["copy.pak"] = files["big.pak"]
    files["empty"] = b""
    build = write_build(tmp_path / "b", files)
    results = []
    for name, workers, inflight in (("serial", 1, 1), ("wide", 2, 64 * MiB)):
        monkeypatch.setattr(pub, "INFLIGHT_RAW", inflight)
        st = Store(tmp_path / name)
        try:
            publish(st, "p", "1", build, workers=workers, patch_previous=0)
            results.append(_store_bytes(st, "p", "1"))
            assert_extracts(st, st.read_manifest("p", "1"), build, tmp_path / f"out-{name}")
        finally:
            st.close()
    assert results[0] == results[1]
    assert len(results[0][1]) == 1 and len(results[0][0].blocks) > 5


def test_a_file_cut_short_while_publishing_is_refused(store: Store, tmp_path: Path) -> None:
    """Blocks are read after chunking: a file that changed meanwhile is an error, never a block
    of other bytes under the chunks' ids (the old content is still published elsewhere)."""
    from patcher.publish import _PendingBlock

    f = tmp_path / "shrinks.bin"
    f.write_bytes(rand(1, 100 * KiB))
    block = _PendingBlock(ranges=[(f, 0, 100 * KiB)], raw_size=100 * KiB)
    assert block.read() == f.read_bytes()
    f.write_bytes(rand(1, 50 * KiB))
    with pytest.raises(PublishError) as err:
        block.read()
    assert err.value.code == "BUILD_CHANGED" and "shrinks.bin" in str(err.value)


@pytest.mark.parametrize("change", ["append", "same_size_rewrite"])
def test_a_file_changed_after_it_was_chunked_is_refused_and_nothing_is_recorded(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """Review findings: a file's SHA-256 and its blocks' bytes are read after its chunks, on
    the pool. A file grown meanwhile got a SHA-256 its chunks disagree with (every install of
    it would fail), one rewritten at the same size got other bytes under the chunks' ids.
    The change is made right after the real chunking of that file."""
    import patcher.publish as pub

    build = write_build(tmp_path / "b", {"a.bin": rand(3, 300 * KiB), "b.bin": rand(4, 9 * KiB)})
    real = pub.chunk_refs

    def chunk_then_change(data: object) -> object:
        refs = real(data)  # type: ignore[arg-type]
        target = build / "a.bin"
        if len(refs) > 1 and target.stat().st_size == 300 * KiB:
            if change == "append":
                with target.open("ab") as fh:
                    fh.write(b"more")
            else:
                target.write_bytes(rand(5, 300 * KiB))
        return refs

    monkeypatch.setattr(pub, "chunk_refs", chunk_then_change)
    with pytest.raises(PublishError) as err:
        publish(store, "changing", "1", build, workers=2, patch_previous=0)
    assert err.value.code == "BUILD_CHANGED" and "a.bin" in str(err.value)
    assert store.version("changing", "1") is None
    assert store.lookup_chunks("changing", {"0" * 64}) == {}
    monkeypatch.setattr(pub, "chunk_refs", real)
    publish(store, "changing", "1", build, workers=2, patch_previous=0)  # unchanged now: fine
    assert_extracts(store, store.read_manifest("changing", "1"), build, tmp_path / "out")


def test_higher_level_publishes_the_same_content(store: Store, tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", {"a": text(9, 600 * KiB) + rand(9, 600 * KiB)})
    publish(store, "lvl", "1", build, workers=1, level=9)
    m = store.read_manifest("lvl", "1")
    assert {b.codec for b in m.blocks} <= {Codec.RAW, Codec.ZSTD}
    assert_extracts(store, m, build, tmp_path / "out")


# -- pack writer ---------------------------------------------------------------------------------


def test_pack_writer_rolls_over_and_names_by_content(tmp_path: Path) -> None:
    w = PackWriter(tmp_path / "packs", target_size=100_000)
    parts = [rand(i, 40_000) for i in range(7)]
    placed = [w.append(p, len(p), Codec.RAW) for p in parts]
    names = w.close()
    assert len(names) == 3  # rolls over once a pack reaches the target: 3 + 3 + 1 blocks
    assert [b.pack_slot for b in placed] == [0, 0, 0, 1, 1, 1, 2]
    assert [b.offset for b in placed] == [0, 40_000, 80_000, 0, 40_000, 80_000, 0]
    files = sorted((tmp_path / "packs").iterdir())
    assert [p.name for p in files] == sorted(f"{n}.pack" for n in names)
    for p in files:
        assert blake3.blake3(p.read_bytes()).hexdigest() == p.stem
    for part, b in zip(parts, placed, strict=True):
        with (tmp_path / "packs" / f"{names[b.pack_slot]}.pack").open("rb") as fh:
            fh.seek(b.offset)
            assert fh.read(b.stored_size) == part


def test_pack_writer_identical_pack_is_stored_once(tmp_path: Path) -> None:
    names = []
    for _ in range(2):
        w = PackWriter(tmp_path / "packs")
        w.append(b"same bytes", 10, Codec.RAW)
        names.append(w.close())
    assert names[0] == names[1]
    assert [p.name for p in (tmp_path / "packs").iterdir()] == [f"{names[0][0]}.pack"]


def test_pack_writer_abort_leaves_nothing(tmp_path: Path) -> None:
    w = PackWriter(tmp_path / "packs")
    w.append(b"x" * 1000, 1000, Codec.RAW)
    w.abort()
    assert list((tmp_path / "packs").iterdir()) == []
    assert PackWriter(tmp_path / "empty").close() == []


# -- idempotency and versions --------------------------------------------------------------------


def test_same_build_same_version_is_a_no_op(store: Store, tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", base_files(), executables=BASE_EXEC, dirs=BASE_DIRS,
                        metadata=METADATA)
    first = publish(store, "alpha", "1.0", build, workers=1)
    before = cdn_snapshot(store)
    packs = pack_listing(store, "alpha")
    again = publish(store, "alpha", "1.0", build, workers=1)
    assert again.already_published
    assert (again.new_chunks, again.stored_bytes) == (0, 0)
    assert again.reused_chunks == first.chunks
    assert again.files == first.files and again.total_bytes == first.total_bytes
    assert again.install_bytes == first.install_bytes
    assert pack_listing(store, "alpha") == packs
    assert cdn_snapshot(store) == before  # manifest and signature untouched too
    assert [v.version for v in store.versions("alpha")] == ["1.0"]


def test_a_copy_of_the_build_is_the_same_build(store: Store, tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", small_files(), executables=BASE_EXEC, dirs=BASE_DIRS,
                        metadata=METADATA)
    publish(store, "alpha", "1.0", build, workers=1)
    copy = tmp_path / "copy"
    shutil.copytree(build, copy)
    before = cdn_snapshot(store)
    assert publish(store, "alpha", "1.0", copy, workers=1).already_published
    assert cdn_snapshot(store) == before


def test_same_content_new_version_stores_no_chunks(store: Store, tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", base_files(), executables=BASE_EXEC, dirs=BASE_DIRS,
                        metadata=METADATA)
    first = publish(store, "alpha", "1.0", build, workers=1)
    packs = pack_listing(store, "alpha")
    second = publish(store, "alpha", "1.1", build, workers=1)
    assert not second.already_published
    assert second.new_chunks == 0 and second.stored_bytes == 0
    assert second.reused_chunks == second.chunks == first.chunks
    assert second.install_bytes == first.install_bytes
    assert pack_listing(store, "alpha") == packs
    m1, m2 = store.read_manifest("alpha", "1.0"), store.read_manifest("alpha", "1.1")
    assert m2.version_id == "1.1" and m2.files == m1.files and m2.dirs == m1.dirs
    assert m2.blocks == m1.blocks
    assert [v.version for v in store.versions("alpha")] == ["1.0", "1.1"]
    assert [v.seq for v in store.versions("alpha")] == [1, 2]
    delta = store.read_delta("alpha", "1.0", "1.1")
    assert delta is not None and delta.patches == ()
    assert_extracts(store, m2, build, tmp_path / "out")


def test_new_version_stores_only_new_chunks(store: Store, tmp_path: Path) -> None:
    files = base_files()
    b1 = write_build(tmp_path / "b1", files, executables=BASE_EXEC)
    publish(store, "alpha", "1.0", b1, workers=1)
    files2 = dict(files)
    files2["data/text.txt"] = files["data/text.txt"][:500_000] + b"new line\n" + \
        files["data/text.txt"][500_000:]
    files2["data/new.bin"] = rand(77, 300 * KiB)
    del files2["data/random.bin"]
    b2 = write_build(tmp_path / "b2", files2, executables=BASE_EXEC)
    packs = set(pack_listing(store, "alpha"))
    r = publish(store, "alpha", "2.0", b2, workers=1, patch_previous=0)
    assert store.read_delta("alpha", "1.0", "2.0") is None and r.patches == ()
    m1, m2 = store.read_manifest("alpha", "1.0"), store.read_manifest("alpha", "2.0")
    old_ids = set(m1.chunks)
    new_ids = set(m2.chunks) - old_ids
    assert r.new_chunks == len(new_ids) and r.reused_chunks == len(set(m2.chunks) & old_ids)
    assert 0 < r.new_chunks < r.chunks / 3
    added_packs = set(pack_listing(store, "alpha")) - packs
    assert len(added_packs) == 1
    assert r.stored_bytes == sum(store.path(f"alpha/packs/{p}").stat().st_size for p in added_packs)
    # new chunks live in the new pack, old ones keep pointing to the old packs
    for cid, loc in m2.chunks.items():
        pack = m2.blocks[loc.block].pack
        assert (f"{pack}.pack" in added_packs) == (cid in new_ids)
    # one copy of each chunk per product, whatever version uses it
    blocks = {(b.pack, b.offset): b.raw_size for m in (m1, m2) for b in m.blocks}
    sizes = {**m1.chunk_sizes(), **m2.chunk_sizes()}
    assert sum(blocks.values()) == sum(sizes.values())
    assert_extracts(store, m2, b2, tmp_path / "out2")
    assert_extracts(store, m1, b1, tmp_path / "out1")


def test_unchanged_files_reuse_their_rows_exactly(store: Store, tmp_path: Path) -> None:
    """A file the previous version holds with the same bytes takes its rows from that manifest
    (recognised by the BLAKE3 recorded at its publish): the result is what chunking it gives,
    also for a file moved to another path and one reverted to an older version's bytes."""
    from patcher.chunking import chunk_file

    files = small_files()
    publish(store, "alpha", "1.0", write_build(tmp_path / "b1", files), workers=1)
    files2 = dict(files)
    files2["data/text.txt"] = files["data/text.txt"] + b"more\n"
    files2["moved/random.bin"] = files2.pop("data/random.bin")
    publish(store, "alpha", "2.0", write_build(tmp_path / "b2", files2), workers=2,
            patch_previous=0)
    files3 = dict(files2)
    files3["data/text.txt"] = files["data/text.txt"]  # back to 1.0's bytes (not in 2.0)
    b3 = write_build(tmp_path / "b3", files3)
    publish(store, "alpha", "3.0", b3, workers=2, patch_previous=0)
    m3 = store.read_manifest("alpha", "3.0")
    for f in m3.files:
        cf = chunk_file(b3 / f.path)
        assert (f.size, f.hash_sha256) == (cf.size, cf.sha256), f.path
        assert [(c.offset, c.size, c.id) for c in f.chunks] == \
            [(c.offset, c.size, c.id) for c in cf.chunks], f.path
    assert len(store.known_files("alpha", [blake3.blake3(d).hexdigest()
                                           for d in files3.values()])) == len(set(files3.values()))


def _variant(kind: str, build: Path) -> None:
    if kind == "edited-file":
        (build / "data/text.txt").write_bytes(text(99, 100 * KiB))
    elif kind == "appended-byte":
        with (build / "data/random.bin").open("ab") as fh:
            fh.write(b"!")
    elif kind == "mode-only":
        os.chmod(build / "data/text.txt", 0o755)
    elif kind == "metadata-only":
        (build / BUILD_METADATA).write_text(json.dumps({"launch": [], "saves": []}))
    elif kind == "extra-empty-file":
        (build / "new-empty.txt").write_bytes(b"")
    elif kind == "extra-empty-dir":
        (build / "plugins").mkdir()
    elif kind == "removed-file":
        (build / "sub/dir/nested.cfg").unlink()
    elif kind == "renamed-file":
        (build / "data/shared.txt").rename(build / "data/shared2.txt")
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["edited-file", "appended-byte", "mode-only", "metadata-only", "extra-empty-file",
     "extra-empty-dir", "removed-file", "renamed-file"],
)
def test_other_content_under_an_existing_version_is_refused(
    store: Store, tmp_path: Path, kind: str
) -> None:
    build = write_build(tmp_path / "b", small_files(), executables=BASE_EXEC, dirs=BASE_DIRS,
                        metadata=METADATA)
    publish(store, "alpha", "1.0", build, workers=1)
    manifest = store.read_manifest("alpha", "1.0")
    before = cdn_snapshot(store)
    _variant(kind, build)
    with pytest.raises(PublishError) as exc:
        publish(store, "alpha", "1.0", build, workers=1)
    assert exc.value.code == "VERSION_EXISTS"
    assert cdn_snapshot(store) == before
    assert store.read_manifest("alpha", "1.0") == manifest
    assert [v.version for v in store.versions("alpha")] == ["1.0"]


# -- refused builds ------------------------------------------------------------------------------


def _assert_refused(store: Store, build: Path, code: str, version: str = "1.0") -> PublishError:
    before = cdn_snapshot(store)
    versions = store.versions("alpha")
    with pytest.raises(PublishError) as exc:
        publish(store, "alpha", version, build, workers=1)
    assert exc.value.code == code, exc.value
    assert cdn_snapshot(store) == before, "a refused build must not store anything"
    assert store.versions("alpha") == versions
    return exc.value


@pytest.mark.parametrize("kind", ["file", "dir", "dangling", "nested"])
def test_symlink_in_build_is_refused(store: Store, tmp_path: Path, kind: str) -> None:
    build = write_build(tmp_path / "b", {"a.bin": rand(1, 200 * KiB), "dir/b.txt": b"b"})
    if kind == "file":
        os.symlink(build / "a.bin", build / "link.bin")
    elif kind == "dir":
        os.symlink(build / "dir", build / "linkdir")
    elif kind == "dangling":
        os.symlink(tmp_path / "does-not-exist", build / "dangling")
    else:
        os.symlink("../a.bin", build / "dir" / "up.bin")
    _assert_refused(store, build, "BUILD_SYMLINK")


def test_symlink_refused_on_a_store_with_versions(store: Store, tmp_path: Path) -> None:
    ok = write_build(tmp_path / "ok", {"a.bin": rand(1, 300 * KiB)})
    publish(store, "alpha", "1.0", ok, workers=1)
    bad = write_build(tmp_path / "bad", {"a.bin": rand(2, 300 * KiB), "c.txt": text(3, 50 * KiB)})
    os.symlink(bad / "c.txt", bad / "z-link.txt")  # scanned last: files were already chunkable
    _assert_refused(store, bad, "BUILD_SYMLINK", version="2.0")
    assert store.read_delta("alpha", "1.0", "2.0") is None


def test_special_file_is_refused(store: Store, tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", {"a.bin": rand(1, 100 * KiB)})
    os.mkfifo(build / "pipe")
    _assert_refused(store, build, "BUILD_SPECIAL_FILE")


@pytest.mark.parametrize(
    "name",
    ["CON", "nul.txt", "sub/COM1/x.txt", "LPT9", "a:b", "C:x", "trailing.", "trailing ",
     "tab\tname", "back\\slash", "line\nbreak"],
)
def test_unpublishable_name_is_refused(store: Store, tmp_path: Path, name: str) -> None:
    build = write_build(tmp_path / "b", {"ok.bin": rand(1, 100 * KiB), name: b"payload"})
    _assert_refused(store, build, "BUILD_PATH_INVALID")


@pytest.mark.parametrize("name", ["aux", "deep/prn.d", "dots."])
def test_unpublishable_empty_directory_is_refused(store: Store, tmp_path: Path, name: str) -> None:
    build = write_build(tmp_path / "b", {"ok.bin": b"x"}, dirs=(name,))
    _assert_refused(store, build, "BUILD_PATH_INVALID")


RESERVED_LAYOUTS: dict[str, tuple[dict[str, bytes], tuple[str, ...], dict[str, object] | None, str]] = {
    # name: (files, empty dirs, metadata, the path the error must name)
    "staging-file-under": ({".launcher-staging/x": b"x"}, (), None, ".launcher-staging/x"),
    "staging-task-tree": ({".launcher-staging/task-1/bin/game": rand(7, 80 * KiB)}, (), None,
                          ".launcher-staging/task-1/bin/game"),
    "staging-as-file": ({".launcher-staging": b"not a folder"}, (), None, ".launcher-staging"),
    "staging-empty-dir": ({}, (".launcher-staging",), None, ".launcher-staging"),
    "move-mixed-case": ({".Launcher-Move": b"x"}, (), None, ".Launcher-Move"),
    "nested-upper-case": ({"sub/.LAUNCHER-STAGING/a.txt": b"a"}, (), None,
                          "sub/.LAUNCHER-STAGING/a.txt"),
    "nested-empty-dir": ({}, ("data/.launcher-move",), None, "data/.launcher-move"),
    "launch-executable": ({}, (), {"launch": [{"name": "x", "executable": ".launcher-staging/g"}]},
                          ".launcher-staging/g"),
    "save-path": ({}, (), {"saves": [{"root": "install", "path": ".launcher-saves"}]},
                  ".launcher-saves"),
}


@pytest.mark.parametrize("layout", sorted(RESERVED_LAYOUTS))
def test_reserved_launcher_names_are_refused_before_storing(
    store: Store, tmp_path: Path, layout: str
) -> None:
    """The engine builds files in <install>/.launcher-staging/ and moves through
    <dest>.launcher-move: a build that ships such a name would brick installs (issue 9)."""
    files, dirs, metadata, named = RESERVED_LAYOUTS[layout]
    build = write_build(tmp_path / "b", {"ok.bin": rand(1, 100 * KiB), **files}, dirs=dirs,
                        metadata=metadata)
    err = _assert_refused(store, build, "BUILD_PATH_INVALID")
    assert repr(named) in err.message, err.message
    assert "reserved" in err.message and ".launcher-" in err.message


def test_an_update_adding_a_staging_folder_is_refused(store: Store, tmp_path: Path) -> None:
    """QA's repro: version 2 adds .launcher-staging/...; nothing of it may reach the CDN."""
    v1 = write_build(tmp_path / "v1", small_files(), executables=BASE_EXEC)
    publish(store, "alpha", "1.0", v1, workers=1)
    v2 = tmp_path / "v2"
    shutil.copytree(v1, v2)
    write_build(v2, {"data/new.bin": rand(20, 300 * KiB), ".launcher-staging/t/bin/game": b"x"})
    err = _assert_refused(store, v2, "BUILD_PATH_INVALID", version="2.0")
    assert "'.launcher-staging/t/bin/game'" in err.message
    assert store.read_delta("alpha", "1.0", "2.0") is None
    assert [v.version for v in store.versions("alpha")] == ["1.0"]


def test_names_near_the_reserved_ones_publish(store: Store, tmp_path: Path) -> None:
    files = {"launcher-staging/a": b"a", ".launcher/b": b"b", "data/save.launcher-move": b"c",
             "x.launcher-staging": b"d", ".launcherdata/e": b"e"}
    build = write_build(tmp_path / "b", files)
    publish(store, "alpha", "1.0", build, workers=1)
    assert sorted(f.path for f in store.read_manifest("alpha", "1.0").files) == sorted(files)


def test_too_long_path_is_refused(store: Store, tmp_path: Path) -> None:
    parts = [c * 200 for c in "abcde"] + ["f" * 100]  # 1105 bytes, each segment under NAME_MAX
    build = write_build(tmp_path / "b", {"/".join(parts): b"x"})
    _assert_refused(store, build, "BUILD_PATH_INVALID")


@pytest.mark.parametrize("product,version", [("alpha", "../x"), ("a/b", "1"), ("alpha", ""),
                                             ("-x", "1"), ("alpha", "1 0")])
def test_invalid_ids_are_refused(store: Store, tmp_path: Path, product: str, version: str) -> None:
    build = write_build(tmp_path / "b", {"a": b"a"})
    with pytest.raises(PublishError) as exc:
        publish(store, product, version, build, workers=1)
    assert exc.value.code == "BUILD_ID_INVALID"
    assert cdn_snapshot(store) == {}


def test_missing_build_folder(store: Store, tmp_path: Path) -> None:
    _assert_refused(store, tmp_path / "nope", "BUILD_NOT_FOUND")
    (tmp_path / "file").write_bytes(b"x")
    _assert_refused(store, tmp_path / "file", "BUILD_NOT_FOUND")


@pytest.mark.parametrize(
    "metadata,code",
    [
        ("{not json", "BUILD_METADATA_INVALID"),
        ("[1, 2]", "BUILD_METADATA_INVALID"),
        (json.dumps({"launch": [{"executable": "a"}]}), "BUILD_METADATA_INVALID"),
        (json.dumps({"saves": [{"root": "desktop", "path": "s"}]}), "BUILD_METADATA_INVALID"),
        (json.dumps({"saves": [{"root": "install"}]}), "BUILD_METADATA_INVALID"),
        (json.dumps({"launch": [{"name": "x", "executable": "../a"}]}), "BUILD_PATH_INVALID"),
        (json.dumps({"launch": [{"name": "x", "executable": "CON"}]}), "BUILD_PATH_INVALID"),
        (json.dumps({"saves": [{"root": "install", "path": "/abs"}]}), "BUILD_PATH_INVALID"),
    ],
)
def test_invalid_metadata_is_refused(store: Store, tmp_path: Path, metadata: str, code: str) -> None:
    build = write_build(tmp_path / "b", {"a": rand(1, 50 * KiB)})
    (build / BUILD_METADATA).write_text(metadata)
    _assert_refused(store, build, code)


def test_demo_metadata_round_trips(store: Store, tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", {"game.py": b"print('hi')\n"}, metadata=LAUNCHER_BUILD)
    publish(store, "demo", "1", build, workers=1)
    m = store.read_manifest("demo", "1")
    assert [e.executable for e in m.launch] == [e["executable"] for e in LAUNCHER_BUILD["launch"]]
    assert len(m.saves) == len(LAUNCHER_BUILD.get("saves", []))
    assert [f.path for f in m.files] == ["game.py"]


def test_mode_is_normalised_to_the_executable_bit(store: Store, tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", {"u": b"1", "g": b"2", "o": b"3", "ro": b"4", "rw": b"5"})
    for name, mode in {"u": 0o700, "g": 0o610, "o": 0o601, "ro": 0o400, "rw": 0o666}.items():
        os.chmod(build / name, mode)
    publish(store, "modes", "1", build, workers=1)
    m = store.read_manifest("modes", "1")
    assert {f.path: f.mode for f in m.files} == {
        "u": 0o755, "g": 0o755, "o": 0o755, "ro": 0o644, "rw": 0o644
    }


def test_empty_build_publishes(store: Store, tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", {}, dirs=("only/empty",))
    r = publish(store, "void", "1", build, workers=1)
    m = store.read_manifest("void", "1")
    assert (r.files, r.chunks, r.stored_bytes, r.install_bytes) == (0, 0, 0, 0)
    assert m.files == () and m.blocks == () and m.dirs == ("only/empty",)
    assert pack_listing(store, "void") == []


def test_crash_leftover_temp_pack_does_not_break_publish(store: Store, tmp_path: Path) -> None:
    b1 = write_build(tmp_path / "b1", {"a.bin": rand(1, 500 * KiB), "t.txt": text(1, 400 * KiB)})
    publish(store, "alpha", "1.0", b1, workers=1)
    packs = store.path("alpha/packs")
    leftover = packs / ".tmp-0123456789abcdef"
    leftover.write_bytes(rand(2, 70_000))  # a half-written pack from a killed publisher
    b2 = write_build(tmp_path / "b2", {"a.bin": rand(1, 500 * KiB), "t.txt": text(2, 400 * KiB),
                                       "n.bin": rand(3, 300 * KiB)})
    r = publish(store, "alpha", "2.0", b2, workers=1, patch_previous=0)
    assert r.new_chunks > 0
    m2 = store.read_manifest("alpha", "2.0")
    assert_extracts(store, m2, b2, tmp_path / "out")
    assert leftover.exists() and leftover.read_bytes() == rand(2, 70_000)
    for p in packs.glob("*.pack"):
        assert blake3.blake3(p.read_bytes()).hexdigest() == p.stem
    assert all(b.pack != leftover.name for b in m2.blocks)
    # and republishing both versions still recognises them
    assert publish(store, "alpha", "1.0", b1, workers=1).already_published
    assert publish(store, "alpha", "2.0", b2, workers=1).already_published


def test_missing_chunk_under_an_existing_version_is_version_exists(
    store: Store, tmp_path: Path
) -> None:
    """A build whose chunks the store lacks cannot be the published one."""
    b1 = write_build(tmp_path / "b1", {"a.bin": rand(1, 200 * KiB)})
    publish(store, "alpha", "1.0", b1, workers=1)
    b2 = write_build(tmp_path / "b2", {"a.bin": rand(2, 200 * KiB)})
    packs = pack_listing(store, "alpha")
    with pytest.raises(PublishError) as exc:
        publish(store, "alpha", "1.0", b2, workers=1)
    assert exc.value.code == "VERSION_EXISTS"
    assert pack_listing(store, "alpha") == packs


# -- refusals before anything is stored --------------------------------------------------------


@pytest.mark.parametrize("layout", ["files", "file-and-dir"])
def test_case_colliding_names_are_refused_before_storing(
    store: Store, tmp_path: Path, layout: str
) -> None:
    build = write_build(tmp_path / "b", {"A.txt": rand(1, 100 * KiB)})
    if layout == "files":
        (build / "a.txt").write_bytes(b"other")
    else:
        (build / "a.TXT").mkdir()
    before = cdn_snapshot(store)
    with pytest.raises(PublishError) as exc:
        publish(store, "alpha", "1.0", build, workers=1)
    assert exc.value.code in ("BUILD_PATH_INVALID", "BUILD_PATH_COLLISION")
    assert cdn_snapshot(store) == before


def test_non_utf8_name_is_refused(store: Store, tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", {"ok.bin": rand(1, 100 * KiB)})
    (build / os.fsdecode(b"bad\xff.txt")).write_bytes(b"x")
    before = cdn_snapshot(store)
    with pytest.raises(PublishError) as exc:
        publish(store, "alpha", "1.0", build, workers=1)
    assert exc.value.code == "BUILD_PATH_INVALID"
    assert cdn_snapshot(store) == before


@pytest.mark.parametrize("bad", [
    {"launch": [{"name": "x", "executable": "a", "working_dir": "../up"}]},
    {"launch": [{"name": f"x{i}", "executable": "a"} for i in range(65)]},
])
def test_invalid_launch_entries_are_refused_before_storing(
    store: Store, tmp_path: Path, bad: dict[str, object]
) -> None:
    build = write_build(tmp_path / "b", {"a": rand(1, 100 * KiB)}, metadata=bad)
    before = cdn_snapshot(store)
    with pytest.raises(PublishError) as exc:
        publish(store, "alpha", "1.0", build, workers=1)
    assert exc.value.code in ("BUILD_METADATA_INVALID", "BUILD_PATH_INVALID")
    assert cdn_snapshot(store) == before


@pytest.mark.parametrize("bad", [
    {"launch": [{"name": "x", "executable": "a", "arguments": "--fast"}]},
    {"saves": [{"root": "install", "path": "saves", "include": "*.sav"}]},
])
def test_string_instead_of_list_in_metadata_is_refused(
    store: Store, tmp_path: Path, bad: dict[str, object]
) -> None:
    build = write_build(tmp_path / "b", {"a": b"a"}, metadata=bad)
    with pytest.raises(PublishError) as exc:
        publish(store, "alpha", "1.0", build, workers=1)
    assert exc.value.code == "BUILD_METADATA_INVALID"


def test_metadata_that_is_a_directory_is_refused(store: Store, tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", {"a": b"a"}, dirs=(BUILD_METADATA,))
    with pytest.raises(PublishError) as exc:
        publish(store, "alpha", "1.0", build, workers=1)
    assert exc.value.code == "BUILD_METADATA_INVALID"


# -- patches and the delta index (demo catalog) --------------------------------------------------


@dataclass
class DemoStore:
    store: Store
    builds: Path
    reports: dict[str, PublishReport]
    product: str = "star-courier"

    def build(self, version: str) -> Path:
        return self.builds / self.product / version


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStore]:
    base = tmp_path_factory.mktemp("demo")
    generate(base / "builds", size_mb=2)
    s = Store(base / "store")
    reports = {}
    for v, workers in (("1.0.0", 1), ("1.1.0", 2), ("1.2.0", 1)):
        # 1.1.0 with 2 workers: its patches are built in a spawned process pool
        reports[v] = publish(s, "star-courier", v, base / "builds" / "star-courier" / v,
                             workers=workers)
    yield DemoStore(s, base / "builds", reports)
    s.close()


STEPS = [("1.0.0", "1.1.0"), ("1.1.0", "1.2.0"), ("1.0.0", "1.2.0")]


@pytest.mark.parametrize("old_v,new_v", STEPS)
def test_delta_index_patches_apply_exactly(demo: DemoStore, old_v: str, new_v: str,
                                           tmp_path: Path) -> None:
    s, pid = demo.store, demo.product
    delta = s.read_delta(pid, old_v, new_v)
    assert delta is not None
    assert (delta.product_id, delta.from_version, delta.to_version) == (pid, old_v, new_v)
    assert delta.patches, "a recompiled executable and edited paks must yield patches"
    old, new = s.read_manifest(pid, old_v), s.read_manifest(pid, new_v)
    reader = BlockReader(s, old)
    for i, p in enumerate(delta.patches):
        target = new.file(p.path)
        assert target is not None
        old_copy = tmp_path / f"{i}.old"
        if p.source_path is None:  # a new file with no predecessor: a whole-file frame
            assert p.method == "zstd" and old.file(p.path) is None
            assert p.from_sha256 == EMPTY_SHA256
            old_copy.write_bytes(b"")
        else:
            src = old.file(p.source_path)
            assert src is not None
            assert src.hash_sha256 != target.hash_sha256
            assert p.from_sha256 == src.hash_sha256
            reader.extract(p.source_path, old_copy)
        assert (p.to_sha256, p.to_size) == (target.hash_sha256, target.size)
        blob = s.path(s.patch_rel(pid, p.patch_id)).read_bytes()
        assert len(blob) == p.patch_size
        assert blake3.blake3(blob).hexdigest() == p.patch_id
        out = apply_patch(PatchMethod(p.method), old_copy.read_bytes(), blob,
                          old_sha256=p.from_sha256, new_sha256=p.to_sha256, new_size=p.to_size)
        assert sha256(out) == target.hash_sha256
        assert out == (demo.build(new_v) / p.path).read_bytes()


def test_delta_covers_the_recompiled_executable(demo: DemoStore) -> None:
    delta = demo.store.read_delta(demo.product, "1.0.0", "1.1.0")
    assert delta is not None
    by_path = {p.path: p for p in delta.patches}
    exe = by_path.get("bin/star-courier")
    assert exe is not None
    assert exe.source_path == "bin/star-courier"
    new = demo.store.read_manifest(demo.product, "1.1.0")
    f = new.file("bin/star-courier")
    assert f is not None and exe.patch_size < f.size / 5
    assert exe.method in ("bsdiff", "zstd", "hdiffpatch")


@pytest.mark.parametrize("old_v,new_v", STEPS)
def test_update_document_rebuilds_the_signed_manifest(demo: DemoStore, old_v: str, new_v: str,
                                                      tmp_path: Path) -> None:
    """What an engine does with a format-3 document, on the old version's real files: apply its
    patches, chunk and hash the outputs, predict, apply the manifest delta: the result is the
    signed manifest byte for byte, and the document (with the signature) costs less metadata
    than the format-2 way (signed index, its signature, the manifest patch)."""
    from patcher.chunking import chunk_buffer
    from patcher.manifest import compress_manifest_json
    from patcher.updatedoc import apply_manifest_delta, derived_entry, predicted_json

    s, pid = demo.store, demo.product
    old = s.read_manifest(pid, old_v)
    got = s.read_update_doc(pid, old, new_v)
    assert got is not None
    doc, size = got
    assert doc.patches
    reader = BlockReader(s, old)
    rows = []
    for i, p in enumerate(doc.patches):
        old_bytes = b""
        if p.source_path is not None:
            reader.extract(p.source_path, tmp_path / f"{i}.old")
            old_bytes = (tmp_path / f"{i}.old").read_bytes()
            src = old.file(p.source_path)
            assert src is not None
            old_sha = src.hash_sha256
        else:
            old_sha = EMPTY_SHA256
        data = p.data if p.data is not None else s.path(s.patch_rel(pid, p.patch_id)).read_bytes()
        assert blake3.blake3(data).hexdigest() == p.patch_id
        out = apply_patch(PatchMethod(p.method), old_bytes, data, old_sha256=old_sha,
                          new_sha256=None, new_size=p.to_size)
        assert out == (demo.build(new_v) / p.path).read_bytes()
        cf = chunk_buffer(out)
        rows.append(derived_entry(p.path, cf.size, cf.sha256,
                                  [(c.offset, c.size, c.id) for c in cf.chunks], old, p.source_path))
    rebuilt = apply_manifest_delta(predicted_json(old, new_v, rows, doc.blocks, doc.layout),
                                   doc.manifest_delta)
    signed = s.path(s.manifest_rel(pid, new_v)).read_bytes()
    assert compress_manifest_json(rebuilt) == signed
    delta = s.read_delta(pid, old_v, new_v)
    assert delta is not None and delta.manifest_patch is not None
    inline = sum(p.patch_size for p in doc.patches if p.data is not None)
    v2_meta = (s.path(s.delta_v2_rel(pid, old_v, new_v)).stat().st_size + 64 + 64
               + delta.manifest_patch.patch_size)
    assert 64 + size - inline < v2_meta


@pytest.mark.parametrize("version", ["1.1.0", "1.2.0"])
def test_kept_patches_beat_their_chunk_alternative(demo: DemoStore, version: str) -> None:
    r = demo.reports[version]
    assert r.patches
    assert r.patch_seconds >= 0
    for p in r.patches:
        assert 0 < p.size < p.alternative_bytes, p
        assert p.method in ("bsdiff", "zstd", "hdiffpatch")
    # reports and delta indexes agree
    for from_v in {p.from_version for p in r.patches}:
        delta = demo.store.read_delta(demo.product, from_v, version)
        assert delta is not None
        assert sorted((p.path, p.method, p.patch_size) for p in delta.patches) == sorted(
            (p.path, p.method, p.size) for p in r.patches if p.from_version == from_v
        )
    assert r.to_dict()["patch_bytes"] == sum(p.size for p in r.patches)


def test_patches_from_the_previous_two_versions(demo: DemoStore) -> None:
    deltas = sorted(p.name for p in demo.store.path(f"{demo.product}/deltas").glob("*.delta"))
    steps = ["1.0.0--1.1.0", "1.0.0--1.2.0", "1.1.0--1.2.0"]
    assert deltas == sorted([f"{s}.delta" for s in steps] + [f"{s}.v2.delta" for s in steps]
                            + [f"{s}.v3.delta" for s in steps])
    assert demo.store.read_delta(demo.product, "1.1.0", "1.0.0") is None
    assert demo.reports["1.0.0"].patches == ()


def test_demo_versions_reconstruct(demo: DemoStore, tmp_path: Path) -> None:
    for v in ("1.0.0", "1.2.0"):
        m = demo.store.read_manifest(demo.product, v)
        assert_extracts(demo.store, m, demo.build(v), tmp_path / v)
        assert "mods" in m.dirs
        assert m.launch  # from the demo's launcher-build.json


def test_tampered_delta_index_is_refused(demo: DemoStore, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(demo.store.root, root)
    s = Store(root)
    try:
        s.path(s.delta_v2_rel(demo.product, "1.0.0", "1.1.0")).unlink()  # format 1 only
        rel = s.delta_rel(demo.product, "1.0.0", "1.1.0")
        blob_path = s.path(rel)
        sig_path = blob_path.with_suffix(".sig")
        blob, sig = blob_path.read_bytes(), sig_path.read_bytes()
        verify_signature(blob, sig, load_public_key(s.public_key_hex))

        bad_sig = bytearray(sig)
        bad_sig[0] ^= 0x40
        sig_path.write_bytes(bytes(bad_sig))
        with pytest.raises(ManifestError) as exc:
            s.read_delta(demo.product, "1.0.0", "1.1.0")
        assert exc.value.code == "MANIFEST_SIGNATURE_INVALID"

        sig_path.write_bytes(sig[:32])
        with pytest.raises(ManifestError) as exc:
            s.read_delta(demo.product, "1.0.0", "1.1.0")
        assert exc.value.code == "MANIFEST_SIGNATURE_INVALID"

        sig_path.write_bytes(sig)
        bad_blob = bytearray(blob)
        bad_blob[-1] ^= 1
        blob_path.write_bytes(bytes(bad_blob))
        with pytest.raises(ManifestError) as exc:
            s.read_delta(demo.product, "1.0.0", "1.1.0")
        assert exc.value.code == "MANIFEST_SIGNATURE_INVALID"

        # another delta index's (valid) signature does not fit either
        other = s.path(s.delta_rel(demo.product, "1.1.0", "1.2.0"))
        blob_path.write_bytes(blob)
        sig_path.write_bytes(other.with_suffix(".sig").read_bytes())
        with pytest.raises(ManifestError) as exc:
            s.read_delta(demo.product, "1.0.0", "1.1.0")
        assert exc.value.code == "MANIFEST_SIGNATURE_INVALID"

        sig_path.write_bytes(sig)
        assert s.read_delta(demo.product, "1.0.0", "1.1.0") == demo.store.read_delta(
            demo.product, "1.0.0", "1.1.0", format_version=1)
    finally:
        s.close()


def test_republishing_a_demo_version_stores_nothing(demo: DemoStore) -> None:
    before = cdn_snapshot(demo.store)
    r = publish(demo.store, demo.product, "1.1.0", demo.build("1.1.0"), workers=1)
    assert r.already_published and r.new_chunks == 0
    assert cdn_snapshot(demo.store) == before


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_publish_json(tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", {"a.bin": rand(1, 300 * KiB), "t.txt": text(1, 200 * KiB)},
                        executables=("a.bin",), dirs=("mods",))
    store = tmp_path / "store"
    proc = cli("publish", "--store", str(store), "--product", "cli-game", "--version", "1.0",
               str(build), "--json")
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    doc = json.loads(lines[0])
    assert doc["product_id"] == "cli-game" and doc["version_id"] == "1.0"
    assert doc["already_published"] is False
    assert doc["files"] == 2 and doc["total_bytes"] == 500 * KiB
    assert doc["new_chunks"] == doc["chunks"] > 0 and doc["reused_chunks"] == 0
    assert doc["stored_bytes"] > 0 and doc["install_bytes"] > 0
    assert doc["patches"] == [] and doc["patch_bytes"] == 0
    s = Store(store)
    try:
        m = s.read_manifest("cli-game", "1.0")
        assert_extracts(s, m, build, tmp_path / "out")
    finally:
        s.close()

    again = cli("publish", "--store", str(store), "--product", "cli-game", "--version", "1.0",
                str(build), "--json")
    doc = json.loads(again.stdout)
    assert doc["already_published"] is True and doc["new_chunks"] == 0


@pytest.mark.parametrize("case", ["symlink", "version-exists"])
def test_cli_publish_errors(tmp_path: Path, case: str) -> None:
    build = write_build(tmp_path / "b", {"a.bin": rand(1, 100 * KiB)})
    store = tmp_path / "store"
    if case == "symlink":
        os.symlink(build / "a.bin", build / "link")
        code = "BUILD_SYMLINK"
    else:
        s = Store(store)
        try:
            publish(s, "cli-game", "1.0", build, workers=1)
        finally:
            s.close()
        (build / "a.bin").write_bytes(rand(2, 100 * KiB))
        code = "VERSION_EXISTS"
    proc = cli("publish", "--store", str(store), "--product", "cli-game", "--version", "1.0",
               str(build), "--json", check=False)
    assert proc.returncode == 1, proc
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    doc = json.loads(lines[0])
    assert set(doc) == {"error"}
    assert doc["error"]["code"] == code
    assert doc["error"]["message"]
    assert code in proc.stderr and proc.stderr.startswith("error:")
    assert "Traceback" not in proc.stderr

    if case == "symlink":  # without --json: the message on stderr only
        plain = cli("publish", "--store", str(store), "--product", "cli-game", "--version",
                    "1.0", str(build), check=False)
        assert plain.returncode == 1 and plain.stdout == "" and code in plain.stderr
