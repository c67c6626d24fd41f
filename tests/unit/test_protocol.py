"""The protocol declared once: validation, typed events on the wire, docs in step, error codes,
the lifecycle table (pure: no sockets, no files)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from engine.api import protocol
from engine.api.protocol import (
    COMMANDS,
    DownloadError,
    EngineError,
    ErrorCode,
    ExitCode,
    TaskStatus,
    UnknownEvent,
    UpdateAvailable,
    event_from_wire,
    event_to_wire,
    validate,
)
from engine.api.service import CONNECTION_COMMANDS, EngineService
from engine.core.events import status_event
from engine.core.lifecycle import (
    FINISHED,
    TRANSITIONS,
    TaskState,
    after_restart,
    can_transition,
    check_transition,
)

REPO = Path(__file__).resolve().parents[2]


def code_of(method: str, params: object) -> ErrorCode:
    with pytest.raises(EngineError) as err:
        validate(method, params)
    return err.value.code


def test_every_command_has_a_handler_with_the_declared_params() -> None:
    for cmd in COMMANDS:
        if cmd.name in CONNECTION_COMMANDS:
            continue
        handler = getattr(EngineService, "m_" + cmd.name)
        names = [p for p in inspect.signature(handler).parameters if p != "self"]
        assert names == [p.name for p in cmd.params], cmd.name
    handlers = {n[2:] for n in dir(EngineService) if n.startswith("m_")}
    assert handlers == {c.name for c in COMMANDS} - CONNECTION_COMMANDS


def test_validation_names_the_field() -> None:
    assert code_of("launchMissiles", {}) is ErrorCode.UNKNOWN_METHOD
    assert code_of("install", {}) is ErrorCode.INVALID_PARAMS
    assert code_of("install", {"productId": "../../etc"}) is ErrorCode.INVALID_PARAMS
    assert code_of("install", {"productId": "a", "priority": 10**30}) is ErrorCode.INVALID_PARAMS
    assert code_of("install", {"productId": "a", "priority": True}) is ErrorCode.INVALID_PARAMS
    assert code_of("install", {"productId": "a", "target": "x\ny"}) is ErrorCode.INVALID_PARAMS
    assert code_of("pause", {"taskId": "t", "evil": 1}) is ErrorCode.INVALID_PARAMS
    assert code_of("schedule", {"windows": ["ok", 3]}) is ErrorCode.INVALID_PARAMS
    assert code_of("tasks", [1]) is ErrorCode.INVALID_PARAMS
    with pytest.raises(EngineError) as err:
        validate("move", {"taskId": "abc", "position": -1})
    assert err.value.item == "position" and "between 0" in err.value.message
    assert validate("install", {"productId": "star-courier", "versionId": None}) == {
        "productId": "star-courier"}
    assert validate("login", {"username": "u", "password": "p\nw"})["password"] == "p\nw"


def test_the_store_commands_check_their_params_before_any_request() -> None:
    assert code_of("wishlistPriority", {"productId": "moon-miner"}) is ErrorCode.INVALID_PARAMS
    with pytest.raises(EngineError) as err:
        validate("wishlistPriority", {"productId": "moon-miner", "priority": 1001})
    assert err.value.item == "priority" and "between 0 and 1000" in err.value.message
    assert code_of("wishlistAdd", {"productId": "x", "priority": -1}) is ErrorCode.INVALID_PARAMS
    assert validate("wishlistAdd", {"productId": "moon-miner"}) == {"productId": "moon-miner"}
    assert code_of("borrow", {"productId": "../x"}) is ErrorCode.INVALID_PARAMS
    assert code_of("familyAdd", {"username": "a\nb"}) is ErrorCode.INVALID_PARAMS
    assert code_of("familyRemove", {}) is ErrorCode.INVALID_PARAMS
    # the backend's codes arrive typed, each with its class of exit code
    assert ErrorCode.from_wire("GAME_NOT_FOUND_IN_WISHLIST", ErrorCode.BACKEND_ERROR) is \
        ErrorCode.GAME_NOT_FOUND_IN_WISHLIST
    assert ErrorCode.FAMILY_ACCESS_RESTRICTED.exit_code is ExitCode.NOT_ENTITLED
    assert ErrorCode.WISHLIST_LIMIT_REACHED.exit_code is ExitCode.CONFLICT


def test_events_keep_the_seed_wire_shapes_both_ways() -> None:
    ev = status_event("t1", "downloading", downloaded=50, total=200, speed_bps=10.7, eta_s=15.2,
                      product_id="p")
    wire = event_to_wire(ev)
    assert wire == {"type": "downloadTaskStatusUpdate", "payload": {
        "taskId": "t1", "productId": "p", "status": "downloading", "totalProgressPercentage": 25.0,
        "downloadSpeedBps": 10, "estimatedTimeLeftSeconds": 15, "downloadedBytes": 50,
        "totalSizeBytes": 200, "writtenBytes": 0, "installSizeBytes": 0, "errorDetails": None}}
    assert event_from_wire(wire) == ev
    err = DownloadError("t1", "a.pak", "DELTA_PATCH_APPLICATION_FAILED", "fell back", False)
    assert event_from_wire(event_to_wire(err)) == err
    upd = UpdateAvailable("p", "1.0", "2.0", True, {"downloadSizeBytes": 5})
    assert event_to_wire(upd)["payload"]["downloadSizeBytes"] == 5
    assert event_from_wire(event_to_wire(upd)) == upd
    future = event_from_wire({"type": "achievementUnlocked", "payload": {"x": 1}})
    assert isinstance(future, UnknownEvent) and future.payload == {"x": 1}
    broken = event_from_wire({"type": "downloadError", "payload": {"taskId": "t"}})
    assert isinstance(broken, UnknownEvent)  # kept as data, the stream goes on
    assert ev.coalesce_key == ("downloadTaskStatusUpdate", "t1")
    assert TaskStatus("t1", "p", "completed").coalesce_key is None


def test_docs_are_generated_from_the_table() -> None:
    doc = (REPO / "docs" / "control-api.md").read_text()
    assert protocol.docs_block(doc) == protocol.render_markdown(), \
        "docs/control-api.md drifted: paste `python -m engine.api.protocol` between the markers"


def test_error_codes_are_typed_and_map_to_exit_codes() -> None:
    assert ErrorCode.from_wire("FILE_HASH_MISMATCH", ErrorCode.INTERNAL_ERROR) is \
        ErrorCode.FILE_HASH_MISMATCH
    assert ErrorCode.from_wire("SOMETHING_NEW", ErrorCode.BACKEND_ERROR) is ErrorCode.BACKEND_ERROR
    assert ErrorCode.from_wire(None, ErrorCode.INTERNAL_ERROR) is ErrorCode.INTERNAL_ERROR
    assert ErrorCode.MANIFEST_SIGNATURE_INVALID.exit_code is ExitCode.BAD_CONTENT
    assert ErrorCode.INSUFFICIENT_DISK_SPACE.exit_code is ExitCode.DISK_SPACE
    assert ErrorCode.TARGET_NOT_EMPTY.exit_code is ExitCode.USAGE
    unmapped = [c for c in ErrorCode if c.exit_code is ExitCode.FAILED]
    assert unmapped == [ErrorCode.INTERNAL_ERROR]  # every other code has its class


def test_lifecycle_table() -> None:
    assert can_transition(TaskState.QUEUED, TaskState.PREPARING)
    assert can_transition(TaskState.ERROR, TaskState.QUEUED)  # resumed
    assert not can_transition(TaskState.QUEUED, TaskState.COMPLETED)
    assert not can_transition(TaskState.COMPLETED, TaskState.QUEUED)
    assert not can_transition(TaskState.CANCELLED, TaskState.DOWNLOADING)
    for s in FINISHED - {TaskState.ERROR}:
        assert TRANSITIONS[s] == frozenset()
    with pytest.raises(EngineError) as err:
        check_transition(TaskState.COMPLETED, TaskState.DOWNLOADING, "abcdef123")
    assert err.value.code is ErrorCode.ILLEGAL_TRANSITION and "completed" in err.value.message
    assert after_restart(TaskState.DOWNLOADING) is TaskState.QUEUED
    assert after_restart(TaskState.VERIFYING) is TaskState.QUEUED
    assert after_restart(TaskState.PAUSED) is TaskState.PAUSED
    # every state is reachable from queued
    seen, todo = {TaskState.QUEUED}, [TaskState.QUEUED]
    while todo:
        for nxt in TRANSITIONS[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert seen == set(TaskState)
