"""Cover art: ``DATA/store/covers/<product_id>.png`` served by
``GET /api/v1/products/{product_id}/cover``.

Covers belong to the catalog (next to the content store, so a copied store keeps them): the demo
catalog writes one per product (``backend.coverart.render_cover``) and ``launcher-backend cover``
sets or generates one for any product. The route is public, like the CDN the seed's
``cover_image_url`` points at: catalog art is no user's data, and an image loader can fetch it
without a bearer token. Answers carry a content ``ETag`` (``If-None-Match`` gets 304) and
``Cache-Control``; a file replaced in place (atomically) is picked up by its mtime and size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Response
from fastapi import Path as PathParam

from backend.catalog import LRU
from backend.context import Context, CtxDep
from backend.coverart import PNG_SIGNATURE, render_cover
from backend.db import Product
from backend.errors import NotFound
from backend.schemas import error_responses

__all__ = ["CACHE_CONTROL", "cover_path", "cover_url", "ensure_covers", "router", "write_cover"]

COVERS_DIR = "covers"
CACHE_CONTROL = "public, max-age=3600"
PRODUCT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

router = APIRouter(prefix="/api/v1/products", tags=["catalog"])


class ProductNotFound(NotFound):
    code = "PRODUCT_NOT_FOUND"
    title = "No such product"


class CoverNotFound(NotFound):
    code = "COVER_NOT_FOUND"
    title = "No cover for this product"


def cover_path(store_dir: Path, product_id: str) -> Path:
    return store_dir / COVERS_DIR / f"{product_id}.png"


def write_cover(store_dir: Path, product_id: str, data: bytes) -> Path:
    """Store a product's cover (PNG bytes) atomically: a new file replaces the old one, so a
    store copy that hard-links the old file keeps its own."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("a cover must be a PNG image")
    path = cover_path(store_dir, product_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def ensure_covers(store_dir: Path, products: Iterable[tuple[str, str]]) -> list[Path]:
    """A generated cover for each ``(product_id, title)`` that has none yet (idempotent)."""
    out = []
    for product_id, title in products:
        path = cover_path(store_dir, product_id)
        if not path.exists():
            write_cover(store_dir, product_id, render_cover(product_id, title))
        out.append(path)
    return out


def cover_url(ctx: Context, base: str, product_id: str) -> str | None:
    """The absolute URL of the product's cover, or None when it has none."""
    if not cover_path(ctx.settings.store_dir, product_id).is_file():
        return None
    return f"{base}{router.prefix}/{product_id}/cover"


# (path, mtime_ns, size) -> (bytes, etag): covers are small and read often
_cache: LRU[tuple[str, int, int], tuple[bytes, str]] = LRU(256)


def _load(path: Path) -> tuple[bytes, str] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None

    def read() -> tuple[bytes, str]:
        data = path.read_bytes()
        return data, f'"{hashlib.sha256(data).hexdigest()[:32]}"'

    return _cache.get_or_compute((str(path), st.st_mtime_ns, st.st_size), read)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


ProductIdPath = Annotated[str, PathParam(pattern=PRODUCT_ID_PATTERN, max_length=128,
                                         examples=["star-courier"])]

_PNG_RESPONSE = {"description": "The cover, a PNG image (ETag, Cache-Control)",
                 "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}


@router.get("/{product_id}/cover", response_class=Response,
            responses={200: _PNG_RESPONSE,
                       304: {"description": "Not modified (If-None-Match matched the ETag)"},
                       **error_responses(404, 422)})
def get_cover(
    product_id: ProductIdPath,
    ctx: CtxDep,
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    """The product's cover art (public: no token needed)."""
    found = _load(cover_path(ctx.settings.store_dir, product_id))
    if found is None:
        with ctx.db.session() as s:
            known = s.get(Product, product_id) is not None
        if not known and product_id not in ctx.catalog.products():
            raise ProductNotFound(f"product {product_id!r} not found", parameter="product_id")
        raise CoverNotFound(f"product {product_id!r} has no cover", parameter="product_id")
    data, etag = found
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(content=data, media_type="image/png", headers=headers)
