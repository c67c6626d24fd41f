"""Issue 9: what kills, faults and hostile input did to the engine — each reproduced on the real
parts (real backend, CDN edges, the fault proxy, the CLI as a subprocess, kill -9) and fixed.

The player's own files are never deleted or overwritten, nothing is written or followed through
a link below an install, failed and killed tasks resume instead of starting over, and local
damage has a repair path.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from testing.enginekit import STAGING, EngineCli, assert_same_tree
from testing.faultproxy import Fault, FaultProxy
from tests.e2e.conftest import build_dir

PRODUCT = "star-courier"
SMALL = "tiny-tactics"


def first_version(published_store: Any, product: str = PRODUCT) -> str:
    return str(published_store.product(product).versions[0])


def cdn_manifests_only(server: Any) -> FaultProxy:
    """A real proxy to ``server`` that refuses its manifest route (503), so a new install takes
    its manifest from the CDN, as these tests of the CDN's faults need (a context manager)."""
    api = FaultProxy(server.url)
    api.set_fault(Fault.HTTP_503, path_contains="/download/manifests/")
    return api


def error_of(lines: list[dict[str, Any]]) -> str:
    return json.dumps(lines[-1:])


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# -- 1. the player's files ---------------------------------------------------------------------

def test_install_into_a_folder_with_player_files_is_refused(engine: EngineCli, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "game.py").mkdir(parents=True)  # a folder where the game has a file
    (docs / "game.py" / "keep.txt").write_text("k")
    (docs / "notes.txt").write_text("x")
    code, lines, _ = engine.run("install", SMALL, "--target", str(docs))
    assert code == 2, error_of(lines)
    assert "TARGET_NOT_EMPTY" in error_of(lines) and str(docs) in error_of(lines)
    assert (docs / "notes.txt").read_text() == "x"
    assert (docs / "game.py" / "keep.txt").read_text() == "k"
    assert sorted(p.name for p in docs.iterdir()) == ["game.py", "notes.txt"]
    assert engine.ok("queue", "list")[-1]["tasks"] == []  # nothing was queued


def test_uninstall_removes_only_the_games_files(engine: EngineCli, published_store: Any,
                                                tmp_path: Path) -> None:
    target = tmp_path / "games" / SMALL
    engine.ok("install", SMALL, "--target", str(target))
    (target / "my-notes.txt").write_text("mine")  # the player's (or the game's own) files
    game_dir = next(p for p in target.iterdir() if p.is_dir())
    (game_dir / "screenshot.png").write_bytes(b"png")
    lines = engine.ok("uninstall", SMALL)
    result = lines[-1]["game"]
    assert result["folderRemoved"] is False
    assert "my-notes.txt" in result["leftInFolder"]
    assert result["removedFiles"] > 0
    left = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert left == sorted(["my-notes.txt", f"{game_dir.name}/screenshot.png"])
    assert engine.ok("installed")[-1]["installed"] == []
    # a clean folder is removed entirely
    other = tmp_path / "games" / "clean"
    engine.ok("install", SMALL, "--target", str(other))
    assert engine.ok("uninstall", SMALL)[-1]["game"]["folderRemoved"] is True
    assert not other.exists()


def test_uninstall_through_a_linked_folder_keeps_the_link_target(engine: EngineCli,
                                                                 tmp_path: Path) -> None:
    real = tmp_path / "other-disk" / "games"
    real.mkdir(parents=True)
    link = tmp_path / "linked"
    link.symlink_to(real, target_is_directory=True)
    engine.ok("install", SMALL, "--target", str(link))
    assert any(real.iterdir())
    (real / "player.sav").write_text("save")
    engine.ok("uninstall", SMALL)
    assert sorted(p.name for p in real.iterdir()) == ["player.sav"]  # game files gone
    assert link.is_symlink() and real.is_dir()  # neither the link nor its target deleted


# -- 2. kill -9 in the commit phase ------------------------------------------------------------

def test_kill_during_commit_resumes_byte_exact(engine: EngineCli, published_store: Any,
                                               tmp_path: Path) -> None:
    version = first_version(published_store)
    engine.env["LAUNCHER_ENGINE_QA_SWITCH_DELAY_S"] = "0.002"  # widen the commit window
    for attempt in range(3):
        target = tmp_path / f"g{attempt}"
        proc = engine.popen("install", PRODUCT, "--version", version, "--target", str(target))
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or '"verifying"' in line:
                break
        time.sleep(0.05 * (attempt + 1))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        committed = [p for p in target.rglob("*") if p.is_file() and STAGING not in p.parts]
        assert committed, "the kill did not land in the commit phase"
        del engine.env["LAUNCHER_ENGINE_QA_SWITCH_DELAY_S"]
        lines = engine.ok("install", PRODUCT, "--version", version, "--target", str(target))
        engine.env["LAUNCHER_ENGINE_QA_SWITCH_DELAY_S"] = "0.002"
        assert lines[-1]["result"] == "completed"
        assert_same_tree(target, build_dir(published_store, version))
        assert not (target / STAGING).exists()
        # nothing was fetched again: every block was journaled before the commit began
        task = lines[-1]["task"]
        assert task["downloadedBytes"] == task["downloadSizeBytes"]
        engine.ok("uninstall", PRODUCT)


# -- 3. failed and killed tasks resume; no orphaned staging ------------------------------------

def test_a_failed_install_is_resumed_not_restarted(backend_factory: Any, published_store: Any,
                                                   tmp_path: Path) -> None:
    server = backend_factory(settings={})
    edge = server.start_cdn_edge()
    with FaultProxy(edge.url.removesuffix("/cdn/")) as proxy:
        server.set_edges([f"{proxy.url}/cdn/"])
        name, _ = server.new_user(products=[PRODUCT])
        cli = EngineCli(tmp_path / "eng", server.url, env={
            "LAUNCHER_ENGINE_STALL_TIMEOUT_S": "1", "LAUNCHER_ENGINE_MAX_ATTEMPTS": "2"})
        cli.login(name, "secret-pw")
        version = first_version(published_store)
        target = tmp_path / "g"
        proxy.set_fault(Fault.STALL, after_bytes=1_200_000, path_contains="/packs/")
        code, lines, _ = cli.run("install", PRODUCT, "--version", version, "--target", str(target))
        assert code == 6, error_of(lines)
        failed = lines[-1]["task"]
        assert failed["status"] == "error" and failed["errorCode"] == "CDN_UNREACHABLE"
        assert failed["downloadedBytes"] > 0
        assert [p.name for p in (target / STAGING).iterdir() if p.is_dir()] == [failed["taskId"]]
        proxy.set_fault(Fault.NONE)
        sent_before = proxy.bytes_sent
        lines = cli.ok("install", PRODUCT, "--version", version, "--target", str(target))
        task = lines[-1]["task"]
        assert task["taskId"] == failed["taskId"]  # the same task, resumed
        assert_same_tree(target, build_dir(published_store, version))
        assert not (target / STAGING).exists()
        refetched = proxy.bytes_sent - sent_before
        assert refetched < task["downloadSizeBytes"] - failed["downloadedBytes"] // 2, \
            (refetched, failed["downloadedBytes"], task["downloadSizeBytes"])


def test_update_to_the_current_version_succeeds_and_cleans_up(engine: EngineCli,
                                                              published_store: Any,
                                                              tmp_path: Path) -> None:
    version = first_version(published_store)
    target = tmp_path / "g"
    engine.ok("install", PRODUCT, "--version", version, "--target", str(target))
    # what a kill right after a recorded switch leaves: a dead task's staging and backup
    orphan = target / STAGING / ("ab" * 16 + ".old")
    orphan.mkdir(parents=True)
    (orphan / "old-file.bin").write_bytes(b"x" * 4096)
    (target / STAGING / ".created-by-launcher").touch()
    lines = engine.ok("update", PRODUCT, "--version", version)
    assert lines[-1]["task"]["versionId"] == version
    assert not (target / STAGING).exists()
    assert_same_tree(target, build_dir(published_store, version))


def test_patches_applied_before_a_kill_are_not_fetched_again(
        backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    """Found by bench/kill_resume.py: patched files were journaled only with the download, so a
    kill after the patch phase re-fetched every patch. Now each is journaled once verified.
    (Small patches now travel inside the update document, fetched in one piece: this test takes
    the patch files of the signed index, so the document is taken away.)"""
    server = backend_factory(settings={})
    for doc in (Path(server.store_dir) / "cdn" / PRODUCT / "deltas").glob("*.v3.delta"):
        doc.unlink()
    edge = server.start_cdn_edge()
    with FaultProxy(edge.url.removesuffix("/cdn/")) as proxy:
        server.set_edges([f"{proxy.url}/cdn/"])
        name, _ = server.new_user(products=[PRODUCT])
        cli = EngineCli(tmp_path / "eng", server.url)
        cli.login(name, "secret-pw")
        versions = published_store.product(PRODUCT).versions
        target = tmp_path / "g"
        cli.ok("install", PRODUCT, "--version", versions[0], "--target", str(target))
        # this step is all patches: let a few through, hold the rest, kill once those are in
        start = len(proxy.history)
        proc = cli.popen("update", PRODUCT, "--version", versions[1])

        def patches_seen() -> list[str]:
            return [r.path_qs.split("?")[0] for r in proxy.history[start:]
                    if "/patches/" in r.path_qs]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(patches_seen()) < 4 and proc.poll() is None:
            time.sleep(0.01)
        proxy.set_fault(Fault.STALL, path_contains="/patches/")
        patches_before = set(patches_seen())  # served in full: the stall holds only later ones
        time.sleep(1.5)  # the served ones are applied, verified and journaled meanwhile
        assert proc.poll() is None, "the update ended before the kill: the test proves nothing"
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert patches_before, "this update has no patches: the test proves nothing"
        proxy.set_fault(Fault.NONE)
        seen = len(proxy.history)
        lines = cli.ok("update", PRODUCT, "--version", versions[1])
        assert lines[-1]["result"] == "completed"
        again = {r.path_qs.split("?")[0] for r in proxy.history[seen:] if "/patches/" in r.path_qs}
        assert again, "the rerun fetched no patch: the kill came after the patch phase"
        assert not again & patches_before, f"{len(again & patches_before)} patch(es) fetched again"
        assert_same_tree(target, build_dir(published_store, versions[1]))
        assert not (target / STAGING).exists()


# -- 4. the staging folder is the engine's own ---------------------------------------------------

def test_a_linked_staging_folder_is_refused_and_nothing_is_written_outside(
        engine: EngineCli, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "g"
    target.mkdir()
    (target / STAGING).symlink_to(outside, target_is_directory=True)
    code, lines, _ = engine.run("install", SMALL, "--target", str(target))
    assert code == 12 and "UNSAFE_PATH" in error_of(lines), error_of(lines)
    assert STAGING in error_of(lines)
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in target.iterdir()) == [STAGING]


# -- 5. local damage is repaired -----------------------------------------------------------------

def test_links_inside_an_install_are_reported_and_repaired(engine: EngineCli, published_store: Any,
                                                          tmp_path: Path) -> None:
    version = first_version(published_store)
    target = tmp_path / "g"
    engine.ok("install", PRODUCT, "--version", version, "--target", str(target))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.py").write_text("print('not the game')\n")
    (target / "game.py").unlink()
    (target / "game.py").symlink_to(outside / "evil.py")
    lib_copy = outside / "lib"
    os.rename(target / "lib", lib_copy)
    (target / "lib").symlink_to(lib_copy, target_is_directory=True)
    before = {p.name: sha(p) for p in lib_copy.rglob("*") if p.is_file()}
    code, lines, _ = engine.run("verify", PRODUCT)
    assert code == 7  # integrity
    report = lines[-1]["verify"]
    assert report["ok"] is False
    assert "game.py" in report["links"] and any(p.startswith("lib/") for p in report["links"])
    engine.ok("verify", PRODUCT, "--repair")
    assert_same_tree(target, build_dir(published_store, version))
    assert not (target / "game.py").is_symlink() and not (target / "lib").is_symlink()
    assert (outside / "evil.py").read_text() == "print('not the game')\n"
    assert {p.name: sha(p) for p in lib_copy.rglob("*") if p.is_file()} == before
    assert engine.ok("verify", PRODUCT)[-1]["verify"]["ok"] is True


def test_update_rebuilds_missing_files_and_broken_move_sources(engine: EngineCli,
                                                              published_store: Any,
                                                              tmp_path: Path) -> None:
    versions = published_store.product(PRODUCT).versions
    old, new = versions[0], versions[1]
    target = tmp_path / "g"
    engine.ok("install", PRODUCT, "--version", old, "--target", str(target))
    old_build, new_build = build_dir(published_store, old), build_dir(published_store, new)
    unchanged = sorted(p.relative_to(old_build).as_posix() for p in old_build.rglob("*")
                       if p.is_file() and (new_build / p.relative_to(old_build)).is_file()
                       and sha(p) == sha(new_build / p.relative_to(old_build))
                       and p.name != "launcher-build.json")
    assert unchanged
    (target / unchanged[0]).unlink()  # deleted by the player before the update
    moved_source = target / "lib" / "libphysics.so"  # 1.1.0 moves it to lib/plugins/
    assert moved_source.exists()
    with moved_source.open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\0" * 64)
    lines = engine.ok("update", PRODUCT, "--version", new)
    assert lines[-1]["result"] == "completed"
    assert_same_tree(target, new_build)


# -- 6. transfers --------------------------------------------------------------------------------

def test_a_corrupt_manifest_on_one_edge_fails_over(backend_factory: Any, published_store: Any,
                                                  tmp_path: Path) -> None:
    server = backend_factory(settings={})
    healthy = server.start_cdn_edge()
    with FaultProxy(healthy.url.removesuffix("/cdn/")) as proxy:
        proxy.set_fault(Fault.CORRUPT, after_bytes=10, path_contains=".manifest")
        server.set_edges([f"{proxy.url}/cdn/", healthy.url])
        name, _ = server.new_user(products=[SMALL])
        with cdn_manifests_only(server) as api:
            cli = EngineCli(tmp_path / "eng", api.url)
            cli.login(name, "secret-pw")
            target = tmp_path / "g"
            version = first_version(published_store, SMALL)
            lines = cli.ok("install", SMALL, "--version", version, "--target", str(target))
        assert lines[-1]["result"] == "completed"
        assert proxy.faults_injected >= 1
        assert_same_tree(target, build_dir(published_store, version, SMALL))


def test_a_trickling_edge_is_left_for_a_healthy_one(backend_factory: Any, published_store: Any,
                                                   tmp_path: Path) -> None:
    """A byte now and then keeps a read timeout quiet; the stall detector does not accept it."""
    server = backend_factory(settings={})
    healthy = server.start_cdn_edge()
    with FaultProxy(healthy.url.removesuffix("/cdn/")) as proxy:
        proxy.set_fault(Fault.SLOW, rate_bps=2_000, path_contains="/packs/")
        server.set_edges([f"{proxy.url}/cdn/", healthy.url])
        name, _ = server.new_user(products=[PRODUCT])
        cli = EngineCli(tmp_path / "eng", server.url, env={"LAUNCHER_ENGINE_STALL_TIMEOUT_S": "2"})
        cli.login(name, "secret-pw")
        version = first_version(published_store)
        target = tmp_path / "g"
        started = time.monotonic()
        lines = cli.ok("install", PRODUCT, "--version", version, "--target", str(target))
        assert lines[-1]["result"] == "completed"
        assert proxy.faults_injected >= 1
        assert time.monotonic() - started < 60  # at 2 kB/s the edge alone would take ~18 min
        assert_same_tree(target, build_dir(published_store, version))


def test_small_fetches_back_off_through_repeated_503(backend_factory: Any, published_store: Any,
                                                    tmp_path: Path) -> None:
    server = backend_factory(settings={})
    edge = server.start_cdn_edge()
    with FaultProxy(edge.url.removesuffix("/cdn/")) as proxy:
        proxy.set_fault(Fault.HTTP_503, path_contains=".manifest", times=3)
        server.set_edges([f"{proxy.url}/cdn/"])
        name, _ = server.new_user(products=[SMALL])
        with cdn_manifests_only(server) as api:
            cli = EngineCli(tmp_path / "eng", api.url)
            cli.login(name, "secret-pw")
            target = tmp_path / "g"
            lines = cli.ok("install", SMALL, "--target", str(target))
        assert lines[-1]["result"] == "completed"
        assert proxy.faults_injected == 3


def test_a_range_past_the_pack_end_fails_at_once_as_a_bad_manifest(
        backend_factory: Any, published_store: Any, tmp_path: Path) -> None:
    server = backend_factory(settings={})
    packs = sorted(Path(server.store_dir).glob(f"**/{SMALL}/packs/*.pack"))
    assert packs
    for p in packs:  # replace, never truncate in place: the files are hard links to a shared store
        p.unlink()
        p.write_bytes(b"")
    name, _ = server.new_user(products=[SMALL])
    cli = EngineCli(tmp_path / "eng", server.url)
    cli.login(name, "secret-pw")
    started = time.monotonic()
    code, lines, _ = cli.run("install", SMALL, "--target", str(tmp_path / "g"))
    assert code == 8, error_of(lines)
    assert "MANIFEST_INVALID" in error_of(lines) and "416" in error_of(lines)
    assert time.monotonic() - started < 20  # not six rounds of backoff per range


# -- 8. modes ------------------------------------------------------------------------------------

def test_installed_modes_carry_only_the_exec_bit(engine: EngineCli, tmp_path: Path) -> None:
    target = tmp_path / "g"
    engine.ok("install", PRODUCT, "--target", str(target))
    modes = {p.stat().st_mode & 0o777 for p in target.rglob("*") if p.is_file()}
    assert modes <= {0o644, 0o755} and 0o755 in modes, modes


def test_hostile_modes_are_normalised_at_commit(tmp_path: Path) -> None:
    """A signed manifest may carry 0o777 or 0o000: only the exec bit reaches the disk."""
    from engine.io.staging import Staging
    from patcher.manifest import ChunkEntry, FileEntry, Manifest

    def entry(path: str, mode: int) -> FileEntry:
        return FileEntry(path, 1, mode, hashlib.sha256(b"x").hexdigest(),
                         (ChunkEntry(0, 1, "0" * 64),))

    manifest = Manifest("p", "1", (entry("world.bin", 0o777), entry("locked.bin", 0o000)), (), {})
    install = tmp_path / "install"
    staging = Staging(install, "c" * 32, manifest)
    staging.prepare([0, 1])
    for i in (0, 1):
        os.pwrite(staging.fd(i), b"x", 0)
        assert staging.verify(i)
        staging.close_file(i)
        staging.commit_file(i)
    assert (install / "world.bin").stat().st_mode & 0o777 == 0o755
    assert (install / "locked.bin").stat().st_mode & 0o777 == 0o644
    staging.remove()
    assert sorted(p.name for p in install.iterdir()) == ["locked.bin", "world.bin"]


def test_commit_never_replaces_what_the_player_put_there(tmp_path: Path) -> None:
    from engine.core.errors import EngineError
    from engine.io.staging import Staging
    from patcher.manifest import ChunkEntry, FileEntry, Manifest

    manifest = Manifest("p", "1", (FileEntry("a/b.bin", 1, 0o644, hashlib.sha256(b"x").hexdigest(),
                                             (ChunkEntry(0, 1, "0" * 64),)),), (), {})
    install = tmp_path / "install"
    staging = Staging(install, "d" * 32, manifest)
    staging.prepare([0])
    (install / "a" / "b.bin").mkdir(parents=True)  # appeared during the install
    (install / "a" / "b.bin" / "mine.txt").write_text("mine")
    with pytest.raises(EngineError) as err:
        staging.commit_file(0)
    assert err.value.code == "PATH_CONFLICT" and err.value.item == "a/b.bin"
    assert (install / "a" / "b.bin" / "mine.txt").read_text() == "mine"



# -- 9. the commit moves whole folders, and only where nothing stands in the way --------------

def _staged_game(tmp_path: Path, paths: list[str]) -> tuple[Any, Path]:
    from engine.io.staging import Staging
    from patcher.manifest import ChunkEntry, FileEntry, Manifest

    files = tuple(FileEntry(p, 1, 0o755 if p.endswith(".sh") else 0o644,
                            hashlib.sha256(b"x").hexdigest(), (ChunkEntry(0, 1, "0" * 64),))
                  for p in paths)
    install = tmp_path / "install"
    staging = Staging(install, "e" * 32, Manifest("p", "1", files, ("empty/dir",), {}))
    staging.prepare(list(range(len(files))))
    for i in range(len(files)):
        os.pwrite(staging.fd(i), b"x", 0)
    staging.close()
    return staging, install


GAME = ["data/a.pak", "data/deep/b.pak", "bin/run.sh", "readme.txt"]


def test_commit_moves_whole_folders_with_their_modes(tmp_path: Path) -> None:
    staging, install = _staged_game(tmp_path, GAME)
    touched = staging.commit_all()
    staging.remove()
    assert sorted(str(p.relative_to(install)) for p in install.rglob("*") if p.is_file()) == \
        sorted(GAME)
    assert (install / "bin" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (install / "readme.txt").stat().st_mode & 0o777 == 0o644
    assert touched == {install, install / "data", install / "data" / "deep", install / "bin"}
    assert sorted(p.name for p in install.iterdir()) == ["bin", "data", "readme.txt"]


def test_commit_leaves_a_folder_the_player_made_and_merges_file_by_file(tmp_path: Path) -> None:
    """``data`` appeared in the install folder during the install with the player's file in
    it: the staged ``data`` is not moved over it; its files are committed one by one beside
    the player's, whose file is untouched."""
    staging, install = _staged_game(tmp_path, GAME)
    (install / "data").mkdir()
    (install / "data" / "mine.txt").write_text("mine")
    staging.commit_all()
    staging.remove()
    assert (install / "data" / "mine.txt").read_text() == "mine"
    assert (install / "data" / "deep" / "b.pak").read_bytes() == b"x"
    assert (install / "bin" / "run.sh").read_bytes() == b"x"


def test_commit_refuses_a_link_inside_a_staged_folder(tmp_path: Path) -> None:
    """A staged folder replaced by a link during the install: its folder does not move whole,
    the commit stops with UNSAFE_PATH naming the file behind the link, the link's target is
    never written to, and the link never reaches the game folder (removed with the staging)."""
    from engine.core.errors import EngineError

    staging, install = _staged_game(tmp_path, GAME)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "b.pak").write_bytes(b"y")
    deep = staging.root / "data" / "deep"
    (deep / "b.pak").unlink()
    deep.rmdir()
    deep.symlink_to(elsewhere)
    with pytest.raises(EngineError) as err:
        staging.commit_all()
    assert err.value.code == "UNSAFE_PATH" and err.value.item == "data/deep/b.pak"
    assert (elsewhere / "b.pak").read_bytes() == b"y"
    staging.remove()  # the player cancels
    assert not os.path.lexists(install / "data" / "deep")
    assert (elsewhere / "b.pak").read_bytes() == b"y"


def test_commit_leaves_what_the_game_does_not_hold_in_staging(tmp_path: Path) -> None:
    """A file and a link put into a staged folder during the install: the folder does not move
    whole; the game's files are committed one by one and the strangers go with the staging."""
    staging, install = _staged_game(tmp_path, GAME)
    (tmp_path / "out").mkdir()
    (staging.root / "data" / "planted.so").write_text("not the game's")
    os.symlink(tmp_path / "out", staging.root / "data" / "link")
    staging.commit_all()
    staging.remove()
    assert sorted(str(p.relative_to(install)) for p in install.rglob("*") if p.is_file()) == \
        sorted(GAME)
    assert not os.path.lexists(install / "data" / "link")
    assert sorted(os.listdir(tmp_path / "out")) == []


def test_commit_never_replaces_an_empty_folder_the_player_made(tmp_path: Path) -> None:
    """Even an empty folder at a game's top-level name is not replaced by the staged one (a
    rename onto an empty folder would): the game's files go into it one by one."""
    staging, install = _staged_game(tmp_path, GAME)
    (install / "bin").mkdir()
    ino = (install / "bin").stat().st_ino
    staging.commit_all()
    assert (install / "bin").stat().st_ino == ino
    assert (install / "bin" / "run.sh").read_bytes() == b"x"


def test_commit_fsyncs_every_folder_up_to_the_install_folder(tmp_path: Path) -> None:
    staging, install = _staged_game(tmp_path, ["x/y/z/f.sh", "top.txt"])
    touched = staging.commit_all()
    assert touched == {install, install / "x", install / "x" / "y", install / "x" / "y" / "z"}


def test_commit_finishes_a_commit_cut_short(tmp_path: Path) -> None:
    """A kill after ``bin`` moved: the next commit moves the rest and counts ``bin``'s files
    as committed (its mode fixed where an older engine left it to the commit)."""
    staging, install = _staged_game(tmp_path, GAME)
    install.mkdir(exist_ok=True)
    os.rename(staging.root / "bin", install / "bin")
    os.chmod(install / "bin" / "run.sh", 0o644)
    staging.commit_all()
    staging.remove()
    assert sorted(str(p.relative_to(install)) for p in install.rglob("*") if p.is_file()) == \
        sorted(GAME)
    assert (install / "bin" / "run.sh").stat().st_mode & 0o777 == 0o755
