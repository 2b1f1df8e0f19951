"""Renderer interface: hand meshes + camera -> mesh images, masks, depth, keypoints, boxes and crops.

All backends share this module's geometry, so labels do not depend on the backend:

* vertices are projected to pixels here (``pipeline.camera.project_points``: pinhole, or the fisheye /
  radial-tangential model per vertex) and each backend rasterizes those screen positions with
  perspective-correct interpolation (clip w = view z). For a distorted camera this is exact at vertices and
  straight between them; hand triangles are a few millimetres across, so the error is well under a pixel
  except very close to the camera;
* pixel centres sit at integer coordinates (OpenCV); the global image keeps the camera's (H, W) (never
  stretched); the local image is re-rendered with the crop's own intrinsics (``crop_intrinsics``), so
  ``global_to_local``/``local_to_global`` are the exact mapping, and local pixels that fall outside the
  global image are black (padding);
* shading: a head light at the camera, two-sided, ``albedo * (ambient + (1 - ambient) * |n . l| ** gamma)``
  with ``l`` from the surface point to the camera; the conditioning style (``RenderConfig.style``, ``STYLES``)
  sets albedo, ambient and gamma. ``official`` (the default) matches AttentionHand's conditioning images
  (``samples/mesh/*.jpg`` of the official repository): bright, slightly cyan hands on black, hand-pixel mean
  about 225/255, 10th percentile about 195, 90th about 249 (the compressed Lambert term keeps grazing surfaces
  bright). ``grey`` is the earlier look (plain Lambert, albedo 0.8: mean about 146), kept to reproduce and
  validate older runs. ``tint`` swaps the albedo for per-hand colours (right warm, left cool) of the style's
  brightness.

Visibility: joint j of hand h is visible when it projects inside the image and the first surface along its
pixel's ray is not in front of it by more than ``own_tolerance`` (its own hand: joints lie inside fingers,
about one finger radius under the skin) or ``other_tolerance`` (the other hand). A joint whose pixel shows
background or the other hand (a tip on its silhouette) must also have its own hand's mask within 1 px, so
every visible joint lies on (or within 1 px of) its hand's mask, or on its own forearm (below).

Props (``pipeline.props``: forearms and objects) are drawn in the same depth test with ids ``PROP_IDS`` and a
mid grey (``PROP_ALBEDO``) in the mesh images; they are never in the returned hand mask (their front pixels
are ``RenderResult.prop_mask``, by id), ``depth`` holds the first surface of hands and props alike, and a
joint behind a prop is not visible (a prop pixel counts as "the other hand" above), except the hand's own
forearm: it continues the hand's surface, so its pixels count as the hand's own (raster id
``FOREARM_RASTER_ID[side]``; both arms are ``PROP_IDS["forearm"]`` in the returned ``prop_mask``). The wrist
joint lies deeper under the skin than finger joints (about half the wrist's thickness, 17 to 21 mm for the
stand-in), so it has its own tolerance, ``wrist_tolerance`` (30 mm). Without these two rules (runs written
before them: ``wrist_tolerance=None``) a forearm hid its own hand's wrist joint in about 98% of hands, and
the wrist was visible in at most a third of hands even without arms.

Enclosed joints (``ENCLOSED_JOINTS``: all but the wrist and the fingertips) lie inside their hand's closed
surface, at depths that depend on the view: in the default demo (stand-in hand) a knuckle lies a median
12 mm under the skin enclosing it along the camera ray, and more than 40 mm in a tenth of views (along the
palm or the finger); the thumb's CMC a median 22 mm. One depth tolerance cannot tell that skin from a curled
finger in front, which is as far. So for these joints, where the pixel shows their own hand, the renderer
counts how often the hand's surface, closed at the wrist opening (``closed_surface``), crosses the camera ray
in front of the joint (``geometry.ray_crossings``, exact on the posed mesh). Once: it is the skin enclosing
the joint, and the joint is visible when the first surface at its pixel lies at most ``enclosed_tolerance``
(30 mm) in front of it (a finger seen end-on hides its knuckles). Three or more times: another part of the
hand is in front, and the joint is hidden. An even count (the joint outside its surface: a self-penetrating
pose) falls back to ``own_tolerance``. The 15 mm tolerance alone (runs written before this rule:
``enclosed_tolerance=None``) labelled 41% of index and 50% of middle knuckles hidden even where their pixel
showed their own hand. The crop box is the hands' alone.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from pipeline.camera import NEAR, crop_intrinsics, global_to_local, local_to_global, project_points
from pipeline.errors import HandgenError
from pipeline.geometry import ray_crossings
from pipeline.kinematics import FINGER_CHAINS
from pipeline.props import PROP_IDS, Props, PropsError, prop_parts, wrist_loop
from pipeline.sample import RenderResult
from pipeline.schema import SIDES

logger = logging.getLogger(__name__)

HAND_ID = {"right": 1, "left": 2}
PROP_ALBEDO = (0.5, 0.5, 0.5)
FOREARM_RASTER_ID = {"right": PROP_IDS["forearm"], "left": 5}
"""The forearms' ids in a raster's id map (each arm its own, for the visibility rule); ``_split_props`` maps
both to ``PROP_IDS["forearm"]``."""
N_IDS = 6
"""Ids in a raster's id map: 0 background, ``HAND_ID``, ``PROP_IDS``, ``FOREARM_RASTER_ID``."""
WRIST = 0
"""The wrist's joint index (MANO order)."""
ENCLOSED_JOINTS = tuple(j for chain in FINGER_CHAINS for j in chain[:-1])
"""The label joints (``JOINT_NAMES`` order) that lie inside the hand's surface and follow the enclosed-joint
rule (module doc): all but the wrist, which sits in the open wrist loop, and the fingertips, which are surface
vertices."""


@dataclasses.dataclass(frozen=True)
class Style:
    """A conditioning style: ``albedo`` (r, g, b) in [0, 1], ``tints`` side -> albedo with ``tint``, and the
    shading ``ambient + (1 - ambient) * |n . l| ** gamma`` (see module doc)."""

    albedo: tuple
    tints: dict
    ambient: float
    gamma: float


STYLES = {
    # fitted to the hand pixels of the official samples/mesh/*.jpg (mean 225.7, p10 195.7, p90 249.3,
    # R 218.5 / G 229.2 / B 229.4, so R / G = 0.953) over renders of the prior source
    "official": Style(
        albedo=(0.955, 1.0, 1.0),
        tints={"right": (1.0, 0.91, 0.84), "left": (0.84, 0.91, 1.0)},
        ambient=0.4,
        gamma=0.35,
    ),
    # the look before styles existed: Lambert, albedo 0.8 (pixels reproduced exactly)
    "grey": Style(
        albedo=(0.8, 0.8, 0.8),
        tints={"right": (0.86, 0.78, 0.72), "left": (0.72, 0.78, 0.86)},
        ambient=0.25,
        gamma=1.0,
    ),
}
DEFAULT_STYLE = "official"
# the style of runs whose renderer record has no ``style`` (written before styles existed)
LEGACY_STYLE = "grey"


class RendererError(HandgenError, RuntimeError):
    """A renderer that cannot run here (missing library, no device); the message says what to install."""


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Renderer settings.

    local_size: side of the local (crop) images, pixels. crop_margin: added on each side of the hands' box,
    as a fraction of its larger side. min_crop: smallest crop side, pixels. tint: per-hand colours instead of
    the style's albedo. own_tolerance / other_tolerance / wrist_tolerance: visibility depth tolerances,
    metres (module doc; ``wrist_tolerance=None``: the wrist like the other joints and a forearm like another
    hand, the rule of runs written before it, which ``hands validate`` assumes when a run records none).
    enclosed_tolerance: metres, how deep under the skin enclosing it a joint may lie and still be visible
    (module doc; None: the depth tolerance alone, the rule of runs written before it, which ``hands validate``
    assumes when a run records none).
    style: the conditioning style of mesh images, a key of ``STYLES`` (``official``: AttentionHand's look;
    ``grey``: the look of runs written before styles, which ``hands validate`` assumes when a run records no
    style).
    """

    local_size: int = 512
    crop_margin: float = 0.25
    min_crop: float = 32.0
    tint: bool = False
    own_tolerance: float = 0.015
    other_tolerance: float = 0.002
    wrist_tolerance: float | None = 0.03
    enclosed_tolerance: float | None = 0.03
    style: str = DEFAULT_STYLE

    def __post_init__(self) -> None:
        if self.local_size < 8 or self.crop_margin < 0 or self.min_crop <= 0:
            raise ValueError(f"bad RenderConfig: {self}")
        tolerances = (self.own_tolerance, self.other_tolerance, self.wrist_tolerance, self.enclosed_tolerance)
        if any(t is not None and not t >= 0 for t in tolerances):
            raise ValueError(f"visibility tolerances must be >= 0 metres: {self}")
        if self.style not in STYLES:
            raise ValueError(f"unknown render style {self.style!r}; choose one of {sorted(STYLES)}")


@dataclasses.dataclass(frozen=True)
class RenderItem:
    """One sample to render.

    verts: side -> (778, 3) float camera-space vertices in metres, or None for an absent hand.
    joints: side -> (21, 3) float camera-space joints in metres (None for an absent hand).
    K: (3, 3) intrinsics in pixels; dist: optional distortion coefficients (``pipeline.camera``).
    image_size: (H, W) pixels. props: the sample's ``pipeline.props.Props`` (None: none), drawn in the depth
    test.
    """

    verts: dict
    joints: dict
    K: np.ndarray
    image_size: tuple[int, int]
    dist: np.ndarray | None = None
    props: Props | None = None


@dataclasses.dataclass(frozen=True)
class RenderBatch:
    """Items to render together and the triangle list of each side: faces[side] (F, 3) int vertex ids."""

    items: Sequence[RenderItem]
    faces: dict


def render_item(x) -> RenderItem:
    """The render input of a sample (``pipeline.sample.Sample``, posed) or a label
    (``pipeline.schema.Label``): both give verts (2, 778, 3) metres, per hand ``hands[side].joints_3d``
    (21, 3), the camera, the image size and the props (a label's ``props`` field, parsed)."""
    verts = {side: x.verts[i] for i, side in enumerate(SIDES) if x.hands[side] is not None}
    joints = {side: x.hands[side].joints_3d for side in verts}
    props = x.props
    if isinstance(props, dict):
        props = Props.from_json(props)
    return RenderItem(verts, joints, x.camera.K, tuple(x.image_size), x.camera.dist, props)


def _split_props(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(hand mask with prop pixels set to 0, (H, W) uint8 prop ids (``PROP_IDS``, 0 elsewhere) or None when
    no prop shows)."""
    props = mask >= min(PROP_IDS.values())
    if not props.any():
        return mask, None
    ids = np.where(mask == FOREARM_RASTER_ID["left"], PROP_IDS["forearm"], mask)
    return np.where(props, 0, mask).astype(mask.dtype), np.where(props, ids, 0).astype(np.uint8)


def full_frame(size: int) -> np.ndarray:
    """The crop box ``[-0.5, -0.5, size - 0.5, size - 0.5]`` of a whole ``size`` x ``size`` image: the local
    record's ``crop_box`` (``crop_intrinsics`` of it at ``size`` is the identity)."""
    return np.array([-0.5, -0.5, size - 0.5, size - 0.5])


@dataclasses.dataclass(frozen=True)
class RasterJob:
    """What a backend draws: screen (V, 3) = (u, v, z) pixels/metres, view (V, 3) camera-space positions,
    normals (V, 3), hand (V,) uint8 ids, faces (F, 3) int32, size (H, W), albedo per id (N_IDS, 3), and the
    shading's ambient and gamma (``albedo * (ambient + (1 - ambient) * |n . l| ** gamma)``)."""

    screen: np.ndarray
    view: np.ndarray
    normals: np.ndarray
    hand: np.ndarray
    faces: np.ndarray
    size: tuple[int, int]
    albedo: np.ndarray
    ambient: float = STYLES[DEFAULT_STYLE].ambient
    gamma: float = STYLES[DEFAULT_STYLE].gamma


@dataclasses.dataclass(frozen=True)
class RasterOut:
    """rgb (H, W, 3) uint8, mask (H, W) uint8 ids (hands, ``PROP_IDS``, ``FOREARM_RASTER_ID``), depth (H, W)
    float32 metres (0 = background)."""

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit area-weighted vertex normals (float32)."""
    v = np.asarray(verts, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, f[:, k], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return (vn / np.maximum(norm, 1e-12)).astype(np.float32)


def _box(uv: np.ndarray) -> np.ndarray:
    ok = np.isfinite(uv).all(axis=1)
    if not ok.any():
        return np.array([np.nan] * 4)
    p = uv[ok]
    return np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])


def square_crop_box(boxes: Sequence[np.ndarray], margin: float, min_side: float) -> np.ndarray:
    """Square [x0, y0, x1, y1] centred on the union of ``boxes``, side = larger extent * (1 + 2 margin)."""
    b = np.array([bx for bx in boxes if np.isfinite(bx).all()])
    if len(b) == 0:
        raise ValueError("no hand projects in front of the camera")
    x0, y0 = b[:, 0].min(), b[:, 1].min()
    x1, y1 = b[:, 2].max(), b[:, 3].max()
    side = max(x1 - x0, y1 - y0, 1.0) * (1.0 + 2.0 * margin)
    side = max(side, min_side)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def closed_surface(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A hand's surface closed at its wrist opening, for counting surface crossings: ``verts`` (V, 3) plus the
    opening's centroid, ``faces`` (F, 3) plus a fan from it over the opening (``pipeline.props.wrist_loop``),
    so that a ray entering the hand through the opening crosses a surface, as one through the skin does. A
    mesh without a boundary comes back as it is."""
    v = np.asarray(verts, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    try:
        loop = wrist_loop(f)
    except PropsError:
        return v, f
    cap = np.stack([loop, np.roll(loop, -1), np.full(len(loop), len(v))], axis=1)
    return np.concatenate([v, v[loop].mean(axis=0, keepdims=True)]), np.concatenate([f, cap])


def joint_visibility(
    uv: np.ndarray,
    z: np.ndarray,
    hand_id: int,
    mask: np.ndarray,
    depth: np.ndarray,
    own_tolerance,
    other_tolerance: float,
    own_ids: Sequence[int] = (),
    crossings: np.ndarray | None = None,
    enclosed_tolerance: float | None = None,
) -> np.ndarray:
    """(J,) bool visibility of joints at pixels ``uv`` (J, 2) with depths ``z`` (J,) (see module doc).

    own_tolerance: metres, one for every joint or (J,) per joint; own_ids: raster ids besides ``hand_id`` that
    count as the hand's own surface (its forearm). crossings: (J,) int, how often the hand's own surface
    crosses the camera ray in front of each joint (``geometry.ray_crossings``; 0 for joints the rule leaves
    out); where the joint's pixel shows its own hand and the count is odd (the joint inside its surface), the
    joint is visible when the count is 1 and that surface lies at most ``enclosed_tolerance`` metres in front
    of it, and hidden behind another part of its hand when the count is 3 or more. None (either): the depth
    tolerance alone, the rule of runs written before it."""
    own_tol = np.broadcast_to(np.asarray(own_tolerance, dtype=np.float64), (len(uv),))
    enclosed = crossings is not None and enclosed_tolerance is not None
    own = np.asarray([hand_id, *own_ids], dtype=mask.dtype)
    H, W = mask.shape
    inside = (
        np.isfinite(uv).all(1)
        & (uv[:, 0] >= -0.5)
        & (uv[:, 0] < W - 0.5)
        & (uv[:, 1] >= -0.5)
        & (uv[:, 1] < H - 0.5)
    )
    vis = np.zeros(len(uv), dtype=bool)
    for j in np.nonzero(inside)[0]:
        c, r = int(round(uv[j, 0])), int(round(uv[j, 1]))
        c, r = min(max(c, 0), W - 1), min(max(r, 0), H - 1)
        m = mask[r, c]
        if enclosed and m == hand_id and crossings[j] % 2 == 1:
            vis[j] = crossings[j] == 1 and depth[r, c] >= z[j] - enclosed_tolerance
            continue
        if m in own:
            vis[j] = depth[r, c] >= z[j] - own_tol[j]
            continue
        # over background or the other hand: visible only on (within 1 px of) its own hand's mask, and not
        # behind the other hand by more than other_tolerance
        r0, r1, c0, c1 = max(r - 1, 0), min(r + 2, H), max(c - 1, 0), min(c + 2, W)
        rows, cols = np.nonzero(mask[r0:r1, c0:c1] == hand_id)
        near_own = bool(len(rows)) and np.hypot(cols + c0 - uv[j, 0], rows + r0 - uv[j, 1]).min() <= 1.0
        vis[j] = near_own and (m == 0 or depth[r, c] >= z[j] - other_tolerance)
    return vis


class Renderer(abc.ABC):
    """Base renderer: geometry here, rasterization in the backend's ``rasterize``."""

    name = "base"

    def __init__(self, config: RenderConfig | None = None) -> None:
        self.config = config or RenderConfig()

    @abc.abstractmethod
    def rasterize(self, jobs: Sequence[RasterJob]) -> list[RasterOut]:
        """Draw each job; returns one ``RasterOut`` per job."""

    def _albedo(self) -> np.ndarray:
        style = STYLES[self.config.style]
        alb = np.zeros((N_IDS, 3), dtype=np.float32)
        for s in SIDES:
            alb[HAND_ID[s]] = style.tints[s] if self.config.tint else style.albedo
        for i in (*PROP_IDS.values(), *FOREARM_RASTER_ID.values()):
            alb[i] = PROP_ALBEDO
        return alb

    def _job(
        self,
        item: RenderItem,
        faces: dict,
        K: np.ndarray,
        size: tuple[int, int],
        normals: dict,
        projected: dict | None = None,
        props: Sequence = (),
    ) -> RasterJob:
        """The raster job of ``item`` seen through ``K``; ``projected``: side -> (V, 2) pixel positions
        already computed with this K (reused instead of projecting again); ``props``: [(kind, vertices
        side, (V, 3), faces (F, 3))] (``pipeline.props.prop_parts``) drawn with ids ``PROP_IDS[kind]`` (a
        forearm: ``FOREARM_RASTER_ID[side]``)."""
        screens, views, norms, hands, tris = [], [], [], [], []
        offset = 0
        for s in SIDES:
            v = item.verts.get(s)
            if v is None:
                continue
            v = np.asarray(v, dtype=np.float64)
            uv = projected[s] if projected is not None else project_points(v, K, item.dist)
            f = np.asarray(faces[s], dtype=np.int64)
            keep = (v[f, 2] >= NEAR).all(axis=1)  # drop triangles touching the near plane (both backends)
            screens.append(np.concatenate([np.nan_to_num(uv), v[:, 2:3]], axis=1))
            views.append(v)
            norms.append(normals[s])
            hands.append(np.full(len(v), HAND_ID[s], dtype=np.uint8))
            tris.append(f[keep] + offset)
            offset += len(v)
        for kind, side, v, f in props:
            uv = project_points(v, K, item.dist)
            keep = (v[f, 2] >= NEAR).all(axis=1)
            screens.append(np.concatenate([np.nan_to_num(uv), v[:, 2:3]], axis=1))
            views.append(v)
            norms.append(vertex_normals(v, f))
            rid = FOREARM_RASTER_ID[side] if kind == "forearm" else PROP_IDS[kind]
            hands.append(np.full(len(v), rid, dtype=np.uint8))
            tris.append(f[keep] + offset)
            offset += len(v)
        return RasterJob(
            screen=np.concatenate(screens).astype(np.float32),
            view=np.concatenate(views).astype(np.float32),
            normals=np.concatenate(norms).astype(np.float32),
            hand=np.concatenate(hands),
            faces=np.concatenate(tris).astype(np.int32),
            size=(int(size[0]), int(size[1])),
            albedo=self._albedo(),
            ambient=STYLES[self.config.style].ambient,
            gamma=STYLES[self.config.style].gamma,
        )

    def render(self, batch: RenderBatch) -> list[RenderResult]:
        """Render every item of ``batch``; one ``RenderResult`` per item (see its docstring)."""
        cfg = self.config
        L = cfg.local_size
        jobs, metas = [], []
        for item in batch.items:
            present = self._present(item)
            H, W = (int(x) for x in item.image_size)
            normals = {s: vertex_normals(item.verts[s], batch.faces[s]) for s in present}
            j2d, amodal, clipped, uv_v = {}, {}, {}, {}
            for s in SIDES:
                if s not in present:
                    j2d[s] = amodal[s] = clipped[s] = None
                    continue
                uv_v[s] = project_points(np.asarray(item.verts[s], dtype=np.float64), item.K, item.dist)
                amodal[s] = _box(uv_v[s])
                b = amodal[s].copy()
                if np.isfinite(b).all():
                    b[[0, 2]] = np.clip(b[[0, 2]], 0, W - 1)
                    b[[1, 3]] = np.clip(b[[1, 3]], 0, H - 1)
                clipped[s] = b
                j2d[s] = project_points(item.joints[s], item.K, item.dist)
            crop = square_crop_box([amodal[s] for s in present], cfg.crop_margin, cfg.min_crop)
            K_local = crop_intrinsics(item.K, crop, L)
            uv_local = self._project(item, present, K_local)
            props = prop_parts(item.props, item.verts, batch.faces)
            K = np.asarray(item.K, dtype=np.float64)
            jobs.append(self._job(item, batch.faces, K, (H, W), normals, uv_v, props))
            jobs.append(self._job(item, batch.faces, K_local, (L, L), normals, uv_local, props))
            cross = self._crossings(item, present, batch.faces)
            metas.append((item, present, j2d, clipped, crop, K_local, uv_local, cross))
        outs = self.rasterize(jobs)
        results = []
        for i, (item, present, j2d, clipped, crop, K_local, uv_local, cross) in enumerate(metas):
            g, loc = outs[2 * i], outs[2 * i + 1]
            vis = self._visibility(item, present, j2d, g.mask, g.depth, cross)
            local = self._local_result(item, present, K_local, uv_local, crop, item.image_size, loc, cross)
            mask, prop_mask = _split_props(g.mask)
            results.append(
                RenderResult(
                    mesh_image=g.rgb,
                    mask=mask,
                    depth=g.depth,
                    joints_2d=j2d,
                    joints_visible=vis,
                    bbox=clipped,
                    crop_box=crop,
                    mesh_local=local.mesh_image,
                    mask_local=local.mask,
                    K=np.asarray(item.K, dtype=np.float64),
                    local=local,
                    prop_mask=prop_mask,
                )
            )
        return results

    def render_local(
        self, batch: RenderBatch, crop_boxes: Sequence, parent_sizes: Sequence
    ) -> list[RenderResult]:
        """Render local views from their own frame (what ``hands validate`` does for a local record): each
        item carries the local camera (K of the crop, image_size (L, L)); ``crop_boxes[i]`` and
        ``parent_sizes[i]`` are the global crop box and (H, W) image size the view was cut from (they give its
        black padding). Returns the ``RenderResult.local`` that ``render`` gives for the parent, exactly."""
        jobs, metas = [], []
        for item, crop, size in zip(batch.items, crop_boxes, parent_sizes, strict=True):
            present = self._present(item)
            K = np.asarray(item.K, dtype=np.float64)
            normals = {s: vertex_normals(item.verts[s], batch.faces[s]) for s in present}
            uv = self._project(item, present, K)
            props = prop_parts(item.props, item.verts, batch.faces)
            jobs.append(self._job(item, batch.faces, K, tuple(item.image_size), normals, uv, props))
            cross = self._crossings(item, present, batch.faces)
            metas.append((item, present, K, uv, np.asarray(crop, dtype=np.float64), tuple(size), cross))
        outs = self.rasterize(jobs)
        return [
            self._local_result(item, present, K, uv, crop, size, out, cross)
            for (item, present, K, uv, crop, size, cross), out in zip(metas, outs, strict=True)
        ]

    @staticmethod
    def _present(item: RenderItem) -> list[str]:
        present = [s for s in SIDES if item.verts.get(s) is not None]
        if not present:
            raise ValueError("a render item needs at least one hand")
        return present

    @staticmethod
    def _project(item: RenderItem, present: Sequence[str], K: np.ndarray) -> dict:
        return {s: project_points(np.asarray(item.verts[s], dtype=np.float64), K, item.dist) for s in present}

    def _crossings(self, item: RenderItem, present, faces: dict) -> dict:
        """side -> (J,) int64: how often the hand's own surface crosses the camera ray in front of each of its
        enclosed joints (``ENCLOSED_JOINTS``; 0 for the others), or None for every side when the renderer
        keeps the rule of runs written before ``enclosed_tolerance``. The same for the global and local view
        (one camera centre)."""
        out = dict.fromkeys(SIDES)
        if self.config.enclosed_tolerance is None:
            return out
        ids = list(ENCLOSED_JOINTS)
        for s in present:
            joints = np.asarray(item.joints[s], dtype=np.float64)
            n = np.zeros(len(joints), dtype=np.int64)
            n[ids] = ray_crossings(*closed_surface(item.verts[s], faces[s]), joints[ids])
            out[s] = n
        return out

    def _visibility(
        self, item: RenderItem, present, j2d: dict, mask: np.ndarray, depth: np.ndarray, crossings: dict
    ) -> dict:
        cfg = self.config
        vis = {}
        for s in SIDES:
            if s not in present:
                vis[s] = None
                continue
            z = np.asarray(item.joints[s], dtype=np.float64)[:, 2]
            own_tol = np.full(len(z), cfg.own_tolerance)
            own_ids: tuple = ()
            if cfg.wrist_tolerance is not None:  # None: the rule of runs written before it (module doc)
                own_tol[WRIST] = cfg.wrist_tolerance
                own_ids = (FOREARM_RASTER_ID[s],)
            vis[s] = joint_visibility(
                j2d[s],
                z,
                HAND_ID[s],
                mask,
                depth,
                own_tol,
                cfg.other_tolerance,
                own_ids,
                crossings[s],
                cfg.enclosed_tolerance,
            )
        return vis

    def _local_result(
        self,
        item: RenderItem,
        present,
        K_local: np.ndarray,
        uv_local: dict,
        crop: np.ndarray,
        parent_size,
        out: RasterOut,
        crossings: dict,
    ) -> RenderResult:
        """The local view's ``RenderResult`` (``RenderResult.local``) from its raster ``out``."""
        L = out.mask.shape[0]
        outside = self._outside_global(crop, parent_size, L)
        mesh, mask, depth = out.rgb.copy(), out.mask.copy(), out.depth.copy()
        mesh[outside] = 0
        mask[outside] = 0
        depth[outside] = 0
        # the part of the local image that shows the global image: its pixel centres [0, W - 1] x [0, H - 1]
        H, W = parent_size
        lo = np.maximum(global_to_local(np.array([0.0, 0.0]), crop, L), 0.0)
        hi = np.maximum(np.minimum(global_to_local(np.array([W - 1.0, H - 1.0]), crop, L), L - 1.0), lo)
        j2d, bbox = {}, {}
        for s in SIDES:
            if s not in present:
                j2d[s] = bbox[s] = None
                continue
            j2d[s] = project_points(item.joints[s], K_local, item.dist)
            b = _box(uv_local[s])
            if np.isfinite(b).all():
                b[[0, 2]] = np.clip(b[[0, 2]], lo[0], hi[0])
                b[[1, 3]] = np.clip(b[[1, 3]], lo[1], hi[1])
            bbox[s] = b
        vis = self._visibility(item, present, j2d, mask, depth, crossings)
        mask, prop_mask = _split_props(mask)
        return RenderResult(
            mesh_image=mesh,
            mask=mask,
            depth=depth,
            joints_2d=j2d,
            joints_visible=vis,
            bbox=bbox,
            crop_box=full_frame(L),
            mesh_local=mesh,
            mask_local=mask,
            K=np.asarray(K_local, dtype=np.float64),
            prop_mask=prop_mask,
        )

    def _outside_global(self, crop: np.ndarray, image_size, size: int | None = None) -> np.ndarray:
        """(L, L) bool: the local pixels (L = ``size``, default local_size) whose centres fall outside the
        global image of ``image_size`` (H, W)."""
        L = size or self.config.local_size
        H, W = image_size
        ii = np.arange(L, dtype=np.float64)
        # the map is separable: x depends on the column only, y on the row only
        g = local_to_global(np.stack([ii, ii], axis=-1), crop, L)
        cols = (g[:, 0] < -0.5) | (g[:, 0] >= W - 0.5)
        rows = (g[:, 1] < -0.5) | (g[:, 1] >= H - 0.5)
        return rows[:, None] | cols[None, :]

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op unless a backend holds resources
        """Release backend resources (contexts, device memory)."""


def make_renderer(name: str = "auto", device: str = "auto", config: RenderConfig | None = None) -> Renderer:
    """'pytorch3d', 'opengl' or 'auto' (pytorch3d on CUDA, opengl otherwise); ``device``: auto, cpu, cuda or
    cuda:N."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "auto":
        name = "pytorch3d" if str(device).startswith("cuda") else "opengl"
    from renderers import RENDERERS

    if name not in RENDERERS.names():
        raise ValueError(f"unknown renderer {name!r}; choose pytorch3d, opengl or auto")
    return RENDERERS.factory(name)(config, device=device)
