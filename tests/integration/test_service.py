"""The middle layer in-process: the service dispatch over a real engine (real files, real
SQLite; the backend a real subprocess where one is needed), the lifecycle as the state records
it, and install/update orchestration observed through the typed event stream."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from engine.api.protocol import EngineError, ErrorCode, Event, TaskStatus, UpdatePlanned
from engine.api.service import EngineService
from engine.io.config import load_settings
from engine.jobs.engine import Engine
from testing.enginekit import STAGING, assert_same_tree


@pytest.fixture
async def service(tmp_path: Path) -> Any:
    settings = load_settings({"data_dir": str(tmp_path / "data"),
                              "backend_url": "http://127.0.0.1:9"})
    engine = Engine(settings)
    try:
        yield EngineService(engine)
    finally:
        await engine.close()


async def refused(svc: EngineService, method: str, params: dict[str, Any]) -> EngineError:
    with pytest.raises(EngineError) as err:
        await svc.call(method, params)
    return err.value


async def test_dispatch_validates_and_persists(service: EngineService, tmp_path: Path) -> None:
    status = await service.call("status", {})
    assert status["protocol"] == 1 and status["tasks"] == [] and status["loggedIn"] is False
    assert (await service.call("limit", {"bps": 2_000_000}))["globalLimitBps"] == 2_000_000
    assert (await service.call("limit", {"set": True}))["globalLimitBps"] is None
    windows = ["22:00-06:00", "sat,sun 00:00-24:00"]
    assert (await service.call("schedule", {"windows": windows}))["schedule"] == windows
    assert (await service.call("settings", {"key": "connections", "value": 8}))["settings"] == {
        "connections": 8}
    config = tomllib.loads((tmp_path / "data" / "config.toml").read_text())
    assert config["connections"] == 8 and config["schedule"] == windows
    assert (await refused(service, "settings", {"key": "connections", "value": 0})).code \
        is ErrorCode.CONFIG_INVALID
    assert (await refused(service, "pause", {"taskId": "nope"})).code is ErrorCode.TASK_NOT_FOUND
    assert (await refused(service, "install", {"productId": "../x"})).code is ErrorCode.INVALID_PARAMS
    assert (await refused(service, "subscribe", {})).code is ErrorCode.API_MISUSE
    assert (await refused(service, "uninstall", {"productId": "none"})).code is ErrorCode.NOT_INSTALLED
    assert (await service.call("offline", {"enabled": True}))["offline"] is True


@pytest.fixture
async def online(backend: Any, tmp_path: Path) -> Any:
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    name, _ = backend.new_user(products=["star-courier", "tiny-tactics"])
    settings = load_settings({"data_dir": str(tmp_path / "data"), "backend_url": backend.url})
    engine = Engine(settings)
    svc = EngineService(engine)
    await svc.call("login", {"username": name, "password": "secret-pw"})
    try:
        yield svc
    finally:
        await engine.close()


async def test_install_then_update_orchestration(online: EngineService, published_store: Any,
                                                 tmp_path: Path) -> None:
    events: list[Event] = []
    online.engine.bus.on_event(events.append)
    versions = published_store.product("star-courier").versions
    target = tmp_path / "g"
    task = await online.call("install", {"productId": "star-courier", "versionId": versions[0],
                                         "target": str(target)})
    done = await online.call("wait", {"taskId": task["taskId"]})
    assert done["status"] == "completed" and done["kind"] == "install"
    assert_same_tree(target, Path(published_store.builds) / "star-courier" / versions[0])
    states = [e.status for e in events if isinstance(e, TaskStatus) and e.task_id == task["taskId"]]
    # every lifecycle step was announced in order (progress repeats collapsed)
    steps = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
    assert steps == ["queued", "preparing", "downloading", "verifying", "completed"], steps

    events.clear()
    upd = await online.call("update", {"productId": "star-courier", "versionId": versions[1]})
    assert upd["kind"] == "update" and upd["fromVersion"] == versions[0]
    done = await online.call("wait", {"taskId": upd["taskId"]})
    assert done["status"] == "completed", done
    plans = [e for e in events if isinstance(e, UpdatePlanned)]
    assert len(plans) == 1 and plans[0].from_version == versions[0]
    assert plans[0].download_bytes < plans[0].full_download_bytes  # reuse and patches paid off
    assert_same_tree(target, Path(published_store.builds) / "star-courier" / versions[1])
    assert not (target / STAGING).exists()
    installed = await online.call("installed", {})
    assert [(g["productId"], g["versionId"], g["previousVersion"]) for g in installed] == [
        ("star-courier", versions[1], versions[0])]
    # asking for the version it has: completes at once, nothing fetched
    again = await online.call("update", {"productId": "star-courier", "versionId": versions[1]})
    again_done = await online.call("wait", {"taskId": again["taskId"]})
    assert again_done["status"] == "completed" and again_done["downloadedBytes"] == 0
