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
import asyncio
import getpass
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from engine.core.errors import EngineError, ErrorCode, ExitCode
from engine.core.events import STATUS, Event
from engine.io.config import Settings, load_settings
from engine.io.fsops import storage_error

log = logging.getLogger("engine.cli")


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


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._last_bar = 0.0
        self._bar_shown = False

    def emit(self, obj: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(obj, default=str), flush=True)

    def text(self, line: str) -> None:
        if not self.as_json:
            self._end_bar()
            print(line, flush=True)

    def event(self, event: Event) -> None:
        if self.as_json:
            self.emit(event)
            return
        if event.get("type") != STATUS:
            return
        p = event["payload"]
        if p["status"] != "downloading":
            self.text(f"[{p['taskId'][:8]}] {p['productId'] or ''} {p['status']}"
                      + (f": {p['errorDetails']['errorMessage']}" if p.get("errorDetails") else ""))
            return
        now = time.monotonic()
        if now - self._last_bar < 0.2:
            return
        self._last_bar = now
        width = 30
        pct = p["totalProgressPercentage"]
        filled = int(width * pct / 100)
        eta = p["estimatedTimeLeftSeconds"]
        eta_text = "--:--" if eta is None else f"{eta // 60:02d}:{eta % 60:02d}"
        line = (f"\r{(p['productId'] or '')[:16]:16} [{'#' * filled}{'.' * (width - filled)}] "
                f"{pct:5.1f}%  {human_bytes(p['downloadedBytes'])}/{human_bytes(p['totalSizeBytes'])}"
                f"  {human_bytes(p['downloadSpeedBps'])}/s  ETA {eta_text}  ")
        stream = sys.stdout
        if stream.isatty() or os.environ.get("LAUNCHER_FORCE_PROGRESS"):
            stream.write(line)
            stream.flush()
            self._bar_shown = True

    def _end_bar(self) -> None:
        if self._bar_shown:
            sys.stdout.write("\n")
            self._bar_shown = False


# ---------------------------------------------------------------------------------------------
# Commands: each an async function over a service (``call(method, params)``)


class Service(Protocol):
    async def call(self, method: str, params: dict[str, Any]) -> Any: ...


Command = Callable[[Service, argparse.Namespace, Output], Awaitable[int]]
FINAL = ("completed", "error", "cancelled")


async def cmd_login(svc: Service, args: argparse.Namespace, out: Output) -> int:
    password = args.password or os.environ.get("LAUNCHER_ENGINE_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise EngineError(ErrorCode.CONFIG_INVALID, "no password: use --password or "
                              "LAUNCHER_ENGINE_PASSWORD when stdin is not a terminal")
        password = getpass.getpass(f"password for {args.username}: ")
    r = await svc.call("login", {"username": args.username, "password": password})
    out.text(f"logged in as {args.username}; token in {r['tokenStore']}")
    out.emit(r)
    return ExitCode.OK


async def cmd_logout(svc: Service, args: argparse.Namespace, out: Output) -> int:
    out.emit(await svc.call("logout", {}))
    out.text("logged out")
    return ExitCode.OK


async def cmd_library(svc: Service, args: argparse.Namespace, out: Output) -> int:
    for item in await svc.call("library", {}):
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


async def _wait(svc: Service, task: dict[str, Any], out: Output) -> int:
    if task["status"] in FINAL:
        return _task_result(task, out)
    return _task_result(await svc.call("wait", {"taskId": task["taskId"]}), out)


async def cmd_install(svc: Service, args: argparse.Namespace, out: Output) -> int:
    task = await svc.call("install", {
        "productId": args.product, "versionId": args.version,
        "target": str(Path(args.target).absolute()) if args.target else None,
        "priority": args.priority, "limitBps": parse_rate(args.limit) if args.limit else None})
    out.text(f"task {task['taskId'][:8]}: installing {task['productId']} into {task['targetPath']}")
    if args.no_wait:
        out.emit({"result": "queued", "task": task})
        return ExitCode.OK
    return await _wait(svc, task, out)


async def cmd_run(svc: Service, args: argparse.Namespace, out: Output) -> int:
    """Process the whole queue until nothing runnable is left."""
    code: int = ExitCode.OK
    for task in await svc.call("tasks", {}):
        if task["status"] == "paused" and task["userPaused"]:
            continue
        code = await _wait(svc, task, out) or code
    return code


async def cmd_queue(svc: Service, args: argparse.Namespace, out: Output) -> int:
    action = args.action
    if action == "list":
        tasks = await svc.call("tasks", {"all": args.all})
        for t in tasks:
            out.text(f"{t['taskId'][:8]}  {t['position']:3}  p{t['priority']}  {t['status']:11} "
                     f"{t['kind']:8} {t['productId']:20} {human_bytes(t['downloadedBytes'])}/"
                     f"{human_bytes(t['downloadSizeBytes'])}"
                     + (f"  {t['errorCode']}" if t["errorCode"] else ""))
        out.emit({"tasks": tasks})
        return ExitCode.OK
    if args.task is None:
        raise EngineError(ErrorCode.API_MISUSE, f"queue {action} needs a task id")
    params: dict[str, Any] = {"taskId": args.task}
    if action in ("move", "priority"):
        if args.value is None:
            raise EngineError(ErrorCode.API_MISUSE, f"queue {action} needs a number")
        try:
            params["position" if action == "move" else "priority"] = int(args.value)
        except ValueError as exc:
            raise EngineError(ErrorCode.API_MISUSE, f"not a number: {args.value!r}") from exc
    result = await svc.call(action, params)
    tasks = result if isinstance(result, list) else [result]
    for t in tasks:
        out.text(f"{t['taskId'][:8]}  {t['status']}  position {t['position']}  priority {t['priority']}")
    out.emit({"tasks": tasks})
    return ExitCode.OK


async def cmd_limit(svc: Service, args: argparse.Namespace, out: Output) -> int:
    params: dict[str, Any] = {"taskId": args.task}
    if args.rate is not None:
        params["bps"] = parse_rate(args.rate)
        params["set"] = True
    r = await svc.call("limit", params)
    if args.task:
        rate = r["task"]["limitBps"]
        out.text(f"task {r['task']['taskId'][:8]} limit: {human_bytes(rate) + '/s' if rate else 'off'}")
    else:
        rate = r["globalLimitBps"]
        out.text(f"global limit: {human_bytes(rate) + '/s' if rate else 'off'}")
    out.emit(r)
    return ExitCode.OK


async def cmd_schedule(svc: Service, args: argparse.Namespace, out: Output) -> int:
    params: dict[str, Any] = {}
    if args.clear:
        params["clear"] = True
    elif args.windows:
        params["windows"] = list(args.windows)
    r = await svc.call("schedule", params)
    out.text("download schedule: " + ("; ".join(r["schedule"]) if r["schedule"] else "always"))
    out.emit(r)
    return ExitCode.OK


async def cmd_settings(svc: Service, args: argparse.Namespace, out: Output) -> int:
    params: dict[str, Any] = {"key": args.key}
    if args.unset:
        if args.key is None or args.value is not None:
            raise EngineError(ErrorCode.API_MISUSE, "settings --unset needs a key and no value")
        params["value"] = ""
    elif args.value is not None:
        if args.key is None:
            raise EngineError(ErrorCode.API_MISUSE, "settings needs a key before the value")
        params["value"] = args.value
    r = await svc.call("settings", params)
    for key, value in sorted(r["settings"].items()):
        if isinstance(value, list | tuple):
            value = "; ".join(value)
        out.text(f"{key} = {'(unset)' if value is None else value}")
    out.emit(r)
    return ExitCode.OK


async def cmd_status(svc: Service, args: argparse.Namespace, out: Output) -> int:
    r = await svc.call("status", {})
    out.text(f"backend {r['backend']}  data {r['dataDir']}  daemon: {'yes' if r['running'] else 'no'}")
    out.text(f"logged in: {'yes' if r['loggedIn'] else 'no'}  global limit: "
             f"{r['globalLimitBps'] or 'off'}  schedule: {'; '.join(r['schedule']) or 'always'}"
             + ("  OFFLINE" if r["offline"] else ""))
    out.text(f"{len(r['tasks'])} task(s) in queue, {len(r['installed'])} game(s) installed")
    out.emit(r)
    return ExitCode.OK


async def cmd_installed(svc: Service, args: argparse.Namespace, out: Output) -> int:
    games = await svc.call("installed", {})
    for g in games:
        out.text(f"{g['productId']:20} {g['versionId']:10} {human_bytes(g['sizeBytes']):>10}  {g['path']}"
                 + ("  (dirty)" if g["dirty"] else ""))
    out.emit({"installed": games})
    return ExitCode.OK


async def cmd_uninstall(svc: Service, args: argparse.Namespace, out: Output) -> int:
    g = await svc.call("uninstall", {"productId": args.product})
    out.text(f"uninstalled {g['productId']} {g['versionId']}: {g['removedFiles']} file(s) removed "
             f"from {g['path']}")
    if g["leftInFolder"]:
        out.text(f"  kept the folder: it holds files the launcher did not install: "
                 f"{', '.join(g['leftInFolder'])}")
    out.emit({"result": "uninstalled", "game": g})
    return ExitCode.OK


async def cmd_check_updates(svc: Service, args: argparse.Namespace, out: Output) -> int:
    answers = await svc.call("checkUpdates", {})
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


async def cmd_update(svc: Service, args: argparse.Namespace, out: Output) -> int:
    if args.all:
        tasks = await svc.call("updateAll", {})
        if not tasks:
            out.text("everything is up to date")
            out.emit({"result": "up_to_date"})
            return ExitCode.OK
    elif args.product:
        tasks = [await svc.call("update", {
            "productId": args.product, "versionId": args.version,
            "limitBps": parse_rate(args.limit) if args.limit else None})]
    else:
        raise EngineError(ErrorCode.API_MISUSE, "update needs a product or --all")
    code: int = ExitCode.OK
    for task in tasks:
        out.text(f"task {task['taskId'][:8]}: updating {task['productId']} from {task['fromVersion']}")
        code = await _wait(svc, task, out) or code
    return code


async def cmd_rollback(svc: Service, args: argparse.Namespace, out: Output) -> int:
    task = await svc.call("rollback", {"productId": args.product})
    out.text(f"task {task['taskId'][:8]}: rolling {task['productId']} back to {task['versionId']}")
    return await _wait(svc, task, out)


async def cmd_verify(svc: Service, args: argparse.Namespace, out: Output) -> int:
    report = await svc.call("verify", {"productId": args.product, "quick": args.quick})
    _print_report(report, out)
    if report["ok"] or not args.repair:
        return ExitCode.OK if report["ok"] else ExitCode.INTEGRITY
    task = await svc.call("repair", {"productId": args.product})
    damaged = (set(report["missing"]) | set(report["wrongSize"]) | set(report["links"])
               | {d["path"] for d in report["damaged"]})
    out.text(f"task {task['taskId'][:8]}: repairing {len(damaged)} file(s)")
    code = await _wait(svc, task, out)
    if code != ExitCode.OK:
        return code
    after = await svc.call("verify", {"productId": args.product})  # done only when a check says so
    _print_report(after, out)
    return ExitCode.OK if after["ok"] else ExitCode.INTEGRITY


def _print_report(r: dict[str, Any], out: Output) -> None:
    out.emit({"verify": r})
    mbs = r["bytesChecked"] / 1e6 / max(r["seconds"], 1e-9)
    out.text(f"{r['productId']} {r['versionId']}: {'OK' if r['ok'] else 'DAMAGED'}"
             f" ({r['filesChecked']} files, {human_bytes(r['bytesChecked'])} checked,"
             f" {mbs:.0f} MB/s{', quick' if r['quick'] else ''})")
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


async def cmd_move(svc: Service, args: argparse.Namespace, out: Output) -> int:
    g = await svc.call("moveInstall", {"productId": args.product,
                                       "folder": str(Path(args.folder).absolute())})
    out.text(f"moved {g['productId']} to {g['path']}")
    out.emit({"result": "moved", "game": g})
    return ExitCode.OK


async def cmd_offline(svc: Service, args: argparse.Namespace, out: Output) -> int:
    r = await svc.call("offline", {"enabled": args.state == "on"})
    out.text(f"simulated offline: {'on' if r['offline'] else 'off'}")
    out.emit(r)
    return ExitCode.OK


async def cmd_events(svc: Service, args: argparse.Namespace, out: Output) -> int:
    raise EngineError(ErrorCode.API_MISUSE, "events needs a running daemon (launcher-engine serve)")


async def cmd_serve(svc: Service, args: argparse.Namespace, out: Output) -> int:
    raise AssertionError("serve is dispatched before a service exists")


def build_parser() -> argparse.ArgumentParser:
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

    common = argparse.ArgumentParser(add_help=False)
    common_options(common, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="launcher-engine", description=__doc__)
    common_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, parents=[common])
        p.set_defaults(func=func)
        return p

    p = add("login", cmd_login, "log in to the backend")
    p.add_argument("username")
    p.add_argument("--password")
    add("logout", cmd_logout, "forget the stored session")
    add("library", cmd_library, "list owned games")
    p = add("install", cmd_install, "install (or resume installing) a game")
    p.add_argument("product")
    p.add_argument("--version")
    p.add_argument("--target", help="install folder (default: <library>/<product>)")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--limit", help="per-task speed limit, e.g. 20M")
    p.add_argument("--no-wait", action="store_true", help="queue it and return")
    add("run", cmd_run, "process the queue until it is empty")
    p = add("queue", cmd_queue, "list or change the download queue")
    p.add_argument("action", choices=["list", "pause", "resume", "cancel", "move", "priority"])
    p.add_argument("task", nargs="?")
    p.add_argument("value", nargs="?")
    p.add_argument("--all", action="store_true", help="include finished tasks")
    p = add("limit", cmd_limit, "show or set the global (or a task's) speed limit")
    p.add_argument("rate", nargs="?", help="e.g. 20M, 512K, off")
    p.add_argument("--task")
    p = add("schedule", cmd_schedule, "show or set download time windows")
    p.add_argument("windows", nargs="*", help='e.g. "22:00-06:00" "sat,sun 00:00-24:00"')
    p.add_argument("--clear", action="store_true")
    p = add("settings", cmd_settings, "show settings, or set one (persisted in config.toml)")
    p.add_argument("key", nargs="?", help="e.g. connections")
    p.add_argument("value", nargs="?", help="new value; schedule windows separated by ';'")
    p.add_argument("--unset", action="store_true", help="back to the default (optional keys)")
    add("status", cmd_status, "engine status")
    add("installed", cmd_installed, "installed games with versions and sizes")
    p = add("uninstall", cmd_uninstall, "remove an installed game")
    p.add_argument("product")
    add("check-updates", cmd_check_updates, "ask the backend about updates for installed games")
    p = add("update", cmd_update, "update a game (to the latest or --version)")
    p.add_argument("product", nargs="?")
    p.add_argument("--version")
    p.add_argument("--all", action="store_true", help="update every game that has an update")
    p.add_argument("--limit", help="per-task speed limit, e.g. 20M")
    p = add("rollback", cmd_rollback, "return to the previously installed version")
    p.add_argument("product")
    p = add("verify", cmd_verify, "check installed files against the manifest")
    p.add_argument("product")
    p.add_argument("--repair", action="store_true", help="re-download only the damaged chunks")
    p.add_argument("--quick", action="store_true", help="presence and size only")
    p = add("move", cmd_move, "move an installed game to another folder")
    p.add_argument("product")
    p.add_argument("folder")
    p = add("offline", cmd_offline, "QA: simulate being offline (daemon)")
    p.add_argument("state", choices=["on", "off"])
    p = add("events", cmd_events, "tail the daemon's event stream")
    p.add_argument("--task", help="only this task's events")
    p = add("serve", cmd_serve, "run the engine as a daemon with the local control API")
    p.add_argument("--port", type=int, default=0)
    return parser


class LocalService:
    """In-process: the engine's loop runs only while a command waits for a task."""

    def __init__(self, settings: Settings) -> None:
        from engine.api.service import EngineService
        from engine.jobs.engine import Engine

        self.engine = Engine(settings)
        self.service = EngineService(self.engine)

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        return await self.service.call(method, {k: v for k, v in params.items() if v is not None})


async def _main(args: argparse.Namespace, out: Output) -> int:
    settings: Settings = load_settings({"backend_url": args.backend_url,
                                        "data_dir": args.data_dir})
    try:
        return await _run(args, out, settings)
    except Exception as exc:
        cause = _storage_cause(exc)
        if cause is None:
            raise
        log.debug("storage failure", exc_info=True)
        raise storage_error(cause, f"running {args.command}", settings.data_dir) from exc


def _storage_cause(exc: BaseException) -> sqlite3.Error | OSError | None:
    """The failed write of a file behind ``exc`` (looking inside exception groups), if any."""
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


async def _run(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    if args.command == "serve":
        from engine.api.daemon import Daemon

        await Daemon(settings, port=args.port).run()
        return ExitCode.OK
    from engine.api.daemon import daemon_running

    info = daemon_running(settings.data_dir)
    func: Command = args.func
    if info is not None:
        from engine.api.client import DaemonClient

        async with DaemonClient(info) as client:
            client.on_event = out.event
            if args.command == "events":
                await client.subscribe(args.task)
                await asyncio.Event().wait()  # until interrupted
            if args.command in ("install", "update", "rollback", "verify", "run"):
                await client.subscribe()
            return await func(client, args, out)
    try:
        local = LocalService(settings)
    except ValueError as exc:
        raise EngineError(ErrorCode.CONFIG_INVALID, str(exc)) from exc
    async with local.engine:
        local.engine.bus.on_event(out.event)
        return await func(local, args, out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Output(args.json)
    try:
        return asyncio.run(_main(args, out))
    except EngineError as exc:
        out.emit({"error": exc.to_dict(), "exitCode": int(exc.exit_code)})
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted; the next run resumes where this one stopped", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
