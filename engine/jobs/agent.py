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
import functools
import logging
import time
from collections.abc import Callable, Coroutine
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
    QUEUE_REORDERED,
    TASK_CHANGED,
    Adoption,
    ChannelEvent,
    ItemNote,
    LocalAction,
    LocalTask,
    Malformed,
    PlanKind,
    ProgressMark,
    QueueReordered,
    RemoteTask,
    Side,
    TaskChanged,
    adoption,
    claimed,
    local_order,
    local_plan,
    local_status,
    note_progress,
    note_retry,
    on_connect,
    parse_event,
    progress_due,
    remote_action,
    resync_delay,
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
    overflow makes the next step re-read the whole queue instead. A message of the wrong shape
    is logged and dropped (``parse_event``); a failed read of the queue is tried again with a
    capped backoff (``resync_delay``); a step that fails for any reason is logged with its
    traceback and the loop goes on: one bad message never ends remote downloads.
    """

    INBOX = 256

    def __init__(self, host: RemoteHost) -> None:
        self.host = host
        self.connected = False
        # None wakes the worker (a connect: the step re-reads the queue)
        self._inbox: asyncio.Queue[TaskChanged | QueueReordered | None] | None = None
        self._resync = False
        self._resync_failures = 0  # failed reads of the queue in a row
        self._resync_at = 0.0  # monotonic time before which the queue is not read again
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

    def _queue(self) -> asyncio.Queue[TaskChanged | QueueReordered | None]:
        if self._inbox is None:  # made on the loop that runs it
            self._inbox = asyncio.Queue(self.INBOX)
        return self._inbox

    def notify(self, doc: dict[str, Any]) -> None:
        """A library-channel message (called by the relay, on the loop)."""
        kind = doc.get("event_type")
        if kind == "connection.ready":  # a new connection: read the queue now
            self._resync, self._resync_failures, self._resync_at = True, 0, 0.0
            if not self._queue().full():
                self._queue().put_nowait(None)
            return
        event: ChannelEvent = parse_event(doc)
        if isinstance(event, Malformed):
            log.warning("remote downloads: dropped a malformed message: %s", event.reason)
            return
        try:
            self._queue().put_nowait(event)
        except asyncio.QueueFull:
            self._resync = True

    async def run(self) -> None:
        """Forever: handle what arrives; report progress about once a second."""
        inbox = self._queue()
        while True:
            event: TaskChanged | QueueReordered | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROGRESS_INTERVAL_S):
                    event = await inbox.get()
            await self._step(self._resync_if_due)
            if event is not None:
                await self._step(functools.partial(self.handle, event))
            if self.connected:
                await self._step(self.report_progress)

    async def _step(self, step: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """One step; a failure is logged (with its traceback when it is not an EngineError)
        and the loop goes on."""
        try:
            await step()
        except EngineError as exc:
            log.warning("remote downloads: %s", exc.message)
        except Exception:  # a bug or an answer of a shape nobody expected: never fatal here
            log.exception("remote downloads: a step failed; going on")

    async def _resync_if_due(self) -> None:
        """Read the backend's queue when a connect (or an overflow) asked for it; a failed
        read asks again after ``resync_delay`` (capped backoff)."""
        if not self._resync or time.monotonic() < self._resync_at:
            return
        self._resync = False
        ok = False
        try:
            ok = await self.sync()
        finally:
            if ok:
                self._resync_failures = 0
            else:
                self._resync = True
                self._resync_failures += 1
                delay = resync_delay(self._resync_failures)
                self._resync_at = time.monotonic() + delay
                log.info("remote downloads: reading the queue again in %.0f s", delay)

    async def sync(self) -> bool:
        """Everything the backend holds for this player now: new remote tasks are taken, bound
        tasks agree (``on_connect``). False when a task could not be considered (the backend
        failed on it): the caller reads the queue again later. Raises when the queue itself
        could not be read."""
        listed = [r for r in (RemoteTask.from_resource(d) for d in await self.host.api.task_queue())
                  if r is not None]
        seen = {r.id for r in listed}
        ok = True
        for remote in listed:
            try:
                await self.consider(remote, at_connect=True)
            except EngineError as exc:  # the others are still considered
                log.warning("remote download %s: %s", remote.id[:8], exc.message)
                ok = False
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
        return ok

    async def handle(self, event: TaskChanged | QueueReordered) -> None:
        if isinstance(event, QueueReordered):
            order = local_order(list(event.task_ids), [
                self.host.local_view(t) for t in self.host.tasks(include_finished=False)])
            if order is not None:
                log.info("queue reordered on another device: following it")
                self.host.apply_order(order)
            return
        await self.consider(event.task)

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
            answer = await api.claim_task(remote.id, self.host.device_id)
        except EngineError as exc:
            if exc.http_status == 409:
                log.info("remote download %s: taken by another device or no longer waiting "
                         "(%s)", remote.id[:8], exc.message)
                return
            if exc.http_status == 403:  # the game is no longer the player's (or lent now)
                log.warning("remote download %s refused: %s", remote.id[:8], exc.message)
                await self._tell(remote.id, "error", exc)
                return
            raise
        got = RemoteTask.from_resource(answer)
        if not claimed(got, self.host.device_id):  # paused or cancelled meanwhile: not ours
            log.info("remote download %s: claimed as %s for %s; not queued here",
                     remote.id[:8], None if got is None else got.status,
                     None if got is None else got.device_id)
            return
        game = self.host.state.installed_game(remote.product_id)
        busy = self.host.state.active_task_for(remote.product_id) is not None
        plan = local_plan(remote, None if game is None else game.version_id, busy)
        if plan.kind is PlanKind.ALREADY_THERE:
            log.info("remote download %s: %s is already installed here", remote.id[:8],
                     remote.product_id)
            await self._tell(remote.id, "completed")
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
        await self._tell(remote.id, "error", error)

    async def _tell(self, backend_task_id: str, status: str,
                    error: EngineError | None = None) -> None:
        """A report for a task that has no local task (refused, or already installed): history
        only, so a refusal of the report (409: cancelled meanwhile) is logged, not raised."""
        try:
            await self.host.api.report_status(backend_task_id, status, 0, error)
        except EngineError as exc:
            (log.info if exc.http_status == 409 else log.warning)(
                "could not report %s for remote download %s: %s", status, backend_task_id[:8],
                exc.message)

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
        if self.remote is not None and kind in ("connection.ready", TASK_CHANGED,
                                                QUEUE_REORDERED):
            self.remote.notify(doc)  # checks the shape itself (``parse_event``)
            return
        if not isinstance(payload, dict):
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
                tg.create_task(self._supervised(self.remote.run), name="remote-downloads")
            await self._channel()

    @staticmethod
    async def _supervised(run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """``run`` again (after a capped backoff) if it ever fails: its failure is logged with
        its traceback and never takes the library channel down with it."""
        attempt = 0
        while True:
            try:
                await run()
                return
            except Exception:
                log.exception("remote downloads stopped; starting them again")
            await asyncio.sleep(RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)])
            attempt += 1

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
                        try:
                            self.relay(doc)
                        except Exception:  # one message never ends the channel
                            log.exception("library channel: dropped a message it could not "
                                          "relay: %.200r", doc)
                except EngineError as exc:
                    log.info("library channel: %s", exc.message)
                except Exception:  # a frame that is not JSON, say: reconnect, never stop
                    log.exception("library channel failed; reconnecting")
                finally:
                    self._set_connected(False)
            await asyncio.sleep(RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)])
            attempt += 1
