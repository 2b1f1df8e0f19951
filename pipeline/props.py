"""Props: scene geometry that is not the hand but takes part in the depth test (the forearm).

A forearm continues each hand from its wrist opening (the open boundary loop of the hand mesh, MANO's and the
stand-in's alike): its first cross-section *is* that loop, so the seam is closed; further sections follow the
loop's shape, widened toward the elbow, along the loop's normal (pointing away from the hand) bent by a small
wrist angle. The arm is long enough (0.30 to 0.45 m) to leave the frame at the usual camera distances, and
ends in a flat cap.

Props are drawn per sample from their own stream (``stage_rng(seed, 'props')``), recorded in the label's
``props`` field (``Props.to_json``, rounded to the digits written, and the geometry is built from the rounded
values), so ``hands validate`` rebuilds the same triangles and re-renders the mask exactly. They are never
part of the hand mask or the joints; the renderer draws them with the depth test (``renderers.base``), so a
forearm in front of the hand removes those pixels from the mask and hides the joints behind it.

Units: metres, camera space (OpenCV: x right, y down, z forward); angles in radians.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.errors import HandgenError
from pipeline.schema import SIDES

SECTIONS = 14
"""Cross-sections of a forearm after the wrist loop (the last one is capped)."""
LENGTH_RANGE = (0.30, 0.45)
WIDEN_RANGE = ((1.05, 1.30), (1.40, 1.90))
"""Elbow-end scale of the wrist loop along its long (width) and short (thickness) in-plane axes."""
BEND_SIGMA, BEND_MAX = 0.15, 0.35
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
    """The props of one sample: ``forearms`` side -> ``Forearm`` (None: no arm drawn for that side)."""

    forearms: Mapping[str, Forearm | None]

    @property
    def empty(self) -> bool:
        return all(f is None for f in self.forearms.values())

    def to_json(self) -> dict:
        """The label's ``props`` field."""
        return {
            "forearm": {
                s: None if self.forearms.get(s) is None else self.forearms[s].to_json() for s in SIDES
            }
        }

    @classmethod
    def from_json(cls, d: Any) -> Props:
        """Parse (and check) a label's ``props`` field; ``PropsError`` names the bad part."""
        if not isinstance(d, dict) or set(d) != {"forearm"} or not isinstance(d["forearm"], dict):
            raise PropsError(f"props: expected {{forearm: {{right, left}}}}, got {d!r}")
        arms = d["forearm"]
        if set(arms) != set(SIDES):
            raise PropsError(f"props.forearm: expected keys ['right', 'left'], got {sorted(arms)}")
        return cls(
            {s: None if arms[s] is None else Forearm.from_json(arms[s], f"props.forearm.{s}") for s in SIDES}
        )


def draw_forearm(rng: np.random.Generator) -> Forearm:
    """A forearm's parameters from ``rng``, rounded to the digits the label keeps."""
    length = float(rng.uniform(*LENGTH_RANGE))
    widen = tuple(float(rng.uniform(*r)) for r in WIDEN_RANGE)
    bend = tuple(float(np.clip(rng.normal(0.0, BEND_SIGMA), -BEND_MAX, BEND_MAX)) for _ in range(2))
    return Forearm(
        round(length, _DIGITS),
        tuple(round(w, _DIGITS) for w in widen),
        tuple(round(b, _DIGITS) for b in bend),
    )


def draw_props(rng: np.random.Generator, sides, forearm: bool = True) -> Props:
    """Props for a sample whose present hands are ``sides``: a forearm per present hand when ``forearm``."""
    return Props({s: draw_forearm(rng) if (forearm and s in sides) else None for s in SIDES})


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


def forearm_mesh(verts: np.ndarray, loop: np.ndarray, arm: Forearm) -> tuple[np.ndarray, np.ndarray]:
    """The forearm of one hand: (vertices (V, 3) float64 metres, faces (F, 3) int64 ids into them).

    ``verts`` (778, 3): the posed hand, camera space; ``loop`` (n,): its wrist loop (``wrist_loop``). The
    first ring of the arm is the loop's vertices themselves; ``SECTIONS`` rings follow, and a cap."""
    v = np.asarray(verts, dtype=np.float64)
    ring = v[loop]
    centre = ring.mean(axis=0)
    _, _, vt = np.linalg.svd(ring - centre)
    e1, e2, normal = vt[0], vt[1], vt[2]
    if normal @ (centre - v.mean(axis=0)) < 0:  # point away from the hand
        normal = -normal
    axis = _rotate(_rotate(normal, e1, arm.bend[0]), e2, arm.bend[1])
    axis = axis / np.linalg.norm(axis)
    # the loop in its own plane (long and short axis coordinates), carried along the bent axis
    a1, a2 = (ring - centre) @ e1, (ring - centre) @ e2
    f1 = e1 - (e1 @ axis) * axis
    f1 /= np.linalg.norm(f1)
    f2 = np.cross(axis, f1)
    if f2 @ e2 < 0:
        f2 = -f2
    rings = [ring]
    n = len(loop)
    for k in range(1, SECTIONS + 1):
        t = k / SECTIONS
        w = t * t * (3 - 2 * t)
        s1 = 1.0 + (arm.widen[0] - 1.0) * w
        s2 = 1.0 + (arm.widen[1] - 1.0) * w
        # the first sections stay close to the wrist, so the seam follows the hand's own surface
        d = arm.length * t**1.5
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


def prop_meshes(
    props: Props | None, verts: Mapping[str, np.ndarray], faces: Mapping[str, np.ndarray]
) -> list:
    """[(vertices (V, 3), faces (F, 3))] of every prop of a sample; ``verts``/``faces`` side -> the posed
    hand and its triangles (a forearm needs its hand)."""
    if props is None:
        return []
    out = []
    for s in SIDES:
        arm = props.forearms.get(s)
        if arm is None:
            continue
        if verts.get(s) is None:
            raise PropsError(f"props.forearm.{s}: there is no {s} hand to attach it to")
        out.append(forearm_mesh(verts[s], wrist_loop(faces[s]), arm))
    return out
