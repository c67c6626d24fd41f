"""Cover art of the demo catalog: library items carry ``cover_image_url``, the public cover route
serves valid, distinct, cacheable PNGs, unknown products are 404 (real backend process)."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import httpx

from backend.coverart import COVER_HEIGHT, COVER_WIDTH, encode_png, render_cover
from tests.conftest import BackendServer, PublishedStore, StartBackend, assert_error, cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Parse a PNG independently of the backend's writer: signature, chunk CRCs, IHDR (8-bit RGB,
    no interlace), IDAT inflated to exactly one filter byte plus 3 * width bytes per row.
    Returns (width, height, rows)."""
    assert data[:8] == PNG_SIGNATURE
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(tag + body) == crc, tag
        chunks.append((tag, body))
        pos += 12 + n
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color, interlace) == (8, 2, 0)
    raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == height * stride
    assert all(raw[y * stride] == 0 for y in range(height))  # filter "none" on every row
    return width, height, [raw[y * stride + 1:(y + 1) * stride] for y in range(height)]


def items(backend: BackendServer, token: str) -> dict[str, dict[str, Any]]:
    with backend.client(token) as c:
        r = c.get("/api/v1/library/items")
    assert r.status_code == 200, r.text
    return {d["attributes"]["product_id"]: d for d in r.json()["data"]}


def test_library_items_carry_cover_urls_serving_pngs(backend: BackendServer,
                                                     published_store: PublishedStore) -> None:
    products = {p.product_id: p for p in published_store.products}
    _, token = backend.new_user(list(products))
    by_product = items(backend, token)
    assert set(by_product) == set(products)
    for pid, item in by_product.items():
        url = item["attributes"]["cover_image_url"]
        assert url == f"{backend.url}/api/v1/products/{pid}/cover"
        with backend.client(token) as c:
            one = c.get(f"/api/v1/library/items/{item['id']}").json()["data"]
        assert one["attributes"]["cover_image_url"] == url
        # public, like the CDN the seed's cover URLs point at: no token needed
        r = httpx.get(url, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        assert r.headers["cache-control"].startswith("public, max-age=")
        etag = r.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"')
        assert int(r.headers["content-length"]) == len(r.content)
        assert r.content[:8] == PNG_SIGNATURE
        assert r.content[12:16] == b"IHDR"
        assert struct.unpack(">II", r.content[16:24]) == (COVER_WIDTH, COVER_HEIGHT) == (600, 900)
        width, height, rows = read_png(r.content)
        assert (width, height) == (600, 900)
        assert len(set(rows)) > 100  # a picture, not a flat fill
        # deterministic: exactly what the demo catalog drew from the product id and title
        assert r.content == render_cover(pid, products[pid].title)
        # revalidation
        again = httpx.get(url, headers={"If-None-Match": etag}, timeout=30)
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag
        assert httpx.get(url, headers={"If-None-Match": f'"x", W/{etag}'},
                         timeout=30).status_code == 304
        assert httpx.get(url, headers={"If-None-Match": '"other"'}, timeout=30).status_code == 200


def test_covers_differ_between_products(backend: BackendServer,
                                        published_store: PublishedStore) -> None:
    assert len(published_store.products) >= 2
    images = {}
    for p in published_store.products:
        r = httpx.get(f"{backend.url}/api/v1/products/{p.product_id}/cover", timeout=30)
        assert r.status_code == 200
        images[p.product_id] = (r.headers["etag"], r.content, read_png(r.content)[2])
    etags = {etag for etag, _, _ in images.values()}
    assert len(etags) == len(images)
    (_, _, rows_a), (_, _, rows_b) = list(images.values())[:2]
    differing = sum(a != b for a, b in zip(rows_a, rows_b, strict=True))
    assert differing > 0.9 * COVER_HEIGHT  # different pictures, not a changed pixel
    # and the same product always gets the same picture
    pid = published_store.main.product_id
    assert render_cover(pid, "Any") == render_cover(pid, "Any")
    assert render_cover(pid, "Any") != render_cover(pid + "-2", "Any")


def test_unknown_product_cover_is_404(backend: BackendServer) -> None:
    with backend.client() as c:
        err = assert_error(c.get("/api/v1/products/no-such-product/cover"), 404,
                           "PRODUCT_NOT_FOUND")
        assert "no-such-product" in err["detail"]
        assert err["source"] == {"parameter": "product_id"}
        for bad in ("..", ".hidden", "a" * 129, "sp%20ace"):
            r = c.get(f"/api/v1/products/{bad}/cover")
            assert r.status_code in (404, 422), (bad, r.status_code)
            assert_error(r, r.status_code)
        assert_error(c.get("/api/v1/products/x/cover/../../secrets/jwt.key"), 404)
        assert_error(c.post("/api/v1/products/no-such-product/cover"), 405, "METHOD_NOT_ALLOWED")
    # a product without art: its items carry no URL and the route says so
    name, token = backend.new_user()
    backend.grant(name, "coverless-game", title="Coverless Game")
    assert items(backend, token)["coverless-game"]["attributes"]["cover_image_url"] is None
    with backend.client() as c:
        assert_error(c.get("/api/v1/products/coverless-game/cover"), 404, "COVER_NOT_FOUND")


def test_cover_command_sets_or_draws_a_cover(backend: BackendServer) -> None:
    name, token = backend.new_user()
    backend.grant(name, "art-game", title="Art Game")
    db = ["--db", backend.database_url] if backend.database_url else []
    url = f"{backend.url}/api/v1/products/art-game/cover"
    out = cli("cover", "--data", str(backend.data_dir), *db, "art-game")
    assert "art-game" in out.stdout
    drawn = httpx.get(url, timeout=30)
    assert drawn.status_code == 200 and drawn.content == render_cover("art-game", "Art Game")
    assert items(backend, token)["art-game"]["attributes"]["cover_image_url"] == url
    # a publisher's own PNG replaces it (picked up without a restart)
    own = encode_png(2, 3, [b"\x10\x20\x30" * 2] * 3)
    path = backend.data_dir / "own.png"
    path.write_bytes(own)
    cli("cover", "--data", str(backend.data_dir), *db, "art-game", str(path))
    r = httpx.get(url, timeout=30)
    assert r.content == own and r.headers["etag"] != drawn.headers["etag"]
    assert read_png(r.content)[:2] == (2, 3)
    path.write_bytes(b"GIF89a not a png")
    bad = cli("cover", "--data", str(backend.data_dir), *db, "art-game", str(path), check=False)
    assert bad.returncode == 1 and "PNG" in bad.stderr
    assert httpx.get(url, timeout=30).content == own
    usage = cli("cover", "--data", str(backend.data_dir), "../escape", check=False)
    assert usage.returncode == 2


def test_serve_demo_draws_covers_and_restores_missing_ones(
        backend_factory: StartBackend) -> None:
    server = backend_factory(with_store=False, args=["--demo", "--demo-size", "1"])
    token = server.login("demo", "demo")
    demo = items(server, token)
    assert len(demo) >= 2
    covers = server.store_dir / "covers"
    for pid, item in demo.items():
        assert item["attributes"]["cover_image_url"] == f"{server.url}/api/v1/products/{pid}/cover"
        assert (covers / f"{pid}.png").is_file()
    # a demo data dir from before covers existed gets them on its next start
    for p in covers.iterdir():
        p.unlink()
    assert all(i["attributes"]["cover_image_url"] is None
               for i in items(server, token).values())
    server.restart()
    for pid, item in items(server, server.login("demo", "demo")).items():
        r = httpx.get(item["attributes"]["cover_image_url"], timeout=30)
        assert r.status_code == 200 and read_png(r.content)[:2] == (600, 900), pid
