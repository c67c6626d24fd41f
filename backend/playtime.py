"""Playtime sessions: start / heartbeat / end with idempotent retries and an inactivity timeout.

A session that misses heartbeats for ``playtime_timeout`` seconds is closed at its last heartbeat
(lazily, whenever the user's sessions are touched). Durations add up on the library item
(``total_playtime_seconds``, ``last_played_at``). ``end`` is idempotent: ending an ended session
returns it unchanged; ``start`` with an ``Idempotency-Key`` already used returns that session.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.context import CtxDep, UserDep
from backend.db import LibraryItem, PlaytimeSession, utcnow
from backend.errors import Conflict, NotFound
from backend.schemas import (
    Data,
    PlaytimeSummaryResource,
    SessionResource,
    SessionStart,
    error_responses,
)

router = APIRouter(prefix="/api/v1/library/playtime", tags=["playtime"])


def close_session(s: Session, sess: PlaytimeSession, end: datetime, reason: str) -> None:
    """Pure-ish state change: mark ended and add the duration to the library item."""
    end = max(end, sess.start_time)
    sess.end_time = end
    sess.duration_seconds = int((end - sess.start_time).total_seconds())
    sess.status = "completed"
    sess.end_reason = reason
    item = s.scalar(select(LibraryItem).where(LibraryItem.user_id == sess.user_id,
                                              LibraryItem.product_id == sess.product_id))
    if item is not None:
        item.total_playtime_seconds += sess.duration_seconds
        if item.last_played_at is None or item.last_played_at < end:
            item.last_played_at = end


def is_stale(sess: PlaytimeSession, now: datetime, timeout: int) -> bool:
    return sess.status == "active" and now - sess.last_heartbeat_at > timedelta(seconds=timeout)


def expire_stale(s: Session, user_id: str, timeout: int, now: datetime | None = None) -> int:
    now = now or utcnow()
    cutoff = now - timedelta(seconds=timeout)
    stale = s.scalars(select(PlaytimeSession).where(
        PlaytimeSession.user_id == user_id, PlaytimeSession.status == "active",
        PlaytimeSession.last_heartbeat_at < cutoff)).all()
    for sess in stale:
        close_session(s, sess, sess.last_heartbeat_at, "timeout")
    return len(stale)


def session_resource(sess: PlaytimeSession) -> dict[str, Any]:
    return {
        "type": "playtimeSession",
        "id": sess.id,
        "attributes": {
            "product_id": sess.product_id,
            "start_time": sess.start_time,
            "last_heartbeat_at": sess.last_heartbeat_at,
            "end_time": sess.end_time,
            "duration_seconds": sess.duration_seconds,
            "status": sess.status,
            "end_reason": sess.end_reason,
        },
    }


def _owned_session(s: Session, user_id: str, session_id: str) -> PlaytimeSession:
    sess = s.scalar(select(PlaytimeSession).where(PlaytimeSession.id == session_id,
                                                  PlaytimeSession.user_id == user_id))
    if sess is None:
        raise NotFound(f"playtime session {session_id!r} not found",
                       code="PLAYTIME_SESSION_NOT_FOUND", parameter="session_id")
    return sess


IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=128)]
SessionId = Annotated[str, Path(max_length=64)]


@router.post("/sessions/start", status_code=201, response_model=Data[SessionResource],
             responses=error_responses(401, 403, 422))
def start(body: Data[SessionStart], ctx: CtxDep, user: UserDep,
          idempotency_key: IdemKey = None) -> dict[str, Any]:
    from backend.library import require_entitlement

    product = body.data.attributes.product_id
    with ctx.db.session() as s:
        if idempotency_key:
            prior = s.scalar(select(PlaytimeSession).where(
                PlaytimeSession.user_id == user.id, PlaytimeSession.start_key == idempotency_key))
            if prior is not None:
                return {"data": session_resource(prior)}
        require_entitlement(s, user.id, product, "/data/attributes/product_id")
        now = utcnow()
        expire_stale(s, user.id, ctx.settings.playtime_timeout, now)
        # one running session per product: a new start supersedes an unfinished one
        for old in s.scalars(select(PlaytimeSession).where(
                PlaytimeSession.user_id == user.id, PlaytimeSession.product_id == product,
                PlaytimeSession.status == "active")).all():
            close_session(s, old, old.last_heartbeat_at, "superseded")
        sess = PlaytimeSession(user_id=user.id, product_id=product, start_key=idempotency_key,
                               start_time=now, last_heartbeat_at=now, status="active")
        s.add(sess)
        try:
            s.flush()
        except IntegrityError as exc:  # the same key raced in
            raise Conflict("Idempotency-Key reused concurrently; retry",
                           code="IDEMPOTENCY_CONFLICT") from exc
        return {"data": session_resource(sess)}


@router.post("/sessions/{session_id}/heartbeat", status_code=204,
             responses=error_responses(401, 404, 409, 422))
def heartbeat(session_id: SessionId, ctx: CtxDep, user: UserDep) -> Response:
    with ctx.db.session() as s:
        sess = _owned_session(s, user.id, session_id)
        now = utcnow()
        if is_stale(sess, now, ctx.settings.playtime_timeout):
            close_session(s, sess, sess.last_heartbeat_at, "timeout")
        if sess.status != "active":
            s.commit()
            raise Conflict("session already ended; start a new one",
                           code="PLAYTIME_SESSION_NOT_ACTIVE")
        sess.last_heartbeat_at = now
    return Response(status_code=204)


@router.post("/sessions/{session_id}/end", response_model=Data[SessionResource],
             responses=error_responses(401, 404, 422))
def end(session_id: SessionId, ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    with ctx.db.session() as s:
        sess = _owned_session(s, user.id, session_id)
        if sess.status == "active":
            now = utcnow()
            if is_stale(sess, now, ctx.settings.playtime_timeout):
                close_session(s, sess, sess.last_heartbeat_at, "timeout")
            else:
                close_session(s, sess, now, "client")
        return {"data": session_resource(sess)}


@router.get("/sessions/{session_id}", response_model=Data[SessionResource],
            responses=error_responses(401, 404, 422))
def get_session(session_id: SessionId, ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    with ctx.db.session() as s:
        expire_stale(s, user.id, ctx.settings.playtime_timeout)
        return {"data": session_resource(_owned_session(s, user.id, session_id))}


@router.get("/summary", response_model=Data[list[PlaytimeSummaryResource]],
            responses=error_responses(401))
def summary(ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    with ctx.db.session() as s:
        expire_stale(s, user.id, ctx.settings.playtime_timeout)
        items = s.scalars(select(LibraryItem).where(LibraryItem.user_id == user.id)
                          .order_by(LibraryItem.product_id)).all()
        counts = dict(s.execute(
            select(PlaytimeSession.product_id, func.count())
            .where(PlaytimeSession.user_id == user.id, PlaytimeSession.status == "completed")
            .group_by(PlaytimeSession.product_id)).tuples().all())
        active = dict(s.execute(
            select(PlaytimeSession.product_id, PlaytimeSession.id)
            .where(PlaytimeSession.user_id == user.id, PlaytimeSession.status == "active")
        ).tuples().all())
    return {"data": [
        {"type": "playtimeSummary", "id": it.product_id, "attributes": {
            "product_id": it.product_id,
            "total_playtime_seconds": it.total_playtime_seconds,
            "last_played_at": it.last_played_at,
            "session_count": int(counts.get(it.product_id, 0)),
            "active_session_id": active.get(it.product_id),
        }} for it in items
    ]}
