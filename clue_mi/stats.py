"""Spreads for the report: bootstrap intervals over prompts and mean ± std over seeds.

A number in a results table is only worth reading next to its spread (DESIGN §10). Two kinds:

* **over prompts**: a percentile bootstrap 95% interval of a mean of per-prompt outcomes (for
  accuracy, 1 where the prompt was answered correctly, 0 where not), seeded, so the same
  outcomes always give the same interval;
* **over seeds**: mean and sample standard deviation of one metric across runs.

:func:`separated` says whether two methods differ by more than their spread: their intervals
do not overlap. It is deliberately conservative (non-overlapping 95% intervals is stricter than
a 5% test), so a difference it reports is one a reader can trust.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with a lower and upper bound (same units as the estimate)."""

    value: float
    low: float
    high: float

    def __post_init__(self) -> None:
        if not (self.low <= self.value <= self.high):
            raise ValueError(f"interval [{self.low}, {self.high}] does not hold {self.value}")

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def bootstrap_mean(
    outcomes: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """Mean of ``outcomes`` with a percentile bootstrap interval over them.

    Raises ``ValueError`` on no outcomes or a non-finite one: a NaN must never turn into a
    confident-looking interval.
    """
    values = np.asarray(outcomes, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("bootstrap_mean needs a non-empty 1-d sequence of outcomes")
    if not np.isfinite(values).all():
        raise ValueError("bootstrap_mean got a non-finite outcome")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.size, size=(resamples, values.size))
    means = values[picks].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    mean = float(values.mean())
    # The percentile interval of a mean always holds the mean up to float rounding; clamp that.
    return Interval(mean, min(float(low), mean), max(float(high), mean))


def bootstrap_auc(
    members: Sequence[float],
    nonmembers: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """ROC-AUC of members (label 1) against non-members (label 0), ``P(m > n) + P(m = n) / 2``,
    with a percentile bootstrap interval: each group resampled with replacement on its own.

    Raises ``ValueError`` on an empty group or a non-finite score.
    """
    m, n = np.asarray(members, dtype=np.float64), np.asarray(nonmembers, dtype=np.float64)
    if m.ndim != 1 or n.ndim != 1 or m.size == 0 or n.size == 0:
        raise ValueError("bootstrap_auc needs non-empty 1-d member and non-member scores")
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise ValueError("bootstrap_auc got a non-finite score")
    # wins[i, j]: member i against non-member j (1, 1/2 on a tie, 0); a resample's AUC is the
    # mean of wins over its picked rows and columns.
    wins = (m[:, None] > n[None, :]) + 0.5 * (m[:, None] == n[None, :])
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, m.size, size=(resamples, m.size))
    cols = rng.integers(0, n.size, size=(resamples, n.size))
    aucs = np.array([wins[r][:, c].mean() for r, c in zip(rows, cols, strict=True)])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(aucs, [alpha, 1 - alpha])
    auc = float(wins.mean())
    return Interval(auc, min(float(low), auc), max(float(high), auc))


def tied_fraction(members: Sequence[float], nonmembers: Sequence[float], tol: float) -> float:
    """Fraction of member / non-member pairs whose scores are within ``tol``: pairs that float
    noise, not the model, orders (the AUC counts only exact ties as half)."""
    m, n = np.asarray(members, dtype=np.float64), np.asarray(nonmembers, dtype=np.float64)
    return float((np.abs(m[:, None] - n[None, :]) <= tol).mean())


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0.0 for a single value) over seeds."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError("mean_std needs at least one finite value")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def seed_interval(values: Sequence[float]) -> Interval:
    """Mean ± one sample standard deviation over seeds, as an :class:`Interval`."""
    mean, std = mean_std(values)
    return Interval(mean, mean - std, mean + std)


def separated(a: Interval, b: Interval) -> bool:
    """True when the two intervals do not overlap: the difference exceeds the spread."""
    return a.high < b.low or b.high < a.low


def format_interval(interval: Interval, scale: float = 100.0, digits: int = 1) -> str:
    """``"62.5 [45.3, 78.1]"``: value and bounds, scaled (percent by default)."""
    f = f"{{:.{digits}f}}"
    parts = (interval.value * scale, interval.low * scale, interval.high * scale)
    if not all(math.isfinite(p) for p in parts):
        raise ValueError("cannot format a non-finite interval")
    return f"{f.format(parts[0])} [{f.format(parts[1])}, {f.format(parts[2])}]"


__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "CONFIDENCE",
    "Interval",
    "bootstrap_mean",
    "format_interval",
    "mean_std",
    "seed_interval",
    "separated",
]
