"""Remote downloads: two engines of one player (two data folders) against the real backend on
loopback and its CDN. A task queued from engine B on the backend (its client's REST) starts on
engine A (A's daemon running), B watches its progress live on ``/ws/download/progress``, a
pause and a resume made by B are followed by A, a cancel by B removes A's partial download, the
queue order agrees both ways, a task queued while A was away is picked up when A connects, and
a task A cannot take is reported failed with its code."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from engine.api.client import DaemonClient, read_info
from engine.core.errors import EngineError, ErrorCode
from engine.io.backend_client import BackendClient
from engine.io.config import load_settings
from engine.io.credentials import CredentialStore
from engine.jobs.engine import Engine
from testing.daemon import DaemonProcess
from testing.enginekit import EngineCli, assert_same_tree
from testing.faultproxy import Fault, FaultProxy
from tests.e2e.conftest import build_dir

MAIN, OTHER = "star-courier", "tiny-tactics"
LIMIT_BPS = "300000"  # A downloads slowly enough to be watched, paused and cancelled midway


@pytest.fixture
def player(backend: Any, tmp_path: Path) -> tuple[str, EngineCli, EngineCli]:
    name, _ = backend.new_user(products=[MAIN, OTHER])
    a = EngineCli(tmp_path / "a", backend.url)
    b = EngineCli(tmp_path / "b", backend.url)
    a.login(name, "secret-pw")
    b.login(name, "secret-pw")
    return name, a, b


@pytest.fixture
def daemon_a(player: Any, backend: Any) -> Iterator[DaemonProcess]:
    _, a, _ = player
    d = DaemonProcess(a.data_dir, backend.url,
                      env={"LAUNCHER_ENGINE_GLOBAL_LIMIT_BPS": LIMIT_BPS})
    yield d
    if d.alive:
        d.stop()


@contextlib.asynccontextmanager
async def client_of(cli: EngineCli) -> AsyncIterator[BackendClient]:
    """Engine B's own backend client, with B's stored login (what its CLI would use)."""
    store = CredentialStore(cli.data_dir, cli.backend_url, False)
    api = BackendClient(cli.backend_url, refresh_token=store.load(), save_refresh_token=store.save)
    try:
        yield api
    finally:
        await api.aclose()


async def until(cond: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.1)


class Watch:
    """B's view of one task on the backend's progress channel (messages kept in order)."""

    def __init__(self, url: str, token: str, task_id: str) -> None:
        self.url = url.replace("http", "ws", 1) + f"/ws/download/progress?taskId={task_id}"
        self.token = token
        self.messages: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watch:
        ws = await connect(self.url, additional_headers={"Authorization": f"Bearer {self.token}"})

        async def read() -> None:
            async with ws:
                async for raw in ws:
                    self.messages.append(json.loads(raw))

        self._reader = asyncio.create_task(read())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader

    def updates(self) -> list[dict[str, Any]]:
        return [m["payload"] for m in self.messages if m["type"] == "downloadTaskStatusUpdate"]

    def last_status(self) -> str | None:
        ups = self.updates()
        return ups[-1]["taskStatus"] if ups else None


async def local_task(a_daemon: DaemonProcess, backend_task_id: str) -> dict[str, Any] | None:
    info = read_info(a_daemon.data_dir)
    assert info is not None
    async with DaemonClient(info) as c:
        tasks = await c.call("tasks", {"all": True})
    return next((t for t in tasks if t["backendTaskId"] == backend_task_id), None)


async def test_a_task_queued_from_b_runs_on_a_and_b_watches_it(
        player: Any, daemon_a: DaemonProcess, backend: Any, published_store: Any) -> None:
    name, a, b = player
    version = published_store.product(MAIN).versions[-1]
    async with client_of(b) as api_b:
        # queued while A is not running: picked up when A connects
        created = await api_b.create_remote_task(MAIN, version)
        tid = created["id"]
        assert created["attributes"]["origin"] == "remote"
        assert created["attributes"]["deviceId"] is None
        # and one for a game the player then loses: A cannot take it and says why
        lost = (await api_b.create_remote_task(OTHER))["id"]
        _revoke(backend, name, OTHER)
        daemon_a.start()
        token = backend.login(name)
        async with Watch(backend.url, token, tid) as watch:
            # A took it (claimed with its device id) and runs it as a local task bound to it
            mine = await until(lambda: local_task(daemon_a, tid), "A queued the remote task")
            assert mine["productId"] == MAIN and mine["kind"] == "install"
            task = await api_b.get_task(tid)
            assert task["attributes"]["deviceId"]  # A's
            # B sees the bytes move, live: two downloading reports with growing byte counts
            # before the download is done
            def moving() -> bool:
                seen = [u["downloadedBytes"] for u in watch.updates()
                        if u["taskStatus"] == "downloading" and u["downloadedBytes"] > 0]
                return len(seen) >= 2 and seen[-1] > seen[0] \
                    and seen[-1] < watch.updates()[-1]["totalSizeBytes"]
            await until(moving, "B saw A's progress move")
            # ... and file by file (the seed's downloadItemProgressUpdate, itemIds as in
            # ?include=items)
            items = {i["id"] for i in (await api_b.call(
                "GET", f"/api/v1/download/tasks/{tid}", params={"include": "items"}))["included"]}
            files = await until(lambda: [m["payload"] for m in watch.messages
                                         if m["type"] == "downloadItemProgressUpdate"],
                                "B saw per-file progress")
            assert {f["itemId"] for f in files} <= items
            assert all(f["taskId"] == tid and f["downloadedBytes"] >= 0 for f in files)

            # B pauses on the backend: A's local task pauses (a player's pause)
            await api_b.pause_task(tid)
            paused = await until(lambda: _status_is(daemon_a, tid, "paused"), "A paused")
            assert paused["userPaused"] is True
            await until(lambda: watch.last_status() == "paused", "B saw the pause")
            assert (await api_b.get_task(tid))["attributes"]["status"] == "paused"
            await _unthrottle(daemon_a)  # what is left is not watched midway: at full speed

            # B resumes: A goes on and finishes; B sees it completed
            await api_b.resume_task(tid)
            await until(lambda: watch.last_status() == "completed", "B saw completed", 120)
        done = await api_b.get_task(tid)
        assert done["attributes"]["status"] == "completed"
        assert done["attributes"]["downloadedBytes"] > 0
        mine = await local_task(daemon_a, tid)
        assert mine is not None and mine["status"] == "completed"
        installed = Path(a.data_dir) / "library" / MAIN  # A's own library, not B's folder
        assert_same_tree(installed, build_dir(published_store, version))
        # one backend task for the whole run: A made none of its own for it
        tasks = [t for t in await _all_tasks(api_b) if t["attributes"]["productId"] == MAIN]
        assert [t["id"] for t in tasks] == [tid]

        gone = await api_b.get_task(lost)
        assert (gone["attributes"]["status"], gone["attributes"]["errorCode"]) == (
            "error", "PERMISSION_DENIED")

        # a verify on A is reported to the backend (seed 3.1.3: POST /integrity/verify)
        info = read_info(daemon_a.data_dir)
        assert info is not None
        async with DaemonClient(info) as c:
            report = await c.call("verify", {"productId": MAIN})
        assert report["ok"] is True
        await until(lambda: _verifications(backend, name) == [(MAIN, version)],
                    "the backend recorded A's verify")

        # the installed game at another version: A updates its install (one backend task)
        older = published_store.product(MAIN).versions[0]
        assert older != version
        switched = (await api_b.create_remote_task(MAIN, older))["id"]

        async def ended() -> dict[str, Any] | None:
            t = await api_b.get_task(switched)
            return t if t["attributes"]["status"] in ("completed", "error") else None
        t = await until(ended, "A updated its install to the remote task's version", 120)
        assert t["attributes"]["status"] == "completed", t["attributes"]
        mine = await local_task(daemon_a, switched)
        assert mine is not None and mine["kind"] == "update" and mine["status"] == "completed"
        assert_same_tree(installed, build_dir(published_store, older))
        tasks = [t for t in await _all_tasks(api_b) if t["attributes"]["productId"] == MAIN]
        assert sorted(t["id"] for t in tasks) == sorted([tid, switched])
    assert not (Path(b.data_dir) / "library").exists()  # B (no daemon) ran nothing itself


async def _unthrottle(daemon: DaemonProcess) -> None:
    info = read_info(daemon.data_dir)
    assert info is not None
    async with DaemonClient(info) as c:
        r = await c.call("limit", {"set": True, "bps": None})
    assert not r["globalLimitBps"], r


async def _status_is(daemon: DaemonProcess, tid: str, status: str) -> dict[str, Any] | None:
    t = await local_task(daemon, tid)
    return t if t is not None and t["status"] == status else None


def _revoke(backend: Any, name: str, product: str) -> None:
    from sqlalchemy import delete, select

    from backend.db import LibraryItem, User

    with backend._database().session() as s:
        uid = s.scalar(select(User.id).where(User.username == name))
        s.execute(delete(LibraryItem).where(LibraryItem.user_id == uid,
                                            LibraryItem.product_id == product))


def _verifications(backend: Any, name: str) -> list[tuple[str, str]]:
    from sqlalchemy import select

    from backend.db import User, VerificationTask

    with backend._database().session() as s:
        uid = s.scalar(select(User.id).where(User.username == name))
        return [(v.product_id, v.version_id) for v in s.scalars(
            select(VerificationTask).where(VerificationTask.user_id == uid))]


async def _all_tasks(api: BackendClient) -> list[dict[str, Any]]:
    doc = await api.call("GET", "/api/v1/download/tasks", params={"limit": 100})
    return list(doc["data"])


async def test_the_queue_order_agrees_both_ways_and_a_cancel_from_b_stops_a(
        player: Any, daemon_a: DaemonProcess) -> None:
    """B reorders the backend's queue: A's local queue follows; A moves a task locally: the
    backend's queue follows (the running download is not interrupted by either). B cancels the
    running download: A stops it and removes its partial files."""
    _, a, b = player
    daemon_a.start()
    info = read_info(daemon_a.data_dir)
    assert info is not None
    async with DaemonClient(info) as c:
        device_a = (await c.call("status", {}))["deviceId"]
        # a remote download for this very device is a misuse: install is the way
        with pytest.raises(EngineError) as misuse:
            await c.call("remoteInstall", {"productId": OTHER, "deviceId": device_a})
        assert misuse.value.code == ErrorCode.API_MISUSE
    async with client_of(b) as api_b:
        first = (await api_b.create_remote_task(MAIN))["id"]  # the seed's REST, any device
        # B's CLI, naming A's device
        second = b.ok("remote", "install", OTHER, "--device", device_a)[-1]["task"]["taskId"]
        listed = b.ok("remote", "list")[-1]["tasks"]
        assert [(t["taskId"], t["productId"]) for t in listed] == [(first, MAIN),
                                                                   (second, OTHER)]
        assert listed[1]["targetDeviceId"] == device_a

        async def local_order() -> list[str]:
            async with DaemonClient(info) as c:
                live = await c.call("tasks", {})
            return [t["backendTaskId"] for t in live]

        async def both_queued() -> bool:
            return sorted(await local_order()) == sorted([first, second])
        await until(both_queued, "A took both tasks")
        assert await local_order() == [first, second]
        async with DaemonClient(info) as c:  # A's queue says who queued them
            assert {t["backendTaskId"]: t["remote"] for t in await c.call("tasks", {})} == {
                first: True, second: True}
        await api_b.reorder_tasks([(second, 0), (first, 1)])

        async def followed() -> bool:
            return await local_order() == [second, first]
        await until(followed, "A's queue follows B's reorder")

        async with DaemonClient(info) as c:  # A moves it back, locally
            mine = await c.call("tasks", {})
            await c.call("move", {"taskId": next(t["taskId"] for t in mine
                                                 if t["backendTaskId"] == first),
                                  "position": 0})

        async def backend_followed() -> bool:
            return [t["id"] for t in await api_b.task_queue()] == [first, second]
        await until(backend_followed, "the backend's queue follows A's move")
        assert await local_order() == [first, second]  # the echo changed nothing

        async def started() -> dict[str, Any] | None:
            t = await local_task(daemon_a, first)
            return t if t is not None and t["downloadedBytes"] > 0 else None
        await until(started, "A started downloading")
        for tid in (first, second):
            await api_b.cancel_task(tid)
        for tid in (first, second):
            await until(lambda t=tid: _status_is(daemon_a, t, "cancelled"), "A cancelled")
            assert (await api_b.get_task(tid))["attributes"]["status"] == "cancelled"
    target = Path(a.data_dir) / "library" / MAIN
    assert not target.exists() or not any(target.iterdir())  # nothing partial left behind


async def test_a_queue_read_that_fails_at_connect_is_retried_and_bad_messages_are_dropped(
        backend: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A's engine (in-process) reaches the backend through the fault proxy, which answers 503
    once for ``GET /tasks/queue``: the read at connect fails, is tried again after the backoff,
    and the waiting remote download is still adopted. A malformed ``download.queue.reordered``
    (``task_ids: 5``) that arrived first is logged and dropped, and nothing stops. (The proxy
    carries no WebSocket: the test hands the channel's messages to A's relay, the entry point
    the channel calls.)"""
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    name, _ = backend.new_user(products=[MAIN])
    with FaultProxy(backend.url) as proxy:
        eng = Engine(load_settings({"data_dir": str(tmp_path / "a"), "backend_url": proxy.url}))
        api_b = BackendClient(backend.url)
        runner: asyncio.Task[None] | None = None
        try:
            await eng.api.login(name, "secret-pw")
            await api_b.login(name, "secret-pw")
            tid = (await api_b.create_remote_task(MAIN))["id"]
            proxy.set_fault(Fault.HTTP_503, times=1, path_contains="/download/tasks/queue")
            runner = asyncio.create_task(eng.remote.run())
            eng.relay.relay({"event_type": "download.queue.reordered",
                             "payload": {"task_ids": 5}})
            eng.relay.relay({"event_type": "connection.ready", "payload": {}})

            def adopted() -> bool:
                return any(t.backend_task_id == tid
                           for t in eng.state.tasks(include_finished=True))
            await until(adopted, "A adopted the task after the failed read", 30)
            assert proxy.faults_injected == 1  # the first read did fail
            assert not runner.done()  # the bad message ended nothing
            claimed = await api_b.get_task(tid)
            assert claimed["attributes"]["deviceId"] == eng.device_id
        finally:
            if runner is not None:
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
            await api_b.aclose()
            await eng.close()
