"""The sync agent's background work: send the journaled calls (playtime, achievements,
uninstalls) to the backend in order, close sessions a crash left open, relay the backend's
live library channel to the launcher, keep games up to date when the player wants it, and run
the downloads queued for this device on the backend from another one (remote downloads).

The decisions are ``engine.core.playtime``'s; this module only sends and waits. Every loop is
bounded: a replay stops at the first call that must wait (offline, throttled, logged out) and
resumes on the next kick or tick; reconnects back off up to a cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from engine.core.errors import EngineError, ErrorCode
from engine.core.lifecycle import TaskState
from engine.core.messages import AchievementUnlocked, LibraryChanged, SaveSyncStatus
from engine.core.playtime import (
    CallKind,
    OutboxCall,
    Verdict,
    after_failure,
    close_orphans,
    compact,
)
from engine.core.progress import TaskProgress
from engine.core.remote import (
    PROGRESS_INTERVAL_S,
    Adoption,
    ItemNote,
    LocalAction,
    LocalTask,
    PlanKind,
    ProgressMark,
    RemoteTask,
    Side,
    adoption,
    local_order,
    local_plan,
    local_status,
    note_progress,
    note_retry,
    on_connect,
    progress_due,
    remote_action,
)
from engine.io.backend_client import BackendClient
from engine.io.bus import EventBus
from engine.io.library_client import LibraryApi
from engine.io.playstate import PlayState
from engine.io.state import State, TaskRecord

log = logging.getLogger(__name__)
TICK_S = 30.0
RECONNECT_S = (1.0, 2.0, 5.0, 15.0, 60.0)


def _ts(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Outbox:
    def __init__(self, play: PlayState, bus: EventBus, library: Callable[[], LibraryApi],
                 heartbeat_s: Callable[[], float], running_sessions: Callable[[], set[str]]) -> None:
        self.play = play
        self.bus = bus
        self.library = library
        self.heartbeat_s = heartbeat_s
        self.running_sessions = running_sessions
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()
        self.dropped = 0

    def kick(self) -> None:
        self._kick.set()

    def close_stale_sessions(self) -> int:
        """Sessions no engine has beaten for three heartbeat intervals end at their last beat."""
        now = time.time()
        closed = close_orphans(self.play.open_sessions(), self.running_sessions(), now,
                               3 * self.heartbeat_s() + 1)
        for s in closed:
            log.info("session %s of %s left open by a crash: ended at its last heartbeat",
                     s.id[:8], s.product_id)
            self.play.end_session(s.id, s.last_beat_at, None)
        return len(closed)

    async def replay(self) -> int:
        """Send what is pending, in order; the number of calls the backend took."""
        async with self._lock:
            calls, obsolete = compact(self.play.pending())
            self.play.forget(obsolete)
            sent = 0
            for call in calls:
                try:
                    await self._send(call)
                except EngineError as exc:
                    verdict = after_failure(exc.code, exc.http_status)
                    if verdict is Verdict.RETRY_LATER:
                        self.play.attempted(call.seq)
                        log.info("backend call %s waits: %s", call.kind.value, exc.message)
                        return sent
                    if verdict is Verdict.DROP:
                        self.dropped += 1
                        log.warning("backend refused %s %s for good: %s", call.kind.value,
                                    call.key, exc.message)
                self.play.forget([call.seq])
                sent += 1
            return sent

    async def _send(self, call: OutboxCall) -> None:
        api, p = self.library(), call.payload
        if call.kind is CallKind.SESSION_START:
            started = await api.start_session(call.key, str(p["productId"]), float(p["startedAt"]))
            self.play.set_server_id(call.key, started)
            return
        if call.kind in (CallKind.SESSION_HEARTBEAT, CallKind.SESSION_END):
            server_id = self.play.server_id(call.key)
            if server_id is None:
                raise EngineError(ErrorCode.VALIDATION_ERROR, f"session {call.key} never started "
                                  "on the backend", http_status=422)
            if call.kind is CallKind.SESSION_HEARTBEAT:
                await api.heartbeat(server_id, float(p["at"]))
            else:
                await api.end_session(server_id, float(p["endedAt"]))
            return
        if call.kind is CallKind.ACHIEVEMENT_UNLOCK:
            await api.unlock(str(p["productId"]), str(p["achievementId"]),
                             str(p["clientUnlockId"]), float(p["at"]))
            return
        if call.kind is CallKind.ACHIEVEMENT_PROGRESS:
            state = await api.progress(str(p["productId"]), str(p["achievementId"]),
                                       int(p["current"]), float(p["at"]))
            if state.get("newly_unlocked"):
                self.bus.publish(AchievementUnlocked(str(p["productId"]), str(p["achievementId"]),
                                                     state.get("name"), time.time()))
            return
        if call.kind is CallKind.UNINSTALLED:
            version = p.get("versionId")
            await api.installation_event(str(p["productId"]), "uninstalled",
                                         None if version is None else str(version), float(p["at"]))

    async def run(self) -> None:
        """Forever: close stale sessions, replay; again on a kick or every ``TICK_S``."""
        while True:
            self._kick.clear()
            try:
                self.close_stale_sessions()
                await self.replay()
            except EngineError as exc:
                log.warning("outbox: %s", exc.message)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self._kick.wait()


TASK_CHANGED = "download.task.changed"
QUEUE_REORDERED = "download.queue.reordered"


class RemoteHost(Protocol):
    """What remote downloads need of the engine (``engine.jobs.engine.Engine``)."""

    device_id: str
    api: BackendClient
    state: State

    def bound_tasks(self) -> dict[str, TaskRecord]: ...
    def adopt_remote(self, remote: RemoteTask) -> TaskRecord: ...
    def pause(self, task_id: str, *, report: bool = True) -> TaskRecord: ...
    def resume(self, task_id: str, *, report: bool = True) -> TaskRecord: ...
    def cancel(self, task_id: str, *, report: bool = True) -> TaskRecord: ...
    def apply_order(self, ids: list[str]) -> None: ...
    def tasks(self, include_finished: bool = False) -> list[TaskRecord]: ...
    def progress_of(self, task_id: str) -> TaskProgress | None: ...
    def is_remote(self, task_id: str) -> bool: ...
    def local_view(self, t: TaskRecord) -> LocalTask: ...
    async def report(self, task: TaskRecord, status: str, error: EngineError | None = None,
                     downloaded: int | None = None,
                     items: list[dict[str, Any]] | None = None) -> None: ...


class RemoteDownloads:
    """Downloads queued on the backend from another device, run by this engine.

    The backend announces task changes on the library channel (``download.task.changed``,
    ``download.queue.reordered``); on every connection the engine also reads the player's
    active tasks (``GET /tasks/queue``), so tasks created while it was offline are picked up.
    ``engine.core.remote`` decides; this class claims, queues, applies and reports: a remote
    task runs as a local install bound to its backend task, its status reports go to that
    task, and while it downloads its bytes are reported about once a second so the device
    that queued it watches it live. Events are handled one at a time from a bounded inbox; an
    overflow makes the next step re-read the whole queue instead.
    """

    INBOX = 256

    def __init__(self, host: RemoteHost) -> None:
        self.host = host
        self.connected = False
        self._inbox: asyncio.Queue[dict[str, Any]] | None = None
        self._resync = False
        self._marks: dict[str, ProgressMark] = {}
        # task id -> files that moved since its last report (sent with the next one)
        self._items: dict[str, dict[str, ItemNote]] = {}

    def note_progress(self, task_id: str, path: str, status: str, done: int, total: int) -> None:
        self._items[task_id] = note_progress(self._items.get(task_id, {}), path, status, done,
                                             total)

    def note_retry(self, task_id: str, path: str, next_source: str, code: str,
                   message: str) -> None:
        self._items[task_id] = note_retry(self._items.get(task_id, {}), path, next_source,
                                          code, message)

    def _queue(self) -> asyncio.Queue[dict[str, Any]]:
        if self._inbox is None:  # made on the loop that runs it
            self._inbox = asyncio.Queue(self.INBOX)
        return self._inbox

    def notify(self, doc: dict[str, Any]) -> None:
        """A library-channel message (called by the relay, on the loop)."""
        kind = doc.get("event_type")
        if kind == "connection.ready":
            self._resync = True
            if not self._queue().full():
                self._queue().put_nowait({})  # wakes the worker; the step re-reads the queue
        elif kind in (TASK_CHANGED, QUEUE_REORDERED):
            try:
                self._queue().put_nowait(doc)
            except asyncio.QueueFull:
                self._resync = True

    async def run(self) -> None:
        """Forever: handle what arrives; report progress about once a second."""
        inbox = self._queue()
        while True:
            doc: dict[str, Any] | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROGRESS_INTERVAL_S):
                    doc = await inbox.get()
            try:
                if self._resync:
                    self._resync = False
                    await self.sync()
                if doc:
                    await self.handle(doc)
                if self.connected:
                    await self.report_progress()
            except EngineError as exc:
                log.warning("remote downloads: %s", exc.message)

    async def sync(self) -> None:
        """Everything the backend holds for this player now: new remote tasks are taken, bound
        tasks agree (``on_connect``)."""
        listed = [r for r in (RemoteTask.from_resource(d) for d in await self.host.api.task_queue())
                  if r is not None]
        seen = {r.id for r in listed}
        for remote in listed:
            await self.consider(remote, at_connect=True)
        # bound tasks still live here that left the backend's queue (cancelled, completed or
        # failed there while this engine was away)
        for bid, task in self.host.bound_tasks().items():
            if bid in seen or task.status in (TaskState.COMPLETED, TaskState.CANCELLED):
                continue
            try:
                found = RemoteTask.from_resource(await self.host.api.get_task(bid))
            except EngineError as exc:
                log.info("backend task %s of local task %s: %s", bid[:8], task.id[:8],
                         exc.message)
                continue
            if found is not None:
                await self.consider(found, at_connect=True)

    async def handle(self, doc: dict[str, Any]) -> None:
        payload = doc.get("payload")
        if not isinstance(payload, dict):
            return
        if doc.get("event_type") == QUEUE_REORDERED:
            ids = [str(i) for i in payload.get("task_ids") or [] if isinstance(i, str)]
            order = local_order(ids, [self.host.local_view(t)
                                      for t in self.host.tasks(include_finished=False)])
            if order is not None:
                log.info("queue reordered on another device: following it")
                self.host.apply_order(order)
            return
        remote = RemoteTask.from_event(payload)
        if remote is not None:
            await self.consider(remote)

    async def consider(self, remote: RemoteTask, *, at_connect: bool = False) -> None:
        bound = self.host.bound_tasks()
        verdict = adoption(remote, self.host.device_id, frozenset(bound))
        if verdict is Adoption.ADOPT:
            await self.adopt(remote)
        elif verdict is Adoption.BOUND:
            task = bound[remote.id]
            local = self.host.local_view(task)
            if at_connect:
                side = on_connect(remote, local)
                if side is Side.LOCAL:
                    await self.host.report(task, local_status(local), _task_error(task))
                    return
                if side is Side.AGREE:
                    return
            self.apply(remote_action(remote.status, local), task, remote)

    def apply(self, action: LocalAction, task: TaskRecord, remote: RemoteTask) -> None:
        if action is LocalAction.NONE:
            return
        log.info("backend task %s is %s: %s local task %s", remote.id[:8], remote.status,
                 action.value, task.id[:8])
        # the backend holds the new state already: not reported back (a run that stops still
        # reports, with its bytes)
        try:
            if action is LocalAction.PAUSE:
                self.host.pause(task.id, report=False)
            elif action is LocalAction.RESUME:
                self.host.resume(task.id, report=False)
            elif action is LocalAction.CANCEL:
                self.host.cancel(task.id, report=False)
        except EngineError as exc:  # it changed here meanwhile (finished, say): logged
            log.info("%s of task %s: %s", action.value, task.id[:8], exc.message)

    async def adopt(self, remote: RemoteTask) -> None:
        """Claim the task (of two engines one wins), then queue it here or report why not."""
        api = self.host.api
        try:
            await api.claim_task(remote.id, self.host.device_id)
        except EngineError as exc:
            if exc.http_status == 409:
                log.info("remote download %s: taken by another device (%s)", remote.id[:8],
                         exc.message)
                return
            if exc.http_status == 403:  # the game is no longer the player's (or lent now)
                log.warning("remote download %s refused: %s", remote.id[:8], exc.message)
                await api.report_status(remote.id, "error", 0, exc)
                return
            raise
        game = self.host.state.installed_game(remote.product_id)
        busy = self.host.state.active_task_for(remote.product_id) is not None
        plan = local_plan(remote, None if game is None else game.version_id, busy)
        if plan.kind is PlanKind.ALREADY_THERE:
            log.info("remote download %s: %s is already installed here", remote.id[:8],
                     remote.product_id)
            await api.report_status(remote.id, "completed", 0)
            return
        error: EngineError | None = None
        if plan.kind is PlanKind.REFUSE:
            assert plan.code is not None
            error = EngineError(plan.code, plan.message, item=remote.product_id)
        else:
            try:
                self.host.adopt_remote(remote)
                return
            except EngineError as exc:  # refused before it was queued (bad folder, ...)
                error = exc
        log.warning("remote download %s refused: %s", remote.id[:8], error.message)
        await api.report_status(remote.id, "error", 0, error)

    async def report_progress(self) -> None:
        """A ``downloading`` report with the bytes so far for each remote download running
        here, at most once per ``PROGRESS_INTERVAL_S`` and only when they moved."""
        now = time.monotonic()
        running: set[str] = set()
        for task in self.host.tasks(include_finished=False):
            progress = self.host.progress_of(task.id)
            if progress is None or task.status is not TaskState.DOWNLOADING \
                    or task.backend_task_id is None or not self.host.is_remote(task.id):
                continue
            running.add(task.id)
            if progress_due(self._marks.get(task.id), now, progress.downloaded):
                self._marks[task.id] = ProgressMark(now, progress.downloaded)
                notes = self._items.pop(task.id, {})
                await self.host.report(task, "downloading", downloaded=progress.downloaded,
                                       items=[n.to_wire() for n in notes.values()] or None)
        for gone in set(self._marks) - running:
            del self._marks[gone]
        for gone in set(self._items) - running:  # not a remote download running: not watched
            del self._items[gone]


def _task_error(task: TaskRecord) -> EngineError | None:
    if task.status is not TaskState.ERROR:
        return None
    try:
        code = ErrorCode(task.error_code or "")
    except ValueError:
        code = ErrorCode.INTERNAL_ERROR
    return EngineError(code, task.error_message or "failed")


class LibraryRelay:
    """The backend's ``/api/v1/ws/library-updates`` to the launcher: changes made on another
    device (a category, an unlock, a save) show here without a reload. Download task changes
    go to ``remote`` (remote downloads), which runs beside the channel."""

    def __init__(self, bus: EventBus, library: Callable[[], LibraryApi],
                 ready: Callable[[], bool], remote: RemoteDownloads | None = None) -> None:
        self.bus = bus
        self.library = library
        self.ready = ready
        self.remote = remote
        self.connected = False

    def relay(self, doc: dict[str, Any]) -> None:
        kind, payload = doc.get("event_type"), doc.get("payload") or {}
        if not isinstance(payload, dict):
            return
        if self.remote is not None and kind in ("connection.ready", TASK_CHANGED,
                                                QUEUE_REORDERED):
            self.remote.notify(doc)
            return
        pid = str(payload.get("product_id") or "")
        if kind == "library.item.updated":
            self.bus.publish(LibraryChanged(pid, dict(payload.get("changes") or {})))
        elif kind == "achievement.unlocked":
            self.bus.publish(AchievementUnlocked(pid, str(payload.get("achievement_id") or ""),
                                                 payload.get("achievement_name"),
                                                 _ts(payload.get("unlocked_at"))))
        elif kind == "savegame.sync.status":
            self.bus.publish(SaveSyncStatus(pid, f"cloud_{payload.get('status') or 'changed'}",
                                            last_synced_at=_ts(payload.get("last_synced_at")),
                                            error_message=payload.get("error_message")))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.remote is not None:
                tg.create_task(self.remote.run(), name="remote-downloads")
            await self._channel()

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        if self.remote is not None:
            self.remote.connected = value

    async def _channel(self) -> None:
        attempt = 0
        while True:
            if self.ready():
                try:
                    async for doc in self.library().updates():
                        self._set_connected(True)
                        attempt = 0
                        self.relay(doc)
                except EngineError as exc:
                    log.info("library channel: %s", exc.message)
                finally:
                    self._set_connected(False)
            await asyncio.sleep(RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)])
            attempt += 1
