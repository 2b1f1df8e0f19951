"""Composite ablation: each component of the composite generator added in turn (as HandSynthesis does),
on the embedded default run (stand-in hand, prior, label captions, 512 px), scored by ``hands evaluate``.

Every row is a full run (``flows.stages.run_shards`` with the stage's generator replaced by a
``CompositeGenerator(CompositeConfig(...))``) into OUT_ROOT/<row>, then ``evaluation.run.evaluate_run``:
detection rate over eligible hands, PCK@0.1 of the detected hands, Hand Conf., and the run's samples/s.
``--before FILE``: also time a run with the composite module in FILE (e.g. the version-2 file) and no props,
alternating with the default (forearms and objects), ``--repeats`` times each (this machine is noisy: ratios
measured side by side); ``--props-speed``: the default generator with ``--props none`` against
``forearm,objects``, alternated likewise; ``--shadows-speed``: the default with ``shadows=False`` against
shadows on (forearms and objects both times), alternated likewise; ``--soft-speed``: the default's soft
shadows against version 5's (``penumbra=False, scatter=0``), likewise; ``--blob-speed``: the default's
scene-coloured blobs against version 6's (``blob_colours="random"``), likewise; ``--occlusion-speed``:
version 7 (``occlusion=0``) against the default (``occlusion=0.8``), likewise.

Usage: python bench/composite_ablation.py [--samples 128] [--seed 0] [--out-root /tmp/composite_ablation]
       [--rows all|N,N] [--before /tmp/composite_v1.py --repeats 2] [--props-speed] [--shadows-speed]
       [--soft-speed] [--blob-speed] [--occlusion-speed] [--reference EVALUATED_RUN]

``--reference RUN``: an evaluated run of the same samples (the same ``--samples``; for example a row of an
earlier invocation, or the code before a change): each row is also compared with it hand by hand
(``evaluation.compare``: gained / lost detections with a sign test, PCK@0.1 of the hands both detect).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import time
from pathlib import Path

try:
    import _benchpath  # noqa: F401 - first: fixes the import path
except ModuleNotFoundError:  # a spawned evaluation worker: it inherits the fixed path, without bench/ on it
    pass

# cumulative: each row adds one component to the one before (``props``: the run's ``--props``, "none" if not
# given; every other key is a ``CompositeConfig`` field). Rows before the version-4 row keep the key light's
# shadows off (``shadows=False``: version 3's shading), rows before the version-5 row draw no palm creases
# (``palm_lines=0``), rows before the version-6 row keep version 5's shadows (a point-like key light, no
# light kept in shadow), and rows before the version-7 row keep version 6's blob colours (uniform in RGB),
# and rows before the version-8 row no ambient occlusion (``occlusion=0``), so they measure what they
# measured before
_V7 = dict(occlusion=0.0)  # version 7: no ambient occlusion
_V6 = dict(blob_colours="random", **_V7)  # version 6's blob background
_V5 = dict(penumbra=False, scatter=0.0, **_V6)  # version 5's shadows
_V4 = dict(palm_lines=0.0, **_V5)  # version 4's skin: no palm creases
_V3 = dict(shadows=False, **_V4)
ROWS = (
    ("v1 components", dict(skin="flat", light="single", background="blobs", camera_effects=False, **_V3)),
    ("+ skin", dict(light="single", background="blobs", camera_effects=False, **_V3)),
    ("+ light", dict(background="blobs", camera_effects=False, **_V3)),
    ("+ natural background", dict(background="natural", camera_effects=False, **_V3)),
    ("+ camera effects (v2 default)", dict(background="natural", **_V3)),
    ("+ spectrum match 0.5", dict(background="natural", spectrum_match=0.5, **_V3)),
    ("skin + light + camera effects, blob background", dict(background="blobs", **_V3)),
    ("+ forearm", dict(background="blobs", props="forearm", **_V3)),
    (
        "+ objects held against the palm (v3 default)",
        dict(background="blobs", props="forearm,objects", **_V3),
    ),
    ("+ key-light self-shadowing (v4 default)", dict(background="blobs", props="forearm,objects", **_V4)),
    ("+ palm creases (v5 default)", dict(background="blobs", props="forearm,objects", **_V5)),
    (
        "+ soft shadows: the key light's size, light kept in skin's shadow (v6 default)",
        dict(background="blobs", props="forearm,objects", **_V6),
    ),
    (
        "+ blobs in one scene's desaturated colours (v7 default)",
        dict(background="blobs", props="forearm,objects", **_V7),
    ),
    ("+ ambient occlusion 0.8 (v8 default)", dict(background="blobs", props="forearm,objects")),
)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def run_once(samples: int, out: Path, generator, props: str = "none", seed: int = 0) -> float:
    """One full run with ``generator`` in place of the stage's, ``props`` (``RunConfig.props``) and run seed
    ``seed``; returns samples/s (wall, shards + manifest)."""
    from flows import stages
    from pipeline.config import RunConfig
    from sinks.run import RunFolder

    shutil.rmtree(out, ignore_errors=True)
    cfg = RunConfig(out=str(out), samples=samples, props=props, seed=seed)
    session = stages.current_session()  # main()'s: the hash excludes ``out``, so every row shares the stages
    session.pipeline(cfg).load().generator = generator
    folder = RunFolder(cfg)
    folder.open(resume=False)
    t = time.perf_counter()
    stages.run_shards(cfg, list(range(cfg.num_shards)), folder)
    manifest = stages.finalize(cfg, folder)
    return manifest["counts"]["written"] / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="the run seed of the table's rows (other samples)")
    ap.add_argument("--out-root", default="/tmp/composite_ablation")
    ap.add_argument("--rows", default="all", help="all, or comma-separated row numbers (0-based)")
    ap.add_argument("--before", default=None, help="a composite module file to time against the default")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--props-speed", action="store_true", help="time the default with --props none against forearm"
    )
    ap.add_argument(
        "--shadows-speed", action="store_true", help="time the default with shadows off against on"
    )
    ap.add_argument("--soft-speed", action="store_true", help="time the default against version 5's shadows")
    ap.add_argument("--blob-speed", action="store_true", help="time the default against random blob colours")
    ap.add_argument(
        "--occlusion-speed",
        action="store_true",
        help="time occlusion=0 (version 7) against the default (0.8)",
    )
    ap.add_argument(
        "--reference",
        default=None,
        help="an evaluated run of the same samples: each row is also compared with it hand by hand",
    )
    args = ap.parse_args()
    if args.reference:  # fail now, not after the first row's run
        from evaluation.compare import CompareError, eligible_hands, load_scores

        try:
            args.reference = eligible_hands(load_scores(args.reference))
        except CompareError as exc:
            sys.exit(f"error: {exc}")

    import logging

    logging.disable(logging.WARNING)
    from evaluation.run import EvalConfig, evaluate_run
    from flows import stages
    from generators.composite import CompositeConfig, CompositeGenerator

    with stages.Session():  # one pipeline for every row (run_once swaps its generator)
        _main(args, EvalConfig, evaluate_run, CompositeConfig, CompositeGenerator)


def _main(args, EvalConfig, evaluate_run, CompositeConfig, CompositeGenerator) -> None:
    root = Path(args.out_root)
    rows = ROWS if args.rows == "all" else [ROWS[int(i)] for i in args.rows.split(",") if i.strip()]
    table, paired = [], []
    for name, opts in rows:  # --rows "" skips the table (throughput only)
        out = root / _slug(name)
        opts = dict(opts)
        props = opts.pop("props", "none")
        rate = run_once(args.samples, out, CompositeGenerator(CompositeConfig(**opts)), props, args.seed)
        s = evaluate_run(EvalConfig(run=str(out), quiet=True)).summary
        table.append(
            (
                name,
                s["detected_hands"],
                s["eligible_hands"],
                s["detection_rate"],
                s["pck_01"],
                s["hand_conf"],
                rate,
            )
        )
        print(f"done: {name}", file=sys.stderr)
        if args.reference:
            from evaluation.compare import compare, eligible_hands, load_scores

            paired.append(f"{name}: {compare(args.reference, eligible_hands(load_scores(out))).line()}")
    print(f"\n{args.samples} samples per row (prior, stand-in hand, label captions, 512 px); out: {root}")
    print("| components | detected / eligible | detection rate | PCK@0.1 | Hand Conf. | samples/s |")
    print("|---|---|---|---|---|---|")
    for name, det, elig, rate, pck, conf, sps in table:
        print(f"| {name} | {det} / {elig} | {rate:.2f} | {pck:.2f} | {conf:.2f} | {sps:.1f} |")
    if paired:
        print("\nhand by hand against --reference (evaluation.compare):")
        print("\n".join(paired))

    if args.before:
        spec = importlib.util.spec_from_file_location("composite_before", args.before)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["composite_before"] = mod
        spec.loader.exec_module(mod)
        # the module before ran without props; the default now has forearms
        gens = {
            "before": (mod.CompositeGenerator(), "none"),
            "after": (CompositeGenerator(), "forearm,objects"),
        }
        rates: dict[str, list[float]] = {k: [] for k in gens}
        run_once(16, root / "warmup", *gens["after"])
        for _ in range(args.repeats):
            for k, (g, props) in gens.items():
                rates[k].append(run_once(args.samples, root / f"speed_{k}", g, props))
        b, a = max(rates["before"]), max(rates["after"])
        print(
            f"\nthroughput, {args.samples} samples, best of {args.repeats} (alternating): "
            f"before {b:.2f} samples/s, after {a:.2f} samples/s, after/before {a / b:.2f}"
        )
    if args.props_speed:
        gen = CompositeGenerator()
        rates = {"none": [], "forearm,objects": []}
        run_once(16, root / "warmup", gen, "forearm,objects")
        for _ in range(args.repeats):
            for k in rates:
                rates[k].append(run_once(args.samples, root / f"speed_props_{k}", gen, k))
        b, a = max(rates["none"]), max(rates["forearm,objects"])
        print(
            f"\nthroughput, {args.samples} samples, best of {args.repeats} (alternating): --props none "
            f"{b:.2f} samples/s, forearm,objects {a:.2f} samples/s, ratio {a / b:.2f}"
        )
    for flag, name, off, on in (
        (args.shadows_speed, "shadows", dict(shadows=False), {}),
        (args.soft_speed, "soft shadows", dict(penumbra=False, scatter=0.0), {}),
        (args.blob_speed, "blob colours", dict(blob_colours="random"), {}),
        (args.occlusion_speed, "occlusion", dict(occlusion=0.0), {}),
    ):
        if not flag:
            continue
        gens = {
            "off": CompositeGenerator(CompositeConfig(**off)),
            "on": CompositeGenerator(CompositeConfig(**on)),
        }
        rates = {k: [] for k in gens}
        run_once(16, root / "warmup", gens["on"], "forearm,objects")
        for _ in range(args.repeats):
            for k, g in gens.items():
                rates[k].append(
                    run_once(args.samples, root / f"speed_{_slug(name)}_{k}", g, "forearm,objects")
                )
        b, a = max(rates["off"]), max(rates["on"])
        print(
            f"\nthroughput, {args.samples} samples, best of {args.repeats} (alternating): {name} off "
            f"{b:.2f} samples/s, on {a:.2f} samples/s, ratio {a / b:.2f}"
        )


if __name__ == "__main__":
    main()
