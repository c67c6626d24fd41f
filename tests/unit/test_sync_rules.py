"""The sync agent's decisions, without sockets: the three-way save rule, conflict choices,
playtime totals and orphaned sessions, the outbox's compaction and failure verdicts, downloads
while playing, automatic updates, the preferred CDN edge."""

from __future__ import annotations

import pytest

from engine.core.errors import EngineError, ErrorCode
from engine.core.playtime import (
    CallKind,
    LocalSession,
    OutboxCall,
    Verdict,
    after_failure,
    close_orphans,
    compact,
    downloads_policy,
    local_totals,
    updates_to_queue,
)
from engine.core.savesync import (
    Base,
    CloudFile,
    Keep,
    LocalFile,
    SaveAction,
    decide,
    plan_sync,
    prune_backups,
    refuse_conflicts,
    resolve,
)
from engine.core.sources import CdnSource, prefer_source

L1, L2 = LocalFile("a" * 64, 1), LocalFile("b" * 64, 2)
C1, C2 = CloudFile("a" * 64, 1, "1"), CloudFile("b" * 64, 2, "2")


@pytest.mark.parametrize(("local", "cloud", "base", "action"), [
    (None, None, None, SaveAction.IN_SYNC),
    (L1, None, None, SaveAction.UPLOAD),  # new here
    (None, C1, None, SaveAction.DOWNLOAD),  # new in the cloud
    (L1, C1, None, SaveAction.IN_SYNC),  # same content, never synced here
    (L2, C1, None, SaveAction.CONFLICT),  # different content, never synced: the player decides
    (L2, C1, Base("a" * 64, "1"), SaveAction.UPLOAD),  # only the local side changed
    (L1, C2, Base("a" * 64, "1"), SaveAction.DOWNLOAD),  # only the cloud changed
    (L2, C2, Base("a" * 64, "1"), SaveAction.IN_SYNC),  # both changed to the same content
    (LocalFile("c" * 64, 3), C2, Base("a" * 64, "1"), SaveAction.CONFLICT),
    (None, C1, Base("a" * 64, "1"), SaveAction.DOWNLOAD),  # gone here: fetched, never deleted
    (L1, CloudFile("a" * 64, 1, "5"), Base("a" * 64, "1"), SaveAction.IN_SYNC),  # a re-upload
])
def test_three_way_rule(local: LocalFile | None, cloud: CloudFile | None, base: Base | None,
                        action: SaveAction) -> None:
    assert decide(local, cloud, base) is action


def test_conflicts_are_decided_only_by_a_choice() -> None:
    plan = plan_sync({"s": L2, "t": L1}, {"s": C1}, {})
    assert [d.action for d in plan] == [SaveAction.CONFLICT, SaveAction.UPLOAD]
    with pytest.raises(EngineError) as err:
        refuse_conflicts(plan, "game")
    assert err.value.code is ErrorCode.SAVEGAME_VERSION_CONFLICT and err.value.item == "s"
    assert resolve(plan, None)[0].action is SaveAction.CONFLICT
    assert resolve(plan, Keep.LOCAL)[0].action is SaveAction.UPLOAD
    assert resolve(plan, Keep.CLOUD)[0].action is SaveAction.DOWNLOAD
    assert resolve(plan, Keep.CLOUD, slots=["other"])[0].action is SaveAction.CONFLICT


def test_backups_keep_the_newest() -> None:
    assert prune_backups(["3", "1", "2"], 2) == ["1"]
    assert prune_backups(["1"], 2) == []


def test_playtime_totals_and_sessions_left_by_a_crash() -> None:
    done = LocalSession("a", "g", 100.0, 160.0, 160.0, 0)
    open_ = LocalSession("b", "g", 200.0, 230.0)
    assert local_totals([done, open_], now=250.0) == {"g": 60.0 + 50.0}
    # not stale yet (another engine may be beating it), then stale: ends at its last heartbeat
    assert close_orphans([open_], set(), now=235.0, stale_after=10) == []
    closed = close_orphans([open_, done], set(), now=300.0, stale_after=10)
    assert [(s.id, s.ended_at) for s in closed] == [("b", 230.0)]
    assert close_orphans([open_], {"b"}, now=300.0, stale_after=10) == []  # tracked here


def test_outbox_compaction_keeps_order_and_drops_what_is_superseded() -> None:
    calls = [OutboxCall(1, CallKind.SESSION_START, "s", {}),
             OutboxCall(2, CallKind.SESSION_HEARTBEAT, "s", {}),
             OutboxCall(3, CallKind.ACHIEVEMENT_PROGRESS, "g/a", {"current": 1}),
             OutboxCall(4, CallKind.SESSION_HEARTBEAT, "s", {}),
             OutboxCall(5, CallKind.ACHIEVEMENT_PROGRESS, "g/a", {"current": 2}),
             OutboxCall(6, CallKind.SESSION_END, "s", {})]
    keep, drop = compact(calls)
    assert [c.seq for c in keep] == [1, 5, 6] and drop == [2, 3, 4]


@pytest.mark.parametrize(("code", "status", "verdict"), [
    (ErrorCode.BACKEND_UNREACHABLE, None, Verdict.RETRY_LATER),
    (ErrorCode.BACKEND_ERROR, 503, Verdict.RETRY_LATER),
    (ErrorCode.RATE_LIMITED, 429, Verdict.RETRY_LATER),
    (ErrorCode.UNAUTHENTICATED, 401, Verdict.RETRY_LATER),
    (ErrorCode.ACHIEVEMENT_ALREADY_UNLOCKED, 409, Verdict.DONE),
    (ErrorCode.BACKEND_ERROR, 409, Verdict.DROP),
    (ErrorCode.VALIDATION_ERROR, 422, Verdict.DROP),
])
def test_outbox_failure_verdicts(code: ErrorCode, status: int | None, verdict: Verdict) -> None:
    assert after_failure(code, status) is verdict


def test_downloads_while_playing() -> None:
    assert downloads_policy("pause", 10, 0, None).hold is False  # no game running
    assert downloads_policy("pause", 10, 1, 50).hold is True
    assert downloads_policy("throttle", 10, 1, None).limit_bps == 10
    assert downloads_policy("throttle", 10, 1, 5).limit_bps == 5  # the lower one
    assert downloads_policy("continue", 10, 2, None).limit_bps is None
    assert downloads_policy("throttle", 10, 0, 7).limit_bps == 7  # no game: the player's own


def test_automatic_updates_skip_busy_and_running_games() -> None:
    answers = [{"productId": p, "isUpdateAvailable": True} for p in ("a", "b", "c")] + \
        [{"productId": "d", "isUpdateAvailable": False}]
    assert updates_to_queue(answers, busy={"b"}, running={"c"}) == ["a"]


def test_the_preferred_edge_goes_first() -> None:
    sources = [CdnSource("east", "http://e", "", 0.0, 2), CdnSource("west", "http://w", "", 0.0, 1)]
    assert max(prefer_source(sources, "west"), key=lambda s: s.priority).id == "west"
    assert prefer_source(sources, "nowhere") == sources
    assert prefer_source(sources, None) == sources
