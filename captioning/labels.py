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
from collections.abc import Sequence

from captioning.base import Captioner
from pipeline.gestures import classify_gesture, hands_relation, palm_facing
from pipeline.sample import Caption, Sample
from pipeline.seeding import stage_rng

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


class LabelCaptioner(Captioner):
    """Captions from the 3D label: gesture, handedness, two-hand relation, facing, subject and scene."""

    name = "labels"
    prompt_version = "1"

    @classmethod
    def from_config(cls, config=None, **_) -> LabelCaptioner:
        """``captioning.CAPTIONERS``' factory (``LabelsCaptionerConfig``: no settings; the phrase library is
        the default one)."""
        return cls()

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
