"""``launcher-engine``: the engine headless, for QA and scripts.

Every command goes through the engine's command surface (``engine.api.service``): to the running
daemon of the data dir when there is one (so a second client sees the change), in-process
otherwise. Human output shows a live progress bar; ``--json`` prints one JSON object per line
(events, then a final result). Exit codes are distinct per failure class (``ExitCode``). A
failed write of the engine's own files (state database, config, daemon files) is translated
at this boundary: ``INSUFFICIENT_DISK_SPACE`` when the disk is full, ``IO_ERROR`` otherwise,
reported like every other error (a JSON error line with ``--json``, never a traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, runtime_checkable
from urllib.parse import unquote

from engine import codecache

# before any of the engine's dataclasses is defined: their methods' compile is cached between
# runs (engine.codecache; 25-30 ms of every start, issue 13). Here rather than in the package:
# the quick path (engine.cli.quick) imports the package and none of this.
codecache.install()

from engine.api.client import SyncDaemonClient, daemon_running  # noqa: E402
from engine.api.protocol import EngineError, ErrorCode, ExitCode, ParamKind, command  # noqa: E402
from engine.cli.quick import LOCAL_ONLY, end_now, write_out  # noqa: E402
from engine.core.locations import ENV_PREFIX  # noqa: E402

if TYPE_CHECKING:
    import asyncio

    from engine.api.daemon import CommandLine, LineService
    from engine.api.protocol import Event
    from engine.io.config import Settings

# What a command sent to the daemon does not need is imported where it is used: logging (set
# up for an in-process engine or the daemon), the event classes (with the first event), the
# settings' module (while the daemon answers the connection: ``_run``). What the one-shot
# client still loads is argparse, json, dataclasses (the command table, the settings) and, with
# a config file, tomllib (issue 13; docs/benchmarks-daemon.md).


def parse_rate(text: str) -> int | None:
    """'20M', '512K', '0' or 'off' (bytes per second; K/M/G are powers of 1000)."""
    t = text.strip().lower().removesuffix("/s").removesuffix("b")
    if t in ("0", "off", "none", "unlimited"):
        return None
    factor = {"k": 1000, "m": 1000**2, "g": 1000**3}.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in "kmg" else t
    try:
        value = float(number) * factor
    except ValueError as exc:
        raise EngineError(ErrorCode.CONFIG_INVALID, f"not a rate: {text!r} (try 20M or off)") from exc
    if value <= 0:
        raise EngineError(ErrorCode.CONFIG_INVALID, f"rate must be positive: {text!r}")
    return int(value)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# an in-process engine's lines are written together this long after the first of them: a
# reader of the JSON lines sees them 20 ms late at most, and an install's ~300 lines take
# ~30 writes instead of one each
OUTPUT_BATCH_S = 0.02


class Output:
    """What a command says: JSON lines or text on stdout, errors on stderr, the progress bar.
    ``write(stream, text)`` puts it somewhere: this process's streams, or the client's when the
    daemon runs a command line for it (``run_command_line``)."""

    def __init__(self, as_json: bool, write: Callable[[str, str], None] = write_out,
                 progress: bool | None = None) -> None:
        self.as_json = as_json
        self.write = write
        self.progress = (sys.stdout.isatty() or bool(os.environ.get("LAUNCHER_FORCE_PROGRESS"))
                         if progress is None else progress)
        self._last_bar = 0.0
        self._bar_shown = False
        self.one_shot = False  # a daemon ran the command: nothing here outlives the output
        self._pending: list[str] = []  # stdout the event loop made, written as one batch
        self._failed: OSError | None = None  # the loop's write that failed (a closed pipe)

    def emit(self, obj: dict[str, Any]) -> None:
        if self.as_json:
            self._stdout(json.dumps(obj, default=str) + "\n")

    def text(self, line: str) -> None:
        if not self.as_json:
            self._end_bar()
            self._stdout(line + "\n")

    def error(self, line: str) -> None:
        self._end_bar()
        self.flush()
        self.write("stderr", line + "\n")

    def _stdout(self, text: str) -> None:
        """What an in-process engine's loop says goes out in one write OUTPUT_BATCH_S after its
        first line: written line by line, each of an install's ~300 lines (one or two a loop
        pass) let the loop thread's GIL go and wait for it again behind the range threads.
        Anything said off the loop writes what is pending first."""
        loop = _running_loop()
        if loop is None:
            self.flush()
            self.write("stdout", text)
            return
        if self._failed is not None:  # raised where the line is made, as a direct write would
            raise self._failed
        self._pending.append(text)
        if len(self._pending) == 1:
            loop.call_later(OUTPUT_BATCH_S, self._flush_pass)

    def _flush_pass(self) -> None:
        """The batch's write on the loop: a failure is kept for the next line, not left to the
        loop's exception handler (which would log it and go on)."""
        try:
            self.flush()
        except OSError as exc:
            self._failed = exc

    def flush(self) -> None:
        """Write the loop's pending batch (the loop may stop before its timer); a write of the
        loop's that failed is raised here."""
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self.write("stdout", text)

    def event(self, event: Event) -> None:
        from engine.api.protocol import TaskStatus, event_to_wire

        if self.as_json:
            self.emit(event_to_wire(event))
            return
        if not isinstance(event, TaskStatus):
            return
        if event.status != "downloading":
            error = event.error_details or {}
            self.text(f"[{event.task_id[:8]}] {event.product_id or ''} {event.status}"
                      + (f": {error.get('errorMessage')}" if error else ""))
            return
        now = time.monotonic()
        if now - self._last_bar < 0.2:
            return
        self._last_bar = now
        width = 30
        pct = event.total_progress_percentage
        filled = int(width * pct / 100)
        eta = event.estimated_time_left_seconds
        eta_text = "--:--" if eta is None else f"{eta // 60:02d}:{eta % 60:02d}"
        line = (f"\r{(event.product_id or '')[:16]:16} [{'#' * filled}{'.' * (width - filled)}] "
                f"{pct:5.1f}%  {human_bytes(event.downloaded_bytes)}/"
                f"{human_bytes(event.total_size_bytes)}"
                f"  {human_bytes(event.download_speed_bps)}/s  ETA {eta_text}  ")
        if self.progress:
            self._stdout(line)
            self._bar_shown = True

    def _end_bar(self) -> None:
        if self._bar_shown:
            self._stdout("\n")
            self._bar_shown = False


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running on this thread, if any (asyncio is not imported for it)."""
    aio = sys.modules.get("asyncio")
    return None if aio is None else aio._get_running_loop()


# ---------------------------------------------------------------------------------------------
# Commands: each a function over a service (``call(method, params)``): the daemon's client
# or the in-process engine


class Service(Protocol):
    def call(self, method: str, params: dict[str, Any]) -> Any: ...


@runtime_checkable
class EventSource(Protocol):
    """A daemon's service (its client, or the daemon running a client's line): events."""

    def subscribe(self, task_id: str | None = None, *, reply: bool = True) -> None: ...

    def events(self) -> Iterator[Event]: ...


Command = Callable[[Service, argparse.Namespace, Output], int]
FINAL = ("completed", "error", "cancelled")
FOLLOWS_EVENTS = frozenset({"install", "update", "rollback", "verify", "run"})  # prints them
INTERRUPTED = "interrupted; the next run resumes where this one stopped"


def cmd_login(svc: Service, args: argparse.Namespace, out: Output) -> int:
    password = args.password or os.environ.get("LAUNCHER_ENGINE_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise EngineError(ErrorCode.CONFIG_INVALID, "no password: use --password or "
                              "LAUNCHER_ENGINE_PASSWORD when stdin is not a terminal")
        import getpass

        password = getpass.getpass(f"password for {args.username}: ")
    r = svc.call("login", {"username": args.username, "password": password})
    out.text(f"logged in as {args.username}; token in {r['tokenStore']}")
    out.emit(r)
    return ExitCode.OK


def cmd_logout(svc: Service, args: argparse.Namespace, out: Output) -> int:
    out.emit(svc.call("logout", {}))
    out.text("logged out")
    return ExitCode.OK


def cmd_library(svc: Service, args: argparse.Namespace, out: Output) -> int:
    for item in svc.call("library", {}):
        a, g = item["libraryItem"], item["installed"]
        state = f"installed {g['versionId']}" if g else "not installed"
        out.text(f"{a.get('product_id', '?'):20} {a.get('title', ''):28} latest "
                 f"{a.get('latest_version_id', '?'):10} {human_bytes(a.get('install_size_bytes') or 0):>10}"
                 f"  {state}")
        out.emit(item)
    return ExitCode.OK


def _task_result(task: dict[str, Any], out: Output) -> int:
    out.emit({"result": task["status"], "task": task})
    short = task["taskId"][:8]
    if task["status"] == "completed":
        if task["kind"] in ("update", "rollback") and task["fromVersion"] == task["versionId"]:
            out.text(f"task {short}: {task['productId']} is already at {task['versionId']}")
        else:
            out.text(f"task {short}: {task['productId']} {task['versionId']} installed in "
                     f"{task['targetPath']}")
        return ExitCode.OK
    if task["status"] == "error":
        err = EngineError(ErrorCode.from_wire(task.get("errorCode"), ErrorCode.INTERNAL_ERROR),
                          task.get("errorMessage") or "")
        out.text(f"task {short} failed: {err.code}: {err.message}")
        return err.exit_code
    out.text(f"task {short}: {task['status']}")
    return ExitCode.INTERRUPTED


def _wait(svc: Service, task: dict[str, Any], out: Output) -> int:
    if task["status"] in FINAL:
        return _task_result(task, out)
    return _task_result(svc.call("wait", {"taskId": task["taskId"]}), out)


def cmd_install(svc: Service, args: argparse.Namespace, out: Output) -> int:
    task = svc.call("install", params_of(args, "install"))
    out.text(f"task {task['taskId'][:8]}: installing {task['productId']} into {task['targetPath']}")
    if args.no_wait:
        out.emit({"result": "queued", "task": task})
        return ExitCode.OK
    return _wait(svc, task, out)


def cmd_run(svc: Service, args: argparse.Namespace, out: Output) -> int:
    """Process the whole queue until nothing runnable is left."""
    code: int = ExitCode.OK
    for task in svc.call("tasks", {}):
        if task["status"] == "paused" and task["userPaused"]:
            continue
        code = _wait(svc, task, out) or code
    return code


def cmd_queue(svc: Service, args: argparse.Namespace, out: Output) -> int:
    action = args.action
    if action == "list":
        tasks = svc.call("tasks", {"all": args.all})
        for t in tasks:
            out.text(f"{t['taskId'][:8]}  {t['position']:3}  p{t['priority']}  {t['status']:11} "
                     f"{t['kind']:8} {t['productId']:20} {human_bytes(t['downloadedBytes'])}/"
                     f"{human_bytes(t['downloadSizeBytes'])}"
                     + (f"  {t['errorCode']}" if t["errorCode"] else "")
                     + ("  (queued from another device)" if t.get("remote") else ""))
        out.emit({"tasks": tasks})
        return ExitCode.OK
    if args.task is None:
        raise EngineError(ErrorCode.API_MISUSE, f"queue {action} needs a task id")
    params: dict[str, Any] = {"taskId": args.task}
    if action in ("move", "priority"):
        params["position" if action == "move" else "priority"] = _number(args.value,
                                                                         f"queue {action}")
    result = svc.call(action, params)
    tasks = result if isinstance(result, list) else [result]
    for t in tasks:
        out.text(f"{t['taskId'][:8]}  {t['status']}  position {t['position']}  priority {t['priority']}")
    out.emit({"tasks": tasks})
    return ExitCode.OK


def _remote_line(t: dict[str, Any]) -> str:
    where = t["deviceId"] or (f"for {t['targetDeviceId'][:8]}" if t["targetDeviceId"]
                              else "any device")
    err = f"  {t['errorCode']}: {t['errorMessage']}" if t["errorCode"] else ""
    return (f"{str(t['taskId'])[:8]}  {t['status']:15} {t['productId']:20} "
            f"{human_bytes(t['downloadedBytes'] or 0)}/{human_bytes(t['downloadSizeBytes'] or 0)}"
            f"  device {where[:12]}{err}")


def cmd_remote(svc: Service, args: argparse.Namespace, out: Output) -> int:
    """``remote list``: the player's tasks on the backend, every device's; ``remote install
    GAME [--device ID] [--watch]``: queue it for another device (whichever of the player's
    engines runs, or the one named) and, with --watch, follow it until it ends."""
    if args.action == "list":
        tasks = svc.call("remoteTasks", {})
        for t in tasks:
            out.text(_remote_line(t))
        out.emit({"tasks": tasks})
        return ExitCode.OK
    if args.productId is None:
        raise EngineError(ErrorCode.API_MISUSE, "remote install needs a game")
    params = {k: v for k, v in (("productId", args.productId), ("versionId", args.version),
                                ("deviceId", args.device)) if v is not None}
    t = svc.call("remoteInstall", params)
    out.text(f"queued {t['productId']} as task {str(t['taskId'])[:8]} for "
             + (f"device {args.device}" if args.device else "the player's running engine"))
    from engine.core.remote import backend_active  # here: only this command needs it

    while args.watch and backend_active(t["status"]):
        time.sleep(1.0)
        now = svc.call("remoteTasks", {"taskId": t["taskId"]})[0]
        if now != t:
            t = now
            out.text(_remote_line(t))
    out.emit({"task": t})
    if t["status"] == "error":  # the backend's name for a failed task
        err = EngineError(ErrorCode.from_wire(t["errorCode"], ErrorCode.INTERNAL_ERROR),
                          t["errorMessage"] or "")
        return err.exit_code
    return ExitCode.OK


def cmd_limit(svc: Service, args: argparse.Namespace, out: Output) -> int:
    params: dict[str, Any] = {"taskId": args.task}
    if args.rate is not None:
        params["bps"] = parse_rate(args.rate)
        params["set"] = True
    r = svc.call("limit", params)
    if args.task:
        rate = r["task"]["limitBps"]
        out.text(f"task {r['task']['taskId'][:8]} limit: {human_bytes(rate) + '/s' if rate else 'off'}")
    else:
        rate = r["globalLimitBps"]
        out.text(f"global limit: {human_bytes(rate) + '/s' if rate else 'off'}")
    out.emit(r)
    return ExitCode.OK


def cmd_schedule(svc: Service, args: argparse.Namespace, out: Output) -> int:
    params = params_of(args, "schedule")
    if not params.get("windows"):
        params.pop("windows", None)
    r = svc.call("schedule", params)
    out.text("download schedule: " + ("; ".join(r["schedule"]) if r["schedule"] else "always"))
    out.emit(r)
    return ExitCode.OK


def cmd_settings(svc: Service, args: argparse.Namespace, out: Output) -> int:
    params: dict[str, Any] = {"key": args.key}
    if args.unset:
        if args.key is None or args.value is not None:
            raise EngineError(ErrorCode.API_MISUSE, "settings --unset needs a key and no value")
        params["value"] = ""
    elif args.value is not None:
        if args.key is None:
            raise EngineError(ErrorCode.API_MISUSE, "settings needs a key before the value")
        params["value"] = args.value
    r = svc.call("settings", params)
    for key, value in sorted(r["settings"].items()):
        if isinstance(value, list | tuple):
            value = "; ".join(value)
        out.text(f"{key} = {'(unset)' if value is None else value}")
    out.emit(r)
    return ExitCode.OK


def cmd_status(svc: Service, args: argparse.Namespace, out: Output) -> int:
    r = svc.call("status", {})
    out.text(f"backend {r['backend']}  data {r['dataDir']}  daemon: {'yes' if r['running'] else 'no'}")
    out.text(f"logged in: {'yes' if r['loggedIn'] else 'no'}  global limit: "
             f"{r['globalLimitBps'] or 'off'}  schedule: {'; '.join(r['schedule']) or 'always'}"
             + ("  OFFLINE" if r["offline"] else ""))
    out.text(f"{len(r['tasks'])} task(s) in queue, {len(r['installed'])} game(s) installed")
    out.emit(r)
    return ExitCode.OK


def cmd_installed(svc: Service, args: argparse.Namespace, out: Output) -> int:
    games = svc.call("installed", {})
    for g in games:
        out.text(f"{g['productId']:20} {g['versionId']:10} {human_bytes(g['sizeBytes']):>10}  {g['path']}"
                 + ("  (dirty)" if g["dirty"] else ""))
    out.emit({"installed": games})
    return ExitCode.OK


def cmd_uninstall(svc: Service, args: argparse.Namespace, out: Output) -> int:
    g = svc.call("uninstall", params_of(args, "uninstall"))
    out.text(f"uninstalled {g['productId']} {g['versionId']}: {g['removedFiles']} file(s) removed "
             f"from {g['path']}")
    if g["leftInFolder"]:
        out.text(f"  kept the folder: it holds files the launcher did not install: "
                 f"{', '.join(g['leftInFolder'])}")
    out.emit({"result": "uninstalled", "game": g})
    return ExitCode.OK


def cmd_check_updates(svc: Service, args: argparse.Namespace, out: Output) -> int:
    answers = svc.call("checkUpdates", {})
    for a in answers:
        if a.get("isUpdateAvailable"):
            out.text(f"{a['productId']:20} -> {a.get('latestVersionId')}  {a.get('updateType')}"
                     f" {human_bytes(a.get('downloadSizeBytes') or 0)}"
                     f" (delta {human_bytes(a.get('deltaDownloadSizeBytes') or 0)},"
                     f" full {human_bytes(a.get('fullDownloadSizeBytes') or 0)})")
        else:
            out.text(f"{a['productId']:20} up to date")
    out.emit({"updates": answers})
    return ExitCode.OK


def cmd_update(svc: Service, args: argparse.Namespace, out: Output) -> int:
    if args.all:
        tasks = svc.call("updateAll", {})
        if not tasks:
            out.text("everything is up to date")
            out.emit({"result": "up_to_date"})
            return ExitCode.OK
    elif args.productId:
        tasks = [svc.call("update", params_of(args, "update"))]
    else:
        raise EngineError(ErrorCode.API_MISUSE, "update needs a product or --all")
    code: int = ExitCode.OK
    for task in tasks:
        out.text(f"task {task['taskId'][:8]}: updating {task['productId']} from {task['fromVersion']}")
        code = _wait(svc, task, out) or code
    return code


def cmd_rollback(svc: Service, args: argparse.Namespace, out: Output) -> int:
    task = svc.call("rollback", params_of(args, "rollback"))
    out.text(f"task {task['taskId'][:8]}: rolling {task['productId']} back to {task['versionId']}")
    return _wait(svc, task, out)


def cmd_verify(svc: Service, args: argparse.Namespace, out: Output) -> int:
    report = svc.call("verify", params_of(args, "verify"))
    _print_report(report, out)
    if report["ok"] or not args.repair:
        return ExitCode.OK if report["ok"] else ExitCode.INTEGRITY
    task = svc.call("repair", {"productId": args.productId})
    damaged = (set(report["missing"]) | set(report["wrongSize"]) | set(report["links"])
               | {d["path"] for d in report["damaged"]})
    out.text(f"task {task['taskId'][:8]}: repairing {len(damaged)} file(s)")
    code = _wait(svc, task, out)
    if code != ExitCode.OK:
        return code
    after = svc.call("verify", {"productId": args.productId})  # done only when a check says so
    _print_report(after, out)
    return ExitCode.OK if after["ok"] else ExitCode.INTEGRITY


def _print_report(r: dict[str, Any], out: Output) -> None:
    out.emit({"verify": r})
    mbs = r["bytesChecked"] / 1e6 / max(r["seconds"], 1e-9)
    out.text(f"{r['productId']} {r['versionId']}: {'OK' if r['ok'] else 'DAMAGED'}"
             f" ({r['filesChecked']} files, {human_bytes(r['bytesChecked'])} checked,"
             f" {mbs:.0f} MB/s{', quick' if r['quick'] else ''})")
    if r.get("unchangedFiles"):  # quick: taken from the verified-metadata record
        out.text(f"  {r['unchangedFiles']} file(s), {human_bytes(r['unchangedBytes'])}, unchanged"
                 " since their last check (size, mtime, ctime, inode): not re-hashed")
    for p in r["missing"]:
        out.text(f"  missing     {p}")
    for p in r["wrongSize"]:
        out.text(f"  wrong size  {p}")
    for p in r["links"]:
        out.text(f"  link        {p} (not followed; repair replaces it)")
    for d in r["damaged"]:
        out.text(f"  damaged     {d['path']} bytes {d['offset']}-{d['offset'] + d['size'] - 1}")
    for p in r["extra"]:
        out.text(f"  extra       {p}")


def cmd_move(svc: Service, args: argparse.Namespace, out: Output) -> int:
    g = svc.call("moveInstall", params_of(args, "moveInstall"))
    out.text(f"moved {g['productId']} to {g['path']}")
    out.emit({"result": "moved", "game": g})
    return ExitCode.OK


def cmd_offline(svc: Service, args: argparse.Namespace, out: Output) -> int:
    r = svc.call("offline", {"enabled": args.state == "on"})
    out.text(f"simulated offline: {'on' if r['offline'] else 'off'}")
    out.emit(r)
    return ExitCode.OK


def cmd_events(svc: Service, args: argparse.Namespace, out: Output) -> int:
    if isinstance(svc, LocalService) or not isinstance(svc, EventSource):
        raise EngineError(ErrorCode.API_MISUSE, "events needs a running daemon (launcher-engine serve)")
    svc.subscribe(args.taskId)
    for event in svc.events():  # until the daemon stops or Ctrl-C
        out.event(event)
    return ExitCode.OK


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    minutes, sec = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def _slots(names: list[str]) -> str:
    return ", ".join(unquote(n) for n in names)


def _saves_line(report: dict[str, Any] | None) -> str:
    if not report:
        return "none"
    if report.get("offline") or report.get("error"):
        return f"not synced ({report.get('error')})"
    return (f"{len(report['uploaded'])} uploaded, {len(report['downloaded'])} downloaded, "
            f"{report['inSync']} in sync" + (f", CONFLICTS: {_slots(report['conflicts'])}"
                                              if report["conflicts"] else ""))


def cmd_launch(svc: Service, args: argparse.Namespace, out: Output) -> int:
    params = params_of(args, "launch")
    # in-process, this process is what watches the game: it must stay until the game ends
    params["wait"] = not args.no_wait or isinstance(svc, LocalService)
    if not out.as_json:
        out.text(f"starting {args.productId}" + ("; waiting for it to exit" if params["wait"]
                                                  else ""))
    r = svc.call("launch", params)
    out.text(f"{r['productId']}: saves before: {_saves_line(r.get('savesBefore'))}")
    if r["running"]:
        out.text(f"{r['productId']} is running (pid {r['pid']}, session {r['sessionId'][:8]})")
        out.emit({"result": "running", "game": r})
        return ExitCode.OK
    state = "crashed" if r["crashed"] else "exited"
    out.text(f"{r['productId']} {state} with code {r['exitCode']} after {r['seconds']:.1f} s; "
             f"saves after: {_saves_line(r.get('savesAfter'))}")
    out.emit({"result": state, "game": r})
    return ExitCode.OK if not r["crashed"] else ExitCode.FAILED


def cmd_games(svc: Service, args: argparse.Namespace, out: Output) -> int:
    games = svc.call("games", {})
    for g in games:
        out.text(f"{g['productId']:20} pid {g['pid']:<8} session {g['sessionId'][:8]}")
    if not games:
        out.text("no game is running")
    out.emit({"games": games})
    return ExitCode.OK


def cmd_stop(svc: Service, args: argparse.Namespace, out: Output) -> int:
    g = svc.call("stopGame", params_of(args, "stopGame"))
    out.text(f"asked {g['productId']} (pid {g['pid']}) to close")
    out.emit({"result": "stopping", "game": g})
    return ExitCode.OK


def cmd_playtime(svc: Service, args: argparse.Namespace, out: Output) -> int:
    rows = svc.call("playtime", params_of(args, "playtime"))
    for r in rows:
        out.text(f"{r['productId']:20} this device {_seconds(r['localSeconds']):>8}  all devices "
                 f"{_seconds(r['serverSeconds']) if r['serverSeconds'] is not None else 'offline':>8}"
                 f"  {len(r['sessions'])} session(s)")
    if rows and rows[0]["pendingCalls"]:
        out.text(f"{rows[0]['pendingCalls']} call(s) wait for the backend")
    out.emit({"playtime": rows})
    return ExitCode.OK


def cmd_saves(svc: Service, args: argparse.Namespace, out: Output) -> int:
    action = {"list": "status", "resolve": "sync"}.get(args.action, args.action)
    if args.action == "resolve" and not args.keep:
        raise EngineError(ErrorCode.API_MISUSE, "saves resolve needs --keep local or --keep cloud")
    params = params_of(args, "saves") | {"action": action}
    r = svc.call("saves", params)
    if action == "status":
        for slot in r["slots"]:
            versions = slot["cloudVersions"]
            out.text(f"{unquote(slot['slot']):40} {slot['action']:9} local "
                     f"{(slot['localSha256'] or '-')[:10]:10} cloud v{slot['cloudVersionId'] or '-'}"
                     f" ({len(versions)} version(s))")
            for v in versions:
                out.text(f"    v{v['version']:<4} {v['savegameId']}  {human_bytes(v['sizeBytes'])}"
                         f"  {v['createdAt']}")
        for b in r["backups"]:
            out.text(f"  local backup: {b}")
        out.emit({"saves": r})
        return ExitCode.OK
    out.text(f"{r['productId']}: {_saves_line(r)}" + (f"; backup {r['backup']}" if r["backup"] else ""))
    out.emit({"saves": r})
    if r["conflicts"]:
        out.text("choose: launcher-engine saves " + r["productId"] + " resolve --keep local|cloud")
        return int(ErrorCode.SAVEGAME_VERSION_CONFLICT.exit_code)
    return ExitCode.OK


def cmd_achievements(svc: Service, args: argparse.Namespace, out: Output) -> int:
    rows = svc.call("achievements", params_of(args, "achievements"))
    for a in rows:
        progress = a.get("current_progress")
        extra = f" {progress['current']}/{progress['total']}" if progress else ""
        out.text(f"{'[x]' if a.get('is_unlocked') else '[ ]'} {a.get('name') or a['achievementId']:28}"
                 f"{extra:8} {a.get('rarity_percentage', 0):5.1f}% of players")
    out.emit({"achievements": rows})
    return ExitCode.OK


def _number(text: str | None, what: str) -> int:
    if text is None:
        raise EngineError(ErrorCode.API_MISUSE, f"{what} needs a number")
    try:
        return int(text)
    except ValueError as exc:
        raise EngineError(ErrorCode.API_MISUSE, f"not a number: {text!r}") from exc


def _wish_line(e: dict[str, Any]) -> str:
    return f"{e['priority']:5}  {e['productId']:20} {e['title']:28} added {e['addedAt'][:16]}"


def cmd_wishlist(svc: Service, args: argparse.Namespace, out: Output) -> int:
    """``wishlist`` lists; ``add GAME [PRIORITY]``, ``priority GAME N``, ``remove GAME``."""
    action = args.action
    if action == "list":
        rows = svc.call("wishlist", {})
        for e in rows:
            out.text(_wish_line(e))
        if not rows:
            out.text("the wishlist is empty")
        out.emit({"wishlist": rows})
        return ExitCode.OK
    if args.productId is None:
        raise EngineError(ErrorCode.API_MISUSE, f"wishlist {action} needs a game")
    params: dict[str, Any] = {"productId": args.productId}
    if action == "remove":
        if args.value is not None:
            raise EngineError(ErrorCode.API_MISUSE, "wishlist remove takes no number")
        r = svc.call("wishlistRemove", params)
        out.text(f"{args.productId} is off the wishlist")
        out.emit(r)
        return ExitCode.OK
    if action == "priority" or args.value is not None:
        params["priority"] = _number(args.value, f"wishlist {action}")
    entry = svc.call("wishlistAdd" if action == "add" else "wishlistPriority", params)
    out.text(_wish_line(entry))
    out.emit({"wishlistItem": entry})
    return ExitCode.OK


def cmd_family(svc: Service, args: argparse.Namespace, out: Output) -> int:
    """``family`` shows it; ``add USER`` shares your library; ``remove USER`` (a name or an
    id) removes a member, or leaves when it is you."""
    if args.action == "show":
        f = svc.call("family", {})
        if f["role"] == "none":
            out.text("no family: `launcher-engine family add USER` shares your library")
        else:
            out.text(f"you are the family's {f['role']}; {len(f['members']) - 1} of "
                     f"{f['maxMembers']} member(s)")
        for m in f["members"]:
            out.text(f"  {m['role']:6} {m['username']:20} {m['userId']}")
        for g in f["sharedGames"]:
            state = "borrowed" if g["isBorrowed"] else "can be borrowed"
            busy = "" if g["isAvailable"] else f"; {g['ownerName']} is playing it now"
            out.text(f"  shared by {g['ownerName']}: {g['productId']:20} {g['title']:28} "
                     f"{state}{busy}")
        out.emit({"family": f})
        return ExitCode.OK
    if args.user is None:
        raise EngineError(ErrorCode.API_MISUSE, f"family {args.action} needs a user")
    if args.action == "add":
        m = svc.call("familyAdd", {"username": args.user})
        out.text(f"{m['username']} now shares your library")
        out.emit({"member": m})
        return ExitCode.OK
    members = svc.call("family", {})["members"]
    user_id = next((m["userId"] for m in members if args.user in (m["username"], m["userId"])),
                   args.user)  # an unknown one: the backend says FAMILY_MEMBER_NOT_FOUND
    r = svc.call("familyRemove", {"userId": user_id})
    out.text(f"{args.user} is no longer in the family")
    out.emit(r)
    return ExitCode.OK


def cmd_borrow(svc: Service, args: argparse.Namespace, out: Output) -> int:
    item = svc.call("borrow", params_of(args, "borrow"))
    out.text(f"borrowed {item.get('title') or item.get('product_id')}: it is in your library "
             "(install and play it while its owner is not playing it)")
    out.emit({"libraryItem": item})
    return ExitCode.OK


def cmd_serve(svc: Service, args: argparse.Namespace, out: Output) -> int:
    raise AssertionError("serve is dispatched before a service exists")


# ---------------------------------------------------------------------------------------------
# The parser: derived from the protocol's command table (engine.api.protocol.COMMANDS). Each
# subcommand names the command whose parameters become its arguments (same names, types and
# help); what only the command line has (--no-wait, --repair, a rate like "20M") is declared
# beside it.


# the command line a daemon runs for a client (run_command_line) on this thread, if any
_FOR_CLIENT: contextvars.ContextVar[CommandLine | None] = contextvars.ContextVar(
    "for_client", default=None)


def _absolute(text: str) -> str:
    """A path argument made absolute against the folder (and ``~`` the home) of the process
    that was given it: this one, or the client whose line a daemon runs."""
    line = _FOR_CLIENT.get()
    if line is None:
        return str(Path(text).expanduser().absolute())
    if text == "~" or text.startswith("~/"):
        text = line.home + text[1:]
    return str(Path(line.cwd, Path(text).expanduser()))


def _rate(text: str) -> int | None:
    try:
        return parse_rate(text)
    except EngineError as exc:  # a usage error, worded by the parser like any other
        raise argparse.ArgumentTypeError(exc.message) from exc


# how a protocol param is spelled on the command line (default: --kebab-case)
FLAG = {"versionId": "--version", "limitBps": "--limit", "taskId": "--task"}
METAVAR = {"productId": "product", "taskId": "task"}
CONVERT: dict[str, Callable[[str], Any]] = {"target": _absolute, "folder": _absolute,
                                            "limitBps": _rate}


@dataclass(frozen=True)
class Cli:
    """One subcommand: its runner and which protocol command's params become arguments."""

    name: str
    run: Command
    method: str | None = None  # the protocol command whose params become arguments
    positional: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()  # required by the protocol, optional here (asked for)
    skip: tuple[str, ...] = ()  # protocol params not offered on the command line
    extra: Callable[[argparse.ArgumentParser], None] | None = None
    help: str | None = None


def _kebab(name: str) -> str:
    return "--" + "".join("-" + c.lower() if c.isupper() else c for c in name)


def _add_params(p: argparse.ArgumentParser, spec: Cli) -> None:
    if spec.method is None:
        return
    for param in command(spec.method).params:
        if param.name in spec.skip:
            continue
        kw: dict[str, Any] = {"help": param.help}
        if param.kind is ParamKind.BOOL:
            kw["action"] = "store_true"
        elif param.name in CONVERT:
            kw["type"] = CONVERT[param.name]
        elif param.kind is ParamKind.INT:
            kw["type"] = int
        if param.name in spec.positional:
            if param.kind is ParamKind.TEXT_LIST:
                kw["nargs"] = "*"
            elif not param.required or param.name in spec.optional:
                kw["nargs"] = "?"
            p.add_argument(param.name, metavar=METAVAR.get(param.name, param.name), **kw)
        else:
            if param.kind is ParamKind.TEXT_LIST:
                kw["nargs"] = "*"
            flag = FLAG.get(param.name, _kebab(param.name))
            if param.kind is not ParamKind.BOOL:
                kw["metavar"] = flag.lstrip("-").upper()
            p.add_argument(flag, dest=param.name, **kw)


def params_of(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The protocol params of ``method`` from parsed arguments (unset ones left out)."""
    out = {}
    for param in command(method).params:
        value = getattr(args, param.name, None)
        if value is not None and value is not False:
            out[param.name] = value
    return out


def _install_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-wait", action="store_true", help="queue it and return")


def _queue_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "pause", "resume", "cancel", "move", "priority"])
    p.add_argument("task", nargs="?")
    p.add_argument("value", nargs="?")
    p.add_argument("--all", action="store_true", help="include finished tasks")


def _limit_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("rate", nargs="?", help="e.g. 20M, 512K, off")
    p.add_argument("--task")


def _settings_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unset", action="store_true", help="back to the default (optional keys)")


def _update_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="update every game that has an update")


def _verify_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repair", action="store_true", help="re-download only the damaged chunks")


def _offline_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("state", choices=["on", "off"])


def _launch_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-wait", action="store_true",
                   help="return once it runs (needs the daemon, which then watches it)")


def _saves_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="list",
                   choices=["list", "status", "sync", "restore", "resolve"])


def _wishlist_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="list",
                   choices=["list", "add", "priority", "remove"])
    p.add_argument("productId", nargs="?", metavar="product")
    p.add_argument("value", nargs="?", metavar="priority", help="0..1000, higher first")


def _remote_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="list", choices=["list", "install"])
    p.add_argument("productId", nargs="?", help="install: the game")
    p.add_argument("--version", help="a version (default: the latest)")
    p.add_argument("--device", help="the device to run it (see `status`: deviceId); "
                   "default: whichever of the player's engines is running")
    p.add_argument("--watch", action="store_true", help="follow it until it ends")


def _family_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="show", choices=["show", "add", "remove"])
    p.add_argument("user", nargs="?", help="add: an account name; remove: a name or user id")


def _serve_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=0)


CLI: tuple[Cli, ...] = (
    Cli("login", cmd_login, "login", positional=("username",), optional=("password",)),
    Cli("logout", cmd_logout, "logout"),
    Cli("library", cmd_library, "library"),
    Cli("install", cmd_install, "install", positional=("productId",), extra=_install_extra),
    Cli("run", cmd_run, help="process the queue until it is empty"),
    Cli("queue", cmd_queue, extra=_queue_extra, help="list or change the download queue"),
    Cli("remote", cmd_remote, extra=_remote_extra,
        help="downloads on the player's other devices: list them, or queue one there"),
    Cli("limit", cmd_limit, extra=_limit_extra,
        help="show or set the global (or a task's) speed limit"),
    Cli("schedule", cmd_schedule, "schedule", positional=("windows",)),
    Cli("settings", cmd_settings, "settings", positional=("key", "value"), extra=_settings_extra),
    Cli("status", cmd_status, "status"),
    Cli("installed", cmd_installed, "installed"),
    Cli("uninstall", cmd_uninstall, "uninstall", positional=("productId",)),
    Cli("check-updates", cmd_check_updates, "checkUpdates"),
    Cli("update", cmd_update, "update", positional=("productId",), optional=("productId",),
        skip=("priority",), extra=_update_extra),
    Cli("rollback", cmd_rollback, "rollback", positional=("productId",)),
    Cli("verify", cmd_verify, "verify", positional=("productId",), extra=_verify_extra),
    Cli("move", cmd_move, "moveInstall", positional=("productId", "folder"),
        help="move an installed game to another folder"),
    Cli("offline", cmd_offline, "offline", skip=("enabled",), extra=_offline_extra),
    Cli("events", cmd_events, "subscribe", help="tail the daemon's event stream"),
    Cli("launch", cmd_launch, "launch", positional=("productId",), skip=("wait",),
        extra=_launch_extra),
    Cli("games", cmd_games, "games"),
    Cli("stop", cmd_stop, "stopGame", positional=("productId",)),
    Cli("playtime", cmd_playtime, "playtime", positional=("productId",)),
    Cli("saves", cmd_saves, "saves", positional=("productId",), skip=("action",),
        extra=_saves_extra),
    Cli("achievements", cmd_achievements, "achievements", positional=("productId",)),
    Cli("wishlist", cmd_wishlist, extra=_wishlist_extra,
        help="the wishlist: list, add GAME [PRIORITY], priority GAME N, remove GAME"),
    Cli("family", cmd_family, extra=_family_extra,
        help="family sharing: show (members, games shared with you), add USER, remove USER"),
    Cli("borrow", cmd_borrow, "borrow", positional=("productId",)),
    Cli("serve", cmd_serve, extra=_serve_extra,
        help="run the engine as a daemon with the local control API"),
)


def _version() -> str:
    """The distribution's version: pyproject's ``version``, the one place it is written (a
    frozen bundle carries the distribution's metadata for this)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("game-launcher")
    except PackageNotFoundError:  # a bare source tree that was never installed
        return "0+unknown"


class _VersionAction(argparse.Action):
    """``--version``, read only when asked: the distribution metadata lookup costs ~15 ms of
    every command's start (argparse's own "version" action formats its text up front)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help or "show program's version number and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        parser._print_message(f"launcher-engine {_version()}\n", sys.stdout)
        parser.exit()


def _skip_httpx_cli() -> None:
    """Keep httpx's command-line client out of the engine's process: httpx imports it (click,
    rich, pygments: ~30 ms) whenever those are installed, and falls back to a stub when that
    import fails, which a None entry in ``sys.modules`` makes it do. The engine itself no longer
    imports httpx (its backend client is on aiohttp); this still holds for whatever does."""
    if "httpx" not in sys.modules and "httpx._main" not in sys.modules:
        sys.modules["httpx._main"] = None  # type: ignore[assignment]  # the import system's "not importable"


TOP_VALUE_OPTIONS = ("--backend", "--data")
TOP_FLAGS = ("--json", "-v", "--verbose")


def command_named(argv: list[str]) -> str | None:
    """The command of ``argv`` when every option before it is spelled out in full, so the
    parser needs that command alone (the 30 others cost 10-15 ms of every start, most of it
    argparse's gettext lookups); None otherwise: no command, help, an abbreviated or unknown
    option, a missing value — the whole parser then parses and words any error as always."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in TOP_VALUE_OPTIONS:
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                return None
            i += 2
        elif token in TOP_FLAGS or token.partition("=")[0] in TOP_VALUE_OPTIONS:
            i += 1
        elif token.startswith("-"):
            return None
        else:
            return token if any(spec.name == token for spec in CLI) else None
    return None


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, by the same rule (COLUMNS, then the terminal of
    stdout, then 80) without importing shutil, which loads bz2, lzma and zlib."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's own, given the width it would look up itself: argparse makes a formatter for
    every argument it adds (to check the metavar), and its own lookup imports shutil (~2 ms of
    every start) for text that a command without an error never prints."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


class _Declined(Exception):
    """A client's command line that the parser would answer with its own words (an error,
    help, the version): the client's own CLI runs it and says them."""


class _Parser(argparse.ArgumentParser):
    """argparse's, except that for a client's command line it neither prints nor exits."""

    def _print_message(self, message: str, file: Any = None) -> None:
        if _FOR_CLIENT.get() is None:
            super()._print_message(message, file)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if _FOR_CLIENT.get() is not None:
            raise _Declined(message or "")
        super().exit(status, message)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``only``, just that command's (see ``command_named``)."""

    def common_options(p: argparse.ArgumentParser, default: Any) -> None:
        # accepted before and after the subcommand; SUPPRESS keeps the subparser from
        # overwriting a value given before it
        p.add_argument("--backend", dest="backend_url", default=default, help="backend URL")
        p.add_argument("--data", dest="data_dir", default=default,
                       help="engine data folder (state, config)")
        p.add_argument("--json", action="store_true", default=False if default is None else default,
                       help="one JSON object per line")
        p.add_argument("-v", "--verbose", action="store_true",
                       default=False if default is None else default)

    common = _Parser(add_help=False, formatter_class=_Formatter)
    common_options(common, argparse.SUPPRESS)
    parser = _Parser(prog="launcher-engine", description=__doc__, formatter_class=_Formatter)
    common_options(parser, None)
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    for spec in CLI:
        if only is not None and spec.name != only:
            continue
        text = spec.help or (command(spec.method).help if spec.method else spec.name)
        p = sub.add_parser(spec.name, help=text, description=text, parents=[common],
                           formatter_class=_Formatter)
        p.set_defaults(func=spec.run)
        _add_params(p, spec)
        if spec.extra is not None:
            spec.extra(p)
    return parser


class LocalService:
    """In-process: the engine runs on this service's own event loop, only while a command
    waits for it (a blocking facade, so commands are the same code for daemon and local)."""

    def __init__(self, settings: Settings) -> None:
        import asyncio
        import gc

        # the imports and the engine make ~50k objects that live as long as the process: ~100
        # collections on the way found nothing to free (10-30 ms); then they are frozen
        gc.disable()
        try:
            _skip_httpx_cli()
            from engine.api.service import EngineService
            from engine.jobs.engine import Engine

            self.loop = asyncio.new_event_loop()
            self.engine = Engine(settings)
            self.service = EngineService(self.engine)
        finally:
            freeze_startup_heap()

    def call(self, method: str, params: dict[str, Any]) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.loop.run_until_complete(self.service.call(method, clean))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.engine.close())
        finally:
            self.loop.close()


def freeze_startup_heap() -> None:
    """Keep what start-up made (modules, classes, the engine: ~50k objects) out of every later
    garbage collection: a run's own allocations (manifest decode, plan, blocks) trigger
    collections that walked all of it each time — a 1 GiB install's plan took 18-26 ms of CPU
    with the engine imported, 11-12 ms with this (issue 13, first byte). Those objects are still
    freed when their last reference goes; only a reference cycle among them would outlive its
    use, and start-up leaves none worth a collection."""
    import gc

    gc.freeze()
    gc.enable()


def _storage_cause(exc: BaseException) -> Any:
    """The failed write of a file behind ``exc`` (looking inside exception groups), if any."""
    import sqlite3

    if isinstance(exc, ConnectionError | TimeoutError):
        return None  # network trouble, reported by the backend client
    if isinstance(exc, sqlite3.Error | OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _storage_cause(inner)
            if found is not None:
                return found
    return None


class _Early:
    """The daemon of the data folder the command line names, found and its connection opened
    before the settings are read: the daemon answers the handshake while this process imports
    and checks its settings, instead of after. Used only if the settings name the same folder;
    a refused setting closes it unused (the error is the same as without it)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from engine.api.client import default_data_dir

        self.data_dir = (Path(args.data_dir).expanduser() if args.data_dir
                         else default_data_dir())
        self.info = daemon_running(self.data_dir)
        self.client = SyncDaemonClient(self.info).open() if self.info is not None else None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def _run(args: argparse.Namespace, out: Output) -> int:
    early = None
    if args.command != "serve":
        # a failed lookup is reported by the same lookup after the settings, as it always was
        with contextlib.suppress(OSError, ValueError):
            early = _Early(args)
    try:
        from engine.io.config import load_settings

        settings: Settings = load_settings({"backend_url": args.backend_url,
                                            "data_dir": args.data_dir})
        try:
            return _dispatch(args, out, settings, early)
        except Exception as exc:
            cause = _storage_cause(exc)
            if cause is None:
                raise
            import logging

            from engine.io.fsops import storage_error

            logging.getLogger("engine.cli").debug("storage failure", exc_info=True)
            raise storage_error(cause, f"running {args.command}", settings.data_dir) from exc
    finally:
        if early is not None:
            early.close()


def _start_logging(args: argparse.Namespace) -> None:
    """Logging, for an engine in this process (in-process or the daemon): a command sent to a
    running daemon logs nothing. (The allocator's arenas are capped with the pipeline's imports,
    ``engine.jobs.install.import_pipeline``, before the block workers start.)"""
    import logging

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _dispatch(args: argparse.Namespace, out: Output, settings: Settings,
              early: _Early | None = None) -> int:
    func: Command = args.func
    if args.command == "serve":
        import asyncio
        import gc

        _start_logging(args)
        gc.disable()  # until the daemon is up: then collected once and frozen (Daemon.run)
        try:
            _skip_httpx_cli()
            from engine.api.daemon import Daemon

            asyncio.run(Daemon(settings, port=args.port, run_command_line=run_command_line).run())
        finally:
            gc.enable()
        return ExitCode.OK
    if early is not None and early.data_dir == settings.data_dir:
        info, client = early.info, early.client
    else:
        if early is not None:
            early.close()
        info = daemon_running(settings.data_dir)
        client = SyncDaemonClient(info) if info is not None else None
    if client is not None:
        out.one_shot = True
        with client:
            client.on_event = out.event
            if args.command in FOLLOWS_EVENTS:
                client.subscribe(reply=False)  # the command follows at once, no round trip
            return func(client, args, out)
    _start_logging(args)
    try:
        local = LocalService(settings)
    except ValueError as exc:
        raise EngineError(ErrorCode.CONFIG_INVALID, str(exc)) from exc
    try:
        local.engine.bus.on_event(out.event)
        return func(local, args, out)
    finally:
        local.close()


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(command_named(words)).parse_args(words)
    out = Output(args.json)
    try:
        code = _reported(out, lambda: _run(args, out))
    finally:
        out.flush()
    if argv is None and out.one_shot:  # the program itself (not a caller in-process)
        end_now(code)
    return code


def _reported(out: Output, run: Callable[[], int]) -> int:
    """``run``'s exit code; an engine error or an interrupt said as the CLI says them."""
    try:
        return run()
    except EngineError as exc:
        return report_error(out, exc)
    except KeyboardInterrupt:
        return report_interrupted(out)


def report_error(out: Output, exc: EngineError) -> int:
    out.emit({"error": exc.to_dict(), "exitCode": int(exc.exit_code)})
    out.error(f"error: {exc.code}: {exc.message}")
    return int(exc.exit_code)


def report_interrupted(out: Output | None = None) -> int:
    (out or Output(False)).error(INTERRUPTED)
    return int(ExitCode.INTERRUPTED)


def report_unreachable(words: list[str], detail: str) -> int:
    """The quick path's daemon went away after it had the line (engine.cli.quick): said as a
    daemon client says it."""
    args = build_parser(command_named(words)).parse_args(words)
    return report_error(Output(args.json), EngineError(ErrorCode.DAEMON_UNREACHABLE, detail))


def run_command_line(line: CommandLine, svc: LineService) -> int | None:
    """A client's command line run by its daemon (``cli``; engine.cli.quick): what it prints
    goes to the client (``svc.write``), its exit code is returned; the same command, output
    and code as the client's own CLI would give with this daemon. None when the client's CLI
    should run it: a line the parser answers itself (an error, help), ``serve`` or ``login``,
    another data folder; nothing was printed or done then."""
    words = list(line.argv)
    name = command_named(words)
    if name is None or name in LOCAL_ONLY:
        return None
    token = _FOR_CLIENT.set(line)
    try:
        try:
            args = build_parser(name).parse_args(words)
        except _Declined:
            return None
        env = dict(item.partition("=")[::2] for item in line.env)
        # the folder the client's own CLI would take (the settings' rule: --data, else the
        # variable, else the default, which the client looked up as it would), checked before
        # anything of it is read: a line for another daemon's folder, or one the client
        # spelled differently from the parser (an abbreviation), is the client's to run
        named = args.data_dir or env.get(ENV_PREFIX + "DATA_DIR")
        folder = os.path.abspath(_absolute(named)) if named else line.data_dir
        if folder != line.data_dir or Path(folder).resolve() != svc.data_dir.resolve():
            return None
        out = Output(args.json, svc.write, line.progress)
        out.one_shot = True
        from engine.io.config import load_settings

        try:
            load_settings({"backend_url": args.backend_url, "data_dir": folder}, environ=env)
        except EngineError as exc:
            return report_error(out, exc)
        svc.on_event = out.event
        if name in FOLLOWS_EVENTS:
            svc.subscribe(reply=False)
        try:
            return _reported(out, lambda: int(args.func(svc, args, out)))
        except Exception as exc:
            if svc.gone:
                raise
            import logging

            from engine.api.daemon import internal_error  # loaded: this runs in the daemon

            logging.getLogger("engine.cli").exception("command line %s failed", words)
            return report_error(out, internal_error(exc))
    finally:
        _FOR_CLIENT.reset(token)


if __name__ == "__main__":
    sys.exit(main())
