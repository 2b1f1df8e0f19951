"""The enclosed-joint visibility rule (``renderers.base`` module doc) on hands posed and placed by hand: one
depth tolerance could not tell the skin over a knuckle from a curled finger in front of it; counting the
surface crossings in front of the joint (``geometry.ray_crossings``) can. Each scene is rendered under the
default rule and under the rule before it (``enclosed_tolerance=None``)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.geometry import ray_crossings
from pipeline.gestures import gesture_pose
from pipeline.rotations import aa_to_matrix
from renderers.base import (
    ENCLOSED_JOINTS,
    RenderBatch,
    RenderConfig,
    RenderItem,
    closed_surface,
    joint_visibility,
    make_renderer,
)

K = np.array([[600.0, 0.0, 127.5], [0.0, 600.0, 127.5], [0.0, 0.0, 1.0]])
INDEX_MCP, INDEX_PIP, INDEX_DIP, INDEX_TIP = 5, 6, 7, 8  # JOINT_NAMES: index1 .. index4
THUMB_CMC = 1
LONG_MCPS = (5, 9, 13)  # index, middle and ring knuckles


@pytest.fixture(scope="module")
def renderers():
    rs = {
        "new": make_renderer("opengl", config=RenderConfig(local_size=64)),
        "old": make_renderer("opengl", config=RenderConfig(local_size=64, enclosed_tolerance=None)),
    }
    yield rs
    for r in rs.values():
        r.close()


def _hand(hand_model, gesture: str, R: np.ndarray, anchor) -> tuple[np.ndarray, np.ndarray]:
    """A right hand in ``gesture``, rotated by ``R`` and moved so that ``anchor(verts, joints)`` (a point of
    the unrotated hand) lands 45 cm in front of the camera on its axis; (778, 3) and (21, 3) metres."""
    from pipeline.hand_model import standin_data

    pose = gesture_pose(gesture, standin_data("right")["hands_mean"], "right")
    out = hand_model("right", pose[None], np.zeros((1, 10)), np.zeros((1, 3)))
    v, j = (np.asarray(x[0].cpu().numpy(), dtype=np.float64) for x in (out.vertices, out.joints))
    t = np.array([0.0, 0.0, 0.45]) - R @ anchor(v, j)
    return v @ R.T + t, j @ R.T + t


def _visible(renderers, hand_model, v, j) -> dict[str, np.ndarray]:
    item = RenderItem(verts={"right": v}, joints={"right": j}, K=K, image_size=(256, 256))
    out = {}
    for name, r in renderers.items():
        res = r.render(RenderBatch([item], hand_model.faces))[0]
        u, w = np.rint(res.joints_2d["right"][list(ENCLOSED_JOINTS)]).T.astype(int)
        assert (res.mask[w, u] == 1).all()  # the rule's case: every enclosed joint projects onto its hand
        out[name] = np.asarray(res.joints_visible["right"])
    return out


def _rotate_onto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation taking direction ``a`` to direction ``b`` (not opposite)."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    axis = np.cross(a, b)
    return aa_to_matrix(axis / np.linalg.norm(axis) * np.arccos(np.clip(a @ b, -1.0, 1.0)))


def test_the_back_of_an_open_hand_shows_every_enclosed_joint(renderers, hand_model):
    """The back of the hand toward the camera (the stand-in's back faces +y): each enclosed joint lies under
    the one skin that covers it, so all are visible; under the depth tolerance alone the thumb's CMC, deeper
    than 15 mm, was not."""
    v, j = _hand(hand_model, "open", aa_to_matrix(np.array([-np.pi / 2, 0.0, 0.0])), lambda v, j: v.mean(0))
    ids = list(ENCLOSED_JOINTS)
    assert (ray_crossings(v, hand_model.faces["right"], j[ids]) == 1).all()
    vis = _visible(renderers, hand_model, v, j)
    assert vis["new"][ids].all()
    assert not vis["old"][THUMB_CMC]


def test_curled_fingers_hide_the_knuckles_behind_them(renderers, hand_model):
    """A fist with its palm toward the camera: the curled index, middle and ring fingers lie in front of
    their knuckles (three or more crossings, and about 50 mm), which are hidden under both rules
    (``test_the_rule_on_counts_and_depths`` has three crossings within the tolerances)."""
    v, j = _hand(hand_model, "fist", aa_to_matrix(np.array([np.pi / 2, 0.0, 0.0])), lambda v, j: v.mean(0))
    crossings = ray_crossings(v, hand_model.faces["right"], j[list(LONG_MCPS)])
    assert (crossings >= 3).all(), crossings
    vis = _visible(renderers, hand_model, v, j)
    assert not vis["new"][list(LONG_MCPS)].any() and not vis["old"][list(LONG_MCPS)].any()


def test_a_finger_seen_end_on_hides_its_own_knuckles(renderers, hand_model):
    """A pointing index finger aimed at the camera along the ray through its knuckle: its MCP and PIP lie
    inside the one finger (one crossing) but about 85 and 45 mm under its tip, so they are hidden; its
    DIP, about 20 mm under the tip, is visible (the depth tolerance alone hid it too)."""
    probe = _hand(hand_model, "point", np.eye(3), lambda v, j: j[INDEX_MCP])[1]
    R = _rotate_onto(probe[INDEX_TIP] - probe[INDEX_MCP], np.array([0.0, 0.0, -1.0]))
    v, j = _hand(hand_model, "point", R, lambda v, j: j[INDEX_MCP])
    ids = [INDEX_MCP, INDEX_PIP, INDEX_DIP]
    assert ray_crossings(v, hand_model.faces["right"], j[ids]).tolist() == [1, 1, 1]
    depth_under_tip = (j[ids, 2] - j[INDEX_TIP, 2]) * 1000
    assert depth_under_tip[0] > 80 and depth_under_tip[1] > 40 and depth_under_tip[2] < 30, depth_under_tip
    vis = _visible(renderers, hand_model, v, j)
    assert vis["new"][ids].tolist() == [False, False, True]
    assert vis["old"][ids].tolist() == [False, False, False]


def test_the_rule_on_counts_and_depths():
    """``joint_visibility`` at one pixel of the hand (first surface 0.50 m away), joints at several depths
    with several counts: one crossing is visible within 30 mm; three are hidden even 5 mm under the surface;
    an even count, or no count, follows the 15 mm tolerance; without counts, or without the tolerance, every
    joint follows the 15 mm tolerance (the rule before); over another hand's pixel the count plays no part."""
    mask = np.ones((5, 5), dtype=np.uint8)
    depth = np.full((5, 5), 0.5, dtype=np.float32)
    z = np.array([0.52, 0.54, 0.505, 0.51, 0.52, 0.52])
    crossings = np.array([1, 1, 3, 2, 2, 0])
    uv = np.full((len(z), 2), 2.0)
    args = (uv, z, 1, mask, depth, 0.015, 0.002)
    assert joint_visibility(*args, (), crossings, 0.03).tolist() == [True, False, False, True, False, False]
    before = [False, False, True, True, False, False]
    assert joint_visibility(*args, (), None, 0.03).tolist() == before
    assert joint_visibility(*args, (), crossings, None).tolist() == before
    other = mask.copy()
    other[2, 2] = 2  # the other hand's pixel, its hand's mask next to it: the 2 mm rule
    assert joint_visibility(uv, z, 1, other, depth, 0.015, 0.002, (), crossings, 0.03).tolist() == [False] * 6


def test_a_ray_through_the_wrist_opening_crosses_the_closed_surface(hand_model):
    """The camera looks into the wrist opening (fingers pointing away): rays to joints near the wrist enter
    the open mesh without crossing skin (an even count); closed at the opening, every count is odd (measured:
    seven of the fifteen enclosed joints go from 0 to 1 crossing, one from 2 to 3). The closed surface has no
    boundary edge."""
    from pipeline.geometry import edge_counts

    v, j = _hand(
        hand_model, "open", aa_to_matrix(np.array([0.0, np.pi / 2, 0.0])), lambda v, j: j[0] + [0.1, 0.0, 0.0]
    )
    faces = np.asarray(hand_model.faces["right"])
    cv, cf = closed_surface(v, faces)
    assert len(cv) == len(v) + 1 and len(cf) == len(faces) + 16
    _, undirected = edge_counts(cf)
    assert set(undirected.values()) == {2}  # every edge between two triangles: no boundary
    ids = list(ENCLOSED_JOINTS)
    open_count = ray_crossings(v, faces, j[ids])
    closed_count = ray_crossings(cv, cf, j[ids])
    through = open_count % 2 == 0
    assert through.any(), open_count  # some rays enter through the opening
    assert (closed_count[through] % 2 == 1).all() and (closed_count[~through] == open_count[~through]).all()


def test_negative_tolerances_are_refused():
    for field in ("own_tolerance", "other_tolerance", "wrist_tolerance", "enclosed_tolerance"):
        with pytest.raises(ValueError, match="tolerances must be >= 0"):
            RenderConfig(**{field: -0.01})
        with pytest.raises(ValueError, match="tolerances must be >= 0"):
            RenderConfig(**{field: float("nan")})
