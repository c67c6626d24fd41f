"""The engine's control protocol, declared once (stdlib only: what the launcher imports).

Every command is one ``Command`` in ``COMMANDS``: its name, typed parameters, result and help.
From that table come the service dispatch (``engine.api.service``), the daemon's validation
(``validate``), the CLI parser (``engine.cli``) and docs/control-api.md (``render_markdown``;
a test fails when the docs drift). Events are frozen dataclasses that keep the seed's wire
shapes (``{"type": ..., "payload": {camelCase...}}``): ``to_wire`` / ``event_from_wire``.

Wire: JSON text frames over a WebSocket on 127.0.0.1. Requests ``{"id", "method", "params"}``;
replies ``{"id", "result"}`` or ``{"id", "error": {"code", "message", "item"}}``; events
``{"type": "event", "event": {...}}`` after ``subscribe``; the server says
``{"type": "hello", "protocol": N}`` first, and a client refuses a different major version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from engine.api.wire import PROTOCOL_VERSION
from engine.core.errors import EngineError, ErrorCode, ExitCode
from engine.core.text import ID_RULE, INT64_MAX, check_text, is_id, show

if TYPE_CHECKING:  # at run time these come on first use (``__getattr__`` below)
    from engine.core.lifecycle import TaskKind, TaskState
    from engine.core.messages import (
        AchievementUnlocked,
        DownloadError,
        DownloadRetry,
        Event,
        GameSession,
        InstalledGame,
        ItemProgress,
        LibraryChanged,
        SaveSyncStatus,
        Task,
        TaskStatus,
        UnknownEvent,
        UpdateAvailable,
        UpdatePlanned,
        event_from_wire,
        event_to_wire,
    )

# The messages (a dozen dataclasses: ~5 ms with what ``dataclasses`` pulls in) and the lifecycle
# enums are re-exported here but loaded when first used: the CLI's one-shot daemon client
# builds its parser from this table and passes the daemon's answers on as dicts, and a command
# with no event stream (``status``, ``queue``, ``limit``...) never needs them (issue 13).
_LAZY = {"TaskKind": "engine.core.lifecycle", "TaskState": "engine.core.lifecycle"} | {
    name: "engine.core.messages" for name in (
        "AchievementUnlocked", "DownloadError", "DownloadRetry", "Event", "GameSession",
        "InstalledGame", "ItemProgress", "LibraryChanged", "SaveSyncStatus", "Task",
        "TaskStatus", "UnknownEvent", "UpdateAvailable", "UpdatePlanned", "event_from_wire",
        "event_to_wire")}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups are plain module attributes
    return value


__all__ = [
    "COMMANDS",
    "PROTOCOL_VERSION",
    "AchievementUnlocked",
    "Command",
    "DownloadError",
    "DownloadRetry",
    "EngineError",
    "ErrorCode",
    "Event",
    "ExitCode",
    "GameSession",
    "InstalledGame",
    "ItemProgress",
    "LibraryChanged",
    "Param",
    "ParamKind",
    "SaveSyncStatus",
    "Task",
    "TaskKind",
    "TaskState",
    "TaskStatus",
    "UnknownEvent",
    "UpdateAvailable",
    "UpdatePlanned",
    "command",
    "event_from_wire",
    "event_to_wire",
    "render_markdown",
    "validate",
]



# -- commands ----------------------------------------------------------------------------------

class ParamKind(StrEnum):
    TEXT = "string"
    ID = "id"  # a product, version or task id
    INT = "integer"
    BOOL = "boolean"
    TEXT_LIST = "list of strings"
    SETTING = "string | number | boolean | list"  # a setting's value: checked by the config rules


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a command: its wire name, kind, help and bounds."""

    name: str
    kind: ParamKind
    help: str
    required: bool = False
    low: int | None = None  # inclusive bounds of an INT
    high: int | None = None
    secret: bool = False  # never echoed or checked as text (a password)


@dataclass(frozen=True, slots=True)
class Command:
    """One command of the protocol: its name, help, result and parameters."""

    name: str
    help: str
    result: str
    params: tuple[Param, ...] = ()
    long_running: bool = False  # replies when the work ends (events flow meanwhile)

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None


PRODUCT = Param("productId", ParamKind.ID, "the game", required=True)
TASK = Param("taskId", ParamKind.ID, "a task id (a unique prefix is enough)", required=True)
VERSION = Param("versionId", ParamKind.ID, "a version (default: the latest)")
PRIORITY = Param("priority", ParamKind.INT, "higher runs first", low=-1000, high=1000)
LIMIT = Param("limitBps", ParamKind.INT, "per-task speed limit in bytes/s", low=1, high=INT64_MAX)

KEEP = Param("keep", ParamKind.TEXT, "a save conflict: keep local or cloud (the other copy "
             "stays recoverable)")
TASK_RESULT = "a task (see Task)"
WISH_ENTRY = "{wishlistItemId, productId, title, priority, addedAt, coverImageUrl}"
WISH_LIST = "[" + WISH_ENTRY + "]"
WISH_PRIORITY = Param("priority", ParamKind.INT, "0..1000, higher first (default 0)", low=0,
                      high=1000)
REMOTE_TASK = ("{taskId, productId, versionId, status, deviceId, targetDeviceId, origin, "
               "downloadedBytes, downloadSizeBytes, errorCode, errorMessage, updatedAt}")
COMMANDS: tuple[Command, ...] = (
    Command("ping", "check the connection", "{pong, protocol}"),
    Command("status", "the engine's state: backend, limits, schedule, queue, installed games",
            "{protocol, backend, dataDir, libraryDir, deviceId, cdnSources, loggedIn, "
            "globalLimitBps, schedule, offline, running, tasks, installed}"),
    Command("login", "log in to the backend (the refresh token goes to the OS keyring)",
            "{result, username, tokenStore}",
            (Param("username", ParamKind.TEXT, "account name", required=True),
             Param("password", ParamKind.TEXT, "password", required=True, secret=True))),
    Command("logout", "forget the stored session", "{result}"),
    Command("library", "owned games, with what is installed", "[{libraryItem, installed}]"),
    Command("installed", "installed games", "[InstalledGame]"),
    Command("categories", "the player's game categories", "[{categoryId, name, sort_order, ...}]"),
    Command("categoryCreate", "create a category", "{categoryId, name, ...}",
            (Param("name", ParamKind.TEXT, "its name (unique per player)", required=True),)),
    Command("categoryDelete", "delete a category (its games stay)", "{deleted}",
            (Param("categoryId", ParamKind.ID, "the category", required=True),)),
    Command("libraryItemUpdate", "put a game in categories, or hide it", "the library item",
            (Param("itemId", ParamKind.ID, "the library item (libraryItem.itemId)", required=True),
             Param("categoryIds", ParamKind.TEXT_LIST, "its categories (replaces them)"),
             Param("hidden", ParamKind.BOOL, "hidden from the library"))),
    Command("tasks", "the download queue", "[Task]",
            (Param("all", ParamKind.BOOL, "include finished tasks"),)),
    Command("task", "one task", TASK_RESULT, (TASK,)),
    Command("install", "install a game (or resume its task)", TASK_RESULT,
            (PRODUCT, VERSION, Param("target", ParamKind.TEXT, "install folder (empty or new)"),
             PRIORITY, LIMIT)),
    Command("update", "update a game to the latest or a given version", TASK_RESULT,
            (PRODUCT, VERSION, PRIORITY, LIMIT)),
    Command("updateAll", "queue an update for every game that has one", "[Task]"),
    Command("checkUpdates", "ask the backend about updates for installed games",
            "[{productId, currentVersionId, latestVersionId, isUpdateAvailable, ...}]"),
    Command("rollback", "return to the previously installed version", TASK_RESULT, (PRODUCT,)),
    Command("repair", "rebuild damaged files", TASK_RESULT, (PRODUCT,)),
    Command("verify", "check installed files against the manifest", "VerifyReport",
            (PRODUCT, Param("quick", ParamKind.BOOL,
                                    "presence and size; re-hash only files changed since "
                                    "their last check (size, mtime, ctime, inode)"))),
    Command("uninstall", "remove a game's files (only the launcher's own)",
            "InstalledGame + {removedFiles, leftInFolder, folderRemoved}", (PRODUCT,)),
    Command("moveInstall", "move an installed game to another folder", "InstalledGame",
            (PRODUCT, Param("folder", ParamKind.TEXT, "the new folder", required=True))),
    Command("launch", "start a game from its manifest's launch entry (saves synced before and "
            "after, playtime tracked); refused while it is busy, damaged or running, and a "
            "borrowed game while its owner plays it (FAMILY_ACCESS_RESTRICTED)",
            "{productId, sessionId, pid, running, exitCode, crashed, seconds, savesBefore, "
            "savesAfter}",
            (PRODUCT, Param("entry", ParamKind.TEXT, "which launch entry (default: the first)"),
             KEEP, Param("wait", ParamKind.BOOL, "answer when the game has exited")),
            long_running=True),
    Command("games", "the games running now", "[{productId, sessionId, pid, startedAt, ...}]"),
    Command("stopGame", "ask a running game to close (SIGTERM to all its processes)",
            "{productId, sessionId, pid, ...}", (PRODUCT,)),
    Command("playtime", "playtime per game: this device's sessions and the backend's total",
            "[{productId, localSeconds, serverSeconds, sessions, lastPlayedAt}]",
            (Param("productId", ParamKind.ID, "one game (default: all)"),)),
    Command("saves", "cloud saves of a game: status (what a sync would do), sync, restore",
            "{productId, slots, backups} or a sync report {uploaded, downloaded, conflicts, ...}",
            (PRODUCT, Param("action", ParamKind.TEXT, "status (default) | sync | restore"),
             KEEP, Param("savegameId", ParamKind.ID, "restore: a cloud version"),
             Param("backup", ParamKind.TEXT, "restore: a local backup set (see status)"))),
    Command("achievements", "a game's achievements: unlocked, progress, rarity",
            "[{achievementId, name, is_unlocked, unlocked_at, current_progress, ...}]",
            (PRODUCT,)),
    Command("wishlist", "the player's wishlist, priority high to low, then oldest first",
            WISH_LIST),
    Command("wishlistAdd", "put a game on the wishlist (already there: keeps it, sets a given "
            "priority)", WISH_ENTRY, (PRODUCT, WISH_PRIORITY)),
    Command("wishlistPriority", "change a wished game's priority", WISH_ENTRY,
            (PRODUCT, Param("priority", ParamKind.INT, "0..1000, higher first", required=True,
                            low=0, high=1000))),
    Command("wishlistRemove", "take a game off the wishlist (not there: "
            "GAME_NOT_FOUND_IN_WISHLIST)", "{removed}", (PRODUCT,)),
    Command("family", "family sharing: the family's members (the owner first) and, for a "
            "member, the owner's games with whether each can be used now",
            "{role, ownerId, maxMembers, members: [{userId, username, role, addedAt}], "
            "sharedGames: [{productId, title, ownerId, ownerName, isAvailable, isBorrowed, "
            "libraryItemId, coverImageUrl}]}"),
    Command("familyAdd", "share your library with another player (you become the owner)",
            "{userId, username, role, addedAt}",
            (Param("username", ParamKind.TEXT, "the player's account name", required=True),)),
    Command("familyRemove", "remove a member (the owner), or leave the family (your own id); "
            "the games they borrowed go, their saves and playtime stay theirs", "{removed}",
            (Param("userId", ParamKind.ID, "the member (see family)", required=True),)),
    Command("borrow", "borrow a game of the family's owner into your library (playable and "
            "installable while the owner is not playing it, else FAMILY_ACCESS_RESTRICTED)",
            "the library item (acquisition_type family_shared_access)", (PRODUCT,)),
    Command("remoteInstall", "queue a download for another device of the player (remote "
            "download): the backend announces it, that device's running engine claims and runs "
            "it, and its progress comes back here (see remoteTasks)", REMOTE_TASK,
            (PRODUCT, VERSION, Param("deviceId", ParamKind.ID, "the device to run it (default: "
                                     "whichever of the player's engines is running; see "
                                     "status.deviceId)"))),
    Command("remoteTasks", "the player's download tasks on the backend, every device's, in "
            "queue order (what remoteInstall queued and how far each has come); with taskId "
            "that one task, finished too", "[" + REMOTE_TASK + "]",
            (Param("taskId", ParamKind.ID, "one backend task (remoteInstall's taskId)"),)),
    Command("pause", "pause a task", TASK_RESULT, (TASK,)),
    Command("resume", "resume a paused or failed task", TASK_RESULT, (TASK,)),
    Command("cancel", "cancel a task and discard its partial data", TASK_RESULT, (TASK,)),
    Command("move", "move a task to a queue position", "[Task]",
            (TASK, Param("position", ParamKind.INT, "0 = first", required=True, low=0,
                         high=INT64_MAX))),
    Command("priority", "set a task's priority", TASK_RESULT,
            (TASK, Param("priority", ParamKind.INT, "higher runs first", required=True,
                         low=-1000, high=1000))),
    Command("limit", "show or set the global (or a task's) speed limit",
            "{globalLimitBps} or {task}",
            (Param("bps", ParamKind.INT, "bytes/s; null with set=true lifts the limit", low=1,
                   high=INT64_MAX),
             Param("taskId", ParamKind.ID, "a task instead of the global limit"),
             Param("set", ParamKind.BOOL, "change the limit (else just show it)"))),
    Command("schedule", "show or set the download time windows", "{schedule}",
            (Param("windows", ParamKind.TEXT_LIST, 'e.g. ["22:00-06:00", "sat,sun 00:00-24:00"]'),
             Param("clear", ParamKind.BOOL, "download at any time"))),
    Command("settings", "show settings, or set one (persisted in config.toml)", "{settings}",
            (Param("key", ParamKind.TEXT, "a setting name"),
             Param("value", ParamKind.SETTING, 'its new value ("" = back to the default)'))),
    Command("offline", "QA: simulate being offline (running downloads stop, resumable)",
            "{offline}", (Param("enabled", ParamKind.BOOL, "on or off", required=True),)),
    Command("wait", "wait until a task finishes (or is paused by the user)", TASK_RESULT,
            (TASK,), long_running=True),
    Command("subscribe", "receive events: all, or one task's", "{subscribed}",
            (Param("taskId", ParamKind.ID, "only this task's events"),)),
    Command("unsubscribe", "stop receiving events", "{subscribed}"),
    Command("cli", "run a launcher-engine command line here (the one-shot CLI's quick path: "
            "its output arrives as output messages)", "{exitCode} or {declined}",
            (Param("argv", ParamKind.TEXT_LIST, "the words after launcher-engine", required=True),
             Param("cwd", ParamKind.TEXT, "the client's folder (relative paths)", required=True),
             Param("home", ParamKind.TEXT, "the client's home folder (~)", required=True),
             Param("dataDir", ParamKind.TEXT, "the data folder the client found this daemon by",
                   required=True),
             Param("protocol", ParamKind.INT, "the client's protocol version", required=True),
             Param("env", ParamKind.TEXT_LIST, "the client's LAUNCHER_ENGINE_* settings, NAME=value"),
             Param("progress", ParamKind.BOOL, "draw the progress bar (a terminal)")),
            long_running=True),
)
_BY_NAME = {c.name: c for c in COMMANDS}


def command(name: str) -> Command:
    found = _BY_NAME.get(name)
    if found is None:
        raise EngineError(ErrorCode.UNKNOWN_METHOD, f"unknown method {show(name)}")
    return found


def _bad(method: str, p: Param, why: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_PARAMS, f"{method}: {p.name!r} {why}", item=p.name)


def _check(method: str, p: Param, value: Any) -> None:
    k = p.kind
    if k is ParamKind.BOOL:
        if not isinstance(value, bool):
            raise _bad(method, p, "must be true or false")
    elif k is ParamKind.INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(method, p, "must be an integer")
        if (p.low is not None and value < p.low) or (p.high is not None and value > p.high):
            raise _bad(method, p, f"= {show(value)}: must be between {p.low} and {p.high}")
    elif k is ParamKind.ID:
        if not is_id(value):
            raise _bad(method, p, f"= {show(value)} is not an id ({ID_RULE})")
    elif k is ParamKind.TEXT:
        if not isinstance(value, str):
            raise _bad(method, p, "must be a string")
        if not p.secret:
            try:
                check_text(value)
            except ValueError as exc:
                raise _bad(method, p, f"= {show(value)}: {exc}") from exc
        elif len(value) > 4096:
            raise _bad(method, p, "is too long")
    elif k is ParamKind.TEXT_LIST:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _bad(method, p, "must be a list of strings")
    elif k is ParamKind.SETTING:
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad(method, p, "must be a finite number")
        if not isinstance(value, str | int | float | bool | list):
            raise _bad(method, p, "must be a string, number, boolean or list")


def validate(method: str, params: Any) -> dict[str, Any]:
    """The checked params of a request (nulls dropped), or INVALID_PARAMS naming the field."""
    cmd = command(method)
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise EngineError(ErrorCode.INVALID_PARAMS, "params must be an object")
    unknown = sorted(str(k) for k in params if cmd.param(str(k)) is None)
    if unknown:
        raise EngineError(ErrorCode.INVALID_PARAMS, f"{method}: unknown parameter(s) {show(unknown)}")
    out: dict[str, Any] = {}
    for p in cmd.params:
        value = params.get(p.name)
        if value is None:
            if p.required:
                raise _bad(method, p, "is missing")
            continue
        _check(method, p, value)
        out[p.name] = value
    return out


# -- docs ----------------------------------------------------------------------------------------

def render_markdown() -> str:
    """The command reference of docs/control-api.md (generated; a test keeps the doc in step)."""
    lines = ["| method | params | result | what |", "| --- | --- | --- | --- |"]
    for c in COMMANDS:
        params = ", ".join(
            f"`{p.name}`{'' if p.required else '?'}: {p.kind.value}"
            + (f" [{p.low}..{p.high}]" if p.low is not None and p.high is not None
               and p.high < INT64_MAX else "")
            for p in c.params) or "—"
        lines.append(f"| `{c.name}` | {params} | {c.result} | {c.help}"
                     + (" (long-running)" if c.long_running else "") + " |")
    from engine.core.messages import _EVENTS

    events = ", ".join(f"`{t}`" for t in _EVENTS)
    lines += ["", f"Events: {events}."]
    return "\n".join(lines) + "\n"


def docs_block(text: str) -> str:
    """The generated part of docs/control-api.md (between its markers)."""
    begin, end = text.index(DOCS_BEGIN) + len(DOCS_BEGIN), text.index(DOCS_END)
    return text[begin:end].strip("\n") + "\n"


DOCS_BEGIN = "<!-- generated by `python -m engine.api.protocol`: do not edit -->"
DOCS_END = "<!-- end of generated part -->"

if __name__ == "__main__":
    print(render_markdown(), end="")
