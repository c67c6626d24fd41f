"""The engine's messages as data: task and install results and the events, frozen dataclasses
that keep the seed's wire shapes (``{"type": ..., "payload": {camelCase...}}``). Pure: the
engine builds them, the daemon and CLI serialise them, the launcher parses them
(re-exported by ``engine.api.protocol``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar

from engine.core.lifecycle import TaskKind, TaskState

# -- results -------------------------------------------------------------------------------------

def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


class _Wire:
    """Frozen dataclasses whose wire form is their fields in camelCase."""

    def to_wire(self) -> dict[str, Any]:
        return {_camel(f.name): _plain(getattr(self, f.name)) for f in fields(self)  # type: ignore[arg-type]
                if f.name != "extra"} | dict(getattr(self, "extra", {}) or {})

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        names = {_camel(f.name): f.name for f in fields(cls)}  # type: ignore[arg-type]
        return {names[k]: v for k, v in data.items() if k in names}


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, StrEnum) else value


@dataclass(frozen=True, slots=True)
class Task(_Wire):
    task_id: str
    product_id: str
    version_id: str | None
    kind: TaskKind
    target_path: str
    priority: int
    position: int
    status: TaskState
    user_paused: bool
    total_size_bytes: int
    download_size_bytes: int
    downloaded_bytes: int
    limit_bps: int | None
    error_code: str | None
    error_message: str | None
    from_version: str | None
    backend_task_id: str | None

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Task:
        d = cls._from(data)
        d["kind"], d["status"] = TaskKind(d["kind"]), TaskState(d["status"])
        return cls(**d)


@dataclass(frozen=True, slots=True)
class InstalledGame(_Wire):
    product_id: str
    version_id: str
    path: str
    size_bytes: int
    installed_at: float
    dirty: bool
    previous_version: str | None

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> InstalledGame:
        return cls(**cls._from(data))


# -- events --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TaskStatus(_Wire):
    """``downloadTaskStatusUpdate``: a task's state and progress (progress ones coalesce)."""

    TYPE: ClassVar[str] = "downloadTaskStatusUpdate"
    task_id: str
    product_id: str | None
    status: str
    total_progress_percentage: float = 0.0
    download_speed_bps: int = 0
    estimated_time_left_seconds: int | None = None
    downloaded_bytes: int = 0
    total_size_bytes: int = 0
    written_bytes: int = 0
    install_size_bytes: int = 0
    error_details: dict[str, Any] | None = None

    @property
    def coalesce_key(self) -> tuple[str, ...] | None:
        return (self.TYPE, self.task_id) if self.status == TaskState.DOWNLOADING else None


@dataclass(frozen=True, slots=True)
class ItemProgress(_Wire):
    """``downloadItemProgressUpdate``: one file of a task."""

    TYPE: ClassVar[str] = "downloadItemProgressUpdate"
    task_id: str
    item_id: str
    relative_path: str
    status: str
    downloaded_bytes: int
    total_file_size_bytes: int

    @property
    def coalesce_key(self) -> tuple[str, ...] | None:
        return (self.TYPE, self.task_id, self.item_id)


@dataclass(frozen=True, slots=True)
class DownloadError(_Wire):
    """``downloadError``: fatal (the task failed) or not (e.g. a patch fell back to chunks)."""

    TYPE: ClassVar[str] = "downloadError"
    task_id: str
    item_id: str | None
    error_code: str
    error_message: str
    fatal: bool = True
    coalesce_key: ClassVar[None] = None


class RetryKind(StrEnum):
    RETRY = "retry"  # the same source again (no other one to try)
    FAILOVER = "failover"  # another CDN source takes over


@dataclass(frozen=True, slots=True)
class DownloadRetry(_Wire):
    """``downloadRetry``: a failed range is fetched again, from the same source or another one
    (not fatal; the task fails only with ``downloadError``). ``error_code`` is the code the task
    would end with if every try failed like this one."""

    TYPE: ClassVar[str] = "downloadRetry"
    task_id: str
    relative_path: str | None  # the file, when the range lies in one; None for a pack range
    source_id: str
    next_source_id: str
    attempt: int
    error_code: str
    message: str
    kind: RetryKind
    coalesce_key: ClassVar[None] = None


@dataclass(frozen=True, slots=True)
class UpdateAvailable(_Wire):
    """``updateAvailable``: the backend's answer for one installed game."""

    TYPE: ClassVar[str] = "updateAvailable"
    product_id: str
    current_version_id: str
    latest_version_id: str
    is_update_available: bool
    extra: dict[str, Any] = field(default_factory=dict)  # sizes, update type: as the backend says
    coalesce_key: ClassVar[None] = None


@dataclass(frozen=True, slots=True)
class UpdatePlanned(_Wire):
    """``updatePlan``: what an update will cost, stated before it starts."""

    TYPE: ClassVar[str] = "updatePlan"
    task_id: str
    product_id: str
    from_version: str
    to_version: str
    download_bytes: int
    patch_bytes: int
    reused_bytes: int
    write_bytes: int
    peak_extra_disk_bytes: int
    full_download_bytes: int
    files_rebuilt: int
    files_removed: int
    coalesce_key: ClassVar[None] = None


@dataclass(frozen=True, slots=True)
class GameSession(_Wire):
    """``gameSession``: a game started, or all its processes exited (``exitCode``: the main
    process's; negative = killed by that signal; ``crashed`` when it did not exit cleanly)."""

    TYPE: ClassVar[str] = "gameSession"
    product_id: str
    session_id: str
    status: str  # running | exited
    pid: int | None = None
    exit_code: int | None = None
    crashed: bool = False
    seconds: float = 0.0
    coalesce_key: ClassVar[None] = None


@dataclass(frozen=True, slots=True)
class SaveSyncStatus(_Wire):
    """``savegame.sync.status`` (seed 3.3): sync_started | sync_completed | sync_failed |
    sync_conflict (the player must choose; nothing was overwritten)."""

    TYPE: ClassVar[str] = "savegame.sync.status"
    product_id: str
    status: str
    uploaded: int = 0
    downloaded: int = 0
    conflicts: tuple[str, ...] = ()
    last_synced_at: float | None = None
    error_message: str | None = None
    coalesce_key: ClassVar[None] = None


@dataclass(frozen=True, slots=True)
class AchievementUnlocked(_Wire):
    """``achievement.unlocked`` (seed 3.3)."""

    TYPE: ClassVar[str] = "achievement.unlocked"
    product_id: str
    achievement_id: str
    achievement_name: str | None = None
    unlocked_at: float | None = None
    coalesce_key: ClassVar[None] = None


@dataclass(frozen=True, slots=True)
class LibraryChanged(_Wire):
    """``library.item.updated`` (seed 3.3), relayed from the backend's channel: another device
    (or the store) changed the player's library."""

    TYPE: ClassVar[str] = "library.item.updated"
    product_id: str
    changes: dict[str, Any] = field(default_factory=dict)
    coalesce_key: ClassVar[None] = None


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """An event type this client does not know (a newer engine): kept, not dropped."""

    type: str
    payload: dict[str, Any]
    coalesce_key: ClassVar[None] = None

    def to_wire(self) -> dict[str, Any]:
        return self.payload


Event = (TaskStatus | ItemProgress | DownloadError | DownloadRetry | UpdateAvailable
         | UpdatePlanned | GameSession | SaveSyncStatus | AchievementUnlocked | LibraryChanged
         | UnknownEvent)
_EVENTS: dict[str, Any] = {c.TYPE: c for c in (TaskStatus, ItemProgress, DownloadError,
                                               DownloadRetry, UpdateAvailable, UpdatePlanned,
                                               GameSession,
                                               SaveSyncStatus, AchievementUnlocked,
                                               LibraryChanged)}


def event_to_wire(event: Event) -> dict[str, Any]:
    kind = event.type if isinstance(event, UnknownEvent) else event.TYPE
    return {"type": kind, "payload": event.to_wire()}


def event_from_wire(data: Mapping[str, Any]) -> Event:
    kind = str(data.get("type"))
    payload = data.get("payload")
    payload = dict(payload) if isinstance(payload, Mapping) else {}
    cls = _EVENTS.get(kind)
    if cls is None:
        return UnknownEvent(kind, payload)
    values = cls._from(payload)
    if cls is UpdateAvailable:
        known = {_camel(f.name) for f in fields(UpdateAvailable)}
        values["extra"] = {k: v for k, v in payload.items() if k not in known}
    if cls is DownloadRetry and values.get("kind") in RetryKind.__members__.values():
        values["kind"] = RetryKind(values["kind"])
    if cls is SaveSyncStatus and isinstance(values.get("conflicts"), list):
        values["conflicts"] = tuple(values["conflicts"])
    try:
        return cls(**values)
    except TypeError:  # a field missing: keep it as data rather than fail the stream
        return UnknownEvent(kind, payload)
