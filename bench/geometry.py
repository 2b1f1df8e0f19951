"""The interpenetration test's broad phase against testing every pair, side by side on the same meshes.

``pipeline.geometry.edge_triangle_intersections`` is what the prior calls (``meshes_interpenetrate``, in
both directions) while it bisects two interacting hands apart, several times per two-hand sample. This bench
poses a right and a left hand (``--pairs`` random poses), moves the left one by each ``--shifts`` (metres,
along x: from overlapping to apart), and times both directions with (a) the broad phase and (b) the all-pairs
reference of tests/test_geometry.py (every edge box against every triangle box, then the same exact test),
alternately, best of ``--repeats``. It checks that both return the same pairs and prints ms per call and the
ratio. ``--before FILE``: also (c) the function from an older ``pipeline/geometry.py`` (e.g. ``git show
15760ea:pipeline/geometry.py > /tmp/geometry_before.py``: a hand-sized box filter, then every remaining pair).

Usage: python bench/geometry.py [--pairs 3] [--shifts 0,0.03,0.06,0.1] [--repeats 3] [--before FILE]
"""

from __future__ import annotations

import argparse
import time

import _benchpath  # noqa: F401 - first: fixes the import path
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--shifts", default="0,0.03,0.06,0.1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before", help="an older pipeline/geometry.py to time as well")
    args = ap.parse_args()

    import torch

    from pipeline import geometry
    from pipeline.hand_model import HandModel
    from tests.test_geometry import _all_pairs

    fns = {"broad phase": geometry.edge_triangle_intersections, "all pairs": _all_pairs}
    if args.before:
        import importlib.util

        spec = importlib.util.spec_from_file_location("geometry_before", args.before)
        before = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(before)
        fns["before"] = before.edge_triangle_intersections
    hm = HandModel()
    rng = np.random.default_rng(0)
    verts = {
        side: hm(
            side,
            torch.tensor(rng.normal(0, 0.3, (args.pairs, 48))),
            torch.zeros(args.pairs, 10),
            torch.zeros(args.pairs, 3),
        )
        .vertices.cpu()
        .numpy()
        .astype(np.float64)
        for side in ("right", "left")
    }
    fr, fl = hm.faces["right"], hm.faces["left"]
    print(f"{args.pairs} hand pairs (778 vertices, 1538 faces each), both directions per call pair")
    for shift in (float(s) for s in args.shifts.split(",")):
        best = dict.fromkeys(fns, np.inf)
        hits = 0
        for _ in range(args.repeats):
            for name, fn in fns.items():
                t = time.perf_counter()
                got = []
                for a, b in zip(verts["right"], verts["left"] + [shift, 0.0, 0.0], strict=True):
                    got += [fn(a, fr, b, fl), fn(b, fl, a, fr)]
                best[name] = min(best[name], (time.perf_counter() - t) / (2 * args.pairs) * 1000)
                if name == "broad phase":
                    mine = got
                else:
                    same = all(len(x) == len(y) for x, y in zip(mine, got, strict=True))
                    if name == "all pairs":  # the same pairs in the same order; the old code's order differs
                        same = all(np.array_equal(x, y) for x, y in zip(mine, got, strict=True))
                    assert same, f"{name}: other results than the broad phase"
                    hits = sum(len(x) for x in got)
        a, b = best["broad phase"], best["all pairs"]
        line = (
            f"shift {shift * 100:4.1f} cm: {hits:4d} crossing pairs; broad phase {a:6.1f} ms/call, all pairs "
            f"{b:6.1f} ms/call ({b / a:4.1f}x)"
        )
        if "before" in best:
            line += f", before {best['before']:6.1f} ms/call ({best['before'] / a:4.1f}x)"
        print(line)


if __name__ == "__main__":
    main()
