"""Evaluation maths: pure functions on keypoints, no detector and no I/O (docs/evaluation.md states each one).

2D, per labelled hand (pixels; ``size`` = the label box's longer side, px; only the label's visible joints):

* ``normalized_error``: mean Euclidean keypoint error / size;
* ``pck``: fraction of visible joints whose error is below ``threshold * size`` (PCK@0.05, PCK@0.1);
* ``mse_2d``: the mean over visible joints of the squared Euclidean error, px^2 (our reading of the
  AttentionHand paper's MSE-2D, which gives no formula or unit; see docs/evaluation.md);
* ``eligible``: at least ``min_visible_joints`` visible joints and a box of at least ``min_box_px``;
* ``joint_offsets``: each visible joint's error / size, split along the hand (from the label's wrist toward
  its middle knuckle) and across it (toward the thumb's side), to see which keypoints disagree and which way.

Matching (``match_hands``): detections are assigned to labelled hands by keypoints, never by handedness: the
cost of a (hand, detection) pair is the hand's ``normalized_error``; pairs at or above ``gate`` (default 0.5
of the box) are not allowed, so a far-away detection is a miss; the assignment maximises the number of
matches, then minimises the summed cost (exhaustive, exact for the handful of hands an image holds).

3D (HandBooster's criterion, any unit; the scorers use mm): ``mpjpe`` (root-relative by default),
``pa_mpjpe`` (after the similarity transform, Umeyama / orthogonal Procrustes with scale, that best aligns the
prediction to the label), and ``procrustes_align`` itself.

Alignment (``hand_alignment``, ``sample_alignment``): an eligible hand scores its PCK@0.1 if detected, 0.0 if
not; a sample scores the minimum over its eligible hands, ``None`` when it has none (not assessable).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

MIN_VISIBLE_JOINTS = 15
MIN_BOX_PX = 48.0
MATCH_GATE = 0.5
PCK_THRESHOLDS = (0.05, 0.1)
ALIGNMENT_PCK = 0.1
#: HandBooster's rejection thresholds (DexYCB): root-relative MPJPE > 25 mm or PA-MPJPE > 10 mm
HANDBOOSTER_MPJPE_MM = 25.0
HANDBOOSTER_PA_MPJPE_MM = 10.0


def box_size(bbox) -> float:
    """The longer side of an [x0, y0, x1, y1] box."""
    b = np.asarray(bbox, dtype=np.float64)
    return float(max(b[2] - b[0], b[3] - b[1]))


def box_overlap(a, b) -> float:
    """The share of box ``a``'s area (x0, y0, x1, y1, px) that lies inside box ``b``, in [0, 1]; 0.0 for an
    empty ``a``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    area = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return float(max(w, 0.0) * max(h, 0.0) / area) if area > 0 else 0.0


def joint_errors(pred, gt) -> np.ndarray:
    """(J,) Euclidean distances between (J, D) point sets."""
    p, g = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if p.shape != g.shape:
        raise ValueError(f"point sets differ in shape: {p.shape} vs {g.shape}")
    return np.sqrt(((p - g) ** 2).sum(axis=-1))


def _visible(visible, n: int) -> np.ndarray:
    v = np.ones(n, bool) if visible is None else np.asarray(visible, dtype=bool)
    if v.shape != (n,):
        raise ValueError(f"visible must have shape ({n},), got {v.shape}")
    return v


def normalized_error(pred, gt, visible, size: float) -> float:
    """Mean error over the visible joints / ``size``; NaN when no joint is visible or size <= 0."""
    v = _visible(visible, len(gt))
    if not v.any() or size <= 0:
        return math.nan
    return float(joint_errors(pred, gt)[v].mean() / size)


def pck(pred, gt, visible, size: float, threshold: float) -> float:
    """Fraction of visible joints with error < ``threshold * size``; NaN when no joint is visible."""
    v = _visible(visible, len(gt))
    if not v.any() or size <= 0:
        return math.nan
    return float((joint_errors(pred, gt)[v] < threshold * size).mean())


def mse_2d(pred, gt, visible=None) -> float:
    """Mean over visible joints of the squared Euclidean error (px^2 for pixel inputs); NaN when none."""
    v = _visible(visible, len(gt))
    if not v.any():
        return math.nan
    return float((joint_errors(pred, gt)[v] ** 2).mean())


def eligible(
    visible, bbox, min_visible_joints: int = MIN_VISIBLE_JOINTS, min_box_px: float = MIN_BOX_PX
) -> bool:
    """Whether a labelled hand is judged: enough visible joints and a large enough box (longer side, px)."""
    return int(np.asarray(visible, dtype=bool).sum()) >= min_visible_joints and box_size(bbox) >= min_box_px


def hand_metrics(pred, gt, visible, bbox) -> dict:
    """2D agreement of one detected hand with its label: error_norm, pck_005, pck_01, mse_2d."""
    size = box_size(bbox)
    return {
        "error_norm": normalized_error(pred, gt, visible, size),
        "pck_005": pck(pred, gt, visible, size, 0.05),
        "pck_01": pck(pred, gt, visible, size, 0.1),
        "mse_2d": mse_2d(pred, gt, visible),
    }


#: joint ids (``pipeline.kinematics.JOINT_NAMES``) that set a hand's 2D frame in ``joint_offsets``
_WRIST, _THUMB2, _MIDDLE1 = 0, 2, 9


def joint_offsets(pred, gt, visible, size: float) -> np.ndarray:
    """(21, 3) float64: per joint, the predicted keypoint minus the label's, divided by ``size`` (the label
    box's longer side), as (along, across, distance). ``along`` is the component toward the fingertips (the
    unit vector from the label's wrist to its middle knuckle); ``across`` the perpendicular component toward
    the thumb's side (the side of that axis on which the label's thumb MCP lies); ``distance`` the Euclidean
    error / size, the quantity PCK thresholds. Rows of joints not visible are NaN; along and across are NaN
    when the axis or the thumb's side is not defined (wrist and middle knuckle, or the thumb MCP and the
    axis, within 1 px)."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    out = np.full((len(gt), 3), math.nan)
    v = _visible(visible, len(gt))
    if not v.any() or size <= 0:
        return out
    d = (pred - gt) / size
    out[v, 2] = np.linalg.norm(d[v], axis=1)
    axis = gt[_MIDDLE1] - gt[_WRIST]
    length = float(np.linalg.norm(axis))
    if length < 1.0:
        return out
    along = axis / length
    across = np.array([-along[1], along[0]])
    side = float((gt[_THUMB2] - gt[_WRIST]) @ across)
    if abs(side) < 1.0:
        return out
    across *= math.copysign(1.0, side)
    out[v, 0] = d[v] @ along
    out[v, 1] = d[v] @ across
    return out


def match_hands(
    labels: Mapping[str, tuple], detections: Sequence, gate: float = MATCH_GATE
) -> dict[str, tuple[int, float]]:
    """Assign detections to labelled hands by keypoints (module doc).

    labels: side -> (joints_2d (21, 2), visible (21,), bbox (4,)); detections: (21, 2) keypoint arrays (or
    objects with ``.keypoints``). Returns side -> (detection index, cost) for the matched hands only.
    """
    sides = list(labels)
    kps = [np.asarray(getattr(d, "keypoints", d), dtype=np.float64) for d in detections]
    cost = np.full((len(sides), len(kps)), math.inf)
    for i, s in enumerate(sides):
        j2d, vis, bbox = labels[s]
        for k, kp in enumerate(kps):
            c = normalized_error(kp, j2d, vis, box_size(bbox))
            if math.isfinite(c) and c < gate:
                cost[i, k] = c
    best: tuple[int, float, tuple] = (0, 0.0, ())
    # every injective map of hands to detections or to nothing; the few hands of an image keep this tiny
    options = list(range(len(kps))) + [None] * len(sides)
    seen: set = set()
    for perm in itertools.permutations(options, len(sides)):  # in a fixed order, so ties resolve the same way
        if perm in seen:
            continue
        seen.add(perm)
        pairs = tuple((i, k) for i, k in enumerate(perm) if k is not None and math.isfinite(cost[i, k]))
        if len(pairs) != sum(k is not None for k in perm):
            continue
        total = sum(cost[i, k] for i, k in pairs)
        if len(pairs) > best[0] or (len(pairs) == best[0] and pairs and total < best[1]):
            best = (len(pairs), total, pairs)
    return {sides[i]: (k, float(cost[i, k])) for i, k in best[2]}


def hand_alignment(eligible_hand: bool, detected: bool, pck_01: float) -> float | None:
    """An eligible hand's alignment: its PCK@0.1 when detected, else 0.0; None for a hand that is not
    judged."""
    if not eligible_hand:
        return None
    if not detected or not math.isfinite(pck_01):
        return 0.0
    return float(pck_01)


def sample_alignment(hand_alignments: Sequence[float | None]) -> float | None:
    """The minimum over the judged hands; None when no hand is judged."""
    vals = [a for a in hand_alignments if a is not None]
    return min(vals) if vals else None


# -- 3D ------------------------------------------------------------------------------------------------------
def _points(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or len(a) < 1:
        raise ValueError(f"{name} must be (J, 3) points, got {a.shape}")
    return a


def mpjpe(pred, gt, root: int | None = 0) -> float:
    """Mean per-joint position error; with ``root`` (default the wrist, joint 0) both sets are first made
    relative to that joint (root-relative MPJPE, as HandBooster); ``root=None`` compares them as they are."""
    p, g = _points(pred, "pred"), _points(gt, "gt")
    if root is not None:
        p, g = p - p[root], g - g[root]
    return float(joint_errors(p, g).mean())


def procrustes_align(pred, gt) -> np.ndarray:
    """``pred`` moved by the similarity transform (scale, rotation, translation; no reflection) that minimises
    the summed squared distance to ``gt`` (Umeyama 1991)."""
    p, g = _points(pred, "pred"), _points(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"point sets differ in shape: {p.shape} vs {g.shape}")
    mp_, mg = p.mean(axis=0), g.mean(axis=0)
    pc, gc = p - mp_, g - mg
    var = (pc**2).sum()
    if var <= 0:
        return np.broadcast_to(mg, g.shape).copy()
    U, S, Vt = np.linalg.svd(gc.T @ pc)  # cross-covariance, gt x pred
    d = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:  # no reflections
        d[-1] = -1.0
    R = U @ np.diag(d) @ Vt
    s = float((S * d).sum() / var)
    return s * pc @ R.T + mg


def pa_mpjpe(pred, gt) -> float:
    """MPJPE after Procrustes alignment (``procrustes_align``) of the prediction to the label."""
    return float(joint_errors(procrustes_align(pred, gt), _points(gt, "gt")).mean())


def handbooster_alignment(
    mpjpe_mm: float,
    pa_mpjpe_mm: float,
    max_mpjpe_mm: float = HANDBOOSTER_MPJPE_MM,
    max_pa_mpjpe_mm: float = HANDBOOSTER_PA_MPJPE_MM,
) -> float:
    """A 3D alignment score in [0, 1]: ``1 - max(mpjpe / (2 max_mpjpe), pa / (2 max_pa))`` clipped, so a score
    >= 0.5 is exactly HandBooster's acceptance rule (MPJPE <= 25 mm and PA-MPJPE <= 10 mm)."""
    if not (math.isfinite(mpjpe_mm) and math.isfinite(pa_mpjpe_mm)):
        return 0.0
    worst = max(mpjpe_mm / (2.0 * max_mpjpe_mm), pa_mpjpe_mm / (2.0 * max_pa_mpjpe_mm))
    return float(min(1.0, max(0.0, 1.0 - worst)))


# -- viewpoint -----------------------------------------------------------------------------------------------
def hand_frame(joints_3d, side: str) -> np.ndarray:
    """(3, 3) rows x, y, z of the hand's wrist frame from (21, 3) joints: x from the wrist to middle1 (along
    the hand), z the palm normal (out of the palm; ``captioning.labels.palm_facing``'s convention), y
    completing it towards the thumb side (index1 rather than pinky1), so a left and a right hand read
    alike."""
    j = _points(joints_3d, "joints_3d")
    x = j[9] - j[0]
    x /= max(np.linalg.norm(x), 1e-12)
    sign = -1.0 if side == "left" else 1.0
    n = sign * np.cross(j[5] - j[0], j[17] - j[0])
    z = n - (n @ x) * x
    z /= max(np.linalg.norm(z), 1e-12)
    y = np.cross(z, x)
    if y @ (j[5] - j[17]) < 0:
        y = -y
    return np.stack([x, y, z])


def camera_viewpoint(joints_3d, side: str) -> tuple[float, float]:
    """(azimuth, elevation) in degrees of the camera (at the origin of camera space) seen from the wrist, in
    the hand's frame (``hand_frame``): elevation +90 = the camera faces the palm, -90 = the back of the hand;
    azimuth 0 = in front of the fingertips, +90 = on the thumb side, +-180 = behind the wrist."""
    j = _points(joints_3d, "joints_3d")
    frame = hand_frame(j, side)
    v = -j[0]
    v = frame @ (v / max(np.linalg.norm(v), 1e-12))
    elevation = math.degrees(math.asin(max(-1.0, min(1.0, float(v[2])))))
    azimuth = math.degrees(math.atan2(float(v[1]), float(v[0])))
    return azimuth, elevation
