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
        forged = token[:-3] + ("BBB" if token.endswith("AAA") else "AAA")  # never the token itself
        assert_error(httpx.get(url.replace(token, forged)), 403)


def _seed_request(c: httpx.Client, product: str, slot_name: str, data: bytes,
                  **over: Any) -> httpx.Response:
    """The request exactly as the seed (3.1.5) writes it."""
    attrs = {"product_id": product, "save_slot_name": slot_name, "file_size_bytes": len(data),
             "file_hash_sha256": hashlib.sha256(data).hexdigest(), **over}
    return c.post("/api/v1/library/savegames/upload-url",
                  json={"data": {"type": "savegameUploadRequest", "attributes": attrs}})


def test_the_seeds_field_names_are_accepted(backend: BackendServer,
                                            published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, token = backend.new_user([product])
    v1, v2 = os.urandom(2000), os.urandom(3000)
    with backend.client(token) as c:
        r = _seed_request(c, product, "slot1_manual_save", v1)
        assert r.status_code == 200, r.text
        a = r.json()["data"]["attributes"]
        assert a["slot"] == "slot1_manual_save" and a["latest_version"] is None
        assert a["base_version"] is None and a["s3_path"].endswith(a["internal_save_id"])
        assert httpx.put(a["upload_url"], content=v1).status_code == 200
        # confirm with the seed's s3_path; a wrong one is refused
        bad = c.post("/api/v1/library/savegames/confirm-upload", json={"data": {
            "type": "savegameUploadConfirmation",
            "attributes": {"internal_save_id": a["internal_save_id"], "s3_path": "x/y"}}})
        assert assert_error(bad, 422)["source"]["pointer"] == "/data/attributes/s3_path"
        r = c.post("/api/v1/library/savegames/confirm-upload", json={"data": {
            "type": "savegameUploadConfirmation",
            "attributes": {"internal_save_id": a["internal_save_id"], "s3_path": a["s3_path"]}}})
        assert r.status_code == 200, r.text
        save = r.json()["data"]["attributes"]
        # both vocabularies in the answer
        assert save["slot"] == save["slot_name"] == "slot1_manual_save"
        assert save["size_bytes"] == save["file_size_bytes"] == len(v1)
        assert save["sha256"] == save["file_hash_sha256"] == hashlib.sha256(v1).hexdigest()
        assert save["s3_path"] == a["s3_path"] and save["version"] == 1
        assert save["created_at"] == save["server_timestamp"]
        # the seed's request has no base version: the upload replaces the slot (last writer
        # wins) and says which version it replaced
        r = _seed_request(c, product, "slot1_manual_save", v2, comment="before the boss")
        assert r.status_code == 200, r.text
        assert r.json()["data"]["attributes"]["latest_version"] == 1
        # mixing the vocabularies is fine when they agree, refused when they do not
        assert _seed_request(c, product, "s", b"x", slot="s", sha256=hashlib.sha256(
            b"x").hexdigest()).status_code == 200
        assert_error(_seed_request(c, product, "s", b"x", slot="other"), 422)
        assert_error(_seed_request(c, product, "s", b"x", size_bytes=2), 422)
        missing = c.post("/api/v1/library/savegames/upload-url", json={"data": {
            "type": "savegameUploadRequest", "attributes": {"product_id": product,
                                                           "save_slot_name": "s"}}})
        err = assert_error(missing, 422)
        assert "file_size_bytes" in err["detail"] and "file_hash_sha256" in err["detail"]
        assert_error(_seed_request(c, product, "s", b"x", file_hash_sha256="abc"), 422)


def test_slot_listing_has_what_a_three_way_sync_needs(backend: BackendServer,
                                                      published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, token = backend.new_user([product])
    versions = [os.urandom(100 + i) for i in range(3)]
    with backend.client(token) as c:
        for i, data in enumerate(versions):
            _upload(c, product, "slot1", data, base=i or None)
        slot = c.get("/api/v1/library/savegames",
                     params={"product_id": product, "slot": "slot1"}).json()["data"][0]
        a = slot["attributes"]
        newest = a["versions"][0]
        assert a["latest_version"] == 3 and a["version_count"] == 3
        assert a["latest_savegame_id"] == newest["id"]
        assert a["latest_sha256"] == hashlib.sha256(versions[2]).hexdigest()
        assert a["latest_size_bytes"] == len(versions[2])
        assert a["latest_created_at"] == newest["attributes"]["created_at"]
        # a device that last synced version 2 cannot overwrite 3 blindly
        assert_error(_request(c, product, "slot1", b"stale edit", base=2), 409,
                     "SAVEGAME_VERSION_CONFLICT")
        # restore version 1: it becomes version 4 (2 and 3 stay recoverable)
        v1_id = a["versions"][2]["id"]
        assert_error(c.post(f"/api/v1/library/savegames/{v1_id}/restore", json={"data": {
            "type": "savegameRestore", "attributes": {"base_version": 2}}}), 409,
            "SAVEGAME_VERSION_CONFLICT")
        r = c.post(f"/api/v1/library/savegames/{v1_id}/restore", json={"data": {
            "type": "savegameRestore", "attributes": {"base_version": 3}}})
        assert r.status_code == 200, r.text
        restored = r.json()["data"]["attributes"]
        assert restored["version"] == 4 and restored["sha256"] == hashlib.sha256(
            versions[0]).hexdigest()
        assert httpx.get(restored["download_url"]).content == versions[0]
        listed = c.get("/api/v1/library/savegames", params={"slot": "slot1"}).json()["data"][0]
        got = {v["attributes"]["version"]: httpx.get(v["attributes"]["download_url"]).content
               for v in listed["attributes"]["versions"]}
        assert got == {4: versions[0], 3: versions[2], 2: versions[1], 1: versions[0]}
        assert_error(c.post("/api/v1/library/savegames/no-such/restore", json={"data": {
            "type": "savegameRestore", "attributes": {}}}), 404, "SAVEGAME_SLOT_NOT_FOUND")


def test_seed_sized_errors_and_other_users_versions(backend_factory: StartBackend,
                                                    published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    server = backend_factory(settings={"save_max_bytes": 1000, "save_quota_bytes": 1500})
    _, a_token = server.new_user([product])
    _, b_token = server.new_user([product])
    with server.client(a_token) as a, server.client(b_token) as b:
        err = assert_error(_seed_request(a, product, "big", os.urandom(1001)), 413,
                           "SAVEGAME_FILE_TOO_LARGE")
        assert err["source"]["pointer"] == "/data/attributes/file_size_bytes"
        save = _upload(a, product, "s", os.urandom(900))
        assert_error(_seed_request(a, product, "t", os.urandom(700)), 422, "USER_QUOTA_EXCEEDED")
        # restoring needs room too
        assert_error(a.post(f"/api/v1/library/savegames/{save['id']}/restore", json={"data": {
            "type": "savegameRestore", "attributes": {}}}), 422, "USER_QUOTA_EXCEEDED")
        # B can neither restore nor read A's version
        assert_error(b.post(f"/api/v1/library/savegames/{save['id']}/restore", json={"data": {
            "type": "savegameRestore", "attributes": {}}}), 404, "SAVEGAME_SLOT_NOT_FOUND")
        assert b.get("/api/v1/library/savegames").json()["data"] == []
