"""``/ws/download/progress`` (download seed 3.3): a user's live download task status.

Every status report the engine (or any client) sends to ``POST /download/tasks/{id}/status``,
and every status change made through the REST routes (create, pause, resume, cancel, an update
marked applied), is recorded in the task's history; after it commits, this module turns the new
history row into the seed's ``downloadTaskStatusUpdate`` (and ``downloadError`` for an error)
and publishes it on the user's event bus (``backend.events``: in process, or Redis pub/sub
across workers) under ``downloads:<user>`` and ``downloads:<user>:<task>``. So only that
user's connections get them, never another user's, and they never mix with
``/api/v1/ws/library-updates``.

``ws://HOST/ws/download/progress?taskId=<id>`` (also under ``/api/v1``) with the access token as
``Authorization: Bearer`` or ``?access_token=``: after accepting, the server sends the task's
current ``downloadTaskStatusUpdate``, then each new one; without ``taskId`` the current state of
each active task of the user, then updates of all the user's tasks. Unknown or another user's
task: the upgrade is refused with 404 ``DOWNLOAD_TASK_NOT_FOUND``. Token expiry, re-``authenticate``,
``ping`` and the slow-consumer close work as on the library channel (``backend.ws``).

``downloadSpeedBps`` and ``estimatedTimeLeftSeconds`` are derived from two consecutive
``downloading`` reports of the task (bytes over time); with one report they are null.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from backend.context import Context, ctx_of
from backend.db import DownloadTask, DownloadTaskHistory
from backend.errors import ApiError, NotFound, ServiceUnavailable
from backend.ws import _authenticate, _pump, _refuse, iso_ts

log = logging.getLogger(__name__)
router = APIRouter(tags=["websocket"])

SEED_STATUS = {"verifying": "verifying_files"}
ACTIVE = ("queued", "preparing", "downloading", "paused", "verifying")


def channel(user_id: str, task_id: str | None = None) -> str:
    return f"downloads:{user_id}" + (f":{task_id}" if task_id else "")


def status_update(task: DownloadTask, last: tuple[str, int, datetime] | None,
                  prev: tuple[str, int, datetime] | None) -> dict[str, Any]:
    """Pure: the seed's ``downloadTaskStatusUpdate`` for a task, from its newest history row
    ``last`` and the one before, ``prev`` (status, downloaded bytes, time)."""
    downloaded = last[1] if last is not None else task.downloaded_bytes
    total = task.download_size_bytes
    if task.status == "completed":
        percent = 100.0
    else:
        percent = round(min(100.0, 100.0 * downloaded / total), 2) if total > 0 else 0.0
    speed: int | None = None
    eta: int | None = None
    if task.status == "downloading" and last is not None and prev is not None \
            and prev[0] == "downloading" and last[0] == "downloading":
        dt = (last[2] - prev[2]).total_seconds()
        if dt > 0 and last[1] >= prev[1]:
            speed = int((last[1] - prev[1]) / dt)
            if speed > 0:
                eta = int(max(0, total - downloaded) / speed + 0.999)
    error = None
    if task.status == "error":
        error = {"errorCode": task.error_code, "errorMessage": task.error_message}
    return {"type": "downloadTaskStatusUpdate", "payload": {
        "taskId": task.id, "status": SEED_STATUS.get(task.status, task.status),
        "taskStatus": task.status, "productId": task.product_id, "versionId": task.version_id,
        "kind": task.kind, "totalProgressPercentage": percent, "downloadSpeedBps": speed,
        "estimatedTimeLeftSeconds": eta, "downloadedBytes": downloaded, "totalSizeBytes": total,
        "filesSizeBytes": task.total_size_bytes, "errorDetails": error,
        "updatedAt": iso_ts(task.updated_at.timestamp())}}


def download_error(task: DownloadTask) -> dict[str, Any]:
    return {"type": "downloadError", "payload": {
        "taskId": task.id, "itemId": None, "errorCode": task.error_code,
        "errorMessage": task.error_message}}


def _messages(s: Session, task: DownloadTask) -> list[dict[str, Any]]:
    rows = s.execute(select(DownloadTaskHistory.status, DownloadTaskHistory.downloaded_bytes,
                            DownloadTaskHistory.created_at)
                     .where(DownloadTaskHistory.task_id == task.id)
                     .order_by(DownloadTaskHistory.id.desc()).limit(2)).all()
    last = tuple(rows[0]) if rows else None
    prev = tuple(rows[1]) if len(rows) > 1 else None
    out = [status_update(task, last, prev)]  # type: ignore[arg-type]
    if task.status == "error":
        out.append(download_error(task))
    return out


def watch_history(ctx: Context) -> None:
    """Publish after each commit that added status history (hooked on the session factory, so
    the download routes need not know about it)."""

    def after_flush(session: Session, _flush: Any) -> None:
        touched: set[str] = session.info.setdefault("progress_touched", set())
        for obj in session.new:
            if isinstance(obj, DownloadTaskHistory):
                touched.add(obj.task_id)

    def after_commit(session: Session) -> None:
        touched = session.info.pop("progress_touched", None)
        if not touched:
            return
        try:
            with ctx.db.session() as s:
                for task_id in sorted(touched):
                    task = s.get(DownloadTask, task_id)
                    if task is None:
                        continue
                    for msg in _messages(s, task):
                        ctx.events.publish(channel(task.user_id), msg)
                        ctx.events.publish(channel(task.user_id, task.id), msg)
        except Exception:  # a lost notice must never fail the request that committed
            log.exception("could not publish download progress")

    event.listen(ctx.db.sessions, "after_flush", after_flush)
    event.listen(ctx.db.sessions, "after_commit", after_commit)
    event.listen(ctx.db.sessions, "after_soft_rollback",
                 lambda s, _t: s.info.pop("progress_touched", None))


def _snapshot(ctx: Context, user_id: str, task_id: str | None) -> list[dict[str, Any]]:
    with ctx.db.session() as s:
        if task_id is not None:
            task = s.scalar(select(DownloadTask).where(DownloadTask.id == task_id,
                                                       DownloadTask.user_id == user_id))
            if task is None:
                raise NotFound(f"download task {task_id!r} not found",
                               code="DOWNLOAD_TASK_NOT_FOUND", parameter="taskId")
            return [status_update(task, None, None)]
        tasks = s.scalars(select(DownloadTask).where(DownloadTask.user_id == user_id,
                                                     DownloadTask.status.in_(ACTIVE))
                          .order_by(DownloadTask.created_at)).all()
        return [status_update(t, None, None) for t in tasks]


async def _progress(websocket: WebSocket) -> None:
    task_id = websocket.query_params.get("taskId") or None
    try:
        user, expires = _authenticate(websocket)
        if task_id is not None and len(task_id) > 64:
            raise NotFound("no such download task", code="DOWNLOAD_TASK_NOT_FOUND",
                           parameter="taskId")
        ctx = ctx_of(websocket)
        # subscribe first: nothing committed after the snapshot was read can be missed
        sub = ctx.events.subscribe(channel(user.id, task_id))
        try:
            first = await run_in_threadpool(_snapshot, ctx, user.id, task_id)
        except OperationalError as exc:  # the database is down: refused with 503
            sub.close()
            raise ServiceUnavailable("database unavailable") from exc
        except BaseException:
            sub.close()
            raise
    except ApiError as exc:
        await _refuse(websocket, exc)
        return
    try:
        await websocket.accept()
        for msg in first:
            await websocket.send_json(msg)
        await _pump(websocket, sub, user, expires)
    except WebSocketDisconnect:
        pass
    finally:
        sub.close()


@router.websocket("/ws/download/progress")
async def download_progress(websocket: WebSocket) -> None:
    await _progress(websocket)


@router.websocket("/api/v1/ws/download/progress")
async def download_progress_v1(websocket: WebSocket) -> None:
    await _progress(websocket)
