"""The broad phase of ``geometry.edge_triangle_intersections`` returns exactly what testing every pair
returns: the reference below is the all-pairs version it replaced (every pair of boxes, then the same narrow
phase, ``geometry.segments_cross_triangles``), and the narrow phase is checked on its own against hand-made
segments."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import geometry


def _all_pairs(verts_a, faces_a, verts_b=None, faces_b=None, eps=1e-9) -> np.ndarray:
    """Every (edge, triangle) pair with overlapping boxes gets the exact segment-triangle test."""
    same = verts_b is None
    va = np.asarray(verts_a, dtype=np.float64)
    vb = va if same else np.asarray(verts_b, dtype=np.float64)
    fb = np.asarray(faces_a if same else faces_b, dtype=np.int64)
    edges = geometry.unique_edges(faces_a)
    p0, p1 = va[edges[:, 0]], va[edges[:, 1]]
    tri = vb[fb]
    e_lo, e_hi = np.minimum(p0, p1), np.maximum(p0, p1)
    t_lo, t_hi = tri.min(axis=1), tri.max(axis=1)
    overlap = ((e_lo[:, None] <= t_hi[None]) & (e_hi[:, None] >= t_lo[None])).all(axis=2)
    ei, fi = np.nonzero(overlap)
    if same:
        shared = (edges[ei, 0, None] == fb[fi]).any(1) | (edges[ei, 1, None] == fb[fi]).any(1)
        ei, fi = ei[~shared], fi[~shared]
    inside = geometry.segments_cross_triangles(p0[ei], p1[ei], tri[fi], eps)  # the same narrow phase
    return np.stack([ei[inside], fi[inside]], axis=1)


@pytest.fixture(scope="module")
def posed(hand_model):
    """Three right and three left hands in random poses (vertices (778, 3) metres), with their faces."""
    import torch

    rng = np.random.default_rng(3)
    out = {}
    for side in ("right", "left"):
        pose = torch.tensor(rng.normal(0.0, 0.6, size=(3, 48)))
        verts = hand_model(side, pose, torch.zeros(3, 10), torch.zeros(3, 3)).vertices.cpu().numpy()
        out[side] = (verts.astype(np.float64), np.asarray(hand_model.faces[side]))
    return out


def test_self_intersections_match_all_pairs(posed):
    verts, faces = posed["right"]
    found = 0
    for v in verts:
        got = geometry.edge_triangle_intersections(v, faces)
        np.testing.assert_array_equal(got, _all_pairs(v, faces))
        found += len(got)
    assert found > 0  # strong random poses do fold fingers into each other: the comparison is not empty


@pytest.mark.parametrize("shift", [0.0, 0.03, 1.0])
def test_two_meshes_match_all_pairs(posed, shift):
    (vr, fr), (vl, fl) = posed["right"], posed["left"]
    hits = 0
    for a, b in zip(vr, vl, strict=True):
        b = b + np.array([shift, 0.0, 0.0])
        for args in ((a, fr, b, fl), (b, fl, a, fr)):
            got = geometry.edge_triangle_intersections(*args)
            np.testing.assert_array_equal(got, _all_pairs(*args))
            hits += len(got)
        assert geometry.meshes_interpenetrate(a, fr, b, fl) == (
            len(_all_pairs(a, fr, b, fl)) > 0 or len(_all_pairs(b, fl, a, fr)) > 0
        )
    if shift == 0.0:
        assert hits > 0
    if shift == 1.0:
        assert hits == 0  # a metre apart: nothing crosses


def test_empty_inputs():
    v = np.zeros((3, 3))
    f = np.array([[0, 1, 2]])
    assert geometry.edge_triangle_intersections(v, f, v + 5.0, f).shape == (0, 2)
    assert geometry.edge_triangle_intersections(v, f, v, np.zeros((0, 3), dtype=np.int64)).shape == (0, 2)


def test_non_finite_vertices_match_all_pairs(posed):
    """A NaN vertex meets no box; the edges and triangles that use it drop out, and nothing else does."""
    verts, faces = posed["right"]
    (vl, fl) = posed["left"]
    v = verts[0].copy()
    v[[10, 400]] = np.nan
    np.testing.assert_array_equal(geometry.edge_triangle_intersections(v, faces), _all_pairs(v, faces))
    for args in ((v, faces, vl[0], fl), (vl[0], fl, v, faces)):
        got = geometry.edge_triangle_intersections(*args)
        np.testing.assert_array_equal(got, _all_pairs(*args))
    assert geometry.edge_triangle_intersections(np.full_like(v, np.nan), faces).shape == (0, 2)


def test_segments_cross_triangles():
    """The narrow phase on hand-made cases: through the middle, touching an edge, a vertex and an end, short
    of the plane, beside the triangle, and parallel to it (within the plane or above it)."""
    tri = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cases = [
        (([0.2, 0.2, -1.0], [0.2, 0.2, 1.0]), True),  # through the middle
        (([0.5, 0.0, -1.0], [0.5, 0.0, 1.0]), True),  # through an edge
        (([0.0, 0.0, -1.0], [0.0, 0.0, 1.0]), True),  # through a vertex
        (([0.2, 0.2, 0.0], [0.2, 0.2, 1.0]), True),  # ends on the triangle
        (([0.2, 0.2, 0.5], [0.2, 0.2, 1.0]), False),  # short of the plane
        (([0.8, 0.8, -1.0], [0.8, 0.8, 1.0]), False),  # beside it (u + v > 1)
        (([-0.5, 0.2, 0.0], [1.5, 0.2, 0.0]), False),  # in its plane: parallel
        (([-0.5, 0.2, 0.1], [1.5, 0.2, 0.1]), False),  # parallel above it
    ]
    p0 = np.array([c[0][0] for c in cases])
    p1 = np.array([c[0][1] for c in cases])
    got = geometry.segments_cross_triangles(p0, p1, np.repeat(tri[None], len(cases), axis=0))
    assert got.tolist() == [want for _, want in cases]


def _cube(centre, half):
    """A closed axis-aligned cube: 8 vertices, 12 triangles."""
    c = np.asarray(centre, dtype=np.float64)
    v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64) * half + c
    f = np.array(
        [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1]]
        + [[2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    )
    return v, f


def test_ray_crossings_count_the_surfaces_in_front_of_a_point():
    """Camera at the origin looking down +z. A cube 1 m away: a point inside it is behind one face, a point
    behind it behind two, a point in front of it behind none; a second cube between the camera and the first
    adds two; a point behind the camera, or not finite, crosses nothing it cannot reach."""
    v1, f1 = _cube((0.02, -0.01, 1.0), 0.1)
    v2, f2 = _cube((0.0, 0.0, 0.5), 0.05)
    v, f = np.concatenate([v1, v2]), np.concatenate([f1, f2 + len(v1)])
    pts = np.array(
        [
            [0.03, 0.02, 1.01],  # inside the far cube
            [0.03, 0.02, 1.5],  # behind the far cube
            [0.03, 0.02, 0.8],  # between the cubes
            [0.01, 0.005, 0.5],  # inside the near cube
            [0.3, 0.3, 1.0],  # beside the far cube: its ray misses both
            [0.0, 0.0, -1.0],  # behind the camera
            [np.nan, 0.0, 1.0],
        ]
    )
    assert geometry.ray_crossings(v1, f1, pts).tolist() == [1, 2, 0, 0, 0, 0, 0]
    assert geometry.ray_crossings(v, f, pts).tolist() == [3, 4, 2, 1, 0, 0, 0]
    empty = geometry.ray_crossings(v, np.zeros((0, 3), dtype=np.int64), pts)
    assert empty.tolist() == [0] * len(pts)


def test_ray_crossings_broad_phase_is_exact(posed):
    """On posed hands in front of the camera, and on hands straddling the camera plane (their triangles behind
    the camera, and points behind it, are compared in full), the count is that of testing every triangle."""
    for side, (verts, faces) in posed.items():
        for k, shift in enumerate(([0.0, 0.0, 0.4], [0.05, -0.02, 0.3], [0.0, 0.0, 0.0])):
            v = verts[k] - verts[k].mean(axis=0) + np.asarray(shift)
            pts = v[::37] * 0.97 + v.mean(axis=0) * 0.03  # just inside the surface near vertices, and beyond
            pts = np.concatenate([pts, v.mean(axis=0, keepdims=True) + [[0.0, 0.0, 0.3]]])
            tri = v[faces]
            want = [
                int(
                    geometry.segments_cross_triangles(
                        np.zeros((len(tri), 3)), np.repeat(p[None], len(tri), 0), tri
                    ).sum()
                )
                for p in pts
            ]
            if k == 2:  # the straddling hand: points behind the camera whose segments cross the surface
                assert (pts[:, 2] < 0).sum() >= 5 and any(
                    w > 0 for w, p in zip(want, pts, strict=True) if p[2] < 0
                )
            assert geometry.ray_crossings(v, faces, pts).tolist() == want, (side, k)


def test_ray_crossings_count_a_crossing_through_an_edge_once():
    """The segment to a cube's centre meets its front face on the face's diagonal, where both of its triangles
    are crossed: one crossing."""
    v, f = _cube((0.0, 0.0, 1.0), 0.1)
    p = np.array([[0.0, 0.0, 1.0]])
    tri = v[f]
    hits = geometry.segments_cross_triangles(np.zeros((len(tri), 3)), np.repeat(p, len(tri), 0), tri)
    assert hits.sum() == 2  # the front face's two triangles, at the same point
    assert geometry.ray_crossings(v, f, p).tolist() == [1]
