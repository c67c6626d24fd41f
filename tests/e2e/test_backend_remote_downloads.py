"""Remote downloads on the backend (real backend process, real WebSocket client): a task created
without a device id is a remote download, announced on the player's library channel; one engine
claims it (of two claiming, one wins); pause, resume, cancel and reorder made through REST are
announced, an engine's own status reports are not; schema 4 databases gain the columns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import inspect, text
from websockets.sync.client import ClientConnection, connect

from backend.db import SCHEMA_VERSION, Database
from tests.conftest import BackendServer, assert_error, scratch_database, task_body

GAME, OTHER = "star-courier", "tiny-tactics"


@contextmanager
def _channel(server: BackendServer, token: str) -> Iterator[ClientConnection]:
    with connect(server.url.replace("http://", "ws://", 1) + "/api/v1/ws/library-updates",
                 additional_headers={"Authorization": f"Bearer {token}"},
                 open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["event_type"] == "connection.ready"
        yield ws


def _next_download_event(ws: ClientConnection) -> dict[str, Any]:
    while True:
        msg: dict[str, Any] = json.loads(ws.recv(timeout=10))
        if msg["event_type"].startswith("download."):
            return msg


def _claim(c: httpx.Client, tid: str, device: str) -> httpx.Response:
    return c.post(f"/api/v1/download/tasks/{tid}/claim", json={"data": {
        "type": "downloadTaskClaim", "attributes": {"deviceId": device}}})


def _report(c: httpx.Client, tid: str, status: str, device: str | None,
            downloaded: int = 0) -> httpx.Response:
    attrs: dict[str, Any] = {"status": status, "downloadedBytes": downloaded}
    if device is not None:
        attrs["deviceId"] = device
    return c.post(f"/api/v1/download/tasks/{tid}/status", json={"data": {
        "type": "downloadTaskStatus", "attributes": attrs}})


def _remote(body: dict[str, Any], **attrs: Any) -> dict[str, Any]:
    body["data"]["attributes"].update(attrs)
    return body


def test_remote_tasks_are_announced_and_claimed_once(backend: BackendServer) -> None:
    name, token = backend.new_user(products=[GAME, OTHER])
    with backend.client(token) as c, _channel(backend, token) as ws:
        # an engine's own install: origin "device", not for anyone else
        own = c.post("/api/v1/download/tasks", json=_remote(task_body(GAME), deviceId="dev-a"))
        assert own.status_code == 202, own.text
        a = own.json()["data"]["attributes"]
        assert (a["origin"], a["deviceId"], a["targetDeviceId"]) == ("device", "dev-a", None)
        ev = _next_download_event(ws)
        assert ev["event_type"] == "download.task.changed"
        assert ev["payload"]["change"] == "created" and ev["payload"]["origin"] == "device"
        assert_error(_claim(c, own.json()["data"]["id"], "dev-b"), 409,
                     "DOWNLOAD_TASK_STATE_CONFLICT")

        # a remote download (no device id: a web page, a script, another engine)
        made = c.post("/api/v1/library/me/downloads", json={"data": {
            "type": "downloadTaskRequest", "attributes": {"productId": OTHER}}})
        assert made.status_code == 202, made.text
        tid = made.json()["data"]["id"]
        assert made.json()["data"]["attributes"]["origin"] == "remote"
        ev = _next_download_event(ws)["payload"]
        assert (ev["task_id"], ev["change"], ev["status"], ev["device_id"]) == (
            tid, "created", "queued", None)

        # two engines claim at once: exactly one gets it; the winner may claim again
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda d: _claim(c, tid, d), ["dev-a", "dev-b"]))
        assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
        winner = answers[0] if answers[0].status_code == 200 else answers[1]
        device = winner.json()["data"]["attributes"]["deviceId"]
        assert winner.json()["data"]["attributes"]["cdnSources"]  # the claim is a grant
        assert _claim(c, tid, device).status_code == 200

        # the engine's own reports are not announced; REST pause/resume/cancel are
        status = _report(c, tid, "queued", device)
        assert status.status_code == 200, status.text
        assert c.post(f"/api/v1/download/tasks/{tid}/pause").status_code == 200
        ev = _next_download_event(ws)["payload"]
        assert (ev["task_id"], ev["change"], ev["status"]) == (tid, "paused", "paused")
        assert_error(_claim(c, tid, device), 409, "DOWNLOAD_TASK_STATE_CONFLICT")  # paused
        assert c.post(f"/api/v1/download/tasks/{tid}/resume").status_code == 200
        assert _next_download_event(ws)["payload"]["change"] == "resumed"
        reorder = c.post("/api/v1/download/tasks/queue/reorder", json={"data": [
            {"taskId": tid, "order": 0}, {"taskId": own.json()["data"]["id"], "order": 1}]})
        assert reorder.status_code == 200, reorder.text
        ev = _next_download_event(ws)
        assert ev["event_type"] == "download.queue.reordered"
        assert ev["payload"]["task_ids"][0] == tid
        assert c.delete(f"/api/v1/download/tasks/{tid}").status_code == 204
        ev = _next_download_event(ws)["payload"]
        assert (ev["change"], ev["status"]) == ("cancelled", "cancelled")
        assert_error(_claim(c, tid, device), 409, "DOWNLOAD_TASK_STATE_CONFLICT")

        # a task for one device is not claimed by another
        meant = c.post("/api/v1/download/tasks", json=_remote(task_body(GAME),
                                                              targetDeviceId="dev-b"))
        mid = meant.json()["data"]["id"]
        assert_error(_claim(c, mid, "dev-a"), 409, "DOWNLOAD_TASK_STATE_CONFLICT")
        assert _claim(c, mid, "dev-b").status_code == 200
    # another player's channel hears none of it, and cannot claim it
    _other, other_token = backend.new_user(products=[GAME])
    with backend.client(other_token) as c2:
        assert_error(_claim(c2, mid, "dev-b"), 404, "DOWNLOAD_TASK_NOT_FOUND")
    assert name


def test_reports_come_from_the_runner_and_do_not_undo_a_pause(backend: BackendServer) -> None:
    """A claimed remote download takes status reports from its claimer only; a progress
    report that crossed the player's pause does not make it downloading again; a device's own
    task still takes its reports (with its id, or without one as older clients send them)."""
    _name, token = backend.new_user(products=[GAME, OTHER])
    with backend.client(token) as c:
        tid = c.post("/api/v1/download/tasks", json=task_body(GAME)).json()["data"]["id"]
        assert _claim(c, tid, "dev-a").status_code == 200
        assert _report(c, tid, "downloading", "dev-a", 10).status_code == 200
        # another device of the same player, or a report naming no device: refused, unchanged
        assert_error(_report(c, tid, "completed", "dev-b", 99), 409,
                     "DOWNLOAD_TASK_CLAIMED_ELSEWHERE")
        assert_error(_report(c, tid, "completed", None, 99), 409,
                     "DOWNLOAD_TASK_CLAIMED_ELSEWHERE")
        got = c.get(f"/api/v1/download/tasks/{tid}").json()["data"]["attributes"]
        assert (got["status"], got["downloadedBytes"]) == ("downloading", 10)
        # the watching device pauses; the runner's late progress report is refused
        assert c.post(f"/api/v1/download/tasks/{tid}/pause").status_code == 200
        assert_error(_report(c, tid, "downloading", "dev-a", 20), 409,
                     "DOWNLOAD_TASK_STATE_CONFLICT")
        got = c.get(f"/api/v1/download/tasks/{tid}").json()["data"]["attributes"]
        assert (got["status"], got["downloadedBytes"]) == ("paused", 10)
        # the runner's own resume (it reports queued), then its progress, are taken
        assert _report(c, tid, "queued", "dev-a", 10).status_code == 200
        assert _report(c, tid, "downloading", "dev-a", 30).status_code == 200
        assert _report(c, tid, "completed", "dev-a", 40).status_code == 200
        history = [h["attributes"]["status"] for h in
                   c.get(f"/api/v1/download/tasks/{tid}/history").json()["data"]]
        assert history == ["queued", "downloading", "paused", "queued", "downloading",
                           "completed"]

        # a device's own task: its reports, with or without its id; another device's refused
        own = c.post("/api/v1/download/tasks", json=_remote(task_body(OTHER), deviceId="dev-a"))
        oid = own.json()["data"]["id"]
        assert _report(c, oid, "downloading", "dev-a", 5).status_code == 200
        assert _report(c, oid, "downloading", None, 6).status_code == 200
        assert_error(_report(c, oid, "downloading", "dev-b", 7), 409,
                     "DOWNLOAD_TASK_CLAIMED_ELSEWHERE")
        assert c.get(f"/api/v1/download/tasks/{oid}").json()["data"]["attributes"][
            "downloadedBytes"] == 6


def test_a_claim_never_wins_a_task_cancelled_or_paused_meanwhile(backend: BackendServer) -> None:
    """Claims racing a cancel or a pause (threads against the real backend): a claim answered
    200 always carries a task still waiting; the loser of each race is 409."""
    _name, token = backend.new_user(products=[GAME])
    with backend.client(token) as c, ThreadPoolExecutor(2) as pool:
        for round_ in range(8):
            tid = c.post("/api/v1/download/tasks", json=task_body(GAME)).json()["data"]["id"]
            claim = pool.submit(_claim, c, tid, "dev-a")
            stopped = pool.submit(c.delete, f"/api/v1/download/tasks/{tid}") if round_ % 2 \
                else pool.submit(c.post, f"/api/v1/download/tasks/{tid}/pause")
            answer = claim.result()
            assert stopped.result().status_code in (200, 204)
            if answer.status_code == 200:
                assert answer.json()["data"]["attributes"]["status"] in (
                    "queued", "preparing", "downloading", "verifying"), answer.text
            else:
                assert_error(answer, 409, "DOWNLOAD_TASK_STATE_CONFLICT")
            final = c.get(f"/api/v1/download/tasks/{tid}").json()["data"]["attributes"]
            assert final["status"] == ("cancelled" if round_ % 2 else "paused")


def test_bad_device_ids_are_refused(backend: BackendServer) -> None:
    _name, token = backend.new_user(products=[GAME])
    with backend.client(token) as c:
        bad = c.post("/api/v1/download/tasks", json=_remote(task_body(GAME), deviceId="../x"))
        assert_error(bad, 422)
        tid = c.post("/api/v1/download/tasks", json=task_body(GAME)).json()["data"]["id"]
        assert_error(_claim(c, tid, ""), 422)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, database_kind: str,
                 tmp_path: Path) -> Iterator[str]:
    with scratch_database(request, database_kind) as dsn:
        yield dsn or f"sqlite:///{tmp_path / 'backend.sqlite'}"


def test_schema_4_is_upgraded_to_5_keeping_tasks(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.init_schema()
        with db.engine.begin() as conn:
            for column in ("origin", "device_id", "target_device_id"):
                conn.execute(text(f"ALTER TABLE download_tasks DROP COLUMN {column}"))
            conn.execute(text("UPDATE schema_version SET version = 4"))
            conn.execute(text("INSERT INTO users (id, username, password_hash, created_at) "
                              "VALUES ('u1', 'old-user', 'x', CURRENT_TIMESTAMP)"))
            conn.execute(text(
                "INSERT INTO download_tasks (id, user_id, product_id, version_id, kind, "
                "target_path, status, priority, queue_order, total_size_bytes, "
                "download_size_bytes, downloaded_bytes, created_at, updated_at) VALUES ('t1', "
                "'u1', 'star-courier', '1.0', 'install', 'x', 'queued', 0, 0, 1, 1, 0, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        db.dispose()
        db = Database(database_url)
        db.init_schema()
        assert db.stored_versions() == [SCHEMA_VERSION] and SCHEMA_VERSION >= 5
        cols = {c["name"] for c in inspect(db.engine).get_columns("download_tasks")}
        assert {"origin", "device_id", "target_device_id"} <= cols
        with db.engine.begin() as conn:
            # a task made before remote downloads existed: no origin, never adopted
            assert conn.execute(text("SELECT origin, device_id FROM download_tasks "
                                     "WHERE id = 't1'")).one() == (None, None)
    finally:
        db.dispose()


def test_reported_items_reach_the_progress_channel(backend: BackendServer) -> None:
    """A status report's ``items`` (ours) go out as the seed's ``downloadItemProgressUpdate``
    after the task's own update, with the ``itemId`` of ``?include=items``; a retry carries
    its count, the next source and why."""
    _name, token = backend.new_user(products=[GAME])
    with backend.client(token) as c:
        tid = c.post("/api/v1/download/tasks", json=task_body(GAME)).json()["data"]["id"]
        items = {i["attributes"]["relativePath"]: i["id"] for i in c.get(
            f"/api/v1/download/tasks/{tid}", params={"include": "items"}).json()["included"]}
        path = sorted(items)[0]
        url = backend.url.replace("http://", "ws://", 1) + f"/ws/download/progress?taskId={tid}"
        with connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                     open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "downloadTaskStatusUpdate"
            r = c.post(f"/api/v1/download/tasks/{tid}/status", json={"data": {
                "type": "downloadTaskStatus", "attributes": {
                    "status": "downloading", "downloadedBytes": 5, "items": [
                        {"relativePath": path, "status": "downloading", "downloadedBytes": 5,
                         "totalFileSizeBytes": 10},
                        {"relativePath": path, "status": "retrying", "downloadedBytes": 5,
                         "retryCount": 2, "cdnSourceId": "edge-1",
                         "errorCode": "CDN_UNREACHABLE", "errorMessage": "reset"}]}}})
            assert r.status_code == 200, r.text
            got = [json.loads(ws.recv(timeout=10)) for _ in range(3)]
        assert [m["type"] for m in got] == ["downloadTaskStatusUpdate",
                                            "downloadItemProgressUpdate",
                                            "downloadItemProgressUpdate"]
        first, retry = got[1]["payload"], got[2]["payload"]
        assert (first["taskId"], first["itemId"], first["relativePath"], first["status"],
                first["downloadedBytes"], first["totalFileSizeBytes"]) == (
            tid, items[path], path, "downloading", 5, 10)
        assert (retry["status"], retry["retryCount"], retry["cdnSourceId"],
                retry["errorCode"]) == ("retrying", 2, "edge-1", "CDN_UNREACHABLE")
        too_many = [{"relativePath": f"f{i}", "status": "downloading"} for i in range(501)]
        assert_error(c.post(f"/api/v1/download/tasks/{tid}/status", json={"data": {
            "type": "downloadTaskStatus", "attributes": {"status": "downloading",
                                                         "items": too_many}}}), 422)
