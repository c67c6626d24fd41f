"""The engine's command surface: one async handler per command of the protocol's table.

The same ``EngineService`` serves the in-process CLI and the daemon's WebSocket API, so a
command behaves identically whichever way it arrives. Commands and their parameters are
declared once, in ``engine.api.protocol.COMMANDS``; ``validate`` checks a request against that
declaration before anything runs (INVALID_PARAMS naming the field), and every command has a
handler here (``m_<name>``), which a test checks. A failed write of the engine's own files
(SQLite, config) is translated here, at the boundary, to ``INSUFFICIENT_DISK_SPACE`` (disk
full) or ``IO_ERROR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from engine.api.protocol import PROTOCOL_VERSION, validate
from engine.core.errors import EngineError, ErrorCode
from engine.core.playtime import local_totals
from engine.core.text import show
from engine.io.config import save_setting
from engine.io.fsops import storage_error
from engine.io.state import TaskRecord
from engine.jobs.build import CDN_SOURCES_META
from engine.jobs.engine import Engine
from patcher.errors import ManifestError, PatcherError

if TYPE_CHECKING:
    from engine.core.savesync import Keep
    from engine.jobs.store import StoreJobs

CONNECTION_COMMANDS = frozenset({"subscribe", "unsubscribe", "cli"})  # the daemon's, per connection


def parse_keep(keep: str | None) -> Keep | None:
    if keep is None:
        return None
    from engine.core.savesync import Keep  # the saves' module: loaded with a game's launch

    try:
        return Keep(keep)
    except ValueError as exc:
        raise EngineError(ErrorCode.INVALID_PARAMS, f"keep must be local or cloud, not "
                          f"{show(keep)}", item="keep") from exc


class EngineService:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @cached_property
    def store(self) -> StoreJobs:
        """Wishlist and family sharing, made when first used: not on an install's start."""
        from engine.jobs.store import StoreJobs

        engine = self.engine
        return StoreJobs(engine.api, lambda: engine.api.logged_in and not engine.offline)

    async def call(self, method: str, params: Any) -> Any:
        checked = validate(method, params)
        if method in CONNECTION_COMMANDS:
            raise EngineError(ErrorCode.API_MISUSE, f"{method} needs a daemon connection")
        handler: Callable[..., Awaitable[Any]] = getattr(self, "m_" + method)
        try:
            return await handler(**checked)
        except (ConnectionError, TimeoutError):
            raise  # network trouble is the backend client's to report, not a storage failure
        except (sqlite3.Error, OSError) as exc:
            raise storage_error(exc, f"handling {method}", self.engine.settings.data_dir) from exc
        except ManifestError as exc:
            raise EngineError(ErrorCode.from_wire(exc.code, ErrorCode.INVALID_PARAMS), exc.message,
                              item=exc.field) from exc
        except PatcherError as exc:
            raise EngineError(ErrorCode.from_wire(exc.code, ErrorCode.INTERNAL_ERROR),
                              exc.message) from exc

    # -- session ------------------------------------------------------------------------------
    async def m_ping(self) -> dict[str, Any]:
        return {"pong": True, "protocol": PROTOCOL_VERSION}

    async def m_status(self) -> dict[str, Any]:
        e = self.engine
        return {"protocol": PROTOCOL_VERSION, "backend": e.settings.backend_url,
                "dataDir": str(e.settings.data_dir), "libraryDir": str(e.settings.library),
                "deviceId": e.device_id,
                "cdnSources": [s for s in (e.state.get_meta(CDN_SOURCES_META) or "").split(",") if s],
                "loggedIn": e.api.logged_in,
                "globalLimitBps": e.limiter.global_rate, "schedule": list(e.settings.schedule),
                "offline": e.offline, "running": e.running,
                "tasks": [self._task(t) for t in e.tasks()],
                "installed": [g.to_dict() for g in e.installed()]}

    async def m_login(self, username: str, password: str) -> dict[str, Any]:
        await self.engine.login(username, password)
        self.engine.settings = save_setting(self.engine.settings, "username", username)
        cred = self.engine.credentials
        store = "OS keyring" if cred.use_keyring else f"{cred.file} (0600)"
        return {"result": "logged_in", "username": username, "tokenStore": store}

    async def m_logout(self) -> dict[str, Any]:
        await self.engine.api.logout()
        return {"result": "logged_out"}

    async def m_library(self) -> list[dict[str, Any]]:
        installed = {g.product_id: g for g in self.engine.installed()}
        items = await self.engine.api.library()
        out = []
        for item in items:
            attrs = dict(item.get("attributes", {}))
            attrs["itemId"] = item.get("id")
            pid = str(attrs.get("product_id", ""))
            g = installed.get(pid)
            out.append({"libraryItem": attrs, "installed": g.to_dict() if g else None,
                        "running": pid in self.engine.running_games()})
        return out

    async def m_categories(self) -> list[dict[str, Any]]:
        return await self.engine.api.categories()

    async def m_categoryCreate(self, name: str) -> dict[str, Any]:
        return await self.engine.api.create_category(name)

    async def m_categoryDelete(self, categoryId: str) -> dict[str, Any]:
        await self.engine.api.delete_category(categoryId)
        return {"deleted": categoryId}

    async def m_libraryItemUpdate(self, itemId: str, categoryIds: list[str] | None = None,
                                  hidden: bool | None = None) -> dict[str, Any]:
        return await self.engine.api.update_item(itemId, category_ids=categoryIds, hidden=hidden)

    async def m_installed(self) -> list[dict[str, Any]]:
        return [g.to_dict() for g in self.engine.installed()]

    # -- playing ------------------------------------------------------------------------------
    async def m_launch(self, productId: str, entry: str | None = None, keep: str | None = None,
                       wait: bool = False) -> dict[str, Any]:
        games = self.engine.games
        games.check_playable(productId)  # the local refusals first: they need no network
        await self.store.check_family_access(productId)
        return await games.launch(productId, entry, parse_keep(keep), wait)

    async def m_games(self) -> list[dict[str, Any]]:
        return [g.to_dict() for g in self.engine.running_games().values()]

    async def m_stopGame(self, productId: str) -> dict[str, Any]:
        return self.engine.games.stop(productId)

    async def m_playtime(self, productId: str | None = None) -> list[dict[str, Any]]:
        """This device's sessions (journaled, exact) beside the backend's total (all devices);
        the backend's part is left out, not failed, when it cannot be reached."""
        e = self.engine
        if e.api.logged_in and not e.offline:  # what is owed goes first, so the totals agree
            with contextlib.suppress(EngineError, TimeoutError):
                async with asyncio.timeout(10):
                    e.outbox.close_stale_sessions()
                    await e.outbox.replay()
        now = time.time()
        sessions = e.play.sessions(productId)
        local = local_totals(sessions, now)
        server: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(EngineError):
            server = await e.library().playtime_summary()
        products = sorted(set(local) | ({productId} if productId else set(server)))
        return [{"productId": pid, "localSeconds": round(local.get(pid, 0.0), 3),
                 "serverSeconds": server[pid]["total_playtime_seconds"] if pid in server else None,
                 "lastPlayedAt": server.get(pid, {}).get("last_played_at"),
                 "sessions": [s.to_dict(now) for s in sessions if s.product_id == pid],
                 "pendingCalls": e.play.pending_count()} for pid in products]

    async def m_saves(self, productId: str, action: str | None = None, keep: str | None = None,
                      savegameId: str | None = None, backup: str | None = None) -> dict[str, Any]:
        e = self.engine
        game = e.games.installed_game(productId)
        manifest = await e.games.manifest_of(game)
        action = action or "status"
        if action == "status":
            return await e.saves.status(game, manifest)
        if action == "restore":
            e.games.refuse_while_running(productId, "restoring its saves (it may be writing them)")
        if action == "sync":
            return (await e.saves.sync(game, manifest, parse_keep(keep))).to_dict()
        if action == "restore":
            return (await e.saves.restore(game, manifest, savegame_id=savegameId,
                                          backup=backup)).to_dict()
        raise EngineError(ErrorCode.INVALID_PARAMS, f"unknown saves action {show(action)}: "
                          "status, sync or restore", item="action")

    async def m_achievements(self, productId: str) -> list[dict[str, Any]]:
        return await self.engine.library().achievements(productId)

    # -- wishlist and family sharing ----------------------------------------------------------
    async def m_wishlist(self) -> list[dict[str, Any]]:
        return await self.store.wishlist()

    async def m_wishlistAdd(self, productId: str, priority: int | None = None) -> dict[str, Any]:
        return await self.store.wish(productId, priority)

    async def m_wishlistPriority(self, productId: str, priority: int) -> dict[str, Any]:
        return await self.store.set_priority(productId, priority)

    async def m_wishlistRemove(self, productId: str) -> dict[str, Any]:
        return await self.store.unwish(productId)

    async def m_family(self) -> dict[str, Any]:
        return await self.store.family()

    async def m_familyAdd(self, username: str) -> dict[str, Any]:
        return await self.store.add_member(username)

    async def m_familyRemove(self, userId: str) -> dict[str, Any]:
        return await self.store.remove_member(userId)

    async def m_borrow(self, productId: str) -> dict[str, Any]:
        return await self.store.borrow(productId)

    # -- queue --------------------------------------------------------------------------------
    def _task(self, t: TaskRecord) -> dict[str, Any]:
        """A task on the wire, saying whether another device queued it (a remote download)."""
        return t.to_dict() | {"remote": self.engine.is_remote(t.id)}

    async def m_tasks(self, all: bool = False) -> list[dict[str, Any]]:
        return [self._task(t) for t in self.engine.tasks(include_finished=all)]

    async def m_task(self, taskId: str) -> dict[str, Any]:
        return self._task(self.engine.state.task(taskId))

    # -- remote downloads: queued here for another device, or watched from here --------------
    async def m_remoteInstall(self, productId: str, versionId: str | None = None,
                              deviceId: str | None = None) -> dict[str, Any]:
        if deviceId is not None and deviceId == self.engine.device_id:
            raise EngineError(ErrorCode.API_MISUSE, "that device is this one: use install",
                              item="deviceId")
        doc = await self.engine.api.create_remote_task(productId, versionId,
                                                       target_device=deviceId)
        from engine.core.remote import remote_task_view  # remote downloads' own: not at start

        return remote_task_view(doc)

    async def m_remoteTasks(self, taskId: str | None = None) -> list[dict[str, Any]]:
        from engine.core.remote import remote_task_view

        if taskId is not None:
            return [remote_task_view(await self.engine.api.get_task(taskId))]
        return [remote_task_view(d) for d in await self.engine.api.task_queue()]

    async def m_install(self, productId: str, versionId: str | None = None,
                        target: str | None = None, priority: int = 0,
                        limitBps: int | None = None) -> dict[str, Any]:
        return self.engine.install(productId, versionId, target, priority, limitBps).to_dict()

    async def m_update(self, productId: str, versionId: str | None = None,
                       priority: int = 0, limitBps: int | None = None) -> dict[str, Any]:
        return self.engine.update(productId, versionId, priority, limitBps).to_dict()

    async def m_updateAll(self) -> list[dict[str, Any]]:
        answers = await self.engine.check_updates()
        return [self.engine.update(a["productId"]).to_dict()
                for a in answers if a.get("isUpdateAvailable")]

    async def m_checkUpdates(self) -> list[dict[str, Any]]:
        return await self.engine.check_updates()

    async def m_rollback(self, productId: str) -> dict[str, Any]:
        return self.engine.rollback(productId).to_dict()

    async def m_repair(self, productId: str) -> dict[str, Any]:
        return self.engine.repair(productId).to_dict()

    async def m_verify(self, productId: str, quick: bool = False) -> dict[str, Any]:
        return (await self.engine.verify(productId, quick)).to_dict()

    async def m_uninstall(self, productId: str) -> dict[str, Any]:
        return (await self.engine.uninstall(productId)).to_dict()

    async def m_moveInstall(self, productId: str, folder: str) -> dict[str, Any]:
        return (await self.engine.move_install(productId, folder)).to_dict()

    async def m_pause(self, taskId: str) -> dict[str, Any]:
        return self.engine.pause(taskId).to_dict()

    async def m_resume(self, taskId: str) -> dict[str, Any]:
        return self.engine.resume(taskId).to_dict()

    async def m_cancel(self, taskId: str) -> dict[str, Any]:
        task = self.engine.cancel(taskId)
        return (await self.engine.run_stopped(task.id)).to_dict()

    async def m_move(self, taskId: str, position: int) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self.engine.move(taskId, position)]

    async def m_priority(self, taskId: str, priority: int) -> dict[str, Any]:
        return self.engine.set_priority(taskId, priority).to_dict()

    async def m_wait(self, taskId: str) -> dict[str, Any]:
        return (await self.engine.wait_for(self.engine.state.task(taskId).id)).to_dict()

    # -- limits, schedule, settings -----------------------------------------------------------
    async def m_limit(self, bps: int | None = None, taskId: str | None = None,
                      set: bool = False) -> dict[str, Any]:
        """``set`` distinguishes "set to unlimited" (bps null) from "just show"."""
        e = self.engine
        if taskId is not None:
            if set or bps is not None:
                return {"task": e.set_task_limit(taskId, bps).to_dict()}
            return {"task": e.state.task(taskId).to_dict()}
        if set or bps is not None:
            e.settings = save_setting(e.settings, "global_limit_bps", bps if bps else "")
            e.set_global_limit(bps)
        return {"globalLimitBps": e.limiter.global_rate}

    async def m_schedule(self, windows: list[Any] | None = None, clear: bool = False) -> dict[str, Any]:
        e = self.engine
        if clear or windows is not None:
            # validated (config rules: CONFIG_INVALID) and written before it applies
            e.settings = save_setting(e.settings, "schedule", [] if clear else list(windows or []))
            e.set_schedule(e.settings.schedule)
        return {"schedule": list(e.settings.schedule)}

    async def m_settings(self, key: str | None = None, value: Any = None) -> dict[str, Any]:
        e = self.engine
        if key is not None and key not in vars(e.settings):
            raise EngineError(ErrorCode.CONFIG_INVALID, f"unknown setting {show(key)}", item=key)
        if key is not None and value is not None:
            if key in ("data_dir", "backend_url"):
                raise EngineError(ErrorCode.API_MISUSE, f"{key} cannot change while the engine runs")
            e.settings = save_setting(e.settings, key, value)
            if key == "global_limit_bps":
                e.set_global_limit(e.settings.global_limit_bps)
            if key == "schedule":
                e.set_schedule(e.settings.schedule)
        values = {k: (str(v) if not isinstance(v, int | float | bool | type(None) | tuple) else v)
                  for k, v in vars(e.settings).items()}
        return {"settings": values if key is None else {key: values.get(key)}}

    async def m_offline(self, enabled: bool) -> dict[str, Any]:
        """QA: simulated offline mode: running downloads stop (resumable), none start."""
        self.engine.offline = enabled
        self.engine.wake()
        return {"offline": enabled}
