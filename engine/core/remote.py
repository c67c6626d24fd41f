"""Remote downloads: the rules that bind tasks created on the backend from another device (a
web page, a script, a second engine of the player) to this engine's local queue.

The backend's task states (the seed's ``DownloadTask.status``) are the shared truth; the
engine's local queue is the executor. These functions decide, from plain data, which backend
task this engine takes, what it becomes locally, how a state change made elsewhere maps to a
local action, when progress is worth reporting and how the two queue orders agree. The agent
(``engine.jobs.agent.RemoteDownloads``) does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from engine.core.errors import ErrorCode
from engine.core.lifecycle import FINISHED, TaskState

PROGRESS_INTERVAL_S = 1.0  # a watching device sees bytes move about once a second
REMOTE = "remote"
# backend statuses of a task that still wants an executor
_WANTS_RUNNING = frozenset({"queued", "preparing", "downloading", "verifying"})
_BACKEND_ACTIVE = _WANTS_RUNNING | {"paused"}


@dataclass(frozen=True, slots=True)
class RemoteTask:
    """A backend download task as the engine needs it (from a ``download.task.changed`` event
    of the library channel or a ``downloadTask`` resource)."""

    id: str
    status: str
    kind: str
    product_id: str
    version_id: str | None
    priority: int = 0
    origin: str | None = None
    device_id: str | None = None
    target_device_id: str | None = None
    updated_at: float | None = None  # the backend's last change (epoch seconds)

    @staticmethod
    def from_event(payload: Mapping[str, Any]) -> RemoteTask | None:
        """From the event's snake_case payload; None when it does not describe a task."""
        tid, status, pid = payload.get("task_id"), payload.get("status"), payload.get("product_id")
        if not (isinstance(tid, str) and isinstance(status, str) and isinstance(pid, str)):
            return None
        return RemoteTask(tid, status, str(payload.get("kind") or "install"), pid,
                          _opt(payload.get("version_id")), _int(payload.get("priority")),
                          _opt(payload.get("origin")), _opt(payload.get("device_id")),
                          _opt(payload.get("target_device_id")), _time(payload.get("updated_at")))

    @staticmethod
    def from_resource(doc: Mapping[str, Any]) -> RemoteTask | None:
        """From a JSON:API ``downloadTask`` resource (camelCase attributes)."""
        a = doc.get("attributes")
        tid = doc.get("id")
        if not isinstance(a, Mapping) or not isinstance(tid, str):
            return None
        status, pid = a.get("status"), a.get("productId")
        if not (isinstance(status, str) and isinstance(pid, str)):
            return None
        return RemoteTask(tid, status, str(a.get("kind") or "install"), pid,
                          _opt(a.get("versionId")), _int(a.get("priority")), _opt(a.get("origin")),
                          _opt(a.get("deviceId")), _opt(a.get("targetDeviceId")),
                          _time(a.get("updatedAt")))


_VIEW_FIELDS = ("productId", "versionId", "status", "deviceId", "targetDeviceId", "origin",
                "downloadedBytes", "downloadSizeBytes", "errorCode", "errorMessage", "updatedAt")


def remote_task_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A backend ``downloadTask`` resource as the control API shows it (``remoteTasks``):
    flat, the fields a watching device needs, nothing of the grant (no signed CDN URLs)."""
    a = doc.get("attributes")
    attrs: Mapping[str, Any] = a if isinstance(a, Mapping) else {}
    return {"taskId": doc.get("id")} | {k: attrs.get(k) for k in _VIEW_FIELDS}


# -- what the library channel may say (validated before anything acts on it) --------------------

TASK_CHANGED = "download.task.changed"
QUEUE_REORDERED = "download.queue.reordered"
# every status the backend has for a task (the seed's DownloadTask.status)
BACKEND_STATUSES = _BACKEND_ACTIVE | {"completed", "cancelled", "error"}
MAX_QUEUE_IDS = 10_000  # far above the backend's active-task limit
MAX_ID_LEN = 64  # the backend's task ids (``TaskId`` path parameter)


@dataclass(frozen=True, slots=True)
class TaskChanged:
    task: RemoteTask


@dataclass(frozen=True, slots=True)
class QueueReordered:
    task_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message of a download kind that does not have the shape the backend sends: logged
    and dropped (one bad message never stops remote downloads nor the library channel)."""

    reason: str


ChannelEvent = TaskChanged | QueueReordered | Malformed


def _good_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LEN


def parse_event(doc: Any) -> ChannelEvent:
    """A ``download.task.changed`` or ``download.queue.reordered`` message of the library
    channel, checked field by field (types, known statuses, sizes)."""
    if not isinstance(doc, Mapping):
        return Malformed(f"not an object: {type(doc).__name__}")
    kind, payload = doc.get("event_type"), doc.get("payload")
    if kind not in (TASK_CHANGED, QUEUE_REORDERED):
        return Malformed(f"not a download message: {str(kind)[:64]!r}")
    if not isinstance(payload, Mapping):
        return Malformed(f"{kind}: payload is not an object")
    if kind == QUEUE_REORDERED:
        ids = payload.get("task_ids")
        if not isinstance(ids, list) or len(ids) > MAX_QUEUE_IDS:
            return Malformed(f"{kind}: task_ids is not a list of at most {MAX_QUEUE_IDS}")
        if not all(_good_id(i) for i in ids):
            return Malformed(f"{kind}: a task id is not a string of 1-{MAX_ID_LEN} characters")
        return QueueReordered(tuple(ids))
    task = RemoteTask.from_event(payload)
    if task is None or not _good_id(task.id):
        return Malformed(f"{kind}: task_id, status and product_id must be strings")
    if task.status not in BACKEND_STATUSES:
        return Malformed(f"{kind}: unknown status {task.status[:32]!r}")
    return TaskChanged(task)


# -- the agent's retries and the claim's answer --------------------------------------------------

RESYNC_BACKOFF_S = (1.0, 2.0, 5.0, 15.0, 60.0)


def resync_delay(failures: int) -> float:
    """Seconds before reading the backend's queue again after ``failures`` failed reads in a
    row (a 503 at connect is retried soon, an outage at most once a minute)."""
    if failures <= 0:
        return 0.0
    return RESYNC_BACKOFF_S[min(failures, len(RESYNC_BACKOFF_S)) - 1]


def claimed(answer: RemoteTask | None, device_id: str) -> bool:
    """Whether the claim's answer gives this device a task to run: claimed by it and still
    waiting (a task paused or cancelled while the claim was on its way is not queued here)."""
    return answer is not None and answer.device_id == device_id \
        and answer.status in _WANTS_RUNNING


def _opt(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True, slots=True)
class LocalTask:
    """A local queue entry bound to a backend task."""

    id: str
    backend_task_id: str | None
    status: TaskState
    user_paused: bool
    product_id: str = ""
    updated_at: float = 0.0


class Adoption(StrEnum):
    ADOPT = "adopt"
    BOUND = "bound"  # already a local task here: its state changes apply instead
    NOT_REMOTE = "not_remote"  # an engine made it for itself (this one or another)
    ELSEWHERE = "elsewhere"  # meant for, or claimed by, another device
    NOT_WAITING = "not_waiting"  # finished, failed or paused: nothing to run (until resumed)


def adoption(task: RemoteTask, device_id: str, bound: frozenset[str]) -> Adoption:
    """Whether this engine (``device_id``) takes ``task``; ``bound`` holds the backend task ids
    of every local task, finished ones too (a task done here is never taken twice)."""
    if task.id in bound:
        return Adoption.BOUND
    if task.origin != REMOTE:
        return Adoption.NOT_REMOTE
    if task.target_device_id not in (None, device_id) or task.device_id not in (None, device_id):
        return Adoption.ELSEWHERE
    if task.status not in _WANTS_RUNNING:
        return Adoption.NOT_WAITING
    return Adoption.ADOPT


class PlanKind(StrEnum):
    INSTALL = "install"
    ALREADY_THERE = "already_there"  # reported completed at once
    REFUSE = "refuse"  # reported failed with ``code``


@dataclass(frozen=True, slots=True)
class LocalPlan:
    kind: PlanKind
    code: ErrorCode | None = None
    message: str = ""


def local_plan(task: RemoteTask, installed_version: str | None, local_active: bool) -> LocalPlan:
    """What an adopted task becomes here. ``installed_version``: the product's version on this
    device (None: not installed); ``local_active``: a local task already works on it."""
    if local_active:
        return LocalPlan(PlanKind.REFUSE, ErrorCode.GAME_BUSY,
                         f"{task.product_id} already has a download on that device")
    if installed_version is None:
        if task.kind != "install":
            return LocalPlan(PlanKind.REFUSE, ErrorCode.NOT_INSTALLED,
                             f"{task.product_id} is not installed on that device: nothing to update")
        return LocalPlan(PlanKind.INSTALL)
    if task.version_id is None or task.version_id == installed_version:
        return LocalPlan(PlanKind.ALREADY_THERE)
    # installed at another version: the install becomes an update there (the update run takes
    # the bound task's grant, so it stays one backend task)
    return LocalPlan(PlanKind.INSTALL)


class LocalAction(StrEnum):
    NONE = "none"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


def remote_action(remote_status: str, local: LocalTask) -> LocalAction:
    """The local action that makes the local task agree with the backend's state, changed by
    another device (a REST pause, resume or cancel) or while this engine was offline.

    A backend ``paused`` is a player's pause (the engine reports its own stops — preemption,
    shutdown, offline — as ``queued``), so it pauses the local task; ``completed`` is only
    ever reported by the executor and needs nothing."""
    if local.status in (TaskState.COMPLETED, TaskState.CANCELLED):
        return LocalAction.NONE
    if remote_status == "cancelled":
        return LocalAction.CANCEL
    if remote_status == "paused":
        if local.status is TaskState.ERROR or (local.status is TaskState.PAUSED
                                               and local.user_paused):
            return LocalAction.NONE
        return LocalAction.PAUSE
    stopped = local.status is TaskState.ERROR or (local.status is TaskState.PAUSED
                                                  and local.user_paused)
    if remote_status in _WANTS_RUNNING and stopped:
        return LocalAction.RESUME
    return LocalAction.NONE


def local_status(local: LocalTask) -> str:
    """The backend status that says what the local task is (a player's pause is ``paused``,
    the engine's own waiting is ``queued``)."""
    if local.status is TaskState.PAUSED:
        return "paused" if local.user_paused else "queued"
    return local.status.value


class Side(StrEnum):
    REMOTE = "remote"  # apply the backend's state here (``remote_action``)
    LOCAL = "local"  # report the local state to the backend (``local_status``)
    AGREE = "agree"


def on_connect(remote: RemoteTask, local: LocalTask) -> Side:
    """A bound task found again when the engine connects (changes may have been made on
    either side while it was away). A cancel or a pause on the backend is a player's (the
    engine reports its own stops as ``queued``): applied here. A backend that wants a task
    running that is paused or failed here: whichever side changed last wins (a resume made
    elsewhere is applied, a pause made here while offline is reported). A task that finished
    here is reported."""
    action = remote_action(remote.status, local)
    if action in (LocalAction.CANCEL, LocalAction.PAUSE):
        return Side.REMOTE
    if action is LocalAction.RESUME:
        newer = remote.updated_at is not None and remote.updated_at > local.updated_at
        return Side.REMOTE if newer else Side.LOCAL
    if local.status in FINISHED and local_status(local) != remote.status:
        return Side.LOCAL
    return Side.AGREE


def stop_report(reason: TaskState, user_paused: bool) -> str:
    """The backend status a stopped run reports: ``paused`` only for a player's pause (it is
    what another device acts on), ``queued`` when the engine stopped it for its own reasons
    (preempted, shutting down, offline, out of its schedule window); ``cancelled`` as is."""
    if reason is TaskState.CANCELLED:
        return "cancelled"
    if reason is TaskState.PAUSED and user_paused:
        return "paused"
    return "queued"


@dataclass(frozen=True, slots=True)
class ProgressMark:
    at: float
    downloaded: int


def progress_due(last: ProgressMark | None, now: float, downloaded: int,
                 interval: float = PROGRESS_INTERVAL_S) -> bool:
    """A ``downloading`` report with the bytes so far is sent at most once per ``interval`` and
    only when the count moved (a stalled download sends nothing new)."""
    if last is None:
        return True
    return now - last.at >= interval and downloaded != last.downloaded


MAX_ITEMS_PER_REPORT = 500  # the backend's limit per status report


@dataclass(frozen=True, slots=True)
class ItemNote:
    """One file's news since the last report: bytes, or a retry (count, next source, why)."""

    relative_path: str
    status: str  # downloading | completed | retrying
    downloaded: int = 0
    total: int | None = None
    retries: int = 0
    source_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"relativePath": self.relative_path, "status": self.status,
                "downloadedBytes": self.downloaded, "totalFileSizeBytes": self.total,
                "retryCount": self.retries, "cdnSourceId": self.source_id,
                "errorCode": self.error_code, "errorMessage": self.error_message}


def note_progress(pending: Mapping[str, ItemNote], path: str, status: str, downloaded: int,
                  total: int) -> dict[str, ItemNote]:
    """A file's bytes moved: the newest count wins; a retry noted since keeps its count. At
    most ``MAX_ITEMS_PER_REPORT`` files wait (a new one beyond that waits for the next)."""
    if path not in pending and len(pending) >= MAX_ITEMS_PER_REPORT:
        return dict(pending)
    old = pending.get(path)
    out = dict(pending)
    out[path] = ItemNote(path, "completed" if status == "completed" else "downloading",
                         downloaded, total, old.retries if old else 0,
                         old.source_id if old else None)
    return out


def note_retry(pending: Mapping[str, ItemNote], path: str, next_source: str, code: str,
               message: str) -> dict[str, ItemNote]:
    """A range of a file failed and is fetched again (from ``next_source``)."""
    if path not in pending and len(pending) >= MAX_ITEMS_PER_REPORT:
        return dict(pending)
    old = pending.get(path)
    out = dict(pending)
    out[path] = ItemNote(path, "retrying", old.downloaded if old else 0,
                         old.total if old else None, (old.retries if old else 0) + 1,
                         next_source, code, message[:4000])
    return out


def local_order(backend_queue: Sequence[str], local: Sequence[LocalTask]) -> list[str] | None:
    """The local queue (ids, in order) after the backend's queue was reordered elsewhere: the
    bound tasks take the slots they hold now, in the backend's order; unbound ones keep theirs.
    None when nothing moves (so the echo of a local reorder changes nothing)."""
    rank = {bid: i for i, bid in enumerate(backend_queue)}
    slots = [i for i, t in enumerate(local)
             if t.backend_task_id in rank and t.status not in FINISHED]
    bound = sorted((local[i] for i in slots), key=lambda t: rank[t.backend_task_id or ""])
    order = [t.id for t in local]
    for slot, task in zip(slots, bound, strict=True):
        order[slot] = task.id
    return None if order == [t.id for t in local] else order


def backend_order(local: Sequence[LocalTask]) -> list[tuple[str, int]]:
    """The backend's ``queue/reorder`` body for a local reorder: the bound live tasks in the
    local order (order 0, 1, ...)."""
    live = [t for t in local if t.backend_task_id is not None and t.status not in FINISHED]
    return [(t.backend_task_id or "", i) for i, t in enumerate(live)]


def backend_active(status: str) -> bool:
    return status in _BACKEND_ACTIVE


# -- what the executor tells the backend about a finished update (seed 3.1.2, flow 14.3) --------


def update_type(download_bytes: int, full_download_bytes: int) -> str:
    """``delta`` when the update fetched less than a full download of the new version would
    have (patches, reused chunks), else ``full``."""
    return "delta" if download_bytes < full_download_bytes else "full"


def applied_status(ok: bool, code: str | None) -> str:
    """The seed's ``updates/applied`` status for an update that ended with error ``code``."""
    if ok:
        return "success"
    if code == ErrorCode.DELTA_PATCH_APPLICATION_FAILED:
        return "patch_failed"
    if code in (ErrorCode.FILE_HASH_MISMATCH, ErrorCode.MANIFEST_SIGNATURE_INVALID):
        return "verification_failed"
    return "failed"
