"""Self-update end to end without PyInstaller: small launcher builds that are real executables
(tests/packaging/fakebundle.py runs the real launcher.selfupdate code) published with the real
publisher, fetched and verified by the real engine CLI against the real backend on loopback,
switched and rolled back by real processes. The frozen bundle runs the same code
(tests/packaging/test_bundle.py, marker ``bundle``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.selfupdate import Layout, load_state, save_state
from launcher.updatecore import UpdateState, staged
from testing.daemon import DaemonProcess
from testing.enginekit import EngineCli, engine_env
from tests.conftest import cli
from tests.packaging.fakebundle import fake_bundle

STABLE, BETA = "game-launcher-stable", "game-launcher-beta"


def install_root(tmp: Path, version: str, behaviour: str = "ok") -> Layout:
    """What the Linux tarball unpacks: ROOT/versions/<v>/ and ROOT/current."""
    root = tmp / "game-launcher"
    fake_bundle(root / "versions" / version, version, behaviour)
    os.symlink(Path("versions") / version, root / "current")
    return Layout(root)


def start(layout: Layout, *args: str, env: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A player's start: ROOT/current/launcher."""
    return subprocess.run([str(layout.current_link / "launcher"), *args], capture_output=True,
                          text=True, env=engine_env(env), timeout=timeout, check=False)


def runs(layout: Layout) -> list[str]:
    log = layout.root / "runs.log"
    return log.read_text().split() if log.exists() else []


def current_target(layout: Layout) -> str:
    return Path(os.readlink(layout.current_link)).name


class Publisher:
    def __init__(self, backend: Any, tmp: Path) -> None:
        self.backend, self.tmp = backend, tmp

    def publish(self, product: str, version: str, behaviour: str = "ok") -> Path:
        build = fake_bundle(self.tmp / "builds" / product / version, version, behaviour)
        cli("publish", "--store", str(self.backend.store_dir), "--product", product,
            "--version", version, str(build))
        return build


def self_update(layout: Layout, engine: EngineCli, *extra: str) -> dict[str, Any]:
    proc = start(layout, "--data", str(engine.data_dir), "--backend", engine.backend_url,
                 *extra, "--self-update", timeout=300)
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(line, dict)
    return line


@pytest.fixture()
def player(backend: Any, tmp_path: Path) -> Iterator[EngineCli]:
    """A logged-in engine whose player owns both launcher products (the backend would grant
    them to everyone: see docs/packaging.md), with its daemon running as under the launcher's
    window: the self-update's engine commands go through it (a command is then a small client,
    not a whole engine started for each one)."""
    name, _ = backend.new_user(products=[STABLE, BETA])
    engine = EngineCli(tmp_path / "engine-data", backend.url)
    engine.login(name, "secret-pw")
    daemon = DaemonProcess(engine.data_dir, backend.url)
    daemon.start()
    try:
        assert engine.ok("status")[-1]["running"], daemon.log.read_text()
        yield engine
    finally:
        daemon.stop()


def test_update_restart_rollback_channels_and_refusals(backend: Any, player: EngineCli,
                                                       tmp_path: Path) -> None:
    pub = Publisher(backend, tmp_path)
    pub.publish(STABLE, "1.0.0")
    pub.publish(STABLE, "1.1.0")
    layout = install_root(tmp_path, "1.0.0")

    # 1.0 fetches 1.1 through the engine and stages it beside itself; nothing switches yet
    out = self_update(layout, player)
    assert out["result"] == "stage" and out["version"] == "1.1.0", out
    assert (layout.bundle("1.1.0") / "launcher").is_file()
    assert load_state(layout).pending == "1.1.0"
    assert current_target(layout) == "1.0.0"
    installed = {g["productId"]: g for g in player.ok("installed")[-1]["installed"]}
    assert installed[STABLE]["versionId"] == "1.1.0"
    assert Path(installed[STABLE]["path"]) == layout.channel_dir("stable")

    # restart: 1.0 starts 1.1 as a trial, 1.1 clears its marker, 1.1 is current from now on
    proc = start(layout)
    assert proc.returncode == 0, proc.stderr
    assert runs(layout) == ["1.1.0"]
    state = load_state(layout)
    assert (state.current, state.previous, state.pending) == ("1.1.0", "1.0.0", None)
    assert current_target(layout) == "1.1.0"
    assert not list(layout.root.glob("trial-*.marker"))

    # a broken 1.2 (it dies at start) is staged, tried once, rejected: 1.1 runs instead
    pub.publish(STABLE, "1.2.0", behaviour="crash")
    assert self_update(layout, player)["version"] == "1.2.0"
    proc = start(layout)
    assert proc.returncode == 0, proc.stderr
    assert "1.2.0: cannot start" in proc.stderr  # it did run, and failed
    assert runs(layout) == ["1.1.0", "1.1.0"]
    state = load_state(layout)
    assert state.current == "1.1.0" and "1.2.0" in state.rejected and state.pending is None
    assert current_target(layout) == "1.1.0"
    # ... and is never offered again
    assert self_update(layout, player)["result"] == "rejected_before"
    assert start(layout).returncode == 0 and runs(layout)[-1] == "1.1.0"

    # beta: the player switches channel; the beta product installs beside stable's
    pub.publish(BETA, "1.3.0b1")
    out = self_update(layout, player, "--channel", "beta")
    assert (out["result"], out["version"], out["channel"]) == ("stage", "1.3.0b1", "beta")
    assert start(layout).returncode == 0 and runs(layout)[-1] == "1.3.0b1"
    assert load_state(layout).current_channel == "beta"

    # back to stable: its latest (a fixed 1.2.1) is lower than 1.3.0b1 and still installs
    pub.publish(STABLE, "1.2.1")
    out = self_update(layout, player, "--channel", "stable")
    assert (out["result"], out["version"]) == ("stage", "1.2.1"), out
    assert start(layout).returncode == 0 and runs(layout)[-1] == "1.2.1"
    state = load_state(layout)
    assert (state.current, state.current_channel, state.previous) == ("1.2.1", "stable", "1.3.0b1")
    # bundles no longer needed were removed after the switch
    assert layout.on_disk() == {"1.2.1", "1.3.0b1"}

    # an unsigned build (its signature over other bytes) is refused (the backend already
    # refuses to hand it out; the engine checks the signature itself: test_engine_install.py)
    pub.publish(STABLE, "1.2.2")
    sig = backend.store_dir / "cdn" / STABLE / "manifests" / "1.2.2.sig"
    good = sig.read_bytes()
    sig.write_bytes(bytes(64))
    out = self_update(layout, player)
    assert out.get("error", {}).get("code") == "SELFUPDATE_ENGINE_FAILED", out
    assert out["error"]["engineCode"] in ("VERSION_NOT_FOUND", "MANIFEST_SIGNATURE_INVALID"), out
    assert "signature" in out["error"]["message"]
    assert not layout.bundle("1.2.2").exists() and load_state(layout).pending is None
    assert start(layout).returncode == 0 and runs(layout)[-1] == "1.2.1"
    sig.write_bytes(good)  # the publisher checks the previous versions of the next one

    # a build whose bytes on the CDN are damaged fails the engine's hash checks: never staged
    # (the new packs and patches of that publish, and the update document that carries small
    # patches inline; the signed delta index is left alone: the backend reads it to size the
    # update)
    content = backend.store_dir / "cdn" / STABLE
    before = set(content.rglob("*"))
    pub.publish(STABLE, "1.2.3")
    new_packs = [p for p in set(content.rglob("*")) - before
                 if p.is_file() and ("packs" in p.parts or "patches" in p.parts
                                     or p.name.endswith(".v3.delta"))]
    assert new_packs, sorted(str(p) for p in set(content.rglob("*")) - before)
    for pack in new_packs:
        data = bytearray(pack.read_bytes())
        for i in range(0, len(data), 97):
            data[i] ^= 0xFF
        pack.write_bytes(bytes(data))
    # (each damaged file is fetched twice, not six times: the retry is shown, the backoff
    # before the 3rd-6th tries is only waiting)
    player.ok("settings", "max_attempts", "2")
    out = self_update(layout, player)
    assert out.get("error", {}).get("engineCode") == "FILE_HASH_MISMATCH", out
    assert not layout.bundle("1.2.3").exists() and load_state(layout).pending is None
    assert start(layout).returncode == 0 and runs(layout)[-1] == "1.2.1"


def _staged_by_hand(tmp_path: Path, behaviour: str) -> Layout:
    """1.0 installed, 1.1 (``behaviour``) staged as pending: the switch without the engine."""
    layout = install_root(tmp_path, "1.0.0")
    fake_bundle(layout.bundle("1.1.0"), "1.1.0", behaviour)
    save_state(layout, staged(UpdateState(current="1.0.0"), "1.1.0", "stable"))
    return layout


def test_a_build_that_hangs_at_start_is_stopped_and_rolled_back(tmp_path: Path) -> None:
    layout = _staged_by_hand(tmp_path, "hang")
    proc = start(layout, env={"GAME_LAUNCHER_TRIAL_TIMEOUT": "3"})
    assert proc.returncode == 0, proc.stderr
    assert runs(layout) == ["1.0.0"]
    state = load_state(layout)
    assert state.current == "1.0.0" and state.rejected == ("1.1.0",)
    out = subprocess.run(["pgrep", "-f", str(layout.executable("1.1.0"))], capture_output=True,
                         text=True, check=False)
    assert out.stdout.strip() == ""  # the hung build was stopped, not left behind


def test_a_supervisor_killed_during_the_trial_rejects_the_build_at_next_start(
        tmp_path: Path) -> None:
    layout = _staged_by_hand(tmp_path, "hang")
    proc = subprocess.Popen([str(layout.current_link / "launcher")], env=engine_env(),
                            start_new_session=True)
    marker = layout.marker("1.1.0")
    # the trial runs, past its own start: killed before it, the trial's own supervise() found
    # its supervisor dead and rejected the build itself (1 run in 5 failed here)
    hanging = layout.root / "hanging-1.1.0"
    deadline = time.monotonic() + 60
    while not hanging.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hanging.exists() and marker.exists()
    # power loss: supervisor and trial gone at once (the trial runs in a session of its own, so
    # it is killed by name; left alive, a slow-starting trial would later hand off to the
    # current build itself and log a second run)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(["pkill", "-KILL", "-f", str(layout.executable("1.1.0"))], check=False)
    _until_gone(layout.executable("1.1.0"))
    assert load_state(layout).trial == "1.1.0"
    assert start(layout).returncode == 0
    assert runs(layout) == ["1.0.0"]
    assert load_state(layout).rejected == ("1.1.0",)


def _until_gone(executable: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-f", str(executable)], capture_output=True, text=True,
                             check=False)
        if not out.stdout.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"{executable} still runs")


def test_an_old_build_started_directly_runs_the_current_one(tmp_path: Path) -> None:
    layout = install_root(tmp_path, "1.0.0")
    fake_bundle(layout.bundle("1.1.0"), "1.1.0")
    save_state(layout, UpdateState(current="1.1.0", previous="1.0.0"))
    proc = subprocess.run([str(layout.executable("1.0.0"))], env=engine_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert runs(layout) == ["1.1.0"]
    assert current_target(layout) == "1.1.0"  # the link follows the state


def test_self_update_outside_an_install_root_says_so(tmp_path: Path) -> None:
    build = fake_bundle(tmp_path / "somewhere" / "1.0.0", "1.0.0")
    proc = subprocess.run([str(build / "launcher"), "--data", str(tmp_path / "d"),
                           "--self-update"], capture_output=True, text=True, timeout=60,
                          env=engine_env(), check=False)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["code"] == "SELFUPDATE_NOT_MANAGED"
    shutil.rmtree(build)
