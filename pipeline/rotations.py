"""Rotation helpers (pure numpy): axis-angle <-> matrix, random rotations, rigid moves of MANO parameters."""

from __future__ import annotations

import numpy as np


def aa_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues: (..., 3) axis-angle radians -> (..., 3, 3) rotation matrices."""
    aa = np.asarray(aa, dtype=np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    k = np.where(theta > 1e-12, aa / np.maximum(theta, 1e-12), 0.0)
    K = np.zeros(aa.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K[..., 1, 0], K[..., 2, 0], K[..., 2, 1] = k[..., 2], -k[..., 1], k[..., 0]
    s, c = np.sin(theta)[..., None], np.cos(theta)[..., None]
    return np.eye(3) + s * K + (1.0 - c) * (K @ K)


def matrix_to_aa(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle radians (stable near 0 and pi)."""
    R = np.asarray(R, dtype=np.float64)
    cos = np.clip((np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    theta = np.arccos(cos)
    v = np.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], axis=-1
    )
    sin = np.sin(theta)
    out = np.where(
        (sin > 1e-6)[..., None], v / (2.0 * np.maximum(sin, 1e-12))[..., None] * theta[..., None], v / 2.0
    )
    near_pi = theta > np.pi - 1e-3
    if np.any(near_pi):  # axis from the symmetric part: (R + R^T) / 2 - cos I = (1 - cos) a a^T
        Rn, cn = R[near_pi], cos[near_pi][..., None, None]
        B = ((Rn + np.swapaxes(Rn, -1, -2)) / 2.0 - cn * np.eye(3)) / (1.0 - cn)
        i = np.argmax(np.diagonal(B, axis1=-2, axis2=-1), axis=-1)
        axis = B[np.arange(len(i)), :, i]
        axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
        sign = np.sign((axis * v[near_pi]).sum(-1, keepdims=True))
        axis = np.where(sign < 0, -axis, axis)
        out[near_pi] = axis * theta[near_pi][..., None]
    return out


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed 3x3 rotation (random unit quaternion)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def move_mano(pose: np.ndarray, trans: np.ndarray, root: np.ndarray, R: np.ndarray, t: np.ndarray):
    """MANO parameters after the rigid move X -> R X + t (e.g. world -> camera).

    pose (48,) radians, trans (3,) metres, root (3,): the root joint of the zero-translation hand (it depends
    on shape only). MANO rotates about the root, so: global_orient' = R . global_orient and
    trans' = R (root + trans) + t - root. Returns (pose', trans').
    """
    pose = np.array(pose, dtype=np.float64, copy=True)
    pose[:3] = matrix_to_aa(np.asarray(R) @ aa_to_matrix(pose[:3]))
    root = np.asarray(root, dtype=np.float64)
    new_trans = (
        np.asarray(R) @ (root + np.asarray(trans, dtype=np.float64)) + np.asarray(t, dtype=np.float64) - root
    )
    return pose, new_trans
