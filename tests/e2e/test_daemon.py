"""The engine daemon: real `launcher-engine serve` subprocess, real backend, real clients."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from engine.api.client import DaemonClient, DaemonInfo, read_info
from engine.api.protocol import TaskStatus
from engine.core.errors import EngineError
from testing.daemon import DaemonProcess
from testing.enginekit import REPO, EngineCli, assert_same_tree, engine_env

PRODUCT = "star-courier"


@pytest.fixture
def daemon(backend: Any, tmp_path: Path) -> Iterator[tuple[DaemonProcess, EngineCli]]:
    name, _ = backend.new_user(products=[PRODUCT, "tiny-tactics"])
    cli = EngineCli(tmp_path / "data", backend.url)
    cli.login(name, "secret-pw")
    d = DaemonProcess(cli.data_dir, backend.url)
    d.start()
    try:
        yield d, cli
    finally:
        d.stop()


def info_of(cli: EngineCli) -> DaemonInfo:
    info = read_info(cli.data_dir)
    assert info is not None
    return info


async def test_token_is_required_and_origin_is_refused(daemon: Any) -> None:
    _, cli = daemon
    info = info_of(cli)
    with pytest.raises(InvalidStatus) as no_token:
        async with connect(info.url):
            pass
    assert no_token.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as wrong:
        async with connect(info.url, additional_headers={"Authorization": "Bearer nope"}):
            pass
    assert wrong.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as browser:
        async with connect(info.url, origin="http://evil.example",  # type: ignore[arg-type]
                           additional_headers={"Authorization": f"Bearer {info.token}"}):
            pass
    assert browser.value.response.status_code == 403
    assert (cli.data_dir / "daemon.json").stat().st_mode & 0o077 == 0


async def test_bad_messages_get_errors_and_the_daemon_keeps_serving(daemon: Any) -> None:
    _, cli = daemon
    info = info_of(cli)
    async with DaemonClient(info) as a, DaemonClient(info) as b:
        assert (await a.send_raw("{not json"))["error"]["code"] == "PARSE_ERROR"
        assert (await a.send_raw(json.dumps([1, 2])))["error"]["code"] == "INVALID_REQUEST"
        big = json.dumps({"id": None, "method": "ping", "params": {"x": "y" * 200_000}})
        assert (await a.send_raw(big))["error"]["code"] == "MESSAGE_TOO_LARGE"
        with pytest.raises(EngineError) as unknown:
            await a.call("launchMissiles")
        assert unknown.value.code == "UNKNOWN_METHOD"
        with pytest.raises(EngineError) as bad:
            await a.call("install", {"productId": 42})
        assert bad.value.code == "INVALID_PARAMS"
        with pytest.raises(EngineError) as extra:
            await a.call("pause", {"taskId": "x", "evil": True})
        assert extra.value.code == "INVALID_PARAMS"
        with pytest.raises(EngineError) as missing_task:
            await a.call("pause", {"taskId": "does-not-exist"})
        assert missing_task.value.code == "TASK_NOT_FOUND"
        assert (await a.call("ping"))["pong"] is True
        assert (await b.call("ping"))["pong"] is True  # the other session never noticed


async def test_two_clients_see_the_same_events(daemon: Any, published_store: Any,
                                               tmp_path: Path) -> None:
    _, cli = daemon
    info = info_of(cli)
    async with DaemonClient(info) as a, DaemonClient(info) as b:
        await a.subscribe()
        await b.subscribe()
        task = await a.call("install", {"productId": "tiny-tactics",
                                        "target": str(tmp_path / "tiny")})
        final = await b.call("wait", {"taskId": task["taskId"]})
        assert final["status"] == "completed"
        await asyncio.sleep(0.3)

        def states(client: DaemonClient) -> list[str]:
            out = []
            assert client.events is not None
            while not client.events.empty():
                e = client.events.get_nowait()
                if isinstance(e, TaskStatus) and e.status != "downloading":
                    out.append(e.status)
            return out

        sa, sb = states(a), states(b)
        assert sa == sb and sa[-1] == "completed" and "queued" in sa
    version = published_store.product("tiny-tactics").versions[-1]
    assert_same_tree(tmp_path / "tiny", Path(published_store.builds) / "tiny-tactics" / version)


async def test_cli_against_the_daemon_changes_what_another_client_sees(daemon: Any) -> None:
    _, cli = daemon
    info = info_of(cli)
    async with DaemonClient(info) as watcher:
        cli.ok("limit", "750K")
        assert (await watcher.call("status"))["globalLimitBps"] == 750_000
        lines = cli.ok("install", PRODUCT, "--no-wait", "--limit", "200K")
        task_id = lines[-1]["task"]["taskId"]
        await watcher.subscribe(task_id)
        cli.ok("queue", "pause", task_id)
        deadline = time.monotonic() + 20
        seen = []
        while time.monotonic() < deadline and "paused" not in seen:
            assert watcher.events is not None
            e = await asyncio.wait_for(watcher.events.get(), 20)
            seen.append(getattr(e, "status", None))
        assert "paused" in seen
        task = await watcher.call("task", {"taskId": task_id})
        assert task["status"] == "paused" and task["userPaused"]
        # a cancel arriving while the paused run still winds down (its range threads stop
        # within a poll interval) is answered once the run has stopped, with the state it led to
        reply = cli.ok("queue", "cancel", task_id)
        listed = {t["taskId"]: t["status"] for t in reply[-1]["tasks"]}
        assert listed.get(task_id, "cancelled") == "cancelled", listed  # not "paused" any more
        assert (await watcher.call("task", {"taskId": task_id}))["status"] == "cancelled"


def test_the_daemon_starts_its_threads_before_it_listens(daemon: Any) -> None:
    """A first install does not start the loop's executor threads or its connections' range
    threads one by one on the loop: they run, idle, once the daemon says it listens."""
    from engine.api.daemon import LOOP_THREADS
    from engine.io.config import Settings

    _, cli = daemon
    threads = len(list(Path(f"/proc/{info_of(cli).pid}/task").iterdir()))
    assert threads >= 1 + LOOP_THREADS + Settings().connections


def test_one_daemon_per_data_dir(daemon: Any) -> None:
    _, cli = daemon
    second = subprocess.run(cli.argv("serve"), capture_output=True, text=True,
                            cwd=REPO, env=engine_env(), timeout=60)
    assert second.returncode == 2
    assert "already runs" in second.stderr


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_daemon_killed_mid_download_resumes_after_restart(daemon: Any, published_store: Any,
                                                          tmp_path: Path, sig: int) -> None:
    d, cli = daemon
    target = tmp_path / "game"
    lines = cli.ok("install", PRODUCT, "--no-wait", "--target", str(target), "--limit", "400K")
    task_id = lines[-1]["task"]["taskId"]
    deadline = time.monotonic() + 30
    t: dict[str, Any] = {}
    while time.monotonic() < deadline:
        t = cli.ok("queue", "list")[-1]["tasks"][0]
        if t["downloadedBytes"] > 300_000:
            break
        time.sleep(0.3)
    # the kill lands mid-download: started, not finished
    assert t["status"] == "downloading" and 300_000 < t["downloadedBytes"] < t["downloadSizeBytes"], t
    code = d.kill(sig)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    d.start()  # a stale lock after kill -9 does not block the new daemon
    cli.ok("limit", "off", "--task", task_id)
    cli.ok("run")
    task = cli.ok("queue", "list", "--all")[-1]["tasks"][0]
    assert task["status"] == "completed", task
    version = published_store.product(PRODUCT).versions[-1]
    assert_same_tree(target, Path(published_store.builds) / PRODUCT / version)
