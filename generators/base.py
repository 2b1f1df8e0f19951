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


def parse_options(
    spec: str, options: Sequence[str], known: Sequence[str], error: type[Exception], usage: str
) -> dict[str, str]:
    """The ``NAME=VALUE`` options of a ``--generator`` spec, already split at the commas (``options``), names
    and values stripped of blanks. Raises ``error`` (one line, naming ``spec``) for an empty option (a stray
    comma), one without ``=``, an unknown name (not in ``known``), a repeated name, or an empty value."""
    values: dict[str, str] = {}
    names = ", ".join(known)
    for opt in (o.strip() for o in options):
        if not opt:
            raise error(f"--generator {spec!r}: empty option (a stray comma?); expected {usage}")
        if "=" not in opt:
            raise error(
                f"--generator {spec!r}: option {opt!r} needs the form NAME=VALUE (known options: {names})"
            )
        name, value = (x.strip() for x in opt.split("=", 1))
        if name not in known:
            raise error(f"--generator {spec!r}: unknown option {name!r} (known options: {names})")
        if name in values:
            raise error(f"--generator {spec!r}: option {name!r} is given twice")
        if not value:
            raise error(f"--generator {spec!r}: option {name!r} has no value")
        values[name] = value
    return values
