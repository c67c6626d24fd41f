"""Kill -9 / resume benchmark: SIGKILL the real engine at random moments of an install or an
update (download, commit, switch, cleanup), rerun the same command, and check that the install
is byte-exact, that no staging is left, and how much was downloaded twice.

    .venv/bin/python bench/kill_resume.py [--size 64] [--kills 24] [--seed 1] [--json]

What runs (everything real, as subprocesses, bound to 127.0.0.1):

* a content store with the demo catalog (``backend.demo.publish_catalog(size_mb=SIZE, level=3)``,
  as the tests' ``published_store``): star-courier 1.0.0, 1.1.0, 1.2.0, 2.0.0 (each about SIZE
  MiB) and tiny-tactics. Builds and store are cached under ``--work`` (default
  ``$TMPDIR/launcher-bench-kill-resume``); the first run generates and publishes them (about
  3.5 minutes at 64 MiB on 2 cores, mostly zstd-19 patches), later runs reuse them;
* ``launcher-backend serve --data DIR --port P --cdn-edge http://PROXY/cdn/`` on a fresh data dir
  holding a hard-linked copy of the store; a user created and granted with ``launcher-backend
  user add`` / ``grant``;
* a counting reverse proxy (``testing.faultproxy.FaultProxy``, no fault ever armed) in front of
  the backend: it is the only CDN edge in ``cdnSources``, so every manifest, signature, delta
  index, patch and pack byte the engine fetches passes through it and is counted
  (``bytes_sent``: response bodies handed to the client socket). API calls (login, grants,
  token refresh) go to the backend directly and are not counted;
* the engine: ``python -m engine.cli --data E --backend URL --json install star-courier
  --version 1.0.0 --target T`` or ``... update star-courier --version V`` as a subprocess.

Operations: ``install`` (fresh install of 1.0.0), ``update-1.1.0`` and ``update-2.0.0`` (of an
installed 1.0.0). Each trial starts from a copy of a template (an engine data dir logged in, plus
for updates the 1.0.0 install made once by the engine), always at the same paths (the engine
records absolute paths).

Calibration, before the trials: per operation one unkilled run under the trial conditions (the
speed limit and the QA switch delay) gives its duration and the moment "verifying" appears
(the install commit / the update switch starts), and one unkilled run without limit gives the
clean byte count (the limited run's count is reported beside it; they must agree).

Trials (``--kills N``, seeded by ``--seed``): each picks an operation and a kill mode:

* ``random``: SIGKILL after a delay drawn uniformly from [0, the calibrated duration] after
  spawning the process (some kills land before the task starts, during Python start-up, and a
  few after the final result line, while the process exits);
* ``commit`` (``--commit-share`` of the trials): wait for the "verifying" status line, then
  SIGKILL after a delay drawn uniformly from [0, the calibrated verifying-to-exit time].

The killed run is slowed by the engine's global speed limit ``LAUNCHER_ENGINE_GLOBAL_LIMIT_BPS``
(``--limit``, default 8M) so kills land mid-transfer; ``commit`` trials and half of the
``random`` ones also set ``LAUNCHER_ENGINE_QA_SWITCH_DELAY_S`` (``--qa-delay``, default 0.003 s:
a sleep between renames in the install commit and in the update switch). Both are environment
settings of the killed process only: a task's ``--limit`` would be stored with the task and slow
the rerun too. The rerun is the same command line without them, run to completion.

After each trial: the rerun's exit code (0 expected) and final ``result``; the install folder
against the published build (``testing.enginekit.tree``: SHA-256 and exec bit of every file, empty
folders; ``launcher-build.json`` is not installed); whether ``.launcher-staging`` is left; bytes
through the proxy during the killed run and during the rerun; the task's ``downloadSizeBytes``
(final JSON line); re-download = killed + rerun bytes - the clean run's bytes; the phase the kill
landed in, from the last status line the killed process printed: ``before-start`` (nothing, or
only "queued"), ``downloading`` (fetch, patch application, staging), ``verifying-commit``
("verifying": install commit / update switch and the cleanup after it), ``after-finish`` (a
final result line, or the process had exited before the signal).

Where a re-download comes from: just before the signal, the bench reads the proxy's counter and
/proc/net/tcp for the connections to the proxy (the proxy side's send queues + the engine
side's receive queues: ``queued_at_kill``). ``read_by_engine`` = bytes sent so far -
queued_at_kill: what the engine process had read from its sockets. ``never_read`` = the killed
run's bytes - read_by_engine: sent by the CDN but never read by the engine, i.e. queued in
socket buffers at the kill plus what the kernel still accepted into them while the killed
process was being torn down (``sent_after_kill``). ``read_not_kept`` = re-download - never_read
= read_by_engine - what the rerun did not fetch again: bytes the engine had read but fetched
again (not yet journaled, partial blocks, update patches not yet recorded, range rounding).
Small error: the proxy counts a piece once aiohttp accepted it, which may be up to ~128 KiB per
connection before the kernel has it. After the rerun, ``launcher-engine installed`` must report
the operation's version, not dirty.

Prints the calibration, a table (one row per trial), a summary and a table per phase and per
operation; with ``--json`` the last line is one JSON object: ``kills`` (trials; each sends one
SIGKILL unless the process already exited: ``kills_delivered``), ``byte_exact``,
``staging_left``, ``rerun_failed``, ``state_wrong``, ``worst_redownload_bytes``,
``worst_redownload_pct`` (the largest re-download as a % of its operation's
``downloadSizeBytes``; not necessarily the same trial), ``median_redownload_bytes``,
``by_phase``, ``by_op``, ``calibration``, ``trials`` (list), ``settings``. Exit status 0 when
every trial passed (rerun exit 0 and completed, byte-exact, no staging, installed record right),
1 otherwise; a failed trial's folders are copied into the run folder (kept with ``--keep``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.core.events import STATUS  # noqa: E402
from testing import processes  # noqa: E402
from testing.enginekit import STAGING, tree  # noqa: E402
from testing.faultproxy import FaultProxy  # noqa: E402

MB = 1_000_000
PRODUCT = "star-courier"
BASE_VERSION = "1.0.0"
USER, PASSWORD = "bench", "bench-pw"
OPS = ("install", "update-1.1.0", "update-2.0.0")
RUN_TIMEOUT_S = 300.0


def log(msg: str) -> None:
    print(f"[bench/kill_resume {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------------
# Content (cached under --work)


def ensure_store(work: Path, size_mb: int) -> tuple[Path, Path]:
    """The demo catalog's builds and published store for ``size_mb`` (generated once)."""
    from backend.demo import publish_catalog

    base = work / f"catalog-s{size_mb}"
    marker = base / ".published"
    if not marker.exists():
        shutil.rmtree(base / "store", ignore_errors=True)
        t0 = time.monotonic()
        log(f"generating and publishing the demo catalog ({size_mb} MiB per version) into {base};"
            " this is done once")
        products = publish_catalog(base / "store", base / "builds", size_mb, level=3)
        marker.write_text(json.dumps(products))
        log(f"catalog ready in {time.monotonic() - t0:.0f} s")
    return base / "store", base / "builds"


# -------------------------------------------------------------------------------------------------
# Processes


PYCACHE: Path | None = None


def base_env() -> dict[str, str]:
    env = processes.subprocess_env()
    if PYCACHE is not None:  # bytecode outside the repo, compiled once
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    for key in list(env):  # nothing inherited may change the engine's behaviour
        if key.startswith("LAUNCHER_ENGINE_"):
            del env[key]
    for key in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(key, None)
    return env


@dataclass
class Stack:
    data: Path
    backend: processes.ServerProcess
    proxy: FaultProxy

    @property
    def url(self) -> str:
        return self.backend.url

    def stop(self) -> None:
        self.backend.stop()
        self.proxy.stop()


def start_stack(run_dir: Path, store_dir: Path) -> Stack:
    """Backend (fresh data dir, hard-linked store) whose only CDN edge is the counting proxy in
    front of the backend's own /cdn/ route."""
    data = run_dir / "backend"
    data.mkdir(parents=True)
    processes.copy_store(store_dir, data / "store")
    last: Exception | None = None
    for _ in range(3):  # the port picked may be taken in between: try another
        port = processes.free_port()
        proxy = FaultProxy(f"http://127.0.0.1:{port}").start()
        try:
            backend = processes.ServerProcess(
                [sys.executable, "-m", "backend.cli", "serve", "--data", str(data),
                 "--host", "127.0.0.1", "--port", str(port), "--cdn-edge", f"{proxy.url}/cdn/"],
                data / "backend.log", timeout=120, env=base_env())
        # ValueError too: ServerProcess reads its closed log when the server does not start
        except (RuntimeError, ValueError) as exc:
            proxy.stop()
            last = exc
            continue
        stack = Stack(data, backend, proxy)
        try:
            processes.backend_cli(data, "user", "add", USER, "--password", PASSWORD,
                                  env=base_env())
            processes.backend_cli(data, "grant", USER, PRODUCT, env=base_env())
        except BaseException:
            stack.stop()
            raise
        return stack
    raise RuntimeError(f"backend did not start: {last}")


@dataclass
class EngineRun:
    argv: list[str]
    code: int | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)  # (s since spawn, line)
    wall_s: float = 0.0
    killed: bool = False  # SIGKILL delivered while the process was alive
    kill_at_s: float | None = None
    t_verifying: float | None = None
    backlog: dict[str, int] | None = None  # socket_backlog() just before the kill
    sent_at_kill: int | None = None  # the proxy's bytes_sent counter, same moment

    def events(self) -> list[dict[str, Any]]:
        out = []
        for _, line in self.lines:
            with contextlib.suppress(ValueError):
                if line.startswith("{"):
                    out.append(json.loads(line))
        return out

    def last(self) -> dict[str, Any]:
        events = self.events()
        return events[-1] if events else {}

    def final(self) -> dict[str, Any]:
        return next((e for e in reversed(self.events()) if "result" in e or "error" in e), {})


class Engine:
    """One engine data dir; commands run as ``python -m engine.cli ... --json``."""

    def __init__(self, data: Path, stack: Stack, stderr_log: Path) -> None:
        self.data = data
        self.stack = stack
        self.stderr_log = stderr_log
        self.proxy = stack.proxy

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "engine.cli", "--data", str(self.data),
                "--backend", self.stack.url, "--json", *args]

    def run(self, *args: str, env: dict[str, str] | None = None,
            kill_after_s: float | None = None, kill_after_verifying_s: float | None = None,
            verifying_timeout_s: float = RUN_TIMEOUT_S) -> EngineRun:
        """Run to completion, or SIGKILL the process ``kill_after_s`` after spawning it, or
        ``kill_after_verifying_s`` after it printed the "verifying" status line (when it
        never does, it runs to completion and ``killed`` stays False)."""
        run = EngineRun(self.argv(*args))
        verifying = threading.Event()
        with self.stderr_log.open("ab") as err:
            err.write(f"\n--- {' '.join(args)} env={env or {}}\n".encode())
            err.flush()
            t0 = time.monotonic()
            proc = subprocess.Popen(run.argv, stdout=subprocess.PIPE, stderr=err,
                                    stdin=subprocess.DEVNULL, env={**base_env(), **(env or {})},
                                    cwd=REPO, start_new_session=True)

            def read() -> None:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    t = time.monotonic() - t0
                    line = raw.decode(errors="replace").strip()
                    run.lines.append((t, line))
                    if run.t_verifying is None and '"status": "verifying"' in line:
                        run.t_verifying = t
                        verifying.set()
                verifying.set()  # EOF: the process is gone

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            try:
                deadline = t0 + RUN_TIMEOUT_S
                if kill_after_s is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(kill_after_s)
                    self._kill(proc, run, t0, self.proxy)
                elif kill_after_verifying_s is not None:
                    verifying.wait(verifying_timeout_s)
                    if run.t_verifying is not None:
                        left = t0 + run.t_verifying + kill_after_verifying_s - time.monotonic()
                        if left > 0:
                            with contextlib.suppress(subprocess.TimeoutExpired):
                                proc.wait(left)
                        self._kill(proc, run, t0, self.proxy)
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(proc, run, t0)
                proc.wait()
                raise RuntimeError(f"engine {' '.join(args)} timed out") from None
            finally:
                if proc.poll() is None:  # an exception above: never leave it running
                    self._kill(proc, run, t0)
                    proc.wait()
            run.wall_s = time.monotonic() - t0
            reader.join(30)
        run.code = proc.returncode
        return run

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes], run: EngineRun, t0: float,
              proxy: FaultProxy | None = None) -> None:
        if proc.poll() is None:
            if proxy is not None:
                run.backlog = socket_backlog(proxy.port)
                run.sent_at_kill = proxy.bytes_sent
            run.kill_at_s = time.monotonic() - t0
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the engine and nothing else
            run.killed = True

    def ok(self, *args: str, env: dict[str, str] | None = None) -> EngineRun:
        run = self.run(*args, env=env)
        final = run.final()
        if run.code != 0 or ("task" in final and final.get("result") != "completed"):
            raise RuntimeError(f"engine {' '.join(args)} exited {run.code}: "
                               f"{[ln for _, ln in run.lines[-3:]]}; see {self.stderr_log}")
        return run


def socket_backlog(proxy_port: int) -> dict[str, int]:
    """Bytes the proxy has already counted as sent that the engine has not read yet, from
    /proc/net/tcp (established IPv4 loopback connections with the proxy's port): the proxy
    side's send queue (unacknowledged) plus the engine side's receive queue (unread). Not
    included: what the proxy's asyncio transport still buffers in user space (at most about
    128 KiB per connection, aiohttp's write high-water mark plus one 64 KiB piece)."""
    unacked = unread = conns = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if len(f) < 5 or f[3] != "01":  # ESTABLISHED only
                continue
            local_port = int(f[1].rsplit(":", 1)[1], 16)
            remote_port = int(f[2].rsplit(":", 1)[1], 16)
            tx, rx = (int(x, 16) for x in f[4].split(":"))
            if local_port == proxy_port:  # the proxy's end of an engine connection
                unacked += tx
                conns += 1
            elif remote_port == proxy_port:  # the engine's end
                unread += rx
    return {"unacked": unacked, "unread": unread, "connections": conns}


def settled_bytes(proxy: FaultProxy, quiet_s: float = 0.3, timeout_s: float = 5.0) -> int:
    """The proxy's byte counter once it stopped moving (handlers of a killed client's
    connections notice the closed socket and stop)."""
    last = proxy.bytes_sent
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = proxy.bytes_sent
        if now == last:
            return now
        last = now
    return last


# -------------------------------------------------------------------------------------------------
# Operations, templates and checks


def op_args(op: str, target: Path) -> tuple[str, ...]:
    if op == "install":
        return ("install", PRODUCT, "--version", BASE_VERSION, "--target", str(target))
    version = op.removeprefix("update-")
    return ("update", PRODUCT, "--version", version)


def op_version(op: str) -> str:
    return BASE_VERSION if op == "install" else op.removeprefix("update-")


@dataclass
class Paths:
    """Fixed places a trial runs in (the engine stores absolute paths), and the templates."""

    root: Path

    @property
    def cur(self) -> Path:
        return self.root / "cur"

    @property
    def engine(self) -> Path:
        return self.cur / "engine"

    @property
    def game(self) -> Path:
        return self.cur / "game"

    def template(self, name: str) -> Path:
        return self.root / f"template-{name}"

    def reset(self, template: str, stack: Stack, log_path: Path) -> None:
        """cur/ = a copy of a template (engine data, and the install for updates), logged in
        afresh: every engine process trades its stored refresh token for a new one (rotation),
        so a template's token is spent once any copy has run."""
        shutil.rmtree(self.cur, ignore_errors=True)
        shutil.copytree(self.template(template), self.cur, symlinks=True)
        Engine(self.engine, stack, log_path).ok("login", USER, "--password", PASSWORD)

    def save(self, template: str) -> None:
        dest = self.template(template)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.cur, dest, symlinks=True)


def op_template(op: str) -> str:
    return "login" if op == "install" else "installed"


def make_templates(paths: Paths, stack: Stack, log_path: Path) -> None:
    shutil.rmtree(paths.cur, ignore_errors=True)
    paths.cur.mkdir(parents=True)
    engine = Engine(paths.engine, stack, log_path)
    engine.ok("login", USER, "--password", PASSWORD)
    paths.save("login")
    engine.ok(*op_args("install", paths.game))
    paths.save("installed")


def listing(root: Path, limit: int = 20) -> list[str]:
    """What is under a folder (relative paths, sizes), for reports."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out.append(f"{rel}/" if p.is_dir() else f"{rel} ({p.stat().st_size} B)")
        if len(out) >= limit:
            out.append("…")
            break
    return out


def compare_tree(installed: Path, want: dict[str, tuple[str, int]]) -> dict[str, list[str]]:
    got = tree(installed) if installed.exists() else {}
    return {"missing": sorted(want.keys() - got.keys()),
            "extra": sorted(got.keys() - want.keys()),
            "differ": sorted(k for k in want.keys() & got.keys() if want[k] != got[k])}


def phase_of(run: EngineRun) -> str:
    """Where the kill landed, from the last status line the killed process printed."""
    if not run.killed:
        return "after-finish"
    status = None
    for e in run.events():
        if "result" in e:
            return "after-finish"
        if e.get("type") == STATUS:
            status = e["payload"]["status"]
    if status in (None, "queued"):
        return "before-start"
    if status == "verifying":
        return "verifying-commit"
    if status in ("completed", "error", "cancelled"):
        return "after-finish"
    return "downloading"


def last_downloaded(run: EngineRun) -> int:
    for e in reversed(run.events()):
        if e.get("type") == STATUS:
            return int(e["payload"].get("downloadedBytes") or 0)
    return 0


# -------------------------------------------------------------------------------------------------
# Calibration and trials


@dataclass
class Calibration:
    op: str
    limited_wall_s: float  # under trial conditions (limit + QA switch delay)
    t_verifying_s: float  # "verifying" printed (commit/switch starts), same run
    commit_s: float  # verifying -> exit
    clean_bytes: int  # bytes through the proxy, unlimited run
    limited_bytes: int  # bytes through the proxy, limited run (should equal clean_bytes)
    download_size_bytes: int  # the task's downloadSizeBytes
    unlimited_wall_s: float


def calibrate(op: str, paths: Paths, stack: Stack, log_path: Path,
              killed_env: dict[str, str]) -> Calibration:
    proxy = stack.proxy
    engine = Engine(paths.engine, stack, log_path)
    paths.reset(op_template(op), stack, log_path)
    before = settled_bytes(proxy)
    limited = engine.ok(*op_args(op, paths.game), env=killed_env)
    limited_bytes = settled_bytes(proxy) - before
    paths.reset(op_template(op), stack, log_path)
    before = settled_bytes(proxy)
    clean = engine.ok(*op_args(op, paths.game))
    clean_bytes = settled_bytes(proxy) - before
    task = clean.final().get("task") or {}
    t_ver = limited.t_verifying if limited.t_verifying is not None else limited.wall_s
    return Calibration(op, round(limited.wall_s, 3), round(t_ver, 3),
                       round(limited.wall_s - t_ver, 3), clean_bytes, limited_bytes,
                       int(task.get("downloadSizeBytes") or 0), round(clean.wall_s, 3))


@dataclass
class Trial:
    n: int
    op: str
    mode: str  # random | commit
    qa_delay: bool
    planned_delay_s: float  # after spawn (random) or after "verifying" (commit)
    kill_at_s: float | None  # seconds after spawn the signal was sent (None: not sent)
    killed: bool
    phase: str
    killed_last_status_bytes: int  # downloadedBytes of the killed run's last status line
    killed_code: int | None
    killed_bytes: int
    rerun_bytes: int
    clean_bytes: int
    download_size_bytes: int
    redownload_bytes: int
    redownload_pct: float
    queued_at_kill_bytes: int  # socket_backlog() at the kill: sent by the CDN, not yet read
    sent_after_kill_bytes: int  # counted by the proxy after the signal (process teardown)
    read_by_engine_bytes: int  # sent before the kill - queued_at_kill
    never_read_bytes: int  # killed_bytes - read_by_engine: sent, never read by the engine
    read_not_kept_bytes: int  # redownload - never_read: read by the engine, fetched again
    rerun_code: int | None
    rerun_result: str | None
    rerun_wall_s: float
    byte_exact: bool
    staging_left: bool
    installed_version: str | None  # `installed` after the rerun
    installed_dirty: bool | None
    tree_diff: dict[str, list[str]] = field(default_factory=dict)
    staging_listing: list[str] = field(default_factory=list)
    rerun_error_line: str | None = None
    killed_last_lines: list[str] = field(default_factory=list)

    @property
    def state_ok(self) -> bool:
        want = BASE_VERSION if self.op == "install" else op_version(self.op)
        return self.installed_version == want and self.installed_dirty is False

    @property
    def ok(self) -> bool:
        return (self.rerun_code == 0 and self.rerun_result == "completed" and self.byte_exact
                and not self.staging_left and self.state_ok)


def limit_env(limit_bps: int | None) -> dict[str, str]:
    """The killed run's global limit; none with ``--limit off`` (the unlimited data plane)."""
    return {} if limit_bps is None else {"LAUNCHER_ENGINE_GLOBAL_LIMIT_BPS": str(limit_bps)}


def run_trial(n: int, op: str, mode: str, qa_delay: bool, delay: float, paths: Paths,
              stack: Stack, cal: Calibration, want: dict[str, tuple[str, int]], log_path: Path,
              limit_bps: int | None, qa_delay_s: float) -> Trial:
    proxy = stack.proxy
    engine = Engine(paths.engine, stack, log_path)
    paths.reset(op_template(op), stack, log_path)
    env = limit_env(limit_bps)
    if qa_delay:
        env["LAUNCHER_ENGINE_QA_SWITCH_DELAY_S"] = str(qa_delay_s)
    args = op_args(op, paths.game)
    before = settled_bytes(proxy)
    if mode == "random":
        killed = engine.run(*args, env=env, kill_after_s=delay)
    else:
        killed = engine.run(*args, env=env, kill_after_verifying_s=delay,
                            verifying_timeout_s=max(60.0, 5 * cal.limited_wall_s))
    mid = settled_bytes(proxy)
    try:
        rerun = engine.run(*args)  # the same command, no limit, no QA delay
    except RuntimeError as exc:  # timed out (and killed): an engine failure, reported
        log(f"trial {n}: rerun: {exc}")
        rerun = EngineRun(engine.argv(*args), code=None,
                          lines=[(RUN_TIMEOUT_S, json.dumps({"error": str(exc)}))],
                          wall_s=RUN_TIMEOUT_S)
    after = settled_bytes(proxy)
    final = rerun.final()
    task = final.get("task") or {}
    installed_version, installed_dirty = None, None
    with contextlib.suppress(RuntimeError, ValueError, KeyError, TypeError):
        games = engine.ok("installed").last().get("installed") or []
        game = next((g for g in games if g["productId"] == PRODUCT), None)
        if game is not None:
            installed_version, installed_dirty = game["versionId"], bool(game["dirty"])
    download_size = int(task.get("downloadSizeBytes") or cal.download_size_bytes)
    diff = compare_tree(paths.game, want)
    staging = paths.game / STAGING
    staging_left = os.path.lexists(staging)
    killed_bytes, rerun_bytes = mid - before, after - mid
    redownload = killed_bytes + rerun_bytes - cal.clean_bytes
    backlog = killed.backlog or {}
    queued = int(backlog.get("unacked", 0)) + int(backlog.get("unread", 0))
    sent_before_kill = (killed.sent_at_kill - before if killed.sent_at_kill is not None
                        else killed_bytes)
    read_by_engine = max(sent_before_kill - queued, 0)
    never_read = killed_bytes - read_by_engine
    error_line = None
    if rerun.code != 0 or final.get("result") != "completed":
        error_line = next((ln for _, ln in reversed(rerun.lines)
                           if '"error' in ln or '"result"' in ln), None) or \
            (rerun.lines[-1][1] if rerun.lines else None)
    trial = Trial(
        n=n, op=op, mode=mode, qa_delay=qa_delay, planned_delay_s=round(delay, 3),
        kill_at_s=None if killed.kill_at_s is None else round(killed.kill_at_s, 3),
        killed=killed.killed, phase=phase_of(killed),
        killed_last_status_bytes=last_downloaded(killed), killed_code=killed.code,
        killed_bytes=killed_bytes, rerun_bytes=rerun_bytes, clean_bytes=cal.clean_bytes,
        download_size_bytes=download_size, redownload_bytes=redownload,
        redownload_pct=round(100.0 * redownload / max(download_size, 1), 3),
        queued_at_kill_bytes=queued, sent_after_kill_bytes=killed_bytes - sent_before_kill,
        read_by_engine_bytes=read_by_engine, never_read_bytes=never_read,
        read_not_kept_bytes=redownload - never_read,
        rerun_code=rerun.code, rerun_result=final.get("result"),
        rerun_wall_s=round(rerun.wall_s, 2),
        byte_exact=not any(diff.values()), staging_left=staging_left,
        installed_version=installed_version, installed_dirty=installed_dirty,
        tree_diff={k: v[:10] for k, v in diff.items() if v},
        staging_listing=listing(staging) if staging_left and staging.is_dir() else [],
        rerun_error_line=error_line,
        killed_last_lines=[ln for _, ln in killed.lines[-3:]],
    )
    if not trial.ok:
        keep = paths.root / f"failed-trial-{n:02d}"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(paths.cur, keep, symlinks=True)
        log(f"trial {n}: FAILED (rerun exit {rerun.code} {final.get('result')}, byte-exact "
            f"{trial.byte_exact}, staging left {staging_left}, installed {installed_version} "
            f"dirty {installed_dirty}); its folders are copied to {keep}")
    return trial


# -------------------------------------------------------------------------------------------------
# Report


def fmt_mb(n: float) -> str:
    return f"{n / MB:.2f}"


def table(trials: list[Trial]) -> str:
    head = ("| # | op | mode | QA delay | kill at s | phase | killed run MB | rerun MB | clean MB | "
            "op download MB | re-download B | re-download % | queued at kill B | "
            "sent after kill B | never read B | read, not kept B | rerun exit | byte-exact | "
            "staging left | installed |")
    rows = [head, "|" + "---|" * 20]
    for t in trials:
        kill_at = f"{t.kill_at_s:.2f}" if t.kill_at_s is not None else "(exited)"
        rows.append(
            f"| {t.n} | {t.op} | {t.mode} | {'yes' if t.qa_delay else 'no'} | {kill_at} | "
            f"{t.phase} | {fmt_mb(t.killed_bytes)} | {fmt_mb(t.rerun_bytes)} | "
            f"{fmt_mb(t.clean_bytes)} | {fmt_mb(t.download_size_bytes)} | "
            f"{t.redownload_bytes:,} | {t.redownload_pct:.2f} | {t.queued_at_kill_bytes:,} | "
            f"{t.sent_after_kill_bytes:,} | {t.never_read_bytes:,} | "
            f"{t.read_not_kept_bytes:,} | {t.rerun_code} | "
            f"{'yes' if t.byte_exact else 'NO'} | {'YES' if t.staging_left else 'no'} | "
            f"{t.installed_version}{' (dirty)' if t.installed_dirty else ''}"
            f"{'' if t.state_ok else ' WRONG'} |")
    return "\n".join(rows)


def calibration_table(cals: dict[str, Calibration]) -> str:
    rows = ["| op | limited run s | verifying at s | commit/switch s | clean bytes | "
            "limited-run bytes | downloadSizeBytes | unlimited run s |", "|" + "---|" * 8]
    for c in cals.values():
        rows.append(f"| {c.op} | {c.limited_wall_s:.2f} | {c.t_verifying_s:.2f} | "
                    f"{c.commit_s:.2f} | {c.clean_bytes:,} | {c.limited_bytes:,} | "
                    f"{c.download_size_bytes:,} | {c.unlimited_wall_s:.2f} |")
    return "\n".join(rows)


def median_int(values: list[int]) -> int | None:
    return round(statistics.median(values)) if values else None


def summarize(trials: list[Trial]) -> dict[str, Any]:
    redl = [t.redownload_bytes for t in trials]
    worst = max(trials, key=lambda t: t.redownload_bytes) if trials else None
    phases: dict[str, int] = {}
    for t in trials:
        phases[t.phase] = phases.get(t.phase, 0) + 1
    by_phase: dict[str, dict[str, Any]] = {}
    for phase in sorted(phases):
        ts = [t for t in trials if t.phase == phase]
        by_phase[phase] = {
            "kills": len(ts),
            "worst_redownload_bytes": max(t.redownload_bytes for t in ts),
            "worst_redownload_pct": max(t.redownload_pct for t in ts),
            "median_redownload_bytes": median_int([t.redownload_bytes for t in ts]),
            "worst_never_read_bytes": max(t.never_read_bytes for t in ts),
            "worst_read_not_kept_bytes": max(t.read_not_kept_bytes for t in ts)}
    by_op: dict[str, dict[str, Any]] = {}
    for op in sorted({t.op for t in trials}):
        ts = [t for t in trials if t.op == op]
        by_op[op] = {
            "kills": len(ts),
            "worst_redownload_bytes": max(t.redownload_bytes for t in ts),
            "worst_redownload_pct": max(t.redownload_pct for t in ts),
            "median_redownload_bytes": median_int([t.redownload_bytes for t in ts])}
    return {
        "kills": len(trials),
        "kills_delivered": sum(t.killed for t in trials),
        "byte_exact": sum(t.byte_exact for t in trials),
        "staging_left": sum(t.staging_left for t in trials),
        "rerun_failed": sum(t.rerun_code != 0 or t.rerun_result != "completed" for t in trials),
        "state_wrong": sum(not t.state_ok for t in trials),
        "worst_read_not_kept_bytes": max((t.read_not_kept_bytes for t in trials), default=None),
        "worst_never_read_bytes": max((t.never_read_bytes for t in trials), default=None),
        "worst_redownload_bytes": worst.redownload_bytes if worst else None,
        "worst_redownload_pct": max((t.redownload_pct for t in trials), default=None),
        "worst_redownload_trial": worst.n if worst else None,
        "median_redownload_bytes": median_int(redl),
        "phases": phases,
        "by_phase": by_phase,
        "by_op": by_op,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64, help="MiB per demo version (default 64)")
    ap.add_argument("--kills", type=int, default=24, help="number of trials (default 24)")
    ap.add_argument("--seed", type=int, default=1, help="RNG seed for ops and kill moments")
    ap.add_argument("--limit", default="8M",
                    help="engine global speed limit of the killed runs (default 8M = 8 MB/s; "
                    "off: unlimited, the threaded data plane)")
    ap.add_argument("--qa-delay", type=float, default=0.003,
                    help="LAUNCHER_ENGINE_QA_SWITCH_DELAY_S of commit trials and half the "
                         "random ones (default 0.003 s)")
    ap.add_argument("--commit-share", type=float, default=0.33,
                    help="share of the trials killed after 'verifying' (default 0.33)")
    ap.add_argument("--ops", default=",".join(OPS), help=f"subset of {','.join(OPS)}")
    ap.add_argument("--work", type=Path,
                    default=Path(tempfile.gettempdir()) / "launcher-bench-kill-resume",
                    help="cache of builds and store, and run folders")
    ap.add_argument("--keep", action="store_true",
                    help="keep the run folder (logs; failed trials are copied into it)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    if not ops or any(o not in OPS for o in ops):
        ap.error(f"--ops: choose from {','.join(OPS)}")
    if args.kills < 1:
        ap.error("--kills must be at least 1")
    from engine.cli.main import parse_rate

    # "off": kills land in an unlimited run, whose ranges take the threaded data plane (a
    # limited run's ranges go through the general client); kill moments follow its calibration
    limit_bps = parse_rate(args.limit)
    global PYCACHE
    PYCACHE = args.work / "pycache"
    # the proxy logs a traceback whenever a killed engine's connection drops mid-response
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    t_start = time.monotonic()
    store_dir, builds = ensure_store(args.work, args.size)
    wants = {v: tree(builds / PRODUCT / v) for v in {op_version(o) for o in ops}}
    rng = random.Random(args.seed)
    trials: list[Trial] = []
    cals: dict[str, Calibration] = {}
    keep = args.keep
    with processes.run_folder(args.work, keep) as run_dir:
        paths = Paths(run_dir / "trial")
        engine_log = run_dir / "engine-stderr.log"
        stack = start_stack(run_dir, store_dir)
        try:
            log(f"backend {stack.url}, CDN edge {stack.proxy.url}/cdn/ (counting proxy); "
                f"run folder {run_dir}; load average {os.getloadavg()[0]:.2f}")
            make_templates(paths, stack, engine_log)
            killed_env = {**limit_env(limit_bps),
                          "LAUNCHER_ENGINE_QA_SWITCH_DELAY_S": str(args.qa_delay)}
            for op in ops:
                cals[op] = calibrate(op, paths, stack, engine_log, killed_env)
                c = cals[op]
                log(f"calibrated {op}: {c.limited_wall_s:.2f} s limited (verifying at "
                    f"{c.t_verifying_s:.2f} s), {c.clean_bytes:,} B clean "
                    f"({c.limited_bytes:,} B limited), downloadSizeBytes "
                    f"{c.download_size_bytes:,}")
                if c.limited_bytes != c.clean_bytes:
                    log(f"note: {op}: the limited and unlimited clean runs fetched different "
                        f"byte counts ({c.limited_bytes:,} vs {c.clean_bytes:,})")
            for n in range(1, args.kills + 1):
                op = rng.choice(ops)
                cal = cals[op]
                mode = "commit" if rng.random() < args.commit_share else "random"
                if mode == "commit":
                    qa = True
                    delay = rng.uniform(0.0, max(cal.commit_s, 0.05))
                else:
                    qa = rng.random() < 0.5
                    delay = rng.uniform(0.0, cal.limited_wall_s)
                t = run_trial(n, op, mode, qa, delay, paths, stack, cal,
                              wants[op_version(op)], engine_log, limit_bps, args.qa_delay)
                trials.append(t)
                log(f"trial {n}/{args.kills}: {op} {mode}{' +qa' if qa else ''} delay "
                    f"{delay:.2f} s -> {t.phase}; killed {t.killed_bytes:,} B + rerun "
                    f"{t.rerun_bytes:,} B, re-download {t.redownload_bytes:,} B "
                    f"({t.redownload_pct:.2f}%); rerun exit {t.rerun_code}, "
                    f"{'byte-exact' if t.byte_exact else 'TREE DIFFERS'}"
                    f"{', STAGING LEFT' if t.staging_left else ''}")
        finally:
            stack.stop()
            shutil.rmtree(paths.root / "cur", ignore_errors=True)
            if any(not t.ok for t in trials) and not keep:
                log(f"some trials failed: pass --keep to keep their folders and {engine_log}")

    summary = summarize(trials)
    print(calibration_table(cals))
    print()
    print(table(trials))
    print()
    s = summary
    worst_pct = s["worst_redownload_pct"]
    print(f"kills: {s['kills']} ({s['kills_delivered']} signals delivered; phases "
          + ", ".join(f"{k} {v}" for k, v in sorted(s["phases"].items())) + ")")
    print(f"byte-exact after rerun: {s['byte_exact']}/{s['kills']}; staging left: "
          f"{s['staging_left']}; rerun failed: {s['rerun_failed']}; installed record wrong: "
          f"{s['state_wrong']}")
    print(f"worst re-download: {s['worst_redownload_bytes']:,} B (trial "
          f"{s['worst_redownload_trial']}); worst as % of the op's download: {worst_pct:.2f}%; "
          f"median re-download: {s['median_redownload_bytes']:,} B")
    print(f"split: worst sent by the CDN but never read by the engine (socket buffers): "
          f"{s['worst_never_read_bytes']:,} B; worst read by the engine but fetched again: "
          f"{s['worst_read_not_kept_bytes']:,} B")
    print()
    print("| group | kills | worst re-download B | worst % | median re-download B | "
          "worst never read B | worst read, not kept B |")
    print("|---|---|---|---|---|---|---|")
    for name, g in s["by_phase"].items():
        print(f"| phase {name} | {g['kills']} | {g['worst_redownload_bytes']:,} | "
              f"{g['worst_redownload_pct']:.2f} | {g['median_redownload_bytes']:,} | "
              f"{g['worst_never_read_bytes']:,} | {g['worst_read_not_kept_bytes']:,} |")
    for name, g in s["by_op"].items():
        print(f"| op {name} | {g['kills']} | {g['worst_redownload_bytes']:,} | "
              f"{g['worst_redownload_pct']:.2f} | {g['median_redownload_bytes']:,} | | |")
    print(f"wall: {time.monotonic() - t_start:.0f} s")
    if args.json:
        print(json.dumps({
            **{k: s[k] for k in ("kills", "byte_exact", "staging_left", "worst_redownload_bytes",
                                 "worst_redownload_pct", "median_redownload_bytes")},
            "kills_delivered": s["kills_delivered"], "rerun_failed": s["rerun_failed"],
            "state_wrong": s["state_wrong"],
            "worst_read_not_kept_bytes": s["worst_read_not_kept_bytes"],
            "worst_never_read_bytes": s["worst_never_read_bytes"],
            "worst_redownload_trial": s["worst_redownload_trial"], "phases": s["phases"],
            "by_phase": s["by_phase"], "by_op": s["by_op"],
            "calibration": {k: asdict(v) for k, v in cals.items()},
            "trials": [asdict(t) for t in trials],
            "settings": {"size_mib": args.size, "seed": args.seed, "limit_bps": limit_bps,
                         "qa_delay_s": args.qa_delay, "commit_share": args.commit_share,
                         "ops": ops, "nproc": os.cpu_count()},
            "wall_s": round(time.monotonic() - t_start, 1),
        }))
    return 0 if all(t.ok for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
