"""Paired comparison of two evaluated runs of the same samples (``evaluation.compare``).

Both runs must have been drawn with the same seed and settings except the change under test (a generator
option, the hand model, ...) and evaluated with ``hands evaluate``. Prints, per pair, the detection rates, the
hands eligible in both runs that only one run detects (gained / lost) with a two-sided exact sign test, and
PCK@0.1 over the hands both runs detect. At 512 samples any shading change flips about 8 to 15 hands each
way by chance (docs/benchmarks.md), which the sign test accounts for and separate rates do not.

Usage: python bench/compare_runs.py BEFORE AFTER [AFTER2 ...]   (run folders or scores.parquet files)
"""

from __future__ import annotations

import argparse
import sys

import _benchpath  # noqa: F401 - first: fixes the import path

from evaluation.compare import CompareError, compare, eligible_hands, load_scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", help="the reference run (folder with eval/scores.parquet, or the file)")
    ap.add_argument("after", nargs="+", help="the run(s) to compare with it")
    args = ap.parse_args(argv)
    try:
        ref = eligible_hands(load_scores(args.before))
        for run in args.after:
            print(f"{run}: {compare(ref, eligible_hands(load_scores(run))).line()}")
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
