"""The download seed's remaining backend contracts (real backend process, SQLite and
PostgreSQL): flow 14.1's ``POST /api/v1/library/me/downloads``, the per-file ``DownloadItem``
list of ``GET /download/tasks/{id}?include=items``, the ``/ws/download/progress`` channel built
from the status reports, ``DOWNLOAD_QUEUE_FULL`` and ``CDN_LINK_GENERATION_FAILED``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import (
    BackendServer,
    PublishedStore,
    StartBackend,
    assert_error,
    task_body,
)

ME = "/api/v1/library/me/downloads"
TASKS = "/api/v1/download/tasks"
WS = "/ws/download/progress"


def seed_request(product: str, version: str | None = None, **extra: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {"productId": product, **extra}
    if version is not None:
        attrs["versionId"] = version
    return {"data": {"type": "downloadTaskRequest", "attributes": attrs}}


def report(c: httpx.Client, task: str, status: str, downloaded: int,
           **extra: Any) -> httpx.Response:
    r = c.post(f"{TASKS}/{task}/status", json={"data": {"type": "downloadTaskStatus", "attributes": {
        "status": status, "downloadedBytes": downloaded, **extra}}})
    assert r.status_code == 200, r.text
    return r


@contextmanager
def progress(server: BackendServer, token: str, task: str | None = None
             ) -> Iterator[ClientConnection]:
    url = server.url.replace("http://", "ws://", 1) + WS
    if task is not None:
        url += f"?taskId={task}"
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                 open_timeout=10) as ws:
        yield ws


def recv(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
    return msg


def nothing(ws: ClientConnection, timeout: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        ws.recv(timeout=timeout)


# -- flow 14.1's entry point ---------------------------------------------------------------------


def test_library_me_downloads_creates_the_download_task(backend: BackendServer,
                                                        published_store: PublishedStore) -> None:
    main = published_store.main
    _, token = backend.new_user([main.product_id])
    with backend.client(token) as c:
        r = c.post(ME, json=seed_request(main.product_id, main.versions[0]))
        assert r.status_code == 202, r.text
        task = r.json()["data"]
        a = task["attributes"]
        assert task["type"] == "downloadTask"
        assert r.headers["location"] == f"{TASKS}/{task['id']}" == task["links"]["self"]
        assert a["productId"] == main.product_id and a["versionId"] == main.versions[0]
        assert a["status"] == "queued" and a["kind"] == "install"
        assert a["queuePosition"] == 0 and a["cdnSources"]  # signed sources as /download/tasks
        assert a["targetPath"] == main.product_id  # the seed's request has no path
        # the same task the download service knows
        got = c.get(f"{TASKS}/{task['id']}")
        assert got.status_code == 200 and got.json()["data"]["id"] == task["id"]
        assert "included" not in got.json()
        # same shape as POST /download/tasks (apart from ids and times)
        direct = c.post(TASKS, json=task_body(main.product_id, main.versions[0])).json()["data"]
        assert set(direct["attributes"]) == set(a)
        # latest version by default; the seed's snake_case names too; the queue grows
        r = c.post(ME, json={"data": {"attributes": {"product_id": main.product_id,
                                                     "targetPath": "/games/mine"}}})
        assert r.status_code == 202, r.text
        b = r.json()["data"]["attributes"]
        assert b["versionId"] == main.versions[-1] and b["targetPath"] == "/games/mine"
        assert b["queuePosition"] == 2
        # refusals
        assert_error(c.post(ME, json=seed_request("not-mine")), 403, "PERMISSION_DENIED")
        assert_error(c.post(ME, json=seed_request(main.product_id, "9.9.9")), 404,
                     "VERSION_NOT_FOUND")
        assert_error(c.post(ME, json={"data": {"attributes": {}}}), 422, "VALIDATION_ERROR")
        assert_error(c.post(ME, json={"data": {"attributes": {
            "productId": main.product_id, "product_id": "other"}}}), 422, "VALIDATION_ERROR")
    with backend.client() as c:
        assert_error(c.post(ME, json=seed_request(main.product_id)), 401)


# -- DownloadItem --------------------------------------------------------------------------------


def test_task_items_follow_the_manifest(backend: BackendServer,
                                        published_store: PublishedStore) -> None:
    main = published_store.main
    assert len(main.versions) >= 2
    first, last = main.versions[0], main.versions[-1]
    _, token = backend.new_user([main.product_id])
    manifest = backend.store.read_manifest(main.product_id, first)
    with backend.client(token) as c:
        task = c.post(ME, json=seed_request(main.product_id, first)).json()["data"]
        r = c.get(f"{TASKS}/{task['id']}", params={"include": "items"})
        assert r.status_code == 200, r.text
        items = r.json()["included"]
        assert [i["attributes"]["relativePath"] for i in items] == \
            [f.path for f in manifest.files]
        for item, f in zip(items, manifest.files, strict=True):
            a = item["attributes"]
            assert item["type"] == "downloadItem" and a["downloadTaskId"] == task["id"]
            assert a["totalSizeBytes"] == f.size and a["expectedHashSha256"] == f.hash_sha256
            assert a["status"] == "pending" and a["downloadedBytes"] == 0
        assert len({i["id"] for i in items}) == len(items)
        again = c.get(f"{TASKS}/{task['id']}", params={"include": "items"}).json()["included"]
        assert [i["id"] for i in again] == [i["id"] for i in items]  # stable ids
        assert_error(c.get(f"{TASKS}/{task['id']}", params={"include": "files"}), 422)

        report(c, task["id"], "downloading", 10)
        report(c, task["id"], "completed", task["attributes"]["downloadSizeBytes"])
        done = c.get(f"{TASKS}/{task['id']}", params={"include": "items"}).json()["included"]
        assert all(i["attributes"]["status"] == "completed" for i in done)
        assert [i["attributes"]["downloadedBytes"] for i in done] == \
            [f.size for f in manifest.files]

        # an update lists only what changed since the version it starts from
        r = c.post("/api/v1/download/updates/initiate", json={"data": {"attributes": {
            "productId": main.product_id, "targetVersionId": last}}})
        assert r.status_code == 202, r.text
        upd = r.json()["data"]
        new = backend.store.read_manifest(main.product_id, last)
        old = {(f.path, f.hash_sha256) for f in manifest.files}
        changed = [f.path for f in new.files if (f.path, f.hash_sha256) not in old]
        assert changed and len(changed) < len(new.files) + 1
        items = c.get(f"{TASKS}/{upd['id']}", params={"include": "items"}).json()["included"]
        assert [i["attributes"]["relativePath"] for i in items] == changed


# -- /ws/download/progress -----------------------------------------------------------------------


def test_progress_channel_follows_status_reports(backend: BackendServer,
                                                 published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, token = backend.new_user([product])
    _, other = backend.new_user([product])
    with backend.client(token) as c, backend.client(other) as oc:
        task = c.post(ME, json=seed_request(product)).json()["data"]
        tid, size = task["id"], task["attributes"]["downloadSizeBytes"]
        assert size > 1000
        theirs = oc.post(ME, json=seed_request(product)).json()["data"]["id"]
        with progress(backend, token, tid) as ws, progress(backend, token) as everything, \
                progress(backend, other) as stranger:
            first = recv(ws)  # the current state on connect
            assert first["type"] == "downloadTaskStatusUpdate"
            p = first["payload"]
            assert p["taskId"] == tid and p["status"] == "queued"
            assert p["totalProgressPercentage"] == 0 and p["totalSizeBytes"] == size
            assert p["downloadSpeedBps"] is None and p["errorDetails"] is None
            snapshot = recv(everything)  # each active task of the user
            assert snapshot["payload"]["taskId"] == tid
            assert recv(stranger)["payload"]["taskId"] == theirs

            report(c, tid, "downloading", 0)
            t0 = time.monotonic()
            p = recv(ws)["payload"]
            assert p["status"] == "downloading" and p["downloadedBytes"] == 0
            assert recv(everything)["payload"]["status"] == "downloading"
            time.sleep(0.5)
            report(c, tid, "downloading", size // 2)
            elapsed = time.monotonic() - t0
            p = recv(ws)["payload"]
            assert p["downloadedBytes"] == size // 2
            assert p["totalProgressPercentage"] == pytest.approx(50, abs=0.1)
            # speed from the two reports (bytes over the server's time between them)
            assert 0 < p["downloadSpeedBps"] <= (size // 2) / 0.4
            assert p["downloadSpeedBps"] >= (size // 2) / (elapsed + 2)
            assert p["estimatedTimeLeftSeconds"] >= 0.3
            recv(everything)

            report(c, tid, "verifying", size)
            assert recv(ws)["payload"]["status"] == "verifying_files"
            recv(everything)
            report(c, tid, "error", size, errorCode="FILE_HASH_MISMATCH",
                   errorMessage="bad chunk")
            p = recv(ws)["payload"]
            assert p["status"] == "error"
            assert p["errorDetails"] == {"errorCode": "FILE_HASH_MISMATCH",
                                         "errorMessage": "bad chunk"}
            err = recv(ws)
            assert err == {"type": "downloadError", "payload": {
                "taskId": tid, "itemId": None, "errorCode": "FILE_HASH_MISMATCH",
                "errorMessage": "bad chunk"}}
            recv(everything), recv(everything)
            # REST status changes go out too
            assert c.post(f"{TASKS}/{tid}/resume").status_code == 200
            assert recv(ws)["payload"]["status"] == "downloading"
            recv(everything)
            report(c, tid, "completed", size)
            p = recv(ws)["payload"]
            assert p["status"] == "completed" and p["totalProgressPercentage"] == 100
            recv(everything)

            # another user's reports never reach this user, this user's never reach them
            report(oc, theirs, "downloading", 5)
            assert recv(stranger)["payload"]["taskId"] == theirs
            nothing(ws)
            nothing(everything)
            # a second task of the user reaches the all-tasks connection, not the task one
            second = c.post(TASKS, json=task_body(product)).json()["data"]["id"]
            assert recv(everything)["payload"]["taskId"] == second
            nothing(ws)


def test_progress_channel_refusals(backend: BackendServer,
                                   published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, token = backend.new_user([product])
    _, other = backend.new_user([product])
    with backend.client(other) as c:
        theirs = c.post(ME, json=seed_request(product)).json()["data"]["id"]
    url = backend.url.replace("http://", "ws://", 1) + WS
    for task in (theirs, "no-such-task"):
        with pytest.raises(InvalidStatus) as info:
            connect(f"{url}?taskId={task}", open_timeout=10,
                    additional_headers={"Authorization": f"Bearer {token}"})
        assert info.value.response.status_code == 404
        body = json.loads(info.value.response.body or b"{}")
        assert body["errors"][0]["code"] == "DOWNLOAD_TASK_NOT_FOUND"
    with pytest.raises(InvalidStatus) as info:
        connect(f"{url}?taskId={theirs}", open_timeout=10)
    assert info.value.response.status_code == 401
    # the token in the query works (browsers), also under /api/v1
    alt = backend.url.replace("http://", "ws://", 1) + "/api/v1" + WS
    with connect(f"{alt}?taskId={theirs}&access_token={other}", open_timeout=10) as ws:
        assert recv(ws)["payload"]["taskId"] == theirs


# -- the seed's error codes ----------------------------------------------------------------------


def test_download_queue_full(backend_factory: StartBackend,
                             published_store: PublishedStore) -> None:
    server = backend_factory(settings={"max_active_tasks": 2})
    product = published_store.main.product_id
    _, token = server.new_user([product])
    with server.client(token) as c:
        ids = [c.post(ME, json=seed_request(product)).json()["data"]["id"] for _ in range(2)]
        assert_error(c.post(ME, json=seed_request(product)), 409, "DOWNLOAD_QUEUE_FULL")
        assert_error(c.post(TASKS, json=task_body(product)), 409, "DOWNLOAD_QUEUE_FULL")
        assert len(c.get(TASKS).json()["data"]) == 2  # nothing stored
        # a finished task frees its place
        assert c.delete(f"{TASKS}/{ids[0]}").status_code == 204
        assert c.post(ME, json=seed_request(product)).status_code == 202
        assert_error(c.post(TASKS, json=task_body(product)), 409, "DOWNLOAD_QUEUE_FULL")


def test_cdn_link_generation_failed_without_edges(backend_factory: StartBackend,
                                                  published_store: PublishedStore) -> None:
    server = backend_factory()
    product = published_store.main.product_id
    _, token = server.new_user([product])
    with server.client(token) as c:
        task = c.post(TASKS, json=task_body(product)).json()["data"]
        assert task["attributes"]["cdnSources"]
        server.set_edges([])  # every edge removed at run time
        err = assert_error(c.post(TASKS, json=task_body(product)), 503,
                           "CDN_LINK_GENERATION_FAILED")
        assert "edge" in err["detail"]
        assert_error(c.post(ME, json=seed_request(product)), 503, "CDN_LINK_GENERATION_FAILED")
        assert_error(c.post(f"{TASKS}/{task['id']}/cdn-tokens"), 503,
                     "CDN_LINK_GENERATION_FAILED")
        assert len(c.get(TASKS).json()["data"]) == 1  # nothing stored
        server.set_edges(["self"])
        r = c.post(f"{TASKS}/{task['id']}/cdn-tokens")
        assert r.status_code == 200 and r.json()["data"]["attributes"]["cdnSources"]


def test_database_down_is_service_unavailable_on_the_new_routes(
        backend_factory: StartBackend, published_store: PublishedStore) -> None:
    """PostgreSQL only: the backend's database disappears (its sessions cut, the database renamed
    away) — the seed routes of issue 16 answer 503 ``SERVICE_UNAVAILABLE`` and recover."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = backend_factory()
    if server.database_url is None:
        pytest.skip("needs a database server to take away")
    product = published_store.main.product_id
    _, token = server.new_user([product])
    with server.client(token) as c:
        tid = c.post(ME, json=seed_request(product)).json()["data"]["id"]
    url = make_url(server.database_url)
    name = url.database
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    ws_url = server.url.replace("http://", "ws://", 1) + WS + f"?taskId={tid}"
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
            conn.execute(text(f'ALTER DATABASE "{name}" RENAME TO "{name}_away"'))
        try:
            with server.client(token) as c:
                for _ in range(2):  # a cut pooled connection, then no database at all
                    assert_error(c.get("/api/v1/library/wishlist/items"), 503,
                                 "SERVICE_UNAVAILABLE")
                assert_error(c.get("/api/v1/library/family"), 503, "SERVICE_UNAVAILABLE")
                assert_error(c.post(ME, json=seed_request(product)), 503, "SERVICE_UNAVAILABLE")
                assert_error(c.get(f"{TASKS}/{tid}", params={"include": "items"}), 503,
                             "SERVICE_UNAVAILABLE")
            with pytest.raises(InvalidStatus) as info:
                connect(ws_url, open_timeout=10,
                        additional_headers={"Authorization": f"Bearer {token}"})
            assert info.value.response.status_code == 503
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}_away" RENAME TO "{name}"'))
    finally:
        admin.dispose()
    with server.client(token) as c:
        assert c.get("/api/v1/library/wishlist/items").status_code == 200
        with progress(server, token, tid) as ws:
            assert recv(ws)["payload"]["taskId"] == tid
        r = c.post(ME, json=seed_request(product))
        assert r.status_code == 202, r.text
