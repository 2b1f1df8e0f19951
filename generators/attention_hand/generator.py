"""``--generator attentionhand:PATH``: the AttentionHand pipeline as a pipeline stage over samples.

``--generator attentionhand:PATH[,guidance=DIR]`` parses into
``pipeline.stage_configs.AttentionHandGeneratorConfig``; ``AttentionHandGenerator`` generates each sample's
image, in generation batches of its own size that shrink on CUDA out-of-memory.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from generators.attention_hand.pipeline import AttentionHandError, TASConfig, normalize_views
from generators.base import Generator
from pipeline.sample import Generation, Sample, Skipped
from pipeline.seeding import diffusion_seed

logger = logging.getLogger(__name__)

_OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 resampled (bicubic) to ``size`` (H, W); the same array when it has that size."""
    if image.shape[:2] == tuple(size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def _release_cuda_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class AttentionHandGenerator(Generator):
    """Generates each sample's image from its caption, hand tokens and mesh images.

    Images are generated at the sample's image size (square, a multiple of the model's size step). TAS attends
    to the caption's hand tokens, which the pipeline tags with this generator's ``tokenizer`` (the model's
    own). The diffusion seed is drawn from the sample's own stream
    (``pipeline.seeding.diffusion_seed(seed, attempt)``: a regeneration takes the next seed of the stream), so
    a sample's noise does not depend on its batch.

    Views: ``("global",)`` (default) conditions on the global mesh image only, as the official inference
    does; with ``("global", "local")`` the local close-up is generated too (from ``mesh_local``, at the
    sample's image size) and put into ``sample.image_local`` ((L, L, 3) uint8, resampled to the size of
    ``mesh_local`` when that differs). The views are recorded in ``sample.generator["views"]``.

    Generation batches hold ``batch_size`` samples (the generation batch, set apart from the run's render
    batch). When the device runs out of memory, the batch is retried in halves (one warning line), and the
    smaller size is kept for later batches (``current_batch_size``); a single image that does not fit is
    ``Skipped`` as ``out_of_memory`` (a warning line saying what to change): it never fails a shard.
    """

    name = "attentionhand"
    version = 2  # 2: views (global only by default; version 1 always sampled the local view alongside)

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
        views: str | Sequence[str] = ("global",),
    ) -> None:
        """``path``: model folder (``models`` module doc); ``guidance``: a separate guidance folder (else
        ``path/guidance``); or ``pipeline``: an already built pipeline. ``batch_size``: samples per pipeline
        call (>= 1). ``views``: ``("global",)`` or ``("global", "local")`` (or ``"global,local"``); others
        raise ``AttentionHandError``.

        ``weights_id`` (recorded in every label) is the content hash of exactly the folders loaded
        (``models.model_weights_id``: 16 hex characters, cached per folder); ``"in-memory"`` for a pipeline
        given without ``path``.
        """
        from generators.attention_hand.models import load_pipeline, model_weights_id

        self.views = normalize_views(views)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise AttentionHandError(f"generation batch size must be a whole number >= 1, got {batch_size!r}")
        if pipeline is None:
            if path is None:
                raise ValueError("AttentionHandGenerator needs a model folder or a pipeline")
            pipeline = load_pipeline(path, guidance=guidance, device=device)
        self.pipe = pipeline
        self.steps, self.guidance_scale, self.conditioning_scale = steps, guidance_scale, conditioning_scale
        self.tas = tas or TASConfig()
        self.batch_size = batch_size
        self.current_batch_size = batch_size
        self.weights_id = model_weights_id(path, guidance) if path is not None else "in-memory"
        logger.debug("attentionhand: weights_id %s (%s, guidance %s)", self.weights_id, path, guidance)

    @classmethod
    def from_config(cls, config, run, device: str = "auto", **_) -> AttentionHandGenerator:
        """The generator of an ``AttentionHandGeneratorConfig`` (``generators.GENERATORS``) with the run's
        sampler settings (``steps``, ``guidance_scale``, ``conditioning_scale``, ``tas``,
        ``generation_batch_size`` (default: ``batch_size``), ``views``)."""
        return cls(
            config.path,
            guidance=config.guidance,
            steps=run.steps,
            guidance_scale=run.guidance_scale,
            conditioning_scale=run.conditioning_scale,
            tas=TASConfig(enabled=run.tas),
            batch_size=run.generation_batch_size or run.batch_size,
            device=device,
            views=run.views,
        )

    @property
    def tokenizer(self):
        """The model's CLIP tokenizer: captions are tagged with it."""
        return self.pipe.tokenizer

    def generate(self, samples: Sequence[Sample]) -> list[Generation]:
        samples = list(samples)
        out: list[Generation] = []
        while len(out) < len(samples):  # ``current_batch_size`` is re-read before each batch: it may shrink
            out += self._generate_fitting(samples[len(out) : len(out) + self.current_batch_size])
        return out

    def _generate_fitting(self, batch: list[Sample]) -> list[Generation]:
        """Generate ``batch``; when the device runs out of memory, retry it in halves (keeping that size)."""
        try:
            return self._batch(batch)
        except _OOM_ERRORS:
            if len(batch) == 1:  # nothing smaller to try: this sample is skipped, the shard goes on
                _release_cuda_memory()
                s = batch[0]
                H, W = s.image_size
                fixes = ["a smaller --image-size"]
                fixes += ["--views global"] if "local" in self.views else []
                fixes += ["--no-tas"] if self.tas.enabled else []
                device = getattr(self.pipe, "device", "the device")
                detail = (
                    f"out of memory on {device} generating one {H}x{W} image (views {','.join(self.views)}); "
                    f"try {', '.join(fixes)}, or a device with more free memory"
                )
                logger.warning("attentionhand: skipped %s: %s", s.key, detail)
                return [Skipped("out_of_memory", detail)]
        # outside the except block, so the failed call's tensors (held by the traceback) can be freed
        _release_cuda_memory()
        half = (len(batch) + 1) // 2
        self.current_batch_size = min(self.current_batch_size, half)
        logger.warning(
            "attentionhand: out of memory generating %d samples at once (from %s); "
            "retrying in batches of %d, kept for later batches",
            len(batch),
            batch[0].key,
            self.current_batch_size,
        )
        return self.generate(batch)

    def _batch(self, batch: list[Sample]) -> list[Generation]:
        sizes = {tuple(s.image_size) for s in batch}
        if len(sizes) != 1:
            raise ValueError(f"a generation batch needs one image size, got {sorted(sizes)}")
        H, W = sizes.pop()
        if H != W:
            raise AttentionHandError(
                f"AttentionHand generates square images; got {H}x{W} (letterbox the source first)"
            )
        local = "local" in self.views
        for s in batch:
            if s.caption is None or s.mesh_image is None or (local and s.mesh_local is None):
                need = "caption and mesh images" if local else "caption and mesh image"
                raise ValueError(f"{s.key}: {need} must be filled in before generation")
        seeds = [diffusion_seed(s.seed, s.attempt) for s in batch]
        out = self.pipe(
            [s.caption for s in batch],
            np.stack([s.mesh_image for s in batch]),
            np.stack([s.mesh_local for s in batch]) if local else None,
            [list(s.hand_token_indices) for s in batch],
            seeds,
            height=H,
            width=W,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            conditioning_scale=self.conditioning_scale,
            tas=self.tas,
            views=self.views,
            progress=False,
        )
        local_images = out.local_images if local else [None] * len(batch)
        record = {
            "name": self.name,
            "version": self.version,
            "weights_id": self.weights_id,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "conditioning_scale": self.conditioning_scale,
            "scheduler": type(self.pipe.scheduler).__name__,
            "tas": self.tas.to_json(),
            "views": list(self.views),
        }
        return [
            Generation(
                image=img,
                record={**record, "seed": seed, "dtype": str(self.pipe.unet.dtype)},
                image_local=None if img_local is None else _resized(img_local, s.mesh_local.shape[:2]),
            )
            for s, img, img_local, seed in zip(batch, out.images, local_images, seeds, strict=True)
        ]
