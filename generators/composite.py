"""The weight-free ``composite`` generator (embedded default): a skin-shaded hand over a background.

Per sample, drawn from its own stream (``stage_rng(seed, 'generator', attempt)``; a regeneration under
``--min-alignment`` draws from the stream of its try):

* background: a random image from ``backgrounds`` (cropped to the image's aspect ratio, never stretched), or a
  procedural one (two-colour gradient along the light direction, low-frequency noise, a few soft shapes);
* skin: one tone from a palette (light to dark) for the person, with a low-frequency procedural texture;
* shading: normals from the label's own depth map (back-projected with K), one light direction for hand and
  background: ``albedo * (ambient + diffuse * max(0, n . l)) + specular * max(0, n . h)^shininess``;
* the hand is pasted exactly where the label's mask says (binary alpha), then the whole image gets a mild blur,
  sensor noise and a colour jitter.

The camera is the label's, so the label stays exact.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from generators.base import Generator
from pipeline.schema import Sample
from pipeline.seeding import stage_rng

logger = logging.getLogger(__name__)

SKIN_TONES = (  # sRGB 0-1, light to dark
    (0.96, 0.80, 0.69), (0.92, 0.74, 0.62), (0.87, 0.68, 0.55), (0.80, 0.60, 0.47), (0.72, 0.53, 0.40),
    (0.63, 0.45, 0.33), (0.55, 0.38, 0.27), (0.45, 0.31, 0.22), (0.37, 0.25, 0.18), (0.29, 0.20, 0.15),
)  # fmt: skip
_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclasses.dataclass(frozen=True)
class CompositeConfig:
    """backgrounds: folder of images (None: procedural). Shading and post-processing strengths."""

    backgrounds: str | None = None
    skin_tones: tuple = SKIN_TONES
    ambient: float = 0.38
    diffuse: float = 0.62
    specular: float = 0.12
    shininess: float = 24.0
    texture: float = 0.06
    blur: tuple = (0.3, 0.9)
    noise: tuple = (1.0, 4.0)
    jitter: float = 0.08


def _smooth_noise(rng, h: int, w: int, cells: int) -> np.ndarray:
    """(h, w) low-frequency noise in [-1, 1]: a random grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC), dtype=np.float32)


def _normals_from_depth(depth: np.ndarray, mask: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit camera-space normals (facing the camera) from a depth map; background depth is filled
    from neighbouring hand pixels first so silhouettes do not create false slopes."""
    d = depth.astype(np.float64).copy()
    valid = mask > 0
    for _ in range(3):  # spread hand depths 3 pixels outwards
        grown = d.copy()
        for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
            nb = np.roll(d, shift, axis=axis)
            take = (grown == 0) & (nb > 0)
            grown[take] = nb[take]
        d = grown
    H, W = d.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    P = np.stack([(u - K[0, 2]) * d / K[0, 0], (v - K[1, 2]) * d / K[1, 1], d], axis=-1)
    du = np.gradient(P, axis=1)
    dv = np.gradient(P, axis=0)
    n = np.cross(du, dv)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    flip = (n * P).sum(-1) > 0  # make normals face the camera
    n[flip] *= -1.0
    n[~valid] = (0.0, 0.0, -1.0)
    return n


class CompositeGenerator(Generator):
    """See module doc."""

    name = "composite"
    version = 1

    def __init__(self, config: CompositeConfig | None = None) -> None:
        self.config = config or CompositeConfig()
        self._backgrounds: list[Path] = []
        if self.config.backgrounds:
            root = Path(self.config.backgrounds)
            if not root.is_dir():
                raise FileNotFoundError(f"backgrounds folder not found: {root}")
            self._backgrounds = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_EXT)
            if not self._backgrounds:
                raise FileNotFoundError(f"no images (jpg, png, webp, bmp) in backgrounds folder {root}")

    def _background(self, rng, H: int, W: int, light2d: np.ndarray) -> tuple[np.ndarray, str]:
        if self._backgrounds:
            path = self._backgrounds[int(rng.integers(len(self._backgrounds)))]
            with Image.open(path) as im:
                im = im.convert("RGB")
                scale = max(W / im.width, H / im.height)  # crop to the aspect ratio, then resize: no stretching
                cw, ch = min(im.width, round(W / scale)), min(im.height, round(H / scale))
                x0 = int(rng.integers(0, im.width - cw + 1))
                y0 = int(rng.integers(0, im.height - ch + 1))
                bg = np.asarray(im.crop((x0, y0, x0 + cw, y0 + ch)).resize((W, H), Image.BILINEAR), dtype=np.float32)
            return bg / 255.0, path.name
        c1, c2 = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.95, 3)
        v, u = np.mgrid[0:H, 0:W].astype(np.float32)
        g = ((u / W - 0.5) * light2d[0] + (v / H - 0.5) * light2d[1]) + 0.5  # brighter toward the light
        g = np.clip(g, 0, 1)[..., None]
        bg = c2 * (1 - g) + c1 * g
        bg = bg * (1.0 + 0.12 * _smooth_noise(rng, H, W, int(rng.integers(3, 9)))[..., None])
        canvas = Image.fromarray((np.clip(bg, 0, 1) * 255).astype(np.uint8))
        layer = Image.new("RGBA", (W, H), (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for _ in range(int(rng.integers(2, 7))):
            x0, y0 = rng.uniform(-0.2, 1.0) * W, rng.uniform(-0.2, 1.0) * H
            x1, y1 = x0 + rng.uniform(0.1, 0.6) * W, y0 + rng.uniform(0.1, 0.6) * H
            col = tuple(int(c) for c in rng.integers(0, 256, 3)) + (int(rng.integers(60, 180)),)
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=col)
        layer = layer.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(2.0, 8.0))))
        canvas = Image.alpha_composite(canvas.convert("RGBA"), layer).convert("RGB")
        return np.asarray(canvas, dtype=np.float32) / 255.0, "procedural"

    def render(self, sample: Sample) -> tuple[np.ndarray, dict]:
        """(image (H, W, 3) uint8, generator record) for one sample with mask and depth filled in."""
        cfg = self.config
        if sample.mask is None or sample.depth is None:
            raise ValueError(f"{sample.key}: mask and depth are not filled in (render stage missing?)")
        H, W = sample.image_size
        rng = stage_rng(sample.seed, "generator", sample.attempt)
        light = rng.normal(0.0, 1.0, 3)
        light[2] = abs(light[2]) + 0.6  # travelling away from the camera: it lights what the camera sees
        light /= np.linalg.norm(light)
        bg, bg_name = self._background(rng, H, W, -light[:2] / max(np.linalg.norm(light[:2]), 1e-6))
        tone = int(rng.integers(len(cfg.skin_tones)))
        albedo = np.asarray(cfg.skin_tones[tone], dtype=np.float32)
        K = sample.camera.K
        img = bg.copy()
        rows, cols = np.nonzero(sample.mask)
        tex_noise = _smooth_noise(rng, H, W, 24)
        if len(rows):  # shade only the hands' box (plus a margin for the depth fill)
            r0, r1 = max(rows.min() - 4, 0), min(rows.max() + 5, H)
            c0, c1 = max(cols.min() - 4, 0), min(cols.max() + 5, W)
            Kc = K.copy()
            Kc[0, 2] -= c0
            Kc[1, 2] -= r0
            mask = sample.mask[r0:r1, c0:c1]
            n = _normals_from_depth(sample.depth[r0:r1, c0:c1], mask, Kc)
            v, u = np.mgrid[0 : r1 - r0, 0 : c1 - c0].astype(np.float64)
            view = -np.stack([(u - Kc[0, 2]) / Kc[0, 0], (v - Kc[1, 2]) / Kc[1, 1], np.ones_like(u)], axis=-1)
            view /= np.linalg.norm(view, axis=-1, keepdims=True)
            to_light = -light  # light travels along `light`; shading uses the direction toward the light
            diff = np.clip((n * to_light).sum(-1), 0.0, 1.0)
            half = to_light + view
            half /= np.maximum(np.linalg.norm(half, axis=-1, keepdims=True), 1e-12)
            spec = np.clip((n * half).sum(-1), 0.0, 1.0) ** cfg.shininess
            tex = 1.0 + cfg.texture * tex_noise[r0:r1, c0:c1]
            skin = albedo[None, None] * tex[..., None] * (cfg.ambient + cfg.diffuse * diff)[..., None]
            skin = skin + cfg.specular * spec[..., None]
            img[r0:r1, c0:c1] = np.where((mask > 0)[..., None], skin, img[r0:r1, c0:c1])
        b = 1.0 + rng.uniform(-cfg.jitter, cfg.jitter)
        c = 1.0 + rng.uniform(-cfg.jitter, cfg.jitter)
        s = 1.0 + rng.uniform(-cfg.jitter, cfg.jitter)
        grey = img.mean(-1, keepdims=True)
        img = (grey + (img - grey) * s - 0.5) * c + 0.5
        img = np.clip(img * b, 0.0, 1.0)
        out = Image.fromarray((img * 255.0 + 0.5).astype(np.uint8))
        sigma = float(rng.uniform(*cfg.blur))
        out = np.asarray(out.filter(ImageFilter.GaussianBlur(radius=sigma)), dtype=np.float32)
        noise_std = float(rng.uniform(*cfg.noise))
        out = np.clip(out + rng.normal(0.0, noise_std, out.shape), 0, 255).astype(np.uint8)
        record = {"name": self.name, "version": self.version, "weights_id": None, "steps": None,
                  "guidance_scale": None, "tas": None, "seed": int(sample.seed), "skin_tone": tone,
                  "background": bg_name, "light": [round(float(x), 6) for x in light], "blur": round(sigma, 4),
                  "noise": round(noise_std, 4)}  # fmt: skip
        return out, record

    def generate(self, samples: Sequence[Sample]) -> None:
        for s in samples:
            s.image, s.generator = self.render(s)
