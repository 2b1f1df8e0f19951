"""Captions derived from the exact 3D label (the embedded default captioner).

Per hand, from ``joints_3d`` (camera space; works for MANO and the stand-in alike):

* finger curl: the sum of the bend angles along each finger's chain (wrist -> base -> ... -> tip; for the
  thumb the bends at its MCP and IP joints), degrees;
* gesture: OK / pinch (thumb and index tips within 2.5 cm), V sign, point, thumbs up, fist, open palm,
  grasp (cylinder or sphere, from the curl level), relaxed (see ``classify_gesture``);
* facing: the palm normal ((index1 - wrist) x (pinky1 - wrist) for the right hand, the opposite for the left)
  against the direction to the camera: palm or back of the hand facing the camera, or seen from the side.

Two hands: clasped (fingers interleaved), touching, or apart. A subject and a scene phrase come from a
configurable in-the-wild library, drawn with the sample's own caption stream (``stage_rng(seed, 'caption')``),
so a sample's caption depends only on its seed and label.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from captioning.base import Caption, Captioner
from pipeline.schema import Sample
from pipeline.seeding import stage_rng

FINGERS = ("thumb", "index", "middle", "ring", "pinky")
_CHAINS = np.array([[0] + [1 + 4 * f + k for k in range(4)] for f in range(5)])  # (5, 5) joint ids
EXTENDED_DEG, CURLED_DEG, GRASP_DEG = 40.0, 180.0, 80.0
PINCH_CM = 2.5

SUBJECTS = (
    ("A man", "his"),
    ("A woman", "her"),
    ("A person", "their"),
    ("A young man", "his"),
    ("A young woman", "her"),
    ("An elderly man", "his"),
    ("An elderly woman", "her"),
    ("A child", "their"),
    ("A teenager", "their"),
)
SCENES = (
    "in a park",
    "in a kitchen",
    "on a city street",
    "in an office",
    "in a living room",
    "at a cafe",
    "on a beach",
    "in a classroom",
    "in a garden",
    "at a train station",
    "in a workshop",
    "in a supermarket",
    "on a balcony",
    "in a library",
)

_PHRASES = {  # gesture -> verb phrase for one hand ({p}: possessive, {s}: side)
    "ok": "making an OK sign with {p} {s} hand",
    "pinch": "pinching with {p} {s} thumb and index finger",
    "v_sign": "raising {p} {s} hand in a V sign",
    "point": "pointing with {p} {s} index finger",
    "thumbs_up": "giving a thumbs up with {p} {s} hand",
    "fist": "making a fist with {p} {s} hand",
    "open_palm": "showing {p} open {s} hand",
    "cylinder_grasp": "curling {p} {s} hand into a firm grip",
    "sphere_grasp": "cupping {p} {s} hand",
    "relaxed": "resting {p} {s} hand in a relaxed pose",
}
_SHORT = {  # gesture -> how "the right hand ..." reads in a two-hand caption
    "ok": "making an OK sign",
    "pinch": "pinching",
    "v_sign": "in a V sign",
    "point": "pointing",
    "thumbs_up": "giving a thumbs up",
    "fist": "in a fist",
    "open_palm": "open",
    "cylinder_grasp": "gripping",
    "sphere_grasp": "cupped",
    "relaxed": "relaxed",
}
_FACING = {"palm": "palm facing the camera", "back": "the back of the hand facing the camera", "side": ""}
_RELATION = {
    "clasped": "clasping both hands together",
    "touching": "touching both hands together",
    "apart": "holding up both hands",
}


@dataclasses.dataclass(frozen=True)
class LabelCaptionConfig:
    """The in-the-wild phrase library: subjects as (phrase, possessive) pairs and scene phrases."""

    subjects: tuple = SUBJECTS
    scenes: tuple = SCENES

    def __post_init__(self) -> None:
        if not self.subjects or not self.scenes:
            raise ValueError("LabelCaptionConfig needs at least one subject and one scene")
        for s in self.subjects:
            if not (isinstance(s, (tuple, list)) and len(s) == 2 and all(isinstance(x, str) for x in s)):
                raise ValueError(f"each subject must be a (phrase, possessive) pair, got {s!r}")


def finger_curls(joints: np.ndarray) -> np.ndarray:
    """(5,) curl per finger (thumb, index, middle, ring, pinky) in degrees from (21, 3) joints."""
    c = np.asarray(joints, dtype=np.float64)[_CHAINS]  # (5, 5, 3)
    bones = c[:, 1:] - c[:, :-1]  # (5, 4, 3)
    bones /= np.maximum(np.sqrt((bones * bones).sum(axis=2, keepdims=True)), 1e-12)
    cos = np.clip((bones[:, :-1] * bones[:, 1:]).sum(axis=2), -1.0, 1.0)  # (5, 3)
    ang = np.degrees(np.arccos(cos))
    curls = ang.sum(axis=1)
    curls[0] = ang[0, 1:].sum()  # thumb: MCP and IP only (the CMC bend is large by anatomy)
    return curls


def classify_gesture(joints: np.ndarray) -> str:
    """One of ``_PHRASES``' gestures for a (21, 3) hand."""
    j = np.asarray(joints, dtype=np.float64)
    c = finger_curls(j)
    ext = c[1:] < EXTENDED_DEG
    curled = c[1:] > CURLED_DEG
    tips_cm = math.dist(j[4].tolist(), j[8].tolist()) * 100.0
    if tips_cm < PINCH_CM:
        return "ok" if ext[1:].all() else "pinch"
    index, middle, ring, pinky = ext
    if index and middle and curled[2] and curled[3]:
        return "v_sign"
    if index and (c[2:] > 150.0).all():
        return "point"
    if curled.all():
        return "thumbs_up" if c[0] < 30.0 and tips_cm > 6.0 else "fist"
    if ext.all():
        return "open_palm"
    if (c[1:] > GRASP_DEG).all():
        return "cylinder_grasp" if c[1:].mean() > 125.0 else "sphere_grasp"
    return "relaxed"


def palm_facing(joints: np.ndarray, side: str) -> str:
    """'palm', 'back' or 'side': which part of the hand faces a camera at the origin looking along +z."""
    j = np.asarray(joints, dtype=np.float64)
    w = j[0]
    ax, ay, az = (j[5] - w).tolist()  # index1 - wrist
    bx, by, bz = (j[17] - w).tolist()  # pinky1 - wrist
    n = (ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx)  # palm normal of a right hand
    sign = -1.0 if side == "left" else 1.0
    cx, cy, cz = j[[0, 5, 9, 13, 17]].mean(axis=0).tolist()
    norm = math.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2) * math.sqrt(cx * cx + cy * cy + cz * cz)
    d = -sign * (n[0] * cx + n[1] * cy + n[2] * cz) / max(norm, 1e-12)  # cos(normal, direction to camera)
    return "palm" if d > 0.35 else ("back" if d < -0.35 else "side")


def hands_relation(right: np.ndarray, left: np.ndarray) -> str:
    """'clasped', 'touching' or 'apart' for two (21, 3) hands."""
    d = np.linalg.norm(np.asarray(right)[:, None] - np.asarray(left)[None], axis=2)
    close = d < 0.03
    if close.any(axis=1).sum() >= 6 and close.any(axis=0).sum() >= 6:
        return "clasped"
    return "touching" if d.min() < 0.025 else "apart"


class LabelCaptioner(Captioner):
    """Captions from the 3D label: gesture, handedness, two-hand relation, facing, subject and scene."""

    name = "labels"
    prompt_version = "1"

    def __init__(self, config: LabelCaptionConfig | None = None) -> None:
        self.config = config or LabelCaptionConfig()

    def describe(self, sample: Sample) -> tuple[str, dict]:
        """(caption text, facts it was built from) for one sample with ``joints_3d`` filled in."""
        hands = {s: h for s, h in sample.hands.items() if h is not None}
        if not hands:
            raise ValueError(f"{sample.key}: no hand to describe")
        for s, h in hands.items():
            if h.joints_3d is None:
                raise ValueError(
                    f"{sample.key}: hands.{s}.joints_3d is not filled in (hand model stage missing?)"
                )
        rng = stage_rng(sample.seed, "caption")
        subject, poss = self.config.subjects[int(rng.integers(len(self.config.subjects)))]
        scene = self.config.scenes[int(rng.integers(len(self.config.scenes)))]
        facts = {
            s: {"gesture": classify_gesture(h.joints_3d), "facing": palm_facing(h.joints_3d, s)}
            for s, h in hands.items()
        }
        if len(hands) == 1:
            ((side, f),) = facts.items()
            text = f"{subject} {scene} {_PHRASES[f['gesture']].format(p=poss, s=side)}"
            if _FACING[f["facing"]]:
                text += f", {_FACING[f['facing']]}"
        else:
            rel = hands_relation(hands["right"].joints_3d, hands["left"].joints_3d)
            facts["relation"] = rel
            if rel == "clasped":
                text = f"{subject} {scene} {_RELATION[rel]}"
            else:
                text = (
                    f"{subject} {scene} {_RELATION[rel]}, the right hand {_SHORT[facts['right']['gesture']]} "
                    f"and the left hand {_SHORT[facts['left']['gesture']]}"
                )
        return text + ".", facts

    def caption(self, samples: Sequence[Sample]) -> list[Caption]:
        out = []
        for s in samples:
            text, facts = self.describe(s)
            out.append(Caption(text, self.name, self.prompt_version, {"facts": facts}))
        return out
