"""The engine: a persistent download queue driving install runs.

Commands (install, pause, resume, cancel, move, priority, limits) change the SQLite state and
wake the scheduler loop; the loop asks the pure ``queueorder.select_runnable`` what should run
and starts or stops runs to match. Every run is a task in one ``TaskGroup``; stopping a run is a
cancellation with a recorded reason, after which the journal is consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from engine.core.errors import EngineError, ErrorCode
from engine.core.events import error_event, status_event
from engine.core.lifecycle import FINISHED, TaskKind, TaskState, after_restart
from engine.core.messages import DownloadRetry, ItemProgress, UpdateAvailable, UpdatePlanned
from engine.core.playtime import CallKind, downloads_policy, updates_to_queue
from engine.core.progress import TaskProgress
from engine.core.queueorder import QueueEntry, move, select_runnable
from engine.core.schedule import DownloadSchedule, parse_window
from engine.io.backend_client import BackendClient
from engine.io.bus import EventBus
from engine.io.config import Settings
from engine.io.credentials import CredentialStore
from engine.io.httpclient import HttpClient
from engine.io.limiter import AsyncRateLimiter
from engine.io.playstate import PlayState
from engine.io.staging import STAGING_DIR, remove_task_staging
from engine.io.state import InstalledGame, State, TaskRecord, new_id
from engine.io.verifiedmeta import VerifiedRecord
from engine.jobs.context import EngineContext, bind_remote, manifest_key, remote_binding
from engine.jobs.install import InstallRun, cap_malloc_arenas, check_install_target
from patcher.ids import is_id

if TYPE_CHECKING:
    import aiohttp

    from engine.core.remote import LocalTask, RemoteTask
    from engine.io.library_client import LibraryApi
    from engine.io.verify import VerifyReport
    from engine.jobs.agent import LibraryRelay, Outbox, RemoteDownloads
    from engine.jobs.play import Games
    from engine.jobs.saves import SaveSync
    from engine.jobs.uninstall import UninstallReport
    from patcher.manifest import Manifest

# Imported where they are used, not here: updates (engine.jobs.update: patcher.delta, the update
# planner, a process pool), moves and uninstalls are not on the path of a fresh install, whose
# first byte waits for every module the engine imports (issue 13: ~40 ms of a 0.3 s budget).

log = logging.getLogger(__name__)



def as_engine_error(exc: BaseException) -> EngineError:
    """The EngineError inside a TaskGroup's ExceptionGroup, or an INTERNAL_ERROR for a bug."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = as_engine_error(inner)
            if found.code != ErrorCode.INTERNAL_ERROR:
                return found
    if isinstance(exc, OSError):
        from engine.io.staging import translate_os_error

        return translate_os_error(exc, "installing")
    return EngineError(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")


def _check_id(value: str, where: str) -> None:
    if not is_id(value):
        from patcher.manifest import check_id  # names the problem as the manifest loader does

        check_id(value, where)


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = State(settings.data_dir)
        self.bus = EventBus()
        self.limiter = AsyncRateLimiter(settings.global_limit_bps)
        self.credentials = CredentialStore(settings.data_dir, settings.backend_url,
                                           settings.use_keyring)
        self.api = BackendClient(settings.backend_url, refresh_token=self.credentials.load(),
                                 save_refresh_token=self.credentials.save,
                                 access_token=self.credentials.access(),
                                 save_access_token=self.credentials.save_access)
        self.schedule = DownloadSchedule(tuple(parse_window(w) for w in settings.schedule))
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._progress: dict[str, TaskProgress] = {}
        self._reports: set[asyncio.Task[None]] = set()
        self._stop_reason: dict[str, TaskState] = {}
        # what a run prepared (grant, manifest, plan, the write of the manifest's copy), kept
        # while its task is paused or queued:
        # resuming it re-plans nothing; dropped when the task ends or fails
        self._prepared: dict[str, Any] = {}
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._small: HttpClient | None = None
        # block processing (zstd, BLAKE3 and pwrite release the GIL), hashing and fsync
        self._executor = ThreadPoolExecutor(max_workers=max(4, settings.connections + 2),
                                            thread_name_prefix="engine-io")
        self.offline = False
        self.running = False
        self._user_limit = settings.global_limit_bps
        self._library: LibraryApi | None = None
        # the sync agent: playtime, saves, achievements (journaled in the same database); its
        # parts (and remote downloads') are made when first used (``games``, ``saves``,
        # ``outbox``, ``remote``, ``relay``): an install's first byte waits for no module of theirs
        self.play = PlayState(self.state.db)
        self.device_id = self._device_id()
        self.api.device_id = self.device_id
        self._report_locks: dict[str, asyncio.Lock] = {}  # reports of one task go in order
        self._planned: dict[str, UpdatePlanned] = {}  # what each update planned (updateType)
        self.bus.on_event(self._on_event)
        for t in self.state.tasks(include_finished=False):
            if after_restart(t.status) is not t.status:  # interrupted last time
                self.state.set_status(t.id, after_restart(t.status))
            if t.limit_bps:
                self.limiter.set_task(t.id, t.limit_bps)

    @cached_property
    def saves(self) -> SaveSync:
        from engine.io.savefiles import Backups
        from engine.jobs.saves import SaveSync

        return SaveSync(self.play, self.bus, Backups(self.settings.data_dir), self.library)

    @cached_property
    def outbox(self) -> Outbox:
        from engine.jobs.agent import Outbox

        return Outbox(self.play, self.bus, self.library,
                      lambda: self.settings.heartbeat_interval_s,
                      lambda: {g.session_id for g in self.running_games().values()})

    @cached_property
    def games(self) -> Games:
        from engine.jobs.play import Games

        return Games(self, self.play, self.saves, self.outbox.kick)

    @cached_property
    def remote(self) -> RemoteDownloads:
        """Remote downloads: tasks queued on the backend from another device run here."""
        from engine.jobs.agent import RemoteDownloads

        return RemoteDownloads(self)

    @cached_property
    def relay(self) -> LibraryRelay:
        from engine.jobs.agent import LibraryRelay

        return LibraryRelay(self.bus, self.library, lambda: self.api.logged_in
                            and not self.offline, remote=self.remote)

    def running_games(self) -> dict[str, Any]:
        """The games this engine runs: none while nothing has asked for ``games`` (a game is
        only ever started through it), without making it."""
        games: Games | None = self.__dict__.get("games")
        return games.running if games is not None else {}

    def refuse_while_running(self, product_id: str, what: str) -> None:
        """``Games``' rule (a running game's files are never replaced, moved or removed under
        it), asked without making ``games``: no game runs before it exists."""
        games: Games | None = self.__dict__.get("games")
        if games is not None:
            games.refuse_while_running(product_id, what)

    def _device_id(self) -> str:
        """This installation's id, made once and kept in its database (a second data folder is
        a second device)."""
        found = self.state.get_meta("device_id")
        if found is None:
            found = new_id()
            self.state.set_meta("device_id", found)
        return found

    def _on_event(self, event: object) -> None:
        """What the engine's own events tell the backend: an update's plan (its updateType),
        and a file's progress or retries (sent with a remote download's next report)."""
        if isinstance(event, UpdatePlanned):
            self._planned[event.task_id] = event
        # only remote downloads' reports (``RemoteDownloads.run``, the daemon's) send these
        # notes: with ``remote`` never made, there is nobody to send them
        remote: RemoteDownloads | None = self.__dict__.get("remote")
        if remote is None:
            return
        if isinstance(event, ItemProgress):
            remote.note_progress(event.task_id, event.relative_path, event.status,
                                 event.downloaded_bytes, event.total_file_size_bytes)
        elif isinstance(event, DownloadRetry) and event.relative_path is not None:
            remote.note_retry(event.task_id, event.relative_path, event.next_source_id,
                              event.error_code, event.message)

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        games: Games | None = self.__dict__.get("games")  # never made: nothing to stop watching
        if games is not None:
            await games.close()
        with contextlib.suppress(TimeoutError, EngineError):
            async with asyncio.timeout(5):  # what this run owes the backend, if it is there
                if self.play.open_sessions():  # none open: no outbox to make for them
                    self.outbox.close_stale_sessions()
                if self.play.pending_count() and self.api.logged_in:
                    await self.outbox.replay()
        if self._reports:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*self._reports, return_exceptions=True)
        for tid, runner in list(self._runners.items()):
            self._stop_reason.setdefault(tid, TaskState.QUEUED)
            runner.cancel()
        for runner in list(self._runners.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self._session is not None:
            await self._session.close()
        if self._small is not None:
            await self._small.aclose()
        ranges = sys.modules.get("engine.io.rangeclient")  # never imported: nothing to close
        if ranges is not None:
            ranges.close_idle_connections()  # the range client's kept-alive sockets
        await self.api.aclose()
        self._executor.shutdown(wait=True)
        self.state.close()

    def context(self) -> EngineContext:
        return self._context()

    def library(self) -> LibraryApi:
        if self._library is None:
            from engine.io.library_client import LibraryApi

            self._library = LibraryApi(self.api, self._cdn_session)
        return self._library

    def busy(self, product_id: str) -> bool:
        """A task is working on the game's files right now."""
        return any(self.state.task(tid).product_id == product_id for tid in self._runners)

    def games_changed(self) -> None:
        """A game started or exited: downloads follow the player's gameplay setting."""
        self.limiter.set_global(self._policy().limit_bps)
        self.wake()

    def _policy(self) -> Any:
        s = self.settings
        return downloads_policy(s.gameplay_downloads, s.gameplay_limit_bps,
                                len(self.running_games()), self._user_limit)

    def auto_update(self, answers: list[dict[str, Any]]) -> list[TaskRecord]:
        """Queue the updates the backend has, when the player wants games kept up to date."""
        if not self.settings.auto_update:
            return []
        busy = {t.product_id for t in self.state.tasks(include_finished=False)}
        return [self.update(pid) for pid in
                updates_to_queue(answers, busy, set(self.running_games()))]

    def _cdn_session(self) -> aiohttp.ClientSession:
        """The aiohttp session of the general range client and the save transfers, made (and
        aiohttp imported) when first needed: not before an install's first byte (issue 13)."""
        if self._session is None:
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout_s,
                                            sock_read=self.settings.stall_timeout_s)
            connector = aiohttp.TCPConnector(limit=64, limit_per_host=16, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector,
                                                  auto_decompress=False)
        return self._session

    def _context(self) -> EngineContext:
        if self._small is None:
            # small CDN documents; no proxies from the environment, as the CDN session never
            # took them (trust_env off), and the default CAs, as its connector had
            self._small = HttpClient(connect_timeout=self.settings.connect_timeout_s,
                                     read_timeout=self.settings.stall_timeout_s, trust_env=False)
        return EngineContext(self.settings, self.state, self.api, self.bus, self.limiter,
                             self._cdn_session, self._small, self._executor, self._prepared)

    # -- commands -----------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def install(self, product_id: str, version_id: str | None = None, target: str | None = None,
                priority: int = 0, limit_bps: int | None = None) -> TaskRecord:
        _check_id(product_id, "productId")
        if version_id is not None:
            _check_id(version_id, "versionId")
        active = self.state.active_task_for(product_id)
        if active is not None:
            return active  # one task per game: asking again resumes the same one
        installed = self.state.installed_game(product_id)
        path = Path(target).absolute() if target else (
            Path(installed.path) if installed else (self.settings.library / product_id).absolute())
        if installed is not None:
            if path != Path(installed.path):
                raise EngineError(ErrorCode.API_MISUSE, f"{product_id} is already installed in "
                                  f"{installed.path}; move it instead", item=product_id)
            if installed.dirty:  # an interrupted switch: finishing it comes first
                return self._queue_change(product_id, TaskKind.REPAIR, installed.version_id, priority,
                                          limit_bps)
            if version_id is not None and version_id != installed.version_id:
                return self._queue_change(product_id, TaskKind.UPDATE, version_id, priority, limit_bps)
        resumed = self._resume_failed(product_id, TaskKind.INSTALL, version_id, str(path))
        if resumed is not None:
            return resumed
        if installed is None:
            check_install_target(path)  # refused now, before anything is queued
        task = self.state.add_task(product_id, version_id, str(path), priority=priority,
                                   limit_bps=limit_bps)
        if limit_bps:
            self.limiter.set_task(task.id, limit_bps)
        self._publish_status(task)
        self.wake()
        return task

    def _resume_failed(self, product_id: str, kind: TaskKind, version_id: str | None,
                       target: str) -> TaskRecord | None:
        """A failed task of the same kind, version and folder is resumed (its journal and staged
        data kept: nothing is fetched twice); a different one is discarded first, its staging
        removed. A task that failed inside its switch is always resumed: it holds the files."""
        last = self.state.latest_task_for(product_id)
        if last is None or last.status is not TaskState.ERROR:
            return None
        mid_switch = (Path(last.target_path) / STAGING_DIR / last.id / "switch.json").exists()
        same = (last.kind == kind and last.target_path == target
                and (version_id is None or version_id == last.version_id))
        if same or mid_switch:
            task = self.state.set_status(last.id, TaskState.QUEUED, user_paused=False,
                                          error_code=None, error_message=None)
            self._publish_status(task)
            self.wake()
            return task
        self._discard_partial(last)
        self.state.set_status(last.id, TaskState.CANCELLED)
        return None

    def _installed_or_fail(self, product_id: str) -> InstalledGame:
        game = self.state.installed_game(product_id)
        if game is None:
            raise EngineError(ErrorCode.NOT_INSTALLED, f"{product_id} is not installed")
        return game

    def _queue_change(self, product_id: str, kind: TaskKind, version_id: str | None,
                      priority: int = 0, limit_bps: int | None = None) -> TaskRecord:
        game = self._installed_or_fail(product_id)
        self.refuse_while_running(product_id, f"an {kind.value}")
        active = self.state.active_task_for(product_id)
        if active is not None:
            return active
        resumed = self._resume_failed(product_id, kind, version_id, game.path)
        if resumed is not None:
            return resumed
        task = self.state.add_task(product_id, version_id, game.path, priority=priority, kind=kind,
                                   from_version=game.version_id, limit_bps=limit_bps)
        if limit_bps:
            self.limiter.set_task(task.id, limit_bps)
        self._publish_status(task)
        self.wake()
        return task

    def update(self, product_id: str, version_id: str | None = None, priority: int = 0,
               limit_bps: int | None = None) -> TaskRecord:
        """Queue an update to ``version_id`` (the latest when None)."""
        return self._queue_change(product_id, TaskKind.UPDATE, version_id, priority, limit_bps)

    def rollback(self, product_id: str) -> TaskRecord:
        game = self._installed_or_fail(product_id)
        if game.previous_version is None:
            raise EngineError(ErrorCode.VERSION_NOT_FOUND,
                              f"{product_id} has no previous version to go back to")
        return self._queue_change(product_id, TaskKind.ROLLBACK, game.previous_version)

    def repair(self, product_id: str) -> TaskRecord:
        game = self._installed_or_fail(product_id)
        return self._queue_change(product_id, TaskKind.REPAIR, game.version_id)

    async def verify(self, product_id: str, quick: bool = False) -> VerifyReport:
        from engine.io.verify import scan_install
        from engine.jobs.update import installed_manifest

        game = self._installed_or_fail(product_id)
        cap_malloc_arenas()  # before the verify's worker threads
        manifest = await installed_manifest(self._context(), game)
        install_dir = Path(game.path)

        def scan() -> VerifyReport:
            # quick: files whose metadata matches their last proof are not re-hashed; every
            # scan refreshes the record with what it hashed
            record = VerifiedRecord.load(self.settings.data_dir, product_id, install_dir)
            report = scan_install(install_dir, manifest, quick, record=record)
            if not quick:
                record.full_verify_at = time.time()
            record.save()
            return report

        report = await asyncio.to_thread(scan)
        self._spawn(self._report_integrity(product_id, game.version_id))
        return report

    async def _report_integrity(self, product_id: str, version_id: str) -> None:
        """Seed 3.1.3: the backend hears of every verify and repair. Best-effort: the local
        check stands on its own, so a backend that is down or refuses is only logged."""
        if not self.api.logged_in or self.offline:
            return
        try:
            async with asyncio.timeout(10):
                await self.api.report_integrity(product_id, version_id)
        except (EngineError, TimeoutError) as exc:
            log.warning("could not report the verify of %s to the backend: %s", product_id,
                        getattr(exc, "message", "timed out"))

    async def login(self, username: str, password: str) -> None:
        """Log in, then pin the backend's manifest key (trusted on first use, as a first
        install would): that install's grant then goes alone instead of beside a second
        request to the backend. A backend that cannot say its key now is asked again then."""
        await self.api.login(username, password)
        try:
            async with asyncio.timeout(10):
                await manifest_key(self._context())
        except Exception as exc:
            # whatever went wrong (the backend's answer, the state's write), the login stands:
            # the first install asks for the key again and reports its error there
            log.warning("manifest key not pinned at login (the first install asks again): %s",
                        getattr(exc, "message", None) or repr(exc))

    async def check_updates(self) -> list[dict[str, Any]]:
        games = self.installed()
        if not games:
            return []
        answers = await self.api.check_updates([(g.product_id, g.version_id) for g in games])
        for a in answers:
            if a.get("isUpdateAvailable"):
                self.bus.publish(UpdateAvailable(
                    str(a.get("productId")), str(a.get("currentVersionId")),
                    str(a.get("latestVersionId")), True,
                    {k: v for k, v in a.items() if k not in (
                        "productId", "currentVersionId", "latestVersionId", "isUpdateAvailable")}))
        return answers

    async def move_install(self, product_id: str, new_folder: str) -> InstalledGame:
        game = self._installed_or_fail(product_id)
        self.refuse_while_running(product_id, "moving it")
        if self.state.active_task_for(product_id) is not None:
            raise EngineError(ErrorCode.API_MISUSE, f"{product_id} has a running task; wait or cancel it")
        from engine.jobs.move import move_game
        from engine.jobs.update import installed_manifest

        manifest = await installed_manifest(self._context(), game)
        moved = await move_game(self.state, game, Path(new_folder).absolute(), manifest)
        return moved

    def pause(self, task_id: str, *, report: bool = True) -> TaskRecord:
        """``report``: tell the backend task (False when the backend asked for it)."""
        task = self._live(task_id)
        running = task.id in self._runners
        task = self.state.set_status(task.id, TaskState.PAUSED, user_paused=True)
        self._stop(task.id, TaskState.PAUSED)
        self._publish_status(task)
        if not running and report:  # a running one reports when its run stops
            self._spawn_report(task, "paused")
        return task

    def resume(self, task_id: str, *, report: bool = True) -> TaskRecord:
        task = self.state.task(task_id)
        if task.status not in (TaskState.PAUSED, TaskState.ERROR):
            return task
        task = self.state.set_status(task.id, TaskState.QUEUED, user_paused=False,
                                      error_code=None, error_message=None)
        self._publish_status(task)
        if report:  # a resume asked by the backend is there already (its run reports next)
            self._spawn_report(task, "queued")
        self.wake()
        return task

    def cancel(self, task_id: str, *, report: bool = True) -> TaskRecord:
        task = self.state.task(task_id)
        if task.status in (TaskState.COMPLETED, TaskState.CANCELLED):
            raise EngineError(ErrorCode.API_MISUSE, f"task {task.id[:8]} is already {task.status.value}")
        if task.id in self._runners:
            self._stop(task.id, TaskState.CANCELLED)
        else:
            self._discard_partial(task)
            self._prepared.pop(task.id, None)  # a paused task's grant, manifest and plan
            task = self.state.set_status(task.id, TaskState.CANCELLED)
            self._publish_status(task)
            if report:
                self._spawn_report(task, "cancelled")
        return self.state.task(task.id)

    def move(self, task_id: str, position: int) -> list[TaskRecord]:
        task = self._live(task_id)
        live = self.state.tasks(include_finished=False)
        entries = move([self._entry(t) for t in live], task.id, position)
        self.state.set_positions(e.task_id for e in entries)
        self.wake()
        after = self.state.tasks(include_finished=False)
        from engine.core.remote import backend_order

        order = backend_order([self.local_view(t) for t in after])
        if order and self.api.logged_in:  # the backend's queue follows (remote downloads)
            self._spawn(self._report_order(order))
        return after

    async def _report_order(self, order: list[tuple[str, int]]) -> None:
        try:
            await self.api.reorder_tasks(order)
        except EngineError as exc:
            log.warning("could not reorder the backend's queue: %s", exc.message)

    # -- remote downloads (engine.core.remote decides, engine.jobs.agent does the I/O) --------
    @staticmethod
    def local_view(t: TaskRecord) -> LocalTask:
        from engine.core.remote import LocalTask

        return LocalTask(t.id, t.backend_task_id, t.status, t.user_paused, t.product_id,
                         t.updated_at)

    def bound_tasks(self) -> dict[str, TaskRecord]:
        """Backend task id -> the local task bound to it, finished ones too."""
        return {t.backend_task_id: t for t in self.state.tasks(include_finished=True)
                if t.backend_task_id is not None}

    def is_remote(self, task_id: str) -> bool:
        return remote_binding(self.state, task_id) is not None

    def adopt_remote(self, remote: RemoteTask) -> TaskRecord:
        """Queue a remote download claimed by this engine as a local install bound to its
        backend task (no second backend task: the run asks for that one's grant). The other
        device's folder means nothing here: the game goes to this device's library."""
        task = self.install(remote.product_id, remote.version_id, priority=remote.priority)
        bind_remote(self.state, task.id, remote.id)
        log.info("remote download %s: %s %s queued here as task %s", remote.id[:8],
                 remote.product_id, remote.version_id or "latest", task.id[:8])
        return self.state.task(task.id)

    def apply_order(self, ids: list[str]) -> None:
        """The local queue in this order (a reorder made on another device)."""
        live = {t.id for t in self.state.tasks(include_finished=False)}
        self.state.set_positions(i for i in ids if i in live)
        self.wake()

    async def report(self, task: TaskRecord, status: str, error: EngineError | None = None,
                     downloaded: int | None = None,
                     items: list[dict[str, Any]] | None = None) -> None:
        """A status report for the task's backend task, in order with its other reports."""
        await self._report(task, status, error, downloaded, items)

    def set_priority(self, task_id: str, priority: int) -> TaskRecord:
        task = self.state.update_task(self._live(task_id).id, priority=priority)
        self.wake()
        return task

    def set_global_limit(self, bps: int | None) -> None:
        self._user_limit = bps
        self.limiter.set_global(self._policy().limit_bps)

    def set_task_limit(self, task_id: str, bps: int | None) -> TaskRecord:
        task = self.state.update_task(self.state.task(task_id).id, limit_bps=bps)
        if bps:
            self.limiter.set_task(task.id, bps)
        else:
            self.limiter.remove_task(task.id)
        return task

    def set_schedule(self, windows: tuple[str, ...]) -> None:
        self.schedule = DownloadSchedule(tuple(parse_window(w) for w in windows))
        self.wake()

    def progress_of(self, task_id: str) -> TaskProgress | None:
        """Live progress of a running task (None when it is not running)."""
        return self._progress.get(task_id)

    def installed(self) -> list[InstalledGame]:
        return self.state.installed()

    def tasks(self, include_finished: bool = False) -> list[TaskRecord]:
        return self.state.tasks(include_finished=include_finished)

    async def uninstall(self, product_id: str) -> UninstallReport:
        """Remove what the engine installed or generated (the game's files and folders, its
        staging) and nothing else: a folder holding anything more is left, and the report says
        what. Links are never followed; a linked install folder keeps its target."""
        from engine.jobs.uninstall import UninstallReport, remove_install
        from engine.jobs.update import cached_manifest

        game = self.state.installed_game(product_id)
        if game is None:
            raise EngineError(ErrorCode.NOT_INSTALLED, f"{product_id} is not installed")
        self.refuse_while_running(product_id, "uninstalling it")
        active = self.state.active_task_for(product_id)
        if active is not None:
            self.cancel(active.id)
        key = await manifest_key(self._context())
        try:
            manifest: Manifest | None = cached_manifest(self._context(), product_id,
                                                        game.version_id, key)
        except EngineError as exc:
            log.warning("uninstall %s: %s; leaving its files in place", product_id, exc)
            manifest = None
        keep = self.state.resumable_task_ids() - ({active.id} if active else set())
        report = await asyncio.to_thread(remove_install, Path(game.path), manifest, keep)
        self.state.remove_installed(product_id)
        # the backend's library says "not installed" too (journaled: sent when it is reachable)
        self.play.queue(CallKind.UNINSTALLED, product_id, {
            "productId": product_id, "versionId": game.version_id, "at": time.time()})
        self.outbox.kick()
        return UninstallReport(game, report)

    def _live(self, task_id: str) -> TaskRecord:
        task = self.state.task(task_id)
        if task.status in FINISHED:
            raise EngineError(ErrorCode.API_MISUSE, f"task {task.id[:8]} is {task.status.value}")
        return task

    def _stop(self, task_id: str, reason: TaskState) -> None:
        runner = self._runners.get(task_id)
        if runner is not None:
            self._stop_reason[task_id] = reason
            runner.cancel()
        self.wake()

    @staticmethod
    def _entry(t: TaskRecord) -> QueueEntry:
        return QueueEntry(t.id, t.priority, t.position, t.status, t.created_at, t.user_paused)

    def _publish_status(self, t: TaskRecord, error: EngineError | None = None) -> None:
        self.bus.publish(status_event(
            t.id, t.status.value, downloaded=t.downloaded_bytes, total=t.download_bytes,
            product_id=t.product_id, error=error.to_dict() if error else None))

    def _discard_partial(self, task: TaskRecord) -> None:
        """Cancel removes this task's partial data, never installed files; a folder the install
        created is removed when nothing else is in it."""
        root = Path(task.target_path)
        try:
            remove_task_staging(root, task.id)
        except EngineError as exc:  # a staging folder that is not ours: left alone
            log.warning("cancel %s: %s", task.id[:8], exc)
        if task.kind is TaskKind.INSTALL and self.state.installed_game(task.product_id) is None \
                and root.is_dir() and not root.is_symlink() and not any(root.iterdir()):
            root.rmdir()
        self.state.clear_journal(task.id)

    # -- the loop -----------------------------------------------------------------------------
    async def run(self, until: Callable[[], bool] | None = None) -> None:
        """Run the queue; returns when ``until()`` becomes true (never, for a daemon)."""
        if self.running:
            raise EngineError(ErrorCode.API_MISUSE, "the engine loop is already running")
        self.running = True
        async with asyncio.TaskGroup() as tg:
            try:
                while True:
                    self._reconcile(tg)
                    if until is not None and until():
                        return
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):  # schedule windows open and close
                            await self._wake.wait()
            finally:
                self.running = False
                for tid, runner in list(self._runners.items()):
                    self._stop_reason.setdefault(tid, TaskState.QUEUED)
                    runner.cancel()

    def _reconcile(self, tg: asyncio.TaskGroup) -> None:
        live = self.state.tasks(include_finished=False)
        if self.offline or not self.schedule.allowed(datetime.now()) or self._policy().hold:
            for tid in list(self._runners):
                self._stop(tid, TaskState.QUEUED)
            return
        # a running game's files are never changed under it: its tasks wait for it to exit
        live = [t for t in live if t.product_id not in self.running_games()]
        for tid in list(self._runners):
            if self.state.task(tid).product_id in self.running_games():
                self._stop(tid, TaskState.QUEUED)
        decision = select_runnable([self._entry(t) for t in live],
                                   self.settings.max_concurrent_tasks)
        for tid in decision.preempt:
            if tid in self._runners:
                self._stop(tid, TaskState.PAUSED)
        for tid in decision.start:
            if tid not in self._runners:
                self._runners[tid] = tg.create_task(self._run_task(tid), name=f"task-{tid[:8]}")

    async def _run_task(self, task_id: str) -> None:
        task = self.state.set_status(task_id, TaskState.PREPARING, error_code=None,
                                     error_message=None)
        self._publish_status(task)
        try:
            if task.kind.needs_install:
                from engine.jobs.update import UpdateRun

                cap_malloc_arenas()  # an install's run caps them with its pipeline's imports
                run: InstallRun | UpdateRun = UpdateRun(self._context(), task)
            else:
                run = InstallRun(self._context(), task)
            self._progress[task_id] = run.progress
            run.on_started = lambda t: self._spawn_report(t, "downloading")
            await run.run()
            task = self.state.set_status(task_id, TaskState.COMPLETED,
                                          downloaded_bytes=run.progress.downloaded)
            self._publish_status(task)
            # nothing is awaited after completion: a cancel now must not rewrite a finished task
            self._spawn_report(task, "completed")
            if task.kind.changes_version:
                self._spawn(self._report_applied(task, True,
                                                 planned=self._planned.get(task_id)))
            if task.kind is TaskKind.REPAIR and task.version_id is not None:
                self._spawn(self._report_integrity(task.product_id, task.version_id))
        except asyncio.CancelledError:
            reason = self._stop_reason.pop(task_id, TaskState.QUEUED)
            if self.state.task(task_id).status in FINISHED:
                raise  # it finished just before the cancel arrived: keep the final state
            if reason is TaskState.CANCELLED:
                self._discard_partial(self.state.task(task_id))
            task = self.state.set_status(task_id, reason)
            self._publish_status(task)
            from engine.core.remote import stop_report

            self._spawn_report(task, stop_report(reason, task.user_paused))
            raise
        except Exception as exc:
            err = as_engine_error(exc)
            if err.code == ErrorCode.INTERNAL_ERROR:
                log.exception("task %s failed unexpectedly", task_id[:8])
            task = self.state.set_status(task_id, TaskState.ERROR, error_code=err.code,
                                          error_message=err.message)
            self.bus.publish(error_event(task_id, err.code, err.message, err.item))
            self._publish_status(task, err)
            self._spawn(self._report(task, "error", err))
            if task.kind.changes_version:
                self._spawn(self._report_applied(task, False, err.message, err.code,
                                                 self._planned.get(task_id)))
        finally:
            self._planned.pop(task_id, None)
            self._runners.pop(task_id, None)
            self._progress.pop(task_id, None)
            if self.state.task(task_id).status not in (TaskState.PAUSED, TaskState.QUEUED):
                self._prepared.pop(task_id, None)  # finished or failed: a retry prepares anew
            self.wake()

    def _spawn_report(self, task: TaskRecord, status: str) -> None:
        """Fire-and-forget history report (a cancelled run cannot await it); failures logged."""
        self._spawn(self._report(self.state.task(task.id), status))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        job = asyncio.get_running_loop().create_task(coro)
        self._reports.add(job)
        job.add_done_callback(self._reports.discard)

    async def _report(self, task: TaskRecord, status: str, error: EngineError | None = None,
                      downloaded: int | None = None,
                      items: list[dict[str, Any]] | None = None) -> None:
        bid = task.backend_task_id
        if bid is None or not self.api.logged_in:
            return
        # one task's reports go one at a time, in the order they were made (asyncio.Lock is
        # FIFO): a progress report still in flight never lands after the pause that followed
        lock = self._report_locks.setdefault(bid, asyncio.Lock())
        try:
            async with lock:
                await self.api.report_status(bid, status, task.downloaded_bytes
                                             if downloaded is None else downloaded, error,
                                             items)
        except EngineError as exc:  # history only: log, never fail the task over it
            # 409: the backend task was finished elsewhere (a cancel from another device that
            # crossed this report); the local task follows it when the change arrives
            (log.info if exc.http_status == 409 else log.warning)(
                "could not report %s for task %s: %s", status, task.id[:8], exc)
        finally:
            if not lock.locked() and status in ("completed", "cancelled"):
                self._report_locks.pop(bid, None)

    async def _report_applied(self, task: TaskRecord, ok: bool, error: str | None = None,
                              code: str | None = None,
                              planned: UpdatePlanned | None = None) -> None:
        if task.from_version is None or task.version_id is None:
            return
        # engine.core.remote (remote downloads' rules) is imported where a report needs it,
        # not at every start: an install's first byte waits for none of it (issue 13)
        from engine.core.remote import applied_status, update_type

        kind = None if planned is None else update_type(planned.download_bytes,
                                                        planned.full_download_bytes)
        try:
            await self.api.report_update_applied(task.product_id, task.from_version,
                                                 task.version_id, ok, error, task.backend_task_id,
                                                 update_type=kind,
                                                 status=applied_status(ok, code))
        except EngineError as exc:
            log.warning("could not report update of %s: %s", task.product_id, exc)

    async def run_stopped(self, task_id: str, timeout: float = 5.0) -> TaskRecord:
        """The task once its run has ended after a stop (at most ``timeout`` seconds): a cancel
        that arrives while a run winds down (its range threads stop within a poll interval) is
        carried out when the run ends, so its answer shows the state it led to."""
        runner = self._runners.get(task_id)
        if runner is not None:
            await asyncio.wait({runner}, timeout=timeout)
        return self.state.task(task_id)

    async def wait_for(self, task_id: str) -> TaskRecord:
        """Run the queue until ``task_id`` reaches a final state (or is paused)."""
        def done() -> bool:
            t = self.state.task(task_id)
            return t.status in FINISHED or (t.status is TaskState.PAUSED and t.user_paused)

        if self.running:  # a daemon's loop is already driving the queue: just watch
            sub = self.bus.subscribe(task_id)
            try:
                while not done():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await sub.get()
            finally:
                sub.close()
        else:
            await self.run(until=done)
        return self.state.task(task_id)


