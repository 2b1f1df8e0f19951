"""Turn a vision-language model's answer into a text-to-image prompt of at most 77 CLIP tokens."""

from __future__ import annotations

import re
from collections.abc import Callable

_BOILERPLATE = re.compile(
    r"^\s*(?:(?:in|within) (?:the|this) (?:image|picture|photo(?:graph)?|scene),?\s*"
    r"|(?:the|this) (?:image|picture|photo(?:graph)?|scene) (?:shows|depicts|features|captures|displays)\s*"
    r"|(?:sure|certainly)[,!.]\s*(?:here is[^:]*:)?\s*)",
    re.IGNORECASE,
)
_MARKDOWN = re.compile(r"[*_#`>]+|^\s*[-•]\s*", re.MULTILINE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def clean_caption(text: str, count_tokens: Callable[[str], int], max_tokens: int = 77) -> str:
    """First sentence(s) of ``text`` without boilerplate, fitting ``max_tokens`` (counted with
    ``count_tokens``, which includes the start and end tokens). Returns '' when nothing usable is left."""
    if not isinstance(text, str):
        return ""
    t = _MARKDOWN.sub(" ", text)
    t = re.sub(r"\s+", " ", t).strip()
    while True:  # "Sure! In the image, ..." -> strip repeatedly
        stripped = _BOILERPLATE.sub("", t, count=1).strip()
        if stripped == t:
            break
        t = stripped
    t = t.strip(" ,;:")
    if not re.search(r"[A-Za-z]", t):
        return ""
    t = t[0].upper() + t[1:]
    out = ""
    for sentence in _SENTENCE.split(t):
        candidate = f"{out} {sentence}".strip()
        if count_tokens(candidate) > max_tokens:
            break
        out = candidate
    if not out:  # even the first sentence is too long: cut it at a word boundary
        words = t.split(" ")
        lo, hi = 0, len(words)
        while lo < hi:  # longest prefix that fits, leaving room for the final period
            mid = (lo + hi + 1) // 2
            if count_tokens(" ".join(words[:mid]).rstrip(",;:") + ".") <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        out = " ".join(words[:lo]).rstrip(",;:")
    if out and out[-1] not in ".!?":
        out += "."
    return out
