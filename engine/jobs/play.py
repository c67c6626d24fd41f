"""Playing: launch a game from its manifest's launch entry, track it until every process of it
has exited, count the time (a journaled session with heartbeats), sync its saves before and
after, and serve it the local game API (achievements, save sync on request).

Refused up front, with nothing started: a game not installed (``NOT_INSTALLED``), being
installed, updated or repaired (``GAME_BUSY``), damaged (``GAME_DAMAGED``), already running
(``GAME_RUNNING``), without a launch entry (``NO_LAUNCH_ENTRY``), or whose saves conflict with
the cloud until the player chooses (``SAVEGAME_VERSION_CONFLICT``). Offline, the game starts
anyway: the session is journaled and reaches the backend when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.core.errors import EngineError, ErrorCode
from engine.core.messages import AchievementUnlocked, GameSession
from engine.core.playtime import CallKind, Verdict, after_failure
from engine.core.savesync import Keep
from engine.io.bus import EventBus
from engine.io.config import Settings
from engine.io.fsops import safe_join
from engine.io.gameapi import GameApi
from engine.io.gameproc import spawn, stop_group, wait_all
from engine.io.playstate import PlayState
from engine.io.state import InstalledGame, State
from engine.jobs.context import EngineContext
from engine.jobs.saves import SaveSync, SyncReport

if TYPE_CHECKING:  # a run's manifest is decoded by the pipeline's module
    from patcher.manifest import LaunchEntry, Manifest

log = logging.getLogger(__name__)


class Host(Protocol):
    """What the games need from the engine that owns them."""

    settings: Settings
    state: State
    bus: EventBus

    def context(self) -> EngineContext: ...
    def busy(self, product_id: str) -> bool: ...
    def games_changed(self) -> None: ...


@dataclass(slots=True)
class RunningGame:
    session_id: str
    product_id: str
    pid: int
    token: str
    started_at: float
    done: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    seconds: float = 0.0
    saves_after: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"productId": self.product_id, "sessionId": self.session_id, "pid": self.pid,
                "startedAt": self.started_at, "running": not self.done.is_set(),
                "exitCode": self.exit_code, "crashed": bool(self.exit_code),
                "seconds": round(self.seconds, 3), "savesAfter": self.saves_after}


def choose_entry(manifest: Manifest, name: str | None) -> LaunchEntry:
    if not manifest.launch:
        raise EngineError(ErrorCode.NO_LAUNCH_ENTRY,
                          f"{manifest.product_id} {manifest.version_id} names nothing to start")
    if name is None:
        return manifest.launch[0]
    for entry in manifest.launch:
        if entry.name == name:
            return entry
    names = ", ".join(e.name for e in manifest.launch)
    raise EngineError(ErrorCode.INVALID_PARAMS, f"no launch entry {name!r}; there are: {names}",
                      item=name)


class Games:
    def __init__(self, host: Host, play: PlayState, saves: SaveSync,
                 kick_outbox: Callable[[], None]) -> None:
        self.host = host
        self.play = play
        self.saves = saves
        self.kick_outbox = kick_outbox
        self.running: dict[str, RunningGame] = {}
        self.api = GameApi(self.handle_game_call)
        self._supervisors: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop watching (the games themselves go on; their sessions close at their last
        heartbeat on the next start, as after a crash)."""
        for task in list(self._supervisors):
            task.cancel()
        for task in list(self._supervisors):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.api.close()

    # -- what a game needs ---------------------------------------------------------------------
    def installed_game(self, product_id: str) -> InstalledGame:
        game = self.host.state.installed_game(product_id)
        if game is None:
            raise EngineError(ErrorCode.NOT_INSTALLED, f"{product_id} is not installed",
                              item=product_id)
        return game

    async def manifest_of(self, game: InstalledGame) -> Manifest:
        # imported here: the update machinery is not on a fresh install's path (the engine
        # builds its games part at start, before any install's first byte)
        from engine.jobs.update import installed_manifest

        return await installed_manifest(self.host.context(), game)

    def check_playable(self, product_id: str) -> InstalledGame:
        game = self.installed_game(product_id)
        if product_id in self.running:
            raise EngineError(ErrorCode.GAME_RUNNING, f"{product_id} is running already "
                              f"(pid {self.running[product_id].pid})", item=product_id)
        if self.host.busy(product_id):
            raise EngineError(ErrorCode.GAME_BUSY, f"{product_id} is being installed, updated "
                              "or repaired; it can start when that is done", item=product_id)
        if game.dirty:
            raise EngineError(ErrorCode.GAME_DAMAGED, f"{product_id} has damaged files; repair "
                              "it first (verify --repair)", item=product_id)
        return game

    def refuse_while_running(self, product_id: str, what: str) -> None:
        """Files of a running game are never replaced, moved or removed under it."""
        if product_id in self.running:
            raise EngineError(ErrorCode.GAME_RUNNING, f"{product_id} is running; close it "
                              f"before {what}", item=product_id)

    # -- launch ---------------------------------------------------------------------------------
    async def launch(self, product_id: str, entry: str | None = None, keep: Keep | None = None,
                     wait: bool = False) -> dict[str, Any]:
        game = self.check_playable(product_id)
        manifest = await self.manifest_of(game)
        chosen = choose_entry(manifest, entry)
        install_dir = Path(game.path)
        exe = safe_join(install_dir, chosen.executable)
        if not exe.is_file():
            raise EngineError(ErrorCode.GAME_DAMAGED, f"{chosen.executable} is missing; repair "
                              f"{product_id}", item=chosen.executable)
        cwd = safe_join(install_dir, chosen.working_dir) if chosen.working_dir else install_dir
        saves_before = await self._sync_before(game, manifest, keep)
        self.check_playable(product_id)  # still free after the (awaited) sync
        session_id = uuid.uuid4().hex
        token = secrets.token_urlsafe(32)
        api_url = await self.api.start()
        # the manifest's variables, then ours (a manifest cannot name LAUNCHER_* ones)
        env = dict(os.environ) | dict(chosen.environment) | {
            "LAUNCHER_API_URL": api_url, "LAUNCHER_API_TOKEN": token,
            "LAUNCHER_PRODUCT_ID": product_id, "LAUNCHER_SESSION_ID": session_id}
        proc = await spawn([str(exe), *chosen.arguments], cwd, env,
                           self.host.settings.data_dir / "game-logs" / f"{product_id}.log")
        now = time.time()
        run = RunningGame(session_id, product_id, proc.pid, token, now)
        self.api.tokens[token] = session_id
        self.running[product_id] = run
        self.play.start_session(session_id, product_id, now)
        self.kick_outbox()
        self.host.games_changed()
        self.host.bus.publish(GameSession(product_id, session_id, "running", proc.pid))
        supervisor = asyncio.get_running_loop().create_task(
            self._supervise(run, proc, game, manifest), name=f"game-{product_id}")
        self._supervisors.add(supervisor)
        supervisor.add_done_callback(self._supervisors.discard)
        if wait:
            await run.done.wait()
        return run.to_dict() | {"savesBefore": saves_before}

    async def _sync_before(self, game: InstalledGame, manifest: Manifest,
                           keep: Keep | None) -> dict[str, Any] | None:
        try:
            report = await self.saves.sync(game, manifest, keep)
        except EngineError as exc:
            # the backend cannot answer now (the same rule as for journaled calls): play anyway
            if after_failure(exc.code, exc.http_status) is Verdict.RETRY_LATER:
                log.warning("saves of %s not synced before launch (offline): %s",
                            game.product_id, exc.message)
                return {"offline": True, "error": exc.message}
            raise
        if report.conflicts:
            raise EngineError(
                ErrorCode.SAVEGAME_VERSION_CONFLICT,
                f"{game.product_id}: saves changed here and in the cloud since the last sync: "
                f"{', '.join(report.conflicts)}; start with keep=local or keep=cloud (the other "
                "copy stays recoverable)", item=report.conflicts[0])
        return report.to_dict()

    async def _supervise(self, run: RunningGame, proc: asyncio.subprocess.Process,
                         game: InstalledGame, manifest: Manifest) -> None:
        beats = asyncio.get_running_loop().create_task(self._heartbeats(run))
        try:
            code = await wait_all(proc)
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats
        ended = time.time()
        session = self.play.end_session(run.session_id, ended, code)
        run.exit_code, run.seconds = code, session.seconds(ended)
        self.running.pop(run.product_id, None)
        self.api.tokens.pop(run.token, None)
        self.kick_outbox()
        self.host.games_changed()
        self.host.bus.publish(GameSession(run.product_id, run.session_id, "exited", run.pid, code,
                                          code != 0, round(run.seconds, 3)))
        try:
            run.saves_after = (await self.saves.sync(game, manifest)).to_dict()
        except EngineError as exc:  # reported as a sync_failed event; retried next time
            run.saves_after = {"error": f"{exc.code}: {exc.message}"}
            log.warning("saves of %s not synced after the game: %s", run.product_id, exc.message)
        finally:
            run.done.set()

    async def _heartbeats(self, run: RunningGame) -> None:
        interval = self.host.settings.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            self.play.beat(run.session_id, time.time())
            self.kick_outbox()

    def stop(self, product_id: str) -> dict[str, Any]:
        run = self.running.get(product_id)
        if run is None:
            raise EngineError(ErrorCode.API_MISUSE, f"{product_id} is not running",
                              item=product_id)
        stop_group(run.pid)
        return run.to_dict()

    async def wait(self, product_id: str) -> dict[str, Any]:
        run = self.running.get(product_id)
        if run is None:
            raise EngineError(ErrorCode.API_MISUSE, f"{product_id} is not running",
                              item=product_id)
        await run.done.wait()
        return run.to_dict()

    # -- the local game API ---------------------------------------------------------------------
    async def handle_game_call(self, session_id: str, action: str,
                               params: dict[str, Any]) -> dict[str, Any]:
        run = next((r for r in self.running.values() if r.session_id == session_id), None)
        if run is None:
            raise EngineError(ErrorCode.PERMISSION_DENIED, "this game session has ended")
        pid, now = run.product_id, time.time()
        if action == "session":
            return {"productId": pid, "sessionId": session_id}
        if action == "sync":
            game = self.installed_game(pid)
            report: SyncReport = await self.saves.sync(game, await self.manifest_of(game))
            return {"saves": report.to_dict()}
        aid = str(params["achievementId"])
        if action == "unlock":
            new = self.play.first_unlock(pid, aid, now)
            if new:
                self.play.queue(CallKind.ACHIEVEMENT_UNLOCK, f"{pid}/{aid}", {
                    "productId": pid, "achievementId": aid, "clientUnlockId": uuid.uuid4().hex,
                    "at": now})
                self.host.bus.publish(AchievementUnlocked(pid, aid, None, now))
                self.kick_outbox()
            return {"achievementId": aid, "newlyUnlocked": new}
        current = params.get("current")
        if isinstance(current, bool) or not isinstance(current, int) or not 0 <= current < 1 << 31:
            raise EngineError(ErrorCode.INVALID_PARAMS, "progress needs a whole number "
                              "'current' >= 0")
        self.play.queue(CallKind.ACHIEVEMENT_PROGRESS, f"{pid}/{aid}", {
            "productId": pid, "achievementId": aid, "current": current, "at": now})
        self.kick_outbox()
        return {"achievementId": aid, "current": current, "queued": True}
