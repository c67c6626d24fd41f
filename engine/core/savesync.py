"""Cloud saves, the decisions: a three-way comparison per save file, and what a player's choice
does to a conflict. Plain functions over data; ``engine.jobs.saves`` does the I/O.

Each save file is compared by content (SHA-256) against the state both sides had at the last
sync (``Base``: the hash and the cloud version then), never by modification times: a clock an
hour off on one device changes nothing. The rules never lose a byte:

* a side that changed since the last sync wins over a side that did not;
* both changed to different content: a conflict, decided by the player (or a QA flag), and the
  losing copy stays recoverable (the cloud keeps every version; a local file is backed up
  before anything replaces it);
* a file missing locally is downloaded again, never deleted in the cloud (deleting a save is
  not something a sync should infer from a missing file).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from engine.core.errors import EngineError, ErrorCode


class SaveAction(StrEnum):
    IN_SYNC = "in_sync"
    UPLOAD = "upload"  # local is newer
    DOWNLOAD = "download"  # cloud is newer (or the local file is gone)
    CONFLICT = "conflict"  # both changed since the last sync


class Keep(StrEnum):
    """A player's answer to a conflict."""

    LOCAL = "local"  # upload the local file; the cloud's version stays in its history
    CLOUD = "cloud"  # download the cloud's; the local file is backed up first


@dataclass(frozen=True, slots=True)
class LocalFile:
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class CloudFile:
    sha256: str
    size: int
    version_id: str


@dataclass(frozen=True, slots=True)
class Base:
    """What both sides held after the last successful sync of a slot."""

    sha256: str
    version_id: str


@dataclass(frozen=True, slots=True)
class SlotDecision:
    slot: str
    action: SaveAction
    local: LocalFile | None
    cloud: CloudFile | None
    base: Base | None

    def to_dict(self) -> dict[str, object]:
        return {"slot": self.slot, "action": self.action.value,
                "localSha256": self.local.sha256 if self.local else None,
                "cloudSha256": self.cloud.sha256 if self.cloud else None,
                "cloudVersionId": self.cloud.version_id if self.cloud else None,
                "baseVersionId": self.base.version_id if self.base else None}


def decide(local: LocalFile | None, cloud: CloudFile | None, base: Base | None) -> SaveAction:
    """The three-way rule for one slot (see the module docstring)."""
    if local is None and cloud is None:
        return SaveAction.IN_SYNC
    if local is not None and cloud is not None and local.sha256 == cloud.sha256:
        return SaveAction.IN_SYNC
    if cloud is None:
        return SaveAction.UPLOAD  # only here (the cloud never deletes a slot)
    if local is None:
        return SaveAction.DOWNLOAD
    if base is None:
        return SaveAction.CONFLICT  # both sides have different content, never synced here
    local_changed = local.sha256 != base.sha256
    cloud_changed = cloud.version_id != base.version_id and cloud.sha256 != base.sha256
    if local_changed and not cloud_changed:
        return SaveAction.UPLOAD
    if cloud_changed and not local_changed:
        return SaveAction.DOWNLOAD
    if not local_changed and not cloud_changed:
        # the cloud holds a new version with the base content: nothing to move
        return SaveAction.IN_SYNC
    return SaveAction.CONFLICT


def plan_sync(local: Mapping[str, LocalFile], cloud: Mapping[str, CloudFile],
              base: Mapping[str, Base]) -> list[SlotDecision]:
    """A decision for every slot either side (or the last sync) knows, in slot order."""
    slots = sorted(set(local) | set(cloud) | set(base))
    return [SlotDecision(s, decide(local.get(s), cloud.get(s), base.get(s)), local.get(s),
                         cloud.get(s), base.get(s)) for s in slots]


def resolve(decisions: Iterable[SlotDecision], keep: Keep | None,
            slots: Iterable[str] | None = None) -> list[SlotDecision]:
    """Conflicts turned into uploads (keep local) or downloads (keep cloud), for the given slots
    (all when None). Without a choice, any conflict left is refused with the seed's code."""
    chosen = None if slots is None else set(slots)
    out: list[SlotDecision] = []
    for d in decisions:
        if d.action is SaveAction.CONFLICT and keep is not None and \
                (chosen is None or d.slot in chosen):
            action = SaveAction.UPLOAD if keep is Keep.LOCAL else SaveAction.DOWNLOAD
            d = SlotDecision(d.slot, action, d.local, d.cloud, d.base)
        out.append(d)
    return out


def refuse_conflicts(decisions: Iterable[SlotDecision], product_id: str) -> None:
    conflicts = [d.slot for d in decisions if d.action is SaveAction.CONFLICT]
    if conflicts:
        raise EngineError(
            ErrorCode.SAVEGAME_VERSION_CONFLICT,
            f"{product_id}: saves changed on this device and in the cloud since the last sync: "
            f"{', '.join(conflicts)}; choose which to keep (keep=local or keep=cloud); the other "
            "copy stays recoverable", item=conflicts[0])


def slot_name(root: str, location: str, relative: str) -> str:
    """The cloud slot of a save file: its root, its location and its path there, so the same
    file maps to the same slot on every device whatever the install folder is."""
    parts = [root, location.strip("/"), relative.strip("/")]
    return "/".join(p for p in parts if p)


def prune_backups(names: list[str], keep: int) -> list[str]:
    """The backup sets to delete: all but the newest ``keep`` (names sort by time)."""
    return sorted(names)[:-keep] if keep > 0 and len(names) > keep else \
        ([] if keep > 0 else sorted(names))
