"""Deterministic per-sample seeds: sample ``i`` of a run depends only on (run seed, i)."""

from __future__ import annotations

import zlib

import numpy as np


def sample_seed(run_seed: int, index: int) -> int:
    """64-bit seed for sample ``index`` of a run seeded with ``run_seed`` (numpy ``SeedSequence``)."""
    if run_seed < 0 or index < 0:
        raise ValueError(f"run_seed and index must be >= 0, got {run_seed}, {index}")
    words = np.random.SeedSequence(entropy=int(run_seed), spawn_key=(int(index),)).generate_state(2, np.uint32)
    return int(words[0]) | (int(words[1]) << 32)


def sample_rng(seed: int) -> np.random.Generator:
    """The numpy generator every stage derives its randomness from, for one sample seed."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed))))


def stage_rng(seed: int, stage: str) -> np.random.Generator:
    """An independent generator for one stage (e.g. 'caption', 'camera') of one sample: stages draw from
    their own streams, so changing one stage's use of randomness leaves the others' draws unchanged."""
    key = zlib.crc32(stage.encode("utf-8"))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(key,))))
