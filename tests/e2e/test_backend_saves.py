"""Cloud saves: presigned-style upload, confirmation, versions, limits and isolation."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import httpx

from tests.conftest import BackendServer, PublishedStore, StartBackend, assert_error


def _request(c: httpx.Client, product: str, slot: str, data: bytes,
             base: int | None = None, **over: Any) -> httpx.Response:
    attrs = {"product_id": product, "slot": slot, "size_bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "base_version": base,
             "client_timestamp": "2024-03-15T20:00:00Z", **over}
    return c.post("/api/v1/library/savegames/upload-url",
                  json={"data": {"type": "savegameUploadRequest", "attributes": attrs}})


def _confirm(c: httpx.Client, upload_id: str) -> httpx.Response:
    return c.post("/api/v1/library/savegames/confirm-upload", json={"data": {
        "type": "savegameUploadConfirmation", "attributes": {"internal_save_id": upload_id}}})


def _upload(c: httpx.Client, product: str, slot: str, data: bytes,
            base: int | None = None) -> dict[str, Any]:
    r = _request(c, product, slot, data, base)
    assert r.status_code == 200, r.text
    a = r.json()["data"]["attributes"]
    put = httpx.put(a["upload_url"], content=data, headers=a["headers"])
    assert put.status_code == 200, put.text
    assert put.json()["data"]["attributes"]["sha256"] == hashlib.sha256(data).hexdigest()
    r = _confirm(c, a["internal_save_id"])
    assert r.status_code == 200, r.text
    save: dict[str, Any] = r.json()["data"]
    return save


def test_upload_confirm_list_download(backend: BackendServer,
                                      published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, token = backend.new_user([product])
    v1, v2 = os.urandom(5000), os.urandom(7000)
    with backend.client(token) as c:
        r = _request(c, product, "slot1", v1)
        a = r.json()["data"]["attributes"]
        assert a["method"] == "PUT" and a["expires_in_seconds"] > 0
        assert a["upload_url"].startswith(f"{backend.url}/api/v1/library/savegames/blobs/")
        s1 = _upload(c, product, "slot1", v1)
        assert s1["attributes"]["version"] == 1 and s1["attributes"]["size_bytes"] == 5000
        s2 = _upload(c, product, "slot1", v2, base=1)
        assert s2["attributes"]["version"] == 2
        _upload(c, product, "autosave", b"")  # empty saves are fine
        slots = c.get("/api/v1/library/savegames", params={"product_id": product}).json()["data"]
        by_slot = {s["attributes"]["slot"]: s["attributes"] for s in slots}
        assert set(by_slot) == {"slot1", "autosave"}
        assert by_slot["slot1"]["latest_version"] == 2
        versions = by_slot["slot1"]["versions"]
        assert [v["attributes"]["version"] for v in versions] == [2, 1]
        for v, data in zip(versions, (v2, v1), strict=True):
            got = httpx.get(v["attributes"]["download_url"])
            assert got.status_code == 200 and got.content == data
            assert v["attributes"]["sha256"] == hashlib.sha256(data).hexdigest()
        one = c.get(f"/api/v1/library/savegames/{s1['id']}").json()["data"]
        assert httpx.get(one["attributes"]["download_url"]).content == v1
        r = httpx.get(one["attributes"]["download_url"], headers={"Range": "bytes=0-9"})
        assert r.status_code == 206 and r.content == v1[:10]
        assert c.get("/api/v1/library/savegames", params={"product_id": "other"}).json() == {
            "data": []}


def test_version_conflicts(backend: BackendServer, published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, token = backend.new_user([product])
    with backend.client(token) as c:
        _upload(c, product, "s", b"one")
        err = assert_error(_request(c, product, "s", b"two", base=None), 409,
                           "SAVEGAME_VERSION_CONFLICT")
        assert err["source"]["pointer"] == "/data/attributes/base_version"
        assert_error(_request(c, product, "new-slot", b"x", base=3), 409)
        # two devices both based on version 1: the first confirmed wins, the second conflicts
        a1 = _request(c, product, "s", b"device A", base=1).json()["data"]["attributes"]
        b1 = _request(c, product, "s", b"device B", base=1).json()["data"]["attributes"]
        for a, data in ((a1, b"device A"), (b1, b"device B")):
            assert httpx.put(a["upload_url"], content=data).status_code == 200
        assert _confirm(c, a1["internal_save_id"]).status_code == 200
        assert_error(_confirm(c, b1["internal_save_id"]), 409, "SAVEGAME_VERSION_CONFLICT")
        # confirming again is idempotent
        again = _confirm(c, a1["internal_save_id"])
        assert again.status_code == 200 and again.json()["data"]["attributes"]["version"] == 2
        assert_error(httpx.put(a1["upload_url"], content=b"device A"), 409,
                     "SAVEGAME_UPLOAD_CONFIRMED")


def test_limits_and_integrity(backend_factory: StartBackend,
                              published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    server = backend_factory(settings={"save_max_bytes": 10_000, "save_quota_bytes": 25_000,
                                       "save_keep_versions": 2})
    _, token = server.new_user([product])
    with server.client(token) as c:
        err = assert_error(_request(c, product, "big", os.urandom(10_001)), 413,
                           "SAVEGAME_FILE_TOO_LARGE")
        assert err["source"]["pointer"] == "/data/attributes/size_bytes"
        a = _request(c, product, "s", b"x" * 100).json()["data"]["attributes"]
        # nothing uploaded yet
        assert_error(_confirm(c, a["internal_save_id"]), 409, "SAVEGAME_NOT_UPLOADED")
        # more bytes than announced: refused while streaming
        assert_error(httpx.put(a["upload_url"], content=b"x" * 101), 413,
                     "SAVEGAME_FILE_TOO_LARGE")
        # other bytes than announced: confirm checks size and SHA-256
        assert httpx.put(a["upload_url"], content=b"y" * 100).status_code == 200
        assert_error(_confirm(c, a["internal_save_id"]), 422, "FILE_HASH_MISMATCH")
        assert httpx.put(a["upload_url"], content=b"x" * 99).status_code == 200
        assert_error(_confirm(c, a["internal_save_id"]), 422, "FILE_HASH_MISMATCH")
        assert httpx.put(a["upload_url"], content=b"x" * 100).status_code == 200
        assert _confirm(c, a["internal_save_id"]).status_code == 200
        _upload(c, product, "q1", os.urandom(10_000))
        _upload(c, product, "q2", os.urandom(10_000))
        assert_error(_request(c, product, "q3", os.urandom(5_000)), 422, "USER_QUOTA_EXCEEDED")
        # retention: only the newest save_keep_versions versions of a slot are kept
        _upload(c, product, "s", b"v2", base=1)
        _upload(c, product, "s", b"v3", base=2)
        slot = c.get("/api/v1/library/savegames", params={"slot": "s"}).json()["data"][0]
        assert [v["attributes"]["version"] for v in slot["attributes"]["versions"]] == [3, 2]
        assert_error(httpx.put(f"{server.api}/library/savegames/blobs/forged-token",
                               content=b"x"), 403, "SAVEGAME_UPLOAD_URL_INVALID")
        assert_error(httpx.get(f"{server.api}/library/savegames/blobs/forged.token"), 403,
                     "SAVEGAME_DOWNLOAD_URL_INVALID")
        assert_error(_request(c, product, "bad/slot", b"x"), 422)
        assert_error(_request(c, product, "s", b"x", sha256="nothex"), 422)


def test_saves_are_private(backend: BackendServer, published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, a_token = backend.new_user([product])
    _, b_token = backend.new_user([product])
    secret = os.urandom(3000)
    with backend.client(a_token) as a, backend.client(b_token) as b:
        save = _upload(a, product, "slot1", secret)
        pending = _request(a, product, "slot2", b"pending").json()["data"]["attributes"]
        assert b.get("/api/v1/library/savegames").json()["data"] == []
        assert_error(b.get(f"/api/v1/library/savegames/{save['id']}"), 404,
                     "SAVEGAME_SLOT_NOT_FOUND")
        # B cannot confirm A's upload, and B's own slot of the same name is independent
        assert_error(_confirm(b, pending["internal_save_id"]), 404, "SAVEGAME_UPLOAD_NOT_FOUND")
        b_save = _upload(b, product, "slot1", b"mine")
        assert b_save["attributes"]["version"] == 1
        assert_error(_request(b, "not-owned", "x", b"x"), 403, "PERMISSION_DENIED")
        a_slots = a.get("/api/v1/library/savegames").json()["data"]
        assert [s["attributes"]["latest_version"] for s in a_slots] == [1]
        url = a_slots[0]["attributes"]["versions"][0]["attributes"]["download_url"]
        assert httpx.get(url).content == secret
        token = url.rsplit("/", 1)[1]
        assert_error(httpx.get(url.replace(token, token[:-3] + "AAA")), 403)
