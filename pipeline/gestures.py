"""Hand gestures both ways: named gestures as MANO hand poses, and the gesture that posed joints show.

Making poses: a gesture is a set of per-joint flexion and abduction angles (radians) about
``kinematics.flexion_axes`` / ``kinematics.abduction_axes``. ``gesture_pose`` turns one into the 48-D pose the
hand model takes (global orient first, relative to the model's mean pose, i.e. ``flat_hand_mean=False``).

Reading joints (label captions, evaluation reports; any frame, MANO and the stand-in alike): ``finger_curls``
(the sum of the bend angles along each finger's chain, degrees; for the thumb only its MCP and IP bends),
``classify_gesture`` (OK / pinch: thumb and index tips within 2.5 cm; V sign, point, thumbs up, fist, open
palm, grasp from the curl level, relaxed), ``palm_facing`` (the palm normal against the direction to the
camera) and ``hands_relation`` (clasped, touching or apart).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline import kinematics

_F = kinematics.FINGER_JOINTS

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
    flex = kinematics.flexion_axes(side)
    abd = kinematics.abduction_axes(side)
    pose = np.zeros((15, 3))
    for finger, joints in _F.items():
        for j, angle in zip(joints, g[finger], strict=True):
            pose[j - 1] += angle * flex[j - 1]
    for finger, angle in zip(kinematics.LONG_FINGERS, g["spread"], strict=True):
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


# ----------------------------------------------------------------------------------------------------
# recognising gestures in posed joints (label captions, evaluation reports)
# ----------------------------------------------------------------------------------------------------
#: (5, 5) joint ids of each finger's chain from the wrist: wrist, base, ..., tip (``FINGERS`` order).
_CHAINS = np.array([[0, *chain] for chain in kinematics.FINGER_CHAINS])
EXTENDED_DEG, CURLED_DEG, GRASP_DEG = 40.0, 180.0, 80.0
PINCH_CM = 2.5


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
    """The gesture a (21, 3) hand (label joint order, any frame) shows: ``ok``, ``pinch``, ``v_sign``,
    ``point``, ``thumbs_up``, ``fist``, ``open_palm``, ``cylinder_grasp``, ``sphere_grasp`` or ``relaxed``."""
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


#: ``palm_facing``'s answers.
FACINGS = ("palm", "back", "side")


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
