"""The self-update rules (launcher/updatecore.py), pure: no files, no processes."""

from __future__ import annotations

import pytest

from launcher.updatecore import (
    OfferVerdict,
    SelfUpdateError,
    StartKind,
    TrialOutcome,
    UpdateErrorCode,
    UpdateState,
    choose_channel,
    finish_trial,
    judge_offer,
    judge_trial,
    plan_start,
    product_for,
    staged,
    version_key,
    versions_to_keep,
)


def test_versions_order_like_pep440() -> None:
    ordered = ["0.9", "1.0.0", "1.0.1", "1.1.0a1", "1.1.0b2", "1.1.0rc1", "1.1", "1.10.0"]
    assert sorted(ordered, key=version_key) == ordered
    assert version_key("1.2") == version_key("1.2.0")
    assert version_key("nonsense") < version_key("0.0.1")


def test_products_per_channel_and_unknown_channels_refused() -> None:
    assert product_for("stable") == "game-launcher-stable"
    assert product_for("beta") == "game-launcher-beta"
    with pytest.raises(SelfUpdateError) as err:
        product_for("nightly")
    assert err.value.code is UpdateErrorCode.BAD_CHANNEL


def test_offer_within_a_channel_only_moves_forward() -> None:
    state = UpdateState(current="1.1.0", current_channel="stable")
    assert judge_offer(state, "1.2.0", "stable") is OfferVerdict.STAGE
    assert judge_offer(state, "1.1.0", "stable") is OfferVerdict.UP_TO_DATE
    # an old signed release served again must not take the player back
    assert judge_offer(state, "1.0.0", "stable") is OfferVerdict.OLDER_IN_CHANNEL
    assert judge_offer(staged(state, "1.2.0", "stable"), "1.2.0", "stable") is OfferVerdict.UP_TO_DATE


def test_offer_of_a_rejected_build_or_another_channel_is_refused() -> None:
    state = UpdateState(current="1.1.0", current_channel="stable", rejected=("1.2.0",))
    assert judge_offer(state, "1.2.0", "stable") is OfferVerdict.REJECTED_BEFORE
    assert judge_offer(state, "1.3.0b1", "beta") is OfferVerdict.OTHER_CHANNEL


def test_downgrade_from_beta_to_stable_is_offered_after_the_player_switches() -> None:
    on_beta = UpdateState(channel="beta", current="1.3.0b1", current_channel="beta")
    assert judge_offer(on_beta, "1.2.1", "stable") is OfferVerdict.OTHER_CHANNEL
    back = choose_channel(on_beta, "stable")
    assert back.channel == "stable"
    assert judge_offer(back, "1.2.1", "stable") is OfferVerdict.STAGE  # lower, but a new channel


def test_choosing_a_channel_drops_a_build_staged_from_the_other() -> None:
    state = staged(UpdateState(current="1.1.0", current_channel="stable"), "1.2.0", "stable")
    beta = choose_channel(state, "beta")
    assert beta.pending is None and beta.pending_channel is None
    assert choose_channel(state, "stable") is state


def test_start_runs_itself_when_nothing_is_pending_and_adopts_the_installer_build() -> None:
    plan = plan_start(UpdateState(), "1.0.0", frozenset({"1.0.0"}))
    assert plan.kind is StartKind.RUN_SELF
    assert plan.state.current == "1.0.0"


def test_start_tries_a_pending_build_and_records_the_trial_first() -> None:
    state = staged(UpdateState(current="1.0.0"), "1.1.0", "stable")
    plan = plan_start(state, "1.0.0", frozenset({"1.0.0", "1.1.0"}))
    assert plan.kind is StartKind.TRY and plan.version == "1.1.0"
    assert plan.state.trial == "1.1.0"  # written before the child starts


def test_pending_build_missing_on_disk_is_dropped() -> None:
    state = staged(UpdateState(current="1.0.0"), "1.1.0", "stable")
    plan = plan_start(state, "1.0.0", frozenset({"1.0.0"}))
    assert plan.kind is StartKind.RUN_SELF
    assert plan.state.pending is None and plan.notes


def test_an_interrupted_trial_counts_as_a_failure() -> None:
    state = UpdateState(current="1.0.0", pending="1.1.0", pending_channel="stable", trial="1.1.0")
    plan = plan_start(state, "1.0.0", frozenset({"1.0.0", "1.1.0"}))
    assert plan.kind is StartKind.RUN_SELF
    assert plan.state.rejected == ("1.1.0",) and plan.state.trial is None
    assert plan.state.pending is None


def test_an_old_build_started_directly_hands_off_to_current() -> None:
    state = UpdateState(current="1.1.0", previous="1.0.0")
    plan = plan_start(state, "1.0.0", frozenset({"1.0.0", "1.1.0"}))
    assert plan.kind is StartKind.HAND_OFF and plan.version == "1.1.0"
    # but if current's bundle is gone, the build that runs becomes current
    gone = plan_start(state, "1.0.0", frozenset({"1.0.0"}))
    assert gone.kind is StartKind.RUN_SELF and gone.state.current == "1.0.0"


def test_trial_judgement() -> None:
    assert judge_trial(False, False, 1.0, 30.0) is None
    assert judge_trial(True, False, 1.0, 30.0) is TrialOutcome.CONFIRMED
    assert judge_trial(True, True, 1.0, 30.0) is TrialOutcome.CONFIRMED  # cleared, then ended
    assert judge_trial(False, True, 1.0, 30.0) is TrialOutcome.EXITED
    assert judge_trial(False, False, 30.0, 30.0) is TrialOutcome.TIMED_OUT


def test_confirmed_trial_switches_and_keeps_the_previous_build() -> None:
    state = plan_start(staged(UpdateState(current="1.0.0"), "1.1.0", "stable"), "1.0.0",
                       frozenset({"1.0.0", "1.1.0"})).state
    done = finish_trial(state, TrialOutcome.CONFIRMED)
    assert (done.current, done.previous, done.current_channel) == ("1.1.0", "1.0.0", "stable")
    assert done.pending is None and done.trial is None
    assert versions_to_keep(done) == {"1.1.0", "1.0.0"}


@pytest.mark.parametrize("outcome", [TrialOutcome.EXITED, TrialOutcome.TIMED_OUT,
                                     TrialOutcome.NOT_STARTED])
def test_failed_trial_rolls_back_and_never_retries(outcome: TrialOutcome) -> None:
    state = plan_start(staged(UpdateState(current="1.1.0", previous="1.0.0"), "1.2.0", "stable"),
                       "1.1.0", frozenset({"1.0.0", "1.1.0", "1.2.0"})).state
    done = finish_trial(state, outcome)
    assert (done.current, done.previous) == ("1.1.0", "1.0.0")
    assert done.rejected == ("1.2.0",) and done.pending is None and done.trial is None
    again = plan_start(staged(done, "1.2.0", "stable"), "1.1.0", frozenset({"1.1.0", "1.2.0"}))
    assert again.kind is StartKind.RUN_SELF  # a rejected build is not tried a second time


def test_state_round_trips_and_bad_state_is_refused() -> None:
    state = UpdateState(channel="beta", current="1.3.0b1", current_channel="beta",
                        previous="1.2.0", rejected=("1.2.5",))
    assert UpdateState.from_json(state.to_json()) == state
    with pytest.raises(SelfUpdateError) as err:
        UpdateState.from_json({"current": 5})
    assert err.value.code is UpdateErrorCode.STATE_INVALID
    assert UpdateState.from_json({"channel": "nightly"}).channel == "stable"
