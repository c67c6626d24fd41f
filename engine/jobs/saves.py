"""Cloud saves, the I/O: scan a game's save locations, compare with the cloud and the last
synced state (``engine.core.savesync``), move what must move, keep backups, report.

A download replaces a local file only after it is in a backup set; an upload never deletes a
cloud version (the backend keeps the history); a conflict changes nothing until the player
chooses. ``savegame.sync.status`` events tell the launcher what happened.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.errors import EngineError, ErrorCode
from engine.core.messages import SaveSyncStatus
from engine.core.savesync import (
    Base,
    Keep,
    SaveAction,
    SlotDecision,
    plan_sync,
    resolve,
)
from engine.io.bus import EventBus
from engine.io.library_client import CloudSlot, LibraryApi
from engine.io.playstate import PlayState
from engine.io.savefiles import Backups, SaveFile, location_of, replace_save, scan
from engine.io.state import InstalledGame

if TYPE_CHECKING:  # a run's manifest is decoded by the pipeline's module
    from patcher.manifest import Manifest

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SyncReport:
    product_id: str
    uploaded: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    in_sync: int = 0
    skipped: list[str] = field(default_factory=list)  # cloud slots with no place in this version
    backup: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"productId": self.product_id, "uploaded": self.uploaded,
                "downloaded": self.downloaded, "conflicts": self.conflicts,
                "inSync": self.in_sync, "skipped": self.skipped, "backup": self.backup,
                "seconds": round(self.seconds, 3)}


def game_files_of(manifest: Manifest) -> frozenset[str]:
    return frozenset(f.path for f in manifest.files)


class SaveSync:
    def __init__(self, play: PlayState, bus: EventBus, backups: Backups,
                 library: Callable[[], LibraryApi]) -> None:
        self.play = play
        self.bus = bus
        self.backups = backups
        self.library = library
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, product_id: str) -> asyncio.Lock:
        return self._locks.setdefault(product_id, asyncio.Lock())

    async def _state(self, game: InstalledGame, manifest: Manifest
                     ) -> tuple[dict[str, SaveFile], dict[str, CloudSlot], list[SlotDecision]]:
        local = await asyncio.to_thread(scan, manifest.saves, Path(game.path), game_files_of(manifest))
        cloud = await self.library().save_slots(game.product_id)
        decisions = plan_sync({s: f.local for s, f in local.items()},
                              {s: c.as_cloud_file() for s, c in cloud.items()},
                              self.play.save_bases(game.product_id))
        return local, cloud, decisions

    async def status(self, game: InstalledGame, manifest: Manifest) -> dict[str, Any]:
        """Every slot: what is here, what the cloud holds (all versions), what a sync would do."""
        local, cloud, decisions = await self._state(game, manifest)
        slots = []
        for d in decisions:
            here = local.get(d.slot)
            slots.append({**d.to_dict(), "path": str(here.path) if here else None,
                          "localSizeBytes": here.local.size if here else None,
                          "cloudVersions": [v.to_dict() for v in cloud[d.slot].versions]
                          if d.slot in cloud else []})
        return {"productId": game.product_id, "slots": slots,
                "backups": [p.name for p in self.backups.sets(game.product_id)]}

    async def sync(self, game: InstalledGame, manifest: Manifest,
                   keep: Keep | None = None) -> SyncReport:
        """Both ways. Conflicts are left untouched and listed unless ``keep`` decides them."""
        pid = game.product_id
        report = SyncReport(pid)
        if not manifest.saves:
            return report
        started = time.monotonic()
        async with self._lock(pid):
            self.bus.publish(SaveSyncStatus(pid, "sync_started"))
            try:
                await self._sync(game, manifest, keep, report)
            except EngineError as exc:
                self.bus.publish(SaveSyncStatus(pid, "sync_failed", len(report.uploaded),
                                                len(report.downloaded),
                                                error_message=f"{exc.code}: {exc.message}"))
                raise
            report.seconds = time.monotonic() - started
            status = "sync_conflict" if report.conflicts else "sync_completed"
            self.bus.publish(SaveSyncStatus(pid, status, len(report.uploaded),
                                            len(report.downloaded), tuple(report.conflicts),
                                            time.time()))
        return report

    async def _sync(self, game: InstalledGame, manifest: Manifest, keep: Keep | None,
                    report: SyncReport) -> None:
        pid, install_dir = game.product_id, Path(game.path)
        game_files = game_files_of(manifest)  # once per sync, not once per file
        local, cloud, decisions = await self._state(game, manifest)
        api = self.library()
        for d in resolve(decisions, keep):
            if d.action is SaveAction.CONFLICT:
                report.conflicts.append(d.slot)
            elif d.action is SaveAction.IN_SYNC:
                report.in_sync += 1
                if d.cloud is not None and d.local is not None and (
                        d.base is None or d.base.version_id != d.cloud.version_id):
                    self.play.set_save_base(pid, d.slot, Base(d.cloud.sha256, d.cloud.version_id))
            elif d.action is SaveAction.UPLOAD:
                here = local[d.slot]
                data = await asyncio.to_thread(here.path.read_bytes)
                base = int(d.cloud.version_id) if d.cloud is not None else 0
                try:
                    version = await api.upload_save(pid, d.slot, data, base)
                except EngineError as exc:
                    if exc.code is not ErrorCode.SAVEGAME_VERSION_CONFLICT:
                        raise
                    report.conflicts.append(d.slot)  # the cloud moved on meanwhile
                    continue
                self.play.set_save_base(pid, d.slot, Base(version.sha256, str(version.version)))
                report.uploaded.append(d.slot)
            else:  # DOWNLOAD
                place = location_of(d.slot, manifest.saves, install_dir, game_files)
                if place is None:
                    report.skipped.append(d.slot)
                    continue
                _, path = place
                data = await api.download_save(cloud[d.slot].latest)
                if path.exists() or path.is_symlink():
                    taken = await asyncio.to_thread(self.backups.take, pid, {d.slot: path},
                                                    "before-download")
                    report.backup = str(taken) if taken else report.backup
                await asyncio.to_thread(replace_save, path, data)
                latest = cloud[d.slot].latest
                self.play.set_save_base(pid, d.slot, Base(latest.sha256, str(latest.version)))
                report.downloaded.append(d.slot)
        if report.uploaded or report.downloaded:
            now_local = await asyncio.to_thread(scan, manifest.saves, install_dir, game_files)
            await asyncio.to_thread(self.backups.take, pid,
                                    {s: f.path for s, f in now_local.items()}, "synced")

    async def restore(self, game: InstalledGame, manifest: Manifest, *,
                      savegame_id: str | None = None, backup: str | None = None) -> SyncReport:
        """Bring back a cloud version (by its id) or a local backup set, then sync: the restored
        content becomes the newest version in the cloud, and every other version stays."""
        pid, install_dir = game.product_id, Path(game.path)
        async with self._lock(pid):
            if savegame_id is not None:
                cloud = await self.library().save_slots(pid)
                found = [(slot, v) for slot, c in cloud.items() for v in c.versions
                         if v.savegame_id == savegame_id]
                if not found:
                    raise EngineError(ErrorCode.SAVEGAME_SLOT_NOT_FOUND,
                                      f"{pid} has no cloud save {savegame_id!r}")
                slot, version = found[0]
                data = await self.library().download_save(version)
                files = {slot: data}
                latest = {slot: cloud[slot].latest}
            elif backup is not None:
                sets = {p.name: p for p in self.backups.sets(pid)}
                if backup not in sets:
                    raise EngineError(ErrorCode.SAVEGAME_SLOT_NOT_FOUND,
                                      f"{pid} has no local backup {backup!r}; see saves list")
                files = {slot: p.read_bytes() for slot, p in
                         self.backups.contents(sets[backup]).items()}
                cloud = await self.library().save_slots(pid)
                latest = {s: cloud[s].latest for s in files if s in cloud}
            else:
                raise EngineError(ErrorCode.INVALID_PARAMS, "restore needs savegameId or backup")
            places = {}
            game_files = game_files_of(manifest)
            for slot in files:
                place = location_of(slot, manifest.saves, install_dir, game_files)
                if place is None:
                    raise EngineError(ErrorCode.SAVEGAME_SLOT_NOT_FOUND,
                                      f"save {slot!r} has no place in {pid} {game.version_id}")
                places[slot] = place[1]
            await asyncio.to_thread(self.backups.take, pid, places, "before-restore")
            for slot, data in files.items():
                await asyncio.to_thread(replace_save, places[slot], data)
                if slot in latest:  # the cloud's newest is the base: the sync uploads ours
                    self.play.set_save_base(pid, slot, Base(latest[slot].sha256,
                                                            str(latest[slot].version)))
        return await self.sync(game, manifest)
