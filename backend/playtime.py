"""Playtime sessions: start / heartbeat / end with idempotent retries and an inactivity timeout.

A session that misses heartbeats for ``playtime_timeout`` seconds is closed at its last heartbeat
(lazily, whenever the user's sessions are touched). Durations add up on the library item
(``total_playtime_seconds``, ``last_played_at``). Every call may be retried: ``end`` of an
ended session returns it unchanged; ``start`` with a ``client_session_id`` (or
``Idempotency-Key``) already used returns that session; heartbeats never move time back. For
offline replay the client may state its own start time, heartbeat times and end (bounded: not in
the future, not before the start, at most ``playtime_max_session`` long).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.context import CtxDep, UserDep
from backend.db import LibraryItem, PlaytimeSession, utcnow
from backend.errors import Conflict, NotFound, ValidationFailed
from backend.jsonapi import iso
from backend.schemas import (
    Data,
    Heartbeat,
    PlaytimeSummaryResource,
    SessionEnd,
    SessionResource,
    SessionStart,
    error_responses,
)

router = APIRouter(prefix="/api/v1/library/playtime", tags=["playtime"])


def close_session(s: Session, sess: PlaytimeSession, end: datetime, reason: str) -> None:
    """Mark ended and add the duration to the library item."""
    end = max(end, sess.start_time)
    sess.end_time = end
    sess.duration_seconds = int((end - sess.start_time).total_seconds())
    sess.status = "completed"
    sess.end_reason = reason
    _add_to_item(s, sess, sess.duration_seconds, end)


def amend_session(s: Session, sess: PlaytimeSession, end: datetime) -> None:
    """The client's stated end replaces the server's timeout guess (the client knows when the
    game really stopped, e.g. heartbeats it could not deliver while offline); only the
    difference is added, and the session is then the client's, so a retry changes nothing."""
    end = max(end, sess.start_time)
    duration = int((end - sess.start_time).total_seconds())
    delta = duration - (sess.duration_seconds or 0)
    sess.end_time, sess.duration_seconds, sess.end_reason = end, duration, "client"
    sess.last_heartbeat_at = max(sess.last_heartbeat_at, end)
    _add_to_item(s, sess, delta, end)


def _add_to_item(s: Session, sess: PlaytimeSession, seconds: int, end: datetime) -> None:
    item = s.scalar(select(LibraryItem).where(LibraryItem.user_id == sess.user_id,
                                              LibraryItem.product_id == sess.product_id))
    if item is not None:
        item.total_playtime_seconds = max(0, item.total_playtime_seconds + seconds)
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
            "client_session_id": sess.start_key,
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
FUTURE_SLACK = timedelta(seconds=60)  # client clocks run a little ahead; more is refused


class TimeRejected(ValidationFailed):
    code = "PLAYTIME_TIME_INVALID"
    title = "Implausible session time"


# -- pure rules ----------------------------------------------------------------------------------


def replay_start(claimed: datetime | None, now: datetime, max_backdate: int) -> datetime:
    """The start of a session: now, or the client's own start time (offline replay) if it is
    neither in the future nor older than ``max_backdate`` seconds."""
    if claimed is None:
        return now
    if claimed > now + FUTURE_SLACK:
        raise TimeRejected(f"start_time {iso(claimed)} is in the future (server time {iso(now)})",
                           pointer="/data/attributes/start_time")
    if claimed < now - timedelta(seconds=max_backdate):
        raise TimeRejected(f"start_time {iso(claimed)} is older than {max_backdate} s",
                           pointer="/data/attributes/start_time")
    return min(claimed, now)


def explicit_end(start: datetime, now: datetime, ended_at: datetime | None,
                 duration: int | None, cap: int) -> datetime | None:
    """The end a client states (duration wins: it is measured on one clock), within bounds:
    not before the start, not in the future, at most ``cap`` seconds long. None: no statement."""
    if duration is not None:
        end = start + timedelta(seconds=duration)
        pointer = "/data/attributes/duration_seconds"
    elif ended_at is not None:
        end = ended_at
        pointer = "/data/attributes/ended_at"
    else:
        return None
    if end < start:
        raise TimeRejected(f"ended_at {iso(end)} is before the session's start {iso(start)}",
                           pointer=pointer)
    if end > now + FUTURE_SLACK:
        raise TimeRejected(f"the session would end at {iso(end)}, in the future (server time "
                           f"{iso(now)})", pointer=pointer)
    return min(end, now, start + timedelta(seconds=cap))


# -- routes --------------------------------------------------------------------------------------


def _by_client_key(s: Session, user_id: str, key: str) -> PlaytimeSession | None:
    return s.scalar(select(PlaytimeSession).where(PlaytimeSession.user_id == user_id,
                                                  PlaytimeSession.start_key == key))


@router.post("/sessions/start", status_code=201, response_model=Data[SessionResource],
             responses=error_responses(401, 403, 409, 422))
def start(body: Data[SessionStart], ctx: CtxDep, user: UserDep,
          idempotency_key: IdemKey = None) -> dict[str, Any]:
    """Start a session. ``client_session_id`` (or the ``Idempotency-Key`` header) names it on the
    client: a retried start returns the same session (the same answer) instead of a second one."""
    from backend.library import require_entitlement

    a = body.data.attributes
    key = a.client_session_id or idempotency_key
    if a.client_session_id and idempotency_key and a.client_session_id != idempotency_key:
        raise ValidationFailed("client_session_id and Idempotency-Key disagree",
                               pointer="/data/attributes/client_session_id")
    product = a.product_id
    with ctx.db.session() as s:
        if key:
            prior = _by_client_key(s, user.id, key)
            if prior is not None:
                if prior.product_id != product:
                    raise Conflict(f"session key {key!r} was used for {prior.product_id!r}",
                                   code="IDEMPOTENCY_CONFLICT",
                                   pointer="/data/attributes/product_id")
                return {"data": session_resource(prior)}
        item = require_entitlement(s, user.id, product, "/data/attributes/product_id")
        from backend.family import check_lent_access

        check_lent_access(ctx, s, item)  # a borrowed game: not while its owner plays it
        now = utcnow()
        begin = replay_start(a.start_time, now, ctx.settings.playtime_max_backdate)
        expire_stale(s, user.id, ctx.settings.playtime_timeout, now)
        # one running session per product: a new start supersedes an unfinished earlier one
        # (never a later one: replayed offline sessions arrive after newer live ones)
        for old in s.scalars(select(PlaytimeSession).where(
                PlaytimeSession.user_id == user.id, PlaytimeSession.product_id == product,
                PlaytimeSession.status == "active", PlaytimeSession.start_time <= begin)).all():
            close_session(s, old, min(old.last_heartbeat_at, begin), "superseded")
        sess = PlaytimeSession(user_id=user.id, product_id=product, start_key=key,
                               start_time=begin, last_heartbeat_at=begin, status="active")
        s.add(sess)
        try:
            s.flush()
        except IntegrityError as exc:  # the same key raced in
            raise Conflict("session key reused concurrently; retry",
                           code="IDEMPOTENCY_CONFLICT") from exc
        return {"data": session_resource(sess)}


@router.post("/sessions/{session_id}/heartbeat", status_code=204,
             responses=error_responses(401, 404, 409, 422))
def heartbeat(session_id: SessionId, ctx: CtxDep, user: UserDep,
              body: Data[Heartbeat] | None = None) -> Response:
    """204. An optional body ``{"data":{"attributes":{"at": T}}}`` replays a heartbeat the client
    recorded offline (clamped to [last heartbeat, now]: a retry never moves time back).
    After the end: 409 ``PLAYTIME_SESSION_NOT_ACTIVE`` (a retried heartbeat may see it; harmless)."""
    with ctx.db.session() as s:
        sess = _owned_session(s, user.id, session_id)
        now = utcnow()
        at = now if body is None or body.data.attributes.at is None else \
            min(body.data.attributes.at, now)
        stale_at = sess.last_heartbeat_at + timedelta(seconds=ctx.settings.playtime_timeout)
        if sess.status == "active" and min(at, now) > stale_at:
            close_session(s, sess, sess.last_heartbeat_at, "timeout")
        if sess.status != "active":
            s.commit()
            raise Conflict(f"session ended at {iso(sess.end_time)} ({sess.end_reason}); start a "
                           "new one", code="PLAYTIME_SESSION_NOT_ACTIVE")
        sess.last_heartbeat_at = max(sess.last_heartbeat_at, at)
    return Response(status_code=204)


@router.post("/sessions/{session_id}/end", response_model=Data[SessionResource],
             responses=error_responses(401, 404, 422))
def end(session_id: SessionId, ctx: CtxDep, user: UserDep,
        body: Data[SessionEnd] | None = None) -> dict[str, Any]:
    """End a session (idempotent: ending an ended session returns it unchanged).

    Without a body the session ends now, or at its last heartbeat if it timed out. With
    ``ended_at`` / ``duration_seconds`` (offline replay, or a crash closed at the last heartbeat
    the client recorded) it ends there, within bounds; such an explicit end also corrects a
    session the server had closed by timeout, once."""
    with ctx.db.session() as s:
        sess = _owned_session(s, user.id, session_id)
        now = utcnow()
        attrs = body.data.attributes if body is not None else None
        stated = explicit_end(sess.start_time, now, attrs.ended_at if attrs else None,
                              attrs.duration_seconds if attrs else None,
                              ctx.settings.playtime_max_session)
        if sess.status == "active":
            if stated is not None:
                close_session(s, sess, stated, "client")
            elif is_stale(sess, now, ctx.settings.playtime_timeout):
                close_session(s, sess, sess.last_heartbeat_at, "timeout")
            else:
                close_session(s, sess, now, "client")
        elif sess.end_reason == "timeout" and stated is not None:
            amend_session(s, sess, stated)
        return {"data": session_resource(sess)}


@router.get("/sessions/{session_id}", response_model=Data[SessionResource],
            responses=error_responses(401, 404, 422))
def get_session(session_id: SessionId, ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    with ctx.db.session() as s:
        expire_stale(s, user.id, ctx.settings.playtime_timeout)
        return {"data": session_resource(_owned_session(s, user.id, session_id))}


@router.get("/summary", response_model=Data[list[PlaytimeSummaryResource]],
            responses=error_responses(401))
def summary(ctx: CtxDep, user: UserDep,
            product_id: Annotated[str | None, Query(max_length=128)] = None) -> dict[str, Any]:
    """Per owned product (or just ``product_id``): the server's totals."""
    with ctx.db.session() as s:
        expire_stale(s, user.id, ctx.settings.playtime_timeout)
        q = select(LibraryItem).where(LibraryItem.user_id == user.id)
        if product_id is not None:
            q = q.where(LibraryItem.product_id == product_id)
        items = s.scalars(q.order_by(LibraryItem.product_id)).all()
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
