"""Library: entitlements (granted by ``launcher-backend grant``) and the user's library items."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import event, func, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend import events, playtime
from backend.catalog import Catalog
from backend.categories import categories_by_item, require_category, set_item_categories
from backend.context import Context, CtxDep, UserDep
from backend.covers import cover_url
from backend.db import DownloadTask, LibraryItem, Product, User, utcnow
from backend.errors import ApiError, NotFound, PermissionDenied
from backend.jsonapi import MAX_LIMIT, iso, paginate
from backend.schemas import (
    CATEGORY_ID_PATTERN,
    Data,
    InstallationEvent,
    LibraryItemPatch,
    LibraryItemResource,
    Page,
    error_responses,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/library", tags=["library"])

SortBy = Literal["name_asc", "name_desc", "last_played_desc", "added_at_desc", "playtime_desc"]
InstallStatus = Literal["installed", "not_installed", "installing", "updating", "repair_needed",
                        "error"]
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


LAUNCHER_PRODUCT_PREFIX = "game-launcher-"  # the launcher's own builds, one product per channel


def is_launcher_product(product_id: str) -> bool:
    """The launcher itself (``game-launcher-stable``, ``-beta``): every player has it, and it
    is not a game — library and family lists leave it out."""
    return product_id.startswith(LAUNCHER_PRODUCT_PREFIX)


def require_entitlement(s: Session, user_id: str, product_id: str,
                        pointer: str | None = None, *,
                        catalog: Catalog | None = None) -> LibraryItem:
    """The user's library item for a product, or 403 (unknown and unowned look the same).

    With ``catalog`` (the download routes), a launcher product published in the store is
    granted on first use to every player (the self-update downloads it like a game): nobody
    runs ``launcher-backend grant`` per player and channel."""
    item = s.scalar(select(LibraryItem).where(LibraryItem.user_id == user_id,
                                              LibraryItem.product_id == product_id))
    if item is None and catalog is not None and is_launcher_product(product_id) \
            and product_id in catalog.products():
        item = _grant_launcher(s, user_id, product_id)
    if item is None:
        raise PermissionDenied(f"you do not own product {product_id!r}", pointer=pointer)
    return item


def _grant_launcher(s: Session, user_id: str, product_id: str) -> LibraryItem:
    try:
        with s.begin_nested():  # a savepoint: a concurrent first use loses only this insert
            ensure_product(s, product_id, "Game Launcher")
            item = LibraryItem(user_id=user_id, product_id=product_id,
                               acquisition_type="free_to_play")
            s.add(item)
            s.flush()
    except IntegrityError:
        found = s.scalar(select(LibraryItem).where(LibraryItem.user_id == user_id,
                                                   LibraryItem.product_id == product_id))
        assert found is not None
        return found
    log.info("granted the launcher product %s to user %s", product_id, user_id)
    return item


# -- library items -------------------------------------------------------------------------------


def derive_install_status(task: tuple[str, str, datetime] | None,
                          reported: tuple[str, datetime] | None) -> str:
    """Pure: the item's installation status from the newest download task (status, kind,
    updated_at) and the client's newest report (status, at) — whichever happened later. The
    backend cannot see disks: an uninstall only exists as a report."""
    from_task: str | None = None
    if task is not None:
        status, kind, _ = task
        if status == "completed":
            from_task = "installed"
        elif status in ACTIVE:
            from_task = "updating" if kind == "update" else "installing"
        elif status == "error":
            from_task = "error"
    if reported is not None and (task is None or from_task is None or reported[1] >= task[2]):
        return reported[0]
    return from_task or "not_installed"


def installation_states(s: Session, user_id: str, items: Sequence[LibraryItem] | None = None
                        ) -> dict[str, tuple[str, str | None]]:
    """Per product: (installation status, installed version id or None)."""
    rows = s.execute(
        select(DownloadTask.product_id, DownloadTask.status, DownloadTask.kind,
               DownloadTask.updated_at, DownloadTask.version_id)
        .where(DownloadTask.user_id == user_id, DownloadTask.status != "cancelled")
        .order_by(DownloadTask.updated_at)
    ).all()
    newest: dict[str, tuple[str, str, datetime]] = {}
    completed: dict[str, tuple[str, datetime]] = {}
    for product_id, status, kind, updated_at, version_id in rows:
        newest[product_id] = (status, kind, updated_at)
        if status == "completed":
            completed[product_id] = (version_id, updated_at)
    if items is None:
        items = s.scalars(select(LibraryItem).where(LibraryItem.user_id == user_id)).all()
    out: dict[str, tuple[str, str | None]] = {}
    for item in items:
        reported = None
        if item.reported_install_status and item.reported_install_at is not None:
            reported = (item.reported_install_status, item.reported_install_at)
        status = derive_install_status(newest.get(item.product_id), reported)
        version = None
        if status in ("installed", "updating", "repair_needed"):
            done = completed.get(item.product_id)
            version = item.installed_version_id
            if done is not None and (item.reported_install_at is None
                                     or done[1] >= item.reported_install_at):
                version = done[0]
        out[item.product_id] = (status, version)
    return out


def installation_statuses(s: Session, user_id: str) -> dict[str, str]:
    """Per product, the installation status (``installation_states`` without versions)."""
    return {p: st for p, (st, _) in installation_states(s, user_id).items()}


def item_resource(catalog: Catalog, item: LibraryItem, title: str, install_status: str, *,
                  cover: str | None = None, category_ids: list[str] | None = None,
                  installed_version: str | None = None) -> dict[str, Any]:
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
            "shared_from_user_id": item.shared_from_user_id,
            "last_played_at": item.last_played_at,
            "total_playtime_seconds": item.total_playtime_seconds,
            "installation_status": install_status,
            "installed_version_id": installed_version,
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
        states = installation_states(s, user.id, [item for item, _ in rows])
        if category_id is not None:
            require_category(s, user.id, category_id, parameter="category_id")
        categories = categories_by_item(s, user.id)
    items = [(item, title, states[item.product_id][0]) for item, title in rows
             if not is_launcher_product(item.product_id)]
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
                               category_ids=categories.get(i.id),
                               installed_version=states[i.product_id][1])
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
        return {"data": _item_doc(s, ctx, request, item, title)}


def _item_doc(s: Session, ctx: Context, request: Request, item: LibraryItem,
              title: str) -> dict[str, Any]:
    status, version = installation_states(s, item.user_id, [item])[item.product_id]
    categories = categories_by_item(s, item.user_id, [item.id]).get(item.id)
    return item_resource(ctx.catalog, item, title, status,
                         cover=cover_url(ctx, ctx.public_url(request), item.product_id),
                         category_ids=categories, installed_version=version)


def item_updated(item_doc: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The seed's ``library.item.updated`` message for an item resource and what changed."""
    return events.message(events.LIBRARY_ITEM_UPDATED, {
        "library_item_id": item_doc["id"], "product_id": item_doc["attributes"]["product_id"],
        "changes": {k: iso(v) if isinstance(v, datetime) else v for k, v in changes.items()}})


@router.patch("/items/{library_item_id}", response_model=Data[LibraryItemResource],
              responses=error_responses(401, 404, 422))
def patch_item(
    library_item_id: ItemId, body: Data[LibraryItemPatch], request: Request, ctx: CtxDep,
    user: UserDep
) -> dict[str, Any]:
    """Change ``is_hidden``, ``user_rating``, the item's categories (``category_ids``
    replaces them; an id that is not one of the user's categories is 404
    ``CATEGORY_NOT_FOUND`` naming it, and nothing changes) and ``installation_status`` (what the
    client's disk holds now, e.g. ``not_installed`` after an uninstall). Every connection of the
    user gets ``library.item.updated`` with the changed attributes."""
    attrs = body.data.attributes
    with ctx.db.session() as s:
        item, title = _owned_item(s, user.id, library_item_id)
        before = _item_doc(s, ctx, request, item, title)["attributes"]
        if "is_hidden" in attrs.model_fields_set and attrs.is_hidden is not None:
            item.is_hidden = attrs.is_hidden
        if "user_rating" in attrs.model_fields_set:
            item.user_rating = attrs.user_rating
        if attrs.category_ids is not None:
            set_item_categories(s, item, attrs.category_ids)
        if attrs.installation_status is not None:
            report_install(item, attrs.installation_status, None, utcnow())
        s.flush()
        doc = _item_doc(s, ctx, request, item, title)
    changes = {k: v for k, v in doc["attributes"].items() if before.get(k) != v}
    if changes:
        ctx.events.publish(user.id, item_updated(doc, changes))
    return {"data": doc}


EVENT_STATUS = {"installed": "installed", "uninstalled": "not_installed",
                "repair_needed": "repair_needed", "error": "error"}


def report_install(item: LibraryItem, status: str, version_id: str | None,
                   at: datetime) -> bool:
    """Record the client's install state unless a newer report is already there (events can
    arrive out of order after an offline spell). True if it was recorded."""
    if item.reported_install_at is not None and item.reported_install_at > at:
        return False
    item.reported_install_status, item.reported_install_at = status, at
    if status == "installed" and version_id is not None:
        item.installed_version_id = version_id
    elif status == "not_installed":
        item.installed_version_id = None
    return True


@router.post("/installation-events", response_model=Data[LibraryItemResource],
             responses=error_responses(401, 403, 422))
def installation_event(body: Data[InstallationEvent], request: Request, ctx: CtxDep,
                       user: UserDep) -> dict[str, Any]:
    """The seed's ``download.game.installed`` / ``download.game.uninstalled`` event, reported by
    the client itself (there is no separate Download Service here): the library item's
    ``installation_status`` follows. An event older than the item's newest report is ignored;
    the answer is the item as it is then."""
    a = body.data.attributes
    now = utcnow()
    at = min(a.timestamp, now) if a.timestamp is not None else now
    with ctx.db.session() as s:
        item = require_entitlement(s, user.id, a.product_id, "/data/attributes/product_id")
        product = s.get(Product, item.product_id)
        title = product.title if product is not None else item.product_id
        before = _item_doc(s, ctx, request, item, title)["attributes"]
        report_install(item, EVENT_STATUS[a.event_type], a.version_id, at)
        s.flush()
        doc = _item_doc(s, ctx, request, item, title)
    changes = {k: v for k, v in doc["attributes"].items() if before.get(k) != v}
    if changes:
        ctx.events.publish(user.id, item_updated(doc, changes))
    return {"data": doc}


def watch_download_tasks(ctx: Context) -> None:
    """Push ``library.item.updated`` when a download task's status moves the item's derived
    installation status (install started, finished, failed). Hooked on the session factory so
    the download routes need not know about events; published after the commit."""

    def after_flush(session: Session, _flush: Any) -> None:
        touched: set[tuple[str, str]] = session.info.setdefault("install_touched", set())
        for obj in (*session.new, *session.dirty):
            if isinstance(obj, DownloadTask) and \
                    sa_inspect(obj).attrs.status.history.has_changes():
                touched.add((obj.user_id, obj.product_id))

    def after_commit(session: Session) -> None:
        touched = session.info.pop("install_touched", None)
        if touched:
            try:
                _publish_install_states(ctx, touched)
            except Exception:  # a lost notice must never fail the request that committed
                log.exception("could not publish installation changes")

    def after_rollback(session: Session) -> None:
        session.info.pop("install_touched", None)

    event.listen(ctx.db.sessions, "after_flush", after_flush)
    event.listen(ctx.db.sessions, "after_commit", after_commit)
    event.listen(ctx.db.sessions, "after_soft_rollback", lambda s, _t: after_rollback(s))


def _publish_install_states(ctx: Context, touched: set[tuple[str, str]]) -> None:
    with ctx.db.session() as s:
        for user_id, product_id in sorted(touched):
            item = s.scalar(select(LibraryItem).where(LibraryItem.user_id == user_id,
                                                      LibraryItem.product_id == product_id))
            if item is None:
                continue
            status, version = installation_states(s, user_id, [item])[product_id]
            ctx.events.publish(user_id, events.message(events.LIBRARY_ITEM_UPDATED, {
                "library_item_id": item.id, "product_id": product_id,
                "changes": {"installation_status": status, "installed_version_id": version}}))


def owned_count(s: Session, user_id: str) -> int:
    return int(s.scalar(select(func.count()).select_from(LibraryItem)
                        .where(LibraryItem.user_id == user_id)) or 0)
