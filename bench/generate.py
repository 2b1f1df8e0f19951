"""Generator throughput on this machine (CPU), measured side by side in one run.

* the tiny AttentionHand pipeline (64x64, batch 2): seconds per denoising step with TAS on for every step vs
  TAS off, and their ratio (goal on a GPU with SD 1.5-sized components: TAS on <= 1.5x TAS off);
* the composite generator: samples/s at 512x512 on prior samples (rendering excluded).

Usage: python bench/generate.py [--steps 10] [--n 16]
"""

from __future__ import annotations

import argparse
import time

import _benchpath  # noqa: F401 - first: fixes the import path
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from generators.attention_hand.models import tiny_components
    from generators.attention_hand.pipeline import AttentionHandPipeline, TASConfig
    from pipeline.tagging import HandTokenTagger

    pipe = AttentionHandPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    prompts = ["A man holding a cup with his right hand.", "A woman pointing with her left index finger."]
    idx = [HandTokenTagger(tokenizer=pipe.tokenizer).tag(p).hand_token_indices for p in prompts]
    rng = np.random.default_rng(0)
    mesh = (rng.random((2, 64, 64, 3)) * 255).astype(np.uint8)

    def per_step(tas: TASConfig) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            pipe(
                prompts,
                mesh,
                mesh,
                idx,
                [1, 2],
                height=64,
                width=64,
                num_inference_steps=args.steps,
                tas=tas,
                progress=False,
            )
            best = min(best, (time.perf_counter() - t) / args.steps)
        return best

    per_step(TASConfig(enabled=False))  # warm-up
    on, off = per_step(TASConfig(steps_fraction=1.0)), per_step(TASConfig(enabled=False))
    print(
        f"tiny pipeline, batch 2 (x2 branches), 64x64: TAS on {on * 1000:.1f} ms/step, "
        f"off {off * 1000:.1f} ms/step, ratio {on / off:.2f}"
    )

    from generators.composite import CompositeGenerator
    from pipeline.hand_model import HandModel
    from tests.test_generators import _rendered_samples

    samples = _rendered_samples(HandModel(), n=args.n, size=512, seed=3)
    gen = CompositeGenerator()
    gen.generate(samples[:2])
    t = time.perf_counter()
    gen.generate(samples)
    print(f"composite generator, 512x512: {len(samples) / (time.perf_counter() - t):.1f} samples/s")


if __name__ == "__main__":
    main()
