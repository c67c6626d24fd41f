"""Self-update, the I/O shell over launcher/updatecore.py (the rules).

    ROOT/launcher, ROOT/launcher-engine   start scripts (the Linux tarball): run ROOT/current
    ROOT/current -> versions/<v>           the build started by default (a link, switched atomically)
    ROOT/versions/<v>/                     complete bundles
    ROOT/channels/<channel>/               the engine's install of the product game-launcher-<channel>
    ROOT/selfupdate.json                   UpdateState

Staging (``stage_update``): the engine installs or updates the channel's product into
``channels/<channel>`` with its usual machinery (signed manifest, delta, per-file SHA-256), a
full ``verify`` confirms it, and the folder is snapshotted to ``versions/<v>`` by hard links
(the engine replaces changed files by rename, never in place, so a link keeps the verified
bytes). Switching (``supervise``): at the next start the old build runs the new one as a trial
with ``GAME_LAUNCHER_TRIAL_MARKER`` set and waits until the new build deletes that file (it does
once its window is up: ``clear_trial_marker``). If the new build exits first or does not clear it
in time, it is stopped, rejected, and the old build starts its own window instead.

An update the engine cannot verify (bad signature, wrong hashes) fails inside the engine and is
never snapshotted, so it can never run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.frozen import EXE_NAME, bundle_dir
from launcher.updatecore import (
    TRIAL_TIMEOUT_S,
    OfferVerdict,
    SelfUpdateError,
    StartKind,
    TrialOutcome,
    UpdateErrorCode,
    UpdateState,
    choose_channel,
    finish_trial,
    judge_offer,
    judge_trial,
    plan_start,
    product_for,
    staged,
    versions_to_keep,
)

log = logging.getLogger("launcher.selfupdate")

MARKER_ENV = "GAME_LAUNCHER_TRIAL_MARKER"
TIMEOUT_ENV = "GAME_LAUNCHER_TRIAL_TIMEOUT"  # seconds; tests shorten the wait for a hung build
STATE_FILE = "selfupdate.json"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    def bundle(self, version: str) -> Path:
        return self.versions / version

    def executable(self, version: str) -> Path:
        return self.bundle(version) / EXE_NAME

    def channel_dir(self, channel: str) -> Path:
        return self.root / "channels" / channel

    @property
    def current_link(self) -> Path:
        return self.root / "current"

    def marker(self, version: str) -> Path:
        return self.root / f"trial-{version}.marker"

    def on_disk(self) -> frozenset[str]:
        """Versions whose bundle holds the launcher executable."""
        if not self.versions.is_dir():
            return frozenset()
        return frozenset(p.name for p in self.versions.iterdir()
                         if not p.name.startswith(".") and (p / EXE_NAME).is_file())


def managed_layout(bundle: Path | None = None) -> Layout | None:
    """The install root when this process runs from ROOT/versions/<v>/ (a frozen, installed
    bundle; ``bundle``: that folder, default this executable's); None from a source checkout or
    a bundle run where it was built."""
    here = bundle or bundle_dir()
    if here is None or here.parent.name != "versions":
        return None
    return Layout(here.parent.parent)


# -- state ------------------------------------------------------------------------------------


def load_state(layout: Layout) -> UpdateState:
    try:
        data = json.loads(layout.state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return UpdateState()
    except (OSError, ValueError) as exc:
        # an unreadable state must not stop the launcher: start over from the running build
        log.warning("self-update state unreadable (%s): starting from defaults", exc)
        return UpdateState()
    try:
        return UpdateState.from_json(data)
    except SelfUpdateError as exc:
        log.warning("%s: starting from defaults", exc)
        return UpdateState()


def save_state(layout: Layout, state: UpdateState) -> None:
    """Atomic: a crash leaves the old state or the new one, never half of either."""
    layout.root.mkdir(parents=True, exist_ok=True)
    tmp = layout.state_file.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(state.to_json(), fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, layout.state_file)
    _fsync_dir(layout.root)


def _fsync_dir(path: Path) -> None:
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """One launcher process at a time stages or switches (a kernel lock: never stale)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    fh = (layout.root / "selfupdate.lock").open("a+b")
    try:
        if sys.platform != "win32":
            import fcntl

            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise SelfUpdateError(UpdateErrorCode.LOCKED,
                                      "another launcher is updating this install") from exc
        yield
    finally:
        fh.close()


def set_channel(layout: Layout, channel: str) -> UpdateState:
    with locked(layout):
        state = choose_channel(load_state(layout), channel)
        save_state(layout, state)
        return state


def point_current(layout: Layout, version: str) -> None:
    """Switch ROOT/current to a bundle atomically (a new link renamed over the old one)."""
    if sys.platform == "win32":
        return  # no links for users there: the start script reads selfupdate.json (docs)
    tmp = layout.root / f".current.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(Path("versions") / version, tmp)
    os.replace(tmp, layout.current_link)
    _fsync_dir(layout.root)


# -- staging: the engine installs and verifies, then a snapshot becomes pending --------------


@dataclass(frozen=True)
class StageResult:
    verdict: OfferVerdict
    version: str
    channel: str
    state: UpdateState
    downloaded_bytes: int | None = None  # what the engine fetched for this build (the figure)


class EngineRunner:
    """``launcher-engine --json`` as a subprocess (the daemon's client when one runs)."""

    def __init__(self, command: list[str], data_dir: Path, backend_url: str | None = None,
                 env: dict[str, str] | None = None, timeout_s: float = 3600) -> None:
        self.command = command
        self.data_dir = data_dir
        self.backend_url = backend_url
        self.env = env
        self.timeout_s = timeout_s

    def run(self, *args: str) -> tuple[int, list[dict[str, Any]], str]:
        argv = [*self.command, "--data", str(self.data_dir), "--json"]
        if self.backend_url:
            argv += ["--backend", self.backend_url]
        proc = subprocess.run([*argv, *args], capture_output=True, text=True, env=self.env,
                              stdin=subprocess.DEVNULL, timeout=self.timeout_s, check=False)
        lines = []
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
        return proc.returncode, lines, proc.stderr

    def ok(self, *args: str) -> dict[str, Any]:
        """The final JSON object of a successful command; SelfUpdateError naming the engine's
        error code otherwise (a refused command: ``error``; a failed task: ``task``)."""
        code, lines, stderr = self.run(*args)
        last = lines[-1] if lines else {}
        if code == 0 and "error" not in last and last.get("result") != "error":
            return last
        error = last.get("error") or {}
        task = last.get("task") or {}
        engine_code = error.get("errorCode") or task.get("errorCode")
        message = error.get("errorMessage") or task.get("errorMessage") or \
            (stderr.strip().splitlines() or ["no answer"])[-1]
        raise SelfUpdateError(UpdateErrorCode.ENGINE_FAILED,
                              f"launcher-engine {args[0]} failed (exit {code}): {message}",
                              engine_code)


def _installed(engine: EngineRunner, product: str) -> dict[str, Any] | None:
    for game in engine.ok("installed").get("installed", []):
        if game.get("productId") == product:
            return dict(game)
    return None


def _fingerprint(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) per file: the engine replaces files by rename, so an unchanged
    fingerprint means the very bytes it verified."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".launcher-")]
        for name in filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[p.relative_to(folder).as_posix()] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def _snapshot(source: Path, dest: Path) -> None:
    """Hard links where the filesystem allows (no bytes copied), else copies."""
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = [d for d in dirnames if not d.startswith(".launcher-")]
        rel = Path(dirpath).relative_to(source)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            src, dst = Path(dirpath) / name, dest / rel / name
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def stage_update(layout: Layout, engine: EngineRunner, channel: str | None = None) -> StageResult:
    """Bring the channel's launcher build through the engine and stage it for the next start.

    Raises SelfUpdateError: ENGINE_FAILED (with the engine's code: a bad signature, a hash
    mismatch, not entitled...), NOT_VERIFIED, SNAPSHOT_CHANGED, BUNDLE_INVALID, LOCKED."""
    with locked(layout):
        state = load_state(layout)
        channel = channel or state.channel
        product = product_for(channel)
        slot = layout.channel_dir(channel)
        if _installed(engine, product) is None:
            slot.parent.mkdir(parents=True, exist_ok=True)
            done = engine.ok("install", product, "--target", str(slot))
        else:
            done = engine.ok("update", product)
        fetched = (done.get("task") or {}).get("downloadedBytes")
        before = _fingerprint(slot)
        report = engine.ok("verify", product).get("verify", {})
        if not report.get("ok"):
            raise SelfUpdateError(UpdateErrorCode.NOT_VERIFIED,
                                  f"{product} {report.get('versionId')} failed verification")
        version = str(report["versionId"])
        verdict = judge_offer(state, version, channel)
        if verdict is not OfferVerdict.STAGE:
            return StageResult(verdict, version, channel, state, fetched)
        if not (slot / EXE_NAME).is_file():
            raise SelfUpdateError(UpdateErrorCode.BUNDLE_INVALID,
                                  f"{product} {version} has no {EXE_NAME}")
        partial = layout.versions / f".{version}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        _snapshot(slot, partial)
        game = _installed(engine, product)
        if _fingerprint(slot) != before or game is None or game.get("versionId") != version:
            shutil.rmtree(partial, ignore_errors=True)
            raise SelfUpdateError(UpdateErrorCode.SNAPSHOT_CHANGED,
                                  f"{product} changed while it was staged; try again")
        final = layout.bundle(version)
        if final.exists():  # a leftover of a rejected or pruned trial: this one is verified
            shutil.rmtree(final)
        os.replace(partial, final)
        _fsync_dir(layout.versions)
        state = staged(state, version, channel)
        save_state(layout, state)
        return StageResult(verdict, version, channel, state, fetched)


# -- start: run the right build, try a staged one under this one -----------------------------


def clear_trial_marker() -> bool:
    """Called by a build once it is up (its window shown): confirms a trial start."""
    marker = os.environ.pop(MARKER_ENV, None)
    if not marker:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(marker)
    return True


def _trial_timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, TRIAL_TIMEOUT_S))
    except ValueError:
        return TRIAL_TIMEOUT_S


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a trial and everything it started (its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if sys.platform == "win32":
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _run_trial(layout: Layout, version: str, argv: list[str]) -> tuple[TrialOutcome,
                                                                        subprocess.Popen[bytes] | None]:
    marker = layout.marker(version)
    marker.write_text(f"{os.getpid()}\n")
    env = {**os.environ, MARKER_ENV: str(marker)}
    env.pop("_MEIPASS2", None)  # PyInstaller: the child must use its own bundle, not ours
    try:
        proc = subprocess.Popen([str(layout.executable(version)), *argv], env=env,
                                start_new_session=True)
    except OSError as exc:
        log.warning("launcher %s could not be started: %s", version, exc)
        marker.unlink(missing_ok=True)
        return TrialOutcome.NOT_STARTED, None
    started, timeout = time.monotonic(), _trial_timeout()
    while True:
        exited = proc.poll() is not None
        outcome = judge_trial(not marker.exists(), exited, time.monotonic() - started, timeout)
        if outcome is not None:
            break
        time.sleep(0.05)
    marker.unlink(missing_ok=True)
    if outcome is not TrialOutcome.CONFIRMED:
        _stop(proc)
        return outcome, None
    return outcome, proc


def _forward(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the build that now runs, passing on a stop request and its exit code."""
    def pass_on(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    if sys.platform != "win32":
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, pass_on)
    return proc.wait()


def _prune(layout: Layout, state: UpdateState) -> None:
    keep = versions_to_keep(state)
    for version in layout.on_disk() - keep:
        shutil.rmtree(layout.bundle(version), ignore_errors=True)


def supervise(layout: Layout, own_version: str, argv: list[str]) -> int | None:
    """Run at a start of the application: None when this process should go on and show its own
    window; else the exit code of the build that ran instead (a confirmed trial or the current
    build, this process having waited for it)."""
    try:
        with locked(layout):
            state = load_state(layout)
            plan = plan_start(state, own_version, layout.on_disk())
            for note in plan.notes:
                log.warning("self-update: %s", note)
            if plan.state != state:
                save_state(layout, plan.state)  # the trial is on record before it starts
            if plan.kind is StartKind.RUN_SELF:
                if plan.notes:
                    point_current(layout, own_version)
                return None
            assert plan.version is not None
            if plan.kind is StartKind.HAND_OFF:
                point_current(layout, plan.version)
                proc = subprocess.Popen([str(layout.executable(plan.version)), *argv])
            else:
                outcome, trial = _run_trial(layout, plan.version, argv)
                state = finish_trial(plan.state, outcome)
                save_state(layout, state)
                log.warning("self-update: trial of %s %s", plan.version, outcome.value)
                if trial is None:
                    return None  # rejected: this build goes on
                proc = trial
                point_current(layout, plan.version)
                _prune(layout, state)
    except SelfUpdateError as exc:  # another launcher is switching: just run this one
        log.warning("%s", exc)
        return None
    return _forward(proc)


# -- entry points for launcher/app.py ---------------------------------------------------------


def run_self_update(layout: Layout | None, data_dir: Path, backend_url: str | None,
                    channel: str | None, *, stage: bool) -> int:
    """``launcher [--channel C] [--self-update]``: one JSON line, exit 0 or 1 (2: not installed
    from a bundle, or a bad channel)."""
    from launcher.frozen import engine_command

    try:
        if layout is None:
            raise SelfUpdateError(UpdateErrorCode.NOT_MANAGED,
                                  "this launcher does not run from an installed bundle "
                                  "(ROOT/versions/<v>/); update a source checkout with git")
        state = set_channel(layout, channel) if channel else load_state(layout)
        if not stage:
            print(json.dumps({"result": "channel", "state": state.to_json()}), flush=True)
            return 0
        result = stage_update(layout, EngineRunner(engine_command(), data_dir, backend_url))
    except SelfUpdateError as exc:
        print(json.dumps({"error": {"code": exc.code.value, "engineCode": exc.engine_code,
                                    "message": exc.message}}), flush=True)
        return 2 if exc.code in (UpdateErrorCode.NOT_MANAGED, UpdateErrorCode.BAD_CHANNEL) else 1
    print(json.dumps({"result": result.verdict.value, "version": result.version,
                      "channel": result.channel, "downloadedBytes": result.downloaded_bytes,
                      "state": result.state.to_json()}), flush=True)
    return 0


BACKGROUND_DELAY_S = 10.0  # let the window paint and the daemon come up first


def stage_in_background(layout: Layout, data_dir: Path, backend_url: str | None,
                        delay_s: float = BACKGROUND_DELAY_S) -> None:
    """Stage the channel's latest build while the window runs (a daemon thread: the work is
    subprocesses of the engine CLI, which go through the running daemon)."""
    import threading

    from launcher.frozen import engine_command

    def work() -> None:
        time.sleep(delay_s)
        try:
            result = stage_update(layout, EngineRunner(engine_command(), data_dir, backend_url))
        except (SelfUpdateError, OSError, subprocess.SubprocessError) as exc:
            log.warning("self-update: %s", exc)
            return
        log.warning("self-update: %s %s (%s)", result.channel, result.version,
                    result.verdict.value)

    threading.Thread(target=work, name="selfupdate", daemon=True).start()
