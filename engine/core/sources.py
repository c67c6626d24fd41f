"""CDN sources: signed URL building, health tracking and ranking for failover.

Pure bookkeeping: fetchers report each request's outcome with the time, and ask for the best
source. Failures fade with a half-life so a brief blip does not banish a CDN forever, and a
source that keeps failing is cooled down for an exponentially growing (capped) time, like a
circuit breaker. Sources are never dropped from the ranking: when everything is bad, the least
bad one is still offered so the download can keep trying.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote

__all__ = [
    "CdnSource",
    "FailureKind",
    "HealthPolicy",
    "SourcePool",
    "SourceState",
    "SourceStats",
]


class FailureKind(StrEnum):
    """Why a request to a source failed (seed error classes, plus stall/corruption)."""

    HTTP_5XX = "http_5xx"
    RESET = "reset"
    TIMEOUT = "timeout"
    STALL = "stall"
    CORRUPT = "corrupt"
    FORBIDDEN = "forbidden"


class SourceState(StrEnum):
    """Ranking tier of a source, best first."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"  # recent failures that have not faded yet
    COOLDOWN = "cooldown"  # too many consecutive failures; rested until a deadline
    EXPIRED = "expired"  # signed URL no longer valid; needs a token refresh


_TIER = {
    SourceState.HEALTHY: 0,
    SourceState.DEGRADED: 1,
    SourceState.COOLDOWN: 2,
    SourceState.EXPIRED: 3,
}


@dataclass(frozen=True)
class CdnSource:
    """One CDN edge with its signed query. Higher ``priority`` is preferred (as in the seed)."""

    id: str
    base_url: str
    query: str
    expires_at: float
    priority: int

    def url(self, rel: str) -> str:
        """Full URL for a store-relative path; the path is percent-quoted, "/" kept.

        Dot segments are refused: they would step outside the signed path prefix.
        """
        parts = rel.lstrip("/").split("/")
        if any(part in (".", "..") for part in parts):
            raise ValueError(f"relative path must not contain '.' or '..' segments: {rel!r}")
        path = self.base_url.rstrip("/") + "/" + quote("/".join(parts), safe="/")
        return f"{path}?{self.query}" if self.query else path


def prefer_source(sources: Iterable[CdnSource], preferred: str | None) -> list[CdnSource]:
    """The player's preferred edge (Settings → download server) ranked above the others; the
    health ranking still moves away from it when it fails. Unknown ids change nothing."""
    listed = list(sources)
    if not preferred or all(s.id != preferred for s in listed):
        return listed
    top = max(s.priority for s in listed) + 1
    return [dataclasses.replace(s, priority=top) if s.id == preferred else s for s in listed]


@dataclass(frozen=True)
class HealthPolicy:
    """Tuning for :class:`SourcePool`; defaults suit a handful of CDNs and chunked downloads."""

    half_life_s: float = 30.0  # how fast failures are forgiven
    degraded_above: float = 0.5  # decayed failure score at/above which a source is degraded
    cooldown_after: int = 3  # consecutive failures that trigger a cooldown
    cooldown_base_s: float = 5.0
    cooldown_max_s: float = 300.0
    ewma_alpha: float = 0.3  # weight of the newest throughput sample

    def __post_init__(self) -> None:
        for name in ("half_life_s", "degraded_above", "cooldown_base_s", "cooldown_max_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value}")
        if self.cooldown_max_s < self.cooldown_base_s:
            raise ValueError("cooldown_max_s must be >= cooldown_base_s")
        if self.cooldown_after < 1:
            raise ValueError(f"cooldown_after must be >= 1, got {self.cooldown_after}")
        if not 0.0 < self.ewma_alpha <= 1.0:
            raise ValueError(f"ewma_alpha must be within (0, 1], got {self.ewma_alpha}")


_FAILURE_WEIGHT = {kind: 1.0 for kind in FailureKind} | {FailureKind.CORRUPT: 2.0}
"""Corrupt data is worse than a refused connection: it cost the whole transfer and may recur."""


@dataclass(frozen=True)
class SourceStats:
    """Read-only snapshot of one source's health, for logs and the UI."""

    source_id: str
    state: SourceState
    failure_score: float
    consecutive_failures: int
    cooldown_until: float
    throughput: float | None  # EWMA bytes/s, None until measured
    last_failure: FailureKind | None


class _Health:
    """Mutable per-source counters; only SourcePool touches them."""

    __slots__ = (
        "consecutive",
        "cooldown_level",
        "cooldown_until",
        "last_failure",
        "score",
        "score_at",
        "throughput",
    )

    def __init__(self) -> None:
        self.score = 0.0
        self.score_at = -math.inf
        self.consecutive = 0
        self.cooldown_level = 0
        self.cooldown_until = -math.inf
        self.throughput: float | None = None
        self.last_failure: FailureKind | None = None


class SourcePool:
    """Health-ranked set of CDN sources (see module docstring for the rules)."""

    def __init__(self, sources: Iterable[CdnSource], policy: HealthPolicy | None = None) -> None:
        self._policy = policy or HealthPolicy()
        self._sources: dict[str, CdnSource] = {}
        self._health: dict[str, _Health] = {}
        for source in sources:
            if source.id in self._sources:
                raise ValueError(f"duplicate CDN source id {source.id!r}")
            self._sources[source.id] = source
            self._health[source.id] = _Health()
        if not self._sources:
            raise ValueError("a SourcePool needs at least one CDN source")

    @property
    def sources(self) -> list[CdnSource]:
        """Sources in their original order (not ranked)."""
        return list(self._sources.values())

    def _get(self, source_id: str) -> _Health:
        try:
            return self._health[source_id]
        except KeyError:
            raise KeyError(f"unknown CDN source id {source_id!r}") from None

    def _score(self, health: _Health, now: float) -> float:
        if health.score == 0.0:
            return 0.0
        elapsed = max(0.0, now - health.score_at)
        return health.score * math.pow(0.5, elapsed / self._policy.half_life_s)

    def record_success(self, source_id: str, nbytes: int, seconds: float, now: float) -> None:
        """A request completed: clear the failure streak and fold in its throughput."""
        health = self._get(source_id)
        health.consecutive = 0
        health.cooldown_until = -math.inf  # it answered, so it is back; its score still lingers
        health.cooldown_level = max(0, health.cooldown_level - 1)
        if nbytes > 0 and seconds > 0:
            sample = nbytes / seconds
            alpha = self._policy.ewma_alpha
            previous = health.throughput
            health.throughput = sample if previous is None else alpha * sample + (1 - alpha) * previous

    def record_failure(self, source_id: str, kind: FailureKind, now: float) -> None:
        """A request failed: raise the decaying score and maybe start a cooldown."""
        health = self._get(source_id)
        health.score = self._score(health, now) + _FAILURE_WEIGHT[kind]
        health.score_at = now
        health.consecutive += 1
        health.last_failure = kind
        policy = self._policy
        # Failures of requests already in flight when the cooldown began do not extend it.
        if health.consecutive >= policy.cooldown_after and now >= health.cooldown_until:
            seconds = min(
                policy.cooldown_max_s,
                policy.cooldown_base_s * 2.0 ** min(health.cooldown_level, 64),
            )
            health.cooldown_until = now + seconds
            health.cooldown_level += 1

    def state(self, source_id: str, now: float) -> SourceState:
        """Which ranking tier the source is in at ``now``."""
        health = self._get(source_id)
        return self._state(self._sources[source_id], health, now)

    def _state(self, source: CdnSource, health: _Health, now: float) -> SourceState:
        if source.expires_at <= now:
            return SourceState.EXPIRED
        if now < health.cooldown_until:
            return SourceState.COOLDOWN
        if self._score(health, now) >= self._policy.degraded_above:
            return SourceState.DEGRADED
        return SourceState.HEALTHY

    def stats(self, source_id: str, now: float) -> SourceStats:
        """Snapshot of one source's health."""
        health = self._get(source_id)
        return SourceStats(
            source_id=source_id,
            state=self._state(self._sources[source_id], health, now),
            failure_score=self._score(health, now),
            consecutive_failures=health.consecutive,
            cooldown_until=health.cooldown_until,
            throughput=health.throughput,
            last_failure=health.last_failure,
        )

    def ranked(self, now: float) -> list[CdnSource]:
        """All sources, best first.

        Healthy by priority then measured throughput (unmeasured counts as fastest, so each
        source gets tried once); degraded by fewest recent failures; cooling down by soonest
        return; expired last. Ties keep the original order.
        """

        def key(source: CdnSource) -> tuple[float, ...]:
            health = self._health[source.id]
            state = self._state(source, health, now)
            speed = math.inf if health.throughput is None else health.throughput
            tier = float(_TIER[state])
            if state is SourceState.HEALTHY:
                return (tier, -source.priority, -speed)
            if state is SourceState.DEGRADED:
                return (tier, self._score(health, now), -source.priority, -speed)
            if state is SourceState.COOLDOWN:
                return (tier, health.cooldown_until, -source.priority)
            return (tier, -source.expires_at, -source.priority)

        return sorted(self._sources.values(), key=key)

    def pick(self, now: float, exclude: AbstractSet[str] = frozenset()) -> CdnSource:
        """The best source not in ``exclude`` (e.g. ones that already failed this chunk).

        Falls back to the best overall when every source is excluded, so a retry always has
        somewhere to go.
        """
        ranking = self.ranked(now)
        for source in ranking:
            if source.id not in exclude:
                return source
        return ranking[0]

    def replace_tokens(self, sources: Iterable[CdnSource]) -> None:
        """Install freshly signed sources by id, keeping health stats.

        Known ids get the new URL, query, expiry and priority; new ids are added; sources absent
        from the refresh are left as they were.
        """
        for source in sources:
            if source.id not in self._sources:
                self._health[source.id] = _Health()
            self._sources[source.id] = source

    def needs_refresh(self, now: float, margin: float = 60.0) -> bool:
        """True when any source's signed URL expires within ``margin`` seconds."""
        return any(source.expires_at - now <= margin for source in self._sources.values())

    def all_failing(self, now: float) -> bool:
        """True when no source looks usable: each is cooling down or failed last, recently.

        Expiry is not failure (see :meth:`needs_refresh`). Failures fade, so this turns false on
        its own after a quiet spell and the caller can try again.
        """
        for source in self._sources.values():
            health = self._health[source.id]
            if now < health.cooldown_until:
                continue
            recent = self._score(health, now) >= self._policy.degraded_above
            if not (health.consecutive > 0 and recent):
                return False
        return True
