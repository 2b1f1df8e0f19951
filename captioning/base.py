"""Captioner interface: a batch of samples in, one caption per sample out."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

from pipeline.schema import Sample


@dataclasses.dataclass(frozen=True)
class Caption:
    """A caption and what made it: ``captioner`` (name) and ``prompt_version``; ``meta`` holds extras
    (e.g. the raw model answer, or why a fallback was used)."""

    text: str
    captioner: str
    prompt_version: str
    meta: dict = dataclasses.field(default_factory=dict)

    def record(self) -> dict:
        """What the label keeps about how the caption was made."""
        return {"captioner": self.captioner, "prompt_version": self.prompt_version, **self.meta}


class Captioner(abc.ABC):
    """Turns samples (with their exact labels and, optionally, a source RGB image) into captions."""

    name = "base"
    prompt_version = "0"

    @abc.abstractmethod
    def caption(self, samples: Sequence[Sample]) -> list[Caption]:
        """One ``Caption`` per sample, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook for captioners that hold a model
        """Release models and devices."""
