"""Props: scene geometry that is not the hand but takes part in the depth test (forearms and objects).

A forearm continues each hand from its wrist opening (the open boundary loop of the hand mesh, MANO's and the
stand-in's alike): its first cross-section *is* that loop, so the seam is closed; further sections follow the
loop's shape, widened toward the elbow, along the loop's normal (pointing away from the hand) bent by a small
wrist angle. The arm is drawn 0.30 to 0.45 m long, then, given the sample's camera, drawn out until its end
leaves the picture (``reach_out``, at most ``MAX_LENGTH``), since a real arm goes on to the elbow; it ends in
a flat cap. With two hands, the two forearms are drawn again (both, at most ``ARM_TRIES`` draws) while
they pass through each other or one passes through the other hand (``arms_cross``); then, for wrists held
across each other or a hand over the other forearm, at most ``ARM_TRIES`` more with the wrist flexed or
extended up to ``FLEX_MAX``. The last draw of the first round stays when none is clear.

An object (``PropObject``: a cylinder, a sphere, a box or a mug) is held against the palm: for a hand
whose gesture grasps (``GRASP_OBJECTS``, from its joints) usually, for others sometimes; its size and
orientation are drawn, then it slides out from the palm's centre along the palm normal until it just clears
the surfaces of every hand and forearm (``CLEARANCE``, on points ``SPACING`` apart: ``surface_points``): in
contact, not inside. One that would end farther than ``CONTACT`` from its hand is dropped. At most one object
per sample.
A mug is a closed round cylinder (its body; ``size`` is the body's half extents) with a handle, a torus
segment on the body's side whose proportions follow the body's (``MUG_ARC``); it is held around its body,
the handle away from the palm (``MUG_TURN``), and the body and the handle both take part in the slide's
inside test (``_mug_parts``).

Props are drawn per sample from their own stream (``stage_rng(seed, 'props')``), recorded in the label's
``props`` field (``Props.to_json``, rounded to the digits written, and the geometry is built from the rounded
values), so ``hands validate`` rebuilds the same triangles and re-renders the mask exactly. They are never
part of the hand mask or the joints; the renderer draws them with the depth test (``renderers.base``), so a
forearm in front of the hand removes those pixels from the mask and hides the joints behind it.

Units: metres, camera space (OpenCV: x right, y down, z forward); angles in radians.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from pipeline import geometry
from pipeline.camera import project_points
from pipeline.errors import HandgenError
from pipeline.gestures import classify_gesture
from pipeline.kinematics import palm_normal
from pipeline.rotations import aa_to_matrix, matrix_to_aa
from pipeline.schema import SIDES

VERSION = 2
"""Bumped whenever the same ``props`` stream draws other props, so a run's shards agree on it (the run's
``props`` stage record): 2, forearms drawn out of the picture (``reach_out``) and wrists flexed further when
two forearms cross (``FLEX_MAX``); 1 (unrecorded), before."""
PROP_IDS = {"forearm": 3, "object": 4}
"""The props' ids in a render's id map (``RenderResult.prop_mask``; the hands are 1 right and 2 left)."""
SECTIONS = 14
"""Cross-sections of a forearm after the wrist loop (the last one is capped)."""
LENGTH_RANGE = (0.30, 0.45)
WIDEN_RANGE = ((1.05, 1.30), (1.40, 1.90))
"""Elbow-end scale of the wrist loop along its long (width) and short (thickness) in-plane axes."""
BEND_SIGMA, BEND_MAX = 0.15, 0.35
ARM_TRIES = 8
"""At most this many draws of a two-hand sample's forearms, until they clear each other and the other hand;
then as many again with the wrist flexed further (``FLEX_MAX``)."""
MAX_LENGTH, LENGTH_STEP, NEAR = 1.5, 0.05, 0.05
"""Metres: how far ``reach_out`` may draw a forearm out to leave the image, in steps of LENGTH_STEP; an end
less than NEAR in front of the camera counts as out of the picture."""
FLEX_MAX = 1.0
"""Radians: how far the second round of draws flexes or extends the wrist (a bend about the wrist loop's long
axis, uniform in +-FLEX_MAX; a real wrist reaches about 70 degrees) when no draw within ``BEND_MAX`` clears:
wrists held across each other, or a hand over the other forearm."""
_DIGITS = 5


class PropsError(HandgenError, ValueError):
    """A malformed ``props`` record, or a hand mesh without a wrist opening."""


@dataclasses.dataclass(frozen=True)
class Forearm:
    """One forearm: ``length`` metres from the wrist loop's centre; ``widen`` (2,) elbow-end scale of the
    loop's width and thickness; ``bend`` (2,) radians, the arm axis tilted from the loop's normal about the
    loop's long and short axes."""

    length: float
    widen: tuple[float, float]
    bend: tuple[float, float]

    def to_json(self) -> dict:
        return {"length": self.length, "widen": list(self.widen), "bend": list(self.bend)}

    @classmethod
    def from_json(cls, d: Any, where: str) -> Forearm:
        if not isinstance(d, dict) or set(d) != {"length", "widen", "bend"}:
            raise PropsError(f"{where}: expected {{length, widen, bend}}, got {d!r}")
        try:
            length = float(d["length"])
            widen = tuple(float(x) for x in d["widen"])
            bend = tuple(float(x) for x in d["bend"])
        except (TypeError, ValueError) as exc:
            raise PropsError(f"{where}: not numbers ({exc})") from exc
        if len(widen) != 2 or len(bend) != 2 or not np.isfinite([length, *widen, *bend]).all():
            raise PropsError(f"{where}: widen and bend need 2 finite numbers each, got {d!r}")
        if not (0.01 <= length <= 2.0 and all(0.2 <= w <= 5.0 for w in widen) and max(map(abs, bend)) <= 1.5):
            raise PropsError(f"{where}: out of range (length 0.01..2 m, widen 0.2..5, |bend| <= 1.5): {d!r}")
        return cls(length, widen, bend)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Props:
    """The props of one sample: ``forearms`` side -> ``Forearm`` (None: no arm drawn for that side), and
    ``objects`` (``PropObject``, at most one so far)."""

    forearms: Mapping[str, Forearm | None]
    objects: tuple = ()

    @property
    def empty(self) -> bool:
        return all(f is None for f in self.forearms.values()) and not self.objects

    def to_json(self) -> dict:
        """The label's ``props`` field: ``{"forearm": {"right": ..., "left": ...}, "objects": [...]}``."""
        return {
            "forearm": {
                s: None if self.forearms.get(s) is None else self.forearms[s].to_json() for s in SIDES
            },
            "objects": [o.to_json() for o in self.objects],
        }

    @classmethod
    def from_json(cls, d: Any) -> Props:
        """Parse (and check) a label's ``props`` field; ``PropsError`` names the bad part."""
        if (
            not isinstance(d, dict)
            or set(d) != {"forearm", "objects"}
            or not isinstance(d["forearm"], dict)
            or not isinstance(d["objects"], list)
        ):
            raise PropsError(f"props: expected {{forearm: {{right, left}}, objects: [...]}}, got {d!r}")
        arms = d["forearm"]
        if set(arms) != set(SIDES):
            raise PropsError(f"props.forearm: expected keys ['right', 'left'], got {sorted(arms)}")
        return cls(
            {s: None if arms[s] is None else Forearm.from_json(arms[s], f"props.forearm.{s}") for s in SIDES},
            tuple(PropObject.from_json(o, f"props.objects[{i}]") for i, o in enumerate(d["objects"])),
        )


def draw_forearm(rng: np.random.Generator, flex_max: float | None = None) -> Forearm:
    """A forearm's parameters from ``rng``, rounded to the digits the label keeps; ``flex_max``: the wrist's
    flexion (``bend[0]``) drawn uniform in +-flex_max instead (one more number from ``rng``)."""
    length = float(rng.uniform(*LENGTH_RANGE))
    widen = tuple(float(rng.uniform(*r)) for r in WIDEN_RANGE)
    bend = tuple(float(np.clip(rng.normal(0.0, BEND_SIGMA), -BEND_MAX, BEND_MAX)) for _ in range(2))
    if flex_max is not None:
        bend = (float(rng.uniform(-flex_max, flex_max)), bend[1])
    return Forearm(
        round(length, _DIGITS),
        tuple(round(w, _DIGITS) for w in widen),
        tuple(round(b, _DIGITS) for b in bend),
    )


def draw_props(
    rng: np.random.Generator,
    hands: Mapping[str, tuple[np.ndarray, np.ndarray] | None],
    faces: Mapping[str, np.ndarray],
    forearm: bool = True,
    objects: bool = False,
    camera: tuple[np.ndarray, tuple[int, int]] | None = None,
) -> Props:
    """Props for a sample whose hands are ``hands`` (side -> (vertices (778, 3), joints (21, 3)), metres,
    camera space; None when absent) with triangles ``faces``: a forearm per present hand when ``forearm``;
    then, when ``objects``, maybe an object held by one of the hands (module doc). The forearms are drawn
    first, so turning objects on or off leaves them as they were. ``camera``: (K (3, 3), image size (H, W)) of
    the sample; with it, each drawn forearm is drawn out until it leaves the image (``reach_out``)."""
    sides = [s for s in SIDES if hands.get(s) is not None]

    def draw(flex_max: float | None = None) -> dict[str, Forearm]:
        out = {}
        for s in sides:
            arm = draw_forearm(rng, flex_max)
            if camera is not None:
                arm = reach_out(arm, hands[s][0], wrist_loop(faces[s]), *camera)
            out[s] = arm
        return out

    arms = {s: None for s in SIDES}
    if forearm:
        arms.update(draw())
    verts = {s: hands[s][0] for s in sides}
    meshes = None  # the forearms' meshes of ``arms`` once built (side -> (vertices, faces))
    if forearm and len(sides) == 2:
        within = arms  # the last draw within BEND_MAX: it stays if every draw crosses
        for k in range(1, 2 * ARM_TRIES):
            meshes = _forearm_meshes(arms, verts, faces)
            if not _meshes_cross(meshes, verts, faces):
                break
            flexed = k >= ARM_TRIES
            arms = draw(FLEX_MAX if flexed else None)  # its meshes: the next pass, or the else below
            if not flexed:
                within = arms
        else:
            meshes = _forearm_meshes(arms, verts, faces)
            if _meshes_cross(meshes, verts, faces):
                arms, meshes = within, None
    if not (objects and sides):
        return Props(arms)
    side = sides[int(rng.integers(len(sides)))]
    joints = hands[side][1]
    gesture = classify_gesture(joints)
    if rng.random() >= OBJECT_P[0 if gesture in GRASP_OBJECTS else 1]:
        return Props(arms)
    kinds = GRASP_OBJECTS.get(gesture, OBJECT_TYPES)
    kind = kinds[int(rng.integers(len(kinds)))]
    skins = {s: surface_points(hands[s][0], faces[s]) for s in sides}
    if meshes is None:
        meshes = _forearm_meshes(arms, verts, faces)
    centre = hands[side][0].mean(axis=0)
    near = [
        (v, f[(np.linalg.norm(v - centre, axis=1) < OBSTACLE_REACH)[f].any(axis=1)])
        for v, f in meshes.values()
    ]
    obstacles = np.concatenate([*skins.values(), *(surface_points(v, f) for v, f in near)])
    obj = place_object(rng, kind, joints, side, obstacles, skins[side])
    return Props(arms, () if obj is None else (obj,))


def arms_cross(
    arms: Mapping[str, Forearm | None], verts: Mapping[str, np.ndarray], faces: Mapping[str, np.ndarray]
) -> bool:
    """True when the forearms ``arms`` (side -> ``Forearm`` or None) of the hands ``verts`` (side -> (778, 3)
    metres, camera space) with triangles ``faces`` pass through each other, or one passes through the other
    hand (``geometry.meshes_interpenetrate``). An arm always touches its own hand (it starts at its wrist
    opening), which is not tested."""
    return _meshes_cross(_forearm_meshes(arms, verts, faces), verts, faces)


def _forearm_meshes(
    arms: Mapping[str, Forearm | None], verts: Mapping[str, np.ndarray], faces: Mapping[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """side -> (vertices (V, 3), faces (F, 3)) of each forearm in ``arms`` (``prop_parts``' forearms)."""
    return {s: (v, f) for kind, s, v, f in prop_parts(Props(arms), verts, faces) if kind == "forearm"}


def _meshes_cross(
    meshes: Mapping[str, tuple[np.ndarray, np.ndarray]],
    verts: Mapping[str, np.ndarray],
    faces: Mapping[str, np.ndarray],
) -> bool:
    """``arms_cross`` on the forearms' meshes (``_forearm_meshes``)."""
    if len(meshes) == 2 and geometry.meshes_interpenetrate(*meshes["right"], *meshes["left"]):
        return True
    return any(
        s in meshes
        and other in verts
        and geometry.meshes_interpenetrate(*meshes[s], verts[other], faces[other])
        for s, other in (("right", "left"), ("left", "right"))
    )


_LOOPS: dict[bytes, np.ndarray] = {}


def wrist_loop(faces: np.ndarray) -> np.ndarray:
    """(n,) int vertex ids of the longest boundary loop of a triangle mesh ``faces`` (F, 3), in order along
    the loop: the wrist opening of a hand mesh. ``PropsError`` when the mesh has no boundary loop. Kept per
    mesh topology (a run has one or two), read-only."""
    f = np.ascontiguousarray(faces, dtype=np.int64)
    key = f.tobytes()
    if key not in _LOOPS:
        loop = _boundary_loop(f)
        loop.flags.writeable = False
        _LOOPS[key] = loop
    return _LOOPS[key]


def _boundary_loop(f: np.ndarray) -> np.ndarray:
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    key = np.sort(e, axis=1)
    uniq, counts = np.unique(key, axis=0, return_counts=True)
    border = uniq[counts == 1]
    nxt: dict[int, list[int]] = {}
    for a, b in border.tolist():
        nxt.setdefault(a, []).append(b)
        nxt.setdefault(b, []).append(a)
    seen: set[int] = set()
    best: list[int] = []
    for start in nxt:
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        seen.add(start)
        while True:
            step = [v for v in nxt[cur] if v != prev]
            if not step or step[0] == start:
                break
            prev, cur = cur, step[0]
            if cur in seen:
                break
            loop.append(cur)
            seen.add(cur)
        if len(loop) > len(best):
            best = loop
    if len(best) < 3:
        raise PropsError("the hand mesh has no open wrist loop to attach a forearm to")
    return np.asarray(best, dtype=np.int64)


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: ``v`` (..., 3) rotated by ``angle`` radians about the unit ``axis`` (3,)."""
    c, s = np.cos(angle), np.sin(angle)
    return v * c + np.cross(axis, v) * s + np.outer(v @ axis, axis).reshape(v.shape) * (1 - c)


def _arm_frame(verts: np.ndarray, loop: np.ndarray, arm: Forearm) -> tuple[np.ndarray, ...]:
    """(ring (n, 3), centre (3,), e1, e2, normal, axis): the wrist loop's points and centre, its long and
    short in-plane axes, its normal (away from the hand) and the arm's axis (the normal bent by
    ``arm.bend``); float64, metres and unit vectors."""
    v = np.asarray(verts, dtype=np.float64)
    ring = v[loop]
    centre = ring.mean(axis=0)
    _, _, vt = np.linalg.svd(ring - centre)
    e1, normal = vt[0], vt[2]
    if normal @ (centre - v.mean(axis=0)) < 0:  # point away from the hand
        normal = -normal
    # signs fixed by the loop itself (an SVD's are arbitrary, and the bend turns about these axes)
    if e1 @ (ring[0] - centre) < 0:
        e1 = -e1
    e2 = np.cross(normal, e1)
    axis = _rotate(_rotate(normal, e1, arm.bend[0]), e2, arm.bend[1])
    return ring, centre, e1, e2, normal, axis / np.linalg.norm(axis)


def reach_out(
    arm: Forearm, verts: np.ndarray, loop: np.ndarray, K: np.ndarray, image_size: tuple[int, int]
) -> Forearm:
    """``arm`` drawn out, in ``LENGTH_STEP`` steps up to ``MAX_LENGTH``, until its far end leaves the picture.

    A real forearm goes on to the elbow and the upper arm, so it does not end inside the image. The end is
    the arm's cap: a disc as wide as the wrist loop widened by ``arm.widen``. It is out of the picture when
    its centre lies less than ``NEAR`` in front of the camera (or behind it), or when the disc projects
    wholly outside the image. ``K`` (3, 3) pixels and ``image_size`` (H, W) are the camera's; ``verts``
    (778, 3) and ``loop`` are as in ``forearm_mesh``. An arm already out at its drawn length is returned as
    it is, and so is one that points too nearly straight away from the camera to leave the image within
    ``MAX_LENGTH`` (its end lies behind its own hand and wrist)."""
    ring, centre, _, _, _, axis = _arm_frame(verts, loop, arm)
    radius = float(np.max(np.linalg.norm(ring - centre, axis=1))) * max(arm.widen)
    lengths = np.round(np.arange(arm.length, MAX_LENGTH + 1e-9, LENGTH_STEP), _DIGITS)
    caps = centre + lengths[:, None] * axis
    H, W = image_size
    z = caps[:, 2]
    u, v = project_points(caps, K).T  # NaN only for z below the camera's near plane, far below NEAR
    r = radius * float(K[0][0]) / np.maximum(z, NEAR)
    outside = (z < NEAR) | (u < -r) | (u > W + r) | (v < -r) | (v > H + r)
    if outside[0] or not outside.any():
        return arm
    return dataclasses.replace(arm, length=float(lengths[int(np.argmax(outside))]))


def forearm_mesh(verts: np.ndarray, loop: np.ndarray, arm: Forearm) -> tuple[np.ndarray, np.ndarray]:
    """The forearm of one hand: (vertices (V, 3) float64 metres, faces (F, 3) int64 ids into them).

    ``verts`` (778, 3): the posed hand, camera space; ``loop`` (n,): its wrist loop (``wrist_loop``). The
    first ring of the arm is the loop's vertices themselves; ``SECTIONS`` rings follow, and a cap."""
    ring, centre, e1, e2, normal, axis = _arm_frame(verts, loop, arm)
    # the loop in its own plane (long and short axis coordinates), carried along the bent axis
    a1, a2 = (ring - centre) @ e1, (ring - centre) @ e2
    f1 = e1 - (e1 @ axis) * axis
    f1 /= np.linalg.norm(f1)
    f2 = np.cross(axis, f1)
    if f2 @ e2 < 0:
        f2 = -f2
    rings = [ring]
    n = len(loop)
    # a ring tilted by the bend reaches back by up to its radius x sin(tilt): keep every ring beyond the
    # wrist plane (3 mm at least), so no section of the arm goes back into the hand
    cos_t = float(np.clip(axis @ normal, 1e-3, 1.0))
    sin_t = math.sqrt(max(1.0 - cos_t * cos_t, 0.0))
    reach = float(np.max(np.hypot(a1, a2)))
    for k in range(1, SECTIONS + 1):
        t = k / SECTIONS
        w = t * t * (3 - 2 * t)
        s1 = 1.0 + (arm.widen[0] - 1.0) * w
        s2 = 1.0 + (arm.widen[1] - 1.0) * w
        # the first sections stay close to the wrist, so the seam follows the hand's own surface
        d = max(arm.length * t**1.5, (reach * max(s1, s2) * sin_t + 0.003) / cos_t)
        rings.append(centre + d * axis + np.outer(a1 * s1, f1) + np.outer(a2 * s2, f2))
    cap = (centre + arm.length * axis)[None]
    pts = np.concatenate(rings + [cap])
    faces = []
    i = np.arange(n)
    j = (i + 1) % n
    for k in range(SECTIONS):
        lo, hi = k * n, (k + 1) * n
        faces.append(np.stack([lo + i, lo + j, hi + j], axis=1))
        faces.append(np.stack([lo + i, hi + j, hi + i], axis=1))
    last = SECTIONS * n
    faces.append(np.stack([last + i, last + j, np.full(n, len(pts) - 1)], axis=1))
    return pts, np.concatenate(faces).astype(np.int64)


def prop_parts(props: Props | None, verts: Mapping[str, np.ndarray], faces: Mapping[str, np.ndarray]) -> list:
    """[(kind, side, vertices (V, 3), faces (F, 3))] of every prop of a sample: kind ``"forearm"`` (side: the
    hand it continues) or ``"object"`` (side None); ``verts``/``faces`` side -> the posed hand and its
    triangles (a forearm needs its hand). Forearms first, in ``SIDES`` order, then the objects."""
    if props is None:
        return []
    out = []
    for s in SIDES:
        arm = props.forearms.get(s)
        if arm is None:
            continue
        if verts.get(s) is None:
            raise PropsError(f"props.forearm.{s}: there is no {s} hand to attach it to")
        out.append(("forearm", s, *forearm_mesh(verts[s], wrist_loop(faces[s]), arm)))
    for obj in props.objects:
        out.append(("object", None, *object_mesh(obj)))
    return out


def prop_meshes(
    props: Props | None, verts: Mapping[str, np.ndarray], faces: Mapping[str, np.ndarray]
) -> list:
    """[(kind, vertices (V, 3), faces (F, 3))] of every prop of a sample (``prop_parts`` without the side)."""
    return [(kind, v, f) for kind, _, v, f in prop_parts(props, verts, faces)]


# -- objects -------------------------------------------------------------------------------------------------
OBJECT_TYPES = ("cylinder", "sphere", "box", "mug")
GRASP_OBJECTS = {
    "cylinder_grasp": ("cylinder", "mug"),
    "fist": ("cylinder",),
    "sphere_grasp": ("sphere",),
    "pinch": ("sphere",),
}
"""Gestures that hold something (``pipeline.gestures.classify_gesture``) and the objects they usually hold
(one of them drawn uniformly: a cylinder grasp holds a bar or a mug by its body; a fist is too tight for a
mug). Other gestures get any of ``OBJECT_TYPES``, uniformly."""
OBJECT_P = (0.8, 0.25)
"""Probability of an object for a sample whose hand grasps, and for any other sample."""
OBJECT_SIZE = {
    "cylinder": (0.012, 0.035),
    "sphere": (0.018, 0.045),
    "box": (0.015, 0.035),
    "mug": (0.025, 0.042),
}
"""The drawn characteristic size, metres: the cylinder's, the sphere's and the mug's body's radius, the box's
half height."""
MUG_HEIGHT = (1.0, 1.5)
"""A drawn mug's body half height, in body radii (a mug about as tall as it is wide, or a little taller)."""
MUG_TURN = math.pi / 3
"""A drawn mug's handle points away from the palm, turned about the body's axis by up to this (radians)
toward the fingers or the wrist: held around its body, never with the handle in the palm."""
MUG_ARC, MUG_TUBE, MUG_BURY = 0.55, 0.12, 1.5
"""A mug's handle, from its body's radius r and half height h (``PropObject.size``: r, r, h): a tube of
radius ``MUG_TUBE`` min(r, h) around a circular arc of radius ``MUG_ARC`` h, centred on the body's wall at
(r, 0, 0) in the body's x-z plane, so it reaches ``MUG_ARC`` h + tube out of the wall along +x and spans
+-(``MUG_ARC`` + ``MUG_TUBE``) h <= 0.67 h of the height. The arc runs on into the body by asin(``MUG_BURY``
tube / arc) past each of its two points on the wall: its ends (flat caps) are then more than a tube radius
inside the wall, hidden, and the handle meets the wall with no gap. Fixed proportions, so one shape whatever
the body's size and aspect."""
OBSTACLE_REACH = 0.4
"""Metres: an object is placed against the forearm triangles with a corner this near the holding hand's
vertex centroid only. A kept object lies within ``CONTACT`` of its hand (hand points within about 0.12 m of
the centroid; objects under 0.15 m across), so a farther arm point can only meet an object that is dropped
anyway, and long arms (``reach_out``) cost no more than short ones."""
CLEARANCE = 0.001
"""Metres kept free between an object and the hands' and forearms' surfaces: in contact, not inside."""
CONTACT = 0.005
"""An object whose holding hand's surface is farther than this (metres) is not placed (it would float)."""
SPACING = 0.003
"""Metres between the surface points an object is checked against (``surface_points``)."""
_SLIDE_MAX = 0.25
_UNIT_RADIUS = {"sphere": 1.0, "cylinder": math.sqrt(2.0), "box": math.sqrt(3.0)}
"""The radius of the ball about the centre that holds each scaled unit shape (half extents 1)."""
_HANDLE_STEPS = (48, 24)
"""A mug handle's mesh: sections along its arc, and vertices around each section."""


@dataclasses.dataclass(frozen=True)
class PropObject:
    """A primitive object: ``type`` (``OBJECT_TYPES``); ``centre`` (3,) metres, camera space; ``rotation``
    (3,) axis-angle radians, the object's frame to the camera's; ``size`` (3,) metres, half extents along the
    object's own x, y and z (a cylinder: radius, radius, half length along z; a sphere: radius 3 times; a
    mug: its body's, a round cylinder (radius, radius, half height along z), with the handle on the body's
    +x side, its proportions fixed by the body's (``MUG_ARC``))."""

    type: str
    centre: tuple[float, float, float]
    rotation: tuple[float, float, float]
    size: tuple[float, float, float]

    def to_json(self) -> dict:
        return {
            "type": self.type,
            "centre": list(self.centre),
            "rotation": list(self.rotation),
            "size": list(self.size),
        }

    @classmethod
    def from_json(cls, d: Any, where: str) -> PropObject:
        if not isinstance(d, dict) or set(d) != {"type", "centre", "rotation", "size"}:
            raise PropsError(f"{where}: expected {{type, centre, rotation, size}}, got {d!r}")
        if d["type"] not in OBJECT_TYPES:
            raise PropsError(f"{where}.type: expected one of {list(OBJECT_TYPES)}, got {d['type']!r}")
        try:
            parts = [tuple(float(x) for x in d[k]) for k in ("centre", "rotation", "size")]
        except (TypeError, ValueError) as exc:
            raise PropsError(f"{where}: not numbers ({exc})") from exc
        if any(len(p) != 3 for p in parts) or not np.isfinite(np.concatenate(parts)).all():
            raise PropsError(f"{where}: centre, rotation and size need 3 finite numbers each, got {d!r}")
        centre, rotation, size = parts
        if not (all(0.001 <= s <= 1.0 for s in size) and max(map(abs, centre)) <= 100.0):
            raise PropsError(f"{where}: out of range (size 0.001..1 m, |centre| <= 100 m): {d!r}")
        if d["type"] == "mug" and size[0] != size[1]:
            raise PropsError(f"{where}: a mug's body is round (size[0] == size[1]), got size {list(size)}")
        return cls(d["type"], centre, rotation, size)  # type: ignore[arg-type]

    @property
    def matrix(self) -> np.ndarray:
        """(3, 3) the object's axes as columns, camera space."""
        return aa_to_matrix(np.asarray(self.rotation, dtype=np.float64))

    def gauge(self, points: np.ndarray, pad: float = 0.0) -> np.ndarray:
        """(N,) for camera-space ``points`` (N, 3): the scale of the object at which each point lies on its
        surface (< 1: inside the object). A mug is not scaled: its gauge is the smaller of its body's (as a
        cylinder's) and its handle's, the point's distance from the handle's arc over the tube radius
        (``_mug_gauge``); < 1 inside it all the same. ``pad`` metres: the gauge of the object grown by that
        much (half extents, and a mug's tube radius, plus ``pad``), a shape that holds every point within
        ``pad`` of the object."""
        local = (np.asarray(points, dtype=np.float64) - np.asarray(self.centre)) @ self.matrix
        size = np.asarray(self.size, dtype=np.float64)
        if self.type == "mug":
            return _mug_gauge(local, size, pad)
        return _gauge(self.type, local, size + pad)


def _gauge(kind: str, local: np.ndarray, size: np.ndarray) -> np.ndarray:
    return _unit_gauge(kind, local / size)


def _unit_gauge(kind: str, q: np.ndarray) -> np.ndarray:
    """(N,) the gauge of points ``q`` (N, 3) in the unit shape's coordinates (half extents 1); the scaled
    types only (a mug: ``_mug_gauge``)."""
    if kind == "sphere":
        return np.linalg.norm(q, axis=-1)
    if kind == "cylinder":
        return np.maximum(np.hypot(q[:, 0], q[:, 1]), np.abs(q[:, 2]))
    if kind == "box":
        return np.abs(q).max(axis=-1)
    raise ValueError(f"no unit shape for {kind!r}")


def _mug_handle(size: np.ndarray) -> tuple[float, float, float, float]:
    """(wall, arc, tube, end) of a mug of ``size`` (r, r, h), metres (``MUG_ARC``): the handle's arc is
    centred at (wall, 0, 0) with radius ``arc`` in the x-z plane and runs over the angles -end..end from +x;
    ``tube`` is the tube's radius."""
    r, r2, h = (float(x) for x in size)
    if r != r2:
        raise PropsError(f"a mug's body is round (size[0] == size[1]), got size {[r, r2, h]}")
    arc = MUG_ARC * h
    tube = MUG_TUBE * min(r, h)
    return r, arc, tube, 0.5 * math.pi + math.asin(MUG_BURY * tube / arc)


def _mug_parts(size: np.ndarray, pad: float = 0.0) -> list[tuple[Callable, np.ndarray, float]]:
    """A mug of ``size`` grown by ``pad`` metres, as its two parts [(gauge, centre (3,), radius)]: its body
    (a cylinder of half extents size + pad) and its handle (the points within tube + pad of the handle's
    arc, the arc's ends included). A part's gauge of points (N, 3), metres in the mug's frame, is < 1
    exactly inside the part (the body's is a scale, the handle's the distance from the arc over tube + pad);
    the part lies in the ball of ``radius`` about ``centre``."""
    wall, arc, tube, end = _mug_handle(size)
    ri, hi, ti = wall + pad, float(size[2]) + pad, tube + pad
    c, ex, ez = math.cos(end), arc * math.cos(end), arc * math.sin(end)

    def body(q: np.ndarray) -> np.ndarray:
        return np.maximum(np.hypot(q[:, 0], q[:, 1]) / ri, np.abs(q[:, 2]) / hi)

    def handle(q: np.ndarray) -> np.ndarray:
        u, y, z = q[:, 0] - wall, q[:, 1], q[:, 2]
        rad = np.hypot(u, z)
        on_arc = u >= rad * c  # the point's angle about the arc's centre is within -end..end
        to_end = np.sqrt((u - ex) ** 2 + y**2 + (np.abs(z) - ez) ** 2)  # the end on z's side is the nearer
        return np.where(on_arc, np.hypot(rad - arc, y), to_end) / ti

    return [(body, np.zeros(3), math.hypot(ri, hi)), (handle, np.array([wall, 0.0, 0.0]), arc + ti)]


def _mug_gauge(local: np.ndarray, size: np.ndarray, pad: float = 0.0) -> np.ndarray:
    """(N,) the gauge of a mug of ``size`` grown by ``pad`` metres at points ``local`` (N, 3), metres in the
    mug's frame: the smaller of its parts' (``_mug_parts``), so < 1 exactly inside the mug (grown by pad:
    a shape that holds every point within pad of the mug). Not a scale where the handle's is the smaller:
    only its side of 1 is meant to compare."""
    return np.minimum.reduce([g(local) for g, _, _ in _mug_parts(size, pad)])


def _mug_radius(size: np.ndarray, pad: float) -> float:
    """Metres: a ball about a mug's centre that holds the mug of ``size`` grown by ``pad``."""
    return max(float(np.linalg.norm(c)) + r for _, c, r in _mug_parts(size, pad))


@functools.cache
def _unit_mesh(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A unit mesh of ``kind`` (half extents 1; the scaled types, not a mug: ``_mug_mesh``), with separate
    vertices where the surface has an edge (so the renderer's vertex normals keep the caps and faces flat).
    Cached: read-only arrays."""
    pts, faces = _build_unit_mesh(kind)
    pts.flags.writeable = False
    faces.flags.writeable = False
    return pts, faces


def _build_unit_mesh(kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "sphere":
        n_lat, n_lon = 32, 64
        th = np.linspace(0.0, np.pi, n_lat + 1)
        ph = np.linspace(0.0, 2 * np.pi, n_lon, endpoint=False)
        t, p = np.meshgrid(th, ph, indexing="ij")
        pts = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1).reshape(-1, 3)
        faces = []
        for i in range(n_lat):
            for j in range(n_lon):
                a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
                c, d = a + n_lon, b + n_lon
                faces += [[a, c, d], [a, d, b]]
        return pts, np.asarray(faces, dtype=np.int64)
    if kind == "cylinder":
        n = 64
        ph = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        ring = np.stack([np.cos(ph), np.sin(ph)], axis=-1)
        side = np.concatenate([np.c_[ring, -np.ones(n)], np.c_[ring, np.ones(n)]])
        caps = np.concatenate(
            [np.c_[ring, -np.ones(n)], np.c_[ring, np.ones(n)], [[0, 0, -1.0], [0, 0, 1.0]]]
        )
        i = np.arange(n)
        j = (i + 1) % n
        f_side = np.concatenate([np.stack([i, j, n + j], 1), np.stack([i, n + j, n + i], 1)])
        o = 2 * n
        f_caps = np.concatenate(
            [
                np.stack([o + j, o + i, np.full(n, o + 2 * n)], 1),
                np.stack([o + n + i, o + n + j, np.full(n, o + 2 * n + 1)], 1),
            ]
        )
        return np.concatenate([side, caps]), np.concatenate([f_side, f_caps]).astype(np.int64)
    if kind != "box":
        raise ValueError(f"no unit mesh for {kind!r}")
    pts, faces = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            u, v = [a for a in range(3) if a != axis]
            quad = np.zeros((4, 3))
            quad[:, axis] = sign
            quad[:, u] = [-1, 1, 1, -1]
            quad[:, v] = [-1, -1, 1, 1]
            k = len(pts) * 4
            pts.append(quad)
            faces += [[k, k + 1, k + 2], [k, k + 2, k + 3]]
    return np.concatenate(pts), np.asarray(faces, dtype=np.int64)


@functools.cache
def _handle_faces() -> np.ndarray:
    """(F, 3) int64 triangles of a handle mesh (``_mug_mesh``), ids from 0: the tube's grid, outward (the
    winding of the other meshes), then a flat cap at each end with its own ring of vertices. Read-only."""
    nu, nv = _HANDLE_STEPS
    i, j = np.meshgrid(np.arange(nu), np.arange(nv), indexing="ij")
    a = (i * nv + j).ravel()
    b = (i * nv + (j + 1) % nv).ravel()
    c, d = a + nv, b + nv
    tube = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    o = (nu + 1) * nv  # the caps' rings (the first and the last section again), then their centres
    k = np.arange(nv)
    k1 = (k + 1) % nv
    caps = np.concatenate(
        [
            np.stack([o + k1, o + k, np.full(nv, o + 2 * nv)], 1),
            np.stack([o + nv + k, o + nv + k1, np.full(nv, o + 2 * nv + 1)], 1),
        ]
    )
    faces = np.concatenate([tube, caps]).astype(np.int64)
    faces.flags.writeable = False
    return faces


def _mug_mesh(size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) metres in the mug's frame, faces (F, 3)) of a mug of ``size``: its body, the unit
    cylinder scaled (flat caps), then its handle built at this size (a torus segment, smooth, capped inside
    the body: ``MUG_ARC``), so the handle keeps its round section whatever the body's aspect. Its vertices lie
    on the gauge's surface; between them, on the hole's side (where the torus is saddle-shaped), a facet can
    stand out of it by up to arc (1 - cos(end / 48)), 0.08% of the arc's radius (0.03 mm at the largest drawn
    size), far inside ``CLEARANCE``."""
    body, body_faces = _unit_mesh("cylinder")
    wall, arc, tube, end = _mug_handle(size)
    nu, nv = _HANDLE_STEPS
    t = np.linspace(-end, end, nu + 1)[:, None]  # along the arc
    p = np.linspace(0.0, 2 * np.pi, nv, endpoint=False)[None, :]  # around the tube
    rad = arc + tube * np.cos(p)  # from the arc's centre, in the x-z plane
    x, z = wall + rad * np.cos(t), rad * np.sin(t)
    ring = np.stack([x, np.broadcast_to(tube * np.sin(p), x.shape), z], axis=-1).reshape(-1, 3)
    ends = arc * np.array([[math.cos(end), 0.0, -math.sin(end)], [math.cos(end), 0.0, math.sin(end)]])
    ends[:, 0] += wall
    handle = np.concatenate([ring, ring[:nv], ring[-nv:], ends])
    pts = np.concatenate([body * np.asarray(size, dtype=np.float64), handle])
    return pts, np.concatenate([body_faces, _handle_faces() + len(body)])


def object_mesh(obj: PropObject) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) float64 metres camera space, faces (F, 3) int64) of ``obj``."""
    if obj.type == "mug":
        pts, faces = _mug_mesh(np.asarray(obj.size, dtype=np.float64))
    else:
        pts, faces = _unit_mesh(obj.type)
        pts = pts * np.asarray(obj.size)
    return pts @ obj.matrix.T + np.asarray(obj.centre), faces


def _palm_frame(joints: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(palm centre, across (index to little finger base, unit), along (wrist to fingers, unit), palm
    normal (out of the palm, unit)) from (21, 3) joints (label order)."""
    j = np.asarray(joints, dtype=np.float64)
    centre = j[[0, 5, 9, 13, 17]].mean(axis=0)
    n = palm_normal(j, side)
    across = j[5] - j[17]
    across -= (across @ n) * n
    across /= np.linalg.norm(across)
    along = np.cross(n, across)
    if along @ (j[9] - j[0]) < 0:
        along = -along
    return centre, across, along, n


def surface_points(verts: np.ndarray, faces: np.ndarray, spacing: float = SPACING) -> np.ndarray:
    """(N, 3) float64 points covering a triangle mesh's surface (vertices (V, 3), faces (F, 3)): each
    triangle sampled on a barycentric grid fine enough that its points are at most about ``spacing`` apart
    (an object between them can then reach in by only spacing^2 / (8 radius), far below ``CLEARANCE``)."""
    v = np.asarray(verts, dtype=np.float64)
    tri = v[np.asarray(faces, dtype=np.int64)]  # (F, 3, 3)
    edge = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=-1).max(axis=1)
    ks = np.maximum(np.ceil(edge / spacing), 1).astype(np.int64)
    out = [v]
    for k in np.unique(ks):
        i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
        keep = (i + j) <= k
        w = np.stack([i[keep], j[keep], k - i[keep] - j[keep]], axis=1) / k  # (P, 3) barycentric
        out.append(np.einsum("pc,fcd->fpd", w, tri[ks == k]).reshape(-1, 3))
    return np.concatenate(out)


def place_object(
    rng: np.random.Generator,
    kind: str,
    joints: np.ndarray,
    side: str,
    obstacles: np.ndarray,
    holder: np.ndarray,
) -> PropObject | None:
    """An object of ``kind`` in contact with the palm side of a hand (``joints`` (21, 3), ``side``; its
    surface points ``holder`` (M, 3)) and inside none of ``obstacles`` (N, 3) (points on every hand's and
    forearm's surface, ``surface_points``): its size and orientation are drawn, then it slides out from the
    palm's centre along the palm normal until ``CLEARANCE`` separates it from the nearest point. None when
    it does not fit (it never clears, it clears only away from its hand (more than ``CONTACT``), or the
    camera would be inside it). Values are rounded to the digits the label keeps, and checked again."""
    centre, across, along, n = _palm_frame(joints, side)
    r = float(rng.uniform(*OBJECT_SIZE[kind]))
    yaw = float(rng.normal(0.0, 0.25))
    if kind == "cylinder":
        size = np.array([r, r, r * float(rng.uniform(2.0, 4.0))])
        axes = np.stack([along, n, across], axis=1)  # the axis runs across the palm, as in a grip
    elif kind == "sphere":
        size = np.full(3, r)
        axes = np.stack([across, along, n], axis=1)
    elif kind == "mug":
        size = np.array([r, r, r * float(rng.uniform(*MUG_HEIGHT))])
        turn = float(rng.uniform(-MUG_TURN, MUG_TURN))
        out = math.cos(turn) * n + math.sin(turn) * along  # the handle's side (+x): away from the palm
        axes = np.stack([out, np.cross(across, out), across], axis=1)  # held around the body, as a cylinder
    else:
        size = np.array([r * float(rng.uniform(1.2, 2.5)), r * float(rng.uniform(1.0, 2.0)), r])
        axes = np.stack([across, along, n], axis=1)  # flat side against the palm
    if np.linalg.det(axes) < 0:  # a rotation, not a reflection (the shapes are symmetric: any sign will do;
        axes[:, 0] = -axes[:, 0]  # the mug's frame, the one that is not, is a rotation already)
    R = aa_to_matrix(n * yaw) @ axes
    aa = matrix_to_aa(R)
    size_r = np.round(size, _DIGITS)
    inflated = size_r + CLEARANCE
    radius = _mug_radius(size_r, CLEARANCE) if kind == "mug" else float(np.linalg.norm(inflated))
    pts = np.asarray(obstacles, dtype=np.float64)
    # only points near the line the object slides along can ever be inside it
    rel = pts - centre
    off = rel - np.outer(rel @ n, n)
    pts = pts[np.linalg.norm(off, axis=1) <= radius + 1e-3]
    if not len(pts):
        return None

    # in the object's coordinates the points move along a line as the object slides: q(d) = base - d * step;
    # a point that stays outside the ball holding a part of the (inflated) object over the whole slide can
    # never be inside that part. A scaled type is one part, in its inflated unit shape's coordinates (the
    # ball's radius: _UNIT_RADIUS, as gauge >= |q| / sqrt(3) for a box, |q| / sqrt(2) a cylinder, |q| a
    # sphere); a mug is two, its body and its handle, in metres (_mug_parts, grown by CLEARANCE)
    if kind == "mug":
        scale, parts = np.ones(3), _mug_parts(size_r, CLEARANCE)
    else:
        scale = inflated
        parts = [(functools.partial(_unit_gauge, kind), np.zeros(3), _UNIT_RADIUS[kind])]
    base = ((pts - centre) @ R) / scale
    step = (n @ R) / scale
    near = []
    for gauge, middle, bound in parts:
        q0 = base - middle
        t = np.clip((q0 @ step) / (step @ step), 0.0, _SLIDE_MAX)
        keep = np.linalg.norm(q0 - t[:, None] * step, axis=1) < bound + 1e-9
        if keep.any():
            near.append((gauge, base[keep]))

    def clear(d: float) -> bool:
        return all(bool(gauge(q - d * step).min() >= 1.0) for gauge, q in near)

    if clear(0.0) or not clear(_SLIDE_MAX):
        return None
    lo, hi = 0.0, _SLIDE_MAX
    for _ in range(24):  # about 15 nm
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if clear(mid) else (mid, hi)
    obj = PropObject(
        kind,
        tuple(round(float(x), _DIGITS) for x in centre + (hi + 2e-5) * n),
        tuple(round(float(x), _DIGITS) for x in aa),
        tuple(float(x) for x in size_r),
    )
    if len(pts) and obj.gauge(pts).min() < 1.0 + 0.5 * CLEARANCE / float(size_r.max()):
        return None  # rounding moved it into the hand (does not happen at 5 digits; checked anyway)
    if obj.gauge(holder, CONTACT).min() >= 1.0:
        return None  # it cleared something else first and floats away from its hand
    verts, _ = object_mesh(obj)
    if verts[:, 2].min() < 0.05:  # the camera (or its near plane) would be inside it
        return None
    return obj
