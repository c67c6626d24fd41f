"""``launcher-engine``: the engine headless, for QA and scripts.

Human output shows a live progress bar; ``--json`` prints one JSON object per line (events,
then a final result). Exit codes are distinct per failure class (``engine.errors.ExitCode``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from engine.config import Settings, load_settings, save_setting
from engine.engine import Engine
from engine.errors import EngineError, ExitCode
from engine.events import STATUS, Event
from engine.queueorder import TaskState

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
        raise EngineError("CONFIG_INVALID", f"not a rate: {text!r} (try 20M or off)") from exc
    if value <= 0:
        raise EngineError("CONFIG_INVALID", f"rate must be positive: {text!r}")
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
# Commands (each an async function over an Engine)

Command = Callable[[Engine, argparse.Namespace, Output], Awaitable[int]]


async def cmd_login(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    password = args.password or os.environ.get("LAUNCHER_ENGINE_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise EngineError("CONFIG_INVALID", "no password: use --password or "
                              "LAUNCHER_ENGINE_PASSWORD when stdin is not a terminal")
        password = getpass.getpass(f"password for {args.username}: ")
    await engine.api.login(args.username, password)
    save_setting(engine.settings, "username", args.username)
    where = "OS keyring" if engine.credentials.use_keyring else f"{engine.credentials.file} (0600)"
    out.text(f"logged in as {args.username} at {engine.settings.backend_url}; token in {where}")
    out.emit({"result": "logged_in", "username": args.username, "tokenStore": where})
    return ExitCode.OK


async def cmd_logout(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    await engine.api.logout()
    out.text("logged out")
    out.emit({"result": "logged_out"})
    return ExitCode.OK


async def cmd_library(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    items = await engine.api.library()
    installed = {g.product_id: g for g in engine.installed()}
    for item in items:
        a = item.get("attributes", {})
        pid = a.get("product_id", "?")
        g = installed.get(pid)
        state = f"installed {g.version_id}" if g else "not installed"
        out.text(f"{pid:20} {a.get('title', ''):28} latest {a.get('latest_version_id', '?'):10}"
                 f" {human_bytes(a.get('install_size_bytes') or 0):>10}  {state}")
        out.emit({"libraryItem": a, "installed": g.to_dict() if g else None})
    return ExitCode.OK


async def cmd_install(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    task = engine.install(args.product, args.version, args.target, args.priority,
                          parse_rate(args.limit) if args.limit else None)
    out.text(f"task {task.id[:8]}: installing {task.product_id} into {task.target_path}")
    if args.no_wait:
        out.emit({"result": "queued", "task": task.to_dict()})
        return ExitCode.OK
    final = await engine.wait_for(task.id)
    return _task_result(final, out)


async def cmd_run(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    """Process the whole queue until nothing runnable is left."""
    def idle() -> bool:
        live = [t for t in engine.tasks() if not (t.status is TaskState.PAUSED and t.user_paused)]
        return not live

    await engine.run(until=idle)
    tasks = engine.tasks(include_finished=True)
    out.emit({"result": "queue_done", "tasks": [t.to_dict() for t in tasks]})
    failed = [t for t in tasks if t.status is TaskState.ERROR]
    return EngineError(failed[0].error_code or "FAILED", "").exit_code if failed else ExitCode.OK


def _task_result(task: Any, out: Output) -> int:
    out.emit({"result": task.status.value, "task": task.to_dict()})
    if task.status is TaskState.COMPLETED:
        out.text(f"task {task.id[:8]}: {task.product_id} {task.version_id} installed in "
                 f"{task.target_path}")
        return ExitCode.OK
    if task.status is TaskState.ERROR:
        err = EngineError(task.error_code or "FAILED", task.error_message or "")
        out.text(f"task {task.id[:8]} failed: {err.code}: {err.message}")
        return err.exit_code
    out.text(f"task {task.id[:8]}: {task.status.value}")
    return ExitCode.INTERRUPTED


async def cmd_queue(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    action = args.action
    if action == "list":
        tasks = engine.tasks(include_finished=args.all)
        for t in tasks:
            out.text(f"{t.id[:8]}  {t.position:3}  p{t.priority}  {t.status.value:11} "
                     f"{t.product_id:20} {human_bytes(t.downloaded_bytes)}/"
                     f"{human_bytes(t.download_bytes)}"
                     + (f"  {t.error_code}" if t.error_code else ""))
        out.emit({"tasks": [t.to_dict() for t in tasks]})
        return ExitCode.OK
    if args.task is None:
        raise EngineError("API_MISUSE", f"queue {action} needs a task id")
    if action == "pause":
        result = [engine.pause(args.task)]
    elif action == "resume":
        result = [engine.resume(args.task)]
    elif action == "cancel":
        result = [engine.cancel(args.task)]
    elif action == "move":
        if args.value is None:
            raise EngineError("API_MISUSE", "queue move needs a position")
        result = engine.move(args.task, int(args.value))
    elif action == "priority":
        if args.value is None:
            raise EngineError("API_MISUSE", "queue priority needs a number")
        result = [engine.set_priority(args.task, int(args.value))]
    else:  # argparse restricts choices
        raise EngineError("API_MISUSE", f"unknown queue action {action}")
    for t in result:
        out.text(f"{t.id[:8]}  {t.status.value}  position {t.position}  priority {t.priority}")
    out.emit({"tasks": [t.to_dict() for t in result]})
    return ExitCode.OK


async def cmd_limit(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    rate = parse_rate(args.rate) if args.rate is not None else None
    if args.task:
        t = engine.set_task_limit(args.task, rate)
        out.text(f"task {t.id[:8]} limit: {human_bytes(rate) + '/s' if rate else 'off'}")
        out.emit({"task": t.to_dict()})
    elif args.rate is None:
        current = engine.settings.global_limit_bps
        out.text(f"global limit: {human_bytes(current) + '/s' if current else 'off'}")
        out.emit({"globalLimitBps": current})
    else:
        save_setting(engine.settings, "global_limit_bps", rate or "")
        engine.set_global_limit(rate)
        out.text(f"global limit: {human_bytes(rate) + '/s' if rate else 'off'}")
        out.emit({"globalLimitBps": rate})
    return ExitCode.OK


async def cmd_schedule(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    if args.clear:
        windows: tuple[str, ...] = ()
    elif args.windows:
        windows = tuple(args.windows)
    else:
        windows = engine.settings.schedule
        out.text("download schedule: " + ("; ".join(windows) if windows else "always"))
        out.emit({"schedule": list(windows)})
        return ExitCode.OK
    engine.set_schedule(windows)  # validates before saving
    save_setting(engine.settings, "schedule", list(windows))
    out.text("download schedule: " + ("; ".join(windows) if windows else "always"))
    out.emit({"schedule": list(windows)})
    return ExitCode.OK


async def cmd_status(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    tasks = engine.tasks()
    installed = engine.installed()
    out.text(f"backend {engine.settings.backend_url}  data {engine.settings.data_dir}")
    out.text(f"logged in: {'yes' if engine.api.logged_in else 'no'}  "
             f"global limit: {engine.settings.global_limit_bps or 'off'}  "
             f"schedule: {'; '.join(engine.settings.schedule) or 'always'}")
    out.text(f"{len(tasks)} task(s) in queue, {len(installed)} game(s) installed")
    out.emit({"backend": engine.settings.backend_url, "dataDir": str(engine.settings.data_dir),
              "loggedIn": engine.api.logged_in, "tasks": [t.to_dict() for t in tasks],
              "installed": [g.to_dict() for g in installed]})
    return ExitCode.OK


async def cmd_installed(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    games = engine.installed()
    for g in games:
        out.text(f"{g.product_id:20} {g.version_id:10} {human_bytes(g.size):>10}  {g.path}"
                 + ("  (dirty)" if g.dirty else ""))
    out.emit({"installed": [g.to_dict() for g in games]})
    return ExitCode.OK


async def cmd_uninstall(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    game = await engine.uninstall(args.product)
    out.text(f"uninstalled {game.product_id} {game.version_id} from {game.path}")
    out.emit({"result": "uninstalled", "game": game.to_dict()})
    return ExitCode.OK


async def cmd_check_updates(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    answers = await engine.check_updates()
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


async def cmd_update(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    if args.all:
        answers = await engine.check_updates()
        products = [a["productId"] for a in answers if a.get("isUpdateAvailable")]
        if not products:
            out.text("everything is up to date")
            out.emit({"result": "up_to_date"})
            return ExitCode.OK
        tasks = [engine.update(p) for p in products]
    elif args.product:
        tasks = [engine.update(args.product, args.version,
                               limit_bps=parse_rate(args.limit) if args.limit else None)]
    else:
        raise EngineError("API_MISUSE", "update needs a product or --all")
    code: int = ExitCode.OK
    for task in tasks:
        out.text(f"task {task.id[:8]}: updating {task.product_id} from {task.from_version}")
        final = await engine.wait_for(task.id)
        code = _task_result(final, out) or code
    return code


async def cmd_rollback(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    task = engine.rollback(args.product)
    out.text(f"task {task.id[:8]}: rolling {task.product_id} back to {task.version_id}")
    return _task_result(await engine.wait_for(task.id), out)


async def cmd_verify(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    report = await engine.verify(args.product, quick=args.quick)
    _print_report(report, out)
    if report.ok or not args.repair:
        return ExitCode.OK if report.ok else ExitCode.INTEGRITY
    task = engine.repair(args.product)
    out.text(f"task {task.id[:8]}: repairing {len(report.damaged_paths())} file(s)")
    final = await engine.wait_for(task.id)
    code = _task_result(final, out)
    if code != ExitCode.OK:
        return code
    after = await engine.verify(args.product)  # a repair is done only when a full check says so
    _print_report(after, out)
    return ExitCode.OK if after.ok else ExitCode.INTEGRITY


def _print_report(report: Any, out: Output) -> None:
    out.emit({"verify": report.to_dict()})
    mbs = report.bytes_checked / 1e6 / max(report.seconds, 1e-9)
    out.text(f"{report.product_id} {report.version_id}: {'OK' if report.ok else 'DAMAGED'}"
             f" ({report.files_checked} files, {human_bytes(report.bytes_checked)} checked,"
             f" {mbs:.0f} MB/s{', quick' if report.quick else ''})")
    for p in report.missing:
        out.text(f"  missing     {p}")
    for p in report.wrong_size:
        out.text(f"  wrong size  {p}")
    for d in report.damaged:
        out.text(f"  damaged     {d.path} bytes {d.offset}-{d.offset + d.size - 1}")
    for p in report.extra:
        out.text(f"  extra       {p}")


async def cmd_move(engine: Engine, args: argparse.Namespace, out: Output) -> int:
    game = await engine.move_install(args.product, args.folder)
    out.text(f"moved {game.product_id} to {game.path}")
    out.emit({"result": "moved", "game": game.to_dict()})
    return ExitCode.OK


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
    return parser


async def _main(args: argparse.Namespace, out: Output) -> int:
    settings: Settings = load_settings({"backend_url": args.backend_url,
                                        "data_dir": args.data_dir})
    try:
        engine = Engine(settings)
    except ValueError as exc:
        raise EngineError("CONFIG_INVALID", str(exc)) from exc
    async with engine:
        engine.bus.on_event(out.event)
        func: Command = args.func
        return await func(engine, args, out)


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
