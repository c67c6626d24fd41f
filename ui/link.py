"""The launcher's one connection to the engine: a QObject over the daemon's light client.

Widgets never talk to the engine themselves: they call ``EngineLink`` slots and react to its
signals. The link finds the daemon of the data dir, starts one when none runs (a detached
``launcher-engine serve``, so downloads go on when the window closes), subscribes to every
event and reconnects — restarting the daemon if it has to — when the connection drops. All of
it runs on the asyncio loop that qasync drives from Qt's event loop: the UI thread never blocks
on the network or the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from engine.api.client import DaemonClient, DaemonInfo, daemon_running
from engine.api.protocol import EngineError, ErrorCode
from launcher.frozen import engine_command  # a frozen bundle runs the engine as `launcher engine`

DAEMON_START_TIMEOUT_S = 20.0
RECONNECT_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0)


class EngineLink(QObject):
    """Signals carry plain data (dicts from the protocol, typed events)."""

    connected = Signal(dict)  # the engine's status
    disconnected = Signal(str)  # why
    eventReceived = Signal(object)  # an engine.api.protocol Event
    failed = Signal(str, str, str)  # what was asked, error code, message for people

    def __init__(self, data_dir: Path, backend_url: str | None, *, start_daemon: bool = True,
                 loop: asyncio.AbstractEventLoop | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.loop = loop or asyncio.get_event_loop()  # the qasync loop on Qt's event loop
        self.data_dir = data_dir
        self.backend_url = backend_url
        self.start_daemon = start_daemon
        self.client: DaemonClient | None = None
        self.status: dict[str, Any] = {}
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._pending: set[asyncio.Task[Any]] = set()

    # -- connection ---------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (and keep reconnecting) in the background."""
        if self._runner is None:
            self._runner = self.loop.create_task(self._keep_connected())

    async def close(self) -> None:
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self.client is not None:
            await self.client.__aexit__(None, None, None)
            self.client = None

    @property
    def is_connected(self) -> bool:
        return self.client is not None

    async def _find_or_start_daemon(self) -> DaemonInfo:
        info = daemon_running(self.data_dir)
        if info is not None or not self.start_daemon:
            if info is None:
                raise EngineError(ErrorCode.DAEMON_UNREACHABLE, "no engine daemon runs")
            return info
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "daemon.log").open("ab")
        # detached: the daemon outlives the window (downloads go on in the tray or without it)
        backend = ["--backend", self.backend_url] if self.backend_url else []
        subprocess.Popen([*engine_command(), "--data", str(self.data_dir),
                          *backend, "serve"], stdout=subprocess.DEVNULL,
                         stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while time.monotonic() < deadline:
            info = daemon_running(self.data_dir)
            if info is not None:
                return info
            await asyncio.sleep(0.05)
        raise EngineError(ErrorCode.DAEMON_UNREACHABLE,
                          f"the engine did not start; see {self.data_dir / 'daemon.log'}")

    async def _keep_connected(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                info = await self._find_or_start_daemon()
                client = DaemonClient(info)
                await client.__aenter__()
            except (EngineError, OSError) as exc:
                delay = RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)]
                attempt += 1
                self.disconnected.emit(str(exc))
                await asyncio.sleep(delay)
                continue
            attempt = 0
            client.on_event = self.eventReceived.emit
            self.client = client
            try:
                await client.subscribe()
                self.status = await client.call("status")
                self.connected.emit(self.status)
                await client.wait_closed()
            except EngineError as exc:
                self.disconnected.emit(exc.message)
            finally:
                self.client = None
                with contextlib.suppress(Exception):
                    await client.__aexit__(None, None, None)
            if not self._closing:
                self.disconnected.emit("the engine stopped; reconnecting")

    # -- requests -----------------------------------------------------------------------------
    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One request; raises EngineError (DAEMON_UNREACHABLE when not connected)."""
        if self.client is None:
            raise EngineError(ErrorCode.DAEMON_UNREACHABLE, "not connected to the engine")
        return await self.client.call(method, params or {})

    def request(self, method: str, params: dict[str, Any] | None = None,
                done: Callable[[Any], None] | None = None) -> None:
        """Fire a request from a slot; the answer goes to ``done``, an error to ``failed``."""

        async def run() -> None:
            try:
                result = await self.call(method, params)
            except EngineError as exc:
                self.failed.emit(method, exc.code.value, exc.message)
                return
            if done is not None:
                done(result)

        self.spawn(run())

    def spawn(self, coro: Awaitable[Any]) -> None:
        if self.loop.is_closed():  # the application is ending: nothing more to ask
            coro.close()  # type: ignore[attr-defined]
            return
        task: asyncio.Task[Any] = self.loop.create_task(coro)  # type: ignore[arg-type]
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
