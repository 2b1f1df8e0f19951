"""The ``real`` generator of training tuples (``hands prepare``): the record's image is the dataset's own
photo.

It does not synthesise anything: ``image`` is the letterboxed source image (``pipeline.sources.letterbox``
made it, the sample's ``photo``) and ``image_local`` is that image's crop box resampled exactly like the local
mesh image, so the RGB and mesh pairs align pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

from generators.base import Generator
from pipeline.imaging import crop_resample
from pipeline.sample import Generation, Sample


class RealImageGenerator(Generator):
    """Fills ``image`` (H, W, 3) uint8 with the letterboxed source image and ``image_local`` (L, L, 3) uint8
    with its ``crop_box`` resampled to the local mesh image's size."""

    name = "real"
    version = 1

    @classmethod
    def from_config(cls, config=None, **_) -> RealImageGenerator:
        """``generators.GENERATORS``' factory (``RealImageGeneratorConfig``: no settings)."""
        return cls()

    def generate(self, samples: Sequence[Sample]) -> list[Generation]:
        out = []
        for s in samples:
            img = s.photo
            if img is None or img.shape[:2] != tuple(s.image_size):
                raise ValueError(
                    f"{s.key}: the real image must be loaded and letterboxed to {tuple(s.image_size)} first"
                )
            if s.crop_box is None or s.mesh_local is None:
                raise ValueError(f"{s.key}: render the sample before taking its local crop")
            crop = crop_resample(img, s.crop_box, s.mesh_local.shape[0])
            out.append(Generation(img, {"name": self.name, "version": self.version, "seed": s.seed}, crop))
        return out
