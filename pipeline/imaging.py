"""Image geometry for real source images: letterboxing to a square and resampling a crop box.

Pixel convention (as everywhere here): the centre of pixel (u, v) sits at integer (u, v). PIL works in
edge coordinates (a pixel spans [u, u + 1)); the conversions below account for the 0.5 shift, so a point
projected with the returned intrinsics lands on the same image content.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """How an (H, W) image became a ``size`` x ``size`` one: resized by (sx, sy) to (new_h, new_w) pixels
    (the aspect ratio kept up to rounding), then padded with black by (ox, oy) pixels on the left / top."""

    orig_size: tuple[int, int]
    size: int
    new_size: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[int, int]

    @classmethod
    def fit(cls, orig_size: tuple[int, int], size: int) -> Letterbox:
        """The letterbox of an (H, W) image into ``size`` x ``size`` (never stretched: one scale for both
        axes, rounded to whole pixels)."""
        H, W = (int(x) for x in orig_size)
        if H < 1 or W < 1 or size < 1:
            raise ValueError(f"bad letterbox sizes: image {H}x{W}, target {size}")
        s = size / max(H, W)
        nh, nw = min(size, max(1, round(H * s))), min(size, max(1, round(W * s)))
        return cls((H, W), int(size), (nh, nw), (nw / W, nh / H), ((size - nw) // 2, (size - nh) // 2))

    def matrix(self) -> np.ndarray:
        """(3, 3) float64 map from original to letterboxed pixel coordinates (pixel centres at integers)."""
        sx, sy = self.scale
        ox, oy = self.offset
        return np.array([[sx, 0.0, 0.5 * sx - 0.5 + ox], [0.0, sy, 0.5 * sy - 0.5 + oy], [0.0, 0.0, 1.0]])

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """The intrinsics of the letterboxed image, (3, 3) float64 pixels (distortion coefficients are
        unchanged: they act on normalised coordinates, before K)."""
        return self.matrix() @ np.asarray(K, dtype=np.float64)

    def valid_region(self) -> np.ndarray:
        """(size, size) bool: True on pixels that come from the image, False on the padding."""
        m = np.zeros((self.size, self.size), dtype=bool)
        ox, oy = self.offset
        m[oy : oy + self.new_size[0], ox : ox + self.new_size[1]] = True
        return m

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (size, size, 3) uint8 (bicubic resize with antialiasing, black padding)."""
        img = np.asarray(image)
        if img.shape[:2] != self.orig_size:
            raise ValueError(f"image is {img.shape[:2]}, the letterbox was made for {self.orig_size}")
        nh, nw = self.new_size
        pil = Image.fromarray(np.ascontiguousarray(img))
        if (nh, nw) != self.orig_size:
            pil = pil.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
        out = np.zeros((self.size, self.size, img.shape[2]), dtype=np.uint8)
        ox, oy = self.offset
        out[oy : oy + nh, ox : ox + nw] = np.asarray(pil)
        return out

    def to_json(self) -> dict:
        return {
            "orig_size": list(self.orig_size),
            "size": self.size,
            "new_size": list(self.new_size),
            "scale": [float(x) for x in self.scale],
            "offset": list(self.offset),
        }

    @classmethod
    def from_json(cls, d: dict) -> Letterbox:
        return cls(
            tuple(d["orig_size"]), int(d["size"]), tuple(d["new_size"]), tuple(d["scale"]), tuple(d["offset"])
        )


def load_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file (raises OSError / ValueError on an unreadable file)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def crop_resample(image: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """The square ``crop_box`` [x0, y0, x1, y1] (global pixel coordinates, may extend past the image) of an
    (H, W, C) uint8 image resampled to (size, size, C) uint8, bilinear, black outside the image.

    Uses the same mapping as the renderer's local images (``pipeline.camera.local_to_global``): local pixel
    centre l maps to global ``(l + 0.5) * side / size + x0``.
    """
    img = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    x0, y0, x1, _ = (float(v) for v in crop_box)
    s = (x1 - x0) / size
    # PIL's affine maps output edge coordinates to input edge coordinates: X_in = s * X_out + (x0 + 0.5)
    pil = Image.fromarray(img)
    out = pil.transform(
        (size, size),
        Image.Transform.AFFINE,
        (s, 0.0, x0 + 0.5, 0.0, s, y0 + 0.5),
        resample=Image.Resampling.BILINEAR,
        fillcolor=0 if img.ndim == 2 else (0,) * img.shape[2],
    )
    return np.asarray(out)
