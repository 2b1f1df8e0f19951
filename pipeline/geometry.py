"""Mesh geometry helpers (pure numpy): surface topology and self-intersection tests."""

from __future__ import annotations

from collections import Counter

import numpy as np


def edge_counts(faces: np.ndarray) -> tuple[Counter, Counter]:
    """(directed, undirected) edge use counts of a triangle list (F, 3)."""
    directed: Counter = Counter()
    for a, b, c in np.asarray(faces, dtype=np.int64):
        directed.update(((a, b), (b, c), (c, a)))
    undirected: Counter = Counter()
    for (a, b), n in directed.items():
        undirected[(min(a, b), max(a, b))] += n
    return directed, undirected


def boundary_loops(faces: np.ndarray) -> list[list[int]]:
    """Vertex cycles made of the edges used by exactly one face."""
    directed, undirected = edge_counts(faces)
    nxt: dict[int, int] = {}
    for (a, b), _n in directed.items():
        if undirected[(min(a, b), max(a, b))] == 1:
            nxt[a] = b
    loops, seen = [], set()
    for start in nxt:
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen and v in nxt:
            seen.add(v)
            loop.append(v)
            v = nxt[v]
        loops.append(loop)
    return loops


def unique_edges(faces: np.ndarray) -> np.ndarray:
    """(E, 2) sorted unique undirected edges (cached per triangle list)."""
    f = np.ascontiguousarray(faces, dtype=np.int64)
    key = (f.shape, hash(f.tobytes()))
    hit = _EDGE_CACHE.get(key)
    if hit is not None:
        return hit
    _EDGE_CACHE[key] = out = _unique_edges(f)
    return out


_EDGE_CACHE: dict = {}


def _unique_edges(f: np.ndarray) -> np.ndarray:
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def edge_triangle_intersections(
    verts_a: np.ndarray,
    faces_a: np.ndarray,
    verts_b: np.ndarray | None = None,
    faces_b: np.ndarray | None = None,
    eps: float = 1e-9,
) -> np.ndarray:
    """Pairs (edge id, face id) where an edge of mesh A crosses a triangle of mesh B.

    With only mesh A given, tests A against itself and skips pairs that share a vertex (neighbours touch
    by construction). Two surfaces in general position intersect iff some edge of one crosses a triangle of
    the other, so ``len(result) == 0`` means no self-intersection (or no interpenetration of A and B, when
    both directions are tested). Returns (K, 2) int64, sorted by edge id then face id (edge ids index
    ``unique_edges(faces_a)``).

    Broad phase: the edges are sorted along the axis where they spread most and taken in runs of
    ``_RUN``; only the triangles whose box meets a run's box are compared with its edges box by box, and
    only pairs whose boxes meet get the exact segment-triangle test. The result is exactly that of testing
    every pair.
    """
    same = verts_b is None
    va = np.asarray(verts_a, dtype=np.float64)
    vb = va if same else np.asarray(verts_b, dtype=np.float64)
    fb = np.asarray(faces_a if same else faces_b, dtype=np.int64)
    edges = unique_edges(faces_a)
    if not len(edges) or not len(fb):
        return np.zeros((0, 2), dtype=np.int64)
    p0, p1 = va[edges[:, 0]], va[edges[:, 1]]
    tri = vb[fb]
    e_lo, e_hi = np.minimum(p0, p1), np.maximum(p0, p1)
    t_lo, t_hi = tri.min(axis=1), tri.max(axis=1)
    # a non-finite edge or triangle meets no box (every comparison with NaN is false): leave them out, so that
    # they cannot spoil the boxes of the runs and of the whole mesh below
    edge_ids = np.nonzero(np.isfinite(e_lo).all(axis=1) & np.isfinite(e_hi).all(axis=1))[0]
    tri_ok = np.isfinite(t_lo).all(axis=1) & np.isfinite(t_hi).all(axis=1)
    if not len(edge_ids) or not tri_ok.any():
        return np.zeros((0, 2), dtype=np.int64)
    if not same:  # only edges inside the other mesh's box can cross (two hands rarely overlap much)
        box_lo, box_hi = t_lo[tri_ok].min(0), t_hi[tri_ok].max(0)
        inside = ((e_lo[edge_ids] <= box_hi) & (e_hi[edge_ids] >= box_lo)).all(axis=1)
        edge_ids = edge_ids[inside]
    if not len(edge_ids):
        return np.zeros((0, 2), dtype=np.int64)
    axis = int(np.argmax(e_hi[edge_ids].max(0) - e_lo[edge_ids].min(0)))
    edge_ids = edge_ids[np.argsort(e_lo[edge_ids, axis], kind="stable")]
    hits = []
    for s in range(0, len(edge_ids), _RUN):
        ei_run = edge_ids[s : s + _RUN]
        lo, hi = e_lo[ei_run], e_hi[ei_run]
        near = np.nonzero(((t_lo <= hi.max(0)) & (t_hi >= lo.min(0))).all(axis=1))[0]
        if not len(near):
            continue
        th, tl = t_hi[near], t_lo[near]
        overlap = (lo[:, None, 0] <= th[None, :, 0]) & (hi[:, None, 0] >= tl[None, :, 0])
        for k in (1, 2):  # per axis on 2D arrays: numpy is slow reducing a trailing axis of 3
            overlap &= (lo[:, None, k] <= th[None, :, k]) & (hi[:, None, k] >= tl[None, :, k])
        ri, ni = np.nonzero(overlap)
        ei, fi = ei_run[ri], near[ni]
        if same:
            shared = (edges[ei, 0, None] == fb[fi]).any(1) | (edges[ei, 1, None] == fb[fi]).any(1)
            ei, fi = ei[~shared], fi[~shared]
        if len(ei) == 0:
            continue
        inside = segments_cross_triangles(p0[ei], p1[ei], tri[fi], eps)
        hits.append(np.stack([ei[inside], fi[inside]], axis=1))
    if not hits:
        return np.zeros((0, 2), dtype=np.int64)
    out = np.concatenate(hits)
    return out[np.lexsort((out[:, 1], out[:, 0]))]


_RUN = 128  # edges per broad-phase run


def segments_cross_triangles(
    p0: np.ndarray, p1: np.ndarray, tri: np.ndarray, eps: float = 1e-9
) -> np.ndarray:
    """(K,) bool: whether segment ``p0[k]``-``p1[k]`` crosses triangle ``tri[k]`` (p0, p1 (K, 3); tri
    (K, 3, 3)), ends and edges included (Moller-Trumbore); a segment parallel to its triangle's plane (within
    ``eps``) does not cross it."""
    return np.isfinite(segment_triangle_params(p0, p1, tri, eps))


def segment_triangle_params(p0: np.ndarray, p1: np.ndarray, tri: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    """(K,) float64: where segment ``p0[k]``-``p1[k]`` crosses triangle ``tri[k]``, as the fraction t in
    [0, 1] of the way from p0 to p1, or NaN where it does not (``segments_cross_triangles``)."""
    o, d = p0, p1 - p0
    t0, t1, t2 = tri[:, 0], tri[:, 1], tri[:, 2]
    e1, e2 = t1 - t0, t2 - t0
    h = np.cross(d, e2)
    a = (e1 * h).sum(1)
    ok = np.abs(a) > eps
    inv = np.where(ok, 1.0 / np.where(ok, a, 1.0), 0.0)
    sv = o - t0
    u = inv * (sv * h).sum(1)
    q = np.cross(sv, e1)
    v = inv * (d * q).sum(1)
    t = inv * (e2 * q).sum(1)
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t >= 0) & (t <= 1)
    return np.where(hit, t, np.nan)


def meshes_interpenetrate(va, fa, vb, fb) -> bool:
    """True when two closed-ish surfaces cross each other (an edge of either crosses a face of the other)."""
    return bool(
        len(edge_triangle_intersections(va, fa, vb, fb)) or len(edge_triangle_intersections(vb, fb, va, fa))
    )


_BOX_SLACK = 1e-9  # normalised image units (about 1e-6 px at a 1000 px focal length)


def ray_crossings(verts: np.ndarray, faces: np.ndarray, points: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """(J,) int64: how many times the segment from the origin (the camera centre) to each point crosses a
    surface (``segment_triangle_params``: ends and edges included).

    verts: (V, 3) float camera-space vertices; faces: (F, 3) int; points: (J, 3) float camera-space points.
    For a point inside a closed surface the count is odd, and 1 when nothing but the surface enclosing it lies
    between it and the camera. Crossings less than ``tol`` of the segment apart are one crossing (a segment
    through an edge or a vertex meets every triangle there). Broad phase: where the point and a triangle's
    corners lie in front of the camera (z > 0), the whole segment projects to the point's normalised image
    coordinates (x / z, y / z), and the triangle projects inside the box of its corners' (widened by
    ``_BOX_SLACK`` for rounding), so only triangles whose box holds that point can be crossed; other triangles
    and points are compared in full. A non-finite point crosses nothing.
    """
    v = np.asarray(verts, dtype=np.float64)
    tri = v[np.asarray(faces, dtype=np.int64)]
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    out = np.zeros(len(p), dtype=np.int64)
    finite = np.isfinite(p).all(axis=1)
    if not len(tri) or not finite.any():
        return out
    z = tri[..., 2]
    front = (z > 0).all(axis=1)
    xy = tri[..., :2] / np.where(front[:, None], z, 1.0)[..., None]  # behind the camera: compared in full
    with np.errstate(divide="ignore", invalid="ignore"):
        q = p[:, :2] / p[:, 2:3]
    ahead = finite & (p[:, 2] > 0)
    near = ~front[None, :] | ~ahead[:, None]
    inside = np.ones((len(p), len(tri)), dtype=bool)
    for k in (0, 1):  # per axis on 2D arrays: numpy is slow reducing a trailing axis of 2 or 3
        c = xy[..., k]
        lo = np.minimum(np.minimum(c[:, 0], c[:, 1]), c[:, 2]) - _BOX_SLACK
        hi = np.maximum(np.maximum(c[:, 0], c[:, 1]), c[:, 2]) + _BOX_SLACK
        inside &= (lo[None] <= q[:, k, None]) & (hi[None] >= q[:, k, None])
    near = (near | inside) & finite[:, None]
    pj, fi = np.nonzero(near)
    t = segment_triangle_params(np.zeros((len(pj), 3)), p[pj], tri[fi])
    hit = np.isfinite(t)
    pj, t = pj[hit], t[hit]
    order = np.lexsort((t, pj))
    pj, t = pj[order], t[order]
    new = np.ones(len(pj), dtype=bool)
    new[1:] = (pj[1:] != pj[:-1]) | (t[1:] - t[:-1] > tol)
    return out + np.bincount(pj[new], minlength=len(p))
