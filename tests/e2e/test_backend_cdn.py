"""Signed CDN URLs: the backend's own route, extra ``launcher-backend cdn`` edges, nginx
``secure_link`` edges, HTTP Range, refusals and the per-user rate limit."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest

from backend.nginx import find_nginx
from backend.signing import SigningMode, sign
from patcher.signing import load_public_key, load_signed_manifest
from tests.conftest import (
    BackendServer,
    PublishedStore,
    StartBackend,
    assert_error,
    cdn_url,
    task_body,
)


def _task(backend: BackendServer, token: str, product: str) -> dict[str, Any]:
    with backend.client(token) as c:
        r = c.post("/api/v1/download/tasks", json=task_body(product))
    assert r.status_code == 202, r.text
    attrs: dict[str, Any] = r.json()["data"]["attributes"]
    return attrs


def _a_pack(backend: BackendServer, product: str) -> str:
    packs = sorted((backend.store_dir / "cdn" / product / "packs").iterdir(),
                   key=lambda p: -p.stat().st_size)
    return f"{product}/packs/{packs[0].name}"


def _tamper(query: str, **changes: str) -> str:
    params = dict(parse_qsl(query))
    params.update(changes)
    return urlencode(params, safe="/")


def _other_signature(sig: str) -> str:
    """The base64url signature with its first character changed: all six bits of the first
    character count, whereas overwriting the tail could leave it as it was (1 in 256 runs)."""
    return ("B" if sig[0] == "A" else "A") + sig[1:]


def test_signed_manifest_download_and_verify(backend: BackendServer,
                                             published_store: PublishedStore) -> None:
    main = published_store.main
    _, token = backend.new_user([main.product_id])
    task = _task(backend, token, main.product_id)
    src = task["cdnSources"][0]
    blob = httpx.get(cdn_url(src, task["manifest"]["path"]))
    sig = httpx.get(cdn_url(src, task["manifest"]["signaturePath"]))
    assert blob.status_code == 200 and sig.status_code == 200
    assert blob.headers["accept-ranges"] == "bytes"
    with backend.client(token) as c:
        key = c.get("/api/v1/download/manifest-key").json()["data"]["attributes"]["publicKey"]
    manifest = load_signed_manifest(blob.content, sig.content, load_public_key(key))
    assert manifest.version_id == task["versionId"]


def test_range_requests(backend: BackendServer, published_store: PublishedStore) -> None:
    main = published_store.main
    _, token = backend.new_user([main.product_id])
    src = _task(backend, token, main.product_id)["cdnSources"][0]
    rel = _a_pack(backend, main.product_id)
    data = (backend.store_dir / "cdn" / rel).read_bytes()
    size = len(data)
    url = cdn_url(src, rel)
    with httpx.Client() as c:
        r = c.get(url, headers={"Range": "bytes=100-4195"})
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes 100-4195/{size}"
        assert r.content == data[100:4196] and r.headers["content-length"] == "4096"
        r = c.get(url, headers={"Range": "bytes=-10"})
        assert r.status_code == 206 and r.content == data[-10:]
        r = c.get(url, headers={"Range": f"bytes={size - 5}-"})
        assert r.status_code == 206 and r.content == data[-5:]
        r = c.get(url, headers={"Range": f"bytes=0-{size * 2}"})  # clamped to the end
        assert r.status_code == 206 and r.content == data
        r = c.get(url, headers={"Range": "bytes=0-0,5-9"})  # multi-range: whole file is fine
        assert r.status_code == 200 and r.content == data
        err = assert_error(c.get(url, headers={"Range": f"bytes={size}-"}), 416,
                           "RANGE_NOT_SATISFIABLE")
        assert "bytes" in err["detail"]
        assert c.get(url, headers={"Range": f"bytes={size}-"}).headers["content-range"] == \
            f"bytes */{size}"
        full = c.get(url)
        assert full.status_code == 200 and full.content == data
        head = c.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == str(size)
        etag = full.headers["etag"]
        r = c.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
        assert r.status_code == 206
        r = c.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
        assert r.status_code == 200


def test_refused_tokens_never_leak_content(backend: BackendServer,
                                           published_store: PublishedStore) -> None:
    main = published_store.main
    other = next(p for p in published_store.products if p.product_id != main.product_id)
    _, token = backend.new_user([main.product_id])
    src = _task(backend, token, main.product_id)["cdnSources"][0]
    rel = _a_pack(backend, main.product_id)
    base, query = src["baseUrl"], src["query"]
    q = dict(parse_qsl(query))
    other_rel = f"{other.product_id}/manifests/{other.versions[0]}.manifest"
    cases = {
        "CDN_TOKEN_INVALID": [
            f"{base}{rel}?{_tamper(query, expires=str(int(q['expires']) + 3600))}",
            f"{base}{rel}?{_tamper(query, user='someone-else')}",
            f"{base}{rel}?{_tamper(query, sig=_other_signature(q['sig']))}",
        ],
        "CDN_TOKEN_WRONG_PRODUCT": [
            f"{base}{other_rel}?{query}",  # my signature, someone else's product
            f"{base}{other_rel}?{_tamper(query, prefix=other.product_id + '/')}",
        ],
        "CDN_TOKEN_MISSING": [f"{base}{rel}", f"{base}{rel}?expires=1&user=x"],
    }
    for code, urls in cases.items():
        for url in urls:
            r = httpx.get(url)
            err = assert_error(r, 403)
            assert err["code"] in (code, "CDN_TOKEN_INVALID"), (url, err)
            assert b"errors" in r.content and len(r.content) < 1000
    # traversal out of the product (or of the CDN root) is refused before the file system
    for path in (f"{main.product_id}/../{other_rel}", f"{main.product_id}/../../signing.key",
                 f"{main.product_id}/%2e%2e/{other_rel}"):
        r = httpx.get(f"{base}{path}?{query}")
        assert r.status_code in (403, 404), (path, r.status_code)
        assert b"errors" in r.content
    expired = sign(backend.cdn_key, SigningMode.HMAC, main.product_id,
                   q["user"], int(time.time()) - 1)
    assert_error(httpx.get(f"{base}{rel}?{expired.query}"), 403, "CDN_TOKEN_EXPIRED")
    missing = f"{base}{main.product_id}/packs/{'0' * 64}.pack?{query}"
    assert_error(httpx.get(missing), 404, "CDN_FILE_NOT_FOUND")


def test_another_users_url_is_bound_to_its_product(backend: BackendServer,
                                                   published_store: PublishedStore) -> None:
    """B cannot use A's signed URL for a product A does not own, nor reuse the query string for
    another product; A's URL itself works for anyone holding it until it expires (bearer URL)."""
    main = published_store.main
    other = next(p for p in published_store.products if p.product_id != main.product_id)
    _, a_token = backend.new_user([main.product_id])
    _, b_token = backend.new_user([other.product_id])
    a_src = _task(backend, a_token, main.product_id)["cdnSources"][0]
    b_src = _task(backend, b_token, other.product_id)["cdnSources"][0]
    a_rel = f"{main.product_id}/manifests/{main.versions[-1]}.manifest"
    b_rel = f"{other.product_id}/manifests/{other.versions[-1]}.manifest"
    assert httpx.get(cdn_url(a_src, a_rel)).status_code == 200
    assert httpx.get(cdn_url(b_src, b_rel)).status_code == 200
    assert_error(httpx.get(cdn_url(b_src, a_rel)), 403)  # B's token, A's product
    assert_error(httpx.get(cdn_url(a_src, b_rel)), 403)
    with backend.client(b_token) as b:  # B cannot obtain tokens for A's product at all
        assert_error(b.post("/api/v1/download/tasks", json=task_body(main.product_id)), 403)


def test_cdn_tokens_refresh_and_extra_edges_failover(backend_factory: StartBackend,
                                                     published_store: PublishedStore) -> None:
    main = published_store.main
    server = backend_factory()
    edge1 = server.start_cdn_edge()
    edge2 = server.start_cdn_edge()
    server.set_edges(["self", edge1.url, edge2.url])
    _, token = server.new_user([main.product_id])
    task = _task(server, token, main.product_id)
    rel = task["manifest"]["path"]
    assert [s["id"] for s in task["cdnSources"]] == ["edge-0", "edge-1", "edge-2"]
    assert [s["baseUrl"] for s in task["cdnSources"]] == [f"{server.url}/cdn/", edge1.url,
                                                          edge2.url]
    bodies = {httpx.get(cdn_url(s, rel)).content for s in task["cdnSources"]}
    assert len(bodies) == 1
    edge1.stop()  # an edge dies: the others still serve the same signed paths
    with pytest.raises(httpx.TransportError):
        httpx.get(cdn_url(task["cdnSources"][1], rel), timeout=2)
    assert httpx.get(cdn_url(task["cdnSources"][2], rel)).status_code == 200
    server.set_edges([edge2.url, "self"])
    with server.client(token) as c:
        r = c.post(f"/api/v1/download/tasks/{task_id(server, token)}/cdn-tokens")
    assert r.status_code == 200, r.text
    fresh = r.json()["data"]["attributes"]["cdnSources"]
    assert [s["baseUrl"] for s in fresh] == [edge2.url, f"{server.url}/cdn/"]
    assert all(httpx.get(cdn_url(s, rel)).status_code == 200 for s in fresh)
    # an edge refuses tampered tokens in the error format too
    bad = dict(fresh[0])
    bad["query"] = _tamper(bad["query"], user="mallory")
    assert_error(httpx.get(cdn_url(bad, rel)), 403, "CDN_TOKEN_INVALID")


def task_id(server: BackendServer, token: str) -> str:
    with server.client(token) as c:
        return str(c.get("/api/v1/download/tasks").json()["data"][0]["id"])


def test_cdn_token_rate_limit(backend_factory: StartBackend,
                              published_store: PublishedStore) -> None:
    main = published_store.main
    server = backend_factory(settings={"cdn_rate_capacity": 3, "cdn_rate_per_second": 0.5})
    _, token = server.new_user([main.product_id])
    _, other_token = server.new_user([main.product_id])
    with server.client(token) as c:
        tid = c.post("/api/v1/download/tasks", json=task_body(main.product_id)).json()["data"]["id"]
        codes = [c.post(f"/api/v1/download/tasks/{tid}/cdn-tokens").status_code for _ in range(4)]
        assert codes[:2] == [200, 200] and codes[-1] == 429
        r = c.post(f"/api/v1/download/tasks/{tid}/cdn-tokens")
        assert_error(r, 429, "CDN_TOKEN_RATE_LIMITED")
        assert 1 <= int(r.headers["retry-after"]) <= 2
        before = len(c.get("/api/v1/download/tasks").json()["data"])
        assert_error(c.post("/api/v1/download/tasks", json=task_body(main.product_id)), 429)
        assert len(c.get("/api/v1/download/tasks").json()["data"]) == before  # nothing stored
        time.sleep(int(r.headers["retry-after"]))
        assert c.post(f"/api/v1/download/tasks/{tid}/cdn-tokens").status_code == 200
    with server.client(other_token) as c:  # buckets are per user
        assert c.post("/api/v1/download/tasks", json=task_body(main.product_id)).status_code == 202


@pytest.mark.skipif(find_nginx() is None, reason="no nginx binary (apt-get install nginx-light)")
def test_nginx_secure_link_edge(backend_factory: StartBackend,
                                published_store: PublishedStore) -> None:
    main = published_store.main
    other = next(p for p in published_store.products if p.product_id != main.product_id)
    server = backend_factory()
    nginx = server.start_nginx_edge()
    assert nginx.url.startswith("http://127.0.0.1:")
    server.set_edges([{"baseUrl": nginx.url, "mode": "nginx"}, "self"])
    _, token = server.new_user([main.product_id])
    task = _task(server, token, main.product_id)
    src, own = task["cdnSources"]
    assert src["mode"] == "nginx" and src["baseUrl"] == nginx.url and "md5=" in src["query"]
    rel = _a_pack(server, main.product_id)
    data = (server.store_dir / "cdn" / rel).read_bytes()
    with httpx.Client() as c:
        r = c.get(cdn_url(src, rel))
        assert r.status_code == 200 and r.content == data
        r = c.get(cdn_url(src, rel), headers={"Range": "bytes=1000-8999"})
        assert r.status_code == 206 and r.content == data[1000:9000]
        assert r.headers["content-range"] == f"bytes 1000-8999/{len(data)}"
        # the backend's own route accepts nginx-mode tokens too, and vice versa refuses
        assert c.get(f"{own['baseUrl']}{rel}?{src['query']}").status_code == 200
        q = dict(parse_qsl(src["query"]))
        refused = [
            f"{src['baseUrl']}{rel}?{_tamper(src['query'], md5=_other_signature(q['md5']))}",
            f"{src['baseUrl']}{rel}?{_tamper(src['query'], user='mallory')}",
            f"{src['baseUrl']}{rel}?{_tamper(src['query'], expires=str(int(q['expires']) + 60))}",
            f"{src['baseUrl']}{other.product_id}/manifests/{other.versions[0]}.manifest"
            f"?{src['query']}",
            f"{src['baseUrl']}{rel}",
            f"{src['baseUrl']}{rel}?{own['query']}",  # an HMAC-mode token means nothing here
        ]
        expired = sign(server.cdn_key, SigningMode.NGINX, main.product_id, q["user"],
                       int(time.time()) - 1)
        refused.append(f"{src['baseUrl']}{rel}?{expired.query}")
        for url in refused:
            r = c.get(url)
            assert r.status_code == 403, (url, r.status_code)
            assert r.json()["errors"][0]["code"] == "CDN_TOKEN_INVALID"
            assert len(r.content) < 500
        traversal = c.get(f"http://127.0.0.1:{nginx.port}/cdn/{main.product_id}/../../"
                          f"signing.key?{src['query']}")
        assert traversal.status_code in (403, 404)
        assert c.get(f"http://127.0.0.1:{nginx.port}/signing.key").status_code == 404
