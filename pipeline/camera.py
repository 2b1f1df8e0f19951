"""Camera projection shared by sources, renderers and the validator (pure numpy).

Conventions (DESIGN section 3): camera space is OpenCV's (x right, y down, z forward), metres; pixel
coordinates put the centre of pixel (u, v) at integer (u, v), as OpenCV does.

Distortion models, chosen by the number of coefficients in ``dist``:

* ``None``: pinhole;
* 4 values ``(k1, k2, k3, k4)``: OpenCV fisheye (equidistant): theta_d = theta (1 + k1 t^2 + k2 t^4 + k3 t^6 +
  k4 t^8) with t = theta = atan(r), r = |(x/z, y/z)|;
* 5 or 8 values ``(k1, k2, p1, p2, k3[, k4, k5, k6])``: OpenCV radial-tangential (rational when 8).
"""

from __future__ import annotations

import numpy as np

#: Points closer than this (metres, along z) are not projected (their pixel coordinates are NaN).
NEAR = 1e-3


def distort_normalized(xy: np.ndarray, dist: np.ndarray | None) -> np.ndarray:
    """Apply a distortion model to normalised image coordinates (..., 2) -> (..., 2)."""
    xy = np.asarray(xy, dtype=np.float64)
    if dist is None:
        return xy
    d = np.asarray(dist, dtype=np.float64).ravel()
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    if d.size == 4:
        r = np.sqrt(r2)
        theta = np.arctan(r)
        t2 = theta * theta
        theta_d = theta * (1 + d[0] * t2 + d[1] * t2**2 + d[2] * t2**3 + d[3] * t2**4)
        scale = np.where(r > 1e-12, theta_d / np.maximum(r, 1e-12), 1.0)
        return xy * scale[..., None]
    if d.size in (5, 8):
        k1, k2, p1, p2, k3 = d[:5]
        k4, k5, k6 = d[5:8] if d.size == 8 else (0.0, 0.0, 0.0)
        radial = (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return np.stack([xd, yd], axis=-1)
    raise ValueError(f"dist must have 4, 5 or 8 coefficients, got {d.size}")


def undistort_normalized(xy: np.ndarray, dist: np.ndarray | None, iterations: int = 20) -> np.ndarray:
    """The inverse of ``distort_normalized``: distorted normalised coordinates (..., 2) -> undistorted
    (..., 2) float64 (fisheye: Newton on theta; radial-tangential: fixed-point iterations, as OpenCV's
    ``undistortPoints``). A point whose result does not distort back to it within ``UNDISTORT_TOLERANCE``
    (strong distortion far from the centre, where the iteration does not converge) is NaN."""
    xy = np.asarray(xy, dtype=np.float64)
    if dist is None:
        return xy
    d = np.asarray(dist, dtype=np.float64).ravel()
    if d.size == 4:
        theta_d = np.sqrt((xy * xy).sum(-1))
        theta = np.minimum(theta_d, np.pi / 2 - 1e-6)
        for _ in range(iterations):
            t2 = theta * theta
            f = theta * (1 + d[0] * t2 + d[1] * t2**2 + d[2] * t2**3 + d[3] * t2**4) - theta_d
            df = 1 + 3 * d[0] * t2 + 5 * d[1] * t2**2 + 7 * d[2] * t2**3 + 9 * d[3] * t2**4
            theta = np.clip(theta - f / np.where(np.abs(df) > 1e-12, df, 1e-12), 0.0, np.pi / 2 - 1e-6)
        scale = np.where(theta_d > 1e-12, np.tan(theta) / np.maximum(theta_d, 1e-12), 1.0)
        return _converged(xy * scale[..., None], xy, d)
    if d.size in (5, 8):
        out = xy.copy()
        with np.errstate(all="ignore"):  # a diverging point overflows: it is NaN below
            for _ in range(iterations):
                moved = distort_normalized(out, d)
                out = out + (xy - moved)
        return _converged(out, xy, d)
    raise ValueError(f"dist must have 4, 5 or 8 coefficients, got {d.size}")


UNDISTORT_TOLERANCE = 1e-7
"""Normalised units (about 1e-4 px at a 1000 px focal length) an undistorted point may miss by when distorted
back (``undistort_normalized``)."""


def _converged(out: np.ndarray, xy: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``out`` with NaN where it does not distort back to ``xy`` within ``UNDISTORT_TOLERANCE``."""
    with np.errstate(all="ignore"):
        miss = np.abs(distort_normalized(out, d) - xy).max(axis=-1)
    return np.where((miss <= UNDISTORT_TOLERANCE)[..., None], out, np.nan)


def project_points(points: np.ndarray, K: np.ndarray, dist: np.ndarray | None = None) -> np.ndarray:
    """Project camera-space points (..., 3) metres to pixels (..., 2) float64.

    Points with z < ``NEAR`` get NaN pixel coordinates.
    """
    p = np.asarray(points, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    z = p[..., 2]
    ok = z >= NEAR
    zs = np.where(ok, z, 1.0)
    xy = distort_normalized(p[..., :2] / zs[..., None], dist)
    u = K[0, 0] * xy[..., 0] + K[0, 1] * xy[..., 1] + K[0, 2]
    v = K[1, 1] * xy[..., 1] + K[1, 2]
    uv = np.stack([u, v], axis=-1)
    uv[~ok] = np.nan
    return uv


def crop_intrinsics(K: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """K of a square crop ``[x0, y0, x1, y1]`` (global pixel coordinates) resampled to ``size`` x ``size``.

    The crop covers the continuous region [x0, x1] x [y0, y1]; local pixel centres sit at integers, so
    ``local = (global - x0) * size / side - 0.5`` (see ``global_to_local``).
    """
    x0, y0, x1, _ = (float(v) for v in crop_box)
    s = size / (x1 - x0)
    A = np.array([[s, 0.0, -x0 * s - 0.5], [0.0, s, -y0 * s - 0.5], [0.0, 0.0, 1.0]])
    return A @ np.asarray(K, dtype=np.float64)


def global_to_local(uv: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """Global pixel coordinates (..., 2) -> local (crop) pixel coordinates, exact inverse of
    ``local_to_global``."""
    x0, y0, x1, _ = (float(v) for v in crop_box)
    s = size / (x1 - x0)
    return (np.asarray(uv, dtype=np.float64) - np.array([x0, y0])) * s - 0.5


def local_to_global(uv: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """Local (crop) pixel coordinates (..., 2) -> global pixel coordinates."""
    x0, y0, x1, _ = (float(v) for v in crop_box)
    s = (x1 - x0) / size
    return (np.asarray(uv, dtype=np.float64) + 0.5) * s + np.array([x0, y0])
