"""Procedural stand-in for the MANO hand model, in the official pickle key layout.

The stand-in lets the whole pipeline run with no licensed files. It is built from scratch (no MANO data)
and matches MANO's interface, not its exact geometry:

* 778 vertices, 1538 faces: a closed genus-0 surface except one 16-edge boundary loop at the wrist
  (Euler: F = 2V - 2 - 16 for such a surface, so the face count follows from the vertex count);
* 16 joints with MANO's kinematic tree and joint order (0 wrist, 1-3 index, 4-6 middle, 7-9 pinky,
  10-12 ring, 13-15 thumb); fingertips at MANO's tip vertex ids (``TIP_VERTEX_IDS``);
* ``J_regressor`` rows are convex combinations of vertex rings, so joints follow shape changes;
* smooth linear-blend-skinning ``weights``; zero pose correctives (``posedirs``), i.e. pure LBS;
* ``hands_mean``: a slightly relaxed pose; ``hands_components``: 45 orthonormal rows whose first rows are
  hand synergies (curl, thumb opposition, spread, ...);
* 10 shape directions with a meaning each (``SHAPE_COMPONENTS``), in metres per unit beta;
* the left hand is the exact mirror of the right (x -> -x) with flipped face winding;
* versions (``STANDIN_VERSIONS``; labels tell them apart by the model's sha256): 1, the first geometry; 2,
  with palmar soft tissue (``PALMAR_TISSUE``): thenar and hypothenar eminences, pads over the palm's distal
  edge and fuller palmar sides of the fingers, as a real palm has; 3 (the default), version 2 with fingers
  wider than deep (``FINGER_DEPTH``). Measured effect on the detector: docs/benchmarks.md, "Palmar soft
  tissue: stand-in version 2" and "Finger cross-sections: stand-in version 3".

Canonical frame (right hand, metres): fingers point to -x, the back of the hand faces +y (palm -y),
the thumb is on the +z side; the wrist joint is near (0.09, 0, 0.005) and the middle knuckle near the
origin. Finger flexion (bending toward the palm) is a positive rotation about ``flexion_axes()[j]``
(close to +z for the four fingers of the right hand).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from pipeline.kinematics import (
    FINGER_JOINTS,
    LONG_FINGERS,
    PARENTS,
    REST_FINGER_DIRECTIONS,
    REST_THUMB_DIRECTION,
    TIP_VERTEX_IDS,
    abduction_axes,
    finger_frame,
    flexion_axes,
    mirror_axis_angle,
    unit,
)
from pipeline.schema import N_VERTS, SIDES

logger = logging.getLogger(__name__)

N_FACES = 1538
N_JOINTS = 16
WRIST_LOOP_EDGES = 16
#: Meaning of each shape direction (beta index -> description), metres per unit beta as documented.
SHAPE_COMPONENTS = (
    "overall size (5% scale about the wrist)",
    "finger length (fingers and thumb, 7% per unit)",
    "palm width (6% per unit, fingers move with their knuckles)",
    "finger thickness (8% of finger radius per unit)",
    "palm length (7% per unit, fingers move with their knuckles)",
    "palm thickness (10% per unit)",
    "thumb length (8% per unit)",
    "index vs ring finger length (+5% index, -5% ring per unit)",
    "little finger length (8% per unit)",
    "soft tissue (1.5 mm outward along the surface normal per unit)",
)

_PART_ID = {"palm": 0, "index": 1, "middle": 2, "ring": 3, "pinky": 4, "thumb": 5}

STANDIN_VERSION = 3
"""The version ``build_standin`` builds by default (module doc)."""
STANDIN_VERSIONS = (1, 2, 3)
FINGER_DEPTH = 0.83
"""Version 3: the long fingers' palmar-dorsal radii relative to versions 1 and 2, between the knuckle ring
and the tip's cap. Versions 1 and 2 made the fingers deeper than wide; real fingers are a little wider than
deep."""
#: palmar soft tissue (version 2), canonical right hand, metres: (centre x, centre z, radius along x, radius
#: along z, height) of each Gaussian mound on the palm, raised toward the palm's side (-y; ``_palmar_tissue``)
PALMAR_TISSUE = {
    "thenar": (0.058, 0.024, 0.024, 0.015, 0.007),  # the thumb's ball, between wrist and thumb base
    "hypothenar": (0.052, -0.026, 0.030, 0.011, 0.004),  # along the little finger's side of the palm
    "distal pads": (0.012, 0.0, 0.009, 0.050, 0.0025),  # across the palm below the finger bases
}
FINGER_PAD = 0.0015
"""Metres: how much fuller the four fingers' palmar sides are (version 2)."""
_PALM_MID_Y = -0.002  # metres: the palm's mid-plane (the palm grid's centre line, ``palm_centre_zy``)

# ----------------------------------------------------------------------------------------------------
# Design constants (right hand, metres)
# ----------------------------------------------------------------------------------------------------
_WRIST = np.array([0.090, 0.0, 0.005])
_MCP = {  # knuckle centres
    "index": np.array([0.004, 0.0, 0.0320]),
    "middle": np.array([0.000, 0.0, 0.0110]),
    "ring": np.array([0.005, 0.0, -0.0095]),
    "pinky": np.array([0.016, -0.002, -0.0280]),
}
_BONES = {  # proximal, middle, distal (DIP to tip) lengths
    "index": (0.040, 0.024, 0.021),
    "middle": (0.045, 0.028, 0.023),
    "ring": (0.042, 0.027, 0.022),
    "pinky": (0.032, 0.020, 0.019),
}
_RADIUS = {  # (side radius at base, side radius at tip)
    "index": (0.0098, 0.0077),
    "middle": (0.0100, 0.0079),
    "ring": (0.0095, 0.0075),
    "pinky": (0.0084, 0.0067),
}
_FINGER_RING = 10  # vertices per finger ring
_PALM_ROWS = 5  # palm grid rows (P0 .. P4), the knuckle ring R follows
_TRANSITION = 24  # ring between the 16-vertex wrist loop and the 40-vertex palm grid
_HOLE_ROWS = (0, 2)  # thumb hole: palm grid rows [0, 2)
_HOLE_COLS = (36, 4)  # thumb hole: first column and width (mod 40)
_THUMB_RING = 12  # = 2 * (rows + cols) of the hole
_THUMB_BONES = (0.026, 0.031, 0.027)  # hole centre -> MCP, MCP -> IP, IP -> tip
_THUMB_RADIUS = (0.0128, 0.0092)
_THUMB_NORMAL_RUN = 0.030  # the thumb tube leaves the palm along the hole normal over this length


def _smoothstep(x: np.ndarray | float) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclasses.dataclass
class _Vert:
    pos: np.ndarray
    part: str
    s: float  # chain coordinate: metres from the part's base joint along its axis (palm: <= 0)
    centre: np.ndarray  # centre of the ring the vertex belongs to
    column: int = -1  # palm grid column (palm vertices only)


class _Builder:
    """Accumulates vertices and triangles; all strips keep one consistent orientation."""

    def __init__(self) -> None:
        self.verts: list[_Vert] = []
        self.faces: list[tuple[int, int, int]] = []

    def add_ring(self, points: np.ndarray, part: str, s: float, column0: int | None = None) -> np.ndarray:
        centre = points.mean(axis=0)
        start = len(self.verts)
        for i, p in enumerate(points):
            col = -1 if column0 is None else column0 + i
            self.verts.append(_Vert(np.asarray(p, dtype=np.float64), part, float(s), centre, col))
        return np.arange(start, start + len(points))

    def add_vertex(self, p: np.ndarray, part: str, s: float) -> int:
        self.verts.append(_Vert(np.asarray(p, dtype=np.float64), part, float(s), np.asarray(p)))
        return len(self.verts) - 1

    def strip(self, a: np.ndarray, b: np.ndarray, ua: np.ndarray, ub: np.ndarray) -> None:
        """Zip two closed loops (same rotational sense) with len(a) + len(b) triangles.

        ``ua``/``ub`` are increasing positions in [0, 1) along each loop, used to pair vertices.
        Loop ``a``'s edges are used forward, loop ``b``'s backward.
        """
        n, m = len(a), len(b)
        ua_ext = np.append(ua, ua[0] + 1.0)
        ub_ext = np.append(ub, ub[0] + 1.0)
        i = j = 0
        while i < n or j < m:
            advance_a = j >= m or (i < n and ua_ext[i + 1] <= ub_ext[j + 1])
            if advance_a:
                self.faces.append((a[i % n], a[(i + 1) % n], b[j % m]))
                i += 1
            else:
                self.faces.append((a[i % n], b[(j + 1) % m], b[j % m]))
                j += 1

    def fan(self, ring: np.ndarray, apex: int) -> None:
        n = len(ring)
        for i in range(n):
            self.faces.append((ring[i], ring[(i + 1) % n], apex))


def _ring_points(centre, d, u, s, r_side, r_up, n, palmar_pad=0.0):
    theta = (np.arange(n) + 0.5) * 2.0 * np.pi / n
    cos, sin = np.cos(theta), np.sin(theta)
    up = np.where(sin < 0, r_up * (1.0 + palmar_pad), r_up)
    return centre + np.outer(r_side * cos, s) + np.outer(up * sin, u)


def _arc_fractions(points: np.ndarray) -> np.ndarray:
    seg = np.linalg.norm(np.roll(points, -1, axis=0) - points, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)[:-1]])
    return cum / seg.sum()


def _superellipse(centre_zy, half_w, half_h, expo, start_angle, fractions, x):
    """Points on a superellipse in the (z, y) plane at given arc-length fractions from start_angle."""
    ang = start_angle + np.linspace(0.0, 2.0 * np.pi, 4001)
    c, s = np.cos(ang), np.sin(ang)
    z = centre_zy[0] + half_w * np.sign(c) * np.abs(c) ** (2.0 / expo)
    y = centre_zy[1] + half_h * np.sign(s) * np.abs(s) ** (2.0 / expo)
    seg = np.hypot(np.diff(z), np.diff(y))
    cum = np.concatenate([[0.0], np.cumsum(seg)]) / seg.sum()
    zz = np.interp(fractions, cum, z)
    yy = np.interp(fractions, cum, y)
    return np.stack([np.full_like(zz, x), yy, zz], axis=1)


def _build_right_geometry(depth: float = 1.0) -> tuple[np.ndarray, np.ndarray, list[_Vert], dict]:
    """The right hand's surface; ``depth`` scales the long fingers' palmar-dorsal radii between the knuckle
    ring and the tip's cap (``FINGER_DEPTH``)."""
    b = _Builder()
    finger_rings: dict[str, list[np.ndarray]] = {}
    apex: dict[str, int] = {}
    regress: dict[int, tuple[tuple[np.ndarray, float], ...]] = {}

    # --- finger base rings (they make up the knuckle ring R) ---------------------------------------
    base_pts = {}
    for f in LONG_FINGERS:
        d, u, s = finger_frame(REST_FINGER_DIRECTIONS[f])
        r0 = _RADIUS[f][0]
        base_pts[f] = _ring_points(_MCP[f], d, u, s, r0, r0 * 1.12, _FINGER_RING)
    half = _FINGER_RING // 2
    order = [(f, k) for f in LONG_FINGERS for k in range(half)] + [
        (f, k) for f in reversed(LONG_FINGERS) for k in range(half, _FINGER_RING)
    ]
    r_pts = np.array([base_pts[f][k] for f, k in order])
    u_r = _arc_fractions(r_pts)
    palm_centre_zy = np.array([0.004, -0.002])
    start_angle = np.arctan2(r_pts[0, 1] - palm_centre_zy[1], r_pts[0, 2] - palm_centre_zy[0])

    # --- wrist loop, transition ring, palm grid, knuckle ring ---------------------------------------
    def ellipse_ring(x, hw, hh, n, expo=2.0):
        fr = np.arange(n) / n
        return _superellipse(palm_centre_zy, hw, hh, expo, start_angle, fr, x), fr

    wrist_pts, u_w = ellipse_ring(_WRIST[0], 0.028, 0.017, WRIST_LOOP_EDGES)
    trans_pts, u_t = ellipse_ring(_WRIST[0] - 0.009, 0.033, 0.0165, _TRANSITION, 2.3)
    p0 = _superellipse(palm_centre_zy, 0.038, 0.0155, 2.6, start_angle, u_r, _WRIST[0] - 0.018)
    wrist = b.add_ring(wrist_pts, "palm", -(_WRIST[0] - 0.0))
    trans = b.add_ring(trans_pts, "palm", -(_WRIST[0] - 0.009))
    b.strip(wrist, trans, u_w, u_t)

    # a smooth knuckle-level outline: interior palm rows blend toward it, not toward the scalloped ring
    r_smooth = _superellipse(palm_centre_zy, 0.0385, 0.0112, 2.8, start_angle, u_r, 0.0)
    r_smooth[:, 0] = r_pts[:, 0] + 0.004
    rows = []
    for k in range(_PALM_ROWS):
        f = k / _PALM_ROWS
        g = _smoothstep(f) * 0.55 + f * 0.45
        h = f**4
        pts = (1.0 - g) * p0 + g * ((1.0 - h) * r_smooth + h * r_pts)
        # dorsal dome and a slightly hollow palm centre
        dome = np.sin(np.pi * f) * 0.003
        pts[:, 1] += np.where(pts[:, 1] > palm_centre_zy[1], dome, -0.3 * dome)
        rows.append(b.add_ring(pts, "palm", 0.0, column0=0))
    b.strip(trans, rows[0], u_t, u_r)

    finger_base_idx: dict[str, np.ndarray] = {f: np.zeros(_FINGER_RING, dtype=int) for f in LONG_FINGERS}
    knuckle = np.empty(len(order), dtype=int)
    for j, (f, k) in enumerate(order):
        idx = b.add_vertex(base_pts[f][k], f, 0.0)
        b.verts[idx].centre = _MCP[f].copy()
        b.verts[idx].column = j
        finger_base_idx[f][k] = idx
        knuckle[j] = idx
    rows.append(knuckle)

    # palm grid strips with the thumb hole removed
    ncol = len(order)
    hole_cols = {(_HOLE_COLS[0] + c) % ncol for c in range(_HOLE_COLS[1])}
    for k in range(_PALM_ROWS):
        a_row, b_row = rows[k], rows[k + 1]
        for i in range(ncol):
            if _HOLE_ROWS[0] <= k < _HOLE_ROWS[1] and i in hole_cols:
                continue
            i1 = (i + 1) % ncol
            b.faces.append((a_row[i], a_row[i1], b_row[i1]))
            b.faces.append((a_row[i], b_row[i1], b_row[i]))

    # web quads between neighbouring fingers
    for f, g in zip(LONG_FINGERS[:-1], LONG_FINGERS[1:], strict=True):
        f4, f5 = finger_base_idx[f][half - 1], finger_base_idx[f][half]
        g0, g9 = finger_base_idx[g][0], finger_base_idx[g][_FINGER_RING - 1]
        b.faces.append((f4, g0, g9))
        b.faces.append((f4, g9, f5))

    # --- the four fingers ------------------------------------------------------------------------
    for f in LONG_FINGERS:
        d, u, s = finger_frame(REST_FINGER_DIRECTIONS[f])
        l1, l2, l3 = _BONES[f]
        rb, rt = _RADIUS[f]
        r_tip = rt
        s_c = l1 + l2 + l3 - r_tip
        stations = [  # (metres from the knuckle, joint tag)
            (l1 * 0.22, None),
            (l1 * 0.5, None),
            (l1 * 0.78, None),
            (l1, "pip"),
            (l1 + 0.5 * l2, None),
            (l1 + l2, "dip"),
            (l1 + l2 + 0.45 * (s_c - l1 - l2), None),
            (s_c, None),
        ]
        prev = finger_base_idx[f]
        rings = [prev]
        total = l1 + l2 + l3
        for sv, tag in stations:
            t = sv / total
            r = rb + (rt - rb) * t
            if tag in ("pip", "dip"):
                r *= 1.04  # knuckles are slightly thicker
            ring = b.add_ring(
                _ring_points(_MCP[f] + sv * d, d, u, s, r, r * (1.05 - 0.1 * t) * depth, _FINGER_RING, 0.08),
                f,
                sv,
            )
            b.strip(
                prev, ring, np.arange(_FINGER_RING) / _FINGER_RING, np.arange(_FINGER_RING) / _FINGER_RING
            )
            rings.append(ring)
            prev = ring
        for phi in (np.deg2rad(58.0), np.deg2rad(28.0)):
            sv = s_c + r_tip * np.cos(phi)
            rr = r_tip * np.sin(phi)
            ring = b.add_ring(_ring_points(_MCP[f] + sv * d, d, u, s, rr, rr * 0.92, _FINGER_RING), f, sv)
            b.strip(
                prev, ring, np.arange(_FINGER_RING) / _FINGER_RING, np.arange(_FINGER_RING) / _FINGER_RING
            )
            rings.append(ring)
            prev = ring
        apex[f] = b.add_vertex(_MCP[f] + total * d - 0.0012 * u, f, total)
        b.fan(prev, apex[f])
        finger_rings[f] = rings

    # --- the thumb, grown from the hole in the palm grid ---------------------------------------------
    c0, nc = _HOLE_COLS
    r0, r1 = _HOLE_ROWS
    loop = [rows[r0][(c0 + c) % ncol] for c in range(nc)]
    loop += [rows[r][(c0 + nc) % ncol] for r in range(r0, r1)]
    loop += [rows[r1][(c0 + c) % ncol] for c in range(nc, 0, -1)]
    loop += [rows[r][c0 % ncol] for r in range(r1, r0, -1)]
    hole = np.array(loop)
    hole_pts = np.array([b.verts[i].pos for i in hole])
    hole_c = hole_pts.mean(axis=0)
    d_t = unit(REST_THUMB_DIRECTION)
    # frame about the thumb axis with the hole loop's rotational sense and start angle
    u_t0 = unit(np.cross(d_t, np.array([1.0, 0.0, 0.0])))
    s_t0 = np.cross(u_t0, d_t)
    rel = hole_pts - hole_c
    ang = np.unwrap(np.arctan2(rel @ u_t0, rel @ s_t0))
    sense = 1.0 if ang[-1] > ang[0] else -1.0
    a0 = ang[0]
    u_hole = np.abs(ang - a0) / (2.0 * np.pi)
    mid_centre_ids = np.array(rows[r0])
    # thumb joints: CMC is regressed between the hole and the palm axis
    hole_w = np.full(len(hole), 0.6 / len(hole))
    mid_w = np.full(len(mid_centre_ids), 0.4 / len(mid_centre_ids))
    regress[13] = ((hole, hole_w), (mid_centre_ids, mid_w))
    la, lp, ld = _THUMB_BONES
    rb, rt = _THUMB_RADIUS
    total = la + lp + ld
    s_c = total - rt
    stations = [
        (0.010, "base"),
        (0.018, None),
        (la, "mcp"),
        (la + 0.5 * lp, None),
        (la + lp, "ip"),
        (s_c, None),
    ]
    # the tube leaves the palm along the hole's outward normal, then turns to the thumb direction; its first
    # rings morph from the hole's own outline into circles, so the thumb never re-enters the palm
    palm_axis_pt = np.array([b.verts[i].pos for i in rows[r0]]).mean(axis=0)
    n_h = unit(hole_c - palm_axis_pt)
    theta = a0 + sense * 2.0 * np.pi * u_hole
    thumb_rings = {}

    def centre_at(sv):
        beta = _smoothstep(sv / _THUMB_NORMAL_RUN)
        return hole_c + sv * unit((1.0 - beta) * n_h + beta * d_t)

    def thumb_ring(sv, r_side, r_up):
        circle = np.outer(r_side * np.cos(theta), s_t0) + np.outer(r_up * np.sin(theta), u_t0)
        alpha = _smoothstep(sv / 0.016)
        return centre_at(sv) + (1.0 - alpha) * 0.85 * rel + alpha * circle

    prev = hole
    for sv, tag in stations:
        t = sv / total
        r = rb + (rt - rb) * t
        if tag == "base":
            r *= 1.05  # thenar bulge
        ring = b.add_ring(thumb_ring(sv, r * 1.08, r * 0.92), "thumb", sv)
        b.strip(prev, ring, u_hole, u_hole)
        thumb_rings[tag] = ring
        prev = ring
    for phi in (np.deg2rad(58.0), np.deg2rad(28.0)):
        sv = s_c + rt * np.cos(phi)
        rr = rt * np.sin(phi)
        ring = b.add_ring(thumb_ring(sv, rr * 1.05, rr * 0.9), "thumb", sv)
        b.strip(prev, ring, u_hole, u_hole)
        prev = ring
    apex["thumb"] = b.add_vertex(centre_at(total), "thumb", total)
    b.fan(prev, apex["thumb"])

    # --- joint regressor -----------------------------------------------------------------------------
    regress[0] = ((wrist, np.full(len(wrist), 1.0 / len(wrist))),)
    for f in LONG_FINGERS:
        j1, j2, j3 = FINGER_JOINTS[f]
        rings = finger_rings[f]
        for j, ring in ((j1, rings[0]), (j2, rings[4]), (j3, rings[6])):
            regress[j] = ((ring, np.full(len(ring), 1.0 / len(ring))),)
    regress[14] = ((thumb_rings["mcp"], np.full(_THUMB_RING, 1.0 / _THUMB_RING)),)
    regress[15] = ((thumb_rings["ip"], np.full(_THUMB_RING, 1.0 / _THUMB_RING)),)

    verts = np.array([v.pos for v in b.verts])
    faces = np.array(b.faces, dtype=np.int64)
    info = {"apex": apex, "regress": regress, "hole_centre": hole_c, "thumb_dir": d_t, "wrist_ring": wrist}
    return verts, faces, b.verts, info


def _column_finger(column: int) -> str | None:
    """Finger whose knuckle arc a palm grid column ends on (None for the wrist rings)."""
    half = _FINGER_RING // 2
    if column < 0:
        return None
    if column < 4 * half:
        return LONG_FINGERS[column // half]
    return LONG_FINGERS[3 - (column - 4 * half) // half]


def _skinning_weights(vinfo: list[_Vert], joints: np.ndarray, info: dict) -> np.ndarray:
    """(778, 16) float64 smooth LBS weights, rows summing to 1."""
    w = np.zeros((len(vinfo), N_JOINTS))
    hole_c = info["hole_centre"]
    for i, v in enumerate(vinfo):
        if v.part == "palm":
            # blend wrist -> knuckle of the finger whose column this is, and wrist -> thumb CMC near the hole
            f = _column_finger(v.column)
            wi = np.zeros(N_JOINTS)
            wi[0] = 1.0
            if f is not None:
                mcp = joints[FINGER_JOINTS[f][0]]
                dist = np.linalg.norm(v.pos - mcp)
                t = _smoothstep(1.0 - dist / 0.030) * 0.5
                wi[0] -= t
                wi[FINGER_JOINTS[f][0]] += t
            dh = np.linalg.norm(v.pos - hole_c)
            tt = _smoothstep(1.0 - dh / 0.030) * 0.45
            wi *= 1.0 - tt
            wi[13] += tt
            w[i] = wi
        elif v.part == "thumb":
            s = v.s
            j13, j14, j15 = FINGER_JOINTS["thumb"]
            s14 = _THUMB_BONES[0]
            s15 = s14 + _THUMB_BONES[1]
            a = _smoothstep((s - s14) / 0.028 + 0.5)
            c = _smoothstep((s - s15) / 0.024 + 0.5)
            base = 0.3 + 0.7 * _smoothstep(s / 0.02)
            w[i, 0] = 1.0 - base
            w[i, j13] = base * (1.0 - a)
            w[i, j14] = base * a * (1.0 - c)
            w[i, j15] = base * a * c
        else:
            j1, j2, j3 = FINGER_JOINTS[v.part]
            l1, l2, _ = _BONES[v.part]
            s = v.s
            # each joint blends over about three rings (the blend spans s_joint +- width / 2)
            m = _smoothstep(s / 0.030 + 0.5)  # MCP blend (wrist side below the knuckle ring)
            p = _smoothstep((s - l1) / 0.028 + 0.5)
            q = _smoothstep((s - l1 - l2) / 0.024 + 0.5)
            w[i, 0] = 1.0 - m
            w[i, j1] = m * (1.0 - p)
            w[i, j2] = m * p * (1.0 - q)
            w[i, j3] = m * p * q
    w = np.clip(w, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    vn = np.zeros_like(verts)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.linalg.norm(vn, axis=1, keepdims=True)


def _shape_dirs(verts, faces, vinfo, joints, info) -> np.ndarray:
    """(778, 3, 10) float64 shape displacement per unit beta, metres (see ``SHAPE_COMPONENTS``)."""
    n = len(verts)
    sd = np.zeros((n, 3, 10))
    part = [v.part for v in vinfo]
    wrist = joints[0]
    z_c = 0.004
    y_c = -0.002
    hole_c = info["hole_centre"]
    d_t = info["thumb_dir"]
    normals = _vertex_normals(verts, faces)
    for i, v in enumerate(vinfo):
        p = v.pos
        sd[i, :, 0] = 0.05 * (p - wrist)
        if part[i] in LONG_FINGERS:
            d = unit(REST_FINGER_DIRECTIONS[part[i]])
            s_pos = max(v.s, 0.0)
            base = _MCP[part[i]]
            sd[i, :, 1] = 0.07 * s_pos * d
            sd[i, 2, 2] = 0.06 * (base[2] - z_c)
            if v.s > 0:
                sd[i, :, 3] = 0.08 * (p - v.centre)
            sd[i, 0, 4] = -0.07 * (wrist[0] - base[0])
            if part[i] == "index":
                sd[i, :, 7] = 0.05 * s_pos * d
            elif part[i] == "ring":
                sd[i, :, 7] = -0.05 * s_pos * d
            elif part[i] == "pinky":
                sd[i, :, 8] = 0.08 * s_pos * d
        elif part[i] == "thumb":
            sd[i, :, 1] = 0.07 * v.s * d_t
            sd[i, 2, 2] = 0.06 * (hole_c[2] - z_c)
            sd[i, :, 3] = 0.08 * (p - v.centre)
            sd[i, 0, 4] = -0.07 * (wrist[0] - hole_c[0])
            sd[i, :, 6] = 0.08 * v.s * d_t
        else:  # palm
            sd[i, 2, 2] = 0.06 * (p[2] - z_c)
            sd[i, 0, 4] = -0.07 * max(wrist[0] - p[0], 0.0)
            sd[i, 1, 5] = 0.10 * (p[1] - y_c)
        sd[i, :, 9] = 0.0015 * normals[i]
    return sd


def _mean_pose() -> np.ndarray:
    """(45,) slightly relaxed absolute hand pose (axis-angle per hand joint, right hand)."""
    flex = flexion_axes("right")
    angles = np.zeros(15)
    for f in LONG_FINGERS:
        j1, j2, j3 = FINGER_JOINTS[f]
        extra = {"index": 0.0, "middle": 0.05, "ring": 0.1, "pinky": 0.15}[f]
        angles[j1 - 1] = 0.12 + extra
        angles[j2 - 1] = 0.22 + extra
        angles[j3 - 1] = 0.12
    angles[12], angles[13], angles[14] = 0.05, 0.1, 0.1
    return (flex * angles[:, None]).reshape(45)


def _pca_components() -> np.ndarray:
    """(45, 45) orthonormal rows; the first rows are hand synergies, the rest complete the basis."""
    flex = flexion_axes("right")
    abd = abduction_axes("right")
    syn = []
    curl = np.zeros((15, 3))
    for f in LONG_FINGERS:
        for j in FINGER_JOINTS[f]:
            curl[j - 1] = flex[j - 1]
    syn.append(curl)
    thumb = np.zeros((15, 3))
    for j in FINGER_JOINTS["thumb"]:
        thumb[j - 1] = flex[j - 1]
    syn.append(thumb)
    spread = np.zeros((15, 3))
    for f, sgn in zip(LONG_FINGERS, (1.0, 0.2, -0.6, -1.0), strict=True):
        spread[FINGER_JOINTS[f][0] - 1] = sgn * abd[FINGER_JOINTS[f][0] - 1]
    syn.append(spread)
    point = curl.copy()
    for j in FINGER_JOINTS["index"]:
        point[j - 1] *= -1.0
    syn.append(point)
    hook = np.zeros((15, 3))
    for f in LONG_FINGERS:
        j1, j2, j3 = FINGER_JOINTS[f]
        hook[j1 - 1] = -flex[j1 - 1]
        hook[j2 - 1] = flex[j2 - 1]
        hook[j3 - 1] = flex[j3 - 1]
    syn.append(hook)
    mat = np.concatenate([np.stack([s.reshape(45) for s in syn]), np.eye(45)], axis=0)
    q, _ = np.linalg.qr(mat.T)  # Gram-Schmidt in order: synergies first
    comps = q[:, :45].T
    # fix signs so each synergy component points along its synergy
    for k, s in enumerate(syn):
        if comps[k] @ s.reshape(45) < 0:
            comps[k] *= -1.0
    return comps


def _reorder_tips(verts, faces, vinfo, apex, regress):
    """Drop unreferenced vertices (inside the thumb hole), then permute vertex ids so each fingertip
    apex lands on MANO's tip vertex id."""
    used = np.unique(faces)
    n = len(used)
    order = [int(u) for u in used]  # order[new] = old
    pos = {old: new for new, old in enumerate(order)}  # pos[old] = new
    for name, target in TIP_VERTEX_IDS.items():
        old = apex[name]
        cur = pos[old]
        other_old = order[target]
        order[target], order[cur] = old, other_old
        pos[old], pos[other_old] = target, cur
    order_a = np.array(order)
    inv = np.full(len(verts), -1, dtype=np.int64)
    inv[order_a] = np.arange(n)
    if any((inv[ids] < 0).any() for parts in regress.values() for ids, _ in parts):
        raise RuntimeError("joint regressor refers to a vertex that no face uses")
    new_regress = {j: tuple((inv[ids], w) for ids, w in parts) for j, parts in regress.items()}
    return verts[order_a], inv[faces], [vinfo[o] for o in order_a], new_regress, inv


def _palmar_tissue(verts: np.ndarray, faces: np.ndarray, vinfo: list[_Vert]) -> np.ndarray:
    """(778, 3) ``verts`` (canonical right hand, metres) with palmar soft tissue.

    Palm and thumb vertices move toward the palm's side (-y) by the ``PALMAR_TISSUE`` mounds, weighted by how
    far below the palm's mid-plane they lie (0 above it, 1 from 12 mm below). The displacement is a smooth
    function of position, so the rim of the thumb's opening moves with the thumb's base and nothing folds.
    Long-finger vertices move along their normal by ``FINGER_PAD`` times the square root of how much the
    normal faces the palm's side (-y)."""
    part = np.array([v.part for v in vinfo])
    x, y, z = verts.T
    mounds = sum(
        h * np.exp(-(((x - cx) / rx) ** 2 + ((z - cz) / rz) ** 2))
        for cx, cz, rx, rz, h in PALMAR_TISSUE.values()
    )
    below = _smoothstep((_PALM_MID_Y - y) / 0.012)
    mounds = np.where(np.isin(part, ("palm", "thumb")), mounds * below, 0.0)
    n = _vertex_normals(verts, faces)
    pads = np.where(np.isin(part, LONG_FINGERS), FINGER_PAD * np.sqrt(np.clip(-n[:, 1], 0.0, 1.0)), 0.0)
    return verts + mounds[:, None] * np.array([0.0, -1.0, 0.0]) + pads[:, None] * n


def build_standin(side: str = "right", version: int = STANDIN_VERSION) -> dict:
    """Build the stand-in MANO model for ``side`` ('right' or 'left'), geometry ``version``
    (``STANDIN_VERSIONS``; module doc).

    Returns a dict with the official MANO pickle keys: ``v_template`` (778, 3) float64 metres,
    ``f`` (1538, 3) uint32, ``J_regressor`` (16, 778) float64, ``weights`` (778, 16) float64,
    ``kintree_table`` (2, 16) int64 (root parent 4294967295), ``shapedirs`` (778, 3, 10) float64 metres per
    unit beta, ``posedirs`` (778, 3, 135) float64 (zeros), ``hands_components`` (45, 45) float64 orthonormal
    rows, ``hands_mean`` (45,) float64 radians, ``hands_coeffs`` (1, 45) float64, ``J`` (16, 3) rest joints,
    ``bs_style``/``bs_type`` strings, plus ``part_ids`` (778,) int8 (0 palm, 1 index, 2 middle, 3 ring,
    4 pinky, 5 thumb) and ``standin_version``.
    """
    if side not in SIDES:
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if version not in STANDIN_VERSIONS:
        raise ValueError(f"stand-in version must be one of {STANDIN_VERSIONS}, got {version!r}")
    verts, faces, vinfo, info = _build_right_geometry(FINGER_DEPTH if version >= 3 else 1.0)
    verts, faces, vinfo, regress, _ = _reorder_tips(verts, faces, vinfo, info["apex"], info["regress"])
    if len(verts) != N_VERTS or len(faces) != N_FACES:
        raise RuntimeError(f"stand-in build produced {len(verts)} vertices / {len(faces)} faces")
    if version >= 2:
        verts = _palmar_tissue(verts, faces, vinfo)
    jreg = np.zeros((N_JOINTS, N_VERTS))
    for j, parts in regress.items():
        for ids, w in parts:
            np.add.at(jreg[j], ids, w)
    joints = jreg @ verts
    weights = _skinning_weights(vinfo, joints, info)
    shapedirs = _shape_dirs(verts, faces, vinfo, joints, info)
    mean = _mean_pose()
    comps = _pca_components()
    kintree = np.stack([PARENTS.astype(np.int64), np.arange(N_JOINTS)])
    kintree[0, 0] = 4294967295
    part_ids = np.array([_PART_ID[v.part] for v in vinfo], dtype=np.int8)
    if side == "left":
        mirror = np.array([-1.0, 1.0, 1.0])
        verts = verts * mirror
        joints = joints * mirror
        faces = faces[:, [0, 2, 1]]
        shapedirs = shapedirs * mirror[None, :, None]
        mean = mirror_axis_angle(mean.reshape(15, 3)).reshape(45)
        comps = mirror_axis_angle(comps.reshape(45, 15, 3)).reshape(45, 45)
    return {
        "v_template": np.ascontiguousarray(verts, dtype=np.float64),
        "f": np.ascontiguousarray(faces, dtype=np.uint32),
        "J_regressor": jreg,
        "J": joints,
        "weights": weights,
        "kintree_table": kintree,
        "shapedirs": np.ascontiguousarray(shapedirs),
        "posedirs": np.zeros((N_VERTS, 3, 135)),
        "hands_components": np.ascontiguousarray(comps),
        "hands_mean": np.ascontiguousarray(mean),
        "hands_coeffs": np.zeros((1, 45)),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "part_ids": part_ids,
        "standin_version": version,
    }
