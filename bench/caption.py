"""Captioning throughput on this machine.

* label captions/s: ``LabelCaptioner.caption`` on a mix of one- and two-hand samples in the canonical gestures
  at random orientations (goal >= 5000/s);
* tagged prompts/s: ``HandTokenTagger.tag`` (NLTK POS tags -> CLIP token positions) on those captions, every
  one distinct in the measured set (goal >= 2000/s).

Usage: python bench/caption.py [--n 2000]
"""

from __future__ import annotations

import argparse
import time

import _benchpath  # noqa: F401 - first: fixes the import path
import numpy as np


def make_samples(n: int):
    from pipeline.gestures import GESTURES, gesture_pose
    from pipeline.hand_model import HandModel
    from pipeline.sample import Drawn, HandParams, Sample
    from pipeline.schema import Camera
    from pipeline.sources import pose_hands

    hm = HandModel()
    rng = np.random.default_rng(0)
    names = list(GESTURES)
    K = np.array([[500.0, 0, 255.5], [0, 500.0, 255.5], [0, 0, 1]])
    samples = []
    for i in range(n):
        sides = [("right",), ("left",), ("right", "left")][i % 3]
        params = {"right": None, "left": None}
        for s in sides:
            p = gesture_pose(names[int(rng.integers(len(names)))], hm.hands_mean[s], s, rng.normal(0, 1.0, 3))
            x = 0.0 if len(sides) == 1 else (0.1 if s == "right" else -0.1)
            params[s] = HandParams(p, np.zeros(10), np.array([x, 0.0, 0.5]))
        ht = "interacting" if len(sides) == 2 else sides[0]
        drawn = Drawn(i, i, f"b-{i:010d}", (512, 512), Camera(K), ht, params, {"dataset": "prior"})
        samples.append(Sample(drawn, pose_hands(drawn, hm)))
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    from captioning.labels import LabelCaptioner
    from pipeline.tagging import HandTokenTagger

    samples = make_samples(args.n)
    cap = LabelCaptioner()
    cap.caption(samples[:50])  # warm-up
    t = time.perf_counter()
    texts = [c.text for c in cap.caption(samples)]
    cap_rate = len(samples) / (time.perf_counter() - t)
    tagger = HandTokenTagger()
    for s in texts[:50]:
        tagger.tag(s)
    distinct = list(dict.fromkeys(texts))
    t = time.perf_counter()
    for s in distinct:
        tagger.tag(s)
    tag_rate = len(distinct) / (time.perf_counter() - t)
    print(f"label captions:  {cap_rate:8.0f} /s  ({len(samples)} samples, 1/3 two-hand)  goal >= 5000")
    print(f"tagged prompts:  {tag_rate:8.0f} /s  ({len(distinct)} distinct captions)      goal >= 2000")


if __name__ == "__main__":
    main()
