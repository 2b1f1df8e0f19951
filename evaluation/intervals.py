"""How far a run's detection rate and PCK@0.1 may be from the dataset's own, from the run's size alone.

One 512-sample run of the embedded default detects 0.85 of one draw's eligible hands and 0.76 of another's
(docs/benchmarks.md), so a rate is worth little without its uncertainty. The hands of one sample share a
camera, a light and often a pose (two interacting hands), so they are not independent draws. Both numbers
are ratios over samples (detected hands over eligible hands, PCK summed over the detected hands over their
count), and their variance is estimated with the samples as clusters (the linearised ratio estimator of
survey sampling):

    R = sum(y) / sum(x),   var(R) = n / (n - 1) * sum((y_i - R x_i)^2) / sum(x)^2

over the n samples that have x_i > 0. A binomial interval over hands would be too narrow wherever the two
hands of a sample are detected or missed together.

* **Detection rate**: a Wilson score interval on the effective number of hands, sum(x) / deff, where the
  design effect deff = var(R) / (R (1 - R) / sum(x)) is at least 1 (clustering never makes a rate more
  certain than independent hands would). At R = 0 or 1 the design effect cannot be estimated and is 1, so
  the interval is Wilson's over the hands: it stays wider than a point, unlike a normal interval.
* **PCK@0.1**: a normal interval, mean +- z sqrt(var), clipped to [0, 1].

Pure functions over per-sample counts, O(n); no detector and no random numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: two-sided 95%: the standard normal's 0.975 quantile
Z95 = 1.959963984540054


def ratio_variance(y: np.ndarray, x: np.ndarray) -> tuple[float, float, int]:
    """``(R, var(R), n)``: the ratio sum(y) / sum(x) over the clusters with x > 0, its linearised variance
    (module doc; nan when n < 2) and n. y, x: (k,) float per cluster. Raises ValueError when no x is > 0."""
    keep = x > 0
    y, x = y[keep], x[keep]
    n = int(x.size)
    if n == 0:
        raise ValueError("no cluster has a positive denominator")
    total = float(x.sum())
    r = float(y.sum()) / total
    if n < 2:
        return r, math.nan, n
    resid = y - r * x
    return r, n / (n - 1) * float(np.dot(resid, resid)) / total**2, n


def wilson(rate: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``rate`` observed over ``n`` (possibly effective, so
    fractional) trials; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    z2 = z * z
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(max(rate * (1 - rate) / n + z2 / (4 * n * n), 0.0))
    return max(0.0, centre - half), min(1.0, centre + half)


def run_intervals(
    eligible: Sequence[int],
    detected: Sequence[int],
    pck_sum: Sequence[float],
    pck_count: Sequence[int] | None = None,
    z: float = Z95,
) -> dict[str, tuple[float, float] | None]:
    """Intervals of the detection rate and the mean PCK@0.1 of one run, with samples as clusters.

    eligible, detected: (n,) int, per sample: its eligible hands and how many of them are detected.
    pck_sum: (n,) float, per sample: the sum of PCK@0.1 over its detected eligible hands.
    pck_count: (n,) int, per sample: how many PCK values ``pck_sum`` adds up (default: ``detected``; fewer
        where a detected hand has no finite PCK, which the run's mean leaves out as well).
    Returns ``{"detection_rate": (lo, hi), "pck_01": (lo, hi)}`` (z = 1.96: 95%, two-sided); a value is None
    where there is nothing to estimate from (no eligible hand; fewer than two samples with a PCK value)."""
    e = np.asarray(eligible, dtype=np.float64)
    d = np.asarray(detected, dtype=np.float64)
    p = np.asarray(pck_sum, dtype=np.float64)
    c = d.copy() if pck_count is None else np.asarray(pck_count, dtype=np.float64)
    if not (e.shape == d.shape == p.shape == c.shape) or e.ndim != 1:
        raise ValueError(
            f"per-sample counts must be 1-D and of one length, got {e.shape}, {d.shape}, {p.shape}"
        )
    if np.any(c < 0) or np.any(c > d) or np.any(d > e) or not np.isfinite(p).all():
        raise ValueError("per sample, 0 <= PCK values <= detected hands <= eligible hands, and finite sums")
    out: dict[str, tuple[float, float] | None] = {"detection_rate": None, "pck_01": None}
    if np.any(e > 0):
        rate, var, _ = ratio_variance(d, e)
        hands = float(e.sum())
        binomial = rate * (1 - rate) / hands
        deff = max(1.0, var / binomial) if binomial > 0 and math.isfinite(var) else 1.0
        out["detection_rate"] = wilson(rate, hands / deff, z)
    if np.count_nonzero(c) >= 2:
        mean, var, _ = ratio_variance(p, c)
        half = z * math.sqrt(var)
        out["pck_01"] = (max(0.0, mean - half), min(1.0, mean + half))
    return out


def with_interval(value: float | None, interval: Sequence[float] | None, digits: int = 3) -> str:
    """``"0.845 (95%: 0.803-0.881)"``; the value alone without an interval, ``"n/a"`` without a value."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if interval is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} (95%: {interval[0]:.{digits}f}-{interval[1]:.{digits}f})"
