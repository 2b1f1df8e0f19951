"""Geometry, topology, skinning and pose/shape spaces of the procedural stand-in hand."""

import numpy as np
import pytest

from pipeline import geometry, kinematics, standin
from pipeline.gestures import gesture_pose
from pipeline.kinematics import JOINT_NAMES, TIP_VERTEX_IDS


def test_counts_and_keys(standin_right):
    d = standin_right
    assert d["v_template"].shape == (778, 3)
    assert d["f"].shape == (1538, 3)
    assert d["J_regressor"].shape == (16, 778)
    assert d["weights"].shape == (778, 16)
    assert d["shapedirs"].shape == (778, 3, 10)
    assert d["posedirs"].shape == (778, 3, 135)
    assert d["hands_components"].shape == (45, 45)
    assert d["hands_mean"].shape == (45,)
    assert d["kintree_table"].tolist()[0] == [4294967295, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
    assert len(np.unique(d["f"])) == 778  # no unused vertex


def test_manifold_with_one_wrist_loop(standin_right):
    f = standin_right["f"]
    directed, undirected = geometry.edge_counts(f)
    assert max(directed.values()) == 1, "consistently oriented: each directed edge used once"
    uses = np.array(list(undirected.values()))
    assert set(uses.tolist()) == {1, 2}
    loops = geometry.boundary_loops(f)
    assert len(loops) == 1 and len(loops[0]) == 16
    V, E, F = 778, len(undirected), len(f)
    assert V - E + F == 1  # a disc: genus 0 with one hole
    # the loop is at the wrist: farthest from the fingertips along the hand axis
    v = standin_right["v_template"]
    assert v[loops[0], 0].min() > v[:, 0].max() - 0.01


def test_outward_orientation(standin_right):
    v, f = standin_right["v_template"], standin_right["f"].astype(np.int64)
    loop = geometry.boundary_loops(f)[0]
    c = v[loop].mean(0)
    # close the wrist hole with a fan to the loop centre (the fan's winding follows the loop)
    cap = np.array([[loop[(i + 1) % len(loop)], loop[i], len(v)] for i in range(len(loop))])
    vv, ff = np.vstack([v, c]), np.vstack([f, cap])
    vol = np.einsum("ij,ij->i", vv[ff[:, 0]], np.cross(vv[ff[:, 1]], vv[ff[:, 2]])).sum() / 6.0
    assert vol > 0, "faces must wind counter-clockwise seen from outside"
    assert 2e-4 < vol < 6e-4  # a human hand is roughly 300-500 cm^3


def test_proportions_and_tips(standin_right):
    v, J = standin_right["v_template"], standin_right["J"]
    wrist_to_middle_tip = np.linalg.norm(v[TIP_VERTEX_IDS["middle"]] - J[0])
    assert 0.175 <= wrist_to_middle_tip <= 0.195
    for finger, vid in TIP_VERTEX_IDS.items():
        part = (
            standin_right["part_ids"] == {"index": 1, "middle": 2, "ring": 3, "pinky": 4, "thumb": 5}[finger]
        )
        base = J[kinematics.FINGER_JOINTS[finger][0]]
        dist = np.linalg.norm(v[part] - base, axis=1)
        assert np.linalg.norm(v[vid] - base) >= dist.max() - 1e-3, (
            f"{finger} tip vertex is not the finger's end"
        )


def test_rest_pose_free_of_self_intersection(standin_right, hand_model):
    assert len(geometry.edge_triangle_intersections(standin_right["v_template"], standin_right["f"])) == 0
    mean = hand_model("right", np.zeros((1, 48)), np.zeros((1, 10)), np.zeros((1, 3))).vertices[0].numpy()
    assert len(geometry.edge_triangle_intersections(mean, standin_right["f"])) == 0


def test_intersection_check_can_fail(standin_right):
    v = standin_right["v_template"].copy()
    tip = TIP_VERTEX_IDS["index"]
    v[tip] = standin_right["J"][0]  # drag the index tip through the palm
    assert len(geometry.edge_triangle_intersections(v, standin_right["f"])) > 0


def test_skinning_weights_smooth(standin_right):
    w = standin_right["weights"]
    assert np.all(w >= 0) and np.allclose(w.sum(1), 1.0)
    edges = geometry.unique_edges(standin_right["f"])
    jump = np.abs(w[edges[:, 0]] - w[edges[:, 1]]).max(1)  # largest change of any joint's weight
    assert jump.max() <= 0.55, f"a joint's weight jumps by {jump.max():.2f} across an edge"
    assert jump.mean() < 0.2
    # every finger joint is blended: the ring at the joint carries both the parent's and the child's bone
    w_at = standin_right["J_regressor"] > 0
    parents = kinematics.PARENTS
    for j in range(1, 16):
        if j in (13,):  # the thumb base is regressed from the palm, not a ring of its own
            continue
        ring = w_at[j]
        assert (w[ring, j] > 0.2).all() and (w[ring, parents[j]] > 0.2).all(), f"joint {j} is not blended"
    assert np.allclose(standin_right["J_regressor"].sum(1), 1.0)


@pytest.mark.parametrize("finger", ["thumb", "index", "middle", "ring", "pinky"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_flexion_bends_toward_palm(hand_model, finger, side):
    axes = kinematics.flexion_axes(side)
    palm_centre_idx = [0, 5, 9, 13, 17]  # wrist and the four knuckles
    tip_idx = JOINT_NAMES.index(f"{finger}4")
    dists = []
    # the thumb swings across the palm toward the little finger's knuckle; the fingers curl into the palm
    for angle in (0.0, 0.3, 0.6, 0.9) if finger == "thumb" else (0.0, 0.4, 0.8, 1.2):
        hand = np.zeros((15, 3))
        for j in kinematics.FINGER_JOINTS[finger]:
            hand[j - 1] = angle * axes[j - 1]
        pose = np.concatenate([np.zeros(3), hand.reshape(45) - hand_model.hands_mean[side]])
        J = hand_model(side, pose[None], np.zeros((1, 10)), np.zeros((1, 3))).joints[0].numpy()
        palm = J[palm_centre_idx].mean(0)
        normal_side = -1.0  # palm faces -y in the canonical frame (both hands)
        palm_point = palm + normal_side * np.array([0.0, 0.03, 0.0])
        if finger == "thumb":
            palm_point = J[JOINT_NAMES.index("pinky1")]
        dists.append(np.linalg.norm(J[tip_idx] - palm_point))
    assert all(b < a for a, b in zip(dists, dists[1:], strict=False)), (
        f"{side} {finger}: {np.round(dists, 4)}"
    )


def test_left_is_mirror_of_right(standin_right, standin_left, hand_model):
    m = np.array([-1.0, 1.0, 1.0])
    assert np.allclose(standin_left["v_template"], standin_right["v_template"] * m)
    assert np.array_equal(standin_left["f"], standin_right["f"][:, [0, 2, 1]])
    assert np.allclose(standin_left["shapedirs"], standin_right["shapedirs"] * m[None, :, None])
    rng = np.random.default_rng(0)
    pose_r = np.concatenate([rng.normal(0, 0.3, 3), rng.normal(0, 0.3, 45)])
    shape = rng.normal(0, 1, 10)
    trans = np.array([0.02, -0.01, 0.4])
    pose_l = pose_r.reshape(16, 3) * np.array([1.0, -1.0, -1.0])
    r = hand_model("right", pose_r[None], shape[None], trans[None])
    left = hand_model("left", pose_l.reshape(1, 48), shape[None], (trans * m)[None])
    assert np.allclose(left.vertices[0].numpy(), r.vertices[0].numpy() * m, atol=1e-5)
    assert np.allclose(left.joints[0].numpy(), r.joints[0].numpy() * m, atol=1e-5)


def test_pose_space(standin_right):
    comps = standin_right["hands_components"]
    assert np.allclose(comps @ comps.T, np.eye(45), atol=1e-10)
    flex = kinematics.flexion_axes("right")
    mean = standin_right["hands_mean"].reshape(15, 3)
    angles = (mean * flex).sum(1)
    assert np.all(angles >= 0) and 0.05 < angles.mean() < 0.4, "mean pose is slightly relaxed"
    # the first component is the all-finger curl synergy
    curl = np.zeros((15, 3))
    for f in ("index", "middle", "ring", "pinky"):
        for j in kinematics.FINGER_JOINTS[f]:
            curl[j - 1] = flex[j - 1]
    assert comps[0] @ curl.reshape(45) / np.linalg.norm(curl) > 0.99


def _measure(J, v):
    names = {n: i for i, n in enumerate(JOINT_NAMES)}
    return {
        "size": np.linalg.norm(v - J[0], axis=1).mean(),
        "middle_len": np.linalg.norm(J[names["middle4"]] - J[names["middle1"]]),
        "palm_width": np.linalg.norm(J[names["index1"]] - J[names["pinky1"]]),
        "palm_len": np.linalg.norm(J[names["middle1"]] - J[0]),
        "thumb_len": np.linalg.norm(J[names["thumb4"]] - J[names["thumb2"]]),
        "index_len": np.linalg.norm(J[names["index4"]] - J[names["index1"]]),
        "ring_len": np.linalg.norm(J[names["ring4"]] - J[names["ring1"]]),
        "pinky_len": np.linalg.norm(J[names["pinky4"]] - J[names["pinky1"]]),
        "thickness": np.ptp(v[:, 1]),
    }


@pytest.mark.parametrize(
    "beta, grows, steady",
    [
        (0, ["size", "middle_len", "palm_width", "palm_len"], []),
        (1, ["middle_len", "thumb_len"], ["palm_width", "palm_len"]),
        (2, ["palm_width"], ["middle_len", "palm_len"]),
        (4, ["palm_len"], ["middle_len", "palm_width"]),
        (6, ["thumb_len"], ["middle_len", "palm_width"]),
        (8, ["pinky_len"], ["middle_len", "index_len"]),
    ],
)
def test_shape_components_mean_what_they_say(hand_model, beta, grows, steady):
    out = []
    for b in (-2.0, 2.0):
        shape = np.zeros((1, 10))
        shape[0, beta] = b
        o = hand_model("right", np.zeros((1, 48)), shape, np.zeros((1, 3)))
        out.append(_measure(o.joints[0].numpy(), o.vertices[0].numpy()))
    lo, hi = out
    for k in grows:
        assert hi[k] > lo[k] * 1.05, f"beta {beta} should grow {k}: {lo[k]:.4f} -> {hi[k]:.4f}"
    for k in steady:
        assert abs(hi[k] - lo[k]) < 0.025 * lo[k], f"beta {beta} should keep {k}: {lo[k]:.4f} -> {hi[k]:.4f}"


def test_index_ring_ratio_and_thickness(hand_model):
    def measure(beta, b):
        shape = np.zeros((1, 10))
        shape[0, beta] = b
        o = hand_model("right", np.zeros((1, 48)), shape, np.zeros((1, 3)))
        return _measure(o.joints[0].numpy(), o.vertices[0].numpy())

    lo, hi = measure(7, -2.0), measure(7, 2.0)
    assert hi["index_len"] > lo["index_len"] and hi["ring_len"] < lo["ring_len"]
    lo, hi = measure(5, -2.0), measure(5, 2.0)
    assert hi["thickness"] > lo["thickness"] * 1.05


def test_build_is_deterministic():
    a, b = standin.build_standin("right"), standin.build_standin("right")
    for k in ("v_template", "f", "weights", "shapedirs", "hands_components"):
        assert np.array_equal(a[k], b[k])


def test_gestures_render_distinct_shapes(hand_model):
    poses = np.stack(
        [gesture_pose(g, hand_model.hands_mean["right"]) for g in ("open", "fist", "point", "pinch")]
    )
    J = hand_model("right", poses, np.zeros((4, 10)), np.zeros((4, 3))).joints.numpy()
    tip = {n: JOINT_NAMES.index(n) for n in ("thumb4", "index4", "middle4")}
    # open: index tip far from the wrist; fist: close; point: index extended, middle curled; pinch: tips meet
    assert np.linalg.norm(J[0, tip["index4"]] - J[0, 0]) > 0.15
    assert np.linalg.norm(J[1, tip["index4"]] - J[1, 0]) < 0.10
    assert (
        np.linalg.norm(J[2, tip["index4"]] - J[2, 0])
        > 0.15
        > 0.10
        > np.linalg.norm(J[2, tip["middle4"]] - J[2, 0])
    )
    assert np.linalg.norm(J[3, tip["thumb4"]] - J[3, tip["index4"]]) < 0.01


def test_version_2_adds_palmar_tissue_only():
    v1, v2 = standin.build_standin("right", 1), standin.build_standin("right", 2)
    assert v2["standin_version"] == 2 and v1["standin_version"] == 1
    assert np.array_equal(v1["f"], v2["f"]) and np.array_equal(v1["part_ids"], v2["part_ids"])
    d = v2["v_template"] - v1["v_template"]
    moved = np.linalg.norm(d, axis=1)
    part = v2["part_ids"]
    assert (d[:, 1] <= 1e-12).all()  # tissue is added on the palm's side (-y), never toward the back
    back = (v1["v_template"][:, 1] > 0.005) & np.isin(part, (0, 5))
    assert back.sum() > 50 and moved[back].max() < 1e-9  # the back of the palm and thumb stays
    top = int(np.argmax(moved))  # the thenar eminence: the highest mound, on the thumb's side of the palm
    assert part[top] == 0 and 0.006 < moved[top] <= 0.007 + 1e-9 and v1["v_template"][top, 2] > 0.01
    fingers = np.isin(part, (1, 2, 3, 4))
    assert 0.001 < moved[fingers].max() <= standin.FINGER_PAD + 1e-9  # the fingers' palmar pads
    assert np.abs(v2["J"] - v1["J"]).max() < 0.002  # the regressor's rings hold a few raised vertices
    assert len(geometry.edge_triangle_intersections(v1["v_template"], v1["f"])) == 0
    assert len(geometry.edge_triangle_intersections(v2["v_template"], v2["f"])) == 0
    with pytest.raises(ValueError, match="stand-in version must be one of"):
        standin.build_standin("right", 9)


def _cross_section(d: dict, part: int, x: float) -> tuple[float, float]:
    """(width along z, depth along y), metres, of a finger's ring near canonical ``x`` (rest pose)."""
    v = d["v_template"]
    ring = (d["part_ids"] == part) & (np.abs(v[:, 0] - x) < 0.003)
    assert ring.sum() == 10  # one ring of the finger's tube
    return float(np.ptp(v[ring, 2])), float(np.ptp(v[ring, 1]))


def test_version_3_makes_fingers_wider_than_deep(standin_right):
    v2, v3 = standin.build_standin("right", 2), standin_right  # the default
    assert v3["standin_version"] == standin.STANDIN_VERSION == 3
    fingers = np.isin(v3["part_ids"], (1, 2, 3, 4))
    assert np.array_equal(v2["v_template"][~fingers], v3["v_template"][~fingers])  # palm and thumb as before
    for part, x in ((1, -0.016), (2, -0.020), (3, -0.016), (4, 0.0)):  # mid proximal phalanges
        w2, d2 = _cross_section(v2, part, x)
        w3, d3 = _cross_section(v3, part, x)
        assert w3 == pytest.approx(w2, abs=3e-4)  # as wide as before
        assert d2 / w2 > 1.05 and 0.88 < d3 / w3 < 0.98, (part, d2 / w2, d3 / w3)
