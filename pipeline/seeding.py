"""Deterministic per-sample seeds: sample ``i`` of a run depends only on (run seed, i)."""

from __future__ import annotations

import zlib

import numpy as np

#: Per-sample seeds lie in ``[0, SEED_LIMIT)``: they fit a signed 64-bit integer (int64), so tools that read
#: ``label.json`` into int64 columns (Hugging Face ``datasets``, pandas, Arrow) accept every label.
SEED_LIMIT = 2**63


def sample_seed(run_seed: int, index: int) -> int:
    """Seed in ``[0, 2**63)`` for sample ``index`` of a run seeded with ``run_seed``.

    Two 32-bit words of numpy's ``SeedSequence(entropy=run_seed, spawn_key=(index,))`` make a 64-bit value
    whose top bit is cleared, so the seed fits int64 (63 bits of entropy).
    """
    if run_seed < 0 or index < 0:
        raise ValueError(f"run_seed and index must be >= 0, got {run_seed}, {index}")
    sequence = np.random.SeedSequence(entropy=int(run_seed), spawn_key=(int(index),))
    words = sequence.generate_state(2, np.uint32)
    return (int(words[0]) | (int(words[1]) << 32)) & (SEED_LIMIT - 1)


def sample_rng(seed: int) -> np.random.Generator:
    """The numpy generator every stage derives its randomness from, for one sample seed."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed))))


def stage_rng(seed: int, stage: str, attempt: int = 0) -> np.random.Generator:
    """An independent generator for one stage (e.g. 'caption', 'camera') of one sample: stages draw from
    their own streams, so changing one stage's use of randomness leaves the others' draws unchanged.

    ``attempt`` > 0 gives the stream of a regeneration (``hands generate --min-alignment``: try
    ``attempt + 1``), independent of the first try's; attempt 0 is the stream every sample starts with.
    """
    key = zlib.crc32(stage.encode("utf-8"))
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    spawn_key = (key,) if attempt == 0 else (key, int(attempt))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=spawn_key)))


def diffusion_seed(seed: int, attempt: int = 0) -> int:
    """The diffusion (latent noise) seed of one try of one sample, in ``[0, 2**62)``: draw ``attempt`` of
    the sample's ``'diffusion'`` stream, so each regeneration takes the next seed of the same stream."""
    rng = stage_rng(seed, "diffusion")
    for _ in range(attempt):
        rng.integers(2**62)
    return int(rng.integers(2**62))
