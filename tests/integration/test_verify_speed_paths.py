"""The fast paths of ``engine.io.verify.scan_install`` still find every kind of damage exactly:
big files checked in pieces by several workers, O_DIRECT reads at unaligned chunk offsets,
small files in batches, folders opened once without following links.

A real published demo build (the session's ``published_store``) copied into tmp_path, the real
manifest, real files on disk: no mocks. The piece size is turned down so the demo's files (a
few hundred kB) are split the way a game's large files are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.io import verify
from engine.io.verify import DamagedRange, scan_install
from patcher.manifest import FileEntry, Manifest, chunk_rows
from patcher.store import Store
from testing.processes import REPO, subprocess_env

PRODUCT = "star-courier"


@pytest.fixture
def game(published_store: Any, tmp_path: Path) -> tuple[Path, Manifest]:
    version = published_store.product(PRODUCT).versions[-1]
    store = Store(Path(published_store.root))
    try:
        manifest = store.read_manifest(PRODUCT, version)
    finally:
        store.close()
    target = tmp_path / "game"
    # the publisher's build record is not part of the game
    shutil.copytree(Path(published_store.builds) / PRODUCT / version, target, symlinks=True,
                    ignore=shutil.ignore_patterns("launcher-build.json"))
    return target, manifest


def chunk_of(f: FileEntry, offset: int) -> tuple[int, int]:
    offsets, sizes, _ = chunk_rows(f.chunks)
    k = max(i for i in range(len(offsets)) if offsets[i] <= offset)
    return offsets[k], sizes[k]


def merged(path: str, spans: list[tuple[int, int]]) -> list[DamagedRange]:
    out: list[DamagedRange] = []
    for off, size in sorted(set(spans)):
        if out and out[-1].offset + out[-1].size == off:
            out[-1] = DamagedRange(path, out[-1].offset, out[-1].size + size)
        else:
            out.append(DamagedRange(path, off, size))
    return out


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x5A]))


@pytest.mark.parametrize(("direct", "native"), [(True, False), (False, True), (False, False)],
                         ids=["o_direct", "page_cache_native", "page_cache_python"])
def test_every_kind_of_damage_is_reported_exactly(game: tuple[Path, Manifest], direct: bool,
                                                  native: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    target, manifest = game
    if native and verify._check_chunks is None:
        pytest.skip("engine/io/_blake3batch is not built (scripts/build_native.sh)")
    if not native:  # the chunk-by-chunk loop, used where the native module is not built
        monkeypatch.setattr(verify, "_check_chunks", None)
    # pieces of 128 KiB: the share of each worker is made small enough not to count
    monkeypatch.setattr(verify, "PIECE_MIN", 128 * 1024)
    monkeypatch.setattr(verify, "PIECES_PER_WORKER", 1 << 40)
    piece = verify._piece_bytes(sum(f.size for f in manifest.files), verify.WORKERS)
    assert piece == 128 * 1024
    monkeypatch.setattr(verify, "_O_DIRECT", getattr(os, "O_DIRECT", 0) if direct else 0)
    clean = scan_install(target, manifest, quick=False)
    assert clean.ok and not clean.extra
    assert clean.bytes_checked == sum(f.size for f in manifest.files)

    by_size = sorted(manifest.files, key=lambda f: -f.size)
    big = by_size[0]
    assert big.size > 4 * piece, "the demo's largest file should span pieces"
    offsets, sizes, _ = chunk_rows(big.chunks)
    # the first and last byte, an unaligned byte in the middle, and both sides of the boundary
    # between the first two pieces (two adjacent chunks checked by different workers: one
    # merged range)
    k = next(i for i in range(1, len(offsets)) if offsets[i] + sizes[i] > piece)
    hits = [0, big.size - 1, big.size // 2 + 4093, offsets[k] - 1, offsets[k]]
    for off in hits:
        flip(target / big.path, off)
    truncated, missing = by_size[1], by_size[-1]
    with (target / truncated.path).open("r+b") as fh:
        fh.truncate(truncated.size - 1)
    (target / missing.path).unlink()
    small = next(f for f in reversed(by_size) if f is not missing and f.size > 0)
    flip(target / small.path, small.size - 1)  # a small file, checked in a batch
    (target / "extra.bin").write_bytes(b"not ours")

    report = scan_install(target, manifest, quick=False)
    assert not report.ok
    assert [d for d in report.damaged if d.path == big.path] == \
        merged(big.path, [chunk_of(big, off) for off in hits])
    assert [d for d in report.damaged if d.path == small.path] == \
        merged(small.path, [chunk_of(small, small.size - 1)])
    assert {d.path for d in report.damaged} == {big.path, small.path}
    assert report.wrong_size == (truncated.path,)
    assert report.missing == (missing.path,)
    assert report.extra == ("extra.bin",)
    assert report.bytes_checked == sum(f.size for f in manifest.files) - truncated.size - missing.size


def test_links_and_files_in_place_of_folders_are_never_followed(
        game: tuple[Path, Manifest], tmp_path: Path) -> None:
    target, manifest = game
    nested = [f for f in manifest.files if "/" in f.path]
    dirs = sorted({f.path.split("/")[0] for f in nested})
    assert len(dirs) >= 2, "the demo build should have two top-level folders"
    linked, filed = dirs[0], dirs[1]
    outside = tmp_path / "outside"
    shutil.move(target / linked, outside)  # the same bytes, but behind a link
    (target / linked).symlink_to(outside, target_is_directory=True)
    shutil.rmtree(target / filed)
    (target / filed).write_bytes(b"a file where a folder belongs")
    top = next(f for f in manifest.files if "/" not in f.path and f.size > 0)
    os.unlink(target / top.path)
    (target / top.path).symlink_to(outside)  # a link in place of a file
    fifo = next(f for f in manifest.files if "/" not in f.path and f is not top)
    os.unlink(target / fifo.path)
    os.mkfifo(target / fifo.path)  # never opened (it would block): not a file, so missing

    report = scan_install(target, manifest, quick=False)
    under = {f.path for f in nested if f.path.split("/")[0] in (linked, filed)}
    assert set(report.links) == under | {top.path}
    assert report.missing == (fifo.path,)
    assert not report.damaged and not report.wrong_size
    quick = scan_install(target, manifest, quick=True)
    assert set(quick.links) == set(report.links) and quick.missing == report.missing


def test_a_game_with_more_folders_than_open_files_allowed_is_verified(tmp_path: Path) -> None:
    """Review finding: every folder's descriptor was held for the whole scan, so a game with
    more folders than the soft limit of open files (1,024 by default) failed verify, quick
    verify and repair with EMFILE. Here 300 folders under a limit of 128, in a child process
    (the limit is the process's own)."""
    from patcher.publish import publish

    build = tmp_path / "build"
    for i in range(300):
        folder = build / f"d{i // 30:02d}" / f"e{i:03d}"
        folder.mkdir(parents=True)
        (folder / "asset.bin").write_bytes(os.urandom(3000) + bytes([i % 256]) * 100)
    store = Store(tmp_path / "store")
    try:
        publish(store, "many-folders", "1.0.0", build, patch_previous=0)
    finally:
        store.close()
    flip(build / "d09" / "e299" / "asset.bin", 10)
    (build / "d05" / "e150" / "asset.bin").unlink()
    script = f"""
import resource, sys
from pathlib import Path
from engine.io.verify import scan_install
from patcher.store import Store
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
store = Store(Path({str(tmp_path / "store")!r}))
manifest = store.read_manifest("many-folders", "1.0.0")
store.close()
for quick in (False, True):
    r = scan_install(Path({str(build)!r}), manifest, quick=quick)
    print(quick, sorted({{d.path for d in r.damaged}}), list(r.missing), r.bytes_checked)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=subprocess_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    full, quick = proc.stdout.splitlines()
    assert full == f"False ['d09/e299/asset.bin'] ['d05/e150/asset.bin'] {299 * 3100}"
    assert quick.startswith("True [] ['d05/e150/asset.bin']")


def test_a_file_swapped_for_a_fifo_after_its_stat_does_not_block(
        game: tuple[Path, Manifest]) -> None:
    """Review finding: a worker opened the file without O_NONBLOCK, so a file replaced by a FIFO
    between the stat and the read blocked verify for good. The race is set up by hand: the
    stat and the pieces first, then the swap, then the check."""
    target, manifest = game
    f = next(f for f in manifest.files if "/" not in f.path and f.size > 0)
    folders = verify._Folders(target)
    try:
        status, where, _ = folders.stat(f, hold=True)
        assert status == "ok"
        pieces = verify._pieces(f, where, verify.PIECE_MIN)
        os.unlink(target / f.path)
        os.mkfifo(target / f.path)
        assert verify._check_piece(pieces[0]) == ("missing", [])
    finally:
        folders.close()


def test_running_out_of_descriptors_is_an_error_not_damage(tmp_path: Path) -> None:
    """A folder or file that cannot be opened for want of descriptors (EMFILE) says nothing
    about the game: the verify fails naming the error and the file (IO_ERROR), with every
    worker stopped,
    instead of reporting files missing (a repair would download them again). A child process
    whose limit of open files leaves room for one descriptor more: the game's folder."""
    from patcher.publish import publish

    build = tmp_path / "build"
    build.mkdir()
    for i in range(40):  # in one folder: its descriptor is the last one the limit allows
        (build / f"asset{i:02d}.bin").write_bytes(os.urandom(5000))
    store = Store(tmp_path / "store")
    try:
        publish(store, "few-fds", "1.0.0", build, patch_previous=0)
    finally:
        store.close()
    before = {p.name: p.read_bytes() for p in build.rglob("*.bin")}
    script = f"""
import os, resource, sys, threading
from pathlib import Path
from engine.core.errors import EngineError
from engine.io.verify import scan_install
from patcher.store import Store
store = Store(Path({str(tmp_path / "store")!r}))
manifest = store.read_manifest("few-fds", "1.0.0")
store.close()
# the limit caps descriptor numbers: only the lowest free one stays below it
free = os.open(os.devnull, os.O_RDONLY)
os.close(free)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (free + 1, hard))
try:
    r = scan_install(Path({str(build)!r}), manifest, quick=False)
except EngineError as exc:
    print("error", exc.code.value, threading.active_count(), exc.message)
else:
    print("report", list(r.missing)[:3])
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=subprocess_env(), cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    words = proc.stdout.split()
    assert words[:3] == ["error", "IO_ERROR", "1"], proc.stdout
    assert "verifying: Too many open files (asset" in proc.stdout
    assert {p.name: p.read_bytes() for p in build.rglob("*.bin")} == before


def test_a_file_it_may_not_read_is_missing_so_a_repair_replaces_it(
        game: tuple[Path, Manifest], tmp_path: Path) -> None:
    """Review finding: a file the player's account may not read (mode 000, or a root-owned
    0600 file a game left behind) made the whole verify fail; it is reported missing, as before,
    so a repair downloads it again and puts it in place. Run in a child process without the
    capabilities that let root read any file."""
    target, manifest = game
    f = next(f for f in sorted(manifest.files, key=lambda f: -f.size) if "/" in f.path)
    os.chmod(target / f.path, 0)
    script = f"""
import json
from pathlib import Path
from engine.io.verify import scan_install
from patcher.manifest import decode_manifest
manifest = decode_manifest(Path({str(tmp_path / "m.json")!r}).read_bytes())
r = scan_install(Path({str(target)!r}), manifest, quick=False)
print(json.dumps([list(r.missing), list(r.wrong_size), [d.path for d in r.damaged]]))
"""
    from patcher.manifest import encode_manifest
    (tmp_path / "m.json").write_bytes(encode_manifest(manifest))
    argv = [sys.executable, "-c", script]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root reads any file, and setpriv (util-linux) is not here to drop that")
        argv = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
                *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f'[["{f.path}"], [], []]'


def test_a_piece_is_a_workers_share_within_bounds() -> None:
    """A file is split only above a worker's share of the game (each piece re-starts the
    kernel's read-ahead), never into pieces under PIECE_MIN, and never over PIECE_MAX: a worker
    looks at the stop flag between pieces, so a piece bounds how long an error elsewhere takes
    to end the verify (review finding: half of a 60 GiB game)."""
    gib = 1 << 30
    assert verify._piece_bytes(331_502_671, 2) == 331_502_671 // 2
    assert verify._piece_bytes(10 * 1024 * 1024, 2) == verify.PIECE_MIN
    assert verify._piece_bytes(60 * gib, 2) == verify.PIECE_MAX == gib
    assert verify._piece_bytes(4 * gib, 8) == gib // 2
