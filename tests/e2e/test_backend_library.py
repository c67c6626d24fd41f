"""Library items, entitlements and the manifest key (real backend process)."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from patcher.manifest import decode_manifest
from patcher.signing import public_key_hex
from tests.conftest import BackendServer, PublishedStore, StartBackend, assert_error


def test_items_list_with_versions_and_sizes(backend: BackendServer,
                                            published_store: PublishedStore) -> None:
    products = [p.product_id for p in published_store.products]
    _, token = backend.new_user(products)
    with backend.client(token) as c:
        r = c.get("/api/v1/library/items")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["meta"] == {"total_items": len(products), "current_page": 1, "per_page": 20,
                            "total_pages": 1}
    assert body["links"]["next"] is None and body["links"]["self"].startswith("/api/v1/library/items")
    by_id = {i["attributes"]["product_id"]: i for i in body["data"]}
    main = published_store.main
    item = by_id[main.product_id]
    a = item["attributes"]
    assert item["type"] == "libraryItem" and item["links"]["self"].endswith(item["id"])
    assert a["title"] == main.title
    assert a["latest_version_id"] == main.versions[-1]
    assert [v["version_id"] for v in a["versions"]] == list(main.versions)
    latest = backend.store.read_manifest(main.product_id, main.versions[-1])
    assert a["install_size_bytes"] == latest.total_size
    assert a["download_size_bytes"] > 0
    assert a["installation_status"] == "not_installed"
    assert a["total_playtime_seconds"] == 0 and a["is_hidden"] is False


def test_pagination_search_sort_and_filters(backend: BackendServer,
                                            published_store: PublishedStore) -> None:
    products = sorted(published_store.products, key=lambda p: p.title.lower())
    _, token = backend.new_user([p.product_id for p in products])
    with backend.client(token) as c:
        page1 = c.get("/api/v1/library/items", params={"limit": 1}).json()
        assert page1["meta"]["total_pages"] == len(products)
        assert page1["data"][0]["attributes"]["title"] == products[0].title
        assert "page=2" in page1["links"]["next"] and page1["links"]["prev"] is None
        page2 = c.get(page1["links"]["next"]).json()
        assert page2["data"][0]["attributes"]["title"] == products[1].title
        assert page2["links"]["prev"] is not None
        desc = c.get("/api/v1/library/items", params={"sort_by": "name_desc"}).json()
        assert [d["attributes"]["title"] for d in desc["data"]] == \
            [p.title for p in reversed(products)]
        found = c.get("/api/v1/library/items",
                      params={"search": products[0].title[:4].upper()}).json()
        assert products[0].product_id in [d["attributes"]["product_id"] for d in found["data"]]
        none = c.get("/api/v1/library/items", params={"search": "zzz-no-such"}).json()
        assert none["data"] == [] and none["meta"]["total_items"] == 0
        inst = c.get("/api/v1/library/items", params={"status": "installed"}).json()
        assert inst["data"] == []
        beyond = c.get("/api/v1/library/items", params={"page": 99}).json()
        assert beyond["data"] == []
        for params in ({"limit": 0}, {"limit": 101}, {"page": 0}, {"sort_by": "random"},
                       {"status": "sideways"}):
            err = assert_error(c.get("/api/v1/library/items", params=params), 422,
                               "VALIDATION_ERROR")
            assert "parameter" in err["source"]


def test_patch_item_hidden_and_rating(backend: BackendServer,
                                      published_store: PublishedStore) -> None:
    _, token = backend.new_user([published_store.main.product_id])
    with backend.client(token) as c:
        item = c.get("/api/v1/library/items").json()["data"][0]
        body = {"data": {"type": "libraryItemUpdate", "id": item["id"],
                         "attributes": {"is_hidden": True, "user_rating": 4}}}
        r = c.patch(f"/api/v1/library/items/{item['id']}", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["attributes"]["is_hidden"] is True
        assert r.json()["data"]["attributes"]["user_rating"] == 4
        visible = c.get("/api/v1/library/items", params={"include_hidden": "false"}).json()
        assert visible["data"] == []
        # clearing the rating leaves is_hidden alone
        r = c.patch(f"/api/v1/library/items/{item['id']}",
                    json={"data": {"attributes": {"user_rating": None}}})
        assert r.json()["data"]["attributes"] | {} == r.json()["data"]["attributes"]
        assert r.json()["data"]["attributes"]["user_rating"] is None
        assert r.json()["data"]["attributes"]["is_hidden"] is True
        err = assert_error(c.patch(f"/api/v1/library/items/{item['id']}",
                                   json={"data": {"attributes": {"user_rating": 9}}}), 422)
        assert err["source"]["pointer"] == "/data/attributes/user_rating"
        assert_error(c.patch("/api/v1/library/items/not-an-item",
                             json={"data": {"attributes": {"is_hidden": False}}}), 404,
                     "LIBRARY_ITEM_NOT_FOUND")
        assert c.get(f"/api/v1/library/items/{item['id']}").status_code == 200


def test_other_users_items_are_invisible(backend: BackendServer,
                                         published_store: PublishedStore) -> None:
    _, a_token = backend.new_user([published_store.main.product_id])
    _, b_token = backend.new_user()
    with backend.client(a_token) as a, backend.client(b_token) as b:
        item_id = a.get("/api/v1/library/items").json()["data"][0]["id"]
        assert b.get("/api/v1/library/items").json()["data"] == []
        assert_error(b.get(f"/api/v1/library/items/{item_id}"), 404, "LIBRARY_ITEM_NOT_FOUND")
        assert_error(b.patch(f"/api/v1/library/items/{item_id}",
                             json={"data": {"attributes": {"is_hidden": True}}}), 404)
        assert a.get(f"/api/v1/library/items/{item_id}").json()["data"]["attributes"][
            "is_hidden"] is False


def test_manifest_key_verifies_store_manifests(backend: BackendServer,
                                               published_store: PublishedStore) -> None:
    _, token = backend.new_user()
    with backend.client(token) as c:
        r = c.get("/api/v1/download/manifest-key")
    assert r.status_code == 200
    data = r.json()["data"]
    assert data["type"] == "manifestKey" and data["attributes"]["algorithm"] == "ed25519"
    hex_key = data["attributes"]["publicKey"]
    assert hex_key == public_key_hex(backend.store.signing_key)
    main = published_store.main
    rel = backend.store.manifest_rel(main.product_id, main.versions[0])
    blob = backend.store.path(rel).read_bytes()
    sig = backend.store.path(rel).with_suffix(".sig").read_bytes()
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key)).verify(sig, blob)
    assert_error(backend.client().get("/api/v1/download/manifest-key"), 401)


def test_signed_manifests_come_from_the_download_service(backend: BackendServer,
                                                         published_store: PublishedStore) -> None:
    """``GET /api/v1/download/manifests/{productId}``: a version's published bytes with its
    version and signature in headers (the latest without ``versionId``), for an owner only."""
    main = published_store.main
    _, token = backend.new_user([main.product_id])
    _, stranger = backend.new_user()
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex(backend.store.signing_key)))
    path = f"/api/v1/download/manifests/{main.product_id}"
    with backend.client(token) as c:
        for asked, version in [(main.versions[0], main.versions[0]), (None, main.versions[-1])]:
            r = c.get(path, params={"versionId": asked} if asked else None)
            assert r.status_code == 200, r.text
            rel = backend.store.manifest_rel(main.product_id, version)
            assert r.content == backend.store.path(rel).read_bytes()
            assert r.headers["content-type"] == "application/octet-stream"
            assert r.headers["x-manifest-version"] == version
            sig = base64.b64decode(r.headers["x-manifest-signature"], validate=True)
            assert sig == backend.store.path(rel).with_suffix(".sig").read_bytes()
            key.verify(sig, r.content)
            assert r.headers["x-manifest-form"] == "json"
        # the binary form when asked for (checked with its own signature), the JSON one when
        # a version has none (published before the form existed), as the header says
        version = main.versions[0]
        bin_path = backend.store.path(backend.store.manifest_bin_rel(main.product_id, version))
        r = c.get(path, params={"versionId": version, "form": "binary"})
        assert r.status_code == 200, r.text
        assert r.headers["x-manifest-form"] == "binary" and r.content == bin_path.read_bytes()
        key.verify(base64.b64decode(r.headers["x-manifest-signature"]), r.content)
        assert decode_manifest(r.content) == backend.store.read_manifest(main.product_id, version)
        # without its signature (or without itself) the binary form is not served
        sig_path = backend.store.path(backend.store.manifest_bin_sig_rel(main.product_id, version))
        for missing in (sig_path, bin_path):
            kept = missing.read_bytes()
            missing.unlink()
            try:
                r = c.get(path, params={"versionId": version, "form": "binary"})
                assert r.headers["x-manifest-form"] == "json"
                assert r.content == backend.store.path(
                    backend.store.manifest_rel(main.product_id, version)).read_bytes()
            finally:
                missing.write_bytes(kept)
        assert_error(c.get(path, params={"form": "xml"}), 422)
        assert_error(c.get(path, params={"versionId": "9.9.9"}), 404, "VERSION_NOT_FOUND")
        assert_error(c.get(path, params={"versionId": "../x"}), 422)
        assert_error(c.get("/api/v1/download/manifests/no-such-game"), 403)
        assert_error(c.get("/api/v1/download/manifests/bad%20id"), 422)
    with backend.client(stranger) as c:
        assert_error(c.get(path), 403)
    assert_error(backend.client().get(path), 401)


def test_unknown_routes_and_methods_use_the_error_format(backend: BackendServer) -> None:
    with backend.client() as c:
        assert_error(c.get("/api/v1/no-such-thing"), 404, "NOT_FOUND")
        assert_error(c.delete("/api/v1/library/items"), 405, "METHOD_NOT_ALLOWED")
        assert c.get("/api/v1/health").json() == {"status": "ok"}
        doc = c.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/api/v1/auth/token", "/api/v1/download/tasks", "/api/v1/library/items",
                 "/api/v1/library/playtime/sessions/start", "/api/v1/library/savegames/upload-url",
                 "/api/v1/download/updates/check", "/cdn/{path}"):
        assert path in doc["paths"], path
    resp = doc["paths"]["/api/v1/download/tasks"]["post"]["responses"]
    assert "202" in resp and "403" in resp
    assert resp["403"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_serve_demo_creates_catalog_user_and_grants(backend_factory: StartBackend) -> None:
    server = backend_factory(with_store=False, args=["--demo", "--demo-size", "1"])
    assert any("log in as user 'demo' with password 'demo'" in line
               for line in server.process.lines), server.process.lines
    token = server.login("demo", "demo")
    with server.client(token) as c:
        items = c.get("/api/v1/library/items").json()["data"]
        assert len(items) >= 2
        for item in items:
            a = item["attributes"]
            assert a["title"] != a["product_id"] and len(a["versions"]) >= 2
            r = c.post("/api/v1/download/tasks", json={"data": {"attributes": {
                "productId": a["product_id"], "targetPath": "/games/demo"}}})
            assert r.status_code == 202
    marker = server.data_dir / "demo.json"
    assert marker.exists()
    # a second start reuses everything (no second catalog, no duplicate user)
    server.restart()
    assert not any("creating" in line for line in server.process.lines)
    with server.client(server.login("demo", "demo")) as c:
        assert len(c.get("/api/v1/library/items").json()["data"]) == len(items)
