"""Fetch decisions as data (sans-I/O): what to do after a request to a CDN source failed.

Event in: a failure (which source, what kind, whether the bytes lay past the end of the file,
an error code when the bytes arrived but failed a check). Action out: retry elsewhere after a
capped, jittered delay — refreshing the signed tokens first after a 403 — or give up with the
final error. One rule set for pack ranges (engine/io/download.py) and small documents (manifests,
signatures, delta indexes, patches: engine/jobs/install.py ``fetch_small``); the async shells only
carry the actions out.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.errors import ErrorCode
from engine.core.retry import RetryPolicy
from engine.core.sources import FailureKind


@dataclass(frozen=True, slots=True)
class Failure:
    source_id: str
    kind: FailureKind
    detail: str
    out_of_range: bool = False  # HTTP 416: the source says these bytes do not exist
    code: ErrorCode | None = None  # the bytes arrived but failed a check with this error code
    item: str | None = None


@dataclass(frozen=True, slots=True)
class FetchState:
    """One unit of work's history: tries made, sources to avoid next, the last failure."""

    attempt: int = 0
    exclude: frozenset[str] = frozenset()
    out_of_range: frozenset[str] = frozenset()
    last: Failure | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    state: FetchState
    delay_s: float
    refresh_tokens: bool


@dataclass(frozen=True, slots=True)
class GiveUp:
    code: ErrorCode
    message: str
    item: str | None = None


def after_failure(state: FetchState, failure: Failure, sources: frozenset[str],
                  policy: RetryPolicy, rnd: float, what: str) -> Retry | GiveUp:
    """The next step after ``failure``; ``sources`` are every source's id, ``rnd`` a uniform draw
    in [0, 1) for the jitter, ``what`` names the bytes in messages."""
    attempt = state.attempt + 1
    out_of_range = state.out_of_range | ({failure.source_id} if failure.out_of_range else set())
    if out_of_range >= sources:
        # every edge says the bytes do not exist: the manifest is wrong, not the network
        return GiveUp(ErrorCode.MANIFEST_INVALID, f"{what} lies past the end of the file on every "
                      "source (HTTP 416)", failure.item)
    exclude = state.exclude | {failure.source_id}
    if exclude >= sources:
        exclude = frozenset()  # every edge tried once: start over by health
    nxt = FetchState(attempt, exclude, frozenset(out_of_range), failure)
    if not policy.should_retry(attempt):
        return final_error(nxt, what)
    return Retry(nxt, policy.delay(attempt, rnd), failure.kind is FailureKind.FORBIDDEN)


def final_error(state: FetchState, what: str) -> GiveUp:
    """The error a unit of work ends with: decided by its last failure."""
    last = state.last
    if last is None:
        return GiveUp(ErrorCode.CDN_UNREACHABLE, f"{what}: no source to fetch from")
    tries = f"{state.attempt} tries"
    if last.code is not None:
        return GiveUp(last.code, f"{what}: {last.detail} (from every source, {tries})", last.item)
    if last.kind is FailureKind.CORRUPT:
        return GiveUp(ErrorCode.FILE_HASH_MISMATCH,
                      f"{what}: corrupt data from every source ({last.detail})", last.item)
    if last.kind is FailureKind.FORBIDDEN:
        return GiveUp(ErrorCode.CDN_LINK_GENERATION_FAILED,
                      f"{what}: the CDN refused fresh tokens ({last.detail})", last.item)
    return GiveUp(ErrorCode.CDN_UNREACHABLE, f"gave up on {what} after {tries}: {last.detail}", last.item)
