"""Captioner interface: a batch of samples in, one caption per sample out."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from pipeline.sample import Caption, Sample


class Captioner(abc.ABC):
    """Turns samples (posed and rendered, with their exact labels and, optionally, a source photo) into
    captions (``pipeline.sample.Caption``, untagged: the pipeline tags them with the generator's
    tokenizer)."""

    name = "base"
    prompt_version = "0"

    @abc.abstractmethod
    def caption(self, samples: Sequence[Sample]) -> list[Caption]:
        """One ``Caption`` per sample, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook for captioners that hold a model
        """Release models and devices."""
