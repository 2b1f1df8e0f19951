"""Named hand gestures as MANO hand poses (canonical frame of ``pipeline.standin``).

A gesture is a set of per-joint flexion and abduction angles (radians) about ``standin.flexion_axes`` /
``standin.abduction_axes``. ``gesture_pose`` turns one into the 48-D pose the hand model takes
(global orient first, relative to the model's mean pose, i.e. ``flat_hand_mean=False``).
"""

from __future__ import annotations

import numpy as np

from pipeline import standin

_F = standin.FINGER_JOINTS

# name -> {finger: (flex1, flex2, flex3)}, "spread": (index, middle, ring, pinky abduction) and
# "thumb_abd": palmar abduction of the thumb at its base (opposition)
GESTURES: dict[str, dict] = {
    "open": {
        "index": (0.0, 0.0, 0.0),
        "middle": (0.0, 0.0, 0.0),
        "ring": (0.0, 0.0, 0.0),
        "pinky": (0.0, 0.0, 0.0),
        "thumb": (0.0, 0.0, 0.0),
        "spread": (0.12, 0.0, -0.1, -0.2),
        "thumb_abd": 0.0,
    },
    "fist": {
        "index": (1.35, 1.65, 0.85),
        "middle": (1.4, 1.7, 0.85),
        "ring": (1.45, 1.7, 0.85),
        "pinky": (1.5, 1.65, 0.85),
        "thumb": (0.6, 0.6, 0.4),
        "spread": (0.0, 0.0, 0.0, 0.0),
        "thumb_abd": 0.0,
    },
    "point": {
        "index": (0.0, 0.05, 0.0),
        "middle": (1.4, 1.7, 0.85),
        "ring": (1.45, 1.7, 0.85),
        "pinky": (1.5, 1.65, 0.85),
        "thumb": (0.6, 0.6, 0.4),
        "spread": (0.05, 0.0, 0.0, 0.0),
        "thumb_abd": 0.0,
    },
    "pinch": {
        "index": (0.9, 0.9, 0.4),
        "middle": (0.35, 0.45, 0.2),
        "ring": (0.4, 0.5, 0.25),
        "pinky": (0.45, 0.5, 0.25),
        "thumb": (0.6, 0.2, 0.3),
        "spread": (0.0, 0.0, -0.05, -0.12),
        "thumb_abd": 0.0,
    },
    "ok": {
        "index": (0.9, 0.9, 0.4),
        "middle": (0.1, 0.1, 0.05),
        "ring": (0.15, 0.1, 0.05),
        "pinky": (0.2, 0.1, 0.05),
        "thumb": (0.6, 0.2, 0.3),
        "spread": (0.0, -0.05, -0.15, -0.3),
        "thumb_abd": 0.0,
    },
    "thumbs_up": {
        "index": (1.35, 1.65, 0.85),
        "middle": (1.4, 1.7, 0.85),
        "ring": (1.45, 1.7, 0.85),
        "pinky": (1.5, 1.65, 0.85),
        "thumb": (-0.1, 0.0, 0.0),
        "spread": (0.0, 0.0, 0.0, 0.0),
        "thumb_abd": 0.2,
    },
    "v_sign": {
        "index": (0.0, 0.05, 0.0),
        "middle": (0.0, 0.05, 0.0),
        "ring": (1.45, 1.7, 0.85),
        "pinky": (1.5, 1.65, 0.85),
        "thumb": (0.6, 0.6, 0.4),
        "spread": (0.2, -0.12, 0.0, 0.0),
        "thumb_abd": 0.0,
    },
    "cylinder_grasp": {
        "index": (0.95, 0.95, 0.5),
        "middle": (1.0, 1.0, 0.5),
        "ring": (1.0, 1.0, 0.5),
        "pinky": (1.05, 0.95, 0.5),
        "thumb": (0.45, 0.35, 0.3),
        "spread": (0.0, 0.0, 0.0, 0.0),
        "thumb_abd": 0.5,
    },
    "sphere_grasp": {
        "index": (0.55, 0.7, 0.4),
        "middle": (0.55, 0.7, 0.4),
        "ring": (0.6, 0.7, 0.4),
        "pinky": (0.65, 0.7, 0.4),
        "thumb": (0.3, 0.25, 0.2),
        "spread": (0.2, 0.05, -0.12, -0.25),
        "thumb_abd": 0.6,
    },
    "relaxed": {
        "index": (0.25, 0.35, 0.15),
        "middle": (0.3, 0.4, 0.2),
        "ring": (0.35, 0.45, 0.2),
        "pinky": (0.4, 0.45, 0.2),
        "thumb": (0.15, 0.15, 0.1),
        "spread": (0.05, 0.0, -0.05, -0.1),
        "thumb_abd": 0.1,
    },
}


def absolute_hand_pose(name: str, side: str = "right") -> np.ndarray:
    """(45,) absolute axis-angle hand pose (radians) of gesture ``name`` for ``side``."""
    if name not in GESTURES:
        raise KeyError(f"unknown gesture {name!r}; known: {sorted(GESTURES)}")
    g = GESTURES[name]
    flex = standin.flexion_axes(side)
    abd = standin.abduction_axes(side)
    pose = np.zeros((15, 3))
    for finger, joints in _F.items():
        for j, angle in zip(joints, g[finger], strict=True):
            pose[j - 1] += angle * flex[j - 1]
    for finger, angle in zip(("index", "middle", "ring", "pinky"), g["spread"], strict=True):
        j = _F[finger][0]
        pose[j - 1] += angle * abd[j - 1]
    j = _F["thumb"][0]
    pose[j - 1] += g.get("thumb_abd", 0.0) * abd[j - 1]
    return pose.reshape(45)


def gesture_pose(
    name: str, hands_mean: np.ndarray, side: str = "right", global_orient=(0.0, 0.0, 0.0)
) -> np.ndarray:
    """(48,) pose for the hand model: ``global_orient`` then the gesture relative to ``hands_mean`` (45,)."""
    rel = absolute_hand_pose(name, side) - np.asarray(hands_mean, dtype=np.float64).reshape(45)
    return np.concatenate([np.asarray(global_orient, dtype=np.float64), rel])
