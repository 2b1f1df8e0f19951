"""Paired comparison of two evaluated runs of the same samples (``bench/compare_runs.py``).

Two runs drawn with the same seed hold the same poses and cameras; a generator or hand-model change then
alters only how each hand looks. Rates measured on separate draws move by about 0.06 at 512 samples by
chance (docs/benchmarks.md), so a change is judged on the hands eligible in both runs: how many are
detected only in the second run (``gained``), only in the first (``lost``), and a two-sided exact sign
test on those flips (the chance of a split at least this uneven if the change did nothing). The hands
detected in both runs are compared the same way on the detector's handedness (whether it names the label's
side), when the scores hold it.

Input: the ``eval/scores.parquet`` files that ``hands evaluate`` writes (one row per record, with its sample
``index`` and per-hand columns ``right_*`` / ``left_*``); hands pair by sample index and side. Pure
functions over rows; no detector runs here.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from collections.abc import Iterable, Iterator, Mapping

from pipeline.errors import HandgenError
from pipeline.schema import SIDES


class CompareError(HandgenError, ValueError):
    """A run without ``eval/scores.parquet``, or a scores file without the needed columns; one line."""


@dataclasses.dataclass(frozen=True)
class HandScore:
    """One eligible hand: detected or not, its PCK@0.1 (None when not detected) and whether the detector's
    handedness names the label's side (None when not detected, or not in the scores)."""

    detected: bool
    pck_01: float | None
    handedness_agrees: bool | None = None


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """Counts are hands (a two-hand sample counts twice). ``pck_both_*``: mean PCK@0.1 over the hands detected
    in both runs (None when there are none); ``sign_test_p``: two-sided exact binomial test of ``gained``
    against ``lost`` (1.0 when nothing flipped). ``handed_*``: the same for the handedness of the
    ``handed_both`` hands detected in both runs with a handedness in both: how many agree with the label in
    each run, how many agree only in the second (``handed_gained``) or only in the first (``handed_lost``)."""

    eligible_a: int
    eligible_b: int
    detected_a: int
    detected_b: int
    common: int
    gained: int
    lost: int
    both: int
    pck_both_a: float | None
    pck_both_b: float | None
    sign_test_p: float
    handed_both: int = 0
    handed_agree_a: int = 0
    handed_agree_b: int = 0
    handed_gained: int = 0
    handed_lost: int = 0
    handed_sign_test_p: float = 1.0

    def line(self) -> str:
        """The comparison as one line of text."""

        def rate(d: int, e: int) -> str:
            return f"{d} / {e} ({d / e:.2f})" if e else f"{d} / 0"

        pck = (
            f"; PCK@0.1 of the {self.both} hands detected in both: "
            f"{self.pck_both_a:.3f} -> {self.pck_both_b:.3f}"
            if self.both
            else ""
        )
        if self.handed_both:
            n = self.handed_both
            pck += (
                f"; handedness right on {n} hands detected in both: "
                f"{rate(self.handed_agree_a, n)} -> {rate(self.handed_agree_b, n)}, "
                f"gained {self.handed_gained}, lost {self.handed_lost} (p = {self.handed_sign_test_p:.3f})"
            )
        return (
            f"detected {rate(self.detected_a, self.eligible_a)} -> {rate(self.detected_b, self.eligible_b)}; "
            f"of {self.common} hands eligible in both: gained {self.gained}, lost {self.lost} "
            f"(sign test p = {self.sign_test_p:.3f}){pck}"
        )


def sign_test(gained: int, lost: int) -> float:
    """Two-sided exact sign test: the probability, under a fair coin, of a split of ``gained + lost`` flips
    at least as uneven as this one (1.0 when there are none)."""
    n, k = gained + lost, min(gained, lost)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def eligible_hands(rows: Iterable[Mapping], tag: str | None = None) -> dict[tuple, HandScore]:
    """``{(index, side): HandScore}`` of the eligible hands in ``scores.parquet`` rows (dicts). Hands pair
    by the record's sample ``index``, not its key: a run's keys carry its configuration's hash, which the
    change under test may alter, while the same seed draws the same sample at the same index. ``tag``: keys
    become ``(tag, index, side)``, so that pairs of runs drawn with different seeds can be pooled."""
    out: dict[tuple, HandScore] = {}
    for key, row, side in _eligible(rows, tag):
        detected = bool(row.get(f"{side}_detected"))
        pck = row.get(f"{side}_pck_01")
        ok = detected and pck is not None and not (isinstance(pck, float) and math.isnan(pck))
        agrees = row.get(f"{side}_handedness_agrees") if detected else None
        out[key] = HandScore(detected, float(pck) if ok else None, None if agrees is None else bool(agrees))
    return out


def _eligible(rows: Iterable[Mapping], tag: str | None) -> Iterator[tuple[tuple, Mapping, str]]:
    """``(key, row, side)`` of each eligible hand in ``rows``; the key is ``(index, side)``, or
    ``(tag, index, side)`` (``eligible_hands``)."""
    for row in rows:
        for side in SIDES:
            if row.get(f"{side}_eligible") is True:
                key = (int(row["index"]), side)
                yield (key if tag is None else (tag, *key)), row, side


Hands = Mapping[tuple, HandScore]
"""A run's eligible hands by (sample index, side), or (tag, sample index, side), as ``eligible_hands``
returns them."""


def hand_groups(rows: Iterable[Mapping], by: str, tag: str | None = None) -> dict[tuple, str]:
    """``{(index, side): group}`` of the eligible hands in ``rows`` (keys as ``eligible_hands``), grouped as
    ``hands evaluate`` splits its summary (``evaluation.run.BREAKDOWNS``: ``facing``, ``gesture``,
    ``distance``, ``object``, ``camera``, ``overlap``); hands without a group (no camera kind, ...) are left
    out. A scores file without the group's columns (written before they existed) gives no groups."""
    from evaluation.run import BREAKDOWNS

    if by not in BREAKDOWNS:
        raise CompareError(f"unknown split {by!r}; known: {', '.join(BREAKDOWNS)}")
    group = BREAKDOWNS[by][0]
    out: dict[tuple, str] = {}
    for key, row, side in _eligible(rows, tag):
        if _SPLIT_COLUMN[by].format(side=side) in row and (g := group(row, side)) is not None:
            out[key] = str(g)
    return out


#: the scores column each split reads (``evaluation.run.BREAKDOWNS``)
_SPLIT_COLUMN = {
    "facing": "{side}_facing",
    "gesture": "{side}_gesture",
    "distance": "{side}_distance_m",
    "object": "objects",
    "camera": "camera_kind",
    "overlap": "{side}_box_overlap",
}


def split(
    a: Hands, b: Hands, groups: Mapping[tuple, str], order: Iterable[str] | None = None
) -> dict[str, PairedComparison]:
    """``compare`` within each group of ``groups`` (``hand_groups``): the groups named in ``order`` first (in
    that order, those present), then the others sorted."""
    members: dict[str, set] = collections.defaultdict(set)
    for k, g in groups.items():
        members[g].add(k)
    named = [g for g in (order or ()) if g in members]
    out: dict[str, PairedComparison] = {}
    for g in [*named, *sorted(members.keys() - set(named))]:
        keys = members[g]
        out[g] = compare({k: v for k, v in a.items() if k in keys}, {k: v for k, v in b.items() if k in keys})
    return out


def _flips(keys, a: Hands, b: Hands, field: str) -> tuple[int, int]:
    """(gained, lost): the hands of ``keys`` whose boolean ``field`` is true only in ``b``, only in ``a``."""
    flags = [(bool(getattr(a[k], field)), bool(getattr(b[k], field))) for k in keys]
    return sum(1 for x, y in flags if y and not x), sum(1 for x, y in flags if x and not y)


def compare(a: Hands, b: Hands) -> PairedComparison:
    """Paired comparison of two runs' eligible hands (``eligible_hands``): ``a`` before, ``b`` after."""
    common = a.keys() & b.keys()
    gained, lost = _flips(common, a, b, "detected")
    both = [k for k in common if a[k].pck_01 is not None and b[k].pck_01 is not None]

    def mean(run: Hands) -> float | None:
        return sum(run[k].pck_01 for k in both) / len(both) if both else None

    handed = [k for k in common if a[k].handedness_agrees is not None and b[k].handedness_agrees is not None]
    h_gained, h_lost = _flips(handed, a, b, "handedness_agrees")

    return PairedComparison(
        eligible_a=len(a),
        eligible_b=len(b),
        detected_a=sum(h.detected for h in a.values()),
        detected_b=sum(h.detected for h in b.values()),
        common=len(common),
        gained=gained,
        lost=lost,
        both=len(both),
        pck_both_a=mean(a),
        pck_both_b=mean(b),
        sign_test_p=sign_test(gained, lost),
        handed_both=len(handed),
        handed_agree_a=sum(bool(a[k].handedness_agrees) for k in handed),
        handed_agree_b=sum(bool(b[k].handedness_agrees) for k in handed),
        handed_gained=h_gained,
        handed_lost=h_lost,
        handed_sign_test_p=sign_test(h_gained, h_lost),
    )


_COLUMNS = ("index", *(f"{s}_{c}" for s in SIDES for c in ("eligible", "detected", "pck_01")))
_OPTIONAL = (  # read when the scores hold them: handedness, and what ``hand_groups`` splits by
    *(
        f"{s}_{c}"
        for s in SIDES
        for c in ("handedness_agrees", "facing", "gesture", "distance_m", "box_overlap")
    ),
    "objects",
    "camera_kind",
)


def load_scores(run: str | os.PathLike) -> list[dict]:
    """The rows of ``RUN/eval/scores.parquet`` (or of a scores file given directly), the needed columns only;
    ``CompareError`` (one line) when it is missing or lacks them."""
    import pyarrow.parquet as pq

    path = os.fspath(run)
    if os.path.isdir(path):
        path = os.path.join(path, "eval", "scores.parquet")
    if not os.path.isfile(path):
        raise CompareError(f"no scores at {path}: run `hands evaluate RUN` first")
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise CompareError(f"{path} is not a readable parquet file ({type(exc).__name__})") from None
    missing = [c for c in _COLUMNS if c not in schema.names]
    if missing:
        raise CompareError(f"{path} lacks the columns {missing}: not a `hands evaluate` scores file")
    columns = [*_COLUMNS, *(c for c in _OPTIONAL if c in schema.names)]
    return pq.read_table(path, columns=columns).to_pylist()


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike) -> PairedComparison:
    """``compare`` of two evaluated runs (folders with ``eval/scores.parquet``, or the scores files)."""
    return compare(eligible_hands(load_scores(run_a)), eligible_hands(load_scores(run_b)))
