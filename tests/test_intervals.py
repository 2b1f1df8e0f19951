"""Intervals of a run's detection rate and PCK@0.1 with samples as clusters (evaluation.intervals)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.intervals import run_intervals, wilson, with_interval


def _width(ci) -> float:
    return ci[1] - ci[0]


def test_single_hands_give_wilsons_interval_over_the_hands():
    rng = np.random.default_rng(0)
    d = (rng.random(500) < 0.8).astype(int)
    ci = run_intervals(np.ones(500, int), d, d * 0.9)["detection_rate"]
    # independent hands: the design effect is n / (n - 1), so the interval is Wilson's over 500 hands
    lo, hi = wilson(d.mean(), 500 * (499 / 500))
    assert ci == pytest.approx((lo, hi), abs=1e-9)
    assert _width(ci) == pytest.approx(_width(wilson(d.mean(), 500)), rel=0.002)


def test_hands_detected_together_widen_the_interval_by_root_two():
    rng = np.random.default_rng(1)
    both = rng.random(400) < 0.7
    pairs = run_intervals(np.full(400, 2), np.where(both, 2, 0), np.where(both, 1.6, 0.0))["detection_rate"]
    rate = both.mean()
    singles = wilson(rate, 800)
    assert 1.38 < _width(pairs) / _width(singles) < 1.45  # 800 hands carry the information of 400
    assert pairs[0] < rate < pairs[1]


def test_a_perfect_rate_keeps_an_interval_below_one():
    ci = run_intervals(np.ones(20, int), np.ones(20, int), np.full(20, 0.95))["detection_rate"]
    assert ci[1] == pytest.approx(1.0)
    assert ci[0] == pytest.approx(wilson(1.0, 20)[0]) and 0.8 < ci[0] < 0.85  # rule of three: about 0.84


def test_pck_interval_is_the_mean_plus_minus_its_standard_error():
    rng = np.random.default_rng(2)
    pck = rng.uniform(0.4, 1.0, 300)
    ci = run_intervals(np.ones(300, int), np.ones(300, int), pck)["pck_01"]
    half = 1.959963984540054 * pck.std(ddof=1) / math.sqrt(300)
    assert ci == pytest.approx((pck.mean() - half, pck.mean() + half), rel=1e-9)


def test_intervals_cover_the_true_rate_when_hands_are_clustered():
    """Two hands per sample, detected together far more often than chance (a shared per-sample difficulty):
    the cluster interval covers the true rate about 95% of the time; Wilson over hands does not."""
    rng = np.random.default_rng(3)
    truth, n, cover, naive = 0.8, 150, 0, 0
    trials = 400
    for _ in range(trials):
        easy = rng.random(n) < truth  # per sample; each hand then follows it 90% of the time
        hands = np.where(rng.random((n, 2)) < 0.9, easy[:, None], rng.random((n, 2)) < truth)
        d = hands.sum(axis=1)
        lo, hi = run_intervals(np.full(n, 2), d, d * 0.8)["detection_rate"]
        cover += lo <= truth <= hi
        w_lo, w_hi = wilson(d.sum() / (2 * n), 2 * n)
        naive += w_lo <= truth <= w_hi
    assert 0.92 <= cover / trials <= 0.98
    assert naive / trials < 0.90


def test_nothing_to_estimate_and_bad_counts():
    assert run_intervals([], [], []) == {"detection_rate": None, "pck_01": None}
    out = run_intervals([0, 1], [0, 1], [0.0, 0.7])
    assert out["pck_01"] is None and out["detection_rate"] is not None  # one sample with a PCK value
    with pytest.raises(ValueError, match="eligible"):
        run_intervals([1], [2], [1.0])
    with pytest.raises(ValueError, match="one length"):
        run_intervals([1, 1], [1], [1.0])
    assert with_interval(0.8451, (0.7934, 0.8859)) == "0.845 (95%: 0.793-0.886)"
    assert with_interval(None, None) == "n/a" and with_interval(0.5, None, 2) == "0.50"
