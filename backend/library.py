"""Library: entitlements (granted by ``launcher-backend grant``) and the user's library items."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend import playtime
from backend.catalog import Catalog
from backend.categories import categories_by_item, require_category, set_item_categories
from backend.context import CtxDep, UserDep
from backend.covers import cover_url
from backend.db import DownloadTask, LibraryItem, Product, User
from backend.errors import ApiError, NotFound, PermissionDenied
from backend.jsonapi import MAX_LIMIT, paginate
from backend.schemas import (
    CATEGORY_ID_PATTERN,
    Data,
    LibraryItemPatch,
    LibraryItemResource,
    Page,
    error_responses,
)

router = APIRouter(prefix="/api/v1/library", tags=["library"])

SortBy = Literal["name_asc", "name_desc", "last_played_desc", "added_at_desc", "playtime_desc"]
InstallStatus = Literal["installed", "not_installed", "installing", "updating", "error"]
ACTIVE = ("queued", "preparing", "downloading", "paused", "verifying")


class UnknownUser(ApiError):
    status = 404
    code = "USER_NOT_FOUND"
    title = "No such user"


# -- entitlements --------------------------------------------------------------------------------


def ensure_product(s: Session, product_id: str, title: str | None = None) -> Product:
    product = s.get(Product, product_id)
    if product is None:
        product = Product(id=product_id, title=title or product_id)
        s.add(product)
        s.flush()
    elif title and product.title != title:
        product.title = title
    return product


def grant(s: Session, username: str, product_id: str, *, title: str | None = None,
          acquisition_type: str = "purchase") -> LibraryItem:
    user = s.scalar(select(User).where(User.username == username))
    if user is None:
        raise UnknownUser(f"no user {username!r}")
    ensure_product(s, product_id, title)
    item = s.scalar(select(LibraryItem).where(LibraryItem.user_id == user.id,
                                              LibraryItem.product_id == product_id))
    if item is None:
        item = LibraryItem(user_id=user.id, product_id=product_id,
                           acquisition_type=acquisition_type)
        s.add(item)
        try:
            s.flush()
        except IntegrityError:  # granted concurrently
            s.rollback()
            item = s.scalar(select(LibraryItem).where(LibraryItem.user_id == user.id,
                                                      LibraryItem.product_id == product_id))
            assert item is not None
    return item


def require_entitlement(s: Session, user_id: str, product_id: str,
                        pointer: str | None = None) -> LibraryItem:
    """The user's library item for a product, or 403 (unknown and unowned look the same)."""
    item = s.scalar(select(LibraryItem).where(LibraryItem.user_id == user_id,
                                              LibraryItem.product_id == product_id))
    if item is None:
        raise PermissionDenied(f"you do not own product {product_id!r}", pointer=pointer)
    return item


# -- library items -------------------------------------------------------------------------------


def installation_statuses(s: Session, user_id: str) -> dict[str, str]:
    """Per product, derived from the newest download task (the backend cannot see disks)."""
    rows = s.execute(
        select(DownloadTask.product_id, DownloadTask.status, DownloadTask.kind,
               DownloadTask.updated_at)
        .where(DownloadTask.user_id == user_id, DownloadTask.status != "cancelled")
        .order_by(DownloadTask.updated_at)
    ).all()
    out: dict[str, str] = {}
    for product_id, status, kind, _ in rows:
        if status == "completed":
            out[product_id] = "installed"
        elif status in ACTIVE:
            out[product_id] = "updating" if kind == "update" else "installing"
        elif status == "error":
            out[product_id] = "error"
    return out


def item_resource(catalog: Catalog, item: LibraryItem, title: str, install_status: str, *,
                  cover: str | None = None, category_ids: list[str] | None = None
                  ) -> dict[str, Any]:
    category_ids = category_ids or []
    versions = catalog.versions(item.product_id)
    latest = versions[-1] if versions else None
    download = catalog.manifest_info(item.product_id, latest.version_id).install_bytes \
        if latest else 0
    return {
        "type": "libraryItem",
        "id": item.id,
        "attributes": {
            "product_id": item.product_id,
            "title": title,
            "cover_image_url": cover,
            "added_at": item.added_at,
            "acquisition_type": item.acquisition_type,
            "last_played_at": item.last_played_at,
            "total_playtime_seconds": item.total_playtime_seconds,
            "installation_status": install_status,
            "is_hidden": item.is_hidden,
            "user_rating": item.user_rating,
            "latest_version_id": latest.version_id if latest else None,
            "versions": [
                {"version_id": v.version_id, "created_at": v.created_at,
                 "total_size_bytes": v.total_size, "file_count": v.file_count}
                for v in versions
            ],
            "install_size_bytes": latest.total_size if latest else 0,
            "download_size_bytes": download,
            "category_ids": category_ids,
        },
        "relationships": {"categories": {"data": [
            {"type": "userCategory", "id": c} for c in category_ids]}},
        "links": {"self": f"/api/v1/library/items/{item.id}"},
    }


def _sort_key(sort_by: str) -> Any:
    def key(row: tuple[LibraryItem, str, str]) -> Any:
        item, title, _ = row
        if sort_by == "last_played_desc":
            return (-(item.last_played_at.timestamp() if item.last_played_at else 0), title.lower())
        if sort_by == "added_at_desc":
            return (-item.added_at.timestamp(), title.lower())
        if sort_by == "playtime_desc":
            return (-item.total_playtime_seconds, title.lower())
        return (title.lower(), item.product_id)

    return key


@router.get("/items", response_model=Page[LibraryItemResource],
            responses=error_responses(401, 404, 422))
def list_items(
    request: Request,
    ctx: CtxDep,
    user: UserDep,
    status: Annotated[InstallStatus | None, Query()] = None,
    category_id: Annotated[str | None, Query(
        max_length=64, pattern=CATEGORY_ID_PATTERN,
        description="only items in this category (one of the user's own)")] = None,
    search: Annotated[str | None, Query(max_length=200)] = None,
    sort_by: Annotated[SortBy, Query()] = "name_asc",
    include_hidden: Annotated[bool, Query()] = True,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
) -> dict[str, Any]:
    with ctx.db.session() as s:
        playtime.expire_stale(s, user.id, ctx.settings.playtime_timeout)
        rows = s.execute(
            select(LibraryItem, Product.title)
            .join(Product, Product.id == LibraryItem.product_id)
            .where(LibraryItem.user_id == user.id)
        ).all()
        statuses = installation_statuses(s, user.id)
        if category_id is not None:
            require_category(s, user.id, category_id, parameter="category_id")
        categories = categories_by_item(s, user.id)
    items = [(item, title, statuses.get(item.product_id, "not_installed")) for item, title in rows]
    if category_id is not None:
        items = [r for r in items if category_id in categories.get(r[0].id, ())]
    if status is not None:
        items = [r for r in items if r[2] == status]
    if search:
        needle = search.casefold()
        items = [r for r in items if needle in r[1].casefold() or needle in r[0].product_id]
    if not include_hidden:
        items = [r for r in items if not r[0].is_hidden]
    items.sort(key=_sort_key(sort_by))
    if sort_by == "name_desc":
        items.reverse()
    page_items, meta, links = paginate(
        items, page, limit, "/api/v1/library/items",
        {"status": status, "category_id": category_id, "search": search, "sort_by": sort_by,
         "include_hidden": None if include_hidden else "false"},
    )
    base = ctx.public_url(request)
    return {
        "data": [item_resource(ctx.catalog, i, t, st, cover=cover_url(ctx, base, i.product_id),
                               category_ids=categories.get(i.id))
                 for i, t, st in page_items],
        "meta": meta,
        "links": links,
    }


def _owned_item(s: Session, user_id: str, item_id: str) -> tuple[LibraryItem, str]:
    row = s.execute(
        select(LibraryItem, Product.title)
        .join(Product, Product.id == LibraryItem.product_id)
        .where(LibraryItem.id == item_id, LibraryItem.user_id == user_id)
    ).first()
    if row is None:
        raise NotFound(f"library item {item_id!r} not found", code="LIBRARY_ITEM_NOT_FOUND",
                       parameter="library_item_id")
    return row[0], row[1]


ItemId = Annotated[str, Path(max_length=64)]


@router.get("/items/{library_item_id}", response_model=Data[LibraryItemResource],
            responses=error_responses(401, 404, 422))
def get_item(library_item_id: ItemId, request: Request, ctx: CtxDep,
             user: UserDep) -> dict[str, Any]:
    with ctx.db.session() as s:
        item, title = _owned_item(s, user.id, library_item_id)
        status = installation_statuses(s, user.id).get(item.product_id, "not_installed")
        categories = categories_by_item(s, user.id, [item.id]).get(item.id)
    return {"data": item_resource(ctx.catalog, item, title, status,
                                  cover=cover_url(ctx, ctx.public_url(request), item.product_id),
                                  category_ids=categories)}


@router.patch("/items/{library_item_id}", response_model=Data[LibraryItemResource],
              responses=error_responses(401, 404, 422))
def patch_item(
    library_item_id: ItemId, body: Data[LibraryItemPatch], request: Request, ctx: CtxDep,
    user: UserDep
) -> dict[str, Any]:
    """Change ``is_hidden``, ``user_rating`` and the item's categories (``category_ids``
    replaces them; an id that is not one of the user's categories is 404
    ``CATEGORY_NOT_FOUND`` naming it, and nothing changes)."""
    attrs = body.data.attributes
    with ctx.db.session() as s:
        item, title = _owned_item(s, user.id, library_item_id)
        if "is_hidden" in attrs.model_fields_set and attrs.is_hidden is not None:
            item.is_hidden = attrs.is_hidden
        if "user_rating" in attrs.model_fields_set:
            item.user_rating = attrs.user_rating
        if attrs.category_ids is not None:
            set_item_categories(s, item, attrs.category_ids)
        s.flush()
        status = installation_statuses(s, user.id).get(item.product_id, "not_installed")
        categories = categories_by_item(s, user.id, [item.id]).get(item.id)
    return {"data": item_resource(ctx.catalog, item, title, status,
                                  cover=cover_url(ctx, ctx.public_url(request), item.product_id),
                                  category_ids=categories)}


def owned_count(s: Session, user_id: str) -> int:
    return int(s.scalar(select(func.count()).select_from(LibraryItem)
                        .where(LibraryItem.user_id == user_id)) or 0)
