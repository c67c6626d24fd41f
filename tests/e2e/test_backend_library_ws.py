"""``/api/v1/ws/library-updates`` (seed 3.3): authentication, per-user fan-out of
``library.item.updated``, ``achievement.unlocked`` and ``savegame.sync.status``; and the
client-reported install state (uninstall) it announces (real backend process, real WebSocket
client)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import BackendServer, assert_error

GAME = "star-courier"
WS = "/api/v1/ws/library-updates"


def _ws_url(server: BackendServer) -> str:
    return server.url.replace("http://", "ws://", 1) + WS


@contextmanager
def _connect(server: BackendServer, token: str, *, query: bool = False
             ) -> Iterator[ClientConnection]:
    url = _ws_url(server)
    headers = {}
    if query:
        url += f"?access_token={token}"
    else:
        headers["Authorization"] = f"Bearer {token}"
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        ready = _recv(ws)
        assert ready["event_type"] == "connection.ready", ready
        yield ws


def _recv(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
    return msg


def _recv_library(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not a download task's (those announce remote downloads:
    tests/e2e/test_backend_remote_downloads.py)."""
    while True:
        msg = _recv(ws)
        if not str(msg.get("event_type", "")).startswith("download."):
            return msg


def _nothing(ws: ClientConnection, timeout: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        ws.recv(timeout=timeout)


def _item(c: httpx.Client, product: str = GAME) -> dict[str, Any]:
    items = c.get("/api/v1/library/items").json()["data"]
    found: dict[str, Any] = next(i for i in items if i["attributes"]["product_id"] == product)
    return found


def _event(c: httpx.Client, event_type: str, product: str = GAME, **attrs: Any) -> httpx.Response:
    return c.post("/api/v1/library/installation-events", json={"data": {
        "type": "installationEvent",
        "attributes": {"product_id": product, "event_type": event_type, **attrs}}})


def test_refuses_connections_without_a_valid_token(backend: BackendServer) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic x"}):
        with pytest.raises(InvalidStatus) as info:
            connect(_ws_url(backend), additional_headers=headers, open_timeout=10)
        response = info.value.response
        assert response.status_code == 401
        body = json.loads(response.body or b"{}")
        assert body["errors"][0]["code"] in {"UNAUTHENTICATED", "TOKEN_INVALID"}
    with pytest.raises(InvalidStatus):
        connect(_ws_url(backend) + "?access_token=forged", open_timeout=10)


def test_library_item_updates_reach_every_connection_of_that_user_only(
        backend: BackendServer) -> None:
    _, a_token = backend.new_user([GAME])
    _, b_token = backend.new_user([GAME])
    with backend.client(a_token) as a, backend.client(b_token) as b, \
            _connect(backend, a_token) as a1, _connect(backend, a_token, query=True) as a2, \
            _connect(backend, b_token) as b1:
        item = _item(a)
        r = a.patch(f"/api/v1/library/items/{item['id']}", json={"data": {
            "type": "libraryItemUpdate", "attributes": {"is_hidden": True}}})
        assert r.status_code == 200, r.text
        for ws in (a1, a2):
            msg = _recv(ws)
            assert msg == {"event_type": "library.item.updated", "payload": {
                "library_item_id": item["id"], "product_id": GAME,
                "changes": {"is_hidden": True}}}
        _nothing(b1)
        # a PATCH that changes nothing announces nothing
        a.patch(f"/api/v1/library/items/{item['id']}", json={"data": {
            "type": "libraryItemUpdate", "attributes": {"is_hidden": True}}})
        _nothing(a1, 0.3)
        # B's own change reaches B (and not A)
        b_item = _item(b)
        b.patch(f"/api/v1/library/items/{b_item['id']}", json={"data": {
            "type": "libraryItemUpdate", "attributes": {"user_rating": 4}}})
        assert _recv(b1)["payload"]["changes"] == {"user_rating": 4}
        _nothing(a1, 0.3)
        a1.send(json.dumps({"action": "ping"}))
        assert _recv(a1) == {"event_type": "pong", "payload": {}}


def test_uninstall_and_download_tasks_move_the_install_state(backend: BackendServer) -> None:
    main = GAME
    _, token = backend.new_user([main])
    with backend.client(token) as c, _connect(backend, token) as ws:
        r = c.post("/api/v1/download/tasks", json={"data": {"type": "downloadTaskRequest",
                                                            "attributes": {
            "productId": main, "targetPath": "/games/sc", "priority": 0}}})
        assert r.status_code == 202, r.text
        task = r.json()["data"]
        msg = _recv_library(ws)
        assert msg["event_type"] == "library.item.updated"
        assert msg["payload"]["changes"]["installation_status"] == "installing"
        r = c.post(f"/api/v1/download/tasks/{task['id']}/status", json={"data": {
            "type": "downloadTaskStatus", "attributes": {"status": "completed"}}})
        assert r.status_code == 200, r.text
        msg = _recv_library(ws)
        assert msg["payload"]["changes"] == {
            "installation_status": "installed",
            "installed_version_id": task["attributes"]["versionId"]}
        assert _item(c)["attributes"]["installation_status"] == "installed"
        # the engine uninstalls: the backend stops saying "installed"
        r = _event(c, "uninstalled", timestamp="2099-01-01T00:00:00Z")  # future: clamped to now
        assert r.status_code == 200, r.text
        assert r.json()["data"]["attributes"]["installation_status"] == "not_installed"
        assert r.json()["data"]["attributes"]["installed_version_id"] is None
        msg = _recv_library(ws)
        assert msg["event_type"] == "library.item.updated"
        assert msg["payload"]["changes"]["installation_status"] == "not_installed"
        assert _item(c)["attributes"]["installation_status"] == "not_installed"
        listed = c.get("/api/v1/library/items", params={"status": "installed"}).json()
        assert listed["data"] == []
        # an older event arriving late (offline replay) changes nothing
        stale = _event(c, "installed", version_id="1.0.0", timestamp="2024-01-01T00:00:00Z")
        assert stale.json()["data"]["attributes"]["installation_status"] == "not_installed"
        _nothing(ws, 0.3)
        # the PATCH route sets it as well (e.g. a repair is needed)
        item_id = _item(c)["id"]
        r = c.patch(f"/api/v1/library/items/{item_id}", json={"data": {
            "type": "libraryItemUpdate", "attributes": {"installation_status": "repair_needed"}}})
        assert r.json()["data"]["attributes"]["installation_status"] == "repair_needed"
        assert _recv_library(ws)["payload"]["changes"]["installation_status"] == "repair_needed"
        assert_error(_event(c, "uninstalled", product="tiny-tactics"), 403, "PERMISSION_DENIED")
        assert_error(_event(c, "exploded"), 422)


def test_achievement_and_save_events(backend: BackendServer) -> None:
    _, token = backend.new_user([GAME])
    _, other = backend.new_user([GAME])
    with backend.client(token) as c, _connect(backend, token) as ws, \
            _connect(backend, other) as ws_other:
        r = c.post(f"/api/v1/library/achievements/{GAME}/first-launch/unlock")
        assert r.status_code == 200, r.text
        msg = _recv(ws)
        assert msg["event_type"] == "achievement.unlocked"
        p = msg["payload"]
        assert p["product_id"] == GAME and p["achievement_id"] == "first-launch"
        assert p["achievement_name"] == "First Launch" and p["unlocked_at"].endswith("Z")
        # a progress report that reaches the target unlocks and announces it once
        for n in (4, 5, 5):
            c.post(f"/api/v1/library/achievements/{GAME}/frequent-flyer/progress",
                   json={"data": {"type": "achievementProgress", "attributes": {"current": n}}})
        assert _recv(ws)["payload"]["achievement_id"] == "frequent-flyer"
        _nothing(ws, 0.3)

        data = b"saved progress"
        r = c.post("/api/v1/library/savegames/upload-url", json={"data": {
            "type": "savegameUploadRequest", "attributes": {
                "product_id": GAME, "save_slot_name": "slot1.sav",
                "file_size_bytes": len(data),
                "file_hash_sha256": hashlib.sha256(data).hexdigest()}}})
        assert r.status_code == 200, r.text
        up = r.json()["data"]["attributes"]
        started = _recv(ws)
        assert started["event_type"] == "savegame.sync.status"
        assert started["payload"]["status"] == "sync_started"
        assert httpx.put(up["upload_url"], content=data).status_code == 200
        r = c.post("/api/v1/library/savegames/confirm-upload", json={"data": {
            "type": "savegameUploadConfirmation",
            "attributes": {"internal_save_id": up["internal_save_id"], "s3_path": up["s3_path"]}}})
        assert r.status_code == 200, r.text
        done = _recv(ws)
        assert done["event_type"] == "savegame.sync.status"
        assert done["payload"]["status"] == "sync_completed"
        assert done["payload"]["product_id"] == GAME and done["payload"]["error_message"] is None
        assert done["payload"]["last_synced_at"].endswith("Z")
        assert done["payload"]["slot"] == "slot1.sav" and done["payload"]["version"] == 1
        # a retried confirm announces nothing new
        c.post("/api/v1/library/savegames/confirm-upload", json={"data": {
            "type": "savegameUploadConfirmation",
            "attributes": {"internal_save_id": up["internal_save_id"]}}})
        _nothing(ws, 0.3)
        _nothing(ws_other, 0.1)


def test_token_expiry_closes_unless_refreshed(backend_factory: Any) -> None:
    server = backend_factory(settings={"access_token_ttl": 2})
    name, token = server.new_user([GAME])
    with _connect(server, token) as ws:
        # a fresh token of the same user extends the connection
        ws.send(json.dumps({"action": "authenticate", "access_token": server.login(name)}))
        assert _recv(ws)["event_type"] == "connection.ready"
        _, stranger = server.new_user([GAME])
        ws.send(json.dumps({"action": "authenticate", "access_token": stranger}))
        assert _recv(ws)["event_type"] == "error"
    with _connect(server, server.login(name)) as ws, pytest.raises(ConnectionClosed) as closed:
        _recv(ws, timeout=6)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
