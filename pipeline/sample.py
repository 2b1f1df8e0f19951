"""A sample as the stages build it: each stage's own frozen part, and the ``Sample`` that composes them.

Data flows one way. Each stage reads the ``Sample`` made so far and returns its own part; the pipeline
composes the next ``Sample`` from it (``Sample.with_``). Nothing is changed in place:

============  ==================  ===============================================================
stage         part                what it holds
============  ==================  ===============================================================
source        ``Drawn``           index, seed, key, camera, image size, hand type, MANO parameters
                                  (``HandParams``), source ids and the dataset photo's path
hand model    ``Posed``           vertices (2, 778, 3), joints_3d per hand, the hand model's record and
                                  triangles
props         ``Props``           the forearms and the held object drawn with the hands (``pipeline.props``)
letterbox     ``photo``           prepare mode: the dataset photo letterboxed (H, W, 3) uint8 (and a
                                  ``Drawn`` with that image's camera)
renderer      ``RenderResult``    mesh images, mask, depth, 2D joints, visibility, boxes, crop
captioner     ``Caption``         the text, what made it (``record()``), its hand-token positions
generator     ``Generation``      the image (and local image), the generator's record
scorer        ``quality``         the alignment verdict on the image (``--min-alignment``)
============  ==================  ===============================================================

``Sample.to_label()`` composes label schema v1 from the parts (``pipeline.schema.Label``). Read-only
properties give stages the label's view of a sample (``sample.hands[side].joints_2d``, ``sample.mask``, ...),
so a stage needs to know only the fields it reads.

Conventions: camera space is OpenCV's (x right, y down, z forward), metres; pixel coordinates put the centre
of pixel (u, v) at integer (u, v). Joint order: ``pipeline.kinematics.JOINT_NAMES``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.props import Props
from pipeline.schema import SIDES, Camera, HandLabel, Label, SchemaError, empty_verts


@dataclasses.dataclass(frozen=True)
class HandParams:
    """One hand's MANO parameters in camera space: pose (48,) axis-angle radians (global orient first,
    relative to MANO's mean pose), shape (10,), trans (3,) metres; float64."""

    pose: np.ndarray
    shape: np.ndarray
    trans: np.ndarray


@dataclasses.dataclass(frozen=True)
class Drawn:
    """What the pose source draws for sample ``index``: ``seed`` (the per-sample seed), ``key``,
    ``image_size`` (H, W) pixels, ``camera``, ``hand_type``, ``params`` (side -> ``HandParams`` or None),
    ``source`` (the label's source ids) and ``source_image`` (the dataset photo's path, or None)."""

    index: int
    seed: int
    key: str
    image_size: tuple[int, int]
    camera: Camera
    hand_type: str
    params: Mapping[str, HandParams | None]
    source: Mapping[str, Any]
    source_image: str | None = None


@dataclasses.dataclass(frozen=True)
class Posed:
    """The hand model's output: ``verts`` (2, 778, 3) float32 metres, right then left, NaN rows for an absent
    hand; ``joints_3d`` side -> (21, 3) float64 metres or None; ``hand_model`` the label's record of the model
    (name, sha256); ``faces`` side -> the model's triangles (F, 3) int64 (the hand model's own arrays, shared,
    not copied; None where the vertices did not come from a hand model), for stages that need the surface
    (the composite's shadows)."""

    verts: np.ndarray
    joints_3d: Mapping[str, np.ndarray | None]
    hand_model: Mapping[str, Any]
    faces: Mapping[str, np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class RenderResult:
    """Render outputs of one sample.

    mesh_image (H, W, 3) uint8; mask (H, W) uint8: 0 background, 1 right, 2 left (after the depth test);
    depth (H, W) float32 metres along z, 0 on background. joints_2d: side -> (21, 2) float64 pixels;
    joints_visible: side -> (21,) bool; bbox: side -> (4,) float64 [x0, y0, x1, y1] pixels, the box of the
    hand's projected vertices clipped to the image (absent hands: None). crop_box (4,) float64 square
    [x0, y0, x1, y1] in global pixels (may extend past the image). mesh_local (L, L, 3) uint8 and mask_local
    (L, L) uint8: the crop re-rendered at L = local_size. K (3, 3): the intrinsics of this frame.

    local: the local view as a frame of its own (``--views global,local`` writes it as a record): a
    ``RenderResult`` whose K is ``crop_intrinsics(K, crop_box, L)``, whose mesh_image / mask / depth are the
    local render (black, 0 and 0 where the crop leaves the global image), joints_2d the joints projected with
    that K, joints_visible the visibility rule of ``renderers.base`` applied to the local mask and depth, bbox
    each hand's box of projected vertices clipped to the part of the local image that the global image
    covers; its crop_box is its whole frame ``[-0.5, -0.5, L - 0.5, L - 0.5]`` (for which ``crop_intrinsics``
    is the identity), so its mesh_local / mask_local are its mesh_image / mask; its own ``local`` is None.

    prop_mask: (H, W) uint8, the prop (``pipeline.props``) that is the first surface per pixel: 3 a forearm,
    4 an object, 0 none (``renderers.base.PROP_IDS``); None when no prop shows. Those pixels are 0 in
    ``mask``, and ``depth`` holds them.
    """

    mesh_image: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    joints_2d: dict
    joints_visible: dict
    bbox: dict
    crop_box: np.ndarray
    mesh_local: np.ndarray
    mask_local: np.ndarray
    K: np.ndarray | None = None
    local: RenderResult | None = None
    prop_mask: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Caption:
    """A caption and what made it: ``captioner`` (name) and ``prompt_version``; ``meta`` holds extras (e.g.
    the raw model answer, or why a fallback was used). ``hand_token_indices``: the CLIP token positions of its
    hand-related words (``<sot>`` = 0), set by tagging (``pipeline.tagging``) with the generator's
    tokenizer."""

    text: str
    captioner: str
    prompt_version: str
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    hand_token_indices: tuple[int, ...] = ()

    def record(self) -> dict:
        """What the label keeps about how the caption was made (its ``generator.prompt``)."""
        return {"captioner": self.captioner, "prompt_version": self.prompt_version, **self.meta}


@dataclasses.dataclass(frozen=True)
class Generation:
    """A generator's output for one sample: ``image`` (H, W, 3) uint8 at the sample's image size, ``record``
    (the label's ``generator`` field: at least ``name``, ``version`` and ``seed``, every setting that shaped
    the image) and ``image_local`` ((L, L, 3) uint8, the local close-up, when the generator makes one)."""

    image: np.ndarray
    record: Mapping[str, Any]
    image_local: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A generator's answer for a sample it could not make (in place of its ``Generation``): the sample is
    skipped and counted under ``reason`` (e.g. ``out_of_memory``); ``detail`` is logged."""

    reason: str
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class HandView:
    """One hand as the label sees it, assembled from the parts made so far (None where a stage has not run):
    pose (48,), shape (10,), trans (3,) float64; joints_3d (21, 3) metres; joints_2d (21, 2) pixels;
    joints_visible (21,) bool; bbox (4,) pixels."""

    pose: np.ndarray
    shape: np.ndarray
    trans: np.ndarray
    joints_3d: np.ndarray | None = None
    joints_2d: np.ndarray | None = None
    joints_visible: np.ndarray | None = None
    bbox: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Sample:
    """The parts of one sample made so far (module doc). ``attempt``: the generation try (0 first; generators
    draw from the streams of their try, ``pipeline.seeding.stage_rng(seed, stage, attempt)``). ``view``: the
    label's ``view`` field (None for a global record; set on a local record,
    ``sinks.records.local_sample``). ``props``: the forearms and the held object drawn with the hands
    (``pipeline.props``; None: a run without props), the label's ``props`` field."""

    drawn: Drawn
    posed: Posed | None = None
    rendered: RenderResult | None = None
    captioned: Caption | None = None
    generated: Generation | None = None
    quality: Mapping[str, Any] | None = None
    attempt: int = 0
    photo: np.ndarray | None = None
    view: Mapping[str, Any] | None = None
    props: Props | None = None

    def with_(self, **parts) -> Sample:
        """A new sample with ``parts`` replaced (this one is not changed)."""
        return dataclasses.replace(self, **parts)

    # -- the label's view of the parts ----------------------------------------------------------------------
    @property
    def key(self) -> str:
        return self.drawn.key

    @property
    def index(self) -> int:
        return self.drawn.index

    @property
    def seed(self) -> int:
        return self.drawn.seed

    @property
    def image_size(self) -> tuple[int, int]:
        return self.drawn.image_size

    @property
    def camera(self) -> Camera:
        return self.drawn.camera

    @property
    def hand_type(self) -> str:
        return self.drawn.hand_type

    @property
    def source(self) -> Mapping[str, Any]:
        return self.drawn.source

    @property
    def source_image(self) -> np.ndarray | str | None:
        """The photo to caption: the letterboxed photo when there is one, else the dataset photo's path."""
        return self.photo if self.photo is not None else self.drawn.source_image

    @property
    def verts(self) -> np.ndarray:
        return empty_verts() if self.posed is None else self.posed.verts

    @property
    def hand_model(self) -> Mapping[str, Any] | None:
        return None if self.posed is None else self.posed.hand_model

    @property
    def hand_faces(self) -> Mapping[str, np.ndarray] | None:
        """side -> the hand model's triangles (F, 3) (``Posed.faces``), or None when not known."""
        return None if self.posed is None else self.posed.faces

    @property
    def hands(self) -> dict[str, HandView | None]:
        """side -> ``HandView`` (None for an absent hand)."""
        out: dict[str, HandView | None] = {}
        r = self.rendered
        for side in SIDES:
            p = self.drawn.params.get(side)
            if p is None:
                out[side] = None
                continue
            out[side] = HandView(
                p.pose,
                p.shape,
                p.trans,
                joints_3d=None if self.posed is None else self.posed.joints_3d[side],
                joints_2d=None if r is None else r.joints_2d[side],
                joints_visible=None if r is None else r.joints_visible[side],
                bbox=None if r is None else r.bbox[side],
            )
        return out

    @property
    def crop_box(self) -> np.ndarray | None:
        return None if self.rendered is None else self.rendered.crop_box

    @property
    def mesh_image(self) -> np.ndarray | None:
        return None if self.rendered is None else self.rendered.mesh_image

    @property
    def mesh_local(self) -> np.ndarray | None:
        return None if self.rendered is None else self.rendered.mesh_local

    @property
    def mask(self) -> np.ndarray | None:
        return None if self.rendered is None else self.rendered.mask

    @property
    def prop_mask(self) -> np.ndarray | None:
        return None if self.rendered is None else self.rendered.prop_mask

    @property
    def depth(self) -> np.ndarray | None:
        return None if self.rendered is None else self.rendered.depth

    @property
    def caption(self) -> str | None:
        return None if self.captioned is None else self.captioned.text

    @property
    def hand_token_indices(self) -> tuple[int, ...]:
        return () if self.captioned is None else tuple(self.captioned.hand_token_indices)

    @property
    def image(self) -> np.ndarray | None:
        return None if self.generated is None else self.generated.image

    @property
    def image_local(self) -> np.ndarray | None:
        return None if self.generated is None else self.generated.image_local

    @property
    def generator(self) -> dict | None:
        """The label's ``generator`` field: the generator's record, then ``prompt``
        (how the caption was made)."""
        if self.generated is None:
            return None
        record = dict(self.generated.record)
        if self.captioned is not None:
            record["prompt"] = self.captioned.record()
        return record

    def to_label(self) -> Label:
        """Compose and validate the ``Label``; raises ``SchemaError`` naming the first missing or bad
        field."""
        hands: dict[str, HandLabel | None] = {}
        for s, h in self.hands.items():
            if h is None:
                hands[s] = None
                continue
            for name in ("joints_3d", "joints_2d", "joints_visible", "bbox"):
                if getattr(h, name) is None:
                    raise SchemaError(f"hands.{s}.{name}: not filled in (stage missing?)")
            hands[s] = HandLabel(
                h.pose, h.shape, h.trans, h.joints_3d, h.joints_2d, h.joints_visible, h.bbox, side=s
            )
        for name in ("crop_box", "caption", "hand_model", "generator"):
            if getattr(self, name) is None:
                raise SchemaError(f"{name}: not filled in (stage missing?)")
        return Label(
            key=self.key,
            index=self.index,
            seed=self.seed,
            image_size=tuple(self.image_size),
            camera=self.camera,
            hand_type=self.hand_type,
            hands=hands,
            crop_box=self.crop_box,
            caption=self.caption,
            hand_token_indices=self.hand_token_indices,
            source=dict(self.source),
            hand_model=dict(self.hand_model),
            generator=self.generator,
            verts=self.verts,
            quality=None if self.quality is None else dict(self.quality),
            view=None if self.view is None else dict(self.view),
            props=None if self.props is None else self.props.to_json(),
        )
