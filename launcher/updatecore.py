"""Self-update rules, pure: which launcher build to run, what to stage, how a trial ends.

The I/O shell (launcher/selfupdate.py) reads the facts (the state file, the bundles on disk, the
trial child's marker and exit), asks these functions, and carries out the answer. Nothing here
touches a file or a process, so every rule is tested without either (tests/packaging).

An installed launcher is a folder ROOT holding ``versions/<v>/`` (complete bundles, one per
version), ``channels/<channel>/`` (the engine's installs of the launcher product of each channel,
never run) and ``selfupdate.json`` (``UpdateState``). A verified build is snapshotted from the
channel's install to ``versions/<v>`` and becomes ``pending``; the next start runs it as a
``trial`` under the old build, which waits for the new one to clear its start marker. Cleared:
the new build is ``current``. Exited, timed out, or the supervisor itself died meanwhile: the
version is ``rejected`` (never tried again) and the old build goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

CHANNELS = ("stable", "beta")
DEFAULT_CHANNEL = "stable"
PRODUCT_PREFIX = "game-launcher-"
TRIAL_TIMEOUT_S = 30.0  # a healthy build shows its window in ~1 s here; 30 s covers a slow disk
KEEP_REJECTED = 16  # remembered versions a channel never offers again


class UpdateErrorCode(StrEnum):
    NOT_MANAGED = "SELFUPDATE_NOT_MANAGED"  # not running from an installed bundle folder
    BAD_CHANNEL = "SELFUPDATE_BAD_CHANNEL"
    ENGINE_FAILED = "SELFUPDATE_ENGINE_FAILED"  # the engine refused or failed (its code is kept)
    NOT_VERIFIED = "SELFUPDATE_NOT_VERIFIED"  # the engine's verify found the install damaged
    SNAPSHOT_CHANGED = "SELFUPDATE_SNAPSHOT_CHANGED"  # the install changed while it was copied
    BUNDLE_INVALID = "SELFUPDATE_BUNDLE_INVALID"  # no launcher executable in the build
    LOCKED = "SELFUPDATE_LOCKED"  # another launcher process is staging or switching
    STATE_INVALID = "SELFUPDATE_STATE_INVALID"


class SelfUpdateError(Exception):
    def __init__(self, code: UpdateErrorCode, message: str, engine_code: str | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.engine_code = engine_code  # the engine's errorCode (e.g. MANIFEST_SIGNATURE_INVALID)


def product_for(channel: str) -> str:
    """The launcher bundle of a channel is a product of the store like any game."""
    if channel not in CHANNELS:
        raise SelfUpdateError(UpdateErrorCode.BAD_CHANNEL,
                              f"unknown channel {channel!r}; one of {', '.join(CHANNELS)}")
    return PRODUCT_PREFIX + channel


_VERSION = re.compile(r"^(\d+(?:\.\d+)*)(?:(a|b|rc)(\d+))?(?:\+.*)?$")
_PRE_RANK = {"a": 0, "b": 1, "rc": 2, None: 3}


def version_key(text: str) -> tuple[tuple[int, ...], int, int]:
    """An order for PEP 440-style versions (1.2, 1.2.0, 1.3.0b1, 1.3.0rc2); others sort first."""
    m = _VERSION.match(text)
    if m is None:
        return ((-1,), 0, 0)
    release = tuple(int(x) for x in m.group(1).split("."))
    while len(release) > 1 and release[-1] == 0:  # 1.2 == 1.2.0
        release = release[:-1]
    return (release, _PRE_RANK[m.group(2)], int(m.group(3) or 0))


@dataclass(frozen=True)
class UpdateState:
    channel: str = DEFAULT_CHANNEL  # the player's choice (Settings)
    current: str | None = None  # the build started by default
    current_channel: str | None = None  # where ``current`` came from (None: the installer)
    previous: str | None = None  # the build before it, kept on disk
    pending: str | None = None  # staged and verified, tried on the next start
    pending_channel: str | None = None
    trial: str | None = None  # written before the trial starts: a crash mid-trial rejects it
    rejected: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"channel": self.channel, "current": self.current,
                "currentChannel": self.current_channel, "previous": self.previous,
                "pending": self.pending, "pendingChannel": self.pending_channel,
                "trial": self.trial, "rejected": list(self.rejected)}

    @classmethod
    def from_json(cls, data: Any) -> UpdateState:
        if not isinstance(data, dict):
            raise SelfUpdateError(UpdateErrorCode.STATE_INVALID, "the state is not an object")
        texts = ("current", "currentChannel", "previous", "pending", "pendingChannel", "trial")
        for key in texts:
            if data.get(key) is not None and not isinstance(data[key], str):
                raise SelfUpdateError(UpdateErrorCode.STATE_INVALID, f"{key} is not text")
        channel = data.get("channel", DEFAULT_CHANNEL)
        if channel not in CHANNELS:
            channel = DEFAULT_CHANNEL  # a channel this build does not know: back to stable
        rejected = data.get("rejected", [])
        if not isinstance(rejected, list) or not all(isinstance(r, str) for r in rejected):
            raise SelfUpdateError(UpdateErrorCode.STATE_INVALID, "rejected is not a text list")
        return cls(channel=channel, current=data.get("current"),
                   current_channel=data.get("currentChannel"), previous=data.get("previous"),
                   pending=data.get("pending"), pending_channel=data.get("pendingChannel"),
                   trial=data.get("trial"), rejected=tuple(rejected))


# -- staging: is this verified build worth switching to? -------------------------------------


class OfferVerdict(StrEnum):
    STAGE = "stage"
    UP_TO_DATE = "up_to_date"  # the build runs already (or waits as pending)
    REJECTED_BEFORE = "rejected_before"  # it failed to start once: never tried again
    OLDER_IN_CHANNEL = "older_in_channel"  # a replayed old release of the same channel
    OTHER_CHANNEL = "other_channel"  # the player picked another channel meanwhile


def judge_offer(state: UpdateState, version: str, channel: str) -> OfferVerdict:
    """Whether a build the engine installed and verified should become pending.

    Within a channel only a newer version moves on (an old signed release served again must not
    take a player back); a change of channel takes its latest build whatever its number, which
    is how a player returns from beta to stable."""
    if channel != state.channel:
        return OfferVerdict.OTHER_CHANNEL
    if version in state.rejected:
        return OfferVerdict.REJECTED_BEFORE
    if version in (state.current, state.pending):  # one version number is one build
        return OfferVerdict.UP_TO_DATE
    same_channel = state.current_channel in (None, channel)  # None: the installer's build
    if same_channel and state.current is not None and \
            version_key(version) < version_key(state.current):
        return OfferVerdict.OLDER_IN_CHANNEL
    return OfferVerdict.STAGE


def staged(state: UpdateState, version: str, channel: str) -> UpdateState:
    return replace(state, pending=version, pending_channel=channel)


def choose_channel(state: UpdateState, channel: str) -> UpdateState:
    """The player picks a channel: a build staged from the other one is no longer wanted."""
    product_for(channel)  # validates
    if channel == state.channel:
        return state
    keep_pending = state.pending_channel == channel
    return replace(state, channel=channel, pending=state.pending if keep_pending else None,
                   pending_channel=state.pending_channel if keep_pending else None)


# -- start: which build runs ------------------------------------------------------------------


class StartKind(StrEnum):
    RUN_SELF = "run_self"  # this process is the build to run
    TRY = "try"  # run ``version`` as a trial under this process
    HAND_OFF = "hand_off"  # ``version`` is current (this build is an older one): run it


@dataclass(frozen=True)
class StartPlan:
    kind: StartKind
    state: UpdateState  # to write before acting
    version: str | None = None
    notes: tuple[str, ...] = ()  # what changed and why, for the log


def plan_start(state: UpdateState, own_version: str, on_disk: frozenset[str]) -> StartPlan:
    notes: list[str] = []
    if state.trial is not None:
        # the supervisor died while a trial ran (power loss, kill): it was never confirmed
        notes.append(f"the trial of {state.trial} was interrupted: rejected")
        state = _reject(state, state.trial)
    if state.current is None:
        state = replace(state, current=own_version)  # the installer's build: adopt it
    if state.pending is not None and (state.pending not in on_disk
                                      or state.pending in state.rejected):
        notes.append(f"pending {state.pending} is gone or rejected: dropped")
        state = replace(state, pending=None, pending_channel=None)
    if state.pending is not None and state.pending != state.current:
        return StartPlan(StartKind.TRY, replace(state, trial=state.pending), state.pending,
                         tuple(notes))
    if state.pending is not None:  # pending is what runs already
        state = replace(state, pending=None, pending_channel=None)
    if state.current != own_version and state.current in on_disk:
        return StartPlan(StartKind.HAND_OFF, state, state.current, tuple(notes))
    if state.current != own_version:
        notes.append(f"current {state.current} is missing: {own_version} runs instead")
        state = replace(state, current=own_version)
    return StartPlan(StartKind.RUN_SELF, state, None, tuple(notes))


# -- a trial: the old build watches the new one start ----------------------------------------


class TrialOutcome(StrEnum):
    CONFIRMED = "confirmed"  # the new build cleared its start marker
    EXITED = "exited"  # it ended before clearing it (crash, missing library, error exit)
    TIMED_OUT = "timed_out"  # it neither cleared the marker nor ended in time (hung)
    NOT_STARTED = "not_started"  # it could not even be executed


def judge_trial(marker_cleared: bool, exited: bool, elapsed_s: float,
                timeout_s: float) -> TrialOutcome | None:
    """One look at a running trial; None: keep waiting. A marker cleared counts even when the
    process has also exited since (a quick ``--probe`` run)."""
    if marker_cleared:
        return TrialOutcome.CONFIRMED
    if exited:
        return TrialOutcome.EXITED
    if elapsed_s >= timeout_s:
        return TrialOutcome.TIMED_OUT
    return None


def finish_trial(state: UpdateState, outcome: TrialOutcome) -> UpdateState:
    assert state.trial is not None, "no trial to finish"
    if outcome is TrialOutcome.CONFIRMED:
        return replace(state, previous=state.current, current=state.trial,
                       current_channel=state.pending_channel, pending=None,
                       pending_channel=None, trial=None)
    return _reject(state, state.trial)


def _reject(state: UpdateState, version: str) -> UpdateState:
    rejected = (*[r for r in state.rejected if r != version], version)[-KEEP_REJECTED:]
    pending = None if state.pending == version else state.pending
    return replace(state, trial=None, rejected=rejected, pending=pending,
                   pending_channel=None if pending is None else state.pending_channel)


def versions_to_keep(state: UpdateState) -> frozenset[str]:
    """Bundles that must stay on disk; the rest may be removed after a confirmed switch."""
    return frozenset(v for v in (state.current, state.previous, state.pending, state.trial) if v)
