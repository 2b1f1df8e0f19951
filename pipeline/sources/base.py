"""Pose sources: where a sample's hands and camera come from.

A source turns (run seed, sample index) into a ``pipeline.sample.Drawn`` whose hands carry MANO parameters in
camera space (``pose`` 48 axis-angle relative to the mean pose, ``shape`` 10, ``trans`` metres), with the
camera, image size, source ids and, for datasets, the source image path. ``sample(i)`` is a pure function of
the run seed, ``i`` and the source's configuration. A sample that cannot be used raises ``SkipSample`` with a
reason; runs count skips by reason.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from pathlib import Path

import numpy as np

from pipeline.camera import project_points
from pipeline.errors import HandgenError
from pipeline.sample import Drawn, HandParams, Posed
from pipeline.schema import SIDES, Camera, empty_verts, make_key
from pipeline.seeding import sample_seed

logger = logging.getLogger(__name__)


class SkipSample(Exception):
    """This sample cannot be used; ``reason`` is the short label it is counted under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class SourceError(HandgenError, ValueError):
    """A source that cannot be opened (missing root, unreadable file); the message is one line."""


def default_cache_dir() -> Path:
    """Where dataset indexes are cached when no ``cache_dir`` is given: ``sources/`` in the user's handgen
    cache folder (``$HANDGEN_CACHE``, else ``$XDG_CACHE_HOME/handgen``, else ``~/.cache/handgen``; see
    ``pipeline.weights.user_cache_dir``). Never inside the dataset, which may be on a read-only mount."""
    from pipeline.weights import user_cache_dir

    return user_cache_dir().expanduser() / "sources"


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """Per-sample filters applied after the hand model (projected joints and vertices).

    min_hand_px: smallest side of a hand's projected box, pixels. max_truncation: largest fraction of a hand's
    vertices outside the image. Both 0 / 1 disable the filter.
    """

    min_hand_px: float = 0.0
    max_truncation: float = 1.0


class PoseSource(abc.ABC):
    """Base class: subclasses implement ``_draw(index, seed) -> Drawn``."""

    name = "source"

    def __init__(self, run_seed: int = 0, run_tag: str = "run", filters: FilterConfig | None = None) -> None:
        self.run_seed, self.run_tag = int(run_seed), run_tag
        self.filters = filters or FilterConfig()

    def sample(self, index: int) -> Drawn:
        """Sample ``index`` of the run (raises ``SkipSample``)."""
        seed = sample_seed(self.run_seed, index)
        return self._draw(index, seed)

    @abc.abstractmethod
    def _draw(self, index: int, seed: int) -> Drawn:
        """Build sample ``index`` from its seed."""

    def inspect(self) -> dict:
        """Counts describing the source (frames, hand types, cameras, ...)."""
        return {"source": self.name}

    def _new_sample(
        self, index, seed, image_size, K, dist, hands: dict, source: dict, source_image=None
    ) -> Drawn:
        present = [s for s in SIDES if hands.get(s) is not None]
        if not present:
            raise SkipSample("no_valid_hand")
        hand_type = "interacting" if len(present) == 2 else present[0]
        params: dict[str, HandParams | None] = {s: None for s in SIDES}
        for s in present:
            pose, shape, trans = (np.asarray(x, dtype=np.float64) for x in hands[s])
            for nm, x, n in (("pose", pose, 48), ("shape", shape, 10), ("trans", trans, 3)):
                if x.shape != (n,):
                    raise SkipSample("bad_mano_params", f"{s} {nm} has shape {x.shape}, expected ({n},)")
                if not np.isfinite(x).all():
                    raise SkipSample("bad_mano_params", f"{s} {nm} is not finite")
            params[s] = HandParams(pose, shape, trans)
        return Drawn(
            index=index,
            seed=seed,
            key=make_key(self.run_tag, index),
            image_size=tuple(image_size),
            camera=Camera(K, dist),
            hand_type=hand_type,
            params=params,
            source=source,
            source_image=source_image,
        )


def pose_hands(drawn: Drawn, hand_model) -> Posed:
    """Run the hand model on ``drawn``'s hands: verts (2, 778, 3) float32, joints_3d (21, 3) float64 per hand,
    the hand model's record and its triangles."""
    verts = empty_verts()
    joints: dict[str, np.ndarray | None] = {s: None for s in SIDES}
    for i, s in enumerate(SIDES):
        p = drawn.params[s]
        if p is None:
            continue
        out = hand_model(s, p.pose[None], p.shape[None], p.trans[None])
        verts[i] = out.vertices[0].cpu().numpy()
        joints[s] = out.joints[0].cpu().numpy().astype(np.float64)
    faces = getattr(hand_model, "faces", None)
    return Posed(verts=verts, joints_3d=joints, hand_model=hand_model.info.to_json(), faces=faces)


def apply_filters(drawn: Drawn, posed: Posed, filters: FilterConfig) -> None:
    """Raise ``SkipSample`` when a hand is behind the camera, too small, or too truncated."""
    H, W = drawn.image_size
    for i, s in enumerate(SIDES):
        if drawn.params[s] is None:
            continue
        v = posed.verts[i]
        if (v[:, 2] < 0.05).any():
            raise SkipSample("behind_camera", f"{s} hand is closer than 5 cm or behind the camera")
        uv = project_points(v, drawn.camera.K, drawn.camera.dist)
        inside = (uv[:, 0] >= -0.5) & (uv[:, 0] < W - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < H - 0.5)
        if not inside.any():
            raise SkipSample("outside_image", f"{s} hand is fully outside the image")
        if 1.0 - inside.mean() > filters.max_truncation:
            raise SkipSample("truncated", f"{s} hand is {100 * (1 - inside.mean()):.0f}% outside the image")
        side = min(np.ptp(uv[inside, 0]), np.ptp(uv[inside, 1]))
        if side < filters.min_hand_px:
            raise SkipSample("too_small", f"{s} hand is {side:.0f} px")


def letterbox(drawn: Drawn, size: int) -> tuple[Drawn, np.ndarray]:
    """The dataset photo of ``drawn`` letterboxed to ``size`` x ``size`` (never stretched; (size, size, 3)
    uint8), and ``drawn`` seen through that image: its camera, image size, and ``source['letterbox']``
    recording how (``pipeline.imaging.Letterbox``).

    Skips (``SkipSample``): no source image, an unreadable file, or a file whose size differs from the
    annotation's (the intrinsics would not match it).
    """
    from pipeline.imaging import Letterbox, load_rgb

    src = drawn.source_image
    if src is None:
        raise SkipSample("no_source_image", f"{drawn.source.get('file_name', drawn.key)}")
    try:
        img = load_rgb(src)
    except (OSError, ValueError) as exc:
        raise SkipSample("unreadable_image", f"{src}: {exc}") from exc
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[:2] != tuple(drawn.image_size):
        raise SkipSample(
            "image_size_mismatch", f"image is {img.shape}, the annotation says {tuple(drawn.image_size)}"
        )
    lb = Letterbox.fit(img.shape[:2], size)
    boxed = dataclasses.replace(
        drawn,
        camera=Camera(lb.intrinsics(drawn.camera.K), drawn.camera.dist),
        image_size=(size, size),
        source={**drawn.source, "letterbox": lb.to_json()},
    )
    return boxed, lb.apply(img)
