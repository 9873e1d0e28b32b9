"""Spreads: bootstrap intervals and seed aggregation against hand-computed values."""

from __future__ import annotations

import math

import pytest

from clue_mi.stats import (
    Interval,
    bootstrap_auc,
    bootstrap_mean,
    format_interval,
    mean_std,
    seed_interval,
    separated,
)


def test_bootstrap_of_constant_outcomes_is_a_point():
    assert bootstrap_mean([1.0] * 32) == Interval(1.0, 1.0, 1.0)
    assert bootstrap_mean([0.0] * 5) == Interval(0.0, 0.0, 0.0)


def test_bootstrap_half_correct_matches_the_normal_approximation():
    # 32 prompts, 16 right: mean 0.5, standard error sqrt(0.25 / 32) = 0.0884, 95% ± 0.173.
    ci = bootstrap_mean([1.0, 0.0] * 16)
    assert ci.value == 0.5
    assert ci.half_width == pytest.approx(1.96 * math.sqrt(0.25 / 32), abs=0.03)
    assert ci.low < 0.5 < ci.high


def test_bootstrap_is_seeded_and_narrows_with_more_prompts():
    outcomes = [1.0, 0.0, 1.0, 1.0] * 8
    assert bootstrap_mean(outcomes, seed=3) == bootstrap_mean(outcomes, seed=3)
    wide = bootstrap_mean([1.0, 0.0] * 8)
    narrow = bootstrap_mean([1.0, 0.0] * 200)
    assert narrow.half_width < wide.half_width / 3


@pytest.mark.parametrize("bad", [[], [float("nan"), 1.0], [float("inf")]])
def test_bootstrap_refuses_empty_or_non_finite(bad):
    with pytest.raises(ValueError):
        bootstrap_mean(bad)


def test_mean_std_by_hand():
    assert mean_std([0.5, 0.75, 1.0]) == pytest.approx((0.75, 0.25))
    assert mean_std([0.3]) == (0.3, 0.0)
    assert seed_interval([0.5, 0.75, 1.0]) == Interval(0.75, 0.5, 1.0)
    with pytest.raises(ValueError):
        mean_std([0.1, float("nan")])


def test_separated_only_when_intervals_do_not_overlap():
    a, b = Interval(0.2, 0.1, 0.3), Interval(0.5, 0.4, 0.6)
    assert separated(a, b) and separated(b, a)
    assert not separated(a, Interval(0.35, 0.29, 0.41))
    assert not separated(a, a)


def test_interval_must_hold_its_value_and_formats_as_percent():
    with pytest.raises(ValueError):
        Interval(0.5, 0.6, 0.7)
    assert format_interval(Interval(0.625, 0.453, 0.781)) == "62.5 [45.3, 78.1]"


def test_bootstrap_auc_by_hand_and_its_spread():
    # 3 of 4 pairs ordered right (AUC 0.75); a tie counts half.
    assert bootstrap_auc([-1.0, -3.0], [-2.0, -4.0]).value == 0.75
    assert bootstrap_auc([-2.0], [-2.0]).value == 0.5
    # Separated groups: AUC 1 in every resample, so the interval is the point.
    sure = bootstrap_auc([5.0, 6.0, 7.0], [1.0, 2.0, 3.0])
    assert (sure.value, sure.low, sure.high) == (1.0, 1.0, 1.0)
    # Overlapping groups of 64: a real interval, seeded, about +-0.1 (Hanley-McNeil SE 0.05).
    members = [i / 64 + 0.2 for i in range(64)]
    nonmembers = [i / 64 for i in range(64)]
    a, b = bootstrap_auc(members, nonmembers), bootstrap_auc(members, nonmembers)
    assert a == b and a.low < a.value < a.high
    assert 0.15 < a.high - a.low < 0.3, a


@pytest.mark.parametrize("bad", [([], [1.0]), ([1.0], []), ([float("nan")], [1.0])])
def test_bootstrap_auc_refuses_empty_or_non_finite(bad):
    with pytest.raises(ValueError):
        bootstrap_auc(*bad)
