"""The fetch rules (sans-I/O): retry, fail over, refresh tokens, give up — without sockets."""

from __future__ import annotations

from engine.core.fetchrules import Failure, FetchState, GiveUp, Retry, after_failure
from engine.core.retry import RetryPolicy
from engine.core.sources import FailureKind

SOURCES = frozenset({"a", "b"})
POLICY = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=8, jitter=0)


def step(state: FetchState, failure: Failure) -> Retry | GiveUp:
    return after_failure(state, failure, SOURCES, POLICY, 0.0, "pack p")


def test_a_failure_fails_over_with_backoff() -> None:
    s = step(FetchState(), Failure("a", FailureKind.HTTP_5XX, "503"))
    assert isinstance(s, Retry)
    assert s.state.exclude == {"a"} and s.state.attempt == 1 and s.delay_s == 0.5
    s2 = step(s.state, Failure("b", FailureKind.RESET, "reset"))
    assert isinstance(s2, Retry)
    assert s2.state.exclude == frozenset()  # both tried: start over by health
    assert s2.delay_s == 1.0 and not s2.refresh_tokens


def test_403_asks_for_fresh_tokens() -> None:
    s = step(FetchState(), Failure("a", FailureKind.FORBIDDEN, "403"))
    assert isinstance(s, Retry) and s.refresh_tokens


def test_retries_are_capped_and_the_last_failure_names_the_error() -> None:
    state = FetchState()
    kinds = [FailureKind.STALL, FailureKind.HTTP_5XX, FailureKind.RESET, FailureKind.CORRUPT]
    result: Retry | GiveUp | None = None
    for i, kind in enumerate(kinds):
        result = step(state, Failure("ab"[i % 2], kind, kind.value))
        if isinstance(result, Retry):
            state = result.state
    assert isinstance(result, GiveUp)
    assert result.code == "FILE_HASH_MISMATCH" and "corrupt" in result.message
    forbidden = FetchState(3, frozenset(), frozenset(), None)
    last = step(forbidden, Failure("a", FailureKind.FORBIDDEN, "403"))
    assert isinstance(last, GiveUp) and last.code == "CDN_LINK_GENERATION_FAILED"
    network = step(forbidden, Failure("a", FailureKind.STALL, "no data"))
    assert isinstance(network, GiveUp) and network.code == "CDN_UNREACHABLE"
    assert "4 tries" in network.message


def test_416_from_every_source_is_a_bad_manifest_at_once() -> None:
    s = step(FetchState(), Failure("a", FailureKind.HTTP_5XX, "416", out_of_range=True, item="p"))
    assert isinstance(s, Retry)  # one edge could be serving a truncated copy
    s2 = step(s.state, Failure("b", FailureKind.HTTP_5XX, "416", out_of_range=True, item="p"))
    assert isinstance(s2, GiveUp)
    assert s2.code == "MANIFEST_INVALID" and s2.item == "p" and "416" in s2.message


def test_a_check_failure_keeps_its_code_after_every_source() -> None:
    bad_sig = Failure("a", FailureKind.CORRUPT, "signature does not match", code="MANIFEST_SIGNATURE_INVALID")
    s = step(FetchState(), bad_sig)
    assert isinstance(s, Retry) and s.state.exclude == {"a"}  # the next try goes elsewhere
    end = step(FetchState(3), bad_sig)
    assert isinstance(end, GiveUp) and end.code == "MANIFEST_SIGNATURE_INVALID"


def test_a_range_fetched_again_is_announced_as_retry_or_failover() -> None:
    from engine.core.events import retry_event
    from engine.core.messages import DownloadRetry, RetryKind, event_from_wire, event_to_wire

    assert retry_event("t", FetchState(), "a", "pack p") is None  # a first try says nothing
    s = step(FetchState(), Failure("a", FailureKind.CORRUPT, "a: chunk 12ab hash mismatch"))
    assert isinstance(s, Retry)
    moved = retry_event("t", s.state, "b", "pack p", "data/x.pak")
    assert moved == DownloadRetry("t", "data/x.pak", "a", "b", 1, "FILE_HASH_MISMATCH",
                                  "a: chunk 12ab hash mismatch", RetryKind.FAILOVER)
    s2 = step(s.state, Failure("b", FailureKind.HTTP_5XX, "b: HTTP 503"))
    assert isinstance(s2, Retry)
    again = retry_event("t", s2.state, "b", "pack p")
    assert again is not None and again.kind is RetryKind.RETRY and again.attempt == 2
    assert again.error_code == "CDN_UNREACHABLE" and again.relative_path is None
    wire = event_to_wire(again)
    assert wire["type"] == "downloadRetry" and wire["payload"]["kind"] == "retry"
    assert wire["payload"]["nextSourceId"] == "b" and wire["payload"]["errorCode"] == "CDN_UNREACHABLE"
    assert event_from_wire(wire) == again
