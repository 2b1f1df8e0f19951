"""Scorers: how well a generated image follows its label, as one number per hand and per sample.

A ``Scorer`` takes an image (RGB uint8 (H, W, 3)) and its label (a ``pipeline.schema.Label``, or a ``Sample``
whose hands are filled: anything with ``hands[side]`` holding ``joints_2d``, ``joints_visible``, ``bbox`` and
``joints_3d``) and returns a ``ScoreResult``: per-hand scores and the sample's ``alignment`` in [0, 1],
higher is better, or ``None`` when no hand of the sample can be judged. ``--min-alignment A`` (``hands
generate``) keeps a sample when ``result.passes(A)``: its alignment is at least A, or it has no judged hand.

Shipped:

* ``mediapipe`` (``MediaPipeScorer``): MediaPipe Hands 2D keypoints, matched to the labelled hands by
  keypoints. An eligible hand (``evaluation.metrics.eligible``: >= 15 visible joints and a box of >= 48 px by
  default) scores its PCK@0.1 when detected and 0.0 when not; the sample scores the minimum over its eligible
  hands. Spec options: ``mediapipe:min_visible_joints=15,min_box_px=48,gate=0.5,min_detection_confidence=0.5,
  min_presence_confidence=0.5,model_complexity=1``.

The hook for a 3D estimator with local weights (HaMeR- or WiLoR-class): subclass ``Estimator3DScorer`` and
implement ``estimate(image, label)`` -> side -> (21, 3) joints in metres, in our joint order
(``pipeline.kinematics.JOINT_NAMES``), in any frame (only root-relative and Procrustes-aligned errors are
used). The scorer then reports root-relative MPJPE and PA-MPJPE in mm per hand (HandBooster's criterion)
and an alignment of ``evaluation.metrics.handbooster_alignment`` (>= 0.5 exactly when MPJPE <= 25 mm and
PA-MPJPE <= 10 mm). Make it available by name with ``register_scorer("hamer", factory)``, from your own
package through the entry-point group ``handgen.scorers`` (``hamer = mypkg.scorers:make_hamer``), so that
``make_scorer("hamer:/models/hamer")`` builds it; ``factory(arg)`` gets the text after the first ':'.
No 3D estimator ships here: none has weights we can distribute or download.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np

from evaluation import metrics
from evaluation.detector import Detection, HandDetector
from pipeline.errors import HandgenError
from pipeline.registry import Registry, RegistryError
from pipeline.schema import SIDES
from pipeline.stage_configs import ScorerConfig, SpecError

ENTRY_POINT_GROUP = "handgen.scorers"


class ScorerError(HandgenError, ValueError):
    """An unknown scorer name or a bad scorer option; one line."""


@dataclasses.dataclass
class ScoreResult:
    """A scorer's verdict on one sample.

    hands: side -> per-hand scores (present hands only; values are plain floats, ints, bools, strings or
        None, so they go into JSON and parquet as they are). Every hand has ``eligible`` and ``alignment``
        (float in [0, 1], or None for a hand that is not judged).
    alignment: the sample's score in [0, 1] (higher is better), None when no hand is judged.
    detections: what the scorer found (``evaluation.detector.Detection`` for the MediaPipe scorer), for
        drawing; not part of ``quality()``.
    """

    scorer: str
    hands: dict[str, dict]
    alignment: float | None
    detections: list = dataclasses.field(default_factory=list)

    def passes(self, min_alignment: float) -> bool:
        """True when the sample's alignment is at least ``min_alignment``, or when no hand is judged."""
        return self.alignment is None or self.alignment >= min_alignment

    def quality(self) -> dict:
        """A JSON-ready summary for a label's ``quality`` field: scorer, alignment, per-hand scores."""
        return {"scorer": self.scorer, "alignment": _clean(self.alignment), "hands": _clean(self.hands)}


def _clean(x):
    """JSON-safe copy: NaN -> None, numpy scalars -> Python numbers, floats rounded to 6 digits."""
    if isinstance(x, Mapping):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else round(float(x), 6)
    return x


class Scorer(abc.ABC):
    """Scores images against their labels; holds its models, so build one per process and ``close()`` it."""

    name: str = "scorer"

    @abc.abstractmethod
    def score(self, image: np.ndarray, label) -> ScoreResult:
        """Score one RGB uint8 image against its label (module doc)."""

    @property
    def settings(self) -> dict:
        """What the scorer was built with (goes into reports)."""
        return {"scorer": self.name}

    def close(self) -> None:  # noqa: B027 (scorers without resources need not override it)
        """Release models and threads (idempotent)."""

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _hand_label(label, side: str):
    return label.hands.get(side) if label is not None else None


class MediaPipeScorer(Scorer):
    """2D alignment with MediaPipe Hands (module doc); owns one ``HandDetector``."""

    name = "mediapipe"

    def __init__(
        self,
        min_visible_joints: int = metrics.MIN_VISIBLE_JOINTS,
        min_box_px: float = metrics.MIN_BOX_PX,
        gate: float = metrics.MATCH_GATE,
        detector: HandDetector | None = None,
        **detector_options,
    ) -> None:
        if int(min_visible_joints) < 1 or int(min_visible_joints) > 21:
            raise ScorerError(f"min_visible_joints must be in [1, 21], got {min_visible_joints!r}")
        if float(min_box_px) < 0 or not float(gate) > 0:
            raise ScorerError(f"min_box_px must be >= 0 and gate > 0, got {min_box_px!r} and {gate!r}")
        self.min_visible_joints = int(min_visible_joints)
        self.min_box_px = float(min_box_px)
        self.gate = float(gate)
        self._own = detector is None
        try:
            self.detector = detector if detector is not None else HandDetector(**detector_options)
        except TypeError as exc:
            raise ScorerError(f"bad mediapipe scorer option: {exc}") from exc

    @property
    def settings(self) -> dict:
        return {
            "scorer": self.name,
            "min_visible_joints": self.min_visible_joints,
            "min_box_px": self.min_box_px,
            "gate": self.gate,
            **self.detector.settings,
        }

    def score(self, image: np.ndarray, label) -> ScoreResult:
        return self.score_detections(self.detector.detect(image), label)

    def score_detections(self, detections: list[Detection], label) -> ScoreResult:
        """The scores for given detections (the detector already ran): matching, metrics, alignment."""
        present = {s: h for s in SIDES if (h := _hand_label(label, s)) is not None}
        labels = {
            s: (np.asarray(h.joints_2d, float), np.asarray(h.joints_visible, bool), np.asarray(h.bbox, float))
            for s, h in present.items()
        }
        matches = metrics.match_hands(labels, detections, self.gate)
        hands = {}
        for s, (j2d, vis, bbox) in labels.items():
            ok = metrics.eligible(vis, bbox, self.min_visible_joints, self.min_box_px)
            row = {
                "visible_joints": int(vis.sum()),
                "box_px": metrics.box_size(bbox),
                "eligible": ok,
                "detected": s in matches,
                "detection": None,
                "palm_score": math.nan,
                "handedness": None,
                "handedness_score": math.nan,
                "handedness_agrees": None,
                "error_norm": math.nan,
                "pck_005": math.nan,
                "pck_01": math.nan,
                "mse_2d": math.nan,
            }
            if s in matches:
                k, _ = matches[s]
                d = detections[k]
                row.update(metrics.hand_metrics(d.keypoints, j2d, vis, bbox))
                row.update(
                    detection=k,
                    palm_score=d.palm_score,
                    handedness=d.handedness,
                    handedness_score=d.handedness_score,
                    handedness_agrees=d.handedness == s,
                )
            row["alignment"] = metrics.hand_alignment(ok, row["detected"], row["pck_01"])
            hands[s] = row
        alignment = metrics.sample_alignment([h["alignment"] for h in hands.values()])
        return ScoreResult(self.name, hands, alignment, list(detections))

    def close(self) -> None:
        if self._own:
            self.detector.close()


class Estimator3DScorer(Scorer):
    """Base of 3D scorers (module doc): subclasses implement ``estimate``; this class does the maths.

    max_mpjpe_mm / max_pa_mpjpe_mm: HandBooster's thresholds (25 mm, 10 mm), the 0.5 point of the alignment.
    Hands are judged when present in the label and returned by ``estimate``; a present hand that the estimator
    does not return scores 0.0.
    """

    name = "estimator3d"

    def __init__(
        self,
        max_mpjpe_mm: float = metrics.HANDBOOSTER_MPJPE_MM,
        max_pa_mpjpe_mm: float = metrics.HANDBOOSTER_PA_MPJPE_MM,
    ) -> None:
        self.max_mpjpe_mm = float(max_mpjpe_mm)
        self.max_pa_mpjpe_mm = float(max_pa_mpjpe_mm)

    @abc.abstractmethod
    def estimate(self, image: np.ndarray, label) -> dict[str, np.ndarray]:
        """side -> (21, 3) estimated joints, metres, our joint order, for the hands found in ``image``."""

    def score(self, image: np.ndarray, label) -> ScoreResult:
        est = self.estimate(image, label)
        hands = {}
        for s in SIDES:
            h = _hand_label(label, s)
            if h is None:
                continue
            row = {"eligible": True, "detected": s in est, "mpjpe_mm": math.nan, "pa_mpjpe_mm": math.nan}
            if s in est:
                pred, gt = np.asarray(est[s], float), np.asarray(h.joints_3d, float)
                row["mpjpe_mm"] = 1000.0 * metrics.mpjpe(pred, gt)
                row["pa_mpjpe_mm"] = 1000.0 * metrics.pa_mpjpe(pred, gt)
                row["alignment"] = metrics.handbooster_alignment(
                    row["mpjpe_mm"], row["pa_mpjpe_mm"], self.max_mpjpe_mm, self.max_pa_mpjpe_mm
                )
            else:
                row["alignment"] = 0.0
            hands[s] = row
        return ScoreResult(
            self.name, hands, metrics.sample_alignment([h["alignment"] for h in hands.values()])
        )


# -- registry ------------------------------------------------------------------------------------------------
Factory = Callable[[str | None], Scorer]
SCORERS = Registry("scorer", {}, entry_points=ENTRY_POINT_GROUP)
"""Alignment scorers by name; a factory takes the text after ``NAME:`` (None without one)."""


def register_scorer(name: str, factory: Factory) -> None:
    """Make ``make_scorer(name[:ARG])`` build ``factory(ARG or None)``; re-registering a name replaces it."""
    if not name or ":" in name or not name.replace("_", "").replace("-", "").isalnum():
        raise ScorerError(f"a scorer name is letters, digits, '-' or '_', got {name!r}")
    SCORERS.register(name, factory)


def parse_options(arg: str | None, types: Mapping[str, type]) -> dict:
    """``"a=1,b=x"`` -> {"a": 1, "b": "x"}, each value converted with ``types[key]``; ``ScorerError`` for an
    unknown key or a bad value."""
    out: dict = {}
    for part in (arg or "").split(","):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in types:
            raise ScorerError(f"unknown scorer option {part.strip()!r}; known: {', '.join(sorted(types))}")
        try:
            out[key] = types[key](value.strip())
        except ValueError:
            raise ScorerError(f"scorer option {key}: bad value {value.strip()!r}") from None
    return out


_MEDIAPIPE_OPTIONS = {
    "min_visible_joints": int,
    "min_box_px": float,
    "gate": float,
    "min_detection_confidence": float,
    "min_presence_confidence": float,
    "model_complexity": int,
    "max_num_hands": int,
}


def _make_mediapipe(arg: str | None) -> Scorer:
    return MediaPipeScorer(**parse_options(arg, _MEDIAPIPE_OPTIONS))


register_scorer("mediapipe", _make_mediapipe)


def scorer_names() -> list[str]:
    """Registered scorer names (plug-ins from the ``handgen.scorers`` entry points included)."""
    return SCORERS.names()


def make_scorer(spec: str | ScorerConfig = "mediapipe") -> Scorer:
    """Build a scorer from ``NAME`` or ``NAME:ARG`` (``mediapipe``, ``mediapipe:min_box_px=64``, a plug-in's
    ``hamer:/models/hamer``) or its ``ScorerConfig``; ``ScorerError`` for an unknown name, ``DetectorError``
    when its model cannot load."""
    try:
        config = spec if isinstance(spec, ScorerConfig) else ScorerConfig.from_spec(str(spec))
    except SpecError as exc:
        raise ScorerError(str(exc)) from None
    try:
        factory = SCORERS.factory(config.kind)
    except RegistryError as exc:
        raise ScorerError(str(exc)) from None
    try:
        return factory(config.arg or None)
    except HandgenError:
        raise
    except (TypeError, ValueError) as exc:
        raise ScorerError(f"cannot build scorer {config.spec()!r}: {exc}") from exc
