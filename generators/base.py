"""Generator interface: fill each sample's RGB ``image`` and the ``generator`` record that shaped it."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from pipeline.schema import Sample


class Generator(abc.ABC):
    """Turns rendered samples (mesh images, mask, depth, caption, hand tokens) into images.

    ``generate`` sets ``sample.image`` ((H, W, 3) uint8, the sample's image size) and ``sample.generator``
    (a dict with at least ``name``, ``version`` and ``seed``: every setting that shaped the image).
    """

    name = "base"
    version = 1

    @abc.abstractmethod
    def generate(self, samples: Sequence[Sample]) -> None:
        """Fill ``image`` and ``generator`` of every sample, in place."""

    def close(self) -> None:  # noqa: B027 - optional hook for generators that hold models
        """Release models and devices."""
