"""A NUL character (U+0000) in any request input is 422 VALIDATION_ERROR naming where it is, on
SQLite and PostgreSQL alike (PostgreSQL cannot take NUL in text: these were 500s there), and
the request changes nothing. Raw save bytes are not input to check: they are stored as sent."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

from tests.conftest import BackendServer, PublishedStore, assert_error, task_body

NUL_ID = "a\x00b"


def _nul_error(resp: httpx.Response, source: dict[str, str]) -> None:
    err = assert_error(resp, 422, "VALIDATION_ERROR")
    assert err["source"] == source, err
    assert "NUL" in err["detail"], err


def _saves(c: httpx.Client) -> list[tuple[str, int, list[tuple[str, int, str]]]]:
    """Every slot with its versions (id, number, SHA-256); not the signed download URLs, which
    change with the clock."""
    r = c.get("/api/v1/library/savegames")
    assert r.status_code == 200, r.text
    return [(s["id"], s["attributes"]["latest_version"],
             [(v["id"], v["attributes"]["version"], v["attributes"]["sha256"])
              for v in s["attributes"]["versions"]]) for s in r.json()["data"]]


def _upload(c: httpx.Client, product: str, slot: str, data: bytes,
            content_type: str = "application/octet-stream") -> dict[str, Any]:
    attrs = {"product_id": product, "slot": slot, "size_bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "base_version": None,
             "client_timestamp": "2024-03-15T20:00:00Z"}
    r = c.post("/api/v1/library/savegames/upload-url",
               json={"data": {"type": "savegameUploadRequest", "attributes": attrs}})
    assert r.status_code == 200, r.text
    a = r.json()["data"]["attributes"]
    put = httpx.put(a["upload_url"], content=data, headers={"Content-Type": content_type})
    assert put.status_code == 200, put.text
    r = c.post("/api/v1/library/savegames/confirm-upload", json={"data": {
        "type": "savegameUploadConfirmation", "attributes": {"internal_save_id":
                                                              a["internal_save_id"]}}})
    assert r.status_code == 200, r.text
    return dict(r.json()["data"])


def test_nul_in_input_is_refused_and_changes_nothing(backend: BackendServer,
                                                     published_store: PublishedStore) -> None:
    main = published_store.main
    _, token = backend.new_user([main.product_id])
    with backend.client(token) as c:
        # a save whose bytes hold both a NUL byte and the JSON escape, sent as JSON: stored as is
        data = b'{"name": "\\u0000"}\x00'
        save = _upload(c, main.product_id, "slot", data, content_type="application/json")
        assert httpx.get(save["attributes"]["download_url"]).content == data
        before = _saves(c)
        assert len(before) == 1 and len(before[0][2]) == 1
        r = c.post("/api/v1/download/tasks", json=task_body(main.product_id, main.versions[0]))
        assert r.status_code == 202, r.text
        first = r.json()["data"]["id"]
        r = c.post("/api/v1/download/tasks", json=task_body(main.product_id, main.versions[1]))
        second = r.json()["data"]["id"]
        queue = [t["id"] for t in c.get("/api/v1/download/tasks/queue").json()["data"]]
        assert queue == [first, second]

        # query parameter
        _nul_error(c.get("/api/v1/library/savegames", params={"product_id": NUL_ID}),
                   {"parameter": "product_id"})
        # a string of the JSON body
        _nul_error(c.post("/api/v1/library/savegames/confirm-upload", json={"data": {
            "type": "savegameUploadConfirmation", "attributes": {"internal_save_id": NUL_ID}}}),
            {"pointer": "/data/attributes/internal_save_id"})
        # ... after a valid entry, which is not applied either
        _nul_error(c.post("/api/v1/download/tasks/queue/reorder", json={"data": [
            {"taskId": second, "order": 0}, {"taskId": NUL_ID, "order": 1}]}),
            {"pointer": "/data/1/taskId"})
        # a key of the JSON body
        _nul_error(c.post("/api/v1/download/tasks/queue/reorder", json={"data": [
            {"taskId": second, "order": 0, "x\x00": 1}]}), {"pointer": "/data/0/x\\u0000"})
        # path parameter, on a route that would write
        _nul_error(c.post(f"/api/v1/library/savegames/{save['id']}%00/restore",
                          json={"data": {"type": "savegameRestore",
                                         "attributes": {"base_version": 1}}}),
                   {"parameter": "savegame_id"})
        _nul_error(c.get("/api/v1/download/tasks/a%00b"), {"parameter": "taskId"})
        # the upload request of a save for a NUL slot name
        attrs = {"product_id": main.product_id, "slot": NUL_ID, "size_bytes": 1,
                 "sha256": hashlib.sha256(b"x").hexdigest(), "base_version": None}
        _nul_error(c.post("/api/v1/library/savegames/upload-url", json={"data": {
            "type": "savegameUploadRequest", "attributes": attrs}}),
            {"pointer": "/data/attributes/slot"})

        # nothing changed: the saves, the queue and its order
        assert _saves(c) == before
        assert [t["id"] for t in c.get("/api/v1/download/tasks/queue").json()["data"]] == queue
        # ... and the same requests without NUL still work (the guard refuses only NUL)
        assert c.get("/api/v1/library/savegames",
                     params={"product_id": "ab"}).json() == {"data": []}
        assert_error(c.post("/api/v1/download/tasks/queue/reorder", json={"data": [
            {"taskId": "ab", "order": 0}]}), 404, "DOWNLOAD_TASK_NOT_FOUND")
