"""``launcher-engine serve``: one engine per data dir, many clients over a local WebSocket API.

Security: binds 127.0.0.1 only; a random token (``daemon.json``, mode 0600) must be presented
in the ``Authorization: Bearer`` header and nowhere else (a URL ends up in logs and histories,
so a request with ``token`` in its query string is refused even if the header is right); any
connection carrying a browser ``Origin`` header is refused, so a web page cannot drive the
engine; a lock file (``flock``, released by the kernel when the process dies, so a crashed
daemon leaves no stale lock) keeps one daemon per data dir. A malformed (bad JSON, nested too
deeply, NaN/Infinity, not an object), oversized or unknown message gets an error reply and the
connection stays usable; no message can end the connection or the daemon.
Protocol: docs/control-api.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import logging
import math
import os
import queue
import secrets
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from engine.api import wire
from engine.api.client import DaemonInfo, info_path, read_info
from engine.api.protocol import (
    PROTOCOL_VERSION,
    EngineError,
    ErrorCode,
    Event,
    event_to_wire,
    validate,
)
from engine.api.service import EngineService
from engine.io.bus import Subscription
from engine.io.config import Settings, atomic_write
from engine.io.rangeclient import worker_pool
from engine.jobs.engine import Engine
from engine.jobs.install import import_pipeline

log = logging.getLogger(__name__)

HARD_FRAME_LIMIT = 4 * 1024 * 1024  # beyond this websockets closes that one connection
# requests whose arrival is logged (at INFO, with the system-wide monotonic clock): a bench that
# spawned the client tells its start-up from this (bench/client.py), the engine's from the rest
STAMPED = frozenset({"install", "update", "rollback", "repair", "verify", "cli"})
CLIENT_EVENT_BACKLOG = 500
UPDATE_CHECK_INTERVAL_S = 6 * 3600


@contextlib.contextmanager
def daemon_lock(data_dir: Path) -> Iterator[TextIO]:
    data_dir.mkdir(parents=True, exist_ok=True)
    fh = (data_dir / wire.LOCK_FILE).open("a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        fh.close()
        info = read_info(data_dir)
        raise EngineError(ErrorCode.API_MISUSE, f"a daemon already runs for {data_dir}"
                          + (f" (pid {info.pid}, port {info.port})" if info else "")) from exc
    try:
        yield fh
    finally:
        info_path(data_dir).unlink(missing_ok=True)
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def write_info(data_dir: Path, info: DaemonInfo) -> None:
    body = json.dumps({"pid": info.pid, "port": info.port, "token": info.token,
                       "protocol": PROTOCOL_VERSION})
    atomic_write(info_path(data_dir), body.encode(), mode=0o600)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]!r} is out of range")
    return value


def parse_message(raw: str | bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no overflowing floats; ValueError when it is not."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc}") from exc


def internal_error(exc: BaseException) -> EngineError:
    """A bug's exception as the daemon reports it (it ends neither a connection nor a line)."""
    return EngineError(ErrorCode.INTERNAL_ERROR, repr(exc)[:500])


def _internal(exc: BaseException) -> dict[str, str | None]:
    return internal_error(exc).to_error()


def _reject(status: HTTPStatus, text: str) -> Response:
    body = json.dumps({"error": {"code": status.name, "message": text}}).encode()
    return Response(status.value, status.phrase,
                    Headers([("Content-Type", "application/json"),
                             ("Content-Length", str(len(body)))]), body)



def _event_message(event: Event) -> dict[str, Any]:
    """An event as the daemon sends it to a subscribed client."""
    return {"type": "event", "event": event_to_wire(event)}


def _settle(future: asyncio.Future[int | None], code: int | None,
            exc: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile: the daemon is stopping
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(code)


LOOP_THREADS = 4  # an install's concurrent calls to the loop's executor before its first byte


def start_threads(pool: ThreadPoolExecutor, count: int) -> None:
    """Start ``count`` threads of ``pool`` (at most its size) and leave them idle. A pool starts
    a thread for each call that finds none idle; here every call waits until all have begun,
    so none is idle before the last call."""
    count = min(count, pool._max_workers)
    gate = threading.Barrier(count)
    calls = [pool.submit(gate.wait, 10.0) for _ in range(count)]
    wait(calls)
    if any(call.exception() is not None for call in calls):  # a thread 10 s late: only slower
        log.warning("%s: a thread did not start within 10 s", pool._thread_name_prefix)


@dataclass(frozen=True, slots=True)
class CommandLine:
    """A ``cli`` request: a client's command line for the daemon to run (engine.cli.quick)."""

    argv: tuple[str, ...]
    cwd: str  # the client's folder: its relative paths
    home: str  # the client's home: its ``~``
    data_dir: str  # the folder whose lock led the client here
    env: tuple[str, ...]  # its LAUNCHER_ENGINE_* settings, NAME=value
    progress: bool  # its stdout is a terminal: draw the bar


class ClientGone(Exception):
    """The client of a command line went away: the line's run ends (its task does not)."""


class LineService:
    """What a command line run on one of the daemon's threads talks to: the blocking calls and
    events of the CLI's daemon client (``call``, ``subscribe``, ``on_event``), and ``write``
    for its output, which goes to the client as output messages.

    Events reach ``on_event`` on the line's thread while a call waits, as they would reach the
    CLI; one at a time (the next is taken from the subscription when the last was handled, so
    a slow client leaves them to the subscription's coalescing), and those published before a
    call's answer ahead of it (a ``wait``'s result follows the task's last events)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, engine: Engine, service: EngineService,
                 send: Callable[[dict[str, Any]], Coroutine[Any, Any, None]],
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]) -> None:
        self.loop = loop
        self.data_dir = engine.settings.data_dir
        self.on_event: Callable[[Event], None] | None = None
        self.gone = False
        self._bus = engine.bus
        self._service = service
        self._send = send
        self._spawn = spawn
        self._inbox: queue.SimpleQueue[tuple[str, Any, asyncio.Event | None]] = queue.SimpleQueue()
        self._subscription: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None
        self._waiting: asyncio.Task[Any] | None = None  # a ``wait``: cancelled when it is gone

    # -- the line's thread ----------------------------------------------------------------------
    def _on_loop(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self.gone:
            coro.close()
            raise ClientGone()
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result()
        except ConnectionClosed as exc:
            raise ClientGone() from exc

    def write(self, stream: str, text: str) -> None:
        self._on_loop(self._send({"type": "output", "stream": stream, "text": text}))

    def subscribe(self, task_id: str | None = None, *, reply: bool = True) -> None:
        self._on_loop(self._start_events(task_id))

    def call(self, method: str, params: dict[str, Any]) -> Any:
        if self.gone:
            raise ClientGone()
        if method in STAMPED:
            log.info("request %s arrived at monotonic %.6f", method, time.monotonic())
        clean = {k: v for k, v in params.items() if v is not None}
        asyncio.run_coroutine_threadsafe(self._answer(method, clean), self.loop)
        for kind, value in self._items():
            if kind == "event":
                if self.on_event is not None:
                    self.on_event(value)
            elif kind == "result":
                return value
            elif kind == "error":
                raise value
        raise ClientGone()

    def events(self) -> Iterator[Event]:
        """Events until the client goes (``subscribe`` first): ``launcher-engine events``."""
        for kind, value in self._items():
            if kind == "event":
                yield value
        raise ClientGone()

    def _items(self) -> Iterator[tuple[str, Any]]:
        """The inbox in order until the client is gone; the pump's next event is taken from
        the subscription once the caller has handled the last one."""
        while True:
            kind, value, taken = self._inbox.get()
            if kind == "gone":
                return
            try:
                yield kind, value
            finally:
                if taken is not None:
                    self.loop.call_soon_threadsafe(taken.set)

    # -- the loop ---------------------------------------------------------------------------------
    async def _answer(self, method: str, params: dict[str, Any]) -> None:
        if self.gone:  # closed since the line's thread looked: it has its "gone" already
            return
        if method == "wait":  # answered when the task ends: dropped when the client goes
            self._waiting = asyncio.current_task()
        try:
            item: tuple[str, Any, None] = ("result", await self._service.call(method, params), None)
        except EngineError as exc:
            item = ("error", exc, None)
        except Exception as exc:  # a bug: reported to the line as the daemon reports it
            log.exception("method %s failed", method)
            item = ("error", internal_error(exc), None)
        finally:
            self._waiting = None
        if method == "wait":
            # the task's last events before its result, as a connection sends them (its
            # ``send_after_events``); other answers go as they come, as there
            while self._subscription is not None and (event := self._subscription.pop_nowait()):
                self._inbox.put(("event", event, None))
        self._inbox.put(item)

    async def _start_events(self, task_id: str | None) -> None:
        if self.gone:  # closed since the line's thread looked: no subscription to leak
            raise ClientGone()
        if self._subscription is None:
            self._subscription = self._bus.subscribe(task_id, CLIENT_EVENT_BACKLOG)
            self._pump = self._spawn(self._events())

    async def _events(self) -> None:
        assert self._subscription is not None
        while True:
            event = await self._subscription.get()
            taken = asyncio.Event()
            self._inbox.put(("event", event, taken))
            await taken.wait()

    def close(self) -> None:
        """On the loop: the client is gone or the line ended; a ``wait`` call is dropped (the
        task goes on), the line's thread wakes up to end."""
        self.gone = True
        if self._pump is not None:
            self._pump.cancel()
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        if self._waiting is not None:
            self._waiting.cancel()
        self._inbox.put(("gone", None, None))


# a command line's runner: its exit code, or None when the client should run it itself
RunCommandLine = Callable[[CommandLine, LineService], "int | None"]


class Daemon:
    def __init__(self, settings: Settings, port: int = 0,
                 run_command_line: RunCommandLine | None = None) -> None:
        self.settings = settings
        self.port = port
        self.run_command_line = run_command_line  # the CLI's (engine.cli.main): cli requests
        self.token = secrets.token_urlsafe(32)
        self.engine: Engine | None = None
        self.service: EngineService | None = None
        self.clients: set[ServerConnection] = set()
        self._stop = asyncio.Event()

    # -- handshake ----------------------------------------------------------------------------
    def check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Origin") is not None:
            return _reject(HTTPStatus.FORBIDDEN, "browser origins may not drive the engine")
        if "token" in parse_qs(urlsplit(request.path).query, keep_blank_values=True):
            # never accepted: a URL is logged, kept in shell histories and proxies
            return _reject(HTTPStatus.UNAUTHORIZED, "the token belongs in the Authorization "
                           "header (Bearer), never in the URL")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return _reject(HTTPStatus.UNAUTHORIZED, "a valid token is required (see daemon.json)")
        presented = auth[len("Bearer "):].encode("utf-8", "surrogateescape")
        if not secrets.compare_digest(presented, self.token.encode()):
            return _reject(HTTPStatus.UNAUTHORIZED, "a valid token is required (see daemon.json)")
        return None

    # -- per connection -----------------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        assert self.engine is not None
        self.clients.add(ws)
        subscription: Subscription | None = None
        lines: set[LineService] = set()  # command lines running for this client
        long_calls: set[asyncio.Task[None]] = set()  # its ``wait`` requests
        sender: asyncio.Task[None] | None = None
        send_lock = asyncio.Lock()

        async def send(obj: dict[str, Any]) -> None:
            async with send_lock:
                await ws.send(json.dumps(obj, default=str))

        async def send_after_events(obj: dict[str, Any]) -> None:
            """A long call's answer (``wait``) goes after every event published before it:
            the pump may still hold some (its task runs later), and a client that ends on the
            answer (the CLI) would miss the task's last events. The pump pops and takes the
            lock with no await between, so what it popped is sent first."""
            async with send_lock:
                while subscription is not None and (event := subscription.pop_nowait()):
                    await ws.send(json.dumps(_event_message(event), default=str))
                await ws.send(json.dumps(obj, default=str))

        try:
            await send({"type": "hello", "protocol": PROTOCOL_VERSION, "pid": os.getpid()})
            async with asyncio.TaskGroup() as tg:
                async for raw in ws:
                    reply, sub_change = await self._answer(raw)
                    if sub_change is not None:
                        if sender is not None:
                            sender.cancel()
                            sender = None
                        if subscription is not None:
                            subscription.close()
                            subscription = None
                        if sub_change != "off":
                            subscription = self.engine.bus.subscribe(
                                None if sub_change == "*" else sub_change, CLIENT_EVENT_BACKLOG)
                            sender = tg.create_task(self._pump(subscription, send))
                    if reply.get("id") is not None and reply.get("wait"):
                        call = tg.create_task(self._long_call(reply, send_after_events))
                        long_calls.add(call)
                        call.add_done_callback(long_calls.discard)
                        continue
                    if reply.get("line") is not None:
                        assert self.service is not None
                        line = LineService(asyncio.get_running_loop(), self.engine,
                                           self.service, send, tg.create_task)
                        lines.add(line)
                        tg.create_task(self._command_line(reply, line, send, lines))
                        continue
                    await send(reply)
                # the client went away: its lines' threads end, its waits are dropped (the
                # tasks go on; an answer has nobody to go to, and a wait that never ends
                # would keep this handler, and so the daemon's shutdown, waiting)
                for line in list(lines):
                    line.close()
                for call in list(long_calls):
                    call.cancel()
                if sender is not None:
                    sender.cancel()
        except* ConnectionClosed:
            pass  # the client went away (a closed window, a killed CLI): its business
        finally:
            if subscription is not None:
                subscription.close()
            self.clients.discard(ws)

    async def _pump(self, sub: Subscription, send: Any) -> None:
        """Slow clients never slow the engine: the subscription coalesces, this task waits."""
        while True:
            event = await sub.get()
            await send(_event_message(event))

    async def _long_call(self, reply: dict[str, Any], send: Any) -> None:
        assert self.service is not None
        try:
            result = await self.service.call(reply["method"], reply["params"])
            await send({"id": reply["id"], "result": result})
        except EngineError as exc:
            await send({"id": reply["id"], "error": exc.to_error()})
        except ConnectionClosed:
            pass
        except Exception as exc:  # a bug must not end the connection (the TaskGroup would)
            log.exception("method %s failed", reply["method"])
            await send({"id": reply["id"], "error": _internal(exc)})

    async def _command_line(self, reply: dict[str, Any], line: LineService,
                            send: Callable[[dict[str, Any]], Coroutine[Any, Any, None]],
                            lines: set[LineService]) -> None:
        """Run a client's command line on a thread of its own (the CLI's commands block), for
        as long as it runs (an install's line waits for its task), and answer its exit code."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[int | None] = loop.create_future()
        runner = self.run_command_line

        def run() -> None:
            try:
                code = None if runner is None else runner(reply["line"], line)
            except ClientGone:
                code = None
            except BaseException as exc:  # handed to the loop, not swallowed
                if not isinstance(exc, Exception):  # a SystemExit must not stop the daemon
                    exc = RuntimeError(f"the command line raised {exc!r}")
                loop.call_soon_threadsafe(_settle, ended, None, exc)
                return
            loop.call_soon_threadsafe(_settle, ended, code, None)

        threading.Thread(target=run, name="command-line", daemon=True).start()
        try:
            code = await ended
        except Exception as exc:  # a bug below the CLI's own reporting: said, not swallowed
            log.exception("command line %s failed", reply["line"].argv)
            error = internal_error(exc)
            with contextlib.suppress(ConnectionClosed):
                await send({"type": "output", "stream": "stderr",
                            "text": f"error: {error.code}: {error.message}\n"})
            code = int(error.exit_code)
        finally:
            line.close()
            lines.discard(line)
        result = {"declined": True} if code is None else {"exitCode": code}
        with contextlib.suppress(ConnectionClosed):
            await send({"id": reply["id"], "result": result})

    async def _answer(self, raw: str | bytes) -> tuple[dict[str, Any], str | None]:
        """Parse, validate and run one request. Returns (reply, subscription change)."""
        try:
            return await self._answer_checked(raw)
        except Exception as exc:  # whatever the message, the connection goes on
            log.exception("request failed")
            return {"id": None, "error": _internal(exc)}, None

    async def _answer_checked(self, raw: str | bytes) -> tuple[dict[str, Any], str | None]:
        assert self.service is not None
        if len(raw) > wire.MAX_REQUEST_BYTES:
            too_large = EngineError(ErrorCode.MESSAGE_TOO_LARGE,
                                    f"{len(raw)} bytes; limit {wire.MAX_REQUEST_BYTES}")
            return {"id": None, "error": too_large.to_error()}, None
        try:
            msg = parse_message(raw)
        except ValueError as exc:
            return {"id": None, "error": EngineError(ErrorCode.PARSE_ERROR, str(exc)[:200]).to_error()}, None
        req_id = msg.get("id") if isinstance(msg, dict) else None
        if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, int | str)):
            return {"id": None, "error": EngineError(ErrorCode.INVALID_REQUEST, "bad id").to_error()}, None
        if not isinstance(msg, dict) or not isinstance(msg.get("method"), str):
            return {"id": req_id, "error": EngineError(
                ErrorCode.INVALID_REQUEST, 'expected {"id", "method", "params"}').to_error()}, None
        method, params = msg["method"], msg.get("params") or {}
        if method in STAMPED:
            log.info("request %s arrived at monotonic %.6f", method, time.monotonic())
        if method in ("subscribe", "unsubscribe"):  # the connection's business, not the engine's
            try:
                checked = validate(method, params)
            except EngineError as exc:
                return {"id": req_id, "error": exc.to_error()}, None
            target = "off" if method == "unsubscribe" else checked.get("taskId", "*")
            return {"id": req_id, "result": {"subscribed": None if target == "off" else target}}, target
        if method == "cli":  # runs on a thread of its own while the connection goes on
            try:
                checked = validate(method, params)
            except EngineError as exc:
                return {"id": req_id, "error": exc.to_error()}, None
            if checked["protocol"] != PROTOCOL_VERSION:  # sent before it saw the greeting
                return {"id": req_id, "result": {"declined": True}}, None
            return {"id": req_id, "line": CommandLine(
                tuple(checked["argv"]), checked["cwd"], checked["home"], checked["dataDir"],
                tuple(checked.get("env", ())), bool(checked.get("progress")))}, None
        if method == "wait":  # long-running: answered when the task ends, others go on meanwhile
            return {"id": req_id, "method": method, "params": params, "wait": True}, None
        try:
            result = await self.service.call(method, params)
        except EngineError as exc:
            return {"id": req_id, "error": exc.to_error()}, None
        except Exception as exc:  # a bug must not kill the daemon or another client's session
            log.exception("method %s failed", method)
            return {"id": req_id, "error": _internal(exc)}, None
        return {"id": req_id, "result": result}, None

    # -- lifecycle ----------------------------------------------------------------------------
    async def _periodic_update_check(self) -> None:
        assert self.engine is not None
        while True:
            try:
                if self.engine.api.logged_in and not self.engine.offline:
                    self.engine.auto_update(await self.engine.check_updates())
            except EngineError as exc:
                log.warning("update check failed: %s", exc)
            await asyncio.sleep(UPDATE_CHECK_INTERVAL_S)

    def stop(self) -> None:
        self._stop.set()

    async def run(self, ready: Any = None) -> None:
        loop = asyncio.get_running_loop()
        loop_executor = ThreadPoolExecutor(thread_name_prefix="asyncio")  # asyncio's default
        loop.set_default_executor(loop_executor)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        with daemon_lock(self.settings.data_dir):
            async with Engine(self.settings) as engine:
                self.engine = engine
                self.service = EngineService(engine)
                # what the first install and the library channel need, imported before the
                # daemon says it listens (once, ~0.1-0.2 s of its start) rather than inside a
                # client's first command: the install's pipeline (ed25519, the manifest's
                # decoder, the planner, the block I/O) and aiohttp (the channel's WebSocket,
                # which otherwise loaded on the loop while the first command waited)
                await import_pipeline()
                # threads started now rather than one by one inside the first install, each
                # start blocking the loop until the thread runs (~1-5 ms here): the loop's
                # executor (the manifest's decode and cache, staging, the journal's syncs) and
                # the range threads of one task's connections
                start_threads(loop_executor, LOOP_THREADS)
                start_threads(worker_pool(), self.settings.connections)
                if engine.api.logged_in:
                    import aiohttp  # noqa: F401
                server: Server = await serve(
                    self.handle, "127.0.0.1", self.port, process_request=self.check_request,
                    max_size=HARD_FRAME_LIMIT, compression=None)
                async with server:
                    # start-up's objects out of every later collection (a daemon lives long:
                    # whatever start-up left in cycles is collected first); the CLI kept the
                    # collector off until here
                    gc.collect()
                    gc.freeze()
                    gc.enable()
                    port = next(iter(server.sockets)).getsockname()[1]
                    write_info(self.settings.data_dir, DaemonInfo(os.getpid(), port, self.token))
                    print(f"listening on ws://127.0.0.1:{port}/", flush=True)
                    if ready is not None:
                        ready(port)
                    engine_loop = asyncio.create_task(engine.run(until=self._stop.is_set))
                    checker = asyncio.create_task(self._periodic_update_check())
                    agent = [asyncio.create_task(engine.outbox.run(), name="outbox"),
                             asyncio.create_task(engine.relay.run(), name="library-relay")]
                    try:
                        await self._stop.wait()
                        engine.wake()
                        await engine_loop  # runs stop cleanly: journals flushed, tasks re-queued
                    finally:
                        checker.cancel()
                        for job in agent:
                            job.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await job
                        engine_loop.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await engine_loop
                        for ws in list(self.clients):
                            await ws.close(1001, "daemon shutting down")
        print("daemon stopped", flush=True)
