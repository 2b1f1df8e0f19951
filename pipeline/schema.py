"""The sample record and label schema v1 (DESIGN section 3).

``Label`` is the frozen, validated content of ``label.json`` (+ ``verts.npy``), with exact round trips. Stages
build a sample from frozen parts (``pipeline.sample``), and ``Sample.to_label()`` composes the label.

Conventions: camera space is OpenCV's (x right, y down, z forward), metres; pixel coordinates put the centre
of pixel (u, v) at integer (u, v). Joint order: ``pipeline.kinematics.JOINT_NAMES``.
Validation errors are ``SchemaError`` with the dotted field name and the bad value in the message.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from typing import Any

import numpy as np

from pipeline.errors import HandgenError

SCHEMA_VERSION = 1
SIDES = ("right", "left")
HAND_TYPES = ("right", "left", "interacting")
DATASETS = ("interhand2.6m", "reinterhand", "prior")
HAND_MODEL_NAMES = ("mano", "standin")
N_JOINTS = 21
N_VERTS = 778
CLIP_MAX_TOKENS = 77
#: Largest coordinate (metres) accepted for positions in camera space; beyond it a value is almost
#: surely in millimetres.
MAX_METRES = 10.0
#: Record views: ``global`` (the sample's own record) and ``local`` (its close-up, written with ``--views
#: global,local`` as a record of its own, key ``<run_tag>-<index:010d>-local``, right after the global one).
VIEWS = ("global", "local")
_KEY_RE = re.compile(r"^(?P<tag>[A-Za-z0-9_]+)-(?P<index>\d{10})(?:-(?P<view>local))?$")
#: How a local record's image was made: the generator's own local image, or the global image resampled
#: through the crop (``pipeline.imaging.crop_resample``) when the generator makes none (composite).
LOCAL_IMAGE_ORIGINS = ("generated", "resampled")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class SchemaError(HandgenError, ValueError):
    """A record that breaks label schema v1; the message names the field and the bad value."""


def normalize_views(views) -> tuple[str, ...]:
    """``("global",)`` or ``("global", "local")`` from a sequence of view names or a comma-separated string
    (``"global,local"``), in ``VIEWS`` order. ``SchemaError`` for an unknown or repeated view, or a set
    without ``global`` (the global view is always generated and written)."""
    if isinstance(views, str):
        items = [v.strip() for v in views.split(",")]
    elif isinstance(views, (list, tuple)) and all(isinstance(v, str) for v in views):
        items = list(views)
    else:
        raise SchemaError(f"views must be a sequence of view names ({', '.join(VIEWS)}), got {views!r}")
    bad = [v for v in items if v not in VIEWS]
    if bad:
        raise SchemaError(f"unknown view {bad[0]!r} in views {items}: the views are {', '.join(VIEWS)}")
    if len(set(items)) != len(items):
        raise SchemaError(f"views {items} name a view twice")
    if "global" not in items:
        raise SchemaError(f"views {items} lack 'global': the global view is always generated")
    return tuple(v for v in VIEWS if v in items)


def make_key(run_tag: str, index: int, view: str = "global") -> str:
    """Record key ``<run_tag>-<index:010d>`` (``view`` global) or ``<run_tag>-<index:010d>-local`` (the local
    record of that sample). The tag has no '.' or '-': WebDataset splits a record's key from its file names at
    the first dot."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", run_tag or ""):
        raise SchemaError(f"run_tag: must be letters, digits or '_', got {run_tag!r}")
    if not isinstance(index, (int, np.integer)) or index < 0 or index >= 10**10:
        raise SchemaError(f"index: must be an integer in [0, 1e10), got {index!r}")
    _choice("view", view, VIEWS)
    return f"{run_tag}-{int(index):010d}" + ("" if view == "global" else f"-{view}")


# ----------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _array(
    field: str, value: Any, shape: tuple[int, ...], *, finite: bool = True, dtype=np.float64
) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"{field}: expected numbers with shape {shape}, got {_fmt(value)}") from exc
    if arr.shape != shape:
        raise SchemaError(f"{field}: expected shape {shape}, got {arr.shape}")
    if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise SchemaError(f"{field}: non-finite value {arr[bad]} at {list(bad)}")
    return arr


def _metres(field: str, arr: np.ndarray) -> None:
    big = float(np.nanmax(np.abs(arr))) if arr.size else 0.0
    if big > MAX_METRES:
        raise SchemaError(f"{field}: |value| {big:g} > {MAX_METRES:g} m; units must be metres (millimetres?)")


def _box(field: str, value: Any) -> np.ndarray:
    box = _array(field, value, (4,))
    if box[2] < box[0] or box[3] < box[1]:
        raise SchemaError(
            f"{field}: expected [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {box.tolist()}"
        )
    return box


def _choice(field: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SchemaError(f"{field}: expected one of {list(allowed)}, got {_fmt(value)}")
    return value


def _int(field: str, value: Any, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SchemaError(f"{field}: expected an integer, got {_fmt(value)}")
    if value < lo or (hi is not None and value > hi):
        raise SchemaError(
            f"{field}: expected an integer in [{lo}, {hi if hi is not None else 'inf'}], got {value}"
        )
    return int(value)


def _floats(arr: np.ndarray) -> list:
    """Nested lists of Python floats (shortest round-trip repr), for deterministic JSON."""
    return np.asarray(arr, dtype=np.float64).tolist()


# ----------------------------------------------------------------------------------------------------
# label types
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics ``K`` (3, 3) pixels and optional distortion ``dist`` (k,) coefficients
    (OpenCV fisheye k1..k4 when 4 values, OpenCV radial-tangential otherwise)."""

    K: np.ndarray
    dist: np.ndarray | None = None

    def __post_init__(self) -> None:
        K = _array("camera.K", self.K, (3, 3))
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise SchemaError(f"camera.K: focal lengths must be > 0, got fx={K[0, 0]:g} fy={K[1, 1]:g}")
        if not np.allclose(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0:
            raise SchemaError(f"camera.K: last row must be [0, 0, 1] and K[1, 0] = 0, got {K.tolist()}")
        object.__setattr__(self, "K", K)
        if self.dist is not None:
            d = np.asarray(self.dist, dtype=np.float64)
            if d.ndim != 1 or d.size not in (4, 5, 8) or not np.isfinite(d).all():
                raise SchemaError(
                    f"camera.dist: expected null or 4, 5 or 8 finite coefficients, got {_fmt(self.dist)}"
                )
            object.__setattr__(self, "dist", d)

    def to_json(self) -> dict:
        return {"K": _floats(self.K), "dist": None if self.dist is None else _floats(self.dist)}

    @classmethod
    def from_json(cls, d: Any) -> Camera:
        if not isinstance(d, dict) or "K" not in d:
            raise SchemaError(f"camera: expected an object with K and dist, got {_fmt(d)}")
        return cls(K=d["K"], dist=d.get("dist"))


@dataclasses.dataclass(frozen=True)
class HandLabel:
    """One hand's exact label (camera space, metres; pixels for 2D).

    mano_pose (48,) axis-angle radians, global orient first, relative to MANO's mean pose;
    mano_shape (10,); mano_trans (3,) metres; joints_3d (21, 3) metres; joints_2d (21, 2) pixels;
    joints_visible (21,) bool; bbox (4,) [x0, y0, x1, y1] pixels.
    """

    mano_pose: np.ndarray
    mano_shape: np.ndarray
    mano_trans: np.ndarray
    joints_3d: np.ndarray
    joints_2d: np.ndarray
    joints_visible: np.ndarray
    bbox: np.ndarray
    side: str = "right"

    def __post_init__(self) -> None:
        f = f"hands.{self.side}"
        object.__setattr__(self, "mano_pose", _array(f"{f}.mano_pose", self.mano_pose, (48,)))
        object.__setattr__(self, "mano_shape", _array(f"{f}.mano_shape", self.mano_shape, (10,)))
        trans = _array(f"{f}.mano_trans", self.mano_trans, (3,))
        _metres(f"{f}.mano_trans", trans)
        object.__setattr__(self, "mano_trans", trans)
        j3 = _array(f"{f}.joints_3d", self.joints_3d, (N_JOINTS, 3))
        _metres(f"{f}.joints_3d", j3)
        object.__setattr__(self, "joints_3d", j3)
        object.__setattr__(self, "joints_2d", _array(f"{f}.joints_2d", self.joints_2d, (N_JOINTS, 2)))
        vis = np.asarray(self.joints_visible)
        if vis.shape != (N_JOINTS,) or not (vis.dtype == bool or np.isin(vis, (0, 1, True, False)).all()):
            raise SchemaError(
                f"{f}.joints_visible: expected {N_JOINTS} booleans, got {_fmt(self.joints_visible)}"
            )
        object.__setattr__(self, "joints_visible", vis.astype(bool))
        object.__setattr__(self, "bbox", _box(f"{f}.bbox", self.bbox))

    def to_json(self) -> dict:
        return {
            "mano_pose": _floats(self.mano_pose),
            "mano_shape": _floats(self.mano_shape),
            "mano_trans": _floats(self.mano_trans),
            "joints_3d": _floats(self.joints_3d),
            "joints_2d": _floats(self.joints_2d),
            "joints_visible": [bool(v) for v in self.joints_visible],
            "bbox": _floats(self.bbox),
        }

    @classmethod
    def from_json(cls, d: Any, side: str) -> HandLabel:
        keys = ("mano_pose", "mano_shape", "mano_trans", "joints_3d", "joints_2d", "joints_visible", "bbox")
        if not isinstance(d, dict):
            raise SchemaError(f"hands.{side}: expected an object or null, got {_fmt(d)}")
        missing = [k for k in keys if k not in d]
        if missing:
            raise SchemaError(f"hands.{side}: missing fields {missing}")
        return cls(**{k: d[k] for k in keys}, side=side)


@dataclasses.dataclass(frozen=True)
class Label:
    """Everything in ``label.json`` (schema v1), validated on construction; ``verts`` is ``verts.npy``:
    (2, 778, 3) float32 metres, right then left, NaN rows for an absent hand."""

    key: str
    index: int
    seed: int
    image_size: tuple[int, int]
    camera: Camera
    hand_type: str
    hands: dict[str, HandLabel | None]
    crop_box: np.ndarray
    caption: str
    hand_token_indices: tuple[int, ...]
    source: dict
    hand_model: dict
    generator: dict
    verts: np.ndarray
    schema_version: int = SCHEMA_VERSION
    quality: dict | None = None
    view: dict | None = None
    props: dict | None = None

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise SchemaError(
                f"schema_version: this code reads version {SCHEMA_VERSION}, got {_fmt(self.schema_version)}"
            )
        m = _KEY_RE.match(self.key) if isinstance(self.key, str) else None
        if not m:
            raise SchemaError(
                f"key: expected '<run_tag>-<10-digit index>' ('-local' appended for a local "
                f"record), got {_fmt(self.key)}"
            )
        index = _int("index", self.index)
        if int(m.group("index")) != index:
            raise SchemaError(f"key: index part {m.group('index')} does not match index {index}")
        object.__setattr__(self, "index", index)
        object.__setattr__(
            self, "seed", _int("seed", self.seed, 0, 2**63 - 1)
        )  # int64: readable by HF datasets
        size = tuple(self.image_size) if isinstance(self.image_size, (list, tuple)) else ()
        if len(size) != 2:
            raise SchemaError(f"image_size: expected [H, W], got {_fmt(self.image_size)}")
        object.__setattr__(
            self, "image_size", (_int("image_size[0]", size[0], 1), _int("image_size[1]", size[1], 1))
        )
        if not isinstance(self.camera, Camera):
            raise SchemaError(f"camera: expected a Camera, got {_fmt(self.camera)}")
        _choice("hand_type", self.hand_type, HAND_TYPES)
        if not isinstance(self.hands, dict) or set(self.hands) != set(SIDES):
            raise SchemaError(f"hands: expected keys ['right', 'left'], got {_fmt(self.hands)}")
        present = tuple(s for s in SIDES if self.hands[s] is not None)
        expected = {"right": ("right",), "left": ("left",), "interacting": SIDES}[self.hand_type]
        if present != expected:
            raise SchemaError(
                f"hands: hand_type {self.hand_type!r} needs hands {list(expected)}, got {list(present)}"
            )
        for s in present:
            if not isinstance(self.hands[s], HandLabel) or self.hands[s].side != s:
                raise SchemaError(f"hands.{s}: expected a HandLabel for side {s!r}")
        object.__setattr__(self, "crop_box", _box("crop_box", self.crop_box))
        if not isinstance(self.caption, str):
            raise SchemaError(f"caption: expected a string, got {_fmt(self.caption)}")
        idx = tuple(self.hand_token_indices) if isinstance(self.hand_token_indices, (list, tuple)) else None
        if idx is None:
            raise SchemaError(
                f"hand_token_indices: expected a list of integers, got {_fmt(self.hand_token_indices)}"
            )
        object.__setattr__(
            self,
            "hand_token_indices",
            tuple(_int(f"hand_token_indices[{i}]", v, 1, CLIP_MAX_TOKENS - 1) for i, v in enumerate(idx)),
        )
        if not isinstance(self.source, dict):
            raise SchemaError(f"source: expected an object, got {_fmt(self.source)}")
        _choice("source.dataset", self.source.get("dataset"), DATASETS)
        if not isinstance(self.hand_model, dict):
            raise SchemaError(f"hand_model: expected an object, got {_fmt(self.hand_model)}")
        _choice("hand_model.name", self.hand_model.get("name"), HAND_MODEL_NAMES)
        if not isinstance(self.hand_model.get("sha256"), str) or not _SHA_RE.match(self.hand_model["sha256"]):
            raise SchemaError(
                "hand_model.sha256: expected 64 lowercase hex digits, got "
                f"{_fmt(self.hand_model.get('sha256'))}"
            )
        if not isinstance(self.generator, dict) or not isinstance(self.generator.get("name"), str):
            raise SchemaError(f"generator: expected an object with a name, got {_fmt(self.generator)}")
        object.__setattr__(self, "verts", _check_verts(self.verts, present))
        if self.quality is not None:
            _check_quality(self.quality)
        _check_view(self.view, m, self.image_size)
        if self.props is not None:
            from pipeline.props import Props, PropsError

            try:
                parsed = Props.from_json(self.props)
            except PropsError as exc:
                raise SchemaError(str(exc)) from None
            for s, arm in parsed.forearms.items():
                if arm is not None and self.hands[s] is None:
                    raise SchemaError(f"props.forearm.{s}: there is no {s} hand to attach it to")

    @property
    def view_name(self) -> str:
        """``global`` (no ``view`` field: every record of a global-only run) or ``local``."""
        return "global" if self.view is None else self.view["name"]

    @property
    def parent_key(self) -> str:
        """The key of the sample's global record (this record's own key for a global record)."""
        return self.key if self.view is None else self.view["parent"]

    # -- serialisation --------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The ``label.json`` object (deterministic key order)."""
        return {
            "schema_version": self.schema_version,
            "key": self.key,
            "index": self.index,
            "seed": self.seed,
            "image_size": list(self.image_size),
            "camera": self.camera.to_json(),
            "hand_type": self.hand_type,
            "hands": {s: (None if self.hands[s] is None else self.hands[s].to_json()) for s in SIDES},
            "crop_box": _floats(self.crop_box),
            "caption": self.caption,
            "hand_token_indices": list(self.hand_token_indices),
            "source": self.source,
            "hand_model": self.hand_model,
            "generator": self.generator,
            **({} if self.quality is None else {"quality": self.quality}),
            **({} if self.view is None else {"view": self.view}),
            **({} if self.props is None else {"props": self.props}),
        }

    def label_bytes(self) -> bytes:
        """``label.json`` content: UTF-8 JSON, 1-space indent, no timestamps; identical for equal labels."""
        return (json.dumps(self.to_json(), indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode(
            "utf-8"
        )

    def verts_bytes(self) -> bytes:
        """``verts.npy`` content: (2, 778, 3) float32."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(self.verts, dtype=np.float32), allow_pickle=False)
        return buf.getvalue()

    @classmethod
    def from_json(cls, d: Any, verts: np.ndarray) -> Label:
        """Rebuild from a parsed ``label.json`` object and the ``verts.npy`` array (validates both)."""
        if not isinstance(d, dict):
            raise SchemaError(f"label: expected a JSON object, got {_fmt(d)}")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise SchemaError(
                f"schema_version: this code reads version {SCHEMA_VERSION}, got "
                f"{_fmt(d.get('schema_version'))}"
                + (
                    " (written by a newer version; upgrade)"
                    if isinstance(d.get("schema_version"), int) and d["schema_version"] > SCHEMA_VERSION
                    else ""
                )
            )
        required = (
            "key",
            "index",
            "seed",
            "image_size",
            "camera",
            "hand_type",
            "hands",
            "crop_box",
            "caption",
            "hand_token_indices",
            "source",
            "hand_model",
            "generator",
        )
        missing = [k for k in required if k not in d]
        if missing:
            raise SchemaError(f"label: missing fields {missing}")
        hands_d = d["hands"]
        if not isinstance(hands_d, dict) or set(hands_d) != set(SIDES):
            raise SchemaError(f"hands: expected keys ['right', 'left'], got {_fmt(hands_d)}")
        hands = {s: None if hands_d[s] is None else HandLabel.from_json(hands_d[s], s) for s in SIDES}
        return cls(
            key=d["key"],
            index=d["index"],
            seed=d["seed"],
            image_size=d["image_size"],
            camera=Camera.from_json(d["camera"]),
            hand_type=d["hand_type"],
            hands=hands,
            crop_box=d["crop_box"],
            caption=d["caption"],
            hand_token_indices=d["hand_token_indices"],
            source=d["source"],
            hand_model=d["hand_model"],
            generator=d["generator"],
            verts=verts,
            quality=d.get("quality"),
            view=d.get("view"),
            props=d.get("props"),
        )

    @classmethod
    def from_bytes(cls, label_json: bytes, verts_npy: bytes) -> Label:
        """Parse ``label.json`` and ``verts.npy`` file contents."""
        try:
            d = json.loads(label_json.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SchemaError(f"label.json: not valid UTF-8 JSON ({exc})") from exc
        try:
            verts = np.load(io.BytesIO(verts_npy), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise SchemaError(f"verts.npy: not a valid .npy array ({exc})") from exc
        return cls.from_json(d, verts)


def _check_quality(q: Any) -> None:
    """``quality`` (written by ``--min-alignment``): an object naming its scorer, with the sample's alignment
    in [0, 1] (or null: no hand judged) and the try number (>= 1) of the image it judged."""
    if not isinstance(q, dict) or not isinstance(q.get("scorer"), str):
        raise SchemaError(f"quality: expected an object with a scorer name, got {_fmt(q)}")
    a = q.get("alignment")
    if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0):
        raise SchemaError(f"quality.alignment: expected a number in [0, 1] or null, got {_fmt(a)}")
    _int("quality.try", q.get("try"), 1)


def _check_view(view: Any, key_match: re.Match, image_size: tuple[int, int]) -> None:
    """``view``: absent (None) for a global record; for a local record (key ``...-local``) an object
    ``{name: "local", parent: <the global record's key>, parent_image_size: [H, W], parent_crop_box: [x0, y0,
    x1, y1] (global pixels), image: "generated" | "resampled"}``, with a square ``image_size``."""
    if key_match.group("view") is None:
        if view is not None:
            raise SchemaError(f"view: a global record (key without '-local') has none, got {_fmt(view)}")
        return
    if not isinstance(view, dict) or view.get("name") != "local":
        raise SchemaError(f"view: a local record (key ending '-local') needs name 'local', got {_fmt(view)}")
    fields = {"name", "parent", "parent_image_size", "parent_crop_box", "image"}
    if set(view) != fields:
        raise SchemaError(f"view: expected fields {sorted(fields)}, got {sorted(view)}")
    parent = f"{key_match.group('tag')}-{key_match.group('index')}"
    if view["parent"] != parent:
        raise SchemaError(
            f"view.parent: expected {parent!r} (its key without '-local'), got {_fmt(view['parent'])}"
        )
    size = view["parent_image_size"]
    if not isinstance(size, list) or len(size) != 2:
        raise SchemaError(f"view.parent_image_size: expected [H, W], got {_fmt(size)}")
    for i, v in enumerate(size):
        _int(f"view.parent_image_size[{i}]", v, 1)
    box = _box("view.parent_crop_box", view["parent_crop_box"])
    if not box[2] - box[0] > 0 or not np.isclose(box[2] - box[0], box[3] - box[1]):
        raise SchemaError(f"view.parent_crop_box: expected a square box, got {box.tolist()}")
    _choice("view.image", view["image"], LOCAL_IMAGE_ORIGINS)
    if image_size[0] != image_size[1]:
        raise SchemaError(f"image_size: a local record is square, got {list(image_size)}")


def _check_verts(value: Any, present: tuple[str, ...]) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != (2, N_VERTS, 3):
        raise SchemaError(f"verts: expected shape (2, {N_VERTS}, 3), got {arr.shape}")
    if arr.dtype != np.float32:
        raise SchemaError(f"verts: expected dtype float32, got {arr.dtype}")
    for i, s in enumerate(SIDES):
        if s in present:
            if not np.isfinite(arr[i]).all():
                raise SchemaError(f"verts[{i}] ({s} hand): non-finite values for a present hand")
            _metres(f"verts[{i}] ({s} hand)", arr[i])
        elif not np.isnan(arr[i]).all():
            raise SchemaError(f"verts[{i}] ({s} hand): an absent hand must be all NaN")
    return arr


def empty_verts() -> np.ndarray:
    """(2, 778, 3) float32 of NaN: the ``verts.npy`` of a record before hands are filled in."""
    return np.full((2, N_VERTS, 3), np.nan, dtype=np.float32)
