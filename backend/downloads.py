"""Download service: tasks and their status history, the queue, signed CDN sources, update checks,
update tasks and integrity references (``/api/v1/download``).

The engine does the transfer; the backend authorizes it (entitlement), says what to fetch
(manifest and delta paths in the store) and from where (signed ``cdnSources``), and keeps the
task state the engine reports as history.
"""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import FileResponse
from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from backend import events
from backend.catalog import ManifestForm
from backend.cdn import aissue_sources, issue_sources
from backend.context import Context, CtxDep, UserDep
from backend.db import (
    DownloadTask,
    DownloadTaskHistory,
    LibraryItem,
    UpdateHistory,
    VerificationTask,
    utcnow,
)
from backend.download_items import DownloadTaskDocument, download_items, item_id
from backend.errors import ApiError, Conflict, NotFound, PermissionDenied
from backend.family import check_lent_access
from backend.jsonapi import MAX_LIMIT, paginate
from backend.library import require_entitlement
from backend.progress_ws import channel as progress_channel
from backend.schemas import (
    ClaimRequest,
    Data,
    DownloadTaskRequest,
    DownloadTaskResource,
    IntegrityRequest,
    ItemReport,
    ManifestKeyResource,
    Page,
    ProductId,
    ReorderEntry,
    StatusHistoryResource,
    StatusReport,
    TaskStatus,
    UpdateAppliedRequest,
    UpdateCheckRequest,
    UpdateHistoryResource,
    UpdateInfoResource,
    UpdateInitiateRequest,
    VerificationResource,
    VersionId,
    error_responses,
)

router = APIRouter(prefix="/api/v1/download", tags=["download"])
# the CDN-token refresh, the route every downloading client calls again and again: included
# before every other router (FastAPI matches routes in order; ~50 others tried first cost about a
# third of the request's CPU)
hot_router = APIRouter(prefix="/api/v1/download", tags=["download"])

ACTIVE = ("queued", "preparing", "downloading", "paused", "verifying")
TERMINAL = ("completed", "cancelled")
CLAIMABLE = ("queued", "preparing", "downloading", "verifying")


class TaskStateConflict(Conflict):
    code = "DOWNLOAD_TASK_STATE_CONFLICT"


class ClaimedElsewhere(Conflict):
    """A status report from a device that does not run the task (ours: remote downloads)."""

    code = "DOWNLOAD_TASK_CLAIMED_ELSEWHERE"


class QueueFull(ApiError):
    status = 409
    code = "DOWNLOAD_QUEUE_FULL"
    title = "Download queue full"


# -- pure helpers --------------------------------------------------------------------------------


def manifest_ref(product: str, version: str) -> dict[str, str]:
    path = f"{product}/manifests/{version}.manifest"
    return {"path": path, "signaturePath": f"{product}/manifests/{version}.sig"}


def delta_ref(product: str, from_version: str, to_version: str) -> dict[str, str]:
    base = f"{product}/deltas/{from_version}--{to_version}"
    return {"path": f"{base}.delta", "signaturePath": f"{base}.sig"}


def next_status(current: str, requested: str) -> str:
    """The status after a client report, or TaskStateConflict. A paused task does not become
    ``downloading`` from a report (the runner's progress report that crossed the player's
    pause, made on another device): a resume (REST) or the runner's own ``queued`` (the player
    resumed it there) ends the pause."""
    if current == requested:
        return current
    if current in TERMINAL:
        raise TaskStateConflict(f"task is {current}; it cannot become {requested}")
    if current == "paused" and requested == "downloading":
        raise TaskStateConflict("task is paused; a progress report does not resume it")
    return requested


def check_reporter(origin: str | None, runner: str | None, reporter: str | None) -> None:
    """A task run by a device (``runner``: the claimer of a remote download, or the device
    that created it) takes status reports from that device only; ClaimedElsewhere otherwise.
    A claimed remote download needs the reporter's id; a device's own task reported without
    one (older clients) is taken, as before."""
    if runner is None:
        return
    if reporter is None and origin == "remote":
        raise ClaimedElsewhere("this remote download is run by another device; say deviceId")
    if reporter is not None and reporter != runner:
        raise ClaimedElsewhere(f"task is run by device {runner!r}, not {reporter!r}")


def queue_order_key(t: DownloadTask) -> tuple[int, int, float]:
    return (-t.priority, t.queue_order, t.created_at.timestamp())


# -- persistence helpers -------------------------------------------------------------------------


def owned_task(s: Session, user_id: str, task_id: str) -> DownloadTask:
    task = s.scalar(select(DownloadTask).where(DownloadTask.id == task_id,
                                               DownloadTask.user_id == user_id))
    if task is None:
        raise NotFound(f"download task {task_id!r} not found", code="DOWNLOAD_TASK_NOT_FOUND",
                       parameter="taskId")
    return task


def active_queue(s: Session, user_id: str) -> list[DownloadTask]:
    tasks = s.scalars(select(DownloadTask).where(DownloadTask.user_id == user_id,
                                                 DownloadTask.status.in_(ACTIVE))).all()
    return sorted(tasks, key=queue_order_key)


def record(s: Session, task: DownloadTask, status: str, *, downloaded: int | None = None,
           error_code: str | None = None, error_message: str | None = None) -> None:
    task.status = status
    if downloaded is not None:
        task.downloaded_bytes = downloaded
    if status == "error":
        task.error_code, task.error_message = error_code, error_message
    else:
        task.error_code, task.error_message = None, None
    task.updated_at = utcnow()
    s.add(DownloadTaskHistory(task_id=task.id, status=status, downloaded_bytes=task.downloaded_bytes,
                              error_code=error_code, error_message=error_message,
                              created_at=task.updated_at))


def task_resource(ctx: Context, t: DownloadTask | SimpleNamespace, *, position: int | None = None,
                  sources: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    delta = None
    if t.kind == "update" and t.from_version_id and ctx.catalog.has_delta(
            t.product_id, t.from_version_id, t.version_id):
        delta = delta_ref(t.product_id, t.from_version_id, t.version_id)
    return {
        "type": "downloadTask",
        "id": t.id,
        "attributes": {
            "productId": t.product_id,
            "versionId": t.version_id,
            "fromVersionId": t.from_version_id,
            "kind": t.kind,
            "status": t.status,
            "targetPath": t.target_path,
            "priority": t.priority,
            "queuePosition": position,
            "totalSizeBytes": t.total_size_bytes,
            "downloadSizeBytes": t.download_size_bytes,
            "downloadedBytes": t.downloaded_bytes,
            "createdAt": t.created_at,
            "updatedAt": t.updated_at,
            "errorCode": t.error_code,
            "errorMessage": t.error_message,
            "manifest": manifest_ref(t.product_id, t.version_id),
            "delta": delta,
            "cdnSources": sources,
            "origin": t.origin,
            "deviceId": t.device_id,
            "targetDeviceId": t.target_device_id,
        },
        "links": {"self": f"/api/v1/download/tasks/{t.id}"},
    }


def task_change(t: DownloadTask, change: str) -> dict[str, Any]:
    """``download.task.changed`` for the user's library channel: how a running engine of the
    user learns that a task was created for it, or paused, resumed or cancelled elsewhere
    (remote downloads). Sent for changes made through the REST routes, never for the engine's
    own status reports (it knows those)."""
    return events.message(events.DOWNLOAD_TASK_CHANGED, {
        "change": change, "task_id": t.id, "status": t.status, "kind": t.kind,
        "product_id": t.product_id, "version_id": t.version_id,
        "from_version_id": t.from_version_id, "priority": t.priority, "origin": t.origin,
        "device_id": t.device_id, "target_device_id": t.target_device_id,
        "updated_at": t.updated_at})


def _position(s: Session, t: DownloadTask) -> int | None:
    if t.status not in ACTIVE:
        return None
    queue = active_queue(s, t.user_id)
    return next((i for i, q in enumerate(queue) if q.id == t.id), None)


def _sources(ctx: Context, product: str, user_id: str) -> list[dict[str, Any]]:
    return issue_sources(ctx.secrets.cdn_key, ctx.edges, ctx.cdn_limiter, product, user_id,
                         ctx.settings.cdn_token_ttl)


def create_task(ctx: Context, s: Session, user_id: str, *, product: str, version: str,
                from_version: str | None, kind: str, target_path: str, priority: int,
                total: int, download: int, device_id: str | None = None,
                target_device_id: str | None = None,
                ) -> tuple[DownloadTask, list[dict[str, Any]]]:
    """A new queued task. With ``device_id`` the engine that asked runs it itself; without, it
    is a remote download (``origin`` "remote") for ``target_device_id`` or any engine of the
    user, announced on the library channel once committed (``Announcements``)."""
    active = s.scalar(select(func.count()).select_from(DownloadTask).where(
        DownloadTask.user_id == user_id, DownloadTask.status.in_(ACTIVE))) or 0
    if active >= ctx.settings.max_active_tasks:
        raise QueueFull(f"at most {ctx.settings.max_active_tasks} active downloads")
    sources = _sources(ctx, product, user_id)  # rate limit before anything is stored
    order = s.scalar(select(func.coalesce(func.max(DownloadTask.queue_order), -1)).where(
        DownloadTask.user_id == user_id)) or 0
    now = utcnow()
    task = DownloadTask(user_id=user_id, product_id=product, version_id=version,
                        from_version_id=from_version, kind=kind, target_path=target_path,
                        status="queued", priority=priority, queue_order=int(order) + 1,
                        total_size_bytes=total, download_size_bytes=download, downloaded_bytes=0,
                        created_at=now, updated_at=now,
                        origin="device" if device_id else "remote", device_id=device_id,
                        target_device_id=None if device_id else target_device_id)
    s.add(task)
    s.flush()
    s.add(DownloadTaskHistory(task_id=task.id, status="queued", downloaded_bytes=0,
                              created_at=now))
    return task, sources


TaskId = Annotated[str, Path(max_length=64)]


# -- routes: key and tasks -----------------------------------------------------------------------


@router.get("/manifest-key", response_model=Data[ManifestKeyResource],
            responses=error_responses(401))
def manifest_key(ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    return {"data": {"type": "manifestKey",
                     "attributes": {"algorithm": "ed25519",
                                    "publicKey": ctx.catalog.public_key_hex}}}


MANIFEST_VERSION_HEADER = "X-Manifest-Version"
MANIFEST_SIGNATURE_HEADER = "X-Manifest-Signature"  # base64 of the 64-byte Ed25519 signature
MANIFEST_FORM_HEADER = "X-Manifest-Form"  # json | binary: which form the bytes are
_MANIFEST_RESPONSE = {"description": "The signed manifest's bytes as published (zstd JSON, or "
                                     "its binary form when asked for and published); its "
                                     "version, form and base64 Ed25519 signature in headers",
                      "content": {"application/octet-stream": {
                          "schema": {"type": "string", "format": "binary"}}}}


@router.get("/manifests/{productId}", response_class=Response,
            responses={200: _MANIFEST_RESPONSE, **error_responses(401, 403, 404, 422)})
def get_manifest(productId: Annotated[ProductId, Path()], ctx: CtxDep, user: UserDep,
                 versionId: Annotated[VersionId | None, Query()] = None,
                 form: Annotated[ManifestForm, Query()] = ManifestForm.JSON) -> Response:
    """The signed manifest of a version the player may download (the latest without
    ``versionId``), under the task routes' rules. An engine asks for it beside a new task's
    grant and checks and decodes it while the grant is made, instead of fetching it from the
    CDN once the grant names it; the signature, not this answer, is what it trusts.
    ``form=binary`` asks for the binary form (``patcher.manifestbin``, a few ms to decode
    where the JSON takes tens); a version published before that form existed answers JSON,
    as ``X-Manifest-Form`` says."""
    with ctx.db.session() as s:
        item = require_entitlement(s, user.id, productId, "productId", catalog=ctx.catalog)
        check_lent_access(ctx, s, item)
    v = ctx.catalog.resolve_version(productId, versionId, "versionId")
    path, st, sig, served = ctx.catalog.signed_manifest(productId, v.version_id, form)
    # streamed from the file a MiB at a time: a big game's manifest (tens of MB) is never
    # held whole per request; a file replaced meanwhile fails its signature on the engine,
    # which then takes the CDN's copy
    return _ManifestFile(path, stat_result=st, media_type="application/octet-stream",
                         headers={MANIFEST_VERSION_HEADER: v.version_id,
                                  MANIFEST_FORM_HEADER: served.value,
                                  MANIFEST_SIGNATURE_HEADER: base64.b64encode(sig).decode("ascii"),
                                  "Cache-Control": "private, no-store"})


class _ManifestFile(FileResponse):
    chunk_size = 1 << 20  # one read (one worker-thread hop) per MiB, not per 64 KiB


@router.post("/tasks", status_code=202, response_model=Data[DownloadTaskResource],
             responses=error_responses(401, 403, 404, 409, 422, 429))
def post_task(body: Data[DownloadTaskRequest], ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    a = body.data.attributes
    with Announcements(ctx, user.id) as changed, ctx.db.session() as s:
        item = require_entitlement(s, user.id, a.productId, "/data/attributes/productId",
                                   catalog=ctx.catalog)
        check_lent_access(ctx, s, item)  # a borrowed game: not while its owner plays it
        v = ctx.catalog.resolve_version(a.productId, a.versionId, "/data/attributes/versionId")
        info = ctx.catalog.manifest_info(a.productId, v.version_id)
        task, sources = create_task(
            ctx, s, user.id, product=a.productId, version=v.version_id, from_version=None,
            kind="install", target_path=a.targetPath, priority=a.priority,
            total=info.total_size, download=info.install_bytes, device_id=a.deviceId,
            target_device_id=a.targetDeviceId)
        changed.append(task_change(task, "created"))
        return {"data": task_resource(ctx, task, position=_position(s, task), sources=sources)}


@router.get("/tasks", response_model=Page[DownloadTaskResource], responses=error_responses(401, 422))
def list_tasks(
    ctx: CtxDep, user: UserDep,
    status: Annotated[TaskStatus | None, Query()] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
) -> dict[str, Any]:
    with ctx.db.session() as s:
        q = select(DownloadTask).where(DownloadTask.user_id == user.id)
        if status is not None:
            q = q.where(DownloadTask.status == status)
        tasks = s.scalars(q.order_by(DownloadTask.created_at.desc(), DownloadTask.id)).all()
        positions = {t.id: i for i, t in enumerate(active_queue(s, user.id))}
    items, meta, links = paginate(tasks, page, limit, "/api/v1/download/tasks",
                                  {"status": status})
    return {"data": [task_resource(ctx, t, position=positions.get(t.id)) for t in items],
            "meta": meta, "links": links}


@router.get("/tasks/queue", response_model=Data[list[DownloadTaskResource]],
            responses=error_responses(401))
def get_queue(ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    with ctx.db.session() as s:
        queue = active_queue(s, user.id)
    return {"data": [task_resource(ctx, t, position=i) for i, t in enumerate(queue)]}


@router.post("/tasks/queue/reorder", response_model=Data[list[DownloadTaskResource]],
             responses=error_responses(401, 404, 422))
def reorder_queue(body: Data[list[ReorderEntry]], ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    with Announcements(ctx, user.id) as changed, ctx.db.session() as s:
        for i, entry in enumerate(body.data):
            task = s.scalar(select(DownloadTask).where(DownloadTask.id == entry.taskId,
                                                       DownloadTask.user_id == user.id))
            if task is None:
                raise NotFound(f"download task {entry.taskId!r} not found",
                               code="DOWNLOAD_TASK_NOT_FOUND", pointer=f"/data/{i}/taskId")
            task.queue_order = entry.order
        s.flush()
        queue = active_queue(s, user.id)
        changed.append(events.message(events.DOWNLOAD_QUEUE_REORDERED,
                                      {"task_ids": [t.id for t in queue]}))
    return {"data": [task_resource(ctx, t, position=i) for i, t in enumerate(queue)]}


@router.get("/tasks/{taskId}", response_model=DownloadTaskDocument,
            response_model_exclude_unset=True, responses=error_responses(401, 404, 422))
def get_task(taskId: TaskId, ctx: CtxDep, user: UserDep,
             include: Annotated[Literal["items"] | None, Query(
                 description="items: the seed's per-file DownloadItem list in `included`")
             ] = None) -> dict[str, Any]:
    with ctx.db.session() as s:
        task = owned_task(s, user.id, taskId)
        doc: dict[str, Any] = {"data": task_resource(ctx, task, position=_position(s, task))}
        if include == "items":
            doc["included"] = download_items(ctx.catalog, task)
        return doc


@router.get("/tasks/{taskId}/history", response_model=Data[list[StatusHistoryResource]],
            responses=error_responses(401, 404, 422))
def task_history(taskId: TaskId, ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    with ctx.db.session() as s:
        owned_task(s, user.id, taskId)
        rows = s.scalars(select(DownloadTaskHistory).where(DownloadTaskHistory.task_id == taskId)
                         .order_by(DownloadTaskHistory.id)).all()
    return {"data": [
        {"type": "downloadTaskStatus", "id": str(r.id), "attributes": {
            "status": r.status, "downloadedBytes": r.downloaded_bytes, "errorCode": r.error_code,
            "errorMessage": r.error_message, "createdAt": r.created_at}} for r in rows]}


@router.post("/tasks/{taskId}/status", response_model=Data[DownloadTaskResource],
             responses=error_responses(401, 404, 409, 422))
def report_status(taskId: TaskId, body: Data[StatusReport], ctx: CtxDep,
                  user: UserDep) -> dict[str, Any]:
    a = body.data.attributes
    with ctx.db.session() as s:
        task = owned_task(s, user.id, taskId)
        check_reporter(task.origin, task.device_id, a.deviceId)
        status = next_status(task.status, a.status)
        record(s, task, status, downloaded=a.downloadedBytes, error_code=a.errorCode,
               error_message=a.errorMessage)
        s.flush()
        doc = {"data": task_resource(ctx, task, position=_position(s, task))}
    for item in a.items or ():  # after the commit, after the task's own update
        msg = item_progress(taskId, item)
        ctx.events.publish(progress_channel(user.id), msg)
        ctx.events.publish(progress_channel(user.id, taskId), msg)
    return doc


def item_progress(task_id: str, item: ItemReport) -> dict[str, Any]:
    """The seed's ``downloadItemProgressUpdate`` for one reported file (``itemId`` as in the
    task's ``?include=items``); a retry is ``status`` "retrying" with the try count, the CDN
    source tried next and why the last try failed (ours, beside the seed's fields)."""
    return {"type": "downloadItemProgressUpdate", "payload": {
        "taskId": task_id, "itemId": item_id(task_id, item.relativePath),
        "relativePath": item.relativePath, "status": item.status,
        "downloadedBytes": item.downloadedBytes, "totalFileSizeBytes": item.totalFileSizeBytes,
        "retryCount": item.retryCount, "cdnSourceId": item.cdnSourceId,
        "errorCode": item.errorCode, "errorMessage": item.errorMessage}}


@router.post("/tasks/{taskId}/pause", response_model=Data[DownloadTaskResource],
             responses=error_responses(401, 404, 409, 422))
def pause_task(taskId: TaskId, ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    with Announcements(ctx, user.id) as changed, ctx.db.session() as s:
        task = owned_task(s, user.id, taskId)
        if task.status != "paused":
            if task.status not in ("queued", "preparing", "downloading", "verifying"):
                raise TaskStateConflict(f"a {task.status} task cannot be paused")
            record(s, task, "paused")
            s.flush()
        changed.append(task_change(task, "paused"))
        return {"data": task_resource(ctx, task, position=_position(s, task))}


@router.post("/tasks/{taskId}/resume", response_model=Data[DownloadTaskResource],
             responses=error_responses(401, 404, 409, 422, 429))
def resume_task(taskId: TaskId, ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    with Announcements(ctx, user.id) as changed, ctx.db.session() as s:
        task = owned_task(s, user.id, taskId)
        if task.status in TERMINAL:
            raise TaskStateConflict(f"a {task.status} task cannot be resumed")
        require_entitlement(s, user.id, task.product_id, catalog=ctx.catalog)
        sources = _sources(ctx, task.product_id, user.id)
        if task.status in ("paused", "error"):
            record(s, task, "downloading")
            s.flush()
        changed.append(task_change(task, "resumed"))
        return {"data": task_resource(ctx, task, position=_position(s, task), sources=sources)}


@router.delete("/tasks/{taskId}", status_code=204, response_class=Response,
               responses=error_responses(401, 404, 409, 422))
def cancel_task(taskId: TaskId, ctx: CtxDep, user: UserDep) -> Response:
    with Announcements(ctx, user.id) as changed, ctx.db.session() as s:
        task = owned_task(s, user.id, taskId)
        if task.status == "completed":
            raise TaskStateConflict("a completed task cannot be cancelled")
        if task.status != "cancelled":
            record(s, task, "cancelled")
            s.flush()
        changed.append(task_change(task, "cancelled"))
    return Response(status_code=204)


@router.post("/tasks/{taskId}/claim", response_model=Data[DownloadTaskResource],
             responses=error_responses(401, 403, 404, 409, 422, 429))
def claim_task(taskId: TaskId, body: Data[ClaimRequest], ctx: CtxDep,
               user: UserDep) -> dict[str, Any]:
    """An engine takes a remote download to run it (ours; remote downloads). One conditional
    UPDATE: of two engines of the user claiming at once, one gets the task and the other 409
    ``DOWNLOAD_TASK_CLAIMED_ELSEWHERE``; claiming again by the same device answers the task
    again (a retry after a lost answer). The UPDATE repeats the status check, so a task
    paused or cancelled between the read and the write is 409 ``DOWNLOAD_TASK_STATE_CONFLICT``,
    never a claim of a task nobody should run. The answer carries signed ``cdnSources``, like
    create."""
    device = body.data.attributes.deviceId
    with ctx.db.session() as s:
        task = owned_task(s, user.id, taskId)
        if task.origin != "remote":
            raise TaskStateConflict("only a remote download can be claimed; this task belongs "
                                    "to the device that created it")
        if task.status not in CLAIMABLE:  # finished, failed or paused: nothing to run now
            raise TaskStateConflict(f"task is {task.status}; only a waiting task can be claimed")
        if task.target_device_id not in (None, device):
            raise TaskStateConflict(f"task is meant for device {task.target_device_id!r}")
        item = require_entitlement(s, user.id, task.product_id, catalog=ctx.catalog)
        check_lent_access(ctx, s, item)
        taken = s.execute(update(DownloadTask).where(
            DownloadTask.id == task.id,
            DownloadTask.status.in_(CLAIMABLE),
            or_(DownloadTask.device_id.is_(None), DownloadTask.device_id == device),
        ).values(device_id=device, updated_at=utcnow())
            .execution_options(synchronize_session=False))
        s.refresh(task)  # what the UPDATE saw: another device's claim or a pause/cancel
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            if task.status not in CLAIMABLE:
                raise TaskStateConflict(f"task is {task.status}; only a waiting task can be "
                                        "claimed")
            raise ClaimedElsewhere("another device runs this task")
        sources = _sources(ctx, task.product_id, user.id)
        return {"data": task_resource(ctx, task, position=_position(s, task), sources=sources)}


class Announcements:
    """Collects library-channel messages inside a route's transaction and publishes them to
    the user once it committed (a client that reacts by reading the API sees the change);
    nothing is published when the route fails."""

    def __init__(self, ctx: Context, user_id: str) -> None:
        self.ctx, self.user_id = ctx, user_id
        self.messages: list[dict[str, Any]] = []

    def __enter__(self) -> list[dict[str, Any]]:
        return self.messages

    def __exit__(self, et: type[BaseException] | None, *_: object) -> None:
        if et is None:
            for msg in self.messages:
                self.ctx.events.publish(self.user_id, msg)


_T = DownloadTask.__table__
_L = LibraryItem.__table__
_TASK_WITH_ENTITLEMENT = (
    select(_T, _L.c.id.label("library_item_id"))
    .select_from(_T.outerjoin(_L, and_(_L.c.user_id == _T.c.user_id,
                                       _L.c.product_id == _T.c.product_id)))
    .where(_T.c.id == bindparam("task_id"), _T.c.user_id == bindparam("user_id"))
)


def owned_task_entitled(ctx: Context, user_id: str, task_id: str) -> SimpleNamespace:
    """The user's task (read-only view), checking in the same Core query (the token hot path)
    that the user still owns its product."""
    row = ctx.db.read_one(_TASK_WITH_ENTITLEMENT, {"task_id": task_id, "user_id": user_id})
    return _entitled_task(row, task_id)


def _entitled_task(row: dict[str, Any] | None, task_id: str) -> SimpleNamespace:
    if row is None:
        raise NotFound(f"download task {task_id!r} not found", code="DOWNLOAD_TASK_NOT_FOUND",
                       parameter="taskId")
    task = SimpleNamespace(**row)
    if task.library_item_id is None:
        raise PermissionDenied(f"you no longer own product {task.product_id!r}")
    return task


@hot_router.post("/tasks/{taskId}/cdn-tokens", response_model=Data[DownloadTaskResource],
             responses=error_responses(401, 403, 404, 409, 422, 429))
async def refresh_cdn_tokens(taskId: TaskId, ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    """Fresh signed ``cdnSources`` for a task that is not finished (hot path: one query;
    ``queuePosition`` is not computed here and is null)."""

    # the database and Redis are awaited on the loop (asyncio clients): many requests of this
    # worker are in flight at once, with no thread hop (SQLite and memory answer inline)
    row = await ctx.db.aread_one(_TASK_WITH_ENTITLEMENT, {"task_id": taskId, "user_id": user.id})
    task = _entitled_task(row, taskId)
    if task.status in TERMINAL:
        raise TaskStateConflict(f"task is {task.status}; start a new one")
    sources = await aissue_sources(ctx.secrets.cdn_key, ctx.edges, ctx.cdn_limiter,
                                   task.product_id, user.id, ctx.settings.cdn_token_ttl)
    return {"data": task_resource(ctx, task, sources=sources)}


# -- updates -------------------------------------------------------------------------------------


@router.post("/updates/check", response_model=Data[list[UpdateInfoResource]],
             responses=error_responses(401, 403, 404, 422))
def check_updates(body: UpdateCheckRequest, ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    out = []
    with ctx.db.session() as s:
        for i, item in enumerate(body.data):
            a = item.attributes
            require_entitlement(s, user.id, a.productId, f"/data/{i}/attributes/productId",
                                catalog=ctx.catalog)
            latest = ctx.catalog.latest(a.productId)
            attrs: dict[str, Any] = {"productId": a.productId,
                                     "currentVersionId": a.currentVersionId,
                                     "latestVersionId": latest.version_id,
                                     "isUpdateAvailable": a.currentVersionId != latest.version_id}
            if attrs["isUpdateAvailable"]:
                u = ctx.catalog.update(a.productId, a.currentVersionId, latest.version_id)
                attrs.update(updateType=u.update_type, downloadSizeBytes=u.download_bytes,
                             deltaDownloadSizeBytes=u.delta_bytes,
                             fullDownloadSizeBytes=u.full_bytes,
                             requiredDiskSpaceBytes=u.required_disk_bytes,
                             hasDeltaIndex=u.has_delta_index)
                if u.delta_index_error:
                    attrs["deltaIndexError"] = u.delta_index_error
            out.append({"type": "updateInfo", "attributes": attrs})
    return {"data": out}


@router.post("/updates/initiate", status_code=202, response_model=Data[DownloadTaskResource],
             responses=error_responses(401, 403, 404, 409, 422, 429))
def initiate_update(body: Data[UpdateInitiateRequest], ctx: CtxDep,
                    user: UserDep) -> dict[str, Any]:
    a = body.data.attributes
    with Announcements(ctx, user.id) as changed, ctx.db.session() as s:
        require_entitlement(s, user.id, a.productId, "/data/attributes/productId",
                            catalog=ctx.catalog)
        target = ctx.catalog.resolve_version(a.productId, a.targetVersionId,
                                             "/data/attributes/targetVersionId")
        last = s.scalar(select(DownloadTask).where(
            DownloadTask.user_id == user.id, DownloadTask.product_id == a.productId,
            DownloadTask.status == "completed").order_by(DownloadTask.updated_at.desc()))
        current = a.currentVersionId or (last.version_id if last else None)
        if current == target.version_id:
            raise Conflict(f"{a.productId} is already at {current}", code="ALREADY_UP_TO_DATE",
                           pointer="/data/attributes/currentVersionId")
        info = ctx.catalog.manifest_info(a.productId, target.version_id)
        download = info.install_bytes
        if current is not None:
            download = ctx.catalog.update(a.productId, current, target.version_id).download_bytes
        target_path = a.targetPath or (last.target_path if last else f"{a.productId}")
        task, sources = create_task(
            ctx, s, user.id, product=a.productId, version=target.version_id,
            from_version=current, kind="update", target_path=target_path, priority=a.priority,
            total=info.total_size, download=download, device_id=a.deviceId,
            target_device_id=a.targetDeviceId)
        changed.append(task_change(task, "created"))
        return {"data": task_resource(ctx, task, position=_position(s, task), sources=sources)}


def history_resource(h: UpdateHistory) -> dict[str, Any]:
    return {"type": "updateHistory", "id": h.id, "attributes": {
        "productId": h.product_id, "fromVersionId": h.from_version_id,
        "versionId": h.to_version_id, "status": h.status, "updateType": h.update_type,
        "taskId": h.task_id, "detail": h.detail, "createdAt": h.created_at}}


@router.post("/updates/applied", status_code=201, response_model=Data[UpdateHistoryResource],
             responses=error_responses(401, 403, 404, 422))
def update_applied(body: Data[UpdateAppliedRequest], ctx: CtxDep,
                   user: UserDep) -> dict[str, Any]:
    a = body.data.attributes
    with ctx.db.session() as s:
        require_entitlement(s, user.id, a.productId, "/data/attributes/productId",
                            catalog=ctx.catalog)
        if a.taskId is not None:
            task = owned_task(s, user.id, a.taskId)
            if a.status == "success" and task.status not in TERMINAL:
                record(s, task, "completed", downloaded=task.downloaded_bytes)
        h = UpdateHistory(user_id=user.id, product_id=a.productId, from_version_id=a.fromVersionId,
                          to_version_id=a.versionId, task_id=a.taskId, update_type=a.updateType,
                          status=a.status, detail=a.detail, created_at=utcnow())
        s.add(h)
        s.flush()
        return {"data": history_resource(h)}


@router.get("/updates/history", response_model=Data[list[UpdateHistoryResource]],
            responses=error_responses(401, 422))
def update_history(ctx: CtxDep, user: UserDep,
                   productId: Annotated[str | None, Query(max_length=128)] = None,
                   ) -> dict[str, Any]:
    with ctx.db.session() as s:
        q = select(UpdateHistory).where(UpdateHistory.user_id == user.id)
        if productId:
            q = q.where(UpdateHistory.product_id == productId)
        rows = s.scalars(q.order_by(UpdateHistory.created_at.desc())).all()
    return {"data": [history_resource(h) for h in rows]}


# -- integrity -----------------------------------------------------------------------------------


def verification_resource(v: VerificationTask) -> dict[str, Any]:
    return {"type": "verificationTask", "id": v.id, "attributes": {
        "productId": v.product_id, "versionId": v.version_id, "status": v.status,
        "fileCount": v.file_count, "totalSizeBytes": v.total_size_bytes,
        "manifest": manifest_ref(v.product_id, v.version_id), "createdAt": v.created_at}}


@router.post("/integrity/verify", status_code=202, response_model=Data[VerificationResource],
             responses=error_responses(401, 403, 404, 422))
def integrity_verify(body: Data[IntegrityRequest], ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    """The backend cannot see the client's disk: it answers the signed reference (manifest,
    file count, size) the engine verifies the install against."""
    a = body.data.attributes
    with ctx.db.session() as s:
        require_entitlement(s, user.id, a.productId, "/data/attributes/productId",
                            catalog=ctx.catalog)
        v = ctx.catalog.resolve_version(a.productId, a.installedVersionId,
                                        "/data/attributes/installedVersionId")
        info = ctx.catalog.manifest_info(a.productId, v.version_id)
        row = VerificationTask(user_id=user.id, product_id=a.productId, version_id=v.version_id,
                               status="completed", file_count=info.file_count,
                               total_size_bytes=info.total_size, created_at=utcnow())
        s.add(row)
        s.flush()
        return {"data": verification_resource(row)}


@router.get("/integrity/verify/{taskId}", response_model=Data[VerificationResource],
            responses=error_responses(401, 404, 422))
def integrity_get(taskId: TaskId, ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    with ctx.db.session() as s:
        row = s.scalar(select(VerificationTask).where(VerificationTask.id == taskId,
                                                      VerificationTask.user_id == user.id))
        if row is None:
            raise NotFound(f"verification task {taskId!r} not found",
                           code="VERIFICATION_TASK_NOT_FOUND", parameter="taskId")
        return {"data": verification_resource(row)}
