"""argparse value types of the ``hands`` command line: each refuses a bad value with one line."""

from __future__ import annotations

import argparse


def int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum``; ``what`` names it in the error."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


positive_int = int_at_least(1, "a positive integer")
count = int_at_least(0, "an integer >= 0")


def pixels(text: str) -> float:
    """An argparse type: a number of pixels >= 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, got {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of pixels >= 0, got {text!r}")
    return v


def number_in(lo: float, hi: float | None, what: str):
    """An argparse type: a finite number in ``[lo, hi]`` (``hi`` None: no upper bound); ``what`` names it."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (v >= lo and (hi is None or v <= hi)) or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


unit_interval = number_in(0.0, 1.0, "a number in [0, 1]")
non_negative = number_in(0.0, None, "a number >= 0")


def device(text: str) -> str:
    """An argparse type: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (one GPU of a multi-GPU node)."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text
