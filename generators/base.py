"""Generator interface: an image per sample, and the record of what shaped it."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from pipeline.sample import Generation, Sample, Skipped


class Generator(abc.ABC):
    """Turns rendered, captioned samples (mesh images, mask, depth, caption, hand tokens) into images.

    ``generate`` returns one ``pipeline.sample.Generation`` per sample: the image ((H, W, 3) uint8, the
    sample's image size) and the label's ``generator`` record (at least ``name``, ``version`` and ``seed``:
    every setting that shaped the image); or a ``pipeline.sample.Skipped`` for a sample it cannot make
    (counted by reason, the shard goes on). A generator draws from the streams of the sample's try
    (``Sample.attempt``).

    ``tokenizer``: the CLIP tokenizer whose token positions the generator attends to (captions are tagged with
    it when the pipeline is built); None for generators that read no text (the default CLIP vocabulary is
    used).
    """

    name = "base"
    version = 1
    tokenizer = None

    @abc.abstractmethod
    def generate(self, samples: Sequence[Sample]) -> list[Generation | Skipped]:
        """One ``Generation`` (or ``Skipped``) per sample, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook for generators that hold models
        """Release models and devices."""
