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
    both directions are tested). Returns (K, 2) int64.
    """
    same = verts_b is None
    va = np.asarray(verts_a, dtype=np.float64)
    vb = va if same else np.asarray(verts_b, dtype=np.float64)
    fb = np.asarray(faces_a if same else faces_b, dtype=np.int64)
    edges = unique_edges(faces_a)
    p0, p1 = va[edges[:, 0]], va[edges[:, 1]]
    tri = vb[fb]
    face_ids = None
    if not same:  # only edges and faces inside the other mesh's box can cross (two hands rarely overlap much)
        lo_b, hi_b = tri.reshape(-1, 3).min(0), tri.reshape(-1, 3).max(0)
        near = ((np.minimum(p0, p1) <= hi_b) & (np.maximum(p0, p1) >= lo_b)).all(axis=1)
        idx = np.nonzero(near)[0]
        edges, p0, p1 = edges[idx], p0[idx], p1[idx]
        keep_ids = idx
        lo_a, hi_a = va.min(0), va.max(0)
        face_ids = np.nonzero(((tri.min(1) <= hi_a) & (tri.max(1) >= lo_a)).all(axis=1))[0]
        tri, fb = tri[face_ids], fb[face_ids]
    else:
        keep_ids = None
    e_lo, e_hi = np.minimum(p0, p1), np.maximum(p0, p1)
    t_lo, t_hi = tri.min(axis=1), tri.max(axis=1)
    hits = []
    chunk = 512
    for s in range(0, len(edges), chunk):
        lo, hi = e_lo[s : s + chunk, None], e_hi[s : s + chunk, None]
        overlap = ((lo <= t_hi[None]) & (hi >= t_lo[None])).all(axis=2)
        ei, fi = np.nonzero(overlap)
        ei = ei + s
        if same:
            shared = (edges[ei, 0, None] == fb[fi]).any(1) | (edges[ei, 1, None] == fb[fi]).any(1)
            ei, fi = ei[~shared], fi[~shared]
        if len(ei) == 0:
            continue
        o, d = p0[ei], p1[ei] - p0[ei]
        t0, t1, t2 = tri[fi, 0], tri[fi, 1], tri[fi, 2]
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
        inside = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t >= 0) & (t <= 1)
        ids = ei[inside] if keep_ids is None else keep_ids[ei[inside]]
        fids = fi[inside] if face_ids is None else face_ids[fi[inside]]
        hits.append(np.stack([ids, fids], axis=1))
    return np.concatenate(hits) if hits else np.zeros((0, 2), dtype=np.int64)


def meshes_interpenetrate(va, fa, vb, fb) -> bool:
    """True when two closed-ish surfaces cross each other (an edge of either crosses a face of the other)."""
    return bool(
        len(edge_triangle_intersections(va, fa, vb, fb)) or len(edge_triangle_intersections(vb, fb, va, fa))
    )
