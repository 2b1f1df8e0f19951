"""``--generator attentionhand:PATH``: the AttentionHand pipeline as a pipeline stage over samples."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from generators.attention_hand.pipeline import TASConfig
from generators.base import Generator
from pipeline.schema import Sample
from pipeline.seeding import stage_rng

logger = logging.getLogger(__name__)


class AttentionHandGenerator(Generator):
    """Generates each sample's image from its caption, hand tokens and global / local mesh images.

    Images are generated at the sample's image size (square, a multiple of the model's size step). The hand
    tokens are recomputed with the model's own tokenizer (``captioning.tagging``), so TAS attends to the right
    positions whatever tokenizer captioned the sample; the sample's ``hand_token_indices`` are updated to match.
    The diffusion seed is drawn from the sample's own stream (``stage_rng(seed, 'diffusion')``).
    """

    name = "attentionhand"
    version = 1

    def __init__(
        self,
        path: str | Path | None = None,
        pipeline=None,
        guidance: str | Path | None = None,
        steps: int = 20,
        guidance_scale: float = 7.5,
        conditioning_scale: float = 1.0,
        tas: TASConfig | None = None,
        batch_size: int = 4,
        device: str = "auto",
    ) -> None:
        """``path``: model folder (``models`` module doc); ``guidance``: a separate guidance folder (else
        ``path/guidance``); or ``pipeline``: an already built pipeline.

        ``weights_id`` (recorded in every label) is the content hash of exactly the folders loaded
        (``models.model_weights_id``: 16 hex characters, cached per folder); ``"in-memory"`` for a pipeline
        given without ``path``.
        """
        from captioning.tagging import HandTokenTagger
        from generators.attention_hand.models import load_pipeline, model_weights_id

        if pipeline is None:
            if path is None:
                raise ValueError("AttentionHandGenerator needs a model folder or a pipeline")
            pipeline = load_pipeline(path, guidance=guidance, device=device)
        self.pipe = pipeline
        self.steps, self.guidance_scale, self.conditioning_scale = steps, guidance_scale, conditioning_scale
        self.tas = tas or TASConfig()
        self.batch_size = batch_size
        self.tagger = HandTokenTagger(tokenizer=self.pipe.tokenizer)
        self.weights_id = model_weights_id(path, guidance) if path is not None else "in-memory"
        logger.debug("attentionhand: weights_id %s (%s, guidance %s)", self.weights_id, path, guidance)

    def generate(self, samples: Sequence[Sample]) -> None:
        for i in range(0, len(samples), self.batch_size):
            self._batch(list(samples[i : i + self.batch_size]))

    def _batch(self, batch: list[Sample]) -> None:
        sizes = {tuple(s.image_size) for s in batch}
        if len(sizes) != 1:
            raise ValueError(f"a generation batch needs one image size, got {sorted(sizes)}")
        H, W = sizes.pop()
        if H != W:
            raise ValueError(
                f"AttentionHand generates square images; got {H}x{W} (letterbox the source first)"
            )
        for s in batch:
            if s.caption is None or s.mesh_image is None or s.mesh_local is None:
                raise ValueError(f"{s.key}: caption and mesh images must be filled in before generation")
            s.hand_token_indices = tuple(self.tagger.tag(s.caption).hand_token_indices)
        seeds = [int(stage_rng(s.seed, "diffusion").integers(2**62)) for s in batch]
        out = self.pipe(
            [s.caption for s in batch],
            np.stack([s.mesh_image for s in batch]),
            np.stack([s.mesh_local for s in batch]),
            [list(s.hand_token_indices) for s in batch],
            seeds,
            height=H,
            width=W,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            conditioning_scale=self.conditioning_scale,
            tas=self.tas,
            progress=False,
        )
        for s, img, seed in zip(batch, out.images, seeds, strict=True):
            s.image = img
            s.generator = {
                "name": self.name,
                "version": self.version,
                "weights_id": self.weights_id,
                "steps": self.steps,
                "guidance_scale": self.guidance_scale,
                "conditioning_scale": self.conditioning_scale,
                "scheduler": type(self.pipe.scheduler).__name__,
                "tas": self.tas.to_json(),
                "seed": seed,
                "dtype": str(self.pipe.unet.dtype),
            }
