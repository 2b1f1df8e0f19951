"""The weight-free ``composite`` generator (embedded default): a skin-shaded hand over a background.

Per sample, everything is drawn from its own stream (``stage_rng(seed, 'generator', attempt)``; a regeneration
under ``--min-alignment`` draws from the stream of its try), and every choice is recorded in the label's
``generator`` field. Version 8 (version 7 with ambient occlusion; version 7: version 6 with the blob
background in one scene's desaturated colours; version 6: version 5 with soft shadows, the key light's size
and the light skin keeps in shadow; version 5: version 4 with the palm's creases; version 4: version 3 with
the key light's shadows; version 3: version 2 with forearms and objects; ``CompositeConfig`` defaults; each
component can be switched back to version 1 for the ablation in docs/benchmarks.md,
``bench/composite_ablation.py``):

* **skin** (``skin="v2"``): a tone from a continuous range (``skin_tone`` in [0, 1], light to dark, along the
  ``SKIN_TONES`` anchors, with a small hue and saturation jitter), one per person, so the left hand matches
  the right; a lighter, pinker palm (per pixel, by the surface normal against the label's palm normal);
  knuckle and crease darkening at the label's visible 2D joints; the palm's flexion creases (``palm_lines``,
  the darkening; ``PALM_LINES``: distal, proximal and thenar lines and the wrist crease, in the palm's own
  coordinates from the label's joints, moved a little per person) on the pixels whose surface is the palm's
  (back-projected from the depth: neither the back of the hand nor fingers curled over the palm); nails at
  the visible fingertips on the back of the hand; a mottled texture; subtle specular. ``"flat"``: one
  palette tone, a faint texture (version 1).
* **light** (``light="presets"``): a key, a fill and a rim light from one of ``LIGHT_PRESETS`` (colour
  temperatures, strengths), in linear RGB; the same lights shade the background (a falloff toward the key
  light, their colours), exposure is metered on the hand. ``"single"``: one white light (version 1).
  Self-shadowing (``shadows=True``): the key light (the single light in version 1) casts shadows of both
  hands, the forearms and the held object onto all of them, from a shadow map of the scene's meshes
  (``generators.shadows``: an orthographic depth grid seen from the light, about ``ShadowParams.texel_px``
  pixels a texel, normal-offset bias). The key light has its preset's size (``penumbra=True``; ``KEY_SIZE``,
  recorded as ``lighting.key_size``): penumbrae widen with the distance from the shadowed surface to what
  casts the shadow (soft under a softbox or the sky, nearly hard in sunlight); ``penumbra=False`` gives
  version 5's fixed edge of about 3 texels (a 3 x 3 percentage-closer filter). The pixels in shadow lose the
  key's diffuse and specular terms and keep the ambient, fill and rim light; skin (hands and bare forearms)
  keeps ``scatter`` x ``SKIN_SCATTER`` of the key's diffuse term, the light scattered under the skin and
  bounced off the skin around it, reddest (``scatter=0``: none, version 5; the presets light only). The
  fraction of hand pixels in shadow is recorded as ``shadow_fraction`` (0.0 with ``shadows=False``, version
  3's shading, or for a sample without the hand model's triangles, ``Sample.hand_faces``). The background
  receives no shadow (it has no geometry).
* **ambient occlusion** (``occlusion``, 0.8 by default, version 8; 0: off, version 7; on six 512-sample
  draws MediaPipe finds 71 more hands with it and 36 fewer, for about 8% of the throughput,
  docs/benchmarks.md "Ambient occlusion: composite version 8"): contact shadows in creases,
  between touching fingers and where the object meets the palm, from the depth map
  (``generators.shadows.ambient_occlusion``, radius ``OCCLUSION_RADIUS``); it scales the diffuse, ambient
  and rim light of every surface pixel (hand, forearm, object) by 1 - ``occlusion`` x the occlusion, not the
  specular, with the ``"presets"`` light only (the version-1 ``"single"`` light ignores it). Recorded as
  ``components["occlusion"]`` (0.0 with the single light).
* **background** (``background="blobs"``, the default: a gradient and a few soft shapes, lit by the same
  lights; MediaPipe detects more hands on them, see docs/benchmarks.md; their colours from one scene's
  palette, ``_palette``, mostly desaturated, with ``blob_colours="scene"``, or uniform in RGB, often
  saturated, with ``"random"``, version 6), or ``background="natural"``:
  ``dead_leaves`` (occluding shapes with a power-law size distribution, textured), ``room`` (a wall and a
  table top with objects) or ``pink`` (coloured 1/f noise); all have natural 1/f amplitude spectra, with a
  random depth-of-field blur. Photos from ``backgrounds`` (cropped to the aspect ratio, never stretched)
  replace either, tinted by the lights.
* **forearm** (when the sample has props, ``pipeline.props``; the renderer drew the arms in the depth test
  and gave their pixels as ``Sample.prop_mask``): shaded with the hand's skin and lights, without creases,
  knuckles or nails; per person, bare or (``SLEEVE_P``) in a sleeve of a garment colour from
  ``sleeve_start`` metres up the arm (measured along the line from the middle finger's base through the
  wrist joint, on points back-projected from the depth), with folds and a cuff shadow, no specular. Drawn
  from the sample's own ``forearm`` stream and recorded as ``forearm``. The arm is pasted into the image
  but not into the hand layer or the alpha (the mask), which it already occludes.
* **objects** (props again: a cylinder, sphere, box or mug held against a palm; ``Sample.prop_mask`` id 4):
  painted in a material from ``OBJECT_COLOURS`` (ceramic, plastics, wood, rubber, metal) with its own
  gloss, lit by the same lights without the skin's wrap. The material is drawn from the sample's own
  ``objects`` stream and recorded as ``object_material`` for every sample of a run with props, so all
  records have the same fields.
* **camera effects** (``camera_effects=True``): white balance with a residual cast, defocus, motion blur
  (sometimes), signal-dependent sensor noise, a JPEG round trip (sometimes). False: a mild blur, noise and a
  colour jitter (version 1).
* **spectrum matching** (``spectrum_match > 0``, off by default): the whole image's radially averaged
  amplitude spectrum is pulled toward a 1/f line, keeping the phase.

The hand is pasted exactly where the label's mask says (binary alpha, ``compose``); only the camera effects,
which act on the whole image, mix a few pixels across the silhouette. The camera is the label's, so the label
stays exact.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import uniform_filter

from generators.base import Generator
from generators.shadows import ShadowParams, ambient_occlusion, occlusion
from pipeline.camera import undistort_normalized
from pipeline.kinematics import FINGER_CHAINS, palm_normal
from pipeline.props import PROP_IDS, prop_meshes
from pipeline.sample import Generation, Sample
from pipeline.schema import SIDES
from pipeline.seeding import stage_rng

logger = logging.getLogger(__name__)

SKIN_TONES = (  # sRGB 0-1, light to dark: the anchors of the continuous skin-tone range
    (0.96, 0.80, 0.69),
    (0.92, 0.74, 0.62),
    (0.87, 0.68, 0.55),
    (0.80, 0.60, 0.47),
    (0.72, 0.53, 0.40),
    (0.63, 0.45, 0.33),
    (0.55, 0.38, 0.27),
    (0.45, 0.31, 0.22),
    (0.37, 0.25, 0.18),
    (0.29, 0.20, 0.15),
)
#: lighting presets: (colour temperature K, strength) of key, fill and rim, and the ambient strength
LIGHT_PRESETS = {
    "studio": {"key": (5600, 1.00), "fill": (5600, 0.40), "rim": (6500, 0.55), "ambient": 0.22},
    "daylight": {"key": (5500, 1.05), "fill": (8000, 0.45), "rim": (6500, 0.35), "ambient": 0.25},
    "overcast": {"key": (6500, 0.60), "fill": (7000, 0.50), "rim": (6500, 0.20), "ambient": 0.40},
    "warm_indoor": {"key": (3000, 0.95), "fill": (3400, 0.40), "rim": (4000, 0.40), "ambient": 0.20},
    "mixed": {"key": (3400, 0.90), "fill": (5800, 0.45), "rim": (5000, 0.45), "ambient": 0.20},
    "dramatic": {"key": (4800, 1.25), "fill": (5600, 0.12), "rim": (6000, 0.90), "ambient": 0.10},
}
KEY_SIZE = {
    "studio": 0.30,
    "daylight": 0.03,
    "overcast": 0.70,
    "warm_indoor": 0.15,
    "mixed": 0.20,
    "dramatic": 0.06,
}
"""Per lighting preset, the key light's angular radius seen from the hands, as its tangent
(``CompositeConfig.penumbra``): a softbox about 1 m across at 1.5 m (studio), the sun through some haze
(daylight), the sky (overcast), a lamp shade or a window across the room (warm indoor, mixed), a spotlight
(dramatic)."""
BACKGROUND_KINDS = ("dead_leaves", "room", "pink")
BLOB_SHAPES = (2, 7)
"""The blob background draws ``rng.integers(*BLOB_SHAPES)`` soft shapes."""
ARM_ID, OBJECT_ID = PROP_IDS["forearm"], PROP_IDS["object"]
"""The props' ids in the shading's id map, as in ``Sample.prop_mask`` (hands are 1 right, 2 left, as in the
mask)."""
OBJECT_COLOURS = (  # sRGB 0-1: ceramic, plastics, wood, rubber, metal
    (0.90, 0.89, 0.86),
    (0.75, 0.12, 0.10),
    (0.12, 0.30, 0.70),
    (0.95, 0.78, 0.15),
    (0.20, 0.55, 0.25),
    (0.55, 0.36, 0.20),
    (0.10, 0.10, 0.11),
    (0.62, 0.63, 0.66),
)
SLEEVE_P = 0.5
SLEEVE_START = (0.04, 0.20)  # metres up the arm from the wrist joint
GARMENT_COLOURS = (  # sRGB 0-1
    (0.12, 0.15, 0.25),  # navy
    (0.45, 0.45, 0.47),  # grey
    (0.08, 0.08, 0.09),  # black
    (0.88, 0.88, 0.85),  # white
    (0.55, 0.12, 0.12),  # red
    (0.20, 0.35, 0.22),  # green
    (0.72, 0.62, 0.48),  # beige
    (0.25, 0.35, 0.52),  # denim
    (0.60, 0.45, 0.20),  # mustard
)
SHADOW_PARAMS = ShadowParams()
"""The key light's shadow map (``generators.shadows``): texel, normal offset, bias."""
SKIN_SCATTER = (0.40, 0.25, 0.18)
"""Linear RGB: the fraction of the key light's diffuse term that skin keeps in the key's shadow
(``CompositeConfig.scatter`` = 1): light scattered under the skin from its lit parts and bounced off the
skin around it; red reaches farthest through skin. Objects and sleeves keep none."""
SHADOW_FADE = (-0.05, 0.2)
"""n . l over which the key light's shadow fades in (``CompositeGenerator._key_shadow``)."""
OCCLUSION_RADIUS = 0.015
"""Metres: the reach of the ambient occlusion (``CompositeConfig.occlusion``), about a finger's width."""
_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclasses.dataclass(frozen=True)
class CompositeConfig:
    """backgrounds: folder of images (None: procedural). ``skin``, ``light``, ``background``,
    ``camera_effects``, ``spectrum_match`` and ``shadows`` select the components (module doc); the rest are
    strengths."""

    backgrounds: str | None = None
    skin: str = "v2"  # "v2" | "flat"
    light: str = "presets"  # "presets" | "single"
    background: str = (
        "blobs"  # "blobs" | "natural" (measured: blobs are detected more often, docs/benchmarks.md)
    )
    blob_colours: str = "scene"  # "scene": one desaturated palette (``_palette``); "random": uniform RGB (v6)
    camera_effects: bool = True
    spectrum_match: float = 0.0  # 0: off; else the blend (0-1] toward a 1/f amplitude spectrum
    shadows: bool = True  # the key light's shadow map (``generators.shadows``); False: version 3's shading
    penumbra: bool = True  # the key light's size from its preset (module doc); False: version 5's soft edge
    scatter: float = 1.0  # in [0, 1], times ``SKIN_SCATTER``: key light kept by skin in shadow; 0: v5
    occlusion: float = 0.8  # ambient occlusion's strength in [0, 1] (presets light); 0: off, v7 (module doc)
    palm_lines: float = 0.3  # darkening of the palm's flexion creases (skin v2); 0: none (module doc)
    skin_tones: tuple = SKIN_TONES
    ambient: float = 0.38
    diffuse: float = 0.62
    specular: float = 0.12
    shininess: float = 24.0
    texture: float = 0.06
    blur: tuple = (0.3, 0.9)
    noise: tuple = (1.0, 4.0)
    jitter: float = 0.08
    defocus: tuple = (0.0, 1.0)  # camera effects: Gaussian sigma, px
    motion_blur: float = 0.2  # probability of a motion blur, 3-9 px long
    jpeg: float = 0.5  # probability of a JPEG round trip, quality 50-95

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("skin", self.skin, ("v2", "flat")),
            ("light", self.light, ("presets", "single")),
            ("background", self.background, ("natural", "blobs")),
            ("blob_colours", self.blob_colours, ("scene", "random")),
        ):
            if value not in allowed:
                raise ValueError(f"composite {name} must be one of {allowed}, got {value!r}")
        if not 0.0 <= self.spectrum_match <= 1.0:
            raise ValueError(f"composite spectrum_match must be in [0, 1], got {self.spectrum_match!r}")
        if not 0.0 <= self.palm_lines <= 1.0:
            raise ValueError(f"composite palm_lines must be in [0, 1], got {self.palm_lines!r}")
        if not 0.0 <= self.scatter <= 1.0:
            raise ValueError(f"composite scatter must be in [0, 1], got {self.scatter!r}")
        if not 0.0 <= self.occlusion <= 1.0:
            raise ValueError(f"composite occlusion must be in [0, 1], got {self.occlusion!r}")


# The palm's flexion creases in the palm's own coordinates (``_palm_coords``): (v, u) control points, v
# across the palm (+1 at the index knuckle, -1 at the little finger's), u from the wrist joint (0) to the
# middle finger's knuckle (1). Distal (heart) line, proximal (head) line, thenar (life) line, wrist crease.
PALM_LINES = (
    ((-1.15, 0.70), (-0.6, 0.76), (0.0, 0.82), (0.35, 0.90), (0.5, 0.97)),
    ((1.05, 0.80), (0.6, 0.72), (0.0, 0.63), (-0.6, 0.55), (-0.85, 0.50)),
    ((1.05, 0.80), (0.55, 0.62), (0.32, 0.42), (0.25, 0.22), (0.25, 0.02)),
    ((-0.8, -0.02), (0.0, -0.04), (0.8, -0.02)),
)
PALM_LINE_JITTER = 0.05
"""Per person, each control point moves by up to this much (both coordinates; a stream of its own)."""
PALM_SIDE = (0.004, 0.022)
"""Metres out of the palm's mid-plane (through the wrist and knuckle joints) where its surface lies: only
those points get lines, so fingers curled over the palm and the back of the hand get none."""
PALM_LINE_WIDTH = 0.0006
"""Metres: the crease's half width (at least a pixel's footprint)."""


def _palm_coords(
    joints: np.ndarray, side: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
    """(origin, u, v, n, length, half_width) of a hand's palm from its (21, 3) joints (metres): ``u`` the unit
    axis from the wrist joint to the middle knuckle, ``length`` that distance; ``v`` across, toward the index
    knuckle, ``half_width`` half the index-to-little-knuckle span along it; ``n`` out of the palm."""
    j = np.asarray(joints, dtype=np.float64)
    axis = j[9] - j[0]
    length = float(np.linalg.norm(axis))
    u = axis / max(length, 1e-9)
    across = j[5] - j[17]
    across = across - (across @ u) * u
    half = 0.5 * float(np.linalg.norm(across))
    return j[0], u, across / max(2 * half, 1e-9), palm_normal(j, side), length, half


def _polyline_distance(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """(N,) distance of ``points`` (N, 2) to the polyline ``line`` (M, 2), same units."""
    best = np.full(len(points), np.inf)
    for a, b in zip(line[:-1], line[1:], strict=True):
        ab = b - a
        t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-18), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(points - (a + t[:, None] * ab), axis=-1))
    return best


class Composite(NamedTuple):
    """The layers of one image before the camera: linear RGB float32 (H, W, 3) each; ``alpha`` is the mask."""

    image: np.ndarray
    background: np.ndarray
    hand: np.ndarray
    alpha: np.ndarray
    record: dict


# -- colour --------------------------------------------------------------------------------------------------
_SRGB_LUT = None
_LINEAR_LUT = None


def to_linear(x):
    """sRGB (0-1) -> linear."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def to_srgb8(x: np.ndarray) -> np.ndarray:
    """Linear float (clipped to 0-1) -> sRGB uint8, through a 4096-entry table."""
    global _SRGB_LUT
    if _SRGB_LUT is None:
        v = np.linspace(0.0, 1.0, 4096)
        s = np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)
        _SRGB_LUT = np.clip(s * 255.0 + 0.5, 0, 255).astype(np.uint8)
    idx = np.clip(x * 4095.0 + 0.5, 0, 4095).astype(np.int32)
    return _SRGB_LUT[idx]


def _to_u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def linear_u8(x: np.ndarray) -> np.ndarray:
    """sRGB uint8 -> linear float32, through a table."""
    global _LINEAR_LUT
    if _LINEAR_LUT is None:
        _LINEAR_LUT = to_linear(np.arange(256) / 255.0)
    return _LINEAR_LUT[x]


def kelvin_rgb(t: float) -> np.ndarray:
    """Linear RGB of a black body at ``t`` K (Tanner Helland's fit), normalised to luminance 1."""
    t = min(max(t, 1500.0), 15000.0) / 100.0
    r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    g = (
        99.4708025861 * math.log(t) - 161.1195681661
        if t <= 66
        else 288.1221695283 * (t - 60) ** -0.0755148492
    )
    b = 255.0 if t >= 66 else (0.0 if t <= 19 else 138.5177312231 * math.log(t - 10) - 305.0447927307)
    rgb = to_linear(np.clip(np.array([r, g, b]) / 255.0, 0, 1))
    return (rgb / (rgb @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32))).astype(np.float32)


def skin_albedo(tone: float, tones: Sequence = SKIN_TONES) -> np.ndarray:
    """sRGB albedo of ``tone`` in [0, 1] (light to dark): piecewise-linear along the anchors."""
    anchors = np.asarray(tones, dtype=np.float32)
    x = min(max(float(tone), 0.0), 1.0) * (len(anchors) - 1)
    i = min(int(x), len(anchors) - 2)
    return anchors[i] * (1 - (x - i)) + anchors[i + 1] * (x - i)


# -- fields --------------------------------------------------------------------------------------------------
def _smooth_noise(rng, h: int, w: int, cells: int) -> np.ndarray:
    """(h, w) low-frequency noise in [-1, 1]: a random grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC), dtype=np.float32)


def pink_noise(rng, h: int, w: int, alpha: float = 1.0) -> np.ndarray:
    """(h, w) float32 noise, zero mean and unit std, whose amplitude spectrum falls as 1/f^alpha
    (random phase). Above 256 px it is drawn at half size and upsampled (its top octave is left to texture and
    sensor noise)."""
    if max(h, w) > 256:
        small = pink_noise(rng, (h + 1) // 2, (w + 1) // 2, alpha)
        return np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BILINEAR), dtype=np.float32)
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    amp = f ** -float(alpha)
    amp[0, 0] = 0.0
    spec = rng.standard_normal(amp.shape, dtype=np.float32) + 1j * rng.standard_normal(
        amp.shape, dtype=np.float32
    )
    x = np.fft.irfft2(spec * amp, s=(h, w)).astype(np.float32)
    return (x - x.mean()) / max(float(x.std()), 1e-12)


def radial_spectrum(img: np.ndarray, bins: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies in cycles per pixel, mean amplitude) of a greyscale image, in log-spaced radial bins."""
    g = np.asarray(img, dtype=np.float64)
    g = (g - g.mean()) * np.outer(np.hanning(g.shape[0]), np.hanning(g.shape[1]))
    a = np.abs(np.fft.rfft2(g))
    f = np.sqrt(np.fft.fftfreq(g.shape[0])[:, None] ** 2 + np.fft.rfftfreq(g.shape[1])[None, :] ** 2)
    edges = np.geomspace(2.0 / max(g.shape), 0.5, bins + 1)
    idx = np.digitize(f.ravel(), edges) - 1
    ok = (idx >= 0) & (idx < bins)
    s = np.bincount(idx[ok], a.ravel()[ok], bins)
    n = np.bincount(idx[ok], None, bins)
    keep = n > 0
    return np.sqrt(edges[:-1] * edges[1:])[keep], s[keep] / n[keep]


def spectrum_slope(img: np.ndarray, fmin: float = 0.01, fmax: float = 0.25) -> float:
    """The log-log slope of ``radial_spectrum`` between ``fmin`` and ``fmax`` cycles per pixel
    (natural: ~ -1)."""
    f, a = radial_spectrum(img)
    sel = (f >= fmin) & (f <= fmax)
    return float(np.polyfit(np.log(f[sel]), np.log(a[sel]), 1)[0])


def _box_blur(a: np.ndarray, r: int) -> np.ndarray:
    """Box blur of radius ``r`` along both first axes (edges clamped)."""
    size = (2 * r + 1, 2 * r + 1) + (1,) * (a.ndim - 2)
    return uniform_filter(np.asarray(a, dtype=np.float32), size=size, mode="nearest")


def _back_project(K: np.ndarray, dist, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(N, 3) float32 camera-space points (metres) of the pixels (``u``, ``v``) (N,) at depths ``z`` (N,)
    metres, through the intrinsics ``K`` (3, 3) (skew included) and the lens distortion ``dist`` (or None)."""
    f32 = np.float32
    y = (np.asarray(v, f32) - f32(K[1, 2])) * f32(1 / K[1, 1])
    x = (np.asarray(u, f32) - f32(K[0, 2]) - f32(K[0, 1]) * y) * f32(1 / K[0, 0])
    if dist is not None:
        x, y = undistort_normalized(np.stack([x, y], axis=-1), dist).astype(f32).T
    z = np.asarray(z, f32)
    return np.stack([x * z, y * z, z], axis=-1)


def _normals_from_depth(depth: np.ndarray, mask: np.ndarray, K: np.ndarray, smooth: int = 0) -> np.ndarray:
    """(H, W, 3) unit camera-space normals (facing the camera) from a depth map; background depth is filled
    from neighbouring hand pixels first so silhouettes do not create false slopes. ``smooth``: a box-blur
    radius (twice, mask-weighted) that rounds off the mesh's facets."""
    d = depth.astype(np.float32)  # float32 throughout: depth steps of 0.1 mm at 1 m are far above its epsilon
    valid = mask > 0
    for _ in range(3):  # spread hand depths 3 pixels outwards
        grown = d.copy()
        for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
            nb = np.roll(d, shift, axis=axis)
            take = (grown == 0) & (nb > 0)
            grown[take] = nb[take]
        d = grown
    H, W = d.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    fx, fy, cx, cy = (np.float32(x) for x in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    P = np.stack([(u - cx) * d / fx, (v - cy) * d / fy, d], axis=-1)
    du = np.gradient(P, axis=1)
    dv = np.gradient(P, axis=0)
    n = np.stack(
        [
            du[..., 1] * dv[..., 2] - du[..., 2] * dv[..., 1],
            du[..., 2] * dv[..., 0] - du[..., 0] * dv[..., 2],
            du[..., 0] * dv[..., 1] - du[..., 1] * dv[..., 0],
        ],
        axis=-1,
    )  # du x dv
    n /= np.maximum(np.sqrt((n * n).sum(-1, keepdims=True)), 1e-20)
    flip = (n * P).sum(-1) > 0  # make normals face the camera
    n[flip] *= -1.0
    n[~valid] = (0.0, 0.0, -1.0)
    n = n.astype(np.float32)
    if smooth > 0:
        w = valid.astype(np.float32)[..., None]
        acc = n * w
        for _ in range(2):
            acc, w = _box_blur(acc, smooth), _box_blur(w, smooth)
        n = np.where(valid[..., None], acc / np.maximum(w, 1e-6), n)
        n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
    return n


# -- lights --------------------------------------------------------------------------------------------------
def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _draw_lights(rng, mode: str) -> dict:
    """Directions toward the lights (camera space: x right, y down, z forward), linear colours x strengths."""
    if mode == "single":
        light = rng.normal(0.0, 1.0, 3)
        light[2] = abs(light[2]) + 0.6  # travelling away from the camera: it lights what the camera sees
        light = _unit(light)
        return {
            "preset": "single",
            "key": (-light, np.ones(3, np.float32), 1.0),
            "fill": None,
            "rim": None,
            "ambient": None,
            "light": light,
        }
    name = list(LIGHT_PRESETS)[int(rng.integers(len(LIGHT_PRESETS)))]
    p = LIGHT_PRESETS[name]
    az = rng.uniform(-math.pi, math.pi)
    el = rng.uniform(
        0.35, 1.1
    )  # key: in front of the hand, above the horizon of the view more often than not
    key = _unit(
        [
            math.sin(az) * math.cos(el),
            -abs(math.cos(az)) * math.cos(el) * rng.choice([1, 1, -1]),
            -math.sin(el),
        ]
    )
    fill = _unit([-key[0] + rng.normal(0, 0.3), -key[1] * 0.5 + rng.normal(0, 0.3), -rng.uniform(0.6, 1.2)])
    rim = _unit([-key[0] + rng.normal(0, 0.3), -key[1] + rng.normal(0, 0.3), rng.uniform(0.3, 1.0)])  # behind
    jit = lambda t: float(t * math.exp(rng.normal(0, 0.08)))  # noqa: E731
    out = {"preset": name, "ambient": None}
    for role, d in (("key", key), ("fill", fill), ("rim", rim)):
        temp, strength = p[role]
        temp = jit(temp)
        out[role] = (d, kelvin_rgb(temp), strength * float(rng.uniform(0.85, 1.15)))
        out[f"{role}_k"] = round(temp)
    temp = jit(p["fill"][0])
    out["ambient"] = (kelvin_rgb(temp), p["ambient"] * float(rng.uniform(0.8, 1.2)))
    return out


class CompositeGenerator(Generator):
    """See module doc."""

    name = "composite"
    version = 8

    @classmethod
    def from_config(cls, config, run=None, **_) -> CompositeGenerator:
        """The generator of a ``CompositeGeneratorConfig`` (``generators.GENERATORS``): its components, and
        the run's ``backgrounds`` folder."""
        options = config.model_dump(exclude={"kind"})
        return cls(CompositeConfig(backgrounds=None if run is None else run.backgrounds, **options))

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

    # -- backgrounds -----------------------------------------------------------------------------------------
    def _photo(self, rng, H: int, W: int) -> tuple[np.ndarray, str]:
        path = self._backgrounds[int(rng.integers(len(self._backgrounds)))]
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = max(W / im.width, H / im.height)  # crop to the aspect ratio, then resize: no stretching
            cw, ch = min(im.width, round(W / scale)), min(im.height, round(H / scale))
            x0 = int(rng.integers(0, im.width - cw + 1))
            y0 = int(rng.integers(0, im.height - ch + 1))
            bg = np.asarray(
                im.crop((x0, y0, x0 + cw, y0 + ch)).resize((W, H), Image.BILINEAR), dtype=np.uint8
            )
        return bg, path.name

    @staticmethod
    def _blobs(rng, H: int, W: int, light2d: np.ndarray, colours: str = "scene") -> np.ndarray:
        """A two-colour gradient along the light, low-frequency noise, a few soft shapes (sRGB uint8).
        ``colours``: "scene", all from one scene's palette (``_palette``: a few hues near a base hue,
        mostly desaturated, as in the natural backgrounds and in most photographs); "random", uniform in
        RGB per colour, often saturated (version 1 to 6)."""
        if colours == "scene":
            palette = CompositeGenerator._palette(rng, 2 + BLOB_SHAPES[1])
            c1, c2 = palette[0], palette[1]
            shape_rgb = (np.clip(palette[2:], 0, 1) * 255).astype(np.int64)
        else:
            c1 = rng.uniform(0.05, 0.95, 3).astype(np.float32)
            c2 = rng.uniform(0.05, 0.95, 3).astype(np.float32)
            shape_rgb = None
        v, u = np.mgrid[0:H, 0:W].astype(np.float32)
        lx, ly = np.float32(light2d[0]), np.float32(light2d[1])
        g = ((u / W - 0.5) * lx + (v / H - 0.5) * ly) + 0.5  # brighter toward the light
        g = np.clip(g, 0, 1)[..., None]
        bg = c2 * (1 - g) + c1 * g
        bg = bg * (1.0 + 0.12 * _smooth_noise(rng, H, W, int(rng.integers(3, 9)))[..., None])
        canvas = Image.fromarray((np.clip(bg, 0, 1) * 255).astype(np.uint8))
        # the soft shapes are drawn and blurred at half resolution (they are blurred anyway), then enlarged
        h2, w2 = max(H // 2, 1), max(W // 2, 1)
        layer = Image.new("RGBA", (w2, h2), (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for k in range(int(rng.integers(*BLOB_SHAPES))):
            x0, y0 = rng.uniform(-0.2, 1.0) * w2, rng.uniform(-0.2, 1.0) * h2
            x1, y1 = x0 + rng.uniform(0.1, 0.6) * w2, y0 + rng.uniform(0.1, 0.6) * h2
            rgb = rng.integers(0, 256, 3) if shape_rgb is None else shape_rgb[k]
            col = tuple(int(c) for c in rgb) + (int(rng.integers(60, 180)),)
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=col)
        layer = layer.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(2.0, 8.0)) / 2))
        layer = layer.resize((W, H), Image.BILINEAR)
        canvas = Image.alpha_composite(canvas.convert("RGBA"), layer).convert("RGB")
        return np.asarray(canvas, dtype=np.uint8)

    @staticmethod
    def _palette(rng, n: int) -> np.ndarray:
        """(n, 3) sRGB colours of one scene: a few hues near a base hue, mostly desaturated, varied
        lightness."""
        base = rng.uniform(0, 1)
        sat = rng.uniform(0.04, 0.35)
        out = []
        for _ in range(n):
            h = (base + rng.normal(0, 0.08) + (0.5 if rng.random() < 0.15 else 0.0)) % 1.0
            s = min(max(sat * math.exp(rng.normal(0, 0.4)), 0.0), 0.9)
            v = rng.uniform(0.2, 0.95)
            i, f = int(h * 6) % 6, h * 6 - int(h * 6)
            p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
            out.append([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])
        return np.asarray(out, dtype=np.float32)

    def _natural(self, rng, H: int, W: int) -> tuple[np.ndarray, str, dict]:
        """A procedural background with a natural 1/f spectrum: sRGB reflectance (H, W, 3) uint8, kind,
        record."""
        kind = BACKGROUND_KINDS[int(rng.choice(len(BACKGROUND_KINDS), p=(0.4, 0.35, 0.25)))]
        alpha = float(rng.uniform(0.9, 1.1))
        tex_amp = float(rng.uniform(0.04, 0.15))
        pal = self._palette(rng, 6)
        if kind == "pink":
            lum = pink_noise(rng, H, W, alpha)
            small = max(H // 4, 8), max(W // 4, 8)
            chroma = [
                np.asarray(
                    Image.fromarray(pink_noise(rng, *small, alpha), mode="F").resize((W, H)), dtype=np.float32
                )
                for _ in range(2)
            ]
            t = np.clip(0.5 + 0.25 * chroma[0], 0, 1)[..., None]
            bg = pal[0] * (1 - t) + pal[1] * t
            bg = bg * np.exp(0.45 * lum)[..., None] * (1 + 0.1 * chroma[1])[..., None]
            return _to_u8(bg), kind, {"alpha": round(alpha, 4)}
        canvas = Image.new("RGB", (W, H), tuple(int(c * 255) for c in pal[0]))
        draw = ImageDraw.Draw(canvas)
        if kind == "room":  # a wall above, a table top below a tilted horizon line
            y = rng.uniform(0.35, 0.8) * H
            tilt = rng.normal(0, 0.08) * W
            draw.polygon(
                [(0, y - tilt), (W, y + tilt), (W, H), (0, H)], fill=tuple(int(c * 255) for c in pal[1])
            )
            n, rmin, rmax = int(rng.integers(4, 14)), 0.03 * W, 0.25 * W
        else:
            n, rmin, rmax = int(rng.integers(250, 450)), 0.015 * W, 0.45 * W
        # radii with density ~ r^-3 (dead leaves: a scale-invariant, 1/f image), larger ones first
        u = rng.uniform(0, 1, n)
        r = (rmin**-2 - u * (rmin**-2 - rmax**-2)) ** -0.5
        r = np.sort(r)[::-1] if kind == "room" else r
        cx, cy = rng.uniform(-0.1, 1.1, n) * W, rng.uniform(-0.1, 1.1, n) * H
        shape = rng.integers(0, 3, n)
        asp = np.exp(rng.normal(0, 0.4, n))
        cols = _to_u8(pal[rng.integers(0, len(pal), n)] * rng.uniform(0.75, 1.2, (n, 1))).tolist()
        for k in range(n):
            rx, ry = r[k] * asp[k], r[k] / asp[k]
            box = [cx[k] - rx, cy[k] - ry, cx[k] + rx, cy[k] + ry]
            col = tuple(cols[k])
            if shape[k] == 0:
                draw.ellipse(box, fill=col)
            elif shape[k] == 1:
                draw.rectangle(box, fill=col)
            else:
                a = rng.uniform(0, math.pi)
                pts = [(cx[k] + rx * math.cos(a + t), cy[k] + ry * math.sin(a + t)) for t in (0, 2.1, 4.2)]
                draw.polygon(pts, fill=col)
        bg = np.asarray(canvas, dtype=np.float32) / 255.0
        bg = bg * np.exp(tex_amp * pink_noise(rng, H, W, alpha))[..., None]
        return _to_u8(bg), kind, {"alpha": round(alpha, 4), "shapes": n}

    # -- skin ------------------------------------------------------------------------------------------------
    @staticmethod
    def _marks(sample: Sample, r0: int, c0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Crease lines, knuckle blobs and nails (each (h, w) float32 in [0, 1]) drawn at the label's visible
        2D joints, in the hands' box starting at (r0, c0)."""
        layers = [Image.new("L", (w, h), 0) for _ in range(3)]
        draws = [ImageDraw.Draw(x) for x in layers]
        for side in SIDES:
            hand = sample.hands.get(side)
            if hand is None or hand.joints_2d is None:
                continue
            j2 = np.asarray(hand.joints_2d, dtype=np.float64) - (c0, r0)
            vis = np.asarray(hand.joints_visible, dtype=bool)
            for chain in FINGER_CHAINS:
                for a, b in zip((0, *chain[:-1]), chain, strict=True):
                    if b == chain[-1] or not vis[b]:
                        continue
                    nxt = chain[chain.index(b) + 1]
                    d = j2[nxt] - j2[a]  # the bend's direction, averaged over both bones
                    length = float(np.linalg.norm(j2[nxt] - j2[b]))
                    if length < 2.0:
                        continue
                    d = d / max(np.linalg.norm(d), 1e-6)
                    p = np.array([-d[1], d[0]])
                    half = 0.38 * length * (1.4 if a == 0 else 1.0)  # about half the finger's width
                    x, y = j2[b]
                    for off in (-0.08, 0.08):  # a double crease line across the joint
                        cx, cy = x + d[0] * off * length, y + d[1] * off * length
                        draws[0].line(
                            [(cx - p[0] * half, cy - p[1] * half), (cx + p[0] * half, cy + p[1] * half)],
                            fill=255,
                            width=max(1, round(length * 0.05)),
                        )
                    rk = 0.3 * length
                    draws[1].ellipse([x - rk, y - rk, x + rk, y + rk], fill=255)
                tip, dip = chain[-1], chain[-2]
                if vis[tip]:
                    d = j2[tip] - j2[dip]
                    length = float(np.linalg.norm(d))
                    if length >= 2.0:
                        d /= length
                        c = j2[tip] - d * 0.38 * length
                        a_len, b_len = 0.32 * length, 0.24 * length
                        pts = [
                            (
                                c[0] + d[0] * a_len * math.cos(t) - d[1] * b_len * math.sin(t),
                                c[1] + d[1] * a_len * math.cos(t) + d[0] * b_len * math.sin(t),
                            )
                            for t in np.linspace(0, 2 * math.pi, 16, endpoint=False)
                        ]
                        draws[2].polygon(pts, fill=255)
                        draws[0].polygon(pts, outline=160)  # the nail's edge
        creases = layers[0].filter(ImageFilter.GaussianBlur(0.8))
        knuckles = layers[1].filter(ImageFilter.GaussianBlur(2.5))
        nails = layers[2].filter(ImageFilter.GaussianBlur(0.7))
        return tuple(np.asarray(x, dtype=np.float32) / 255.0 for x in (creases, knuckles, nails))

    @staticmethod
    def _palm_lines(
        sample: Sample, u: np.ndarray, v: np.ndarray, depth: np.ndarray, ids: np.ndarray
    ) -> np.ndarray:
        """(N,) float32 in [0, 1]: how much of a palm crease (``PALM_LINES``) each pixel (``u``, ``v``) (N,)
        of the image shows, with ``depth`` (N,) metres and hand ids ``ids`` (N,) (1 right, 2 left, other:
        none). The pixels are back-projected and put in each palm's own coordinates (``_palm_coords``); only
        points on the palm's surface (``PALM_SIDE``) get lines. The lines move per person
        (``stage_rng(seed, 'palm')``), the same on both hands."""
        out = np.zeros(len(u), np.float32)
        rng = stage_rng(sample.seed, "palm", sample.attempt)
        lines = [
            np.asarray(line) + rng.uniform(-PALM_LINE_JITTER, PALM_LINE_JITTER, (len(line), 2))
            for line in PALM_LINES
        ]
        K = np.asarray(sample.camera.K, dtype=np.float64)
        for value, side in ((1, "right"), (2, "left")):
            hand = sample.hands.get(side)
            (pick,) = np.nonzero(ids == value)
            if hand is None or not len(pick):
                continue
            origin, ax_u, ax_v, ax_n, length, half = _palm_coords(hand.joints_3d, side)
            P = (
                _back_project(K, sample.camera.dist, u[pick], v[pick], depth[pick]).astype(np.float64)
                - origin
            )
            out_of_plane = P @ ax_n
            pu, pv = (P @ ax_u) / max(length, 1e-9), (P @ ax_v) / max(half, 1e-9)
            on = (out_of_plane > PALM_SIDE[0]) & (out_of_plane < PALM_SIDE[1]) & (pu > -0.15) & (pu < 1.05)
            on &= np.abs(pv) < 1.3
            if not on.any():
                continue
            pick, pu, pv = pick[on], pu[on], pv[on]
            metric = np.stack([pv * half, pu * length], axis=-1)  # metres in the palm's plane
            width = np.maximum(PALM_LINE_WIDTH, 0.6 * depth[pick].astype(np.float64) / float(K[0, 0]))
            d = np.min([_polyline_distance(metric, line * (half, length)) for line in lines], axis=0)
            out[pick] = np.exp(-0.5 * (d / width) ** 2).astype(np.float32)
        return out

    @staticmethod
    def _palm_normals(sample: Sample) -> dict[int, np.ndarray]:
        """Mask value (1 right, 2 left) -> unit palm normal (outward from the palm), from the label's
        joints."""
        out = {}
        for value, side in ((1, "right"), (2, "left")):
            hand = sample.hands.get(side)
            if hand is None:
                continue
            out[value] = palm_normal(hand.joints_3d, side).astype(np.float32)
        return out

    # -- the image -------------------------------------------------------------------------------------------
    def compose(self, sample: Sample) -> tuple[Composite, np.random.Generator]:
        """The layers before the camera (linear RGB) and the stream to continue with (``render``)."""
        cfg = self.config
        if sample.mask is None or sample.depth is None:
            raise ValueError(f"{sample.key}: mask and depth are not filled in (render stage missing?)")
        H, W = sample.image_size
        rng = stage_rng(sample.seed, "generator", sample.attempt)
        lights = _draw_lights(rng, cfg.light)
        key_dir = lights["key"][0]
        light2d = key_dir[:2] / max(float(np.linalg.norm(key_dir[:2])), 1e-6)  # toward the key, in the image
        record: dict = {"lighting": {"preset": lights["preset"]}}
        if cfg.light == "single":
            record["light"] = [round(float(x), 6) for x in lights["light"]]
        else:
            record["lighting"].update(
                {
                    r: {
                        "dir": [round(float(x), 4) for x in lights[r][0]],
                        "kelvin": lights[f"{r}_k"],
                        "strength": round(lights[r][2], 4),
                    }
                    for r in ("key", "fill", "rim")
                }
            )
            record["lighting"]["ambient"] = round(lights["ambient"][1], 4)
            # the key light's angular radius (tan) its shadows use; 0: the fixed soft edge of version 5
            lights["key_size"] = KEY_SIZE[lights["preset"]] if cfg.penumbra else 0.0
            record["lighting"]["key_size"] = lights["key_size"]
        # skin: one tone per person (both hands)
        if cfg.skin == "v2":
            tone = float(rng.uniform(0.0, 1.0))
            srgb = skin_albedo(tone, cfg.skin_tones) * np.exp(rng.normal(0, 0.03, 3)).astype(np.float32)
            srgb = np.clip(srgb, 0.02, 1.0)
            record["skin_tone"] = round(tone, 4)
            spec_strength = float(rng.uniform(0.03, 0.10))
        else:
            tone = int(rng.integers(len(cfg.skin_tones)))
            srgb = np.asarray(cfg.skin_tones[tone], dtype=np.float32)
            record["skin_tone"] = tone
            spec_strength = cfg.specular
        record["skin_rgb"] = [round(float(x), 4) for x in srgb]
        # background (reflectance or photo, sRGB)
        if self._backgrounds:
            bg_srgb, bg_name = self._photo(rng, H, W)
            kind, bg_rec = "photo", {}
        elif cfg.background == "natural":
            bg_srgb, kind, bg_rec = self._natural(rng, H, W)
            bg_name = "procedural"
        else:
            bg_srgb, kind, bg_rec = self._blobs(rng, H, W, light2d, cfg.blob_colours), "blobs", {}
            bg_name = "procedural"
        dof = float(rng.uniform(0.5, 4.0)) if kind != "blobs" else 0.0
        if dof > 0.3:  # depth of field: the hand is in focus, the background behind it is not
            bg_srgb = np.asarray(Image.fromarray(bg_srgb).filter(ImageFilter.GaussianBlur(radius=dof)))
            record["background_blur"] = round(dof, 3)
        record.update(
            background=bg_name, background_kind=kind, **({"background_params": bg_rec} if bg_rec else {})
        )
        tex_noise = _smooth_noise(rng, H, W, 24)
        if cfg.light == "single":
            bg = (
                bg_srgb.astype(np.float32) / 255.0
            )  # version 1: the background is drawn lit already, display space
            exposure = 1.0
        else:
            bg = linear_u8(bg_srgb)
            v = np.linspace(-0.5, 0.5, H, dtype=np.float32)[:, None]
            u = np.linspace(-0.5, 0.5, W, dtype=np.float32)[None, :]
            g = np.clip(0.5 + u * float(light2d[0]) + v * float(light2d[1]), 0, 1)  # brighter toward the key
            amb_c, amb_s = lights["ambient"]
            _, key_c, key_s = lights["key"]
            _, fill_c, fill_s = lights["fill"]
            # a wall facing the camera: the key light falls off across it, the fill light is even
            e_bg = (amb_c * amb_s + fill_c * fill_s * 0.45)[None, None] + (key_c * key_s)[None, None] * (
                0.35 + 0.5 * g
            )[..., None]
            if kind == "photo":  # a photo is lit already: the lights only tint it, keeping its brightness
                e_bg = e_bg / float(e_bg.mean())
            # metered on the lights (not on the background): a surface facing them gets about 1.1
            total = amb_s + key_s + 0.5 * fill_s
            exposure = float(np.exp(rng.normal(0.0, 0.15))) * 1.1 / total
            bg = bg * (e_bg * exposure)
            record["exposure"] = round(exposure, 4)
        img = bg.copy()
        hand_img = np.zeros_like(img)
        record["shadow_fraction"] = 0.0  # the hand pixels in the key light's shadow (``_shade``)
        alpha = sample.mask > 0
        props_px = sample.prop_mask  # the props' pixels by id (never in the mask), or None
        surface = alpha if props_px is None else alpha | (props_px > 0)
        if sample.props is not None:  # a run with props: the same fields in every record
            record["forearm"] = self._draw_forearm(sample, srgb)
            record["object_material"] = self._draw_material(sample)
        rows, cols = np.nonzero(surface)
        if len(rows):
            r0, r1 = max(rows.min() - 4, 0), min(rows.max() + 5, H)
            c0, c1 = max(cols.min() - 4, 0), min(cols.max() + 5, W)
            ids = sample.mask[r0:r1, c0:c1]
            if props_px is not None:
                p = props_px[r0:r1, c0:c1]
                ids = np.where(p > 0, p, ids).astype(np.uint8)
            skin, shadowed = self._shade(
                sample,
                rng,
                (r0, r1, c0, c1),
                ids,
                srgb,
                tone,
                lights,
                spec_strength,
                tex_noise[r0:r1, c0:c1],
                record.get("forearm"),
                record.get("object_material"),
            )
            skin = skin * exposure  # the exposure does not depend on the background: metered on the lights
            record["shadow_fraction"] = shadowed
            m = alpha[r0:r1, c0:c1]
            hand_img[r0:r1, c0:c1] = np.where(m[..., None], skin, 0.0)
            img[r0:r1, c0:c1] = np.where(surface[r0:r1, c0:c1, None], skin, img[r0:r1, c0:c1])
        return Composite(img, bg, hand_img, alpha, record), rng

    # -- the forearm -----------------------------------------------------------------------------------------
    @staticmethod
    def _draw_forearm(sample: Sample, srgb: np.ndarray) -> dict:
        """The forearms' look, one per person (both arms alike), from the sample's own ``forearm`` stream
        (so a run without props draws nothing more from the generator's stream): bare skin, or a sleeve
        from ``sleeve_start`` metres up the arm from the wrist joint, in a garment colour (sRGB), with folds
        ``fold_period`` metres apart."""
        rng = stage_rng(sample.seed, "forearm", sample.attempt)
        sleeve = bool(rng.random() < SLEEVE_P)
        start = float(rng.uniform(*SLEEVE_START))
        base = np.asarray(GARMENT_COLOURS[int(rng.integers(len(GARMENT_COLOURS)))], np.float64)
        rgb = np.clip(base * np.exp(rng.normal(0.0, 0.12, 3)), 0.02, 0.98)
        period = float(rng.uniform(0.015, 0.04))
        # the same fields in every record (tables such as Hugging Face datasets need one type)
        return {
            "sleeve": sleeve,
            "sleeve_start": round(start, 4) if sleeve else 0.0,
            "sleeve_rgb": [round(float(x), 4) for x in rgb] if sleeve else [0.0, 0.0, 0.0],
            "fold_period": round(period, 4) if sleeve else 0.0,
        }

    @staticmethod
    def _draw_material(sample: Sample) -> dict:
        """The held object's material (sRGB colour, specular strength and exponent) from the sample's own
        ``objects`` stream; drawn for every sample of a run with props, object or not (one record type)."""
        rng = stage_rng(sample.seed, "objects", sample.attempt)
        base = np.asarray(OBJECT_COLOURS[int(rng.integers(len(OBJECT_COLOURS)))], np.float64)
        rgb = np.clip(base * np.exp(rng.normal(0.0, 0.1, 3)), 0.02, 0.98)
        return {
            "rgb": [round(float(x), 4) for x in rgb],
            "gloss": round(float(rng.uniform(0.05, 0.5)), 4),
            "shininess": round(float(rng.uniform(10.0, 80.0)), 2),
        }

    @staticmethod
    def _arm_coords(sample: Sample, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """(N,) float32 metres up the nearest forearm from its wrist joint, for the pixels ``uv`` (N, 2)
        (u, v) of the image with ``depth`` (N,) metres (camera-space points back-projected through the
        camera's intrinsics and distortion, ``_back_project``; the arm's line runs from the middle finger's
        base through the wrist joint)."""
        K = np.asarray(sample.camera.K, dtype=np.float64)
        P = _back_project(K, sample.camera.dist, uv[:, 0], uv[:, 1], depth).astype(np.float64)
        best_t = np.zeros(len(P))
        best_d = np.full(len(P), np.inf)
        for side in SIDES:
            hand = sample.hands.get(side)
            if hand is None:
                continue
            j = np.asarray(hand.joints_3d, dtype=np.float64)
            a = _unit(j[0] - j[9])
            rel = P - j[0]
            t = rel @ a
            d = np.linalg.norm(rel - t[:, None] * a, axis=-1)
            take = d < best_d
            best_t = np.where(take, t, best_t)
            best_d = np.where(take, d, best_d)
        return best_t.astype(np.float32)

    @staticmethod
    def _key_shadow(
        sample: Sample, u: np.ndarray, v: np.ndarray, n: np.ndarray, to_light, light_size: float = 0.0
    ) -> np.ndarray:
        """(N,) float32 in [0, 1]: how much of the key light (toward ``to_light``, camera space; angular
        radius ``light_size``, tan) the pixels (``u``, ``v``) (N,) of the image, with unit normals
        ``n`` (N, 3), miss behind the scene's meshes (both hands, forearms, the object):
        ``generators.shadows.occlusion`` on the pixels back-projected from the depth, faded out over
        ``SHADOW_FADE`` of n . l (a surface turned away from the light is dark from the wrap lighting already;
        its own far side would shadow it, a step at the terminator). Zeros where the sample carries no hand
        triangles (``Sample.hand_faces``: not posed by a hand model)."""
        out = np.zeros(len(u), np.float32)
        faces = sample.hand_faces
        if faces is None or not len(u):
            return out
        lo, hi = SHADOW_FADE
        d = np.asarray(to_light, np.float32)
        f = np.clip((n[:, 0] * d[0] + n[:, 1] * d[1] + n[:, 2] * d[2] - lo) / (hi - lo), 0.0, 1.0)
        fade = f * f * (3 - 2 * f)
        test = fade > 0
        if not test.any():
            return out
        verts = {side: sample.verts[i] for i, side in enumerate(SIDES) if sample.hands[side] is not None}
        meshes = [(verts[side], faces[side]) for side in verts]
        meshes += [(pv, pf) for _, pv, pf in prop_meshes(sample.props, verts, faces)]
        (test,) = np.nonzero(test)
        uu, vv = u[test], v[test]
        z = sample.depth[vv.astype(np.int64), uu.astype(np.int64)].astype(np.float32)
        K = np.asarray(sample.camera.K, dtype=np.float64)
        points = _back_project(K, sample.camera.dist, uu, vv, z)
        # the texel: SHADOW_PARAMS.texel_px pixels at the hands' median depth (their vertices)
        hand_z = np.concatenate([v[:, 2] for v in verts.values()])
        footprint = float(np.median(hand_z)) / float(0.5 * (K[0, 0] + K[1, 1]))  # metres per pixel
        params = SHADOW_PARAMS
        texel = float(np.clip(params.texel_px * footprint, *params.texel_range))
        shade = occlusion(points.T, n[test].T, meshes, to_light, texel, params, light_size)
        out[test] = shade * fade[test]
        return out

    @staticmethod
    def _occlusion(sample: Sample, box, rows: np.ndarray, cols: np.ndarray, n: np.ndarray) -> np.ndarray:
        """(N,) float32 in [0, 1]: the ambient occlusion (``generators.shadows.ambient_occlusion``, radius
        ``OCCLUSION_RADIUS``) of the surface pixels (``rows``, ``cols``) (N,) of the box ``box`` (r0, r1, c0,
        c1) of the image, with unit normals ``n`` (N, 3) facing the camera, on the camera-space points
        back-projected from the box's depth."""
        r0, r1, c0, c1 = box
        depth = sample.depth[r0:r1, c0:c1].astype(np.float32)
        K = np.asarray(sample.camera.K, dtype=np.float64)
        grid = np.zeros((*depth.shape, 3), np.float32)
        v, u = np.nonzero(depth > 0)
        grid[v, u] = _back_project(K, sample.camera.dist, u + c0, v + r0, depth[v, u])
        focal = float(K[0, 0])
        return ambient_occlusion(
            grid, rows.astype(np.int64), cols.astype(np.int64), n, focal, OCCLUSION_RADIUS
        )

    def _shade(
        self, sample, rng, box, mask, srgb, tone, lights, spec_strength, tex, forearm, material
    ) -> tuple[np.ndarray, float]:
        """Shaded skin (h, w, 3) in the box of the hands and props (0 off them); linear RGB, or display
        space for the version-1 light; and the fraction of hand pixels in the key light's shadow (rounded;
        0.0 without shadows). ``mask`` (h, w) uint8: the box's hand ids, ``ARM_ID`` on forearm pixels,
        ``OBJECT_ID`` on object pixels; ``forearm``: the forearms' look (``_draw_forearm``) or None;
        ``material``: the object's (``_draw_material``) or None. Normals and the marks are made on the box
        (they need neighbours); the rest on the surface's pixels only."""
        cfg = self.config
        r0, r1, c0, c1 = box
        K = sample.camera.K.copy()
        K[0, 2] -= c0
        K[1, 2] -= r0
        h, w = mask.shape
        sel = mask > 0
        ids = mask[sel]
        on_arm = ids == ARM_ID
        on_obj = ids == OBJECT_ID
        sleeve_w = np.zeros(len(ids), np.float32)
        v2 = cfg.skin == "v2"
        n = _normals_from_depth(sample.depth[r0:r1, c0:c1], mask, K, smooth=2 if v2 else 0)[sel]  # (N, 3)
        vv, uu = np.nonzero(sel)
        vv, uu = vv.astype(np.float32), uu.astype(np.float32)
        view = -np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)], axis=-1)
        view /= np.linalg.norm(view, axis=-1, keepdims=True)
        tex = tex[sel]
        shadow, shadowed = None, 0.0  # shadow: (N,) how much of the key light each pixel misses
        if cfg.shadows:
            size = lights.get("key_size", 0.0)
            shadow = self._key_shadow(sample, uu + c0, vv + r0, n, lights["key"][0], size)
            hand_px = ~(on_arm | on_obj)
            shadowed = round(float((shadow[hand_px] > 0.5).mean()) if hand_px.any() else 0.0, 4)
        if v2:
            back = to_linear(srgb)
            palm_srgb = (
                srgb
                / np.maximum(skin_albedo(tone, cfg.skin_tones), 1e-3)
                * skin_albedo(tone * 0.45, cfg.skin_tones)
            )
            palm = to_linear(np.clip(palm_srgb * np.array([1.02, 0.98, 0.98]), 0, 1))  # lighter, pinker palms
            nails = to_linear(np.clip((srgb * 0.55 + np.array([0.95, 0.78, 0.76]) * 0.45) * 1.05, 0, 1))
            palm_w = np.zeros(len(ids), np.float32)
            for value, pn in self._palm_normals(sample).items():
                s = np.clip((n @ pn) * 1.5 + 0.5, 0.0, 1.0)
                palm_w = np.where(ids == value, s * s * (3 - 2 * s), palm_w)
            alb = back[None] * (1 - palm_w)[:, None] + palm[None] * palm_w[:, None]
            on_hand = (~(on_arm | on_obj)).astype(np.float32)
            creases, knuckles, nail = (x[sel] * on_hand for x in self._marks(sample, r0, c0, h, w))
            dark = creases * (0.10 + 0.22 * palm_w) + knuckles * 0.10 * (1 - palm_w)
            if cfg.palm_lines > 0:
                depth_px = sample.depth[r0:r1, c0:c1][sel]
                lines = self._palm_lines(sample, uu + c0, vv + r0, depth_px, ids)
                dark = dark + cfg.palm_lines * lines * palm_w * on_hand
            alb = alb * (1 - dark)[:, None]
            nail_w = nail * (1 - palm_w)
            alb = alb * (1 - nail_w)[:, None] + nails[None] * nail_w[:, None]
            fine = rng.standard_normal((h, w), dtype=np.float32)[sel]
            alb = alb * (1 + 0.08 * tex + 0.025 * fine)[:, None]
            if forearm is not None and forearm["sleeve"] and on_arm.any():
                uv = np.stack([uu[on_arm] + c0, vv[on_arm] + r0], axis=-1)
                t = self._arm_coords(sample, uv, sample.depth[r0:r1, c0:c1][sel][on_arm])
                edge = np.clip((t - forearm["sleeve_start"]) / 0.006, 0.0, 1.0)
                sleeve_w[on_arm] = edge * edge * (3 - 2 * edge)
                folds = 1.0 + 0.10 * np.sin(2 * math.pi * t / forearm["fold_period"] + 3.0 * tex[on_arm])
                weave = 1.0 + 0.12 * tex[on_arm] + 0.05 * fine[on_arm]
                cloth = (
                    to_linear(np.asarray(forearm["sleeve_rgb"], np.float32))[None] * (folds * weave)[:, None]
                )
                # the cuff's shadow on the skin just below it
                cuff = np.clip(1.0 - np.abs(t - forearm["sleeve_start"] + 0.004) / 0.004, 0.0, 1.0)
                sw = sleeve_w[on_arm][:, None]
                alb[on_arm] = alb[on_arm] * (1 - 0.35 * cuff)[:, None] * (1 - sw) + cloth * sw
            if material is not None and on_obj.any():
                paint = to_linear(np.asarray(material["rgb"], np.float32))[None]
                alb[on_obj] = paint * (1 + 0.04 * tex[on_obj] + 0.01 * fine[on_obj])[:, None]
        out = np.zeros((h, w, 3), np.float32)
        if cfg.light == "single":
            to_light = lights["key"][0]
            diff = np.clip(n @ to_light.astype(np.float32), 0.0, 1.0)
            half = to_light.astype(np.float32) + view
            half /= np.maximum(np.linalg.norm(half, axis=-1, keepdims=True), 1e-12)
            spec = np.clip((n * half).sum(-1), 0.0, 1.0) ** cfg.shininess
            if shadow is not None:
                diff, spec = diff * (1 - shadow), spec * (1 - shadow)
            if v2:  # linear skin under the version-1 light, back to display space
                e = (cfg.ambient + cfg.diffuse * diff)[:, None]
                lin = alb * e + spec_strength * spec[:, None]
                out[sel] = to_srgb8(np.clip(lin, 0, 1)).astype(np.float32) / 255.0
                return out, shadowed
            albedo = srgb[None] * (1.0 + cfg.texture * tex)[:, None]
            out[sel] = albedo * (cfg.ambient + cfg.diffuse * diff)[:, None] + spec_strength * spec[:, None]
            return out, shadowed
        if not v2:
            alb = to_linear(srgb)[None] * (1.0 + cfg.texture * tex)[:, None]
            nail_w = np.zeros(len(ids), np.float32)
        amb_c, amb_s = lights["ambient"]
        e = np.broadcast_to((amb_c * amb_s)[None], (len(ids), 3)).copy()
        spec = np.zeros((len(ids), 3), np.float32)
        shin = 18.0 + 40.0 * nail_w
        strength = spec_strength * (1 + 2 * nail_w) * (1 - sleeve_w)
        wrap = np.float32(0.25)  # wrap lighting: skin scatters light; objects do not
        if material is not None and on_obj.any():
            shin = np.where(on_obj, np.float32(material["shininess"]), shin)
            strength = np.where(on_obj, np.float32(material["gloss"]), strength)
            wrap = np.where(on_obj, np.float32(0.0), wrap)
        for role in ("key", "fill"):
            d, c, s = lights[role]
            d = d.astype(np.float32)
            ndl = n @ d
            diff = np.clip((ndl + wrap) / (1 + wrap), 0, 1) * s
            half = d + view
            half /= np.maximum(np.linalg.norm(half, axis=-1, keepdims=True), 1e-12)
            spec_l = np.clip((n * half).sum(-1), 0, 1) ** shin * s * (ndl > 0)
            if role == "key" and shadow is not None:  # the key light's shadow: ambient, fill and rim stay
                if cfg.scatter > 0:  # skin keeps some of it: scattered under the skin, bounced off skin
                    skin_w = (1 - sleeve_w) * ~on_obj
                    keep = np.float32(cfg.scatter) * np.asarray(SKIN_SCATTER, np.float32)
                    e += (diff * shadow * skin_w)[:, None] * keep[None] * c
                diff, spec_l = diff * (1 - shadow), spec_l * (1 - shadow)
            e += diff[:, None] * c
            spec += spec_l[:, None] * c
        d, c, s = lights["rim"]
        ndv = np.clip((n * view).sum(-1), 0, 1)
        side_dot = np.clip(n[:, :2] @ _unit(d[:2]).astype(np.float32), 0, 1)
        e += ((1 - ndv) ** 2.5 * side_dot * s * 1.5)[:, None] * c
        if cfg.occlusion > 0 and cfg.light == "presets":  # contact shadows: creases, between fingers, ...
            e *= (1 - cfg.occlusion * self._occlusion(sample, box, vv, uu, n))[:, None]
        out[sel] = alb * e + strength[:, None] * spec
        return out, shadowed

    def _camera(self, comp: Composite, rng) -> tuple[np.ndarray, dict]:
        """Linear (or display-space, version-1 light) image -> uint8, with the camera's effects."""
        cfg = self.config
        img = comp.image
        rec: dict = {}
        linear = cfg.light != "single"
        if cfg.camera_effects:
            # white balance: the camera estimates the scene's colour temperature, with an error
            gains = np.exp(rng.normal(0.0, 0.04, 3)).astype(np.float32)
            if linear:
                key_k = comp.record["lighting"]["key"]["kelvin"]
                est = key_k * math.exp(rng.normal(0.0, 0.08))
                corr = float(rng.uniform(0.5, 0.9))  # how much of the cast the camera removes
                gains = gains / kelvin_rgb(6500.0 ** (1 - corr) * est**corr) * kelvin_rgb(6500.0)
            gains = gains / float(gains @ np.array([0.2126, 0.7152, 0.0722], np.float32))
            img = img * gains
            out = (
                to_srgb8(np.clip(img, 0, 1)) if linear else (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
            )
            rec["white_balance"] = [round(float(x), 4) for x in gains]
            if cfg.spectrum_match > 0:
                out = self._match_spectrum(out, cfg.spectrum_match)
                rec["spectrum_match"] = cfg.spectrum_match
            pil = Image.fromarray(out)
            sigma = float(rng.uniform(*cfg.defocus))
            if sigma > 0.05:
                pil = pil.filter(ImageFilter.GaussianBlur(radius=sigma))
            rec["defocus"] = round(sigma, 4)
            arr = np.asarray(pil, dtype=np.float32)
            if rng.random() < cfg.motion_blur:
                length = int(rng.integers(3, 10))
                angle = float(rng.uniform(0, math.pi))
                acc = np.zeros_like(arr)
                for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, length):
                    acc += np.roll(arr, (round(t * math.sin(angle)), round(t * math.cos(angle))), axis=(0, 1))
                arr = acc / length
                rec["motion_blur"] = {"length": length, "angle": round(angle, 4)}
            else:  # the same fields in every record (tables such as Hugging Face datasets need one type)
                rec["motion_blur"] = {"length": 0, "angle": 0.0}
            read = float(rng.uniform(0.5, 3.0))  # read noise, in 8-bit levels
            shot = float(rng.uniform(0.0, 0.08))  # shot noise variance per level of signal
            std = np.sqrt(read * read + shot * arr.mean(-1, keepdims=True))
            arr = arr + std * rng.standard_normal(arr.shape, dtype=np.float32)
            out = np.clip(arr + 0.5, 0, 255).astype(np.uint8)
            rec["noise"] = {"read": round(read, 4), "shot": round(shot, 5)}
            if rng.random() < cfg.jpeg:
                q = int(rng.integers(50, 96))
                buf = io.BytesIO()
                Image.fromarray(out).save(buf, "JPEG", quality=q)
                with Image.open(buf) as im:
                    out = np.asarray(im.convert("RGB"))
                rec["jpeg_quality"] = q
            else:
                rec["jpeg_quality"] = 0  # 0: no JPEG round trip
            return out, {"camera": rec}
        # version 1: a colour jitter, a mild blur and sensor noise
        b = 1.0 + rng.uniform(-cfg.jitter, cfg.jitter)
        c = 1.0 + rng.uniform(-cfg.jitter, cfg.jitter)
        s = 1.0 + rng.uniform(-cfg.jitter, cfg.jitter)
        if linear:
            img = to_srgb8(np.clip(img, 0, 1)).astype(np.float32) / 255.0
        grey = img.mean(-1, keepdims=True)
        img = (grey + (img - grey) * s - 0.5) * c + 0.5
        img = np.clip(img * b, 0.0, 1.0)
        out = (img * 255.0 + 0.5).astype(np.uint8)
        if cfg.spectrum_match > 0:
            out = self._match_spectrum(out, cfg.spectrum_match)
        out = Image.fromarray(out)
        sigma = float(rng.uniform(*cfg.blur))
        out = np.asarray(out.filter(ImageFilter.GaussianBlur(radius=sigma)), dtype=np.float32)
        noise_std = float(rng.uniform(*cfg.noise))
        out = np.clip(out + rng.normal(0.0, noise_std, out.shape), 0, 255).astype(np.uint8)
        return out, {"blur": round(sigma, 4), "noise": round(noise_std, 4)}

    @staticmethod
    def _match_spectrum(img: np.ndarray, strength: float) -> np.ndarray:
        """Pull each channel's radially averaged amplitude spectrum toward a 1/f line through its own mean
        level (``strength`` 1: onto it), keeping the phase."""
        H, W = img.shape[:2]
        f = np.sqrt(np.fft.fftfreq(H)[:, None] ** 2 + np.fft.rfftfreq(W)[None, :] ** 2)
        edges = np.geomspace(1.0 / max(H, W), 0.75, 33)
        idx = np.clip(np.digitize(f, edges) - 1, 0, 31)
        n = np.maximum(np.bincount(idx.ravel(), None, 32), 1)
        fc = np.sqrt(edges[:-1] * edges[1:])
        out = np.empty(img.shape, np.float32)
        for ch in range(img.shape[2]):
            x = img[..., ch].astype(np.float64)
            F = np.fft.rfft2(x - x.mean())
            a = np.abs(F)
            mean = np.bincount(idx.ravel(), a.ravel(), 32) / n
            ok = mean > 0
            # the 1/f line through the measured spectrum's geometric mean, in the mid band
            level = np.exp(np.mean(np.log(mean[ok] * fc[ok])))
            gain = np.where(ok, (level / fc) / np.maximum(mean, 1e-9), 1.0) ** strength
            gain = np.clip(gain, 0.25, 4.0)
            gain[fc > 0.5] = 1.0  # leave the corners (beyond Nyquist radius) alone
            F *= gain[idx]
            F[0, 0] = 0
            out[..., ch] = np.fft.irfft2(F, s=(H, W)) + x.mean()
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def render(self, sample: Sample) -> tuple[np.ndarray, dict]:
        """(image (H, W, 3) uint8, generator record) for one sample with mask and depth filled in."""
        comp, rng = self.compose(sample)
        out, cam = self._camera(comp, rng)
        cfg = self.config
        record = {
            "name": self.name,
            "version": self.version,
            "weights_id": None,
            "steps": None,
            "guidance_scale": None,
            "tas": None,
            "seed": int(sample.seed),
            "components": {
                "skin": cfg.skin,
                "light": cfg.light,
                "background": cfg.background,
                "blob_colours": cfg.blob_colours,
                "camera_effects": cfg.camera_effects,
                "spectrum_match": cfg.spectrum_match,
                "shadows": cfg.shadows,
                "penumbra": cfg.penumbra,
                "scatter": cfg.scatter,
                "occlusion": cfg.occlusion if cfg.light == "presets" else 0.0,
                "palm_lines": cfg.palm_lines,
            },
            **comp.record,
            **cam,
        }
        return out, record

    def generate(self, samples: Sequence[Sample]) -> list[Generation]:
        return [Generation(*self.render(s)) for s in samples]
