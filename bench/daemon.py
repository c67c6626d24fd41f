"""Daemon benchmark: how long a state change takes to reach subscribed clients, and what three
clients subscribed to every event cost the daemon at full download speed.

    .venv/bin/python bench/daemon.py [--size 512] [--cycles 60] [--repeat 3] [--json]

What runs (everything binds 127.0.0.1). The content and the stack come from
``bench/download.py`` (imported, not copied):

* a content store with ``star-courier`` 1.0.0 from ``backend.democatalog.generate(size_mb=SIZE)``,
  cached under ``--work`` (default ``$TMPDIR/launcher-bench-daemon``);
* the real backend, ``launcher-backend serve --cdn-edge nginx=URL``, with an nginx CDN edge, and a
  user granted the game;
* the daemon: ``python -m engine.cli --data D --backend URL serve`` (a fresh data dir per run;
  logged in through its ``login`` method), driven over its WebSocket control API by
  ``engine.api.client.DaemonClient`` connections, all in this one process (one asyncio loop).

1. Event latency. Three clients subscribe to every event; a fourth ("control") connection
   installs the game with a low per-task limit (``--latency-limit``, so it downloads slowly and
   never finishes), then repeats ``--cycles`` times: wait until progress ticks flow, ``pause``,
   wait until the run has stopped, ``resume``. For every command, the latency is the time from
   just before the control connection sends it to each client's receipt of the state-change event
   it causes (``install`` → ``queued``, ``pause`` → ``paused``, ``resume`` → ``queued``), with
   ``time.perf_counter`` in this process; the daemon is a separate process on loopback. These
   direct state changes are the headline (p50/p99/max over every client's sample). The engine
   publishes them synchronously, before the reply is sent. Reported apart: ``resume`` → the
   ``downloading`` event of the new run (it also includes the scheduler's wake-up and the
   start of the run), the command's reply round trip on the control connection, and the spread
   between the first and the last of the three clients to receive an event.
2. CPU overhead. A full-speed install of the game through the daemon with 0 clients subscribed,
   and with 3 clients subscribed to every event (progress events at 4 Hz per task, an item event
   per verified file, state changes). The control connection sends ``install`` and waits with
   ``wait`` (answered when the task completes); it is not subscribed. Measured: the daemon
   process's CPU seconds (user + system of every thread, from ``/proc/PID/stat``, read just
   before ``install`` and right after the ``wait`` answer, so the daemon's start-up and login are
   excluded), wall seconds over the same interval, events received per client, this process's
   CPU (the clients' side), the daemon's peak RSS. For reference, the same install in-process
   (``launcher-engine install`` with no daemon, ``bench/download.py``'s engine run under GNU
   ``time``: its CPU and wall include interpreter start-up and imports, which the daemon runs
   exclude; the daemon's own start-up CPU is shown for scale). Runs alternate
   (0, 3, in-process; then 3, 0, in-process; …) and medians are reported.
   Overhead = (median CPU with 3 clients - median CPU with 0) / median CPU with 0.

Between runs the bench syncs and waits a second (untimed). Every wait is bounded
(``--timeout`` for the whole bench too); daemons, backend and nginx are stopped on exit.

With ``--json`` the last line is one JSON object: ``event_latency_p50_ms``,
``event_latency_p99_ms``, ``event_latency_max_ms``, ``cpu_s_no_clients``, ``cpu_s_3_clients``,
``cpu_overhead_pct``, ``events_per_client``, then details.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _load_download_bench() -> ModuleType:
    """bench/download.py as a module (bench/ is not a package; its backend.py would shadow the
    repository's backend package if bench/ came first on sys.path)."""
    spec = importlib.util.spec_from_file_location("bench_download", REPO / "bench" / "download.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


dl = _load_download_bench()

from engine.api.client import (  # noqa: E402
    DaemonClient,
    DaemonInfo,
    read_info,
)
from engine.api.protocol import Event, TaskStatus, event_to_wire  # noqa: E402
from engine.core.events import ITEM, STATUS  # noqa: E402
from testing.processes import ServerProcess, run_folder  # noqa: E402

MB = dl.MB
MIB = dl.MIB
CLIENTS = 3
log = dl.log


# -------------------------------------------------------------------------------------------------
# Process measurements


def proc_cpu_s(pid: int, thread: int | None = None) -> float:
    """user + system CPU seconds of one process (all its threads), from /proc/PID/stat, or of
    one of its threads (/proc/PID/task/TID/stat; the main thread, TID = PID, runs the daemon's
    event loop: requests, events, SQLite, socket reads)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# -------------------------------------------------------------------------------------------------
# The daemon and its clients


@dataclass
class Daemon:
    server: ServerProcess
    info: DaemonInfo
    startup_cpu_s: float  # CPU from spawn to "listening on" (interpreter, imports, engine)

    @property
    def pid(self) -> int:
        return int(self.server.proc.pid)

    def stop(self) -> None:
        self.server.stop()


def start_daemon(stack: Any, data: Path, log_path: Path) -> Daemon:
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    server = dl.start_server([sys.executable, "-m", "engine.cli", "--data", str(data),
                              "--backend", stack.url, "serve"], log_path)
    try:
        info = read_info(data)
        if info is None or info.pid != server.proc.pid:
            raise RuntimeError(f"daemon.json in {data} does not name the daemon: {info}")
        return Daemon(server, info, proc_cpu_s(server.proc.pid))
    except BaseException:
        server.stop()
        raise


class Recorder:
    """A subscribed client's view: receipt time of every status event, counts by type."""

    def __init__(self) -> None:
        self.times: list[float] = []  # perf_counter at receipt, ascending
        self.statuses: list[str] = []
        self.counts: Counter[str] = Counter()
        self._new = asyncio.Event()

    def on_event(self, event: Event) -> None:
        t = time.perf_counter()
        self.counts[str(event_to_wire(event)["type"])] += 1
        if isinstance(event, TaskStatus):
            self.times.append(t)
            self.statuses.append(event.status)
            self._new.set()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    async def wait_status(self, status: str, after: float, timeout: float, nth: int = 1) -> float:
        """Receipt time of the ``nth`` status event ``status`` received at or after ``after``."""
        deadline = time.perf_counter() + timeout
        while True:
            start = bisect.bisect_left(self.times, after)
            hits = [self.times[i] for i in range(start, len(self.times))
                    if self.statuses[i] == status]
            if len(hits) >= nth:
                return hits[nth - 1]
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"no {status!r} event (#{nth}) within {timeout:.0f} s")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._new.wait()


async def connect_clients(es: contextlib.AsyncExitStack, info: DaemonInfo,
                          n: int) -> list[Recorder]:
    recs = []
    for _ in range(n):
        client = await es.enter_async_context(DaemonClient(info))
        rec = Recorder()
        client.on_event = rec.on_event
        await client.subscribe()  # every task's events
        recs.append(rec)
    return recs


# -------------------------------------------------------------------------------------------------
# 1. Event latency


@dataclass
class Latency:
    samples: dict[str, list[float]] = field(default_factory=dict)  # kind -> seconds
    replies: dict[str, list[float]] = field(default_factory=dict)  # method -> seconds
    spreads: list[float] = field(default_factory=list)
    state_changes: int = 0
    cycles: int = 0
    warnings: list[str] = field(default_factory=list)
    daemon_cpu_s: float = 0.0
    wall_s: float = 0.0

    HEADLINE = ("install → queued", "pause → paused", "resume → queued")

    def headline(self) -> list[float]:
        return [s for k in self.HEADLINE for s in self.samples.get(k, [])]


async def latency_phase(stack: Any, game: Any, run_dir: Path, cycles: int, limit_bps: int,
                        dwell_s: float) -> Latency:
    res = Latency(samples={k: [] for k in (*Latency.HEADLINE, "resume → downloading")})
    data, target = run_dir / "engine-latency", run_dir / "target-latency"
    daemon = start_daemon(stack, data, run_dir / "daemon-latency.log")
    try:
        async with contextlib.AsyncExitStack() as es:
            ctl = await es.enter_async_context(DaemonClient(daemon.info))
            await ctl.call("login", {"username": dl.USER, "password": dl.PASSWORD})
            recs = await connect_clients(es, daemon.info, CLIENTS)

            async def command(kind: str, method: str, params: dict[str, Any],
                              status: str) -> tuple[Any, float]:
                t0 = time.perf_counter()
                result = await ctl.call(method, params)
                res.replies.setdefault(method, []).append(time.perf_counter() - t0)
                got = await asyncio.gather(*(r.wait_status(status, t0, 30) for r in recs))
                res.samples[kind].extend(t - t0 for t in got)
                res.spreads.append(max(got) - min(got))
                res.state_changes += 1
                return result, t0

            async def flowing(after: float) -> None:
                """The run has started and its progress reporter ticks (2nd downloading event)."""
                try:
                    await recs[0].wait_status("downloading", after, 60, nth=2)
                except TimeoutError as exc:
                    res.warnings.append(f"cycle {res.cycles}: {exc}")

            cpu0, t_start = proc_cpu_s(daemon.pid), time.perf_counter()
            task, t_cmd = await command("install → queued", "install", {
                "productId": game.product, "versionId": game.version, "target": str(target),
                "limitBps": limit_bps}, "queued")
            tid = task["taskId"]
            for i in range(cycles):
                await flowing(t_cmd)
                await asyncio.sleep(dwell_s)
                _, t_pause = await command("pause → paused", "pause", {"taskId": tid}, "paused")
                try:  # the run stops and reports "paused" once more: let it finish first
                    await recs[0].wait_status("paused", t_pause, 15, nth=2)
                except TimeoutError as exc:
                    res.warnings.append(f"cycle {i}: run did not stop: {exc}")
                _, t_cmd = await command("resume → queued", "resume", {"taskId": tid}, "queued")
                got = await asyncio.gather(*(r.wait_status("downloading", t_cmd, 60)
                                             for r in recs))
                res.samples["resume → downloading"].extend(t - t_cmd for t in got)
                res.cycles += 1
            res.wall_s = time.perf_counter() - t_start
            res.daemon_cpu_s = proc_cpu_s(daemon.pid) - cpu0
            final = await ctl.call("task", {"taskId": tid})
            if final["status"] == "completed":
                res.warnings.append("the slow task completed during the latency phase")
            else:
                await ctl.call("cancel", {"taskId": tid})
    finally:
        daemon.stop()
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    return res


# -------------------------------------------------------------------------------------------------
# 2. CPU overhead at full speed


@dataclass
class Run:
    mode: str  # "daemon, 0 clients" | "daemon, 3 clients" | "in-process"
    clients: int
    wall_s: float
    cpu_s: float
    installed_bytes: int
    loop_cpu_s: float | None = None  # the daemon's main (event-loop) thread
    events: list[dict[str, int]] = field(default_factory=list)  # per client: type -> count
    bench_cpu_s: float | None = None  # this process: the clients (and the control connection)
    peak_rss_mb: float = 0.0
    startup_cpu_s: float | None = None
    install_queued_ms: list[float] = field(default_factory=list)

    @property
    def mb_s(self) -> float:
        return self.installed_bytes / MB / self.wall_s

    def events_per_client(self) -> float | None:
        return statistics.mean(sum(c.values()) for c in self.events) if self.events else None

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "clients": self.clients, "wall_s": round(self.wall_s, 3),
                "mb_s": round(self.mb_s, 1), "cpu_s": round(self.cpu_s, 3),
                "loop_cpu_s": None if self.loop_cpu_s is None else round(self.loop_cpu_s, 3),
                "bench_cpu_s": None if self.bench_cpu_s is None else round(self.bench_cpu_s, 3),
                "events_per_client": self.events,
                "peak_rss_mb": round(self.peak_rss_mb, 1),
                "startup_cpu_s": None if self.startup_cpu_s is None else round(self.startup_cpu_s, 2),
                "install_queued_ms": [round(x, 2) for x in self.install_queued_ms]}


def installed_bytes(target: Path) -> int:
    return sum(f.stat().st_size for f in target.rglob("*")
               if f.is_file() and f.name != "launcher-build.json")


async def daemon_install(stack: Any, game: Any, run_dir: Path, name: str, clients: int) -> Run:
    data, target = run_dir / f"engine-{name}", run_dir / f"target-{name}"
    shutil.rmtree(target, ignore_errors=True)
    daemon = start_daemon(stack, data, run_dir / f"daemon-{name}.log")
    try:
        async with contextlib.AsyncExitStack() as es:
            ctl = await es.enter_async_context(DaemonClient(daemon.info))
            await ctl.call("login", {"username": dl.USER, "password": dl.PASSWORD})
            recs = await connect_clients(es, daemon.info, clients)
            await asyncio.sleep(0.5)  # start-up update check and connections settle
            loop0 = proc_cpu_s(daemon.pid, daemon.pid)
            bench0, cpu0, t0 = time.process_time(), proc_cpu_s(daemon.pid), time.perf_counter()
            task = await ctl.call("install", {"productId": game.product,
                                              "versionId": game.version, "target": str(target)})
            timeout = 120 + game.installed_bytes / MIB * 0.5
            final = await asyncio.wait_for(ctl.call("wait", {"taskId": task["taskId"]}), timeout)
            wall = time.perf_counter() - t0
            cpu = proc_cpu_s(daemon.pid) - cpu0
            loop_cpu = proc_cpu_s(daemon.pid, daemon.pid) - loop0
            bench_cpu = time.process_time() - bench0
            if final["status"] != "completed":
                raise RuntimeError(f"daemon install {name}: {final['status']} "
                                   f"{final.get('errorCode')}: {final.get('errorMessage')}; "
                                   f"see {run_dir}/daemon-{name}.log")
            queued = []
            for r in recs:
                with contextlib.suppress(TimeoutError):
                    queued.append((await r.wait_status("queued", t0, 1) - t0) * 1000)
            await asyncio.sleep(0.3)  # events still in flight are counted too
            rss = proc_peak_rss_mb(daemon.pid)
            events = [dict(r.counts) for r in recs]
    finally:
        daemon.stop()
    dl.timed_sync()
    got = installed_bytes(target)
    if got != game.installed_bytes:
        raise RuntimeError(f"daemon install {name}: {got} bytes installed, "
                           f"expected {game.installed_bytes}")
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    return Run(f"daemon, {clients} clients", clients, wall, cpu, got, loop_cpu, events, bench_cpu,
               rss, daemon.startup_cpu_s, queued)


def inprocess_install(stack: Any, game: Any, run_dir: Path, name: str) -> Run:
    r = dl.run_engine(stack, game, run_dir, name)
    return Run("in-process (no daemon)", 0, r.wall_s, r.cpu_s, game.installed_bytes,
               peak_rss_mb=r.peak_rss_mb)


# -------------------------------------------------------------------------------------------------
# Report


def ms(x: float) -> str:
    return f"{x * 1000:.2f}"


def latency_table(lat: Latency) -> str:
    rows = ["| measure | samples | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]

    def row(name: str, xs: list[float]) -> None:
        if xs:
            rows.append(f"| {name} | {len(xs)} | {ms(percentile(xs, 50))} | "
                        f"{ms(percentile(xs, 99))} | {ms(max(xs))} |")

    row(f"**command → event, every client ({lat.state_changes} state changes × {CLIENTS})**",
        lat.headline())
    for k in Latency.HEADLINE:
        row(f"  {k}", lat.samples[k])
    row("resume → downloading (new run started)", lat.samples["resume → downloading"])
    row("command → reply (control connection)", [x for v in lat.replies.values() for x in v])
    for method, xs in lat.replies.items():
        row(f"  {method} → reply", xs)
    row("first → last client, same event", lat.spreads)
    return "\n".join(rows)


def cpu_table(runs: list[Run]) -> str:
    rows = ["| run | subscribed clients | wall s | MB/s | daemon CPU s | of which loop thread s "
            "| clients' CPU s (bench process) | events per client (status + item) | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        ev = "—"
        if r.events:
            st = statistics.mean(c.get(STATUS, 0) for c in r.events)
            it = statistics.mean(c.get(ITEM, 0) for c in r.events)
            ev = f"{r.events_per_client():.0f} ({st:.0f} + {it:.0f})"
        bench = "—" if r.bench_cpu_s is None else f"{r.bench_cpu_s:.2f}"
        cpu = f"{r.cpu_s:.2f}" + (" (incl. start-up)" if r.mode.startswith("in-process") else "")
        loop = "—" if r.loop_cpu_s is None else f"{r.loop_cpu_s:.2f}"
        rows.append(f"| {r.mode} | {r.clients} | {r.wall_s:.2f} | {r.mb_s:.1f} | {cpu} | {loop} "
                    f"| {bench} | {ev} | {r.peak_rss_mb:.0f} |")
    return "\n".join(rows)


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def rnd(x: float | None, n: int = 3) -> float | None:
    return None if x is None else round(x, n)


# -------------------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, stack: Any, game: Any, run_dir: Path) -> dict[str, Any]:
    lat: Latency | None = None
    if args.cycles > 0:
        log(f"event latency: {args.cycles} pause/resume cycles at {args.latency_limit} B/s")
        lat = await latency_phase(stack, game, run_dir, args.cycles, args.latency_limit,
                                  args.dwell)
        for w in lat.warnings:
            log(f"WARNING: {w}")
        os.sync()
        await asyncio.sleep(1)
    runs: list[Run] = []
    for i in range(args.repeat):
        order = (0, CLIENTS) if i % 2 == 0 else (CLIENTS, 0)
        for n in order:
            log(f"daemon install, {n} clients subscribed ({i + 1}/{args.repeat}); "
                f"load {os.getloadavg()[0]:.2f}")
            runs.append(await daemon_install(stack, game, run_dir, f"c{n}-{i}", n))
            await asyncio.sleep(1)
        if not args.no_inprocess:
            log(f"in-process install ({i + 1}/{args.repeat}); load {os.getloadavg()[0]:.2f}")
            runs.append(await asyncio.to_thread(inprocess_install, stack, game, run_dir,
                                                f"inproc{i}"))
            os.sync()
            await asyncio.sleep(1)

    def of(mode_clients: int | None) -> list[Run]:
        if mode_clients is None:
            return [r for r in runs if r.mode.startswith("in-process")]
        return [r for r in runs if r.mode.startswith("daemon") and r.clients == mode_clients]

    c0, c3, ip = of(0), of(CLIENTS), of(None)
    cpu0, cpu3 = med([r.cpu_s for r in c0]), med([r.cpu_s for r in c3])
    overhead = (cpu3 - cpu0) / cpu0 * 100 if cpu0 and cpu3 is not None else None
    pairs = [round((b.cpu_s - a.cpu_s) / a.cpu_s * 100, 1) for a, b in zip(c0, c3, strict=False)]
    loop0 = med([r.loop_cpu_s for r in c0 if r.loop_cpu_s is not None])
    loop3 = med([r.loop_cpu_s for r in c3 if r.loop_cpu_s is not None])
    epc = med([r.events_per_client() or 0 for r in c3])
    head = lat.headline() if lat else []

    print(f"Game: {game.product} {game.version}, {game.files} files, "
          f"{game.installed_bytes / MB:.0f} MB installed, {game.pack_bytes / MB:.0f} MB of packs; "
          f"nproc {os.cpu_count()}")
    if lat:
        print(f"\nEvent latency ({lat.cycles} pause/resume cycles of a task limited to "
              f"{args.latency_limit / 1000:.0f} kB/s, {CLIENTS} subscribed clients; daemon CPU "
              f"{lat.daemon_cpu_s:.2f} s over {lat.wall_s:.1f} s):\n")
        print(latency_table(lat))
    print(f"\nCPU at full speed ({args.repeat} repeat(s), alternating):\n")
    print(cpu_table(runs))
    startup = med([r.startup_cpu_s for r in runs if r.startup_cpu_s is not None])
    print(f"\nmedians: daemon CPU {cpu0:.2f} s with 0 clients, {cpu3:.2f} s with {CLIENTS} "
          f"clients → overhead {overhead:+.1f}% (pairs: {pairs}); wall "
          f"{med([r.wall_s for r in c0]):.2f} s vs {med([r.wall_s for r in c3]):.2f} s; "
          f"events per client {epc:.0f}; daemon start-up CPU {startup:.2f} s; loop thread "
          f"{loop0:.2f} s vs {loop3:.2f} s ({loop3 - loop0:+.2f} s)"
          + (f"; in-process {med([r.cpu_s for r in ip]):.2f} CPU s, "
             f"{med([r.wall_s for r in ip]):.2f} s wall" if ip else ""))
    return {
        "event_latency_p50_ms": rnd(percentile(head, 50) * 1000) if head else None,
        "event_latency_p99_ms": rnd(percentile(head, 99) * 1000) if head else None,
        "event_latency_max_ms": rnd(max(head) * 1000) if head else None,
        "cpu_s_no_clients": rnd(cpu0),
        "cpu_s_3_clients": rnd(cpu3),
        "cpu_overhead_pct": rnd(overhead, 1),
        "events_per_client": round(epc) if epc is not None else None,
        "wall_s_no_clients": rnd(med([r.wall_s for r in c0])),
        "wall_s_3_clients": rnd(med([r.wall_s for r in c3])),
        "cpu_s_in_process": rnd(med([r.cpu_s for r in ip])),
        "wall_s_in_process": rnd(med([r.wall_s for r in ip])),
        "daemon_startup_cpu_s": rnd(startup),
        "cpu_overhead_pct_pairs": pairs,
        "loop_cpu_s_no_clients": rnd(loop0),
        "loop_cpu_s_3_clients": rnd(loop3),
        "clients_cpu_s_3_clients": rnd(med([r.bench_cpu_s or 0 for r in c3])),
        "latency": None if lat is None else {
            "state_changes": lat.state_changes, "cycles": lat.cycles, "clients": CLIENTS,
            "samples": len(head), "limit_bps": args.latency_limit,
            "by_kind_ms": {k: {"n": len(v), "p50": rnd(percentile(v, 50) * 1000),
                               "p99": rnd(percentile(v, 99) * 1000), "max": rnd(max(v) * 1000)}
                           for k, v in lat.samples.items() if v},
            "reply_ms": {k: {"n": len(v), "p50": rnd(percentile(v, 50) * 1000),
                             "p99": rnd(percentile(v, 99) * 1000), "max": rnd(max(v) * 1000)}
                         for k, v in lat.replies.items()},
            "spread_p50_ms": rnd(percentile(lat.spreads, 50) * 1000),
            "spread_max_ms": rnd(max(lat.spreads) * 1000),
            "daemon_cpu_s": rnd(lat.daemon_cpu_s), "wall_s": rnd(lat.wall_s, 1),
            "warnings": lat.warnings},
        "size_mib": args.size, "installed_mb": round(game.installed_bytes / MB, 1),
        "files": game.files, "nproc": os.cpu_count(),
        "loadavg_end": round(os.getloadavg()[0], 2),
        "runs": [r.to_dict() for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="MiB of the demo game (default 512)")
    ap.add_argument("--cycles", type=int, default=60,
                    help="pause/resume cycles for the latency phase (2 state changes each; "
                         "0 skips it; default 60)")
    ap.add_argument("--latency-limit", type=int, default=200_000,
                    help="per-task limit (B/s) of the slowly downloading task (default 200000)")
    ap.add_argument("--dwell", type=float, default=0.3,
                    help="seconds the task downloads between resume and pause (default 0.3)")
    ap.add_argument("--repeat", type=int, default=3, help="full-speed runs per mode (default 3)")
    ap.add_argument("--no-inprocess", action="store_true", help="skip the in-process reference")
    ap.add_argument("--timeout", type=float, default=1800, help="bound on the whole bench (s)")
    ap.add_argument("--work", type=Path,
                    default=Path(tempfile.gettempdir()) / "launcher-bench-daemon",
                    help="cache of builds and stores, and run folders")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (daemon logs)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    dl.PYCACHE = args.work / "pycache"

    dl.ensure_tools()
    store_dir, _ = dl.ensure_store(args.work, args.size, 0)
    game = dl.describe_game(store_dir, dl.PRODUCT, dl.VERSION)
    log(f"{game.product} {game.version}: {game.files} files, "
        f"{game.installed_bytes / MB:.0f} MB installed; load {os.getloadavg()[0]:.2f}")

    async def bounded(stack: Any, run_dir: Path) -> dict[str, Any]:
        async with asyncio.timeout(args.timeout):
            return await bench(args, stack, game, run_dir)

    with run_folder(args.work, args.keep) as run_dir:
        stack = dl.start_stack(run_dir, store_dir, [dl.PRODUCT])
        try:
            log(f"backend {stack.url}, nginx edge {stack.nginx_url}; run folder {run_dir}")
            summary = asyncio.run(bounded(stack, run_dir))
        finally:
            stack.stop()
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
