"""Updates, verify/repair, rollback and move: real engine CLI against the real backend."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from testing.enginekit import STAGING, EngineCli, assert_same_tree, read_until, tree

PRODUCT = "star-courier"


def build(published_store: Any, version: str) -> Path:
    return Path(published_store.builds) / PRODUCT / version


def installed_row(cli: EngineCli) -> tuple[str, int]:
    db = sqlite3.connect(cli.data_dir / "state.sqlite")
    try:
        version, dirty = db.execute("SELECT version_id, dirty FROM installed").fetchone()
        return str(version), int(dirty)
    finally:
        db.close()


def test_update_across_every_version_step(engine: EngineCli, published_store: Any,
                                          tmp_path: Path) -> None:
    versions = published_store.product(PRODUCT).versions
    target = tmp_path / "game"
    engine.ok("install", PRODUCT, "--version", versions[0], "--target", str(target))
    for old, new in itertools.pairwise(versions):
        lines = engine.ok("update", PRODUCT, "--version", new)
        assert lines[-1]["result"] == "completed", (old, new)
        plan = next(ln["payload"] for ln in lines if ln.get("type") == "updatePlan")
        assert plan["fromVersion"] == old and plan["toVersion"] == new
        assert plan["downloadBytes"] < plan["fullDownloadBytes"], plan
        assert plan["reusedBytes"] > 0 or plan["patchBytes"] > 0
        assert_same_tree(target, build(published_store, new))
        assert not (target / STAGING).exists()
        assert installed_row(engine) == (new, 0)


def test_check_updates_reports_delta_and_full_sizes(engine: EngineCli, published_store: Any,
                                                    tmp_path: Path) -> None:
    versions = published_store.product(PRODUCT).versions
    engine.ok("install", PRODUCT, "--version", versions[0], "--target", str(tmp_path / "g"))
    answer = engine.ok("check-updates")[-1]["updates"][0]
    assert answer["isUpdateAvailable"] and answer["latestVersionId"] == versions[-1]
    assert answer["updateType"] in ("delta", "full")
    assert answer["downloadSizeBytes"] == min(answer["deltaDownloadSizeBytes"],
                                              answer["fullDownloadSizeBytes"])


def test_corrupted_file_is_found_and_repaired(engine: EngineCli, published_store: Any,
                                              tmp_path: Path) -> None:
    version = published_store.product(PRODUCT).versions[0]
    target = tmp_path / "game"
    engine.ok("install", PRODUCT, "--version", version, "--target", str(target))
    pak = max((p for p in target.rglob("*.pak")), key=lambda p: p.stat().st_size)
    with pak.open("r+b") as fh:
        fh.seek(pak.stat().st_size // 2)
        fh.write(b"\xff" * 3000)
    small = next(target.rglob("*.lua"))
    small.unlink()
    (target / "junk.tmp").write_text("not ours")
    code, lines, _ = engine.run("verify", PRODUCT)
    assert code == 7
    report = lines[-1]["verify"]
    assert not report["ok"]
    rel = pak.relative_to(target).as_posix()
    assert [d["path"] for d in report["damaged"]] == [rel]
    damaged = report["damaged"][0]
    assert damaged["offset"] <= pak.stat().st_size // 2 < damaged["offset"] + damaged["size"]
    assert small.relative_to(target).as_posix() in report["missing"]
    assert "junk.tmp" in report["extra"]
    lines = engine.ok("verify", PRODUCT, "--repair")
    assert lines[-1]["verify"]["ok"] is True
    (target / "junk.tmp").unlink()
    assert_same_tree(target, build(published_store, version))


def test_corrupt_patch_falls_back_to_chunks(backend_factory: Any, published_store: Any,
                                            tmp_path: Path) -> None:
    server = backend_factory()
    patches = list((Path(server.store_dir) / "cdn" / PRODUCT / "patches").glob("*.patch"))
    assert patches, "the demo catalog should ship patches"
    for p in patches:  # replace (not rewrite): the store files are hard links to a shared copy
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        tmp = p.with_suffix(".tmp")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, p)
    # format-3 documents carry small patches inline, unharmed here: a store without them
    for doc in (Path(server.store_dir) / "cdn" / PRODUCT / "deltas").glob("*.v3.delta"):
        doc.unlink()
    name, _ = server.new_user(products=[PRODUCT])
    cli = EngineCli(tmp_path / "eng", server.url)
    cli.login(name, "secret-pw")
    versions = published_store.product(PRODUCT).versions
    target = tmp_path / "game"
    cli.ok("install", PRODUCT, "--version", versions[0], "--target", str(target))
    lines = cli.ok("update", PRODUCT, "--version", versions[1])
    assert lines[-1]["result"] == "completed"
    fallbacks = [ln for ln in lines if ln.get("type") == "downloadError"]
    assert fallbacks and all(f["payload"]["errorCode"] == "DELTA_PATCH_APPLICATION_FAILED"
                             for f in fallbacks)
    assert_same_tree(target, build(published_store, versions[1]))


def test_a_record_vouching_for_a_damaged_source_costs_a_fallback_not_a_wrong_file(
        engine: EngineCli, published_store: Any, tmp_path: Path) -> None:
    """An update does not hash a patch's source that the verified-metadata record proves
    (metadata unchanged since it was proven). Damage below the file system keeps that
    metadata: here a source is damaged and its entry forged to the damaged file's metadata.
    The patched output (or the manifest derived from it) fails its check, the file comes from
    chunks, and the update ends with the new version byte for byte."""
    versions = published_store.product(PRODUCT).versions
    target = tmp_path / "game"
    engine.ok("install", PRODUCT, "--version", versions[0], "--target", str(target))
    old, new = build(published_store, versions[0]), build(published_store, versions[1])
    changed = sorted(str(p.relative_to(old)) for p in old.rglob("*")
                     if p.is_file() and (new / p.relative_to(old)).is_file()
                     and p.stat().st_size > 4096
                     and p.read_bytes() != (new / p.relative_to(old)).read_bytes())
    assert changed, "the demo's next version should change some files in place"
    record_path = engine.data_dir / "verified" / f"{PRODUCT}.json"
    doc = json.loads(record_path.read_text())
    for rel in changed:
        path = target / rel
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        st = path.stat()
        sha, _ = doc["files"][rel]  # the installed content's SHA-256, now claimed for damage
        doc["files"][rel] = [sha, [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                                   st.st_dev]]
    record_path.write_text(json.dumps(doc))
    lines = engine.ok("update", PRODUCT, "--version", versions[1])
    assert lines[-1]["result"] == "completed"
    errors = [ln["payload"] for ln in lines if ln.get("type") == "downloadError"]
    # the sources were taken on the record's word (not refused as changed, which hashing them
    # would have found), and each patched output failed its own check instead
    assert errors and all(e["errorCode"] == "DELTA_PATCH_APPLICATION_FAILED"
                          and "output hash mismatch" in e["errorMessage"] for e in errors), errors
    assert_same_tree(target, new)
    assert installed_row(engine) == (versions[1], 0)


def test_rollback_returns_to_the_previous_version(engine: EngineCli, published_store: Any,
                                                  tmp_path: Path) -> None:
    versions = published_store.product(PRODUCT).versions
    target = tmp_path / "game"
    engine.ok("install", PRODUCT, "--version", versions[0], "--target", str(target))
    engine.ok("update", PRODUCT, "--version", versions[1])
    lines = engine.ok("rollback", PRODUCT)
    assert lines[-1]["result"] == "completed"
    assert_same_tree(target, build(published_store, versions[0]))
    assert installed_row(engine) == (versions[0], 0)


def test_move_keeps_the_game_intact(engine: EngineCli, published_store: Any, tmp_path: Path) -> None:
    version = published_store.product(PRODUCT).versions[0]
    target = tmp_path / "game"
    engine.ok("install", PRODUCT, "--version", version, "--target", str(target))
    new_home = tmp_path / "elsewhere" / "star"
    engine.ok("move", PRODUCT, str(new_home))
    assert not target.exists()
    assert_same_tree(new_home, build(published_store, version))
    games = engine.ok("installed")[-1]["installed"]
    assert games[0]["path"] == str(new_home)
    assert engine.ok("verify", PRODUCT)[-1]["verify"]["ok"]


def _kill_when(proc: Any, predicate: Any, timeout: float = 60,
               delay: float = 0.0) -> list[dict[str, Any]]:
    try:
        seen = read_until(proc, predicate, timeout)
    except AssertionError:
        proc.kill()
        raise
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return seen


def _old_or_new(cli: EngineCli, target: Path, published_store: Any, old: str, new: str) -> None:
    """Invariant after any crash: a clean record matches its tree exactly; otherwise the
    install is marked dirty (not launchable) until the next run rolls the switch forward."""
    version, dirty = installed_row(cli)
    if not dirty:
        assert version in (old, new)
        assert tree(target) == tree(build(published_store, version))


@pytest.mark.parametrize("seed", [1, 2])
def test_kill9_during_download_and_switch_then_resume(backend: Any, published_store: Any,
                                                      tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    versions = published_store.product(PRODUCT).versions
    old, new = versions[0], versions[-1]
    name, _ = backend.new_user(products=[PRODUCT])
    cli = EngineCli(tmp_path / "eng", backend.url,
                    env={"LAUNCHER_ENGINE_QA_SWITCH_DELAY_S": "0.01"})
    cli.login(name, "secret-pw")
    target = tmp_path / "game"
    cli.ok("install", PRODUCT, "--version", old, "--target", str(target))
    # 1) during the download of the update
    proc = cli.popen("update", PRODUCT, "--version", new, "--limit", "300K")
    _kill_when(proc, lambda e: e.get("type") == "downloadTaskStatusUpdate"
               and e["payload"]["status"] == "downloading"
               and e["payload"]["downloadedBytes"] > rnd.uniform(0.1, 0.6) * e["payload"]["totalSizeBytes"])
    _old_or_new(cli, target, published_store, old, new)
    assert installed_row(cli) == (old, 0)  # nothing switched yet: the old version is playable
    # 2) during the switch
    proc = cli.popen("update", PRODUCT, "--version", new)
    _kill_when(proc, lambda e: e.get("type") == "downloadTaskStatusUpdate"
               and e["payload"]["status"] == "verifying", delay=rnd.uniform(0.05, 0.5))
    _old_or_new(cli, target, published_store, old, new)
    assert installed_row(cli) == (old, 1)  # killed mid-switch: marked dirty, not launchable
    # 3) resume finishes the job
    lines = cli.ok("update", PRODUCT, "--version", new)
    assert lines[-1]["result"] == "completed", json.dumps(lines[-1])
    assert_same_tree(target, build(published_store, new))
    assert installed_row(cli) == (new, 0)
    assert not (target / STAGING).exists()


def test_an_update_paused_while_its_patches_build_resumes(backend_factory: Any,
                                                          published_store: Any,
                                                          tmp_path: Path) -> None:
    """Review finding: an update builds its moves and patches several at once, the rest waiting
    for their turn; paused then, the waiting ones' cancel raced the running ones' leaving and
    the update ended in an ExceptionGroup: the pause turned into an error the task could not
    take (ILLEGAL_TRANSITION), which ended the daemon. The patches come from an edge slowed by a
    real proxy, so the pause lands while builds run and wait; the daemon goes on serving, the
    task is paused, the old version untouched, and the resumed update completes."""
    from testing.daemon import DaemonProcess
    from testing.faultproxy import Fault, FaultProxy

    server = backend_factory(settings={})
    # format-3 documents carry small patches inline: without them every patch is fetched
    for doc in (Path(server.store_dir) / "cdn" / PRODUCT / "deltas").glob("*.v3.delta"):
        doc.unlink()
    edge = server.start_cdn_edge()
    versions = published_store.product(PRODUCT).versions
    with FaultProxy(edge.url.removesuffix("/cdn/")) as proxy:
        server.set_edges([f"{proxy.url}/cdn/"])
        name, _ = server.new_user(products=[PRODUCT])
        cli = EngineCli(tmp_path / "eng", server.url)
        cli.login(name, "secret-pw")
        target = tmp_path / "game"
        cli.ok("install", PRODUCT, "--version", versions[0], "--target", str(target))
        cli.ok("settings", "auto_update", "false")  # only the update this test asks for
        proxy.set_fault(Fault.SLOW, path_contains="/patches/", rate_bps=4_000)
        proxy.reset_counters()
        daemon = DaemonProcess(cli.data_dir, server.url)
        daemon.start()
        try:
            follower = cli.popen("update", PRODUCT, "--version", versions[1])
            deadline = time.monotonic() + 60
            while not (tasks := [t for t in cli.ok("queue", "list", "--all")[-1]["tasks"]
                                 if t["kind"] == "update"]):
                assert time.monotonic() < deadline, "the update was not queued"
                time.sleep(0.05)
            task_id = tasks[0]["taskId"]
            while sum("/patches/" in r.path_qs for r in proxy.history) < 2:
                assert time.monotonic() < deadline, "the patches were not fetched"
                time.sleep(0.02)
            time.sleep(0.3)
            cli.ok("queue", "pause", task_id)
            assert _settled(cli, task_id, "paused", 30) == "paused"
            follower.communicate(timeout=30)  # the update's client ends with its task paused
            assert daemon.alive and cli.ok("status")[-1]["running"] is True
            assert installed_row(cli) == (versions[0], 0)  # the old version, untouched
            proxy.clear_fault()
            cli.ok("queue", "resume", task_id)
            assert _settled(cli, task_id, "completed", 60) == "completed"
        finally:
            daemon.stop()
    assert_same_tree(target, build(published_store, versions[1]))
    assert not (target / STAGING).exists()


def _settled(cli: EngineCli, task_id: str, wanted: str, timeout: float) -> str:
    """The task's status once it is ``wanted`` or an error (the assertion names the last one
    seen when neither comes in time)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = cli.ok("queue", "list", "--all")[-1]["tasks"]
        status = next(str(t["status"]) for t in tasks if t["taskId"] == task_id)
        if status in (wanted, "error"):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
