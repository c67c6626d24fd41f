"""engine.core.remote: which backend task an engine takes, what it becomes, how changes made on
either side agree (remote downloads)."""

from __future__ import annotations

import pytest

from engine.core.errors import ErrorCode
from engine.core.lifecycle import TaskState
from engine.core.remote import (
    MAX_ITEMS_PER_REPORT,
    MAX_QUEUE_IDS,
    QUEUE_REORDERED,
    RESYNC_BACKOFF_S,
    TASK_CHANGED,
    Adoption,
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
    applied_status,
    backend_order,
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
    stop_report,
    update_type,
)

ME, OTHER = "dev-a", "dev-b"


def remote(status: str = "queued", *, origin: str | None = "remote", device: str | None = None,
           target: str | None = None, version: str | None = "1.0", kind: str = "install",
           updated_at: float | None = 100.0, tid: str = "t1") -> RemoteTask:
    return RemoteTask(tid, status, kind, "star-courier", version, 0, origin, device, target,
                      updated_at)


def local(status: TaskState, user_paused: bool = False, updated_at: float = 50.0,
          bid: str | None = "t1", lid: str = "l1") -> LocalTask:
    return LocalTask(lid, bid, status, user_paused, "star-courier", updated_at)


def test_a_remote_task_is_adopted_by_any_engine_or_the_named_one() -> None:
    assert adoption(remote(), ME, frozenset()) is Adoption.ADOPT
    assert adoption(remote(target=ME), ME, frozenset()) is Adoption.ADOPT
    assert adoption(remote(device=ME), ME, frozenset()) is Adoption.ADOPT  # claimed, then lost
    assert adoption(remote(status="downloading"), ME, frozenset()) is Adoption.ADOPT


@pytest.mark.parametrize(("task", "expected"), [
    (remote(origin="device"), Adoption.NOT_REMOTE),  # an engine's own install
    (remote(origin=None), Adoption.NOT_REMOTE),  # made before remote downloads existed
    (remote(target=OTHER), Adoption.ELSEWHERE),
    (remote(device=OTHER), Adoption.ELSEWHERE),
    (remote(status="paused"), Adoption.NOT_WAITING),  # taken when resumed
    (remote(status="cancelled"), Adoption.NOT_WAITING),
    (remote(status="error"), Adoption.NOT_WAITING),
    (remote(status="completed"), Adoption.NOT_WAITING),
])
def test_what_is_not_adopted(task: RemoteTask, expected: Adoption) -> None:
    assert adoption(task, ME, frozenset()) is expected


def test_a_bound_task_is_never_adopted_twice() -> None:
    assert adoption(remote(), ME, frozenset({"t1"})) is Adoption.BOUND


def test_local_plan() -> None:
    assert local_plan(remote(), None, False).kind is PlanKind.INSTALL
    assert local_plan(remote(version="1.0"), "1.0", False).kind is PlanKind.ALREADY_THERE
    assert local_plan(remote(version=None), "1.0", False).kind is PlanKind.ALREADY_THERE
    busy = local_plan(remote(), None, True)
    assert (busy.kind, busy.code) == (PlanKind.REFUSE, ErrorCode.GAME_BUSY)
    # installed at another version: it becomes an update of that install
    assert local_plan(remote(version="2.0"), "1.0", False).kind is PlanKind.INSTALL
    update = local_plan(remote(kind="update"), None, False)
    assert (update.kind, update.code) == (PlanKind.REFUSE, ErrorCode.NOT_INSTALLED)


@pytest.mark.parametrize(("status", "task", "action"), [
    ("paused", local(TaskState.DOWNLOADING), LocalAction.PAUSE),
    ("paused", local(TaskState.QUEUED), LocalAction.PAUSE),
    ("paused", local(TaskState.PAUSED, user_paused=False), LocalAction.PAUSE),  # preempted
    ("paused", local(TaskState.PAUSED, user_paused=True), LocalAction.NONE),
    ("downloading", local(TaskState.PAUSED, user_paused=True), LocalAction.RESUME),
    ("queued", local(TaskState.ERROR), LocalAction.RESUME),
    ("downloading", local(TaskState.DOWNLOADING), LocalAction.NONE),
    ("downloading", local(TaskState.PAUSED, user_paused=False), LocalAction.NONE),
    ("cancelled", local(TaskState.DOWNLOADING), LocalAction.CANCEL),
    ("cancelled", local(TaskState.ERROR), LocalAction.CANCEL),
    ("cancelled", local(TaskState.COMPLETED), LocalAction.NONE),
    ("paused", local(TaskState.CANCELLED), LocalAction.NONE),
    ("completed", local(TaskState.DOWNLOADING), LocalAction.NONE),
])
def test_remote_changes_map_to_local_actions(status: str, task: LocalTask,
                                             action: LocalAction) -> None:
    assert remote_action(status, task) is action


def test_the_engines_own_stops_are_not_a_players_pause() -> None:
    assert stop_report(TaskState.PAUSED, True) == "paused"
    assert stop_report(TaskState.PAUSED, False) == "queued"  # preempted
    assert stop_report(TaskState.QUEUED, False) == "queued"  # shutdown, offline, schedule
    assert stop_report(TaskState.CANCELLED, False) == "cancelled"
    assert local_status(local(TaskState.PAUSED, user_paused=True)) == "paused"
    assert local_status(local(TaskState.PAUSED)) == "queued"
    assert local_status(local(TaskState.ERROR)) == "error"


def test_on_connect_the_side_that_changed_last_wins() -> None:
    # a pause or cancel made elsewhere while this engine was away is applied
    assert on_connect(remote("paused"), local(TaskState.QUEUED, updated_at=999)) is Side.REMOTE
    assert on_connect(remote("cancelled"), local(TaskState.QUEUED)) is Side.REMOTE
    # resumed elsewhere after it was paused here: resumed here
    assert on_connect(remote("downloading", updated_at=100),
                      local(TaskState.PAUSED, True, updated_at=50)) is Side.REMOTE
    # paused here (the report was lost) after the backend last changed: reported
    assert on_connect(remote("downloading", updated_at=100),
                      local(TaskState.PAUSED, True, updated_at=150)) is Side.LOCAL
    # finished here, the backend did not hear it
    assert on_connect(remote("downloading"), local(TaskState.COMPLETED)) is Side.LOCAL
    assert on_connect(remote("paused"), local(TaskState.ERROR)) is Side.LOCAL
    # nothing to do
    assert on_connect(remote("downloading"), local(TaskState.QUEUED)) is Side.AGREE
    assert on_connect(remote("completed"), local(TaskState.COMPLETED)) is Side.AGREE


def test_progress_is_throttled_and_only_when_it_moved() -> None:
    assert progress_due(None, 10.0, 0)
    mark = ProgressMark(10.0, 100)
    assert not progress_due(mark, 10.5, 200)
    assert progress_due(mark, 11.0, 200)
    assert not progress_due(mark, 20.0, 100)  # stalled: nothing new to say


def test_queue_orders_agree() -> None:
    tasks = [local(TaskState.DOWNLOADING, bid="b1", lid="l1"),
             local(TaskState.QUEUED, bid=None, lid="l2"),
             local(TaskState.QUEUED, bid="b3", lid="l3")]
    # the backend put b3 first: the bound tasks swap slots, the unbound one keeps its own
    assert local_order(["b3", "b1"], tasks) == ["l3", "l2", "l1"]
    assert local_order(["b1", "b3", "unknown"], tasks) is None  # the echo of our own order
    assert backend_order(tasks) == [("b1", 0), ("b3", 1)]


def test_remote_task_parsing() -> None:
    ev = RemoteTask.from_event({"task_id": "t9", "status": "queued", "product_id": "p",
                                "version_id": "2", "origin": "remote", "priority": 3,
                                "updated_at": "2024-01-01T00:00:00Z"})
    assert ev is not None and (ev.id, ev.version_id, ev.priority, ev.device_id) == (
        "t9", "2", 3, None)
    assert ev.updated_at == 1704067200.0
    assert RemoteTask.from_event({"status": "queued"}) is None
    res = RemoteTask.from_resource({"id": "t9", "attributes": {
        "status": "paused", "productId": "p", "versionId": "2", "kind": "install",
        "origin": "remote", "deviceId": "d", "targetDeviceId": None, "priority": True}})
    assert res is not None and (res.status, res.device_id, res.priority) == ("paused", "d", 0)
    assert RemoteTask.from_resource({"id": 5, "attributes": {}}) is None


def test_update_reports() -> None:
    assert update_type(10, 100) == "delta"
    assert update_type(100, 100) == "full"
    assert applied_status(True, None) == "success"
    assert applied_status(False, ErrorCode.DELTA_PATCH_APPLICATION_FAILED) == "patch_failed"
    assert applied_status(False, ErrorCode.FILE_HASH_MISMATCH) == "verification_failed"
    assert applied_status(False, ErrorCode.INSUFFICIENT_DISK_SPACE) == "failed"


def test_item_notes_keep_the_newest_bytes_and_count_retries() -> None:
    pending = note_progress({}, "a.pak", "downloading", 10, 100)
    pending = note_retry(pending, "a.pak", "edge-1", "CDN_UNREACHABLE", "reset")
    pending = note_retry(pending, "a.pak", "edge-0", "CDN_UNREACHABLE", "reset again")
    note = pending["a.pak"]
    assert (note.status, note.downloaded, note.retries, note.source_id) == (
        "retrying", 10, 2, "edge-0")
    pending = note_progress(pending, "a.pak", "completed", 100, 100)
    done = pending["a.pak"]
    assert (done.status, done.downloaded, done.retries, done.source_id) == (
        "completed", 100, 2, "edge-0")  # the retries stay visible with the file
    assert done.to_wire()["retryCount"] == 2 and done.to_wire()["relativePath"] == "a.pak"
    retried_first = note_retry({}, "b.pak", "edge-1", "FILE_HASH_MISMATCH", "x" * 5000)
    assert retried_first["b.pak"].downloaded == 0
    assert len(retried_first["b.pak"].error_message or "") == 4000


def test_item_notes_are_bounded() -> None:
    pending: dict[str, ItemNote] = {}
    for i in range(MAX_ITEMS_PER_REPORT + 10):
        pending = note_progress(pending, f"f{i}", "downloading", i, 1000)
    assert len(pending) == MAX_ITEMS_PER_REPORT
    assert note_retry(pending, "new", "e", "C", "m").keys() == pending.keys()
    assert note_progress(pending, "f0", "completed", 1000, 1000)["f0"].status == "completed"


def _changed(**payload: object) -> dict[str, object]:
    base: dict[str, object] = {"task_id": "t1", "status": "queued", "product_id": "star-courier",
                               "origin": "remote", "kind": "install"}
    return {"event_type": TASK_CHANGED, "payload": base | payload}


def test_channel_messages_of_the_right_shape_are_taken() -> None:
    got = parse_event(_changed(device_id="dev-a", updated_at="2026-01-01T00:00:00Z"))
    assert isinstance(got, TaskChanged)
    assert (got.task.id, got.task.status, got.task.device_id) == ("t1", "queued", "dev-a")
    assert parse_event({"event_type": QUEUE_REORDERED, "payload": {"task_ids": ["a", "b"]}}) \
        == QueueReordered(("a", "b"))
    assert parse_event({"event_type": QUEUE_REORDERED, "payload": {"task_ids": []}}) \
        == QueueReordered(())


@pytest.mark.parametrize("doc", [
    {"event_type": QUEUE_REORDERED, "payload": {"task_ids": 5}},  # the review's message
    {"event_type": QUEUE_REORDERED, "payload": {"task_ids": "t1"}},
    {"event_type": QUEUE_REORDERED, "payload": {"task_ids": ["t1", 7]}},
    {"event_type": QUEUE_REORDERED, "payload": {"task_ids": ["t1", ""]}},
    {"event_type": QUEUE_REORDERED, "payload": {"task_ids": ["x" * 65]}},
    {"event_type": QUEUE_REORDERED, "payload": {"task_ids": ["t"] * (MAX_QUEUE_IDS + 1)}},
    {"event_type": QUEUE_REORDERED, "payload": {}},
    {"event_type": QUEUE_REORDERED, "payload": [1, 2]},
    {"event_type": QUEUE_REORDERED},
    _changed(task_id=5),
    _changed(status=None),
    _changed(status="exploded"),
    _changed(product_id=["star-courier"]),
    _changed(task_id=""),
    {"event_type": "library.item.updated", "payload": {}},
    ["not", "an", "object"],
])
def test_malformed_channel_messages_are_dropped_with_a_reason(doc: object) -> None:
    got = parse_event(doc)
    assert isinstance(got, Malformed) and got.reason


def test_a_failed_queue_read_is_retried_with_a_capped_backoff() -> None:
    assert resync_delay(0) == 0.0
    delays = [resync_delay(n) for n in range(1, 10)]
    assert delays[0] == RESYNC_BACKOFF_S[0] <= 2.0  # a 503 at connect: retried soon
    assert delays == sorted(delays)  # never shorter after more failures
    assert max(delays) == RESYNC_BACKOFF_S[-1] == delays[-1] <= 60.0  # capped


def test_only_a_claim_answer_that_is_ours_and_waiting_is_queued() -> None:
    assert claimed(remote(device=ME), ME)
    assert claimed(remote("downloading", device=ME), ME)
    assert not claimed(remote("cancelled", device=ME), ME)  # cancelled while claiming
    assert not claimed(remote("paused", device=ME), ME)
    assert not claimed(remote(device=OTHER), ME)
    assert not claimed(remote(device=None), ME)
    assert not claimed(None, ME)
