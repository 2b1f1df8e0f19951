"""Paired comparison of two evaluated runs of the same samples (``evaluation.compare``).

Both runs must have been drawn with the same seed and settings except the change under test (a generator
option, the hand model, ...) and evaluated with ``hands evaluate``. Prints, per pair, the detection rates, the
hands eligible in both runs that only one run detects (gained / lost) with a two-sided exact sign test, and
PCK@0.1 over the hands both runs detect. At 512 samples any shading change flips about 8 to 15 hands each
way by chance (docs/benchmarks.md), which the sign test accounts for and separate rates do not.

``--by facing`` (or gesture, distance, object, camera, overlap: the splits of ``hands evaluate``) adds one
line per group. ``--also BEFORE2 AFTER2`` (repeatable) pools further pairs, drawn with other seeds, into one
comparison: a change that helps should help on other samples too, and one pair of 512-sample runs often
cannot tell.

Usage: python bench/compare_runs.py BEFORE AFTER [AFTER2 ...] [--by SPLIT] [--also BEFORE2 AFTER2 ...]
(run folders or scores.parquet files)
"""

from __future__ import annotations

import argparse
import sys

import _benchpath  # noqa: F401 - first: fixes the import path

from evaluation.compare import CompareError, compare, eligible_hands, hand_groups, load_scores, split
from evaluation.run import BREAKDOWNS


def _report(pairs: list[tuple[str, str]], by: str | None, title: str) -> None:
    """Print the comparison of ``pairs`` (before, after), pooled when there are several, and its split."""
    tagged = len(pairs) > 1
    before, after, groups = {}, {}, {}
    for i, (b, a) in enumerate(pairs):
        tag = str(i) if tagged else None
        rows = load_scores(b)
        before.update(eligible_hands(rows, tag))
        after.update(eligible_hands(load_scores(a), tag))
        if by:
            groups.update(hand_groups(rows, by, tag))
    print(f"{title}: {compare(before, after).line()}")
    if by and not groups:
        print(f"  no {by} groups: the scores predate that column")
    order = BREAKDOWNS[by][1] if by else None
    for group, result in split(before, after, groups, order).items() if by else ():
        print(f"  {by} {group}: {result.line()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", help="the reference run (folder with eval/scores.parquet, or the file)")
    ap.add_argument("after", nargs="+", help="the run(s) to compare with it")
    ap.add_argument(
        "--by",
        choices=tuple(BREAKDOWNS),
        help="also compare within each group of the reference's hands (the splits of `hands evaluate`)",
    )
    ap.add_argument(
        "--also",
        nargs=2,
        action="append",
        default=[],
        metavar=("BEFORE", "AFTER"),
        help="another pair of runs (other samples) pooled with BEFORE AFTER; needs exactly one AFTER",
    )
    args = ap.parse_args(argv)
    if args.also and len(args.after) != 1:
        print("error: --also pools pairs, so it needs exactly one AFTER run", file=sys.stderr)
        return 2
    try:
        if args.also:
            pairs = [(args.before, args.after[0]), *map(tuple, args.also)]
            _report(pairs, args.by, f"{len(pairs)} pairs pooled")
        else:
            for run in args.after:
                _report([(args.before, run)], args.by, run)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
