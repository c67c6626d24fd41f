"""Achievements (seed 3.1.3): definitions published with a product, each user's unlocks and
progress, global rarity.

Definitions belong to the catalog (the seed's AchievementMeta from the Catalog Service): they
are published next to the content store as ``store/achievements/<product_id>.json`` (with icons
``store/achievements/<product_id>/<achievement_id>.png``), so a copied store keeps them, and are
imported into ``achievement_definitions`` when the server starts or ``launcher-backend
achievements`` publishes them. A definition::

    {"id": "first-launch", "name": "First Launch", "description": "Start the game.",
     "hidden": false, "progress_target": null, "icon_url": null}

(``icon_url`` absent: the icon file in the store, served by ``GET
/api/v1/products/{product_id}/achievements/{achievement_id}/icon``, public like covers.)

Game path: ``POST /api/v1/library/achievements/{product_id}/{achievement_id}/unlock`` and
``.../progress``. A second unlock is 409 ``ACHIEVEMENT_ALREADY_UNLOCKED`` as the seed says, except
for the client's retry of the same unlock: with the same ``client_unlock_id`` (or
``Idempotency-Key``) it returns the first answer again (``newly_unlocked: false``). Progress only
grows and unlocks at the target. Every new unlock is pushed as ``achievement.unlocked``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi import Path as PathParam
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from backend import events
from backend.context import Context, CtxDep, UserDep
from backend.coverart import PNG_SIGNATURE, render_cover
from backend.covers import CACHE_CONTROL, PRODUCT_ID_PATTERN
from backend.db import AchievementDefinition, Database, LibraryItem, UserAchievement, utcnow
from backend.errors import ApiError, Conflict, NotFound, ValidationFailed
from backend.library import require_entitlement
from backend.schemas import (
    AchievementStatusList,
    Data,
    ProgressRequest,
    UnlockRequest,
    UserAchievementResource,
    error_responses,
)

router = APIRouter(prefix="/api/v1/library/achievements", tags=["achievements"])
icons_router = APIRouter(prefix="/api/v1/products", tags=["catalog"])

ACHIEVEMENTS_DIR = "achievements"
ACHIEVEMENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
HIDDEN_NAME = "Hidden achievement"
HIDDEN_DESCRIPTION = "Keep playing to reveal it."


class AchievementNotFound(NotFound):
    code = "ACHIEVEMENT_NOT_FOUND"
    title = "No such achievement"


class AlreadyUnlocked(Conflict):
    code = "ACHIEVEMENT_ALREADY_UNLOCKED"
    title = "Achievement already unlocked"


class NotProgressive(ApiError):
    status = 422
    code = "ACHIEVEMENT_NOT_PROGRESSIVE"
    title = "Achievement has no progress"


# -- definitions (catalog side) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Definition:
    id: str
    name: str
    description: str = ""
    hidden: bool = False
    progress_target: int | None = None
    icon_url: str | None = None
    icon_url_locked: str | None = None

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Definition:
        """Validates one published definition (a bad file must not half-import)."""
        import re

        aid = d.get("id")
        if not isinstance(aid, str) or not re.fullmatch(ACHIEVEMENT_ID_PATTERN, aid):
            raise ValueError(f"achievement id {aid!r} must match {ACHIEVEMENT_ID_PATTERN}")
        name = d.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 255:
            raise ValueError(f"{aid}: name must be 1..255 characters")
        target = d.get("progress_target")
        if target is not None and (not isinstance(target, int) or isinstance(target, bool)
                                   or target < 1):
            raise ValueError(f"{aid}: progress_target must be a positive integer or null")
        return Definition(aid, name, str(d.get("description") or ""), bool(d.get("hidden")),
                          target, d.get("icon_url"), d.get("icon_url_locked"))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "description": self.description,
                "hidden": self.hidden, "progress_target": self.progress_target,
                "icon_url": self.icon_url, "icon_url_locked": self.icon_url_locked}


def definitions_path(store_dir: Path, product_id: str) -> Path:
    return store_dir / ACHIEVEMENTS_DIR / f"{product_id}.json"


def icon_path(store_dir: Path, product_id: str, achievement_id: str) -> Path:
    return store_dir / ACHIEVEMENTS_DIR / product_id / f"{achievement_id}.png"


def publish_definitions(store_dir: Path, product_id: str, defs: list[Definition], *,
                        draw_icons: bool = True) -> Path:
    """Write a product's definitions into the store (atomically) and draw an icon for each one
    that has neither an ``icon_url`` nor an icon file yet."""
    ids = [d.id for d in defs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate achievement ids in {ids}")
    path = definitions_path(store_dir, product_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps({"product_id": product_id,
                               "achievements": [d.to_dict() for d in defs]}, indent=2) + "\n")
    os.replace(tmp, path)
    if draw_icons:
        for d in defs:
            icon = icon_path(store_dir, product_id, d.id)
            if d.icon_url is None and not icon.exists():
                icon.parent.mkdir(parents=True, exist_ok=True)
                icon.write_bytes(render_cover(f"{product_id}/{d.id}", d.name, 128, 128))
    return path


def read_definitions(path: Path) -> tuple[str, list[Definition]]:
    doc = json.loads(path.read_text("utf-8"))
    product_id = doc.get("product_id") or path.stem
    return str(product_id), [Definition.from_dict(d) for d in doc.get("achievements", [])]


def import_definitions(s: Session, product_id: str, defs: list[Definition]) -> None:
    """Make the table hold exactly ``defs`` for the product (users' rows of a removed
    achievement stay, unseen, should it come back)."""
    now = utcnow()
    keep = [d.id for d in defs]
    s.execute(delete(AchievementDefinition).where(
        AchievementDefinition.product_id == product_id,
        AchievementDefinition.achievement_id.not_in(keep)))
    for order, d in enumerate(defs):
        row = s.get(AchievementDefinition, (product_id, d.id))
        if row is None:
            row = AchievementDefinition(product_id=product_id, achievement_id=d.id)
            s.add(row)
        row.name, row.description, row.hidden = d.name, d.description, d.hidden
        row.progress_target, row.icon_url, row.icon_url_locked = (
            d.progress_target, d.icon_url, d.icon_url_locked)
        row.sort_order, row.updated_at = order, now


def sync_store_definitions(db: Database, store_dir: Path) -> list[str]:
    """Import every product's published definitions from the store (at server start)."""
    done: list[str] = []
    folder = store_dir / ACHIEVEMENTS_DIR
    if not folder.is_dir():
        return done
    for path in sorted(folder.glob("*.json")):
        product_id, defs = read_definitions(path)
        with db.session() as s:
            import_definitions(s, product_id, defs)
        done.append(product_id)
    return done


# -- pure rules ----------------------------------------------------------------------------------


def rarity(unlocked: int, owners: int) -> float:
    """The share (percent, one decimal) of a product's owners who unlocked an achievement."""
    return round(100.0 * unlocked / owners, 1) if owners else 0.0


def progress_after(current: int | None, reported: int, target: int) -> tuple[int, bool]:
    """Progress never goes back (reports arrive out of order after an offline spell) and stops
    at the target; the second value says whether the target is reached."""
    value = min(max(current or 0, reported), target)
    return value, value >= target


# -- helpers -------------------------------------------------------------------------------------


def _definition(s: Session, product_id: str, achievement_id: str) -> AchievementDefinition:
    d = s.get(AchievementDefinition, (product_id, achievement_id))
    if d is None:
        raise AchievementNotFound(f"product {product_id!r} has no achievement "
                                  f"{achievement_id!r}", parameter="achievement_id")
    return d


def _icon_urls(ctx: Context, base: str, d: AchievementDefinition) -> tuple[str | None, str | None]:
    url = d.icon_url
    if url is None and icon_path(ctx.settings.store_dir, d.product_id,
                                 d.achievement_id).is_file():
        url = f"{base}{icons_router.prefix}/{d.product_id}/achievements/{d.achievement_id}/icon"
    return url, d.icon_url_locked or url


def _progress(d: AchievementDefinition, row: UserAchievement | None) -> dict[str, int] | None:
    if d.progress_target is None:
        return None
    current = (row.current_progress or 0) if row is not None else 0
    if row is not None and row.is_unlocked:
        current = d.progress_target
    return {"current": current, "total": d.progress_target}


def _state(d: AchievementDefinition, row: UserAchievement, newly: bool) -> dict[str, Any]:
    return {"type": "userAchievement", "id": d.achievement_id, "attributes": {
        "product_id": d.product_id, "achievement_id": d.achievement_id, "name": d.name,
        "is_unlocked": row.is_unlocked, "unlocked_at": row.unlocked_at,
        "current_progress": _progress(d, row), "newly_unlocked": newly}}


def _row(s: Session, user_id: str, d: AchievementDefinition) -> UserAchievement:
    row = s.get(UserAchievement, (user_id, d.product_id, d.achievement_id))
    if row is None:
        row = UserAchievement(user_id=user_id, product_id=d.product_id,
                              achievement_id=d.achievement_id, is_unlocked=False)
        s.add(row)
    return row


def unlocked_message(d: AchievementDefinition, row: UserAchievement) -> dict[str, Any]:
    """The seed's ``achievement.unlocked`` message."""
    return events.message(events.ACHIEVEMENT_UNLOCKED, {
        "product_id": d.product_id, "achievement_id": d.achievement_id,
        "achievement_name": d.name, "unlocked_at": row.unlocked_at})


def _when(claimed: datetime | None, now: datetime, pointer: str) -> datetime:
    """An unlock time the client states (offline replay): never in the future."""
    if claimed is None:
        return now
    if claimed > now:
        if (claimed - now).total_seconds() > 60:
            raise ValidationFailed("the time is in the future", pointer=pointer)
        return now
    return claimed


# -- routes --------------------------------------------------------------------------------------

ProductIdPath = Annotated[str, PathParam(pattern=PRODUCT_ID_PATTERN, max_length=128)]
AchievementIdPath = Annotated[str, PathParam(pattern=ACHIEVEMENT_ID_PATTERN, max_length=128)]
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=128)]


@router.get("/status/{product_id}", response_model=AchievementStatusList,
            responses=error_responses(401, 403, 422))
def status(product_id: ProductIdPath, request: Request, ctx: CtxDep,
           user: UserDep) -> dict[str, Any]:
    """Every achievement of an owned product with the user's state and global rarity. Hidden
    achievements the user has not unlocked show neither name nor description."""
    base = ctx.public_url(request)
    with ctx.db.session() as s:
        require_entitlement(s, user.id, product_id, None)
        defs = s.scalars(select(AchievementDefinition)
                         .where(AchievementDefinition.product_id == product_id)
                         .order_by(AchievementDefinition.sort_order)).all()
        mine = {r.achievement_id: r for r in s.scalars(select(UserAchievement).where(
            UserAchievement.user_id == user.id, UserAchievement.product_id == product_id))}
        owners = int(s.scalar(select(func.count()).select_from(LibraryItem)
                              .where(LibraryItem.product_id == product_id)) or 0)
        counts = dict(s.execute(
            select(UserAchievement.achievement_id, func.count())
            .join(LibraryItem, (LibraryItem.user_id == UserAchievement.user_id)
                  & (LibraryItem.product_id == UserAchievement.product_id))
            .where(UserAchievement.product_id == product_id, UserAchievement.is_unlocked)
            .group_by(UserAchievement.achievement_id)).tuples().all())
    data = []
    for d in defs:
        row = mine.get(d.achievement_id)
        unlocked = row is not None and row.is_unlocked
        masked = d.hidden and not unlocked
        icon, icon_locked = _icon_urls(ctx, base, d)
        data.append({"type": "userAchievementStatus", "id": d.achievement_id, "attributes": {
            "product_id": product_id,
            "name": HIDDEN_NAME if masked else d.name,
            "description": HIDDEN_DESCRIPTION if masked else d.description,
            "icon_url": None if masked else icon,
            "icon_url_unlocked": None if masked else icon,
            "icon_url_locked": icon_locked if not masked else None,
            "is_hidden": d.hidden,
            "is_unlocked": unlocked,
            "unlocked_at": row.unlocked_at if unlocked and row is not None else None,
            "current_progress": None if masked else _progress(d, row),
            "rarity_percentage": rarity(int(counts.get(d.achievement_id, 0)), owners)}})
    unlocked_count = sum(1 for r in mine.values() if r.is_unlocked
                         and r.achievement_id in {d.achievement_id for d in defs})
    return {"data": data, "meta": {"total": len(data), "unlocked": unlocked_count,
                                   "owners": owners}}


@router.post("/{product_id}/{achievement_id}/unlock",
             response_model=Data[UserAchievementResource],
             responses=error_responses(401, 403, 404, 409, 422))
def unlock(product_id: ProductIdPath, achievement_id: AchievementIdPath, ctx: CtxDep,
           user: UserDep, body: Data[UnlockRequest] | None = None,
           idempotency_key: IdemKey = None) -> dict[str, Any]:
    """Unlock for the game path. 409 ``ACHIEVEMENT_ALREADY_UNLOCKED`` if it already is, unless
    this is a retry of the very unlock that did it (same ``client_unlock_id`` /
    ``Idempotency-Key``): then the same state again with ``newly_unlocked: false``."""
    attrs = body.data.attributes if body is not None else None
    key = (attrs.client_unlock_id if attrs else None) or idempotency_key
    with ctx.db.session() as s:
        require_entitlement(s, user.id, product_id, None)
        d = _definition(s, product_id, achievement_id)
        row = _row(s, user.id, d)
        if row.is_unlocked:
            if key is not None and row.unlock_key == key:
                return {"data": _state(d, row, False)}
            raise AlreadyUnlocked(f"{achievement_id!r} was unlocked at "
                                  f"{row.unlocked_at.isoformat() if row.unlocked_at else '?'}",
                                  parameter="achievement_id")
        now = utcnow()
        row.is_unlocked = True
        row.unlocked_at = _when(attrs.unlocked_at if attrs else None, now,
                                "/data/attributes/unlocked_at")
        row.unlock_key, row.updated_at = key, now
        if d.progress_target is not None:
            row.current_progress = d.progress_target
        s.flush()
        doc = {"data": _state(d, row, True)}
        msg = unlocked_message(d, row)
    ctx.events.publish(user.id, msg)
    return doc


@router.post("/{product_id}/{achievement_id}/progress",
             response_model=Data[UserAchievementResource],
             responses=error_responses(401, 403, 404, 422))
def progress(product_id: ProductIdPath, achievement_id: AchievementIdPath,
             body: Data[ProgressRequest], ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    """Report progress of a progressive achievement (``current`` so far). Idempotent: progress
    only grows; reaching the target unlocks (``newly_unlocked: true`` once)."""
    a = body.data.attributes
    with ctx.db.session() as s:
        require_entitlement(s, user.id, product_id, None)
        d = _definition(s, product_id, achievement_id)
        if d.progress_target is None:
            raise NotProgressive(f"{achievement_id!r} has no progress; unlock it instead",
                                 parameter="achievement_id")
        row = _row(s, user.id, d)
        if row.is_unlocked:
            return {"data": _state(d, row, False)}
        now = utcnow()
        value, reached = progress_after(row.current_progress, a.current, d.progress_target)
        row.current_progress, row.updated_at = value, now
        msg = None
        if reached:
            row.is_unlocked = True
            row.unlocked_at = _when(a.at, now, "/data/attributes/at")
            msg = unlocked_message(d, row)
        s.flush()
        doc = {"data": _state(d, row, reached)}
    if msg is not None:
        ctx.events.publish(user.id, msg)
    return doc


_PNG = {"description": "The icon, a PNG image",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}


@icons_router.get("/{product_id}/achievements/{achievement_id}/icon", response_class=Response,
                  responses={200: _PNG, **error_responses(404, 422)})
def icon(product_id: ProductIdPath, achievement_id: AchievementIdPath, ctx: CtxDep) -> Response:
    """An achievement's icon (public, like covers: catalog art is no user's data)."""
    path = icon_path(ctx.settings.store_dir, product_id, achievement_id)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise AchievementNotFound(f"no icon for {product_id}/{achievement_id}",
                                  parameter="achievement_id") from exc
    if not data.startswith(PNG_SIGNATURE):
        raise AchievementNotFound(f"no icon for {product_id}/{achievement_id}")
    return Response(content=data, media_type="image/png",
                    headers={"Cache-Control": CACHE_CONTROL})
