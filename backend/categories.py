"""User categories (the seed's "пользовательские категории/коллекции"): CRUD under
``/api/v1/library/categories`` and the library items' memberships.

A category belongs to one user; another user's category id behaves exactly like an unknown one
(404 ``CATEGORY_NOT_FOUND``), whether it is addressed in a path, a query parameter or a library
item's ``category_ids``. Names are trimmed and NFC-normalised (``schemas.category_name``) and unique
per user regardless of case (``name_key``). Categories are listed by ``sort_order``, then name.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.context import CtxDep, UserDep
from backend.db import LibraryItem, LibraryItemCategory, UserCategory, utcnow
from backend.errors import Conflict, NotFound
from backend.jsonapi import MAX_LIMIT, paginate
from backend.schemas import (
    CATEGORY_ID_PATTERN,
    SORT_ORDER_MAX,
    CategoryCreate,
    CategoryPatch,
    CategoryResource,
    Data,
    Page,
    error_responses,
)

router = APIRouter(prefix="/api/v1/library/categories", tags=["library"])

BASE = "/api/v1/library/categories"


class CategoryNotFound(NotFound):
    code = "CATEGORY_NOT_FOUND"
    title = "No such category"


class CategoryNameConflict(Conflict):
    code = "CATEGORY_NAME_CONFLICT"
    title = "Category name already used"


class CategoryLimitReached(Conflict):
    code = "CATEGORY_LIMIT_REACHED"
    title = "Too many categories"


def name_key(name: str) -> str:
    """What uniqueness compares: the (already trimmed, NFC) name, case-folded."""
    return unicodedata.normalize("NFC", name.casefold())


def ordered(stmt: Any) -> Any:
    return stmt.order_by(UserCategory.sort_order, UserCategory.name_key, UserCategory.id)


def user_categories(s: Session, user_id: str) -> list[UserCategory]:
    return list(s.scalars(ordered(select(UserCategory).where(UserCategory.user_id == user_id))))


def require_category(s: Session, user_id: str, category_id: str, *, pointer: str | None = None,
                     parameter: str | None = None) -> UserCategory:
    """The user's category, or 404 (someone else's looks unknown)."""
    cat = s.scalar(select(UserCategory).where(UserCategory.id == category_id,
                                              UserCategory.user_id == user_id))
    if cat is None:
        raise CategoryNotFound(f"category {category_id!r} not found", pointer=pointer,
                               parameter=parameter)
    return cat


def categories_by_item(s: Session, user_id: str,
                       item_ids: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Each of the user's library items' category ids, in category order."""
    stmt = ordered(
        select(LibraryItemCategory.item_id, LibraryItemCategory.category_id)
        .join(UserCategory, UserCategory.id == LibraryItemCategory.category_id)
        .where(UserCategory.user_id == user_id)
    )
    if item_ids is not None:
        stmt = stmt.where(LibraryItemCategory.item_id.in_(list(item_ids)))
    out: dict[str, list[str]] = {}
    for item_id, category_id in s.execute(stmt):
        out.setdefault(item_id, []).append(category_id)
    return out


def set_item_categories(s: Session, item: LibraryItem, category_ids: Sequence[str],
                        pointer: str = "/data/attributes/category_ids") -> None:
    """Replace the item's categories. Every id must be one of the item owner's categories;
    otherwise 404 ``CATEGORY_NOT_FOUND`` naming every unknown id (pointer at the first) and
    nothing changes. Duplicates are ignored."""
    wanted = list(dict.fromkeys(category_ids))
    own = set(s.scalars(select(UserCategory.id).where(UserCategory.user_id == item.user_id,
                                                      UserCategory.id.in_(wanted))))
    unknown = [(i, c) for i, c in enumerate(category_ids) if c not in own]
    if unknown:
        names = ", ".join(repr(c) for c in dict.fromkeys(c for _, c in unknown))
        raise CategoryNotFound(f"category {names} not found" if len(unknown) == 1 else
                               f"categories {names} not found",
                               pointer=f"{pointer}/{unknown[0][0]}")
    current = set(s.scalars(select(LibraryItemCategory.category_id)
                            .where(LibraryItemCategory.item_id == item.id)))
    gone = current - set(wanted)
    if gone:
        s.execute(delete(LibraryItemCategory).where(LibraryItemCategory.item_id == item.id,
                                                    LibraryItemCategory.category_id.in_(gone)))
    for c in wanted:
        if c not in current:
            s.add(LibraryItemCategory(item_id=item.id, category_id=c))
    try:
        s.flush()
    except IntegrityError as exc:  # a category deleted, or the same change made, meanwhile
        raise Conflict("the item's categories changed concurrently; try again",
                       pointer=pointer) from exc


def _item_counts(s: Session, user_id: str) -> dict[str, int]:
    rows = s.execute(
        select(LibraryItemCategory.category_id, func.count())
        .join(UserCategory, UserCategory.id == LibraryItemCategory.category_id)
        .where(UserCategory.user_id == user_id)
        .group_by(LibraryItemCategory.category_id)
    )
    return {cid: int(n) for cid, n in rows}


def _resource(cat: UserCategory, item_count: int) -> dict[str, Any]:
    return {
        "type": "userCategory",
        "id": cat.id,
        "attributes": {"name": cat.name, "sort_order": cat.sort_order, "item_count": item_count,
                       "created_at": cat.created_at, "updated_at": cat.updated_at},
        "links": {"self": f"{BASE}/{cat.id}"},
    }


def _check_name_free(s: Session, user_id: str, key: str, name: str,
                     except_id: str | None = None) -> None:
    stmt = select(UserCategory.id).where(UserCategory.user_id == user_id,
                                         UserCategory.name_key == key)
    if except_id is not None:
        stmt = stmt.where(UserCategory.id != except_id)
    if s.scalar(stmt) is not None:
        raise CategoryNameConflict(f"you already have a category named {name!r}",
                                   pointer="/data/attributes/name")


def _flush_unique(s: Session, name: str) -> None:
    try:
        s.flush()
    except IntegrityError as exc:  # the same name created concurrently
        raise CategoryNameConflict(f"you already have a category named {name!r}",
                                   pointer="/data/attributes/name") from exc


CategoryIdPath = Annotated[str, Path(max_length=64, pattern=CATEGORY_ID_PATTERN)]


@router.get("", response_model=Page[CategoryResource], responses=error_responses(401, 422))
def list_categories(
    ctx: CtxDep,
    user: UserDep,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
) -> dict[str, Any]:
    with ctx.db.session() as s:
        cats = user_categories(s, user.id)
        counts = _item_counts(s, user.id)
    page_cats, meta, links = paginate(cats, page, limit, BASE, {})
    return {"data": [_resource(c, counts.get(c.id, 0)) for c in page_cats], "meta": meta,
            "links": links}


@router.post("", status_code=201, response_model=Data[CategoryResource],
             responses=error_responses(401, 409, 422))
def create_category(body: Data[CategoryCreate], response: Response, ctx: CtxDep,
                    user: UserDep) -> dict[str, Any]:
    a = body.data.attributes
    key = name_key(a.name)
    with ctx.db.session() as s:
        count, last = s.execute(
            select(func.count(), func.max(UserCategory.sort_order))
            .where(UserCategory.user_id == user.id)).one()
        if count >= ctx.settings.max_categories:
            raise CategoryLimitReached(
                f"you have {count} categories; the limit is {ctx.settings.max_categories}")
        _check_name_free(s, user.id, key, a.name)
        sort_order = a.sort_order if a.sort_order is not None else \
            min(SORT_ORDER_MAX, (last + 1) if last is not None else 0)
        now = utcnow()
        cat = UserCategory(user_id=user.id, name=a.name, name_key=key, sort_order=sort_order,
                           created_at=now, updated_at=now)
        s.add(cat)
        _flush_unique(s, a.name)
        out = _resource(cat, 0)
    response.headers["Location"] = out["links"]["self"]
    return {"data": out}


@router.get("/{category_id}", response_model=Data[CategoryResource],
            responses=error_responses(401, 404, 422))
def get_category(category_id: CategoryIdPath, ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    with ctx.db.session() as s:
        cat = require_category(s, user.id, category_id, parameter="category_id")
        return {"data": _resource(cat, _item_counts(s, user.id).get(cat.id, 0))}


@router.patch("/{category_id}", response_model=Data[CategoryResource],
              responses=error_responses(401, 404, 409, 422))
def patch_category(category_id: CategoryIdPath, body: Data[CategoryPatch], ctx: CtxDep,
                   user: UserDep) -> dict[str, Any]:
    a = body.data.attributes
    with ctx.db.session() as s:
        cat = require_category(s, user.id, category_id, parameter="category_id")
        changed = False
        if a.name is not None and a.name != cat.name:
            key = name_key(a.name)
            _check_name_free(s, user.id, key, a.name, except_id=cat.id)
            cat.name, cat.name_key = a.name, key
            changed = True
        if a.sort_order is not None and a.sort_order != cat.sort_order:
            cat.sort_order = a.sort_order
            changed = True
        if changed:
            cat.updated_at = utcnow()
            _flush_unique(s, cat.name)
        return {"data": _resource(cat, _item_counts(s, user.id).get(cat.id, 0))}


@router.delete("/{category_id}", status_code=204, response_class=Response,
               responses=error_responses(401, 404, 422))
def delete_category(category_id: CategoryIdPath, ctx: CtxDep, user: UserDep) -> Response:
    """Delete the category; the library items in it stay, without it."""
    with ctx.db.session() as s:
        cat = require_category(s, user.id, category_id, parameter="category_id")
        s.execute(delete(LibraryItemCategory).where(LibraryItemCategory.category_id == cat.id))
        s.delete(cat)
    return Response(status_code=204)
