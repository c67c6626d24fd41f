"""Wishlist (library seed 3.1.4): products a user wants, with a priority.

``POST /api/v1/library/wishlist/items`` adds (the seed's ``wishlistItemCreation``), ``GET`` lists
(priority high -> low, then oldest first), ``PATCH /items/{id}`` changes the priority,
``DELETE /items/{id}`` removes; ``{id}`` is the wishlist item's id or the product id. An entry
that is not on the user's wishlist is 404 ``GAME_NOT_FOUND_IN_WISHLIST``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import Field
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.context import CtxDep, UserDep
from backend.db import Product, WishlistItem, utcnow
from backend.errors import Conflict, NotFound
from backend.jsonapi import MAX_LIMIT, paginate
from backend.schemas import Data, Model, Page, ProductId, SelfLink, error_responses

Priority = Annotated[int, Field(ge=0, le=1000, description="higher comes first")]


class WishlistItemCreateAttributes(Model):
    product_id: ProductId
    priority: Priority | None = None


class WishlistItemCreate(Model):
    type: Literal["wishlistItemCreation"] = "wishlistItemCreation"
    attributes: WishlistItemCreateAttributes


class WishlistItemPatchAttributes(Model):
    priority: Priority


class WishlistItemPatch(Model):
    type: Literal["wishlistItemUpdate"] = "wishlistItemUpdate"
    attributes: WishlistItemPatchAttributes


class WishlistItemAttributes(Model):
    product_id: str
    title: str
    added_at: datetime
    priority: int


class WishlistItemResource(Model):
    type: Literal["wishlistItem"] = "wishlistItem"
    id: str
    attributes: WishlistItemAttributes
    links: SelfLink


router = APIRouter(prefix="/api/v1/library/wishlist", tags=["wishlist"])
BASE = "/api/v1/library/wishlist/items"


class NotInWishlist(NotFound):
    code = "GAME_NOT_FOUND_IN_WISHLIST"
    title = "Game not found in wishlist"


class WishlistFull(Conflict):
    code = "WISHLIST_LIMIT_REACHED"
    title = "Wishlist full"


def resource(w: WishlistItem, title: str) -> dict[str, Any]:
    return {"type": "wishlistItem", "id": w.id,
            "attributes": {"product_id": w.product_id, "title": title, "added_at": w.added_at,
                           "priority": w.priority},
            "links": {"self": f"{BASE}/{w.id}"}}


def _find(s: Session, user_id: str, key: str) -> tuple[WishlistItem, str]:
    row = s.execute(
        select(WishlistItem, Product.title).join(Product, Product.id == WishlistItem.product_id)
        .where(WishlistItem.user_id == user_id,
               or_(WishlistItem.id == key, WishlistItem.product_id == key))
    ).first()
    if row is None:
        raise NotInWishlist(f"{key!r} is not on your wishlist", parameter="item_id")
    return row[0], row[1]


ItemKey = Annotated[str, Path(max_length=128, description="wishlist item id or product id")]


@router.post("/items", status_code=201, response_model=Data[WishlistItemResource],
             responses=error_responses(401, 404, 409, 422))
def add_item(body: Data[WishlistItemCreate], response: Response, ctx: CtxDep,
             user: UserDep) -> dict[str, Any]:
    """Add a product (201 with ``Location``). Adding one already there answers 200 with the
    existing entry (a retry is harmless); a given ``priority`` then replaces the old one."""
    a = body.data.attributes
    with ctx.db.session() as s:
        product = s.get(Product, a.product_id)
        if product is None:
            raise NotFound(f"no product {a.product_id!r}", code="PRODUCT_NOT_FOUND",
                           pointer="/data/attributes/product_id")
        existing = s.scalar(select(WishlistItem).where(WishlistItem.user_id == user.id,
                                                       WishlistItem.product_id == a.product_id))
        if existing is not None:
            if a.priority is not None:
                existing.priority = a.priority
            response.status_code = 200
            return {"data": resource(existing, product.title)}
        count = s.scalar(select(func.count()).select_from(WishlistItem).where(
            WishlistItem.user_id == user.id)) or 0
        if count >= ctx.settings.wishlist_max_items:
            raise WishlistFull(f"at most {ctx.settings.wishlist_max_items} wishlist items")
        w = WishlistItem(user_id=user.id, product_id=a.product_id, added_at=utcnow(),
                         priority=a.priority or 0)
        s.add(w)
        try:
            s.flush()
        except IntegrityError:  # added concurrently: answer the one that won
            s.rollback()
            w, _ = _find(s, user.id, a.product_id)
            response.status_code = 200
        response.headers["Location"] = f"{BASE}/{w.id}"
        return {"data": resource(w, product.title)}


@router.get("/items", response_model=Page[WishlistItemResource],
            responses=error_responses(401, 422))
def list_items(ctx: CtxDep, user: UserDep,
               page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
               limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100) -> dict[str, Any]:
    with ctx.db.session() as s:
        rows = s.execute(
            select(WishlistItem, Product.title)
            .join(Product, Product.id == WishlistItem.product_id)
            .where(WishlistItem.user_id == user.id)
            .order_by(WishlistItem.priority.desc(), WishlistItem.added_at, WishlistItem.id)
        ).all()
    items, meta, links = paginate([(w, t) for w, t in rows], page, limit, BASE, {})
    return {"data": [resource(w, t) for w, t in items], "meta": meta, "links": links}


@router.get("/items/{item_id}", response_model=Data[WishlistItemResource],
            responses=error_responses(401, 404, 422))
def get_item(item_id: ItemKey, ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    with ctx.db.session() as s:
        w, title = _find(s, user.id, item_id)
        return {"data": resource(w, title)}


@router.patch("/items/{item_id}", response_model=Data[WishlistItemResource],
              responses=error_responses(401, 404, 422))
def patch_item(item_id: ItemKey, body: Data[WishlistItemPatch], ctx: CtxDep,
               user: UserDep) -> dict[str, Any]:
    with ctx.db.session() as s:
        w, title = _find(s, user.id, item_id)
        w.priority = body.data.attributes.priority
        s.flush()
        return {"data": resource(w, title)}


@router.delete("/items/{item_id}", status_code=204, response_class=Response,
               responses=error_responses(401, 404, 422))
def delete_item(item_id: ItemKey, ctx: CtxDep, user: UserDep) -> Response:
    with ctx.db.session() as s:
        w, _ = _find(s, user.id, item_id)
        s.delete(w)
    return Response(status_code=204)
