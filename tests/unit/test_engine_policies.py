"""Engine policies: rate limiting, retry/stall, CDN source health, schedule windows, queue order.

Everything pure is driven by a fake clock; only the asyncio limiter shell uses real time, with
small and tolerant bounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
import time

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.core.queueorder import (
    Decision,
    QueueEntry,
    TaskState,
    move,
    order,
    reorder,
    select_runnable,
)
from engine.core.ratelimit import DEFAULT_MIN_BURST, TokenBucket, default_burst
from engine.core.retry import RetryPolicy, StallDetector
from engine.core.schedule import ALL_DAYS, DownloadSchedule, Window, parse_window
from engine.core.sources import (
    CdnSource,
    FailureKind,
    HealthPolicy,
    SourcePool,
    SourceState,
)
from engine.io.limiter import AsyncRateLimiter

MB = 1_000_000
KIB64 = 64 * 1024


class FakeClock:
    """A settable monotonic clock for the limiter shell."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def drain(bucket: TokenBucket, total: int, now: float, read: int = KIB64) -> float:
    """Consume ``total`` bytes in ``read``-sized pieces, waiting out each delay; return end time."""
    remaining = total
    while remaining > 0:
        n = min(read, remaining)
        now += bucket.reserve(n, now)
        remaining -= n
    return now


# --------------------------------------------------------------------------------------------
# ratelimit: TokenBucket


def test_default_burst_is_quarter_second_but_at_least_64k() -> None:
    assert default_burst(20 * MB) == 5 * MB
    assert default_burst(1000) == DEFAULT_MIN_BURST == KIB64
    assert default_burst(None) == KIB64
    assert TokenBucket(20 * MB).burst == 5 * MB
    assert TokenBucket(20 * MB, burst=123.0).burst == 123.0


def test_100mb_in_64k_reads_at_20mbs_takes_5s() -> None:
    bucket = TokenBucket(20 * MB, now=0.0)
    end = drain(bucket, 100 * MB, now=0.0)
    assert end == pytest.approx(5.0, rel=0.02)


def test_100mb_at_20mbs_with_read_time_and_binary_units() -> None:
    mib = 1024 * 1024
    bucket = TokenBucket(20 * mib, now=50.0)
    now, remaining = 50.0, 100 * mib
    while remaining > 0:
        n = min(KIB64, remaining)
        now += n / (1000 * mib)  # the read itself on a 1000 MiB/s link
        now += bucket.reserve(n, now)
        remaining -= n
    assert now - 50.0 == pytest.approx(5.0, rel=0.02)


def test_live_rate_change_midway() -> None:
    bucket = TokenBucket(20 * MB, now=0.0)
    half = drain(bucket, 50 * MB, now=0.0)
    assert half == pytest.approx(2.5, rel=0.02)
    bucket.set_rate(10 * MB, half)
    end = drain(bucket, 50 * MB, now=half)
    assert end == pytest.approx(7.5, rel=0.02)
    assert bucket.rate == 10 * MB
    assert bucket.burst == default_burst(10 * MB)


def test_rate_change_keeps_debt_and_reprices_waiting_ticket() -> None:
    bucket = TokenBucket(1 * MB, now=0.0)
    ticket = bucket.reserve_ticket(10 * MB, 0.0)  # far above burst: goes into debt
    assert bucket.delay_for(ticket, 0.0) == pytest.approx(10.0)
    assert bucket.available(0.0) == pytest.approx(-10 * MB)
    # 5 s in, half the debt is repaid; doubling the rate halves the rest of the wait
    bucket.set_rate(2 * MB, 5.0)
    assert bucket.delay_for(ticket, 5.0) == pytest.approx(2.5)
    assert bucket.delay_for(ticket, 7.5) == 0.0


def test_rate_change_keeps_accrued_credit_at_old_rate() -> None:
    bucket = TokenBucket(1 * MB, burst=10 * MB, now=0.0)
    bucket.set_rate(4 * MB, 2.0)  # 2 s at 1 MB/s were earned before the change
    assert bucket.available(2.0) == pytest.approx(2 * MB)
    assert bucket.available(3.0) == pytest.approx(6 * MB)


def test_lowering_burst_with_rate_clamps_saved_credit() -> None:
    bucket = TokenBucket(40 * MB, now=0.0)
    assert bucket.available(10.0) == pytest.approx(10 * MB)
    bucket.set_rate(1 * MB, 10.0)
    assert bucket.available(10.0) == pytest.approx(default_burst(1 * MB))


def test_switching_to_unlimited_forgives_debt_and_back_starts_empty() -> None:
    bucket = TokenBucket(1 * MB, now=0.0)
    ticket = bucket.reserve_ticket(5 * MB, 0.0)
    bucket.set_rate(None, 1.0)
    assert bucket.delay_for(ticket, 1.0) == 0.0
    assert bucket.reserve(10**12, 1.0) == 0.0
    assert bucket.available(1.0) == math.inf
    bucket.set_rate(1 * MB, 2.0)
    assert bucket.available(2.0) == 0.0
    assert bucket.reserve(MB, 2.0) == pytest.approx(1.0)


def test_unlimited_is_zero_delay() -> None:
    bucket = TokenBucket(None)
    now = 0.0
    for n in (0, 1, KIB64, 10**9, 10**15):
        assert bucket.reserve(n, now) == 0.0
    assert bucket.available(now) == math.inf
    assert drain(bucket, 100 * MB, now=0.0) == 0.0


def test_read_larger_than_burst_goes_into_debt_instead_of_deadlocking() -> None:
    bucket = TokenBucket(1 * MB, now=0.0)
    assert bucket.burst == 250_000
    assert bucket.reserve(4 * MB, 0.0) == pytest.approx(4.0)
    # the next reader queues behind the debt
    assert bucket.reserve(MB, 0.0) == pytest.approx(5.0)
    assert bucket.reserve(MB, 5.0) == pytest.approx(1.0)


def test_idle_credit_allows_a_burst_then_limits() -> None:
    bucket = TokenBucket(1 * MB, now=0.0)
    assert bucket.available(100.0) == pytest.approx(250_000)  # capped at burst
    assert bucket.reserve(250_000, 100.0) == 0.0
    assert bucket.reserve(100_000, 100.0) == pytest.approx(0.1)


def test_zero_bytes_and_backwards_clock() -> None:
    bucket = TokenBucket(1 * MB, burst=2 * MB, now=10.0)
    assert bucket.reserve(0, 10.0) == 0.0
    assert bucket.reserve(MB, 11.0) == pytest.approx(0.0)
    # a clock stepping back adds no credit and does not raise
    assert bucket.reserve(MB, 5.0) == pytest.approx(1.0)
    assert bucket.available(11.0) == pytest.approx(-MB)


@pytest.mark.parametrize("rate", [0, -1.0, math.inf, math.nan])
def test_bad_rate_rejected(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate)
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(1.0).set_rate(rate, 0.0)


def test_bad_burst_and_negative_reservation_rejected() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(1.0, burst=0)
    with pytest.raises(ValueError, match="negative"):
        TokenBucket(1.0).reserve(-1, 0.0)


@settings(max_examples=150, deadline=None)
@given(
    rate=st.floats(min_value=1_000, max_value=1e9),
    burst=st.none() | st.floats(min_value=1, max_value=1e8),
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=2.0), st.integers(0, 5_000_000)),
        min_size=1,
        max_size=60,
    ),
)
def test_granted_bytes_never_exceed_rate_times_time(
    rate: float, burst: float | None, steps: list[tuple[float, int]]
) -> None:
    """Whatever the arrival pattern, bytes released by time t never exceed rate * t."""
    start = 3.0
    bucket = TokenBucket(rate, burst=burst, now=start)
    now, granted, last_grant = start, 0, start
    for gap, n in steps:
        now += gap
        before = bucket.available(now)
        delay = bucket.reserve(n, now)
        assert delay >= 0
        if before >= n:
            assert delay == 0.0  # enough saved credit never waits
        if n == 0:
            assert delay == 0.0  # nothing to wait for, even behind debt
            continue
        grant = now + delay
        assert grant >= last_grant - 1e-9  # readers are released in order
        last_grant = grant
        granted += n
        assert granted <= rate * (grant - start) * (1 + 1e-9) + 1e-3


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(min_value=10_000, max_value=1e9),
    reads=st.lists(st.integers(1, 2_000_000), min_size=1, max_size=50),
)
def test_back_to_back_reads_take_exactly_bytes_over_rate(rate: float, reads: list[int]) -> None:
    bucket = TokenBucket(rate, now=0.0)
    now = 0.0
    for n in reads:
        now += bucket.reserve(n, now)
    assert now == pytest.approx(sum(reads) / rate, rel=1e-9, abs=1e-9)


# --------------------------------------------------------------------------------------------
# ratelimit: AsyncRateLimiter (fake clock for accounting, tiny real waits for the shell)


def simulate_consume(limiter: AsyncRateLimiter, clock: FakeClock, total: int, key: str) -> float:
    start = clock.now
    remaining = total
    while remaining > 0:
        n = min(KIB64, remaining)
        clock.now += limiter.reserve(n, key)
        remaining -= n
    return clock.now - start


def test_per_task_limit_below_global_dominates() -> None:
    clock = FakeClock()
    limiter = AsyncRateLimiter(20 * MB, clock=clock)
    limiter.set_task("slow", 5 * MB)
    assert limiter.task_rate("slow") == 5 * MB
    assert simulate_consume(limiter, clock, 10 * MB, "slow") == pytest.approx(2.0, rel=0.02)
    # a task without its own limit only sees the global one (idle credit aside)
    clock.now += 100.0
    took = simulate_consume(limiter, clock, 40 * MB, "other")
    assert took == pytest.approx((40 * MB - default_burst(20 * MB)) / (20 * MB), rel=0.02)


def test_per_task_limit_above_global_does_not_help() -> None:
    clock = FakeClock()
    limiter = AsyncRateLimiter(10 * MB, clock=clock)
    limiter.set_task("fast", 100 * MB)
    assert simulate_consume(limiter, clock, 20 * MB, "fast") == pytest.approx(2.0, rel=0.02)


def test_task_limit_removal_and_none() -> None:
    clock = FakeClock()
    limiter = AsyncRateLimiter(None, clock=clock)
    assert limiter.global_rate is None
    limiter.set_task("t", 1 * MB)
    assert limiter.reserve(2 * MB, "t") == pytest.approx(2.0)
    limiter.set_task("t", None)
    assert limiter.task_rate("t") is None
    assert limiter.reserve(10 * MB, "t") == 0.0
    limiter.remove_task("never-added")  # no error
    limiter.set_global(1 * MB)
    assert limiter.global_rate == 1 * MB
    assert limiter.reserve(MB, None) == pytest.approx(1.0)


async def test_async_consume_unlimited_does_not_wait() -> None:
    limiter = AsyncRateLimiter()
    started = time.monotonic()
    for _ in range(1000):
        await limiter.consume(KIB64)
    assert time.monotonic() - started < 0.5


async def test_async_consume_waits_roughly_the_rate() -> None:
    limiter = AsyncRateLimiter(2 * MB)  # starts empty: 200 kB take 0.1 s
    started = time.monotonic()
    for _ in range(10):
        await limiter.consume(20_000, key="t")
    elapsed = time.monotonic() - started
    assert 0.08 <= elapsed < 0.6


async def test_async_waiter_wakes_when_limit_is_lifted() -> None:
    limiter = AsyncRateLimiter(10_000)  # 1 MB would take 100 s
    waiter = asyncio.create_task(limiter.consume(MB))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    limiter.set_global(None)
    await asyncio.wait_for(waiter, timeout=2.0)


async def test_async_waiter_released_when_task_removed() -> None:
    limiter = AsyncRateLimiter(None)
    limiter.set_task("t", 10_000)
    waiter = asyncio.create_task(limiter.consume(MB, key="t"))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    limiter.remove_task("t")
    await asyncio.wait_for(waiter, timeout=2.0)


async def test_async_cancelled_waiter_is_cleaned_up() -> None:
    limiter = AsyncRateLimiter(10_000)
    waiter = asyncio.create_task(limiter.consume(MB))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not limiter._waiters
    limiter.set_global(None)  # waking with no waiters is harmless


# --------------------------------------------------------------------------------------------
# retry: RetryPolicy


def test_retry_backoff_doubles_and_caps() -> None:
    policy = RetryPolicy(jitter=0.0)
    assert [policy.delay(a, 0.0) for a in range(1, 9)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    )
    assert policy.delay(10**6, 0.5) == 10.0  # huge attempt counts do not overflow


def test_retry_jitter_partial_and_full() -> None:
    partial = RetryPolicy()  # jitter 0.5: keeps at least half
    assert partial.delay(3, 0.0) == pytest.approx(0.8)
    assert partial.delay(3, 0.5) == pytest.approx(0.6)
    assert partial.delay(3, 0.999999) == pytest.approx(0.4, rel=1e-5)
    full = RetryPolicy(jitter=1.0)
    assert full.delay(3, 0.75) == pytest.approx(0.2)


def test_should_retry_counts_attempts() -> None:
    policy = RetryPolicy()
    assert [policy.should_retry(a) for a in range(1, 8)] == [True] * 5 + [False] * 2
    assert not RetryPolicy(max_attempts=1).should_retry(1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"base_delay": -1.0}, "base_delay"),
        ({"base_delay": 5.0, "max_delay": 1.0}, "max_delay"),
        ({"max_delay": math.inf}, "max_delay"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
    ],
)
def test_retry_policy_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_delay_argument_validation() -> None:
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay(0, 0.1)
    with pytest.raises(ValueError, match="rnd"):
        RetryPolicy().delay(1, 1.0)
    with pytest.raises(ValueError, match="rnd"):
        RetryPolicy().delay(1, -0.1)


def test_retry_policy_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().max_attempts = 3  # type: ignore[misc]


@given(
    base=st.floats(min_value=0, max_value=5),
    extra=st.floats(min_value=0, max_value=100),
    jitter=st.floats(min_value=0, max_value=1),
    attempt=st.integers(1, 200),
    rnd=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_retry_delay_bounds(base: float, extra: float, jitter: float, attempt: int, rnd: float) -> None:
    policy = RetryPolicy(base_delay=base, max_delay=base + extra, jitter=jitter)
    ceiling = policy.ceiling(attempt)
    delay = policy.delay(attempt, rnd)
    assert 0 <= delay <= ceiling <= policy.max_delay
    assert delay >= ceiling * (1 - jitter) - 1e-12
    assert policy.ceiling(attempt + 1) >= ceiling  # backoff never shrinks


# --------------------------------------------------------------------------------------------
# retry: StallDetector


def test_stall_needs_a_full_window_since_start() -> None:
    detector = StallDetector(window_s=10.0, now=100.0)
    assert not detector.stalled(105.0)
    assert not detector.stalled(109.99)
    assert detector.stalled(110.0)


def test_stall_counts_from_last_data() -> None:
    detector = StallDetector(window_s=10.0, now=0.0)
    detector.observe(1000, 8.0)
    assert not detector.stalled(12.0)
    assert not detector.stalled(17.9)
    assert detector.stalled(18.0)
    detector.observe(1, 18.5)
    assert not detector.stalled(18.5)


def test_stall_lazy_start_and_reset() -> None:
    detector = StallDetector(window_s=5.0)
    assert not detector.stalled(1000.0)  # first call starts the window
    assert detector.stalled(1005.0)
    detector.reset(1005.0)
    assert not detector.stalled(1009.0)
    assert detector.stalled(1010.0)
    lazy = StallDetector(window_s=5.0)
    lazy.observe(10, 50.0)
    assert not lazy.stalled(54.0)
    assert lazy.stalled(55.0)


def test_stall_detects_trickle_below_min_bytes() -> None:
    detector = StallDetector(window_s=10.0, min_bytes=1000, now=0.0)
    for t in range(30):
        detector.observe(10, float(t))  # 10 B/s: alive, but far too slow
    assert detector.bytes_in_window(29.0) <= 120
    assert detector.stalled(29.0)
    detector.observe(5000, 29.5)
    assert not detector.stalled(29.5)


def test_stall_zero_byte_observation_does_not_count() -> None:
    detector = StallDetector(window_s=1.0, now=0.0)
    detector.observe(0, 0.5)
    assert detector.stalled(1.0)


def test_stall_validation() -> None:
    with pytest.raises(ValueError, match="window_s"):
        StallDetector(window_s=0)
    with pytest.raises(ValueError, match="min_bytes"):
        StallDetector(min_bytes=0)
    with pytest.raises(ValueError, match="nbytes"):
        StallDetector().observe(-1, 0.0)


def test_stall_memory_stays_bounded() -> None:
    detector = StallDetector(window_s=10.0, now=0.0)
    for i in range(200_000):
        detector.observe(KIB64, i * 0.0001)  # 20 s of very fast reads
    assert len(detector._groups) <= 66
    assert not detector.stalled(20.0)


@settings(max_examples=150, deadline=None)
@given(
    window=st.floats(min_value=0.5, max_value=20),
    min_bytes=st.integers(1, 5000),
    events=st.lists(st.tuples(st.floats(min_value=0, max_value=8), st.integers(0, 3000)), max_size=60),
    probe_gap=st.floats(min_value=0, max_value=30),
)
def test_stall_matches_reference(
    window: float, min_bytes: int, events: list[tuple[float, int]], probe_gap: float
) -> None:
    """Exact for min_bytes=1; otherwise never reports a stall the exact model would not."""
    detector = StallDetector(window_s=window, min_bytes=min_bytes, now=0.0)
    now, seen = 0.0, []
    for gap, n in events:
        now += gap
        detector.observe(n, now)
        seen.append((now, n))
    now += probe_gap
    exact = sum(n for t, n in seen if now - t < window)
    slack = sum(n for t, n in seen if now - t < window + window / 64)
    assume(all(abs((now - t) - window) > 1e-9 for t, _ in seen))  # float edge at the boundary
    expected = now >= window and exact < min_bytes
    got = detector.stalled(now)
    if min_bytes == 1:
        assert got == expected
    if got:
        assert expected
    assert exact <= detector.bytes_in_window(now) <= slack


# --------------------------------------------------------------------------------------------
# sources


def src(sid: str, priority: int = 0, expires_at: float = 10_000.0, query: str = "t=1") -> CdnSource:
    return CdnSource(
        id=sid,
        base_url=f"https://{sid}.example/cdn/",
        query=query,
        expires_at=expires_at,
        priority=priority,
    )


def ids(sources: list[CdnSource]) -> list[str]:
    return [s.id for s in sources]


def test_url_quotes_path_keeps_slashes() -> None:
    source = CdnSource("a", "https://a.example/cdn", "md5=x&expires=9", 1.0, 0)
    assert source.url("game/packs/ab.pack") == ("https://a.example/cdn/game/packs/ab.pack?md5=x&expires=9")
    assert source.url("/my game/#1?.pack") == ("https://a.example/cdn/my%20game/%231%3F.pack?md5=x&expires=9")
    assert source.url("игра/файл") == (
        "https://a.example/cdn/%D0%B8%D0%B3%D1%80%D0%B0/%D1%84%D0%B0%D0%B9%D0%BB?md5=x&expires=9"
    )
    bare = dataclasses.replace(source, base_url="https://a.example/cdn/", query="")
    assert bare.url("x/y") == "https://a.example/cdn/x/y"


@pytest.mark.parametrize("rel", ["../secret", "a/../../b", "a/./b"])
def test_url_refuses_dot_segments(rel: str) -> None:
    with pytest.raises(ValueError, match="segments"):
        src("a").url(rel)


def test_ranking_by_priority_then_throughput() -> None:
    pool = SourcePool([src("low", 0), src("hi1", 5), src("hi2", 5)])
    # unmeasured sources of equal priority keep input order
    assert ids(pool.ranked(0.0)) == ["hi1", "hi2", "low"]
    pool.record_success("hi1", 10 * MB, 1.0, 0.0)
    pool.record_success("hi2", 50 * MB, 1.0, 0.0)
    pool.record_success("low", 500 * MB, 1.0, 0.0)
    assert ids(pool.ranked(1.0)) == ["hi2", "hi1", "low"]
    assert pool.pick(1.0).id == "hi2"


def test_unmeasured_source_is_tried_before_measured_one() -> None:
    pool = SourcePool([src("a"), src("b")])
    pool.record_success("a", MB, 1.0, 0.0)
    assert pool.pick(1.0).id == "b"


def test_throughput_is_ewma() -> None:
    pool = SourcePool([src("a")], policy=HealthPolicy(ewma_alpha=0.5))
    pool.record_success("a", 100, 1.0, 0.0)
    assert pool.stats("a", 0.0).throughput == pytest.approx(100)
    pool.record_success("a", 300, 1.0, 1.0)
    assert pool.stats("a", 1.0).throughput == pytest.approx(200)
    pool.record_success("a", 0, 0.0, 2.0)  # no sample, but still a success
    assert pool.stats("a", 2.0).throughput == pytest.approx(200)


def test_recent_failure_ranks_below_healthy_then_fades() -> None:
    pool = SourcePool([src("primary", 10), src("backup", 0)])
    pool.record_failure("primary", FailureKind.HTTP_5XX, 100.0)
    assert pool.state("primary", 100.0) is SourceState.DEGRADED
    assert ids(pool.ranked(100.0)) == ["backup", "primary"]
    # one failure with a 30 s half-life fades below 0.5 after just over 30 s
    assert pool.state("primary", 129.0) is SourceState.DEGRADED
    assert pool.state("primary", 131.0) is SourceState.HEALTHY
    assert ids(pool.ranked(131.0)) == ["primary", "backup"]


def test_corrupt_weighs_more_than_timeout() -> None:
    pool = SourcePool([src("a"), src("b")])
    pool.record_failure("a", FailureKind.CORRUPT, 0.0)
    pool.record_failure("b", FailureKind.TIMEOUT, 0.0)
    assert pool.stats("a", 0.0).failure_score == pytest.approx(2.0)
    assert ids(pool.ranked(0.0)) == ["b", "a"]  # degraded: fewer recent failures first
    assert pool.stats("a", 0.0).last_failure is FailureKind.CORRUPT


def test_three_consecutive_failures_cool_down_exponentially_capped() -> None:
    policy = HealthPolicy(cooldown_base_s=5.0, cooldown_max_s=30.0)
    pool = SourcePool([src("a", 1), src("b", 0)], policy=policy)
    now = 0.0
    for expected in (5.0, 10.0, 20.0, 30.0, 30.0):
        for _ in range(3 if now == 0.0 else 1):
            pool.record_failure("a", FailureKind.RESET, now)
        assert pool.state("a", now) is SourceState.COOLDOWN
        assert pool.stats("a", now).cooldown_until == pytest.approx(now + expected)
        assert ids(pool.ranked(now)) == ["b", "a"]  # last, never dropped
        now += expected  # cooldown over: probation, one more failure cools it again
        assert pool.state("a", now) is not SourceState.COOLDOWN


def test_two_failures_do_not_cool_down_and_success_resets_streak() -> None:
    pool = SourcePool([src("a")])
    pool.record_failure("a", FailureKind.TIMEOUT, 0.0)
    pool.record_failure("a", FailureKind.TIMEOUT, 0.0)
    pool.record_success("a", MB, 1.0, 0.0)
    pool.record_failure("a", FailureKind.TIMEOUT, 0.0)
    assert pool.state("a", 0.0) is SourceState.DEGRADED
    assert pool.stats("a", 0.0).consecutive_failures == 1


def test_failures_during_cooldown_do_not_extend_it_and_success_ends_it() -> None:
    pool = SourcePool([src("a"), src("b")])
    for _ in range(3):
        pool.record_failure("a", FailureKind.STALL, 0.0)
    until = pool.stats("a", 0.0).cooldown_until
    pool.record_failure("a", FailureKind.STALL, 1.0)  # an in-flight request failing late
    assert pool.stats("a", 1.0).cooldown_until == until
    pool.record_success("a", MB, 1.0, 2.0)  # an in-flight request succeeding
    assert pool.state("a", 2.0) is SourceState.DEGRADED


def test_cooled_sources_ordered_by_return_time() -> None:
    pool = SourcePool([src("a", 9), src("b", 0)])
    for _ in range(3):
        pool.record_failure("a", FailureKind.RESET, 0.0)
    for _ in range(3):
        pool.record_failure("b", FailureKind.RESET, 1.0)
    assert ids(pool.ranked(2.0)) == ["a", "b"]
    assert pool.all_failing(2.0)


def test_pick_excludes_and_falls_back() -> None:
    pool = SourcePool([src("a", 3), src("b", 2), src("c", 1)])
    assert pool.pick(0.0).id == "a"
    assert pool.pick(0.0, exclude={"a"}).id == "b"
    assert pool.pick(0.0, exclude=frozenset({"a", "b"})).id == "c"
    assert pool.pick(0.0, exclude={"a", "b", "c"}).id == "a"


def test_replace_tokens_keeps_health() -> None:
    pool = SourcePool([src("a", 1, expires_at=100.0), src("b", 0, expires_at=100.0)])
    pool.record_success("a", 4 * MB, 1.0, 0.0)
    pool.record_failure("b", FailureKind.FORBIDDEN, 50.0)
    assert pool.needs_refresh(45.0)
    assert not pool.needs_refresh(39.0)
    pool.replace_tokens(
        [
            src("a", 1, expires_at=1000.0, query="t=2"),
            src("b", 0, expires_at=1000.0, query="t=2"),
            src("c", 0, expires_at=1000.0, query="t=2"),
        ]
    )
    assert not pool.needs_refresh(50.0)
    assert {s.id: s.query for s in pool.sources} == {"a": "t=2", "b": "t=2", "c": "t=2"}
    assert pool.stats("a", 50.0).throughput == pytest.approx(4 * MB)
    assert pool.stats("b", 50.0).consecutive_failures == 1
    assert pool.state("b", 50.0) is SourceState.DEGRADED
    assert pool.state("c", 50.0) is SourceState.HEALTHY
    assert pool.pick(50.0).url("x") == "https://a.example/cdn/x?t=2"


def test_needs_refresh_margin() -> None:
    pool = SourcePool([src("a", expires_at=1000.0), src("b", expires_at=5000.0)])
    assert not pool.needs_refresh(900.0)
    assert pool.needs_refresh(900.0, margin=100.0)
    assert pool.needs_refresh(950.0)


def test_expired_sources_rank_last() -> None:
    pool = SourcePool([src("old", 10, expires_at=10.0), src("new", 0, expires_at=100.0)])
    assert ids(pool.ranked(5.0)) == ["old", "new"]
    assert pool.state("old", 10.0) is SourceState.EXPIRED
    assert ids(pool.ranked(10.0)) == ["new", "old"]
    assert not pool.all_failing(10.0)  # expiry is a refresh problem, not failure


def test_all_failing() -> None:
    pool = SourcePool([src("a"), src("b")])
    assert not pool.all_failing(0.0)
    pool.record_failure("a", FailureKind.TIMEOUT, 0.0)
    assert not pool.all_failing(0.0)
    pool.record_failure("b", FailureKind.HTTP_5XX, 0.0)
    assert pool.all_failing(0.0)
    assert not pool.all_failing(300.0)  # failures faded: worth trying again
    pool.record_success("b", MB, 1.0, 1.0)
    assert not pool.all_failing(1.0)


def test_pool_validation_and_unknown_ids() -> None:
    with pytest.raises(ValueError, match="at least one"):
        SourcePool([])
    with pytest.raises(ValueError, match="duplicate"):
        SourcePool([src("a"), src("a")])
    pool = SourcePool([src("a")])
    with pytest.raises(KeyError, match="zzz"):
        pool.record_failure("zzz", FailureKind.RESET, 0.0)
    with pytest.raises(KeyError, match="zzz"):
        pool.record_success("zzz", 1, 1.0, 0.0)
    with pytest.raises(KeyError, match="zzz"):
        pool.state("zzz", 0.0)
    with pytest.raises(ValueError, match="ewma_alpha"):
        HealthPolicy(ewma_alpha=0.0)
    with pytest.raises(ValueError, match="cooldown_max_s"):
        HealthPolicy(cooldown_base_s=10.0, cooldown_max_s=5.0)


_SOURCE_IDS = ["a", "b", "c", "d"]
_events = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=20),
        st.sampled_from(_SOURCE_IDS),
        st.none() | st.sampled_from(list(FailureKind)),
        st.integers(0, 10 * MB),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(
    priorities=st.lists(st.integers(-2, 2), min_size=4, max_size=4),
    events=_events,
    exclude=st.sets(st.sampled_from(_SOURCE_IDS)),
)
def test_pool_ranking_invariants(
    priorities: list[int],
    events: list[tuple[float, str, FailureKind | None, int]],
    exclude: set[str],
) -> None:
    pool = SourcePool([src(s, p) for s, p in zip(_SOURCE_IDS, priorities, strict=True)])
    now = 0.0
    for gap, sid, failure, nbytes in events:
        now += gap
        if failure is None:
            pool.record_success(sid, nbytes, 0.5, now)
        else:
            pool.record_failure(sid, failure, now)
    ranking = pool.ranked(now)
    assert sorted(ids(ranking)) == _SOURCE_IDS  # a permutation: nothing dropped
    tiers = [["healthy", "degraded", "cooldown", "expired"].index(pool.state(s.id, now)) for s in ranking]
    assert tiers == sorted(tiers)
    healthy = [s for s in ranking if pool.state(s.id, now) is SourceState.HEALTHY]
    assert [s.priority for s in healthy] == sorted((s.priority for s in healthy), reverse=True)
    picked = pool.pick(now, exclude=exclude)
    if exclude != set(_SOURCE_IDS):
        assert picked.id not in exclude
        assert picked == next(s for s in ranking if s.id not in exclude)
    else:
        assert picked == ranking[0]
    if pool.all_failing(now):
        assert all(pool.state(s, now) is not SourceState.HEALTHY for s in _SOURCE_IDS)
    for sid in _SOURCE_IDS:
        stats = pool.stats(sid, now)
        if stats.state is SourceState.COOLDOWN:
            assert stats.cooldown_until - now <= HealthPolicy().cooldown_max_s


# --------------------------------------------------------------------------------------------
# schedule

MON = dt.date(2024, 1, 1)  # a Monday


def at(day_offset: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(MON + dt.timedelta(days=day_offset), dt.time(hour, minute))


def test_empty_schedule_always_allowed() -> None:
    schedule = DownloadSchedule()
    moment = at(2, 13, 37)
    assert schedule.allowed(moment)
    assert schedule.next_allowed(moment) == moment
    assert schedule.allowed_until(moment) is None


def test_overnight_window_belongs_to_start_day() -> None:
    schedule = DownloadSchedule((parse_window("fri 22:00-06:00"),))
    assert schedule.allowed(at(4, 22, 0))  # Friday 22:00
    assert schedule.allowed(at(5, 5, 59))  # Saturday early morning
    assert not schedule.allowed(at(5, 6, 0))  # end is exclusive
    assert not schedule.allowed(at(4, 5, 0))  # Friday morning belongs to Thursday's night
    assert not schedule.allowed(at(5, 22, 30))  # Saturday night is not listed
    assert schedule.allowed_until(at(4, 23, 0)) == at(5, 6, 0)


def test_daily_overnight_window() -> None:
    schedule = DownloadSchedule((parse_window("22:00-06:00"),))
    assert schedule.allowed(at(0, 0, 30))  # Sunday's night spills into Monday
    assert schedule.allowed(at(0, 23, 0))
    assert not schedule.allowed(at(0, 12, 0))


def test_next_allowed() -> None:
    schedule = DownloadSchedule((parse_window("mon,wed 01:00-05:00"),))
    inside = at(0, 2, 0)
    assert schedule.next_allowed(inside) == inside
    assert schedule.next_allowed(at(0, 0, 30)) == at(0, 1, 0)
    assert schedule.next_allowed(at(0, 5, 0)) == at(2, 1, 0)
    assert schedule.next_allowed(at(2, 6, 0)) == at(7, 1, 0)  # a week minus a bit later


def test_full_day_windows_and_merging() -> None:
    week = DownloadSchedule((Window(dt.time(0), dt.time(0)),))
    assert week.allowed(at(3, 12))
    assert week.allowed_until(at(3, 12)) is None  # never ends
    back_to_back = DownloadSchedule(
        (parse_window("01:00-03:00"), parse_window("03:00-04:00"), parse_window("02:00-03:30"))
    )
    assert back_to_back.allowed_until(at(1, 1, 30)) == at(1, 4, 0)
    assert back_to_back.allowed_until(at(1, 5, 0)) is None


def test_timezone_aware_datetimes_use_wall_clock() -> None:
    tz = dt.timezone(dt.timedelta(hours=3))
    schedule = DownloadSchedule((parse_window("01:00-05:00"),))
    moment = dt.datetime(2024, 1, 1, 0, 30, tzinfo=tz)
    assert not schedule.allowed(moment)
    assert schedule.next_allowed(moment) == dt.datetime(2024, 1, 1, 1, 0, tzinfo=tz)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("22:00-06:00", Window(dt.time(22), dt.time(6))),
        ("mon,tue 01:00-05:00", Window(dt.time(1), dt.time(5), frozenset({0, 1}))),
        ("  Mon, TUE  1:00 - 5:00 ", Window(dt.time(1), dt.time(5), frozenset({0, 1}))),
        ("mon-fri 09:00-17:30", Window(dt.time(9), dt.time(17, 30), frozenset(range(5)))),
        ("fri-mon 00:00-24:00", Window(dt.time(0), dt.time(0), frozenset({4, 5, 6, 0}))),
        ("saturday,sunday 10:00:30-11:00", Window(dt.time(10, 0, 30), dt.time(11), frozenset({5, 6}))),
        ("22:00-24:00", Window(dt.time(22), dt.time(0))),
    ],
)
def test_parse_window(text: str, expected: Window) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "missing time range"),
        ("mon", "missing time range"),
        ("mnd 01:00-05:00", "unknown day 'mnd'"),
        ("mon,,tue 01:00-05:00", "empty day name"),
        ("mon-xyz 01:00-05:00", "unknown day 'xyz'"),
        ("01:00", "must be 'HH:MM-HH:MM'"),
        ("01:00-02:00-03:00", "must be 'HH:MM-HH:MM'"),
        ("25:00-06:00", "time '25:00' out of range"),
        ("01:60-06:00", "time '01:60' out of range"),
        ("24:00-06:00", "time '24:00' out of range"),
        ("01:00-24:30", "time '24:30' out of range"),
        ("1-5", "bad time '1'"),
        ("01:0-05:00", "bad time '01:0'"),
        ("001:00-05:00", "bad time '001:00'"),
        ("01:00-5pm", "bad time '5pm'"),
        ("01:00-", "bad time ''"),
    ],
)
def test_parse_window_errors_name_the_bad_part(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_window(text)


def test_window_validation() -> None:
    with pytest.raises(ValueError, match="at least one day"):
        Window(dt.time(1), dt.time(2), frozenset())
    with pytest.raises(ValueError, match=r"0\.\.6"):
        Window(dt.time(1), dt.time(2), frozenset({7}))
    with pytest.raises(ValueError, match="tzinfo"):
        Window(dt.time(1, tzinfo=dt.UTC), dt.time(2))
    with pytest.raises(ValueError, match="whole seconds"):
        Window(dt.time(1, 0, 0, 5), dt.time(2))


def test_to_text_canonical() -> None:
    assert parse_window("Tue,mon 1:00-5:00").to_text() == "mon,tue 01:00-05:00"
    assert parse_window("22:00-24:00").to_text() == "22:00-00:00"
    assert Window(dt.time(0), dt.time(0), ALL_DAYS).to_text() == "00:00-00:00"


_times = st.builds(dt.time, st.integers(0, 23), st.integers(0, 59), st.sampled_from([0, 0, 30]))
_minute_times = st.builds(dt.time, st.integers(0, 23), st.integers(0, 59))
_days = st.frozensets(st.integers(0, 6), min_size=1)


@given(start=_times, end=_times, days=_days)
def test_window_text_round_trip(start: dt.time, end: dt.time, days: frozenset[int]) -> None:
    window = Window(start, end, days)
    assert parse_window(window.to_text()) == window


def _reference_minutes(windows: list[Window]) -> set[int]:
    """Allowed minutes of the week, computed independently by marking each window's minutes."""
    allowed: set[int] = set()
    for w in windows:
        start = w.start.hour * 60 + w.start.minute
        end = w.end.hour * 60 + w.end.minute
        length = (end - start) % 1440 or 1440
        for day in w.days:
            base = day * 1440 + start
            allowed.update((base + k) % 10080 for k in range(length))
    return allowed


@settings(max_examples=60, deadline=None)
@given(
    windows=st.lists(st.builds(Window, _minute_times, _minute_times, _days), max_size=3),
    probes=st.lists(st.integers(0, 3 * 10080 - 1), min_size=1, max_size=20),
)
def test_schedule_matches_minute_reference(windows: list[Window], probes: list[int]) -> None:
    schedule = DownloadSchedule(tuple(windows))
    reference = _reference_minutes(windows) if windows else set(range(10080))
    for minute in probes:
        moment = dt.datetime.combine(MON, dt.time()) + dt.timedelta(minutes=minute)
        assert schedule.allowed(moment) == (minute % 10080 in reference)
        nxt = schedule.next_allowed(moment)
        assert nxt is not None
        wait = next(k for k in range(10081) if (minute + k) % 10080 in reference)
        assert nxt == moment + dt.timedelta(minutes=wait)
        until = schedule.allowed_until(moment)
        if until is not None:
            run = next(k for k in range(10081) if (minute + k) % 10080 not in reference)
            assert until == moment + dt.timedelta(minutes=run)
        elif windows and minute % 10080 in reference:
            assert len(reference) == 10080


# --------------------------------------------------------------------------------------------
# queueorder


def entry(
    tid: str,
    priority: int = 0,
    position: int = 0,
    state: TaskState = TaskState.QUEUED,
    created_at: float = 0.0,
    user_paused: bool = False,
) -> QueueEntry:
    return QueueEntry(tid, priority, position, state, created_at, user_paused)


Q, DL, PREP, P = TaskState.QUEUED, TaskState.DOWNLOADING, TaskState.PREPARING, TaskState.PAUSED


def test_task_state_values_match_seed() -> None:
    assert [s.value for s in TaskState] == [
        "queued",
        "preparing",
        "downloading",
        "paused",
        "verifying",
        "completed",
        "error",
        "cancelled",
    ]
    assert TaskState("downloading") is TaskState.DOWNLOADING


def test_order_priority_position_created() -> None:
    entries = [
        entry("c", 0, 1, created_at=1.0),
        entry("b", 0, 1, created_at=0.5),
        entry("a", 1, 9),
        entry("d", 0, 0, created_at=9.0),
    ]
    assert [e.task_id for e in order(entries)] == ["a", "d", "b", "c"]


def test_fills_free_slots_in_queue_order() -> None:
    entries = [entry("a", 0, 0), entry("b", 0, 1), entry("c", 1, 2), entry("d", 0, 3)]
    assert select_runnable(entries, 2) == Decision(start=("c", "a"), preempt=())
    assert select_runnable(entries, 10) == Decision(start=("c", "a", "b", "d"))


def test_seed_14_4_high_priority_patch_preempts_normal_game() -> None:
    # Game A (normal) is downloading, game C (normal) waits, patch B (high) arrives; limit 1.
    entries = [
        entry("A", 0, 0, DL, created_at=1.0),
        entry("B", 1, 2, Q, created_at=3.0),
        entry("C", 0, 1, Q, created_at=2.0),
    ]
    assert select_runnable(entries, 1) == Decision(start=("B",), preempt=("A",))
    # limit 2 with A and C running: the weaker one (C, later in the queue) is bumped
    entries[2] = entry("C", 0, 1, DL, created_at=2.0)
    assert select_runnable(entries, 2) == Decision(start=("B",), preempt=("C",))


def test_equal_priority_never_preempts_running() -> None:
    entries = [entry("run", 0, 5, DL, created_at=5.0), entry("moved_up", 0, 0, Q, created_at=9.0)]
    assert select_runnable(entries, 1) == Decision()


def test_lower_priority_never_preempts() -> None:
    entries = [entry("run", 0, 1, PREP), entry("low", -1, 0, Q)]
    assert select_runnable(entries, 1) == Decision()


def test_auto_paused_task_resumes_user_paused_does_not() -> None:
    entries = [
        entry("auto", 0, 0, P),
        entry("user", 5, 1, P, user_paused=True),
        entry("done", 9, 2, TaskState.COMPLETED),
        entry("err", 9, 3, TaskState.ERROR),
        entry("gone", 9, 4, TaskState.CANCELLED),
        entry("verify", 9, 5, TaskState.VERIFYING),
        entry("queued_but_user_paused", 9, 6, Q, user_paused=True),
    ]
    assert select_runnable(entries, 3) == Decision(start=("auto",))


def test_lowered_limit_preempts_weakest_running() -> None:
    entries = [entry("a", 0, 0, DL), entry("b", 0, 1, DL), entry("c", 2, 2, DL)]
    assert select_runnable(entries, 1) == Decision(preempt=("a", "b"))
    assert select_runnable(entries, 0) == Decision(preempt=("c", "a", "b"))


def test_multiple_preemptions_pick_weakest_first() -> None:
    entries = [
        entry("r0", 0, 0, DL),
        entry("r1", 1, 1, DL),
        entry("r2", 2, 2, DL),
        entry("q5", 5, 3, Q),
        entry("q1", 1, 4, Q),
    ]
    # q5 outranks r0; q1 does not strictly outrank r1, so it waits
    assert select_runnable(entries, 3) == Decision(start=("q5",), preempt=("r0",))


def test_select_runnable_validation() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        select_runnable([], -1)
    with pytest.raises(ValueError, match="duplicate"):
        select_runnable([entry("a"), entry("a")], 1)
    assert select_runnable([], 3) == Decision()


def test_move_renumbers() -> None:
    entries = [entry("a", position=10), entry("b", position=20), entry("c", position=30)]
    moved = move(entries, "c", 0)
    assert [(e.task_id, e.position) for e in moved] == [("c", 0), ("a", 1), ("b", 2)]
    assert [e.task_id for e in move(entries, "a", 99)] == ["b", "c", "a"]
    assert [e.task_id for e in move(entries, "a", 1)] == ["b", "a", "c"]
    with pytest.raises(KeyError, match="'zz'"):
        move(entries, "zz", 0)
    with pytest.raises(ValueError, match="new_position"):
        move(entries, "a", -1)


def test_reorder_listed_first_rest_keep_order() -> None:
    entries = [entry(t, position=i) for i, t in enumerate("abcde")]
    result = reorder(entries, ["d", "b"])
    assert [(e.task_id, e.position) for e in result] == [
        ("d", 0),
        ("b", 1),
        ("a", 2),
        ("c", 3),
        ("e", 4),
    ]
    assert reorder(entries, []) == entries
    with pytest.raises(KeyError, match=r"unknown task id.*'x'.*'y'"):
        reorder(entries, ["a", "x", "y"])
    with pytest.raises(ValueError, match=r"more than once.*a"):
        reorder(entries, ["a", "b", "a"])
    with pytest.raises(TypeError, match="single string"):
        reorder(entries, "ab")


def test_queue_entries_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry("a").priority = 3  # type: ignore[misc]


_states = st.sampled_from(list(TaskState))


@st.composite
def queues(draw: st.DrawFn) -> list[QueueEntry]:
    n = draw(st.integers(0, 12))
    positions = draw(st.permutations(range(n)))
    return [
        QueueEntry(
            task_id=f"t{i}",
            priority=draw(st.integers(-1, 2)),
            position=positions[i],
            state=draw(_states),
            created_at=draw(st.integers(0, 5)),
            user_paused=draw(st.booleans()),
        )
        for i in range(n)
    ]


@settings(max_examples=200, deadline=None)
@given(entries=queues(), limit=st.integers(0, 5))
def test_select_runnable_invariants(entries: list[QueueEntry], limit: int) -> None:
    decision = select_runnable(entries, limit)
    by_id = {e.task_id: e for e in entries}
    running = {e.task_id for e in entries if e.state in (PREP, DL) and not e.user_paused}
    waiting = {e.task_id for e in entries if e.state in (Q, P) and not e.user_paused}
    start, preempt = set(decision.start), set(decision.preempt)
    assert len(start) == len(decision.start) and len(preempt) == len(decision.preempt)
    assert start <= waiting and preempt <= running
    final = (running - preempt) | start
    # work-conserving and within the limit
    assert len(final) == min(limit, len(running) + len(waiting))
    # nobody left out outranks anybody running
    left_out = (running | waiting) - final
    if final and left_out:
        assert min(by_id[t].priority for t in final) >= max(by_id[t].priority for t in left_out)
    # stability: without a lowered limit, preemption needs a strictly higher-priority starter
    if len(running) <= limit:
        assert len(preempt) <= len(start)
        for p in preempt:
            assert any(by_id[s].priority > by_id[p].priority for s in start)
    # outputs are in queue order
    assert list(decision.start) == [e.task_id for e in order(by_id[t] for t in start)]


@given(entries=queues(), data=st.data())
def test_move_and_reorder_are_permutations(entries: list[QueueEntry], data: st.DataObject) -> None:
    assume(entries)
    ids_before = [e.task_id for e in sorted(entries, key=lambda e: e.position)]
    target = data.draw(st.sampled_from(ids_before))
    new_pos = data.draw(st.integers(0, len(entries) + 2))
    moved = move(entries, target, new_pos)
    assert [e.position for e in moved] == list(range(len(entries)))
    assert moved[min(new_pos, len(entries) - 1)].task_id == target
    assert [e.task_id for e in moved if e.task_id != target] == [t for t in ids_before if t != target]
    listed = data.draw(st.permutations(ids_before).map(lambda p: p[: len(p) // 2]))
    result = reorder(entries, listed)
    assert [e.position for e in result] == list(range(len(entries)))
    assert [e.task_id for e in result][: len(listed)] == list(listed)
    assert [e.task_id for e in result][len(listed) :] == [t for t in ids_before if t not in listed]
    unchanged = {e.task_id: e for e in entries}
    for e in result:  # only positions change
        assert dataclasses.replace(e, position=0) == dataclasses.replace(unchanged[e.task_id], position=0)
