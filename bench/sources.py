"""Pose source throughput and the InterHand2.6M index build, on this machine.

* samples/s for each source, including the MANO forward pass (``pose_hands``): the prior, and the tiny
  InterHand2.6M / Re:InterHand fixtures of the tests (a real dataset reads the same way, from its index);
* index build time and peak memory (RSS of a fresh process) for a synthetic InterHand-format split of
  ``--frames`` frames (default 100k; one camera per frame), written in the exact file formats.

Usage: python bench/sources.py [--frames 100000] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _benchpath  # noqa: F401 - first: fixes the import path
import numpy as np


def rate(src, hm, n: int) -> float:
    from pipeline.sources import SkipSample, pose_hands

    for i in range(5):  # warm-up (a fixture sample may be a deliberate skip)
        try:
            pose_hands(src.sample(i), hm)
        except SkipSample:
            pass
    t = time.perf_counter()
    done = 0
    for i in range(n):
        try:
            pose_hands(src.sample(i), hm)
            done += 1
        except SkipSample:
            pass
    return done / (time.perf_counter() - t)


def write_synthetic_split(root: Path, frames: int, cameras: int = 1) -> None:
    """InterHand-format files for ``frames`` frames (1 capture per 1000 frames) seen by ``cameras`` cameras
    each, streamed to disk."""
    rng = np.random.default_rng(0)
    ann = root / "annotations" / "train"
    ann.mkdir(parents=True)
    caps = range((frames + 999) // 1000)
    num = lambda a: "[" + ",".join(f"{x:.5f}" for x in a) + "]"  # noqa: E731
    with open(ann / "InterHand2.6M_train_MANO_NeuralAnnot.json", "w") as f:
        f.write("{")
        for c in caps:
            f.write(("," if c else "") + f'"{c}": {{')
            for k in range(1000):

                def hand():
                    pose, shape, trans = rng.normal(0, 0.3, 48), rng.normal(0, 1, 10), rng.normal(0, 0.1, 3)
                    return f'{{"pose": {num(pose)}, "shape": {num(shape)}, "trans": {num(trans)}}}'

                f.write(("," if k else "") + f'"{k}": {{"right": {hand()}, "left": {hand()}}}')
            f.write("}")
        f.write("}")
    with open(ann / "InterHand2.6M_train_joint_3d.json", "w") as f:
        f.write("{")
        for c in caps:
            f.write(("," if c else "") + f'"{c}": {{')
            for k in range(1000):
                wc = num(rng.normal(0, 100, 126))
                f.write(
                    ("," if k else "") + f'"{k}": {{"world_coord": {wc}, "joint_valid": {num(np.ones(42))}, '
                    f'"hand_type": "interacting", "hand_type_valid": 1}}'
                )
            f.write("}")
        f.write("}")
    ids = [str(400262 + j) for j in range(cameras)]
    cams = {
        str(c): {
            "campos": {i: [0, 0, -1000] for i in ids},
            "camrot": {i: np.eye(3).tolist() for i in ids},
            "focal": {i: [1200, 1200] for i in ids},
            "princpt": {i: [166, 255] for i in ids},
        }
        for c in caps
    }
    (ann / "InterHand2.6M_train_camera.json").write_text(json.dumps(cams))
    with open(ann / "InterHand2.6M_train_data.json", "w") as f:
        f.write('{"images": [')
        i = 0
        for c in caps:
            for k in range(1000):
                for cam in ids:
                    f.write(
                        ("," if i else "")
                        + json.dumps(
                            {
                                "id": i,
                                "file_name": f"Capture{c}/seq/cam{cam}/image{k:05d}.jpg",
                                "width": 334,
                                "height": 512,
                                "capture": c,
                                "seq_name": "seq",
                                "camera": cam,
                                "frame_idx": k,
                            }
                        )
                    )
                    i += 1
        f.write('], "annotations": [')
        for j in range(i):
            f.write(
                ("," if j else "")
                + f'{{"id": {j}, "image_id": {j}, "hand_type": "interacting", "hand_type_valid": 1}}'
            )
        f.write("]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--cameras", type=int, default=1, help="cameras per frame in the synthetic split")
    ap.add_argument(
        "root", nargs="?", help=argparse.SUPPRESS
    )  # internal: the split the child process indexes
    args = ap.parse_args()
    if args.frames < 0:  # child: build the index and report time and peak memory
        t = time.perf_counter()
        from pipeline.sources.interhand import build_index

        idx = build_index(Path(args.root), "train")
        print(
            json.dumps(
                {
                    "seconds": time.perf_counter() - t,
                    "images": int(len(idx["capture"])),
                    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )
        )
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipeline.hand_model import HandModel
    from pipeline.sources import make_source
    from tests.source_fixtures import write_interhand, write_reinterhand

    hm = HandModel()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        write_interhand(d / "ih", hm)
        write_reinterhand(d / "rih", hm)
        rows = [
            ("prior", rate(make_source("prior", hm), hm, args.n)),
            ("interhand (fixture)", rate(make_source(f"interhand:{d / 'ih'}", hm, cache_dir=d), hm, args.n)),
            ("reinterhand (fixture)", rate(make_source(f"reinterhand:{d / 'rih'}", hm), hm, args.n)),
        ]
        for name, r in rows:
            print(f"{name:24s} {r:8.1f} samples/s (with the MANO forward)")
        t = time.perf_counter()
        write_synthetic_split(d / "big", args.frames, args.cameras)
        size = sum(p.stat().st_size for p in (d / "big").rglob("*.json")) / 1e6
        print(
            f"synthetic split: {args.frames} frames x {args.cameras} cameras, {size:.0f} MB of JSON "
            f"(written in {time.perf_counter() - t:.0f} s)"
        )
        out = subprocess.run(
            [sys.executable, __file__, "--frames", "-1", str(d / "big")],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"index build: {r['seconds']:.1f} s for {r['images']} images, peak RSS {r['peak_mb']:.0f} MB "
            "(goal < 2048 MB)"
        )


if __name__ == "__main__":
    main()
