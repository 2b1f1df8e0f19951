"""The hand's structure, shared by the hand models, the pose prior, the gestures and the label: joint names
and order, MANO's kinematic tree, finger chains, fingertip vertices, and the joint rotation axes that
flexion and abduction angles are measured about.

Frames: MANO's right-hand template frame, metres: +x from the fingers toward the wrist, +y dorsal (the back of
the hand), +z toward the thumb (radial). The left hand mirrors it across x = 0 (``mirror_axis_angle``).
"""

from __future__ import annotations

import numpy as np

#: Label joint order (DESIGN section 3): the wrist, then per finger its base (1) to its tip (4).
JOINT_NAMES = (
    "wrist",
    "thumb1",
    "thumb2",
    "thumb3",
    "thumb4",
    "index1",
    "index2",
    "index3",
    "index4",
    "middle1",
    "middle2",
    "middle3",
    "middle4",
    "ring1",
    "ring2",
    "ring3",
    "ring4",
    "pinky1",
    "pinky2",
    "pinky3",
    "pinky4",
)
#: The fingers, thumb first (the order of ``JOINT_NAMES``).
FINGERS = ("thumb", "index", "middle", "ring", "pinky")
#: The four long fingers, radial (+z) to ulnar (-z) for the right hand.
LONG_FINGERS = ("index", "middle", "ring", "pinky")
#: Label joint ids (``JOINT_NAMES``) of each finger's chain, base to tip, in ``FINGERS`` order.
FINGER_CHAINS = tuple(tuple(range(1 + 4 * f, 5 + 4 * f)) for f in range(len(FINGERS)))
#: MANO's fingertip vertex ids (the ones smplx uses for MANO tips).
TIP_VERTEX_IDS = {"thumb": 744, "index": 320, "middle": 443, "ring": 554, "pinky": 671}
#: Parent of each MANO joint (-1 for the root), MANO order (16 joints: the wrist, then three per finger).
PARENTS = np.array([-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14])
#: MANO joint ids of each finger's three joints, base to distal.
FINGER_JOINTS = {
    "index": (1, 2, 3),
    "middle": (4, 5, 6),
    "pinky": (7, 8, 9),
    "ring": (10, 11, 12),
    "thumb": (13, 14, 15),
}
#: Rest direction of each long finger (slightly fanned out), template frame (unnormalised).
REST_FINGER_DIRECTIONS = {
    "index": np.array([-1.0, 0.0, 0.07]),
    "middle": np.array([-1.0, 0.0, 0.0]),
    "ring": np.array([-1.0, 0.0, -0.07]),
    "pinky": np.array([-1.0, 0.0, -0.16]),
}
#: Rest direction of the thumb, template frame (unnormalised).
REST_THUMB_DIRECTION = np.array([-0.62, -0.34, 0.70])
_THUMB_FLEX_TOWARD = np.array([-0.1, -0.45, -1.0])  # thumb flexion swings the tip across the palm (-z)
_THUMB_ABDUCT_TOWARD = np.array([0.0, -1.0, 0.0])  # palmar abduction lifts the thumb off the palm plane


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` divided by its norm."""
    return v / np.linalg.norm(v)


def palm_normal(joints: np.ndarray, side: str) -> np.ndarray:
    """(3,) float64 unit normal out of the palm from (21, 3) joints (label order, any frame): index1 and
    pinky1 about the wrist, the sign mirrored for a left hand so that it points out of the palm for both."""
    j = np.asarray(joints, dtype=np.float64)
    n = np.cross(j[5] - j[0], j[17] - j[0]) * (-1.0 if side == "left" else 1.0)
    return n / max(float(np.linalg.norm(n)), 1e-12)


def finger_frame(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d, u, s): distal axis, dorsal axis, side axis with s x u = d (right-handed about d); (3,) float64."""
    d = unit(direction)
    u = unit(np.array([0.0, 1.0, 0.0]) - d * d[1])
    s = np.cross(u, d)
    return d, u, s


def thumb_axis(toward: np.ndarray) -> np.ndarray:
    """Rotation axis (3,) that turns the rest thumb direction toward ``toward`` (for positive angles)."""
    d_t = unit(REST_THUMB_DIRECTION)
    p = unit(toward - d_t * (toward @ d_t))
    return unit(np.cross(d_t, p))


def mirror_axis_angle(aa: np.ndarray) -> np.ndarray:
    """Mirror axis-angle vectors across the x=0 plane: (a, b, c) -> (a, -b, -c)."""
    out = np.array(aa, dtype=np.float64, copy=True)
    out[..., 1] *= -1.0
    out[..., 2] *= -1.0
    return out


def flexion_axes(side: str = "right") -> np.ndarray:
    """(15, 3) float64 unit axes: a positive rotation about axis j flexes hand joint j+1 toward the palm.

    Rows follow MANO's 15 hand joints (index 1-3, middle 4-6, pinky 7-9, ring 10-12, thumb 13-15). For the
    left hand the axes are mirrored so the same angles give the mirrored pose.
    """
    axes = np.zeros((15, 3))
    for f in LONG_FINGERS:
        d, u, s = finger_frame(REST_FINGER_DIRECTIONS[f])
        for j in FINGER_JOINTS[f]:
            axes[j - 1] = s
    for j in FINGER_JOINTS["thumb"]:
        axes[j - 1] = thumb_axis(_THUMB_FLEX_TOWARD)
    if side == "left":
        axes = mirror_axis_angle(axes)
    return axes


def abduction_axes(side: str = "right") -> np.ndarray:
    """(15, 3) float64 unit axes: a positive rotation spreads a finger toward the thumb side; for the thumb
    it is palmar abduction (the thumb lifts off the palm plane, toward opposition)."""
    axes = np.zeros((15, 3))
    for f in LONG_FINGERS:
        _, u, _ = finger_frame(REST_FINGER_DIRECTIONS[f])
        for j in FINGER_JOINTS[f]:
            axes[j - 1] = u
    for j in FINGER_JOINTS["thumb"]:
        axes[j - 1] = thumb_axis(_THUMB_ABDUCT_TOWARD)
    if side == "left":
        axes = mirror_axis_angle(axes)
    return axes
