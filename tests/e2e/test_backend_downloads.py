"""Download tasks, queue, status history, updates and integrity (real backend process)."""

from __future__ import annotations

from typing import Any

import httpx

from patcher.sizing import install_bytes, update_cost
from tests.conftest import BackendServer, PublishedStore, assert_error, task_body


def _create(c: httpx.Client, product: str, version: str | None = None,
            priority: int = 0) -> dict[str, Any]:
    r = c.post("/api/v1/download/tasks", json=task_body(product, version, priority=priority))
    assert r.status_code == 202, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


def _report(c: httpx.Client, task_id: str, status: str, **attrs: Any) -> httpx.Response:
    return c.post(f"/api/v1/download/tasks/{task_id}/status",
                  json={"data": {"type": "downloadTaskStatus",
                                 "attributes": {"status": status, **attrs}}})


def test_create_task_latest_and_explicit_version(backend: BackendServer,
                                                 published_store: PublishedStore) -> None:
    main = published_store.main
    _, token = backend.new_user([main.product_id])
    with backend.client(token) as c:
        task = _create(c, main.product_id)
        a = task["attributes"]
        assert task["type"] == "downloadTask" and task["id"]
        assert a["status"] == "queued" and a["versionId"] == main.versions[-1]
        assert a["kind"] == "install" and a["downloadedBytes"] == 0 and a["errorMessage"] is None
        m = backend.store.read_manifest(main.product_id, main.versions[-1])
        assert a["totalSizeBytes"] == m.total_size
        assert a["downloadSizeBytes"] == install_bytes(m)
        assert a["manifest"] == {
            "path": f"{main.product_id}/manifests/{main.versions[-1]}.manifest",
            "signaturePath": f"{main.product_id}/manifests/{main.versions[-1]}.sig"}
        assert (backend.store_dir / "cdn" / a["manifest"]["signaturePath"]).exists()
        [src] = a["cdnSources"]
        assert src["id"] == "edge-0" and src["baseUrl"] == f"{backend.url}/cdn/"
        assert src["priority"] == 0 and src["expiresAt"].endswith("Z")
        assert "expires=" in src["query"] and "sig=" in src["query"]
        old = _create(c, main.product_id, main.versions[0])
        assert old["attributes"]["versionId"] == main.versions[0]
        got = c.get(f"/api/v1/download/tasks/{task['id']}").json()["data"]
        assert got["attributes"]["cdnSources"] is None  # tokens only on create / cdn-tokens
        assert got["attributes"]["createdAt"] == a["createdAt"]


def test_create_task_errors(backend: BackendServer, published_store: PublishedStore) -> None:
    main, other = published_store.main, published_store.products[-1]
    assert main.product_id != other.product_id
    _, token = backend.new_user([main.product_id])
    with backend.client(token) as c:
        err = assert_error(c.post("/api/v1/download/tasks", json=task_body(other.product_id)),
                           403, "PERMISSION_DENIED")
        assert err["source"] == {"pointer": "/data/attributes/productId"}
        assert_error(c.post("/api/v1/download/tasks", json=task_body("no-such-game")), 403,
                     "PERMISSION_DENIED")
        err = assert_error(c.post("/api/v1/download/tasks",
                                  json=task_body(main.product_id, "9.9.9")), 404,
                           "VERSION_NOT_FOUND")
        assert err["source"] == {"pointer": "/data/attributes/versionId"}
        for bad in ({"data": {"attributes": {"productId": main.product_id}}},
                    {"data": {"attributes": {"productId": "../etc", "targetPath": "/x"}}},
                    {"data": {"attributes": {"productId": main.product_id, "targetPath": "/x",
                                             "priority": 99}}},
                    {"nodata": 1}, []):
            assert_error(c.post("/api/v1/download/tasks", json=bad), 422, "VALIDATION_ERROR")
    assert_error(httpx.post(f"{backend.api}/download/tasks", json=task_body(main.product_id)), 401)


def test_status_reports_history_and_transitions(backend: BackendServer,
                                                published_store: PublishedStore) -> None:
    main = published_store.main
    _, token = backend.new_user([main.product_id])
    with backend.client(token) as c:
        tid = _create(c, main.product_id)["id"]
        r = _report(c, tid, "downloading", downloadedBytes=1000)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["attributes"]["downloadedBytes"] == 1000
        r = _report(c, tid, "error", downloadedBytes=2000, errorCode="CDN_UNREACHABLE",
                    errorMessage="all edges down")
        a = r.json()["data"]["attributes"]
        assert a["status"] == "error" and a["errorCode"] == "CDN_UNREACHABLE"
        assert a["errorMessage"] == "all edges down"
        r = c.post(f"/api/v1/download/tasks/{tid}/resume")
        assert r.status_code == 200
        a = r.json()["data"]["attributes"]
        assert a["status"] == "downloading" and a["errorCode"] is None and a["cdnSources"]
        paused = c.post(f"/api/v1/download/tasks/{tid}/pause").json()["data"]["attributes"]
        assert paused["status"] == "paused"
        assert c.post(f"/api/v1/download/tasks/{tid}/pause").status_code == 200  # idempotent
        _report(c, tid, "verifying", downloadedBytes=5000)
        done = _report(c, tid, "completed", downloadedBytes=6000).json()["data"]["attributes"]
        assert done["status"] == "completed" and done["queuePosition"] is None
        assert _report(c, tid, "completed").status_code == 200  # same terminal state: no-op
        assert_error(_report(c, tid, "downloading"), 409, "DOWNLOAD_TASK_STATE_CONFLICT")
        assert_error(c.post(f"/api/v1/download/tasks/{tid}/pause"), 409)
        assert_error(c.post(f"/api/v1/download/tasks/{tid}/resume"), 409)
        assert_error(c.delete(f"/api/v1/download/tasks/{tid}"), 409)
        assert_error(c.post(f"/api/v1/download/tasks/{tid}/cdn-tokens"), 409)
        hist = c.get(f"/api/v1/download/tasks/{tid}/history").json()["data"]
        assert [h["attributes"]["status"] for h in hist] == [
            "queued", "downloading", "error", "downloading", "paused", "verifying", "completed",
            "completed"]
        assert hist[2]["attributes"]["errorCode"] == "CDN_UNREACHABLE"
        assert hist[-1]["attributes"]["downloadedBytes"] == 6000
        assert_error(_report(c, tid, "exploded"), 422)
        assert_error(_report(c, tid, "downloading", downloadedBytes=-1), 422)
        items = c.get("/api/v1/library/items").json()["data"]
        assert items[0]["attributes"]["installation_status"] == "installed"


def test_cancel_queue_order_and_reorder(backend: BackendServer,
                                        published_store: PublishedStore) -> None:
    main = published_store.main
    _, token = backend.new_user([main.product_id])
    with backend.client(token) as c:
        t1 = _create(c, main.product_id, main.versions[0])["id"]
        t2 = _create(c, main.product_id, main.versions[1])["id"]
        t3 = _create(c, main.product_id, priority=5)["id"]
        queue = c.get("/api/v1/download/tasks/queue").json()["data"]
        assert [t["id"] for t in queue] == [t3, t1, t2]  # high priority first, then FIFO
        assert [t["attributes"]["queuePosition"] for t in queue] == [0, 1, 2]
        r = c.post("/api/v1/download/tasks/queue/reorder",
                   json={"data": [{"taskId": t2, "order": 0}, {"taskId": t1, "order": 1}]})
        assert r.status_code == 200
        assert [t["id"] for t in r.json()["data"]] == [t3, t2, t1]
        assert c.delete(f"/api/v1/download/tasks/{t2}").status_code == 204
        assert c.delete(f"/api/v1/download/tasks/{t2}").status_code == 204  # idempotent
        assert c.get(f"/api/v1/download/tasks/{t2}").json()["data"]["attributes"][
            "status"] == "cancelled"
        assert [t["id"] for t in c.get("/api/v1/download/tasks/queue").json()["data"]] == [t3, t1]
        listed = c.get("/api/v1/download/tasks", params={"limit": 2}).json()
        assert listed["meta"]["total_items"] == 3 and len(listed["data"]) == 2
        assert listed["links"]["next"] is not None
        cancelled = c.get("/api/v1/download/tasks", params={"status": "cancelled"}).json()
        assert [t["id"] for t in cancelled["data"]] == [t2]
        assert_error(c.post("/api/v1/download/tasks/queue/reorder",
                            json={"data": [{"taskId": "nope", "order": 0}]}), 404,
                     "DOWNLOAD_TASK_NOT_FOUND")
        assert_error(c.get("/api/v1/download/tasks", params={"status": "bogus"}), 422)


def test_cross_user_tasks_are_unreachable(backend: BackendServer,
                                          published_store: PublishedStore) -> None:
    main = published_store.main
    _, a_token = backend.new_user([main.product_id])
    _, b_token = backend.new_user([main.product_id])  # B even owns the same product
    with backend.client(a_token) as a, backend.client(b_token) as b:
        tid = _create(a, main.product_id)["id"]
        assert b.get("/api/v1/download/tasks").json()["data"] == []
        assert b.get("/api/v1/download/tasks/queue").json()["data"] == []
        for method, path, body in (
            ("GET", f"/api/v1/download/tasks/{tid}", None),
            ("GET", f"/api/v1/download/tasks/{tid}/history", None),
            ("POST", f"/api/v1/download/tasks/{tid}/pause", None),
            ("POST", f"/api/v1/download/tasks/{tid}/resume", None),
            ("POST", f"/api/v1/download/tasks/{tid}/cdn-tokens", None),
            ("DELETE", f"/api/v1/download/tasks/{tid}", None),
            ("POST", f"/api/v1/download/tasks/{tid}/status",
             {"data": {"attributes": {"status": "completed"}}}),
        ):
            assert_error(b.request(method, path, json=body), 404, "DOWNLOAD_TASK_NOT_FOUND")
        assert_error(b.post("/api/v1/download/tasks/queue/reorder",
                            json={"data": [{"taskId": tid, "order": 0}]}), 404)
        assert_error(b.post("/api/v1/download/updates/applied", json={"data": {"attributes": {
            "productId": main.product_id, "versionId": main.versions[-1], "status": "success",
            "taskId": tid}}}), 404)
        a_task = a.get(f"/api/v1/download/tasks/{tid}").json()["data"]["attributes"]
        assert a_task["status"] == "queued"


def test_update_check_sizes_match_patcher(backend: BackendServer,
                                          published_store: PublishedStore) -> None:
    main = published_store.main
    old_v, new_v = main.versions[-2], main.versions[-1]
    _, token = backend.new_user([p.product_id for p in published_store.products])
    other = next(p for p in published_store.products if p.product_id != main.product_id)
    body = {"data": [
        {"type": "installedProduct", "attributes": {"productId": main.product_id,
                                                    "currentVersionId": old_v}},
        {"type": "installedProduct", "attributes": {"productId": other.product_id,
                                                    "currentVersionId": other.versions[-1]}},
        {"type": "installedProduct", "attributes": {"productId": main.product_id,
                                                    "currentVersionId": "0.0.1-unknown"}},
    ]}
    with backend.client(token) as c:
        r = c.post("/api/v1/download/updates/check", json=body)
        assert r.status_code == 200, r.text
        first, second, unknown = (d["attributes"] for d in r.json()["data"])
        again = c.post("/api/v1/download/updates/check", json=body).json()  # cached
        assert again == r.json()
    store = backend.store
    old, new = store.read_manifest(main.product_id, old_v), store.read_manifest(main.product_id,
                                                                              new_v)
    cost = update_cost(old, new, store.read_delta(main.product_id, old_v, new_v))
    assert first["isUpdateAvailable"] is True and first["latestVersionId"] == new_v
    assert first["deltaDownloadSizeBytes"] == cost.download_bytes
    assert first["fullDownloadSizeBytes"] == cost.full_bytes
    assert first["downloadSizeBytes"] == min(cost.download_bytes, cost.full_bytes)
    assert first["updateType"] == ("delta" if cost.download_bytes < cost.full_bytes else "full")
    assert first["requiredDiskSpaceBytes"] > 0
    assert second["isUpdateAvailable"] is False and second["latestVersionId"] == other.versions[-1]
    assert "updateType" not in second or second["updateType"] is None
    assert unknown["updateType"] == "full"
    assert unknown["downloadSizeBytes"] == install_bytes(new)


def test_update_check_errors(backend: BackendServer, published_store: PublishedStore) -> None:
    main = published_store.main
    _, token = backend.new_user()
    with backend.client(token) as c:
        body = {"data": [{"type": "installedProduct", "attributes": {
            "productId": main.product_id, "currentVersionId": main.versions[0]}}]}
        err = assert_error(c.post("/api/v1/download/updates/check", json=body), 403,
                           "PERMISSION_DENIED")
        assert err["source"]["pointer"] == "/data/0/attributes/productId"
        assert_error(c.post("/api/v1/download/updates/check", json={"data": []}), 422)


def test_update_initiate_and_applied(backend: BackendServer,
                                     published_store: PublishedStore) -> None:
    main = published_store.main
    old_v, new_v = main.versions[-2], main.versions[-1]
    _, token = backend.new_user([main.product_id])
    with backend.client(token) as c:
        install = _create(c, main.product_id, old_v)
        _report(c, install["id"], "completed", downloadedBytes=1)
        r = c.post("/api/v1/download/updates/initiate", json={"data": {
            "type": "updateInitiateRequest", "attributes": {"productId": main.product_id}}})
        assert r.status_code == 202, r.text
        a = r.json()["data"]["attributes"]
        assert a["kind"] == "update" and a["fromVersionId"] == old_v and a["versionId"] == new_v
        assert a["targetPath"] == install["attributes"]["targetPath"]
        assert a["cdnSources"] and a["status"] == "queued"
        check = c.post("/api/v1/download/updates/check", json={"data": [{
            "attributes": {"productId": main.product_id, "currentVersionId": old_v}}]}).json()
        assert a["downloadSizeBytes"] == check["data"][0]["attributes"]["deltaDownloadSizeBytes"]
        if backend.store.read_delta(main.product_id, old_v, new_v) is not None:
            assert a["delta"] == {
                "path": f"{main.product_id}/deltas/{old_v}--{new_v}.delta",
                "signaturePath": f"{main.product_id}/deltas/{old_v}--{new_v}.sig"}
            assert (backend.store_dir / "cdn" / a["delta"]["path"]).exists()
        items = c.get("/api/v1/library/items").json()["data"]
        assert items[0]["attributes"]["installation_status"] == "updating"
        tid = r.json()["data"]["id"]
        r = c.post("/api/v1/download/updates/applied", json={"data": {
            "type": "updateApplied", "attributes": {
                "productId": main.product_id, "versionId": new_v, "fromVersionId": old_v,
                "status": "success", "updateType": "delta", "taskId": tid}}})
        assert r.status_code == 201, r.text
        assert r.json()["data"]["attributes"]["status"] == "success"
        assert c.get(f"/api/v1/download/tasks/{tid}").json()["data"]["attributes"][
            "status"] == "completed"
        c.post("/api/v1/download/updates/applied", json={"data": {"attributes": {
            "productId": main.product_id, "versionId": new_v, "fromVersionId": old_v,
            "status": "patch_failed", "detail": "bsdiff output hash mismatch"}}})
        hist = c.get("/api/v1/download/updates/history").json()["data"]
        assert [h["attributes"]["status"] for h in hist] == ["patch_failed", "success"]
        # already at the target: nothing to do
        assert_error(c.post("/api/v1/download/updates/initiate", json={"data": {"attributes": {
            "productId": main.product_id, "currentVersionId": new_v}}}), 409,
            "ALREADY_UP_TO_DATE")
        assert_error(c.post("/api/v1/download/updates/initiate", json={"data": {"attributes": {
            "productId": main.product_id, "targetVersionId": "7.7.7"}}}), 404)
        assert_error(c.post("/api/v1/download/updates/applied", json={"data": {"attributes": {
            "productId": main.product_id, "versionId": new_v, "status": "meh"}}}), 422)


def test_integrity_reference(backend: BackendServer, published_store: PublishedStore) -> None:
    main = published_store.main
    _, a_token = backend.new_user([main.product_id])
    _, b_token = backend.new_user()
    with backend.client(a_token) as a, backend.client(b_token) as b:
        r = a.post("/api/v1/download/integrity/verify", json={"data": {
            "type": "integrityVerificationRequest",
            "attributes": {"productId": main.product_id, "installedVersionId": main.versions[0]}}})
        assert r.status_code == 202, r.text
        v = r.json()["data"]
        m = backend.store.read_manifest(main.product_id, main.versions[0])
        assert v["attributes"]["fileCount"] == len(m.files)
        assert v["attributes"]["totalSizeBytes"] == m.total_size
        assert v["attributes"]["manifest"]["path"].endswith(f"{main.versions[0]}.manifest")
        assert a.get(f"/api/v1/download/integrity/verify/{v['id']}").json()["data"] == v
        assert_error(b.get(f"/api/v1/download/integrity/verify/{v['id']}"), 404,
                     "VERIFICATION_TASK_NOT_FOUND")
        assert_error(b.post("/api/v1/download/integrity/verify", json={"data": {"attributes": {
            "productId": main.product_id, "installedVersionId": main.versions[0]}}}), 403)
