"""The update payloads of issue 14 on the real engine CLI against the real backend: the manifest
rebuilt from a patch against the installed manifest, HDiffPatch patches, whole-file zstd frames of
new files; each with its verification, its fallback and kill -9 safety."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import blake3
import pytest
import zstandard

from patcher.delta import build_zstd
from patcher.deltaindex import DeltaIndex, ManifestPatch, decode_delta_index, encode_delta_index
from patcher.manifest import is_binary_manifest, manifest_to_json
from patcher.sizing import update_cost
from patcher.store import Store
from testing.enginekit import STAGING, EngineCli, assert_same_tree, read_until

PRODUCT = "star-courier"


def build(published_store: Any, version: str) -> Path:
    return Path(published_store.builds) / PRODUCT / version


def store_of(server: Any) -> Store:
    return Store(Path(server.store_dir))


def v2_index(store: Store, old: str, new: str) -> DeltaIndex:
    delta = decode_delta_index(store.path(store.delta_v2_rel(PRODUCT, old, new)).read_bytes())
    assert delta.manifest_patch is not None
    return delta


def drop_update_docs(store: Store, *steps: tuple[str, str]) -> None:
    """A store without format-3 documents (published before them): the engine takes the signed
    format-2 index path, which these tests exercise."""
    for old, new in steps:
        store.path(store.delta_v3_rel(PRODUCT, old, new)).unlink()


def replace(path: Path, data: bytes) -> None:
    """Replace, never rewrite: a server's store files are hard links to a shared copy."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def fresh_cli(server: Any, tmp_path: Path, env: dict[str, str] | None = None) -> EngineCli:
    name, _ = server.new_user(products=[PRODUCT])
    cli = EngineCli(tmp_path / "eng", server.url, env=env or {})
    cli.login(name, "secret-pw")
    return cli


def cached_manifest(cli: EngineCli, version: str) -> bytes:
    """The engine's copy of a version's manifest: its binary form when it kept that one."""
    base = cli.data_dir / "manifests" / PRODUCT
    binary = base / f"{version}.bmanifest"
    return (binary if binary.exists() else base / f"{version}.manifest").read_bytes()


def update_falls_back(server: Any, published_store: Any, tmp_path: Path, old: str, new: str,
                      *logged: str) -> None:
    """A fresh engine installs ``old`` and updates to ``new``: the update completes, the log
    names each of ``logged`` (the fallbacks taken), the cached manifest is byte for byte the
    signed one and the game is the new build."""
    store = store_of(server)
    cli = fresh_cli(server, tmp_path)
    target = tmp_path / "game"
    cli.ok("install", PRODUCT, "--version", old, "--target", str(target))
    code, lines, err = cli.run("update", PRODUCT, "--version", new)
    assert code == 0 and lines[-1]["result"] == "completed", err
    for code_name in logged:
        assert code_name in err, (code_name, err)
    assert cached_manifest(cli, new) == store.path(store.manifest_rel(PRODUCT, new)).read_bytes()
    assert_same_tree(target, build(published_store, new))


def test_every_step_uses_the_manifest_patch_and_new_patch_kinds(
        backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    server = backend_factory()
    store = store_of(server)
    versions = published_store.product(PRODUCT).versions
    methods: set[str] = set()
    sourceless = sectioned = 0
    for old, new in itertools.pairwise(versions):
        delta = v2_index(store, old, new)
        methods |= {p.method for p in delta.patches}
        sourceless += sum(p.source_path is None for p in delta.patches)
        # HDiffPatch patches in the sectioned container (first byte's high bit; its own is "H")
        sectioned += sum(store.path(store.patch_rel(PRODUCT, p.patch_id)).read_bytes()[0] >= 0x80
                         for p in delta.patches if p.method == "hdiffpatch")
        # what an engine released before format 2 reads: only the kinds it knows
        v1 = store.read_delta(PRODUCT, old, new, format_version=1)
        assert v1 is not None and v1.manifest_patch is None
        assert {p.method for p in v1.patches} <= {"bsdiff", "zstd"}
        assert all(p.source_path is not None for p in v1.patches)
    assert "hdiffpatch" in methods, methods
    assert sectioned, "the engine below applies HDiffPatch's sectioned container"
    assert sourceless, "2.0.0 adds a file with no predecessor: a whole-file zstd frame"

    cli = fresh_cli(server, tmp_path)
    target = tmp_path / "game"
    cli.ok("install", PRODUCT, "--version", versions[0], "--target", str(target))
    # the install kept the backend's binary form: the patches below start from it
    assert is_binary_manifest(cached_manifest(cli, versions[0]))
    for new in versions[1:]:
        code, lines, err = cli.run("update", PRODUCT, "--version", new)
        assert code == 0 and lines[-1]["result"] == "completed", err
        assert "MANIFEST_PATCH_FAILED" not in err and "DELTA_PATCH_APPLICATION_FAILED" not in err
        assert not [ln for ln in lines if ln.get("type") == "downloadError"]
        # the rebuilt manifest is byte for byte the signed one
        assert cached_manifest(cli, new) == store.path(store.manifest_rel(PRODUCT, new)).read_bytes()
        assert_same_tree(target, build(published_store, new))


def test_corrupt_manifest_patch_falls_back_to_the_full_manifest(
        backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    server = backend_factory()
    store = store_of(server)
    old, new = published_store.product(PRODUCT).versions[:2]
    drop_update_docs(store, (old, new))
    mp = v2_index(store, old, new).manifest_patch
    assert mp is not None
    path = store.path(store.patch_rel(PRODUCT, mp.patch_id))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    replace(path, bytes(data))

    update_falls_back(server, published_store, tmp_path, old, new, "MANIFEST_PATCH_FAILED")


def test_signed_index_naming_a_wrong_manifest_patch_is_caught_by_the_manifest_signature(
        backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    """The index is signed and the patch matches its id, but it rebuilds other JSON: only the
    new manifest's own signature over the rebuilt bytes can tell, and the engine checks it."""
    server = backend_factory()
    store = store_of(server)
    old, new = published_store.product(PRODUCT).versions[:2]
    drop_update_docs(store, (old, new))
    old_json = manifest_to_json(store.read_manifest(PRODUCT, old))
    new_json = manifest_to_json(store.read_manifest(PRODUCT, new))
    forged_json = new_json.replace(b'"createdAt":"', b'"createdAt":"1', 1)
    assert forged_json != new_json
    forged = build_zstd(old_json, forged_json)
    forged_id = blake3.blake3(forged).hexdigest()
    replace(store.path(store.patch_rel(PRODUCT, forged_id)), forged)
    delta = v2_index(store, old, new)
    index = DeltaIndex(delta.product_id, delta.from_version, delta.to_version, delta.patches,
                       ManifestPatch("zstd", forged_id, len(forged), len(forged_json)))
    blob = encode_delta_index(index)
    rel = store.path(store.delta_v2_rel(PRODUCT, old, new))
    replace(rel.with_suffix(".sig"), store.signing_key.sign(blob))
    replace(rel, blob)

    update_falls_back(server, published_store, tmp_path, old, new,
                      "MANIFEST_PATCH_FAILED", "MANIFEST_SIGNATURE_INVALID")


def test_missing_format_2_index_falls_back_to_format_1(
        backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    """A store published before format 2: the engine updates with the format-1 index."""
    server = backend_factory()
    store = store_of(server)
    versions = published_store.product(PRODUCT).versions
    for old, new in itertools.pairwise(versions):
        drop_update_docs(store, (old, new))
        rel = store.path(store.delta_v2_rel(PRODUCT, old, new))
        rel.unlink()
        rel.with_suffix(".sig").unlink()
    cli = fresh_cli(server, tmp_path)
    target = tmp_path / "game"
    cli.ok("install", PRODUCT, "--version", versions[0], "--target", str(target))
    started = time.monotonic()
    code, lines, err = cli.run("update", PRODUCT, "--version", versions[1])
    assert code == 0 and lines[-1]["result"] == "completed", err
    plan = next(ln["payload"] for ln in lines if ln.get("type") == "updatePlan")
    assert plan["patchBytes"] > 0  # format-1 patches were used
    assert time.monotonic() - started < 120  # a missing optional index is not retried for long
    assert_same_tree(target, build(published_store, versions[1]))


def test_corrupt_hdiffpatch_and_whole_file_patches_fall_back_to_chunks(
        backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    server = backend_factory()
    store = store_of(server)
    versions = published_store.product(PRODUCT).versions
    old, new = versions[-2], versions[-1]
    drop_update_docs(store, (old, new))
    delta = v2_index(store, old, new)
    # one patch of each kind the plan applies is damaged (each damaged patch costs the engine a
    # second fetch before it falls back, so damaging all thirty of them only takes longer)
    applied = set(update_cost(store.read_manifest(PRODUCT, old),
                              store.read_manifest(PRODUCT, new), delta).patched_files)
    broken = [next(p for p in delta.patches if kind(p) and p.path in applied)
              for kind in (lambda p: p.method == "hdiffpatch", lambda p: p.source_path is None)]
    assert broken[0].source_path is not None and broken[1].method != "hdiffpatch"  # two kinds
    for p in broken:
        path = store.path(store.patch_rel(PRODUCT, p.patch_id))
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        replace(path, bytes(data))
    cli = fresh_cli(server, tmp_path)
    target = tmp_path / "game"
    cli.ok("install", PRODUCT, "--version", old, "--target", str(target))
    lines = cli.ok("update", PRODUCT, "--version", new)
    assert lines[-1]["result"] == "completed"
    plan = next(ln["payload"] for ln in lines if ln.get("type") == "updatePlan")
    fallbacks = {ln["payload"]["itemId"] for ln in lines if ln.get("type") == "downloadError"}
    assert plan["patchBytes"] > 0
    assert fallbacks == {p.path for p in broken}  # those two, and only those, fell back
    assert all(ln["payload"]["errorCode"] == "DELTA_PATCH_APPLICATION_FAILED"
               for ln in lines if ln.get("type") == "downloadError")
    assert_same_tree(target, build(published_store, new))


def _kill_when(proc: Any, predicate: Any, delay: float) -> None:
    try:
        read_until(proc, predicate, 60)
    except AssertionError:
        proc.kill()
        raise
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill9_after_the_rebuilt_manifest_and_during_patching_then_resume(
        backend_factory: Any, published_store: Any, tmp_path: Path, seed: int) -> None:
    """Killed right after the manifest was rebuilt from its patch (and cached), or while file
    patches are applied: the old version stays playable and the rerun finishes byte-exact."""
    rnd = random.Random(seed)
    server = backend_factory()
    store = store_of(server)
    versions = published_store.product(PRODUCT).versions
    old, new = versions[-2], versions[-1]
    cli = fresh_cli(server, tmp_path)
    target = tmp_path / "game"
    cli.ok("install", PRODUCT, "--version", old, "--target", str(target))
    proc = cli.popen("update", PRODUCT, "--version", new)
    _kill_when(proc, lambda e: e.get("type") == "updatePlan", rnd.uniform(0.0, 0.3))
    # a manifest in the cache is only ever the signed one
    cached = cli.data_dir / "manifests" / PRODUCT / f"{new}.manifest"
    if cached.exists():
        assert cached.read_bytes() == store.path(store.manifest_rel(PRODUCT, new)).read_bytes()
    code, lines, err = cli.run("update", PRODUCT, "--version", new)
    assert code == 0 and lines[-1]["result"] == "completed", json.dumps(lines[-1:]) + err
    assert_same_tree(target, build(published_store, new))
    assert not (target / STAGING).exists()


def test_manifest_patch_bytes_are_small(backend_factory: Any, published_store: Any) -> None:
    """Sanity of what is published: each manifest patch rebuilds the signed bytes and is far
    smaller than the manifest it replaces."""
    from patcher.deltaindex import rebuild_manifest_blob

    server = backend_factory()
    store = store_of(server)
    versions = published_store.product(PRODUCT).versions
    for old, new in itertools.pairwise(versions):
        mp = v2_index(store, old, new).manifest_patch
        assert mp is not None
        old_blob = store.path(store.manifest_rel(PRODUCT, old)).read_bytes()
        new_blob = store.path(store.manifest_rel(PRODUCT, new)).read_bytes()
        patch = store.path(store.patch_rel(PRODUCT, mp.patch_id)).read_bytes()
        assert rebuild_manifest_blob(old_blob, patch, mp) == new_blob
        assert mp.patch_size < len(new_blob) / 2
        assert zstandard.get_frame_parameters(patch).content_size == mp.json_size


def test_files_whose_bytes_did_not_change_are_not_rewritten(
        engine: EngineCli, published_store: Any, tmp_path: Path) -> None:
    """An update writes only the files whose bytes change: every other file keeps its inode
    and modification time, and the plan's writeBytes is exactly the rebuilt files' sizes."""
    versions = published_store.product(PRODUCT).versions
    old, new = versions[0], versions[1]
    target = tmp_path / "game"
    engine.ok("install", PRODUCT, "--version", old, "--target", str(target))
    old_build, new_build = build(published_store, old), build(published_store, new)
    same = [p.relative_to(new_build).as_posix() for p in new_build.rglob("*")
            if p.is_file() and (old_build / p.relative_to(new_build)).is_file()
            and (old_build / p.relative_to(new_build)).read_bytes() == p.read_bytes()
            and (target / p.relative_to(new_build)).exists()]
    assert same
    before = {rel: (os.stat(target / rel).st_ino, os.stat(target / rel).st_mtime_ns) for rel in same}
    lines = engine.ok("update", PRODUCT, "--version", new)
    plan = next(ln["payload"] for ln in lines if ln.get("type") == "updatePlan")
    after = {rel: (os.stat(target / rel).st_ino, os.stat(target / rel).st_mtime_ns) for rel in same}
    assert after == before
    rebuilt = [p for p in new_build.rglob("*") if p.is_file()
               and p.relative_to(new_build).as_posix() not in set(same)
               and p.name != "launcher-build.json"]
    assert plan["writeBytes"] == sum(p.stat().st_size for p in rebuilt)
    assert_same_tree(target, new_build)


def _doc_parts(store: Store, old: str, new: str) -> tuple[Any, Any, Any]:
    old_m, new_m = store.read_manifest(PRODUCT, old), store.read_manifest(PRODUCT, new)
    got = store.read_update_doc(PRODUCT, old_m, new)
    assert got is not None, "every published step has a format-3 document"
    return old_m, new_m, got[0]


def test_update_document_derives_the_manifest_every_step(
        backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    """Format 3: the engine applies the document's patches, derives the patched files' rows,
    rebuilds the manifest from the prediction and checks the new signature over it; the
    document and the signature are the only metadata it fetches (no format-2 index)."""
    server = backend_factory()
    store = store_of(server)
    versions = published_store.product(PRODUCT).versions
    cli = fresh_cli(server, tmp_path)
    target = tmp_path / "game"
    cli.ok("install", PRODUCT, "--version", versions[0], "--target", str(target))
    external = 0
    for old, new in itertools.pairwise(versions):
        _, _, doc = _doc_parts(store, old, new)
        assert doc.patches
        external += sum(p.data is None for p in doc.patches)
        code, lines, err = cli.run("update", PRODUCT, "--version", new, "-v")
        assert code == 0 and lines[-1]["result"] == "completed", err
        assert "MANIFEST_PATCH_FAILED" not in err and "DELTA_PATCH_APPLICATION_FAILED" not in err
        assert "derived and its signature checked" in err
        assert cached_manifest(cli, new) == store.path(store.manifest_rel(PRODUCT, new)).read_bytes()
        assert_same_tree(target, build(published_store, new))
        # external patches waited on disk for the build, and are gone after the switch
        assert not (cli.data_dir / "update-patches" / PRODUCT).exists()
    assert external, "some step carries a patch too big to travel inline"


def test_forged_update_document_is_caught_by_the_new_signature(
        backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    """The document is unsigned: one that rebuilds other manifest JSON (here a forged date)
    is refused by the new manifest's signature, and the engine falls back to the signed index."""
    from patcher.updatedoc import (
        UpdateDoc,
        build_manifest_delta,
        derived_entry,
        encode_update_doc,
        predicted_json,
    )

    server = backend_factory()
    store = store_of(server)
    old, new = published_store.product(PRODUCT).versions[:2]
    old_m, new_m, doc = _doc_parts(store, old, new)
    rows = []
    for p in doc.patches:
        f = new_m.file(p.path)
        rows.append(derived_entry(f.path, f.size, f.hash_sha256,
                                  [(c.offset, c.size, c.id) for c in f.chunks], old_m, p.source_path))
    forged = manifest_to_json(new_m).replace(b'"createdAt":"', b'"createdAt":"1', 1)
    blob = encode_update_doc(UpdateDoc(doc.patches, build_manifest_delta(
        predicted_json(old_m, new, rows, doc.blocks, doc.layout), forged), doc.blocks, doc.layout),
        old_m)
    replace(store.path(store.delta_v3_rel(PRODUCT, old, new)), blob)

    update_falls_back(server, published_store, tmp_path, old, new,
                      "MANIFEST_PATCH_FAILED", "MANIFEST_SIGNATURE_INVALID")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "source"])
def test_unusable_update_document_falls_back_to_the_signed_index(
        backend_factory: Any, published_store: Any, tmp_path: Path, damage: str) -> None:
    """A garbage or truncated document, or an installed source file that no longer matches the
    installed manifest (the patch cannot be derived): logged, then the format-2 path."""
    server = backend_factory()
    store = store_of(server)
    versions = published_store.product(PRODUCT).versions
    old, new = versions[-2], versions[-1]
    rel = store.path(store.delta_v3_rel(PRODUCT, old, new))
    _, _, doc = _doc_parts(store, old, new)
    cli = fresh_cli(server, tmp_path)
    target = tmp_path / "game"
    cli.ok("install", PRODUCT, "--version", old, "--target", str(target))
    if damage == "garbage":
        replace(rel, os.urandom(300))
    elif damage == "truncated":
        replace(rel, rel.read_bytes()[:-7])
    else:
        src = next(p.source_path for p in doc.patches if p.source_path is not None)
        with (target / src).open("r+b") as fh:
            fh.seek(0)
            first = fh.read(1)
            fh.seek(0)
            fh.write(bytes([first[0] ^ 0xFF]))
    code, lines, err = cli.run("update", PRODUCT, "--version", new)
    assert code == 0 and lines[-1]["result"] == "completed", err
    assert "MANIFEST_PATCH_FAILED" in err
    assert cached_manifest(cli, new) == store.path(store.manifest_rel(PRODUCT, new)).read_bytes()
    assert_same_tree(target, build(published_store, new))


def _zero_frame(size: int) -> bytes:
    """A zstd frame of ``size`` zero bytes as RLE blocks (1 GiB in ~32 KB), never allocated."""
    import struct

    out = bytearray(struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", size))
    left = size
    while left:
        n = min(left, 128 * 1024)
        left -= n
        out += ((n << 3) | (1 << 1) | (0 if left else 1)).to_bytes(3, "little") + b"\x00"
    return bytes(out)


def _hostile_doc(old_m: Any, attack: str) -> bytes:
    """The review's documents: 2000 MOVE steps copying the installed file with the most rows
    under one path, or 1900 inline 1 GiB zero frames (~62 MB of body, ~70 KB on the wire)."""
    from patcher.updatedoc import MOVE, LayoutOp, UpdateDoc, _varint, encode_update_doc

    if attack == "moves":
        big = max(range(len(old_m.files)), key=lambda i: len(old_m.files[i].chunks))
        layout = tuple(LayoutOp(MOVE, big, "a") for _ in range(2000))
        return encode_update_doc(UpdateDoc((), b"", layout=layout), old_m)
    frame, gib, count = _zero_frame(1 << 30), 1 << 30, 1900
    rows = b"".join(b"\x00" + _varint(len(name)) + name + b"\x00z" + _varint(gib)
                    + _varint(len(frame)) for name in (b"n%d" % i for i in range(count)))
    body = b"\x03" + _varint(count) + rows + b"\x00\x00\x00" + frame * count
    return zstandard.ZstdCompressor(level=1).compress(body)


@pytest.mark.parametrize(("attack", "code"), [("moves", "UPDATE_DOC_PATH_TWICE"),
                                              ("zero-frames", "UPDATE_DOC_OVER_BUDGET"),
                                              ("grown-source", "bytes on disk")])
def test_update_document_past_its_work_budget_falls_back_to_the_signed_index(
        backend_factory: Any, published_store: Any, tmp_path: Path, attack: str,
        code: str) -> None:
    """Review findings 1-3 through the real engine: a small hostile document (or an installed
    source grown to 3 GiB, sparse) is refused before any prediction, decompression or source
    read, named in the log, and the update still installs byte-exact through format 2."""
    server = backend_factory()
    store = store_of(server)
    versions = published_store.product(PRODUCT).versions
    old, new = versions[-2], versions[-1]
    old_m, _, doc = _doc_parts(store, old, new)
    cli = fresh_cli(server, tmp_path)
    target = tmp_path / "game"
    cli.ok("install", PRODUCT, "--version", old, "--target", str(target))
    if attack == "grown-source":
        src = next(p.source_path for p in doc.patches if p.source_path is not None)
        with (target / src).open("r+b") as fh:
            fh.truncate(3 << 30)  # sparse: no disk, but read whole it would be 3 GiB of memory
    else:
        blob = _hostile_doc(old_m, attack)
        assert len(blob) < 128 * 1024, len(blob)
        replace(store.path(store.delta_v3_rel(PRODUCT, old, new)), blob)
    code_, lines, err = cli.run("update", PRODUCT, "--version", new)
    assert code_ == 0 and lines[-1]["result"] == "completed", err
    assert "MANIFEST_PATCH_FAILED" in err and code in err, err
    assert "derived and its signature checked" not in err
    assert cached_manifest(cli, new) == store.path(store.manifest_rel(PRODUCT, new)).read_bytes()
    assert_same_tree(target, build(published_store, new))
