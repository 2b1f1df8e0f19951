"""``hands evaluate RUN``: the command-line side of ``evaluation.run`` (registered by ``flows.cli``).

``register(subparsers)`` adds the ``evaluate`` subcommand; ``_cmd_evaluate`` runs it and prints the headline
numbers. Bad input (not a run, flags that go together, a missing weights file) is a one-line ``HandgenError``
that ``flows.cli.main`` turns into ``hands: error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import logging

from flows.argtypes import count as _count
from flows.argtypes import pixels as _pixels
from flows.argtypes import positive_int as _positive_int

logger = logging.getLogger("hands")


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _cmd_evaluate(args) -> int:
    from evaluation.intervals import with_interval
    from evaluation.run import EvalConfig, evaluate_run

    cfg = EvalConfig(
        run=args.run,
        out=args.out,
        limit=args.limit,
        min_visible_joints=args.min_visible_joints,
        min_box_px=args.min_box_px,
        scorer=args.scorer,
        workers=args.workers,
        worst=args.worst,
        reference=args.reference,
        inception=args.inception,
        device=args.device,
        quiet=args.quiet,
    )
    res = evaluate_run(cfg)
    s = res.summary
    bad = [f"{k.replace('_', ' ')} {s[k]}" for k in ("unreadable", "bad_label", "bad_shards") if s.get(k)]
    print(
        f"evaluated {s['samples']} samples ({s['samples_per_s']:.1f} samples/s, {s['workers']} "
        + ("worker)" if s["workers"] == 1 else "workers)")
        + (f"; {', '.join(bad)}" if bad else "")
    )
    print(
        f"eligible hands {s['eligible_hands']} of {s['hands']}: detection rate "
        f"{with_interval(s['detection_rate'], s.get('detection_rate_ci95'))}, "
        f"Hand Conf. {_fmt(s['hand_conf'])}, PCK@0.05 {_fmt(s['pck_005'])}, "
        f"PCK@0.1 {with_interval(s['pck_01'], s.get('pck_01_ci95'))}, "
        f"MSE-2D {_fmt(s['mse_2d'], 1)} px^2"
    )
    for name, title in _BREAKDOWN_TITLES.items():
        groups = [
            f"{group} {v['detected']}/{v['eligible']} ({_fmt(v['detection_rate'])})"
            for group, v in (s.get(f"by_{name}") or {}).items()
            if v["eligible"]
        ]
        if groups:
            print(f"detected by {title}: " + ", ".join(groups))
    far = sorted(
        ((v["error"], name, v) for name, v in (s.get("by_joint") or {}).items() if v["error"] is not None),
        key=lambda x: x[0],
        reverse=True,
    )[:3]
    if far:
        print(
            "keypoints farthest from the label (mean error / box; along, across): "
            + ", ".join(f"{n} {_fmt(e)} ({_fmt(v['along'], 2)}, {_fmt(v['across'], 2)})" for e, n, v in far)
        )
    print(f"alignment: mean {_fmt(s['alignment_mean'])} over {s['assessed_samples']} assessed samples")
    fid = s.get("fid")
    if fid:
        print(
            f"FID {_fmt(fid.get('fid'), 2)}  KID {_fmt(fid.get('kid_mean'), 5)}  "
            f"FID-H {_fmt(fid.get('fid_h'), 2)}  KID-H {_fmt(fid.get('kid_h_mean'), 5)}"
        )
    elif s.get("fid_note"):
        print(s["fid_note"])
    print("  ".join(f"{name}: {path}" for name, path in res.files.items()))
    return 0


#: the summary's breakdowns (``evaluation.run.BREAKDOWNS``) as the CLI names them
_BREAKDOWN_TITLES = {
    "facing": "the side facing the camera",
    "gesture": "gesture",
    "distance": "distance from the camera",
    "object": "held object",
    "camera": "camera",
    "overlap": "the other hand",
}


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``evaluate`` to ``hands``' subcommands (``subparsers`` from ``add_subparsers``); returns its
    parser."""
    e = subparsers.add_parser(
        "evaluate",
        help="score a run's images against their labels (MediaPipe), write scores.parquet and report.html",
    )
    e.add_argument("run", help="output folder of a run (or an fsspec URL)")
    e.add_argument("--out", default=None, help="where the results go (default: RUN/eval; a folder or URL)")
    e.add_argument("--limit", type=_positive_int, default=None, help="evaluate the first N records only")
    e.add_argument(
        "--min-visible-joints",
        type=int,
        default=15,
        help="a hand is judged with at least this many visible joints (default 15)",
    )
    e.add_argument(
        "--min-box-px",
        type=_pixels,
        default=48.0,
        help="... and a box whose longer side is at least this many pixels (default 48)",
    )
    e.add_argument(
        "--scorer",
        default="mediapipe",
        help="scorer spec: mediapipe[:OPTION=VALUE,...] or a registered plug-in (default mediapipe)",
    )
    e.add_argument(
        "--workers",
        type=_count,
        default=0,
        help="detector processes (default 0: automatic; 1 below 200 records, else the usable cores up to 4)",
    )
    e.add_argument("--worst", type=_count, default=12, help="samples in the worst-aligned grid (default 12)")
    e.add_argument("--reference", default=None, help="real images for FID/KID: a folder of photos or shards")
    e.add_argument(
        "--inception",
        default=None,
        help="local FID Inception weights (pt_inception-2015-12-05-6726825d.pth) for FID/KID",
    )
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device for FID/KID")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_evaluate)
    return e
