"""Family sharing (library seed 1.2): an owner shares the library with up to
``family_max_members`` members.

A member borrows one of the owner's games (``POST /family/shared-games/{product_id}/borrow``):
that makes a library item of the member with ``acquisition_type`` ``family_shared_access`` and
``shared_from_user_id``, so every other route (downloads, CDN tokens, playtime, saves,
achievements) works for it as for a bought game, and the member's saves, playtime and
achievements are the member's own (keyed by the member's user id; they survive the end of the
lending). A borrowed game is playable and installable only while the owner is not playing it:
starting a playtime session or a download task for it while the owner has an active playtime
session of that product (a heartbeat within ``playtime_timeout``) is 403
``FAMILY_ACCESS_RESTRICTED``; so is borrowing without being a member, or a game the owner does
not own. Removing a member (or a member leaving) takes the borrowed items away.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import Field
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend import events
from backend.context import Context, CtxDep, UserDep
from backend.db import (
    FamilyMember,
    LibraryItem,
    PlaytimeSession,
    Product,
    User,
    lock_users,
    utcnow,
)
from backend.errors import ApiError, Conflict, NotFound, ValidationFailed
from backend.library import is_launcher_product
from backend.schemas import Data, LibraryItemResource, Model, ProductId, error_responses

router = APIRouter(prefix="/api/v1/library/family", tags=["family"])

SHARED = "family_shared_access"


class FamilyAccessRestricted(ApiError):
    status = 403
    code = "FAMILY_ACCESS_RESTRICTED"
    title = "Family access restricted"


# -- rules used by the other routes --------------------------------------------------------------


def owner_playing(s: Session, owner_id: str, product_id: str, timeout: int,
                  now: datetime | None = None) -> bool:
    """The owner has an active playtime session of the product that is not stale."""
    now = now or utcnow()
    n = s.scalar(select(func.count()).select_from(PlaytimeSession).where(
        PlaytimeSession.user_id == owner_id, PlaytimeSession.product_id == product_id,
        PlaytimeSession.status == "active",
        PlaytimeSession.last_heartbeat_at >= now - timedelta(seconds=timeout)))
    return bool(n)


def _owns(s: Session, user_id: str, product_id: str) -> bool:
    return s.scalar(select(LibraryItem.id).where(
        LibraryItem.user_id == user_id, LibraryItem.product_id == product_id,
        LibraryItem.acquisition_type != SHARED)) is not None


def check_lent_access(ctx: Context, s: Session, item: LibraryItem) -> None:
    """For a borrowed library item: the family link and the owner's own copy still exist and
    the owner is not playing it, else 403 ``FAMILY_ACCESS_RESTRICTED``. Other items pass."""
    if item.acquisition_type != SHARED:
        return
    owner = item.shared_from_user_id
    link = s.get(FamilyMember, item.user_id)
    if owner is None or link is None or link.owner_id != owner or \
            not _owns(s, owner, item.product_id):
        raise FamilyAccessRestricted(f"{item.product_id!r} is no longer shared with you")
    if owner_playing(s, owner, item.product_id, ctx.settings.playtime_timeout):
        raise FamilyAccessRestricted(
            f"the owner is playing {item.product_id!r}; try again when they stop")


FAMILY_UPDATED = "library.family.updated"


def _notify(ctx: Context, change: str, owner_id: str, member_id: str,
            product_ids: list[str] | None = None) -> None:
    """``library.family.updated`` on the library channel of both the owner and the member (after
    the commit): a client re-reads the family and the library."""
    msg = events.message(FAMILY_UPDATED, {"change": change, "owner_id": owner_id,
                                          "member_id": member_id,
                                          "product_ids": product_ids or []})
    for user_id in (owner_id, member_id):
        ctx.events.publish(user_id, msg)


# -- schemas -------------------------------------------------------------------------------------


class MemberAddAttributes(Model):
    username: str = Field(min_length=1, max_length=64)


class MemberAdd(Model):
    type: Literal["familyMemberCreation"] = "familyMemberCreation"
    attributes: MemberAddAttributes


class MemberAttributes(Model):
    user_id: str
    username: str
    role: Literal["owner", "member"]
    added_at: datetime | None


class MemberResource(Model):
    type: Literal["familyMember"] = "familyMember"
    id: str
    attributes: MemberAttributes


class FamilyAttributes(Model):
    role: Literal["owner", "member", "none"]
    owner_id: str | None
    max_members: int
    members: list[MemberResource]


class FamilyResource(Model):
    type: Literal["familyGroup"] = "familyGroup"
    id: str | None
    attributes: FamilyAttributes


class SharedGameAttributes(Model):
    product_id: str
    title: str
    shared_from_user_id: str
    shared_from_username: str
    is_available: bool
    is_borrowed: bool
    library_item_id: str | None


class SharedGameResource(Model):
    type: Literal["familySharedGame"] = "familySharedGame"
    id: str
    attributes: SharedGameAttributes


# -- routes --------------------------------------------------------------------------------------


def _member(user: User, role: str, added_at: datetime | None) -> dict[str, Any]:
    return {"type": "familyMember", "id": user.id, "attributes": {
        "user_id": user.id, "username": user.username, "role": role, "added_at": added_at}}


def _family_doc(ctx: Context, s: Session, user_id: str) -> dict[str, Any]:
    link = s.get(FamilyMember, user_id)
    owner_id = link.owner_id if link is not None else user_id
    rows = s.execute(select(FamilyMember, User).join(User, User.id == FamilyMember.member_id)
                     .where(FamilyMember.owner_id == owner_id)
                     .order_by(FamilyMember.added_at, User.username)).all()
    role = "member" if link is not None else ("owner" if rows else "none")
    members = []
    if rows:
        owner = s.get(User, owner_id)
        assert owner is not None
        members.append(_member(owner, "owner", None))
        members += [_member(u, "member", m.added_at) for m, u in rows]
    return {"type": "familyGroup", "id": owner_id if role != "none" else None, "attributes": {
        "role": role, "owner_id": owner_id if role != "none" else None,
        "max_members": ctx.settings.family_max_members, "members": members}}


@router.get("", response_model=Data[FamilyResource], responses=error_responses(401))
def get_family(ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    """The user's family: ``role`` owner (shares the library), member (borrows) or none."""
    with ctx.db.session() as s:
        return {"data": _family_doc(ctx, s, user.id)}


@router.post("/members", status_code=201, response_model=Data[MemberResource],
             responses=error_responses(401, 404, 409, 422))
def add_member(body: Data[MemberAdd], ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    """The owner (the caller) shares the library with another user."""
    name = body.data.attributes.username
    with ctx.db.session() as s:
        other = s.scalar(select(User).where(User.username == name))
        if other is None:
            raise NotFound(f"no user {name!r}", code="USER_NOT_FOUND",
                           pointer="/data/attributes/username")
        if other.id == user.id:
            raise ValidationFailed("you cannot join your own family",
                                   pointer="/data/attributes/username")
        # both users locked before the checks (a row lock on PostgreSQL, the write lock on
        # SQLite): two adds that share a user run one after the other, so "X adds Y" and "Y
        # adds Z" at once cannot make Y a member and an owner; the checks below read after the
        # lock, i.e. what the other add committed
        lock_users(s, (user.id, other.id))
        if s.get(FamilyMember, user.id, populate_existing=True) is not None:
            raise Conflict("a family member cannot share a library on", code="FAMILY_CONFLICT")
        existing = s.get(FamilyMember, other.id, populate_existing=True)
        if existing is not None:
            raise Conflict(f"{name!r} is already in a family", code="FAMILY_CONFLICT",
                           pointer="/data/attributes/username")
        if s.scalar(select(FamilyMember.member_id).where(FamilyMember.owner_id == other.id)):
            raise Conflict(f"{name!r} shares their own library", code="FAMILY_CONFLICT",
                           pointer="/data/attributes/username")
        count = s.scalar(select(func.count()).select_from(FamilyMember).where(
            FamilyMember.owner_id == user.id)) or 0
        if count >= ctx.settings.family_max_members:
            raise Conflict(f"at most {ctx.settings.family_max_members} family members",
                           code="FAMILY_LIMIT_REACHED")
        link = FamilyMember(member_id=other.id, owner_id=user.id, added_at=utcnow())
        s.add(link)
        try:
            s.flush()
        except IntegrityError as exc:  # added to a family concurrently
            raise Conflict(f"{name!r} is already in a family", code="FAMILY_CONFLICT",
                           pointer="/data/attributes/username") from exc
        doc = _member(other, "member", link.added_at)
    _notify(ctx, "member_added", user.id, other.id)
    return {"data": doc}


@router.delete("/members/{user_id}", status_code=204, response_class=Response,
               responses=error_responses(401, 404, 422))
def remove_member(user_id: Annotated[str, Path(max_length=64)], ctx: CtxDep,
                  user: UserDep) -> Response:
    """The owner removes a member, or a member leaves (their own id). Their borrowed items go;
    their saves, playtime and achievements stay theirs."""
    with ctx.db.session() as s:
        link = s.get(FamilyMember, user_id)
        if link is None or user.id not in (link.owner_id, link.member_id):
            raise NotFound(f"{user_id!r} is not in your family", code="FAMILY_MEMBER_NOT_FOUND",
                           parameter="user_id")
        lent = select(LibraryItem).where(LibraryItem.user_id == link.member_id,
                                         LibraryItem.acquisition_type == SHARED,
                                         LibraryItem.shared_from_user_id == link.owner_id)
        gone = sorted(i.product_id for i in s.scalars(lent).all())
        s.execute(delete(LibraryItem).where(LibraryItem.user_id == link.member_id,
                                            LibraryItem.acquisition_type == SHARED,
                                            LibraryItem.shared_from_user_id == link.owner_id))
        owner_id, member_id = link.owner_id, link.member_id
        s.delete(link)
    _notify(ctx, "member_removed", owner_id, member_id, gone)
    return Response(status_code=204)


@router.get("/shared-games", response_model=Data[list[SharedGameResource]],
            responses=error_responses(401))
def shared_games(ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    """For a member: the owner's games the member does not own, whether each can be used now
    (``is_available``: the owner is not playing it) and whether it is borrowed already."""
    with ctx.db.session() as s:
        link = s.get(FamilyMember, user.id)
        if link is None:
            return {"data": []}
        owner = s.get(User, link.owner_id)
        assert owner is not None
        mine = {i.product_id: i for i in s.scalars(select(LibraryItem).where(
            LibraryItem.user_id == user.id)).all()}
        rows = s.execute(select(LibraryItem.product_id, Product.title)
                         .join(Product, Product.id == LibraryItem.product_id)
                         .where(LibraryItem.user_id == owner.id,
                                LibraryItem.acquisition_type != SHARED)
                         .order_by(Product.title)).all()
        out = []
        for product_id, title in rows:
            if is_launcher_product(product_id):  # every player has the launcher: not lent
                continue
            own = mine.get(product_id)
            if own is not None and own.acquisition_type != SHARED:
                continue
            out.append({"type": "familySharedGame", "id": product_id, "attributes": {
                "product_id": product_id, "title": title, "shared_from_user_id": owner.id,
                "shared_from_username": owner.username,
                "is_available": not owner_playing(s, owner.id, product_id,
                                                  ctx.settings.playtime_timeout),
                "is_borrowed": own is not None,
                "library_item_id": own.id if own is not None else None}})
    return {"data": out}


@router.post("/shared-games/{product_id}/borrow", status_code=201,
             response_model=Data[LibraryItemResource], responses=error_responses(401, 403, 422))
def borrow(product_id: Annotated[ProductId, Path()], request: Request, response: Response,
           ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    """Add one of the owner's games to the member's library (201 with the ``libraryItem``,
    ``acquisition_type`` family_shared_access; 200 if it is already there). 403
    ``FAMILY_ACCESS_RESTRICTED``: not a member, the owner does not own it, or the owner is
    playing it."""
    from backend.library import _item_doc

    with ctx.db.session() as s:
        link = s.get(FamilyMember, user.id)
        if link is None:
            raise FamilyAccessRestricted("you are not a member of a family")
        if is_launcher_product(product_id) or not _owns(s, link.owner_id, product_id):
            raise FamilyAccessRestricted(f"{product_id!r} is not in your family's library",
                                         parameter="product_id")
        item = s.scalar(select(LibraryItem).where(LibraryItem.user_id == user.id,
                                                  LibraryItem.product_id == product_id))
        if item is None:
            if owner_playing(s, link.owner_id, product_id, ctx.settings.playtime_timeout):
                raise FamilyAccessRestricted(
                    f"the owner is playing {product_id!r}; try again when they stop")
            item = LibraryItem(user_id=user.id, product_id=product_id, acquisition_type=SHARED,
                               shared_from_user_id=link.owner_id, added_at=utcnow())
            s.add(item)
            try:
                s.flush()
            except IntegrityError:  # borrowed concurrently: answer the one that won
                s.rollback()
                item = s.scalar(select(LibraryItem).where(LibraryItem.user_id == user.id,
                                                          LibraryItem.product_id == product_id))
                if item is None:
                    raise
                response.status_code = 200
        else:
            response.status_code = 200
        product = s.get(Product, product_id)
        title = product.title if product is not None else product_id
        doc = _item_doc(s, ctx, request, item, title)
        owner_id = link.owner_id
    if response.status_code != 200:
        _notify(ctx, "game_borrowed", owner_id, user.id, [product_id])
    return {"data": doc}
