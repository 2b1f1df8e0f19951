"""hands evaluate: metric maths, keypoint matching, the scorer interface, the MediaPipe detector, and the
command end to end on a small generated run (outputs, joinability, a self-contained report, bad input)."""

import argparse
import collections
import io
import json
import math
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from evaluation import metrics
from evaluation.detector import Detection
from evaluation.scorers import (
    Estimator3DScorer,
    Scorer,
    ScorerError,
    ScoreResult,
    make_scorer,
    register_scorer,
)

# -- metric maths --------------------------------------------------------------------------------------------


def _hand(n=21, size=100.0, x0=50.0, y0=60.0):
    """(21, 2) keypoints spread over a size x size box, and that box."""
    rng = np.random.default_rng(0)
    kp = np.column_stack([x0 + rng.uniform(0, size, n), y0 + rng.uniform(0, size, n)])
    kp[0], kp[1] = (x0, y0), (x0 + size, y0 + size)  # the box is exactly size x size
    return kp, np.array([x0, y0, x0 + size, y0 + size])


def test_pck_normalized_error_and_mse_on_known_offsets():
    gt, box = _hand()
    assert metrics.box_size(box) == 100.0
    offsets = np.zeros(21)
    offsets[:7], offsets[7:14], offsets[14:] = 2.0, 7.0, 30.0  # px, along x
    pred = gt + np.column_stack([offsets, np.zeros(21)])
    vis = np.ones(21, bool)
    assert metrics.pck(pred, gt, vis, 100.0, 0.05) == pytest.approx(7 / 21)
    assert metrics.pck(pred, gt, vis, 100.0, 0.1) == pytest.approx(14 / 21)
    assert metrics.normalized_error(pred, gt, vis, 100.0) == pytest.approx(
        (7 * 2 + 7 * 7 + 7 * 30) / 21 / 100
    )
    assert metrics.mse_2d(pred, gt, vis) == pytest.approx((7 * 4 + 7 * 49 + 7 * 900) / 21)
    vis[14:] = False  # occluded joints do not count
    assert metrics.pck(pred, gt, vis, 100.0, 0.1) == 1.0
    assert metrics.mse_2d(pred, gt, vis) == pytest.approx((4 + 49) / 2)
    m = metrics.hand_metrics(pred, gt, vis, box)
    assert m == {
        "error_norm": pytest.approx(0.045),
        "pck_005": 0.5,
        "pck_01": 1.0,
        "mse_2d": pytest.approx(26.5),
    }
    assert math.isnan(metrics.pck(pred, gt, np.zeros(21, bool), 100.0, 0.1))


def test_joint_offsets_in_the_hands_frame():
    """A hand pointing up the image (wrist below the middle knuckle): a keypoint moved toward the fingertips
    is +along, one moved toward the thumb +across, whichever side the thumb is on; joints the label does not
    show are NaN, and a hand seen along its axis keeps only the distance."""
    from pipeline.kinematics import JOINT_NAMES

    assert [JOINT_NAMES[j] for j in (metrics._WRIST, metrics._THUMB2, metrics._MIDDLE1)] == [
        "wrist",
        "thumb2",
        "middle1",
    ]
    gt, _ = _hand()
    gt[0], gt[9], gt[2] = (100.0, 150.0), (100.0, 70.0), (130.0, 120.0)  # the thumb on the +x side
    pred = gt + np.array([5.0, -10.0])  # 10 px up (toward the fingertips), 5 px toward the thumb
    vis = np.ones(21, bool)
    vis[20] = False
    out = metrics.joint_offsets(pred, gt, vis, 100.0)
    assert out.shape == (21, 3) and np.isnan(out[20]).all()
    np.testing.assert_allclose(out[:20], np.tile([0.1, 0.05, math.hypot(0.1, 0.05)], (20, 1)))
    mirrored = gt * np.array([-1.0, 1.0])  # the thumb on the -x side: toward it is now -x
    out = metrics.joint_offsets(mirrored + np.array([-5.0, -10.0]), mirrored, vis, 100.0)
    np.testing.assert_allclose(out[:20, :2], np.tile([0.1, 0.05], (20, 1)))
    # the fraction under 0.1 is the hand's PCK@0.1
    moved = gt + np.column_stack([np.linspace(0, 20, 21), np.zeros(21)])
    dist = metrics.joint_offsets(moved, gt, vis, 100.0)[:, 2]
    assert np.mean(dist[vis] < 0.1) == metrics.pck(moved, gt, vis, 100.0, 0.1)
    gt[9] = gt[0]  # seen along its axis: no frame
    out = metrics.joint_offsets(pred, gt, vis, 100.0)
    assert np.isnan(out[:, :2]).all() and np.isfinite(out[:20, 2]).all()


def test_box_overlap():
    a = [0.0, 0.0, 10.0, 10.0]
    assert metrics.box_overlap(a, [5.0, 5.0, 20.0, 20.0]) == 0.25
    assert metrics.box_overlap([5.0, 5.0, 20.0, 20.0], a) == pytest.approx(25 / 225)
    assert metrics.box_overlap(a, [-1.0, -1.0, 11.0, 11.0]) == 1.0
    assert metrics.box_overlap(a, [10.0, 0.0, 20.0, 10.0]) == 0.0  # touching edges: apart
    assert metrics.box_overlap([3.0, 3.0, 3.0, 9.0], a) == 0.0  # an empty box


def test_eligibility_rule():
    vis = np.zeros(21, bool)
    vis[:15] = True
    assert metrics.eligible(vis, [0, 0, 48, 10])
    assert not metrics.eligible(vis, [0, 0, 47.9, 47.9])  # box too small
    vis[14] = False
    assert not metrics.eligible(vis, [0, 0, 200, 200])  # too few visible joints
    assert metrics.eligible(vis, [0, 0, 200, 200], min_visible_joints=14, min_box_px=48)


def _det(kp, handedness="right", score=0.9):
    return Detection(np.asarray(kp, float), np.zeros(21), handedness, score)


def test_matching_uses_keypoints_not_handedness():
    right, rbox = _hand(x0=20)
    left, lbox = _hand(x0=300)
    vis = np.ones(21, bool)
    labels = {"right": (right, vis, rbox), "left": (left, vis, lbox)}
    # the detector calls the right hand "left" and the other way round, and lists them left first
    dets = [_det(left + 1.0, "right"), _det(right - 2.0, "left")]
    assert metrics.match_hands(labels, dets) == {
        "right": (1, pytest.approx(2.0 * math.sqrt(2) / 100)),
        "left": (0, pytest.approx(math.sqrt(2) / 100)),
    }
    # a detection far from every labelled hand is a miss (gate: error < 0.5 of the box)
    far = _det(right + np.array([60.0, 0.0]))
    assert metrics.match_hands(labels, [far]) == {}
    near = _det(right + np.array([40.0, 0.0]))
    assert metrics.match_hands(labels, [near]) == {"right": (0, pytest.approx(0.4))}
    # one detection close to both hands goes to the closer one; optimal assignment over the pair
    a, abox = _hand(x0=0)
    b = a + np.array([20.0, 0.0])
    labels = {"right": (a, vis, abox), "left": (b, vis, abox + [20, 0, 20, 0])}
    assert metrics.match_hands(labels, [_det(a + [16.0, 0])]) == {"left": (0, pytest.approx(0.04))}
    got = metrics.match_hands(labels, [_det(a + [12.0, 0]), _det(a + [3.0, 0])])
    assert {s: k for s, (k, _) in got.items()} == {"right": 1, "left": 0}


def _rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def test_mpjpe_and_pa_mpjpe_against_direct_computation():
    rng = np.random.default_rng(1)
    gt = rng.normal(0, 0.05, (21, 3)) + [0.1, -0.05, 0.6]
    R, s, t = _rotation([1, 2, 3], 0.7), 1.3, np.array([0.2, -0.1, 0.05])
    moved = s * gt @ R.T + t
    # no noise: the similarity transform is recovered exactly
    assert metrics.pa_mpjpe(moved, gt) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(metrics.procrustes_align(moved, gt), gt, atol=1e-12)
    # root-relative MPJPE is blind to translation; the direct formula
    shifted = gt + [0.3, 0.1, -0.2]
    assert metrics.mpjpe(shifted, gt) == pytest.approx(0.0, abs=1e-12)
    assert metrics.mpjpe(shifted, gt, root=None) == pytest.approx(np.linalg.norm([0.3, 0.1, -0.2]))
    noisy = gt + rng.normal(0, 0.004, gt.shape)
    direct = np.mean(np.linalg.norm((noisy - noisy[0]) - (gt - gt[0]), axis=1))
    assert metrics.mpjpe(noisy, gt) == pytest.approx(direct)
    # PA-MPJPE does not change when the prediction is moved by any similarity transform
    assert metrics.pa_mpjpe(s * noisy @ R.T + t, gt) == pytest.approx(metrics.pa_mpjpe(noisy, gt), rel=1e-9)
    # ... and it is the optimum: no perturbed transform aligns with a smaller summed squared error
    aligned = metrics.procrustes_align(noisy, gt)
    best = ((aligned - gt) ** 2).sum()
    c = noisy.mean(axis=0)
    for _ in range(200):
        Rp = _rotation(rng.normal(size=3), rng.normal(0, 0.05))
        cand = (noisy - c) @ Rp.T
        M = np.linalg.lstsq(np.column_stack([cand, np.ones(21)]), gt, rcond=None)[0]  # any linear map ...
        sp = np.mean(np.diag(M[:3]))  # ... reduced to a scale
        trial = sp * cand + (gt - sp * cand).mean(axis=0)
        assert ((trial - gt) ** 2).sum() >= best - 1e-12
    # a mirror image is not undone: no reflections
    assert metrics.pa_mpjpe(gt * [-1, 1, 1], gt) > 0.005


def test_handbooster_alignment_threshold():
    assert metrics.handbooster_alignment(25.0, 10.0) == pytest.approx(0.5)
    assert metrics.handbooster_alignment(24.0, 9.0) > 0.5
    assert metrics.handbooster_alignment(26.0, 5.0) < 0.5
    assert metrics.handbooster_alignment(5.0, 10.5) < 0.5
    assert metrics.handbooster_alignment(0.0, 0.0) == 1.0
    assert metrics.handbooster_alignment(500.0, 1.0) == 0.0
    assert metrics.handbooster_alignment(math.nan, 1.0) == 0.0


def test_camera_viewpoint_in_the_hand_frame():
    # a flat right hand 0.5 m in front of the camera, fingers along +x (camera right), palm towards the camera
    j = np.zeros((21, 3))
    for f in range(5):
        for k in range(4):
            j[1 + 4 * f + k] = [0.02 + 0.02 * k, 0.03 - 0.015 * f, 0.0]
    j[:, 2] = 0.5
    # palm normal of a right hand: (index1 - wrist) x (pinky1 - wrist), here -z: towards the camera
    assert np.cross(j[5] - j[0], j[17] - j[0])[2] < 0
    az, el = metrics.camera_viewpoint(j, "right")
    assert el == pytest.approx(90.0)
    mirrored = j * [-1, 1, 1]  # the left hand in the mirrored pose faces the camera too
    assert metrics.camera_viewpoint(mirrored, "left")[1] == pytest.approx(90.0)
    turned = (j - j[0]) * [1, -1, -1] + j[
        0
    ]  # turned 180 degrees about its own finger axis: the back faces us
    assert metrics.camera_viewpoint(turned, "right")[1] == pytest.approx(-90.0)
    # tilt the hand so the camera sits ahead of the fingertips: azimuth near 0, elevation 45
    R = _rotation([0, 1, 0], math.radians(45))
    az, el = metrics.camera_viewpoint((j - j[0]) @ R.T + [0, 0, 0.5], "right")
    assert (abs(az), el) == (pytest.approx(0.0, abs=1e-6), pytest.approx(45.0))


def test_alignment_rules():
    assert metrics.hand_alignment(False, True, 0.9) is None
    assert metrics.hand_alignment(True, False, math.nan) == 0.0
    assert metrics.hand_alignment(True, True, 0.7) == 0.7
    assert metrics.sample_alignment([None, 0.4, 0.9]) == 0.4
    assert metrics.sample_alignment([None, None]) is None
    r = ScoreResult("x", {}, None)
    assert r.passes(0.99)
    assert not ScoreResult("x", {}, 0.3).passes(0.5)
    assert ScoreResult("x", {"right": {"a": np.float32(0.5), "b": math.nan}}, 0.5).quality() == {
        "scorer": "x",
        "alignment": 0.5,
        "hands": {"right": {"a": 0.5, "b": None}},
    }


# -- scorer interface ----------------------------------------------------------------------------------------


class _Hand:
    def __init__(self, j3d, j2d=None, vis=None, bbox=None):
        self.joints_3d, self.joints_2d = j3d, j2d if j2d is not None else j3d[:, :2] * 1000
        self.joints_visible = vis if vis is not None else np.ones(21, bool)
        self.bbox = bbox if bbox is not None else np.array([0, 0, 100, 100.0])


class _Label:
    def __init__(self, **hands):
        self.hands = {"right": None, "left": None, **hands}


class _TestOnlyEstimator(Estimator3DScorer):
    """TEST-ONLY FAKE: returns the label's own joints, rotated about the wrist and shifted by 1 cm."""

    name = "test-only-fake-3d"

    def estimate(self, image, label):
        out = {}
        for s, h in label.hands.items():
            if h is not None and s == "right":
                j = np.asarray(h.joints_3d)
                out[s] = (j - j[0]) @ _rotation([0, 0, 1], 0.3).T + j[0] + [0.01, 0, 0]
        return out


def test_estimator3d_hook_reports_mpjpe_and_pa_mpjpe_in_mm():
    rng = np.random.default_rng(2)
    j = rng.normal(0, 0.04, (21, 3)) + [0, 0, 0.5]
    with _TestOnlyEstimator() as sc:
        res = sc.score(np.zeros((8, 8, 3), np.uint8), _Label(right=_Hand(j), left=_Hand(j + 0.1)))
    r = res.hands["right"]
    rel = (j - j[0]) @ _rotation([0, 0, 1], 0.3).T - (j - j[0])
    assert r["mpjpe_mm"] == pytest.approx(1000 * np.linalg.norm(rel, axis=1).mean())
    assert r["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)
    assert r["alignment"] == pytest.approx(metrics.handbooster_alignment(r["mpjpe_mm"], 0.0))
    left = res.hands["left"]
    assert (left["detected"], left["alignment"], math.isnan(left["mpjpe_mm"])) == (False, 0.0, True)
    assert res.alignment == 0.0  # the hand it did not find counts as 0


def test_summary_breakdowns_split_the_eligible_hands():
    from evaluation.run import summarize

    def row(facing, gesture, dist, objects, camera, detected, pck=0.8, eligible=True, overlap=math.nan):
        r = {"status": "ok", "objects": objects, "camera_kind": camera, "left_present": False}
        r.update(right_present=True, right_eligible=eligible, right_detected=detected, right_facing=facing)
        r.update(right_gesture=gesture, right_distance_m=dist, right_pck_01=pck if detected else None)
        r.update(right_box_overlap=overlap)  # NaN (None once in parquet): no other hand
        return r

    rows = [
        row("palm", "fist", 0.2, 1, "ego", True, 0.6, overlap=0.0),
        row("palm", "open_palm", 0.45, 0, "third", False, overlap=0.3),
        row("side", "fist", 0.8, 0, "third", True, 1.0, overlap=None),
        row("back", "fist", 0.3, 0, "third", True, 0.9),  # 0.3 m falls in the second bin
        row("back", "fist", 0.1, 0, None, True, eligible=False),  # not eligible: in no group
        row("back", "fist", float("nan"), 0, None, False),  # no distance, no camera kind: left out of those
    ]
    s = summarize(rows, [])
    assert s["eligible_hands"] == 5 and s["detected_hands"] == 3

    def rates(name):
        return {g: (v["detected"], v["eligible"]) for g, v in s[f"by_{name}"].items()}

    assert rates("facing") == {"palm": (1, 2), "back": (1, 2), "side": (1, 1)}
    assert rates("gesture") == {"fist": (3, 4), "open_palm": (0, 1)}
    assert rates("distance") == {"under 0.3 m": (1, 1), "0.3-0.5 m": (1, 2), "0.5 m and over": (1, 1)}
    assert rates("object") == {"no object": (2, 4), "held object": (1, 1)}
    assert rates("camera") == {"third": (2, 3), "ego": (1, 1)}
    assert rates("overlap") == {
        "one hand": (2, 3),
        "two hands, boxes apart": (1, 1),
        "two hands, boxes overlap": (0, 1),
    }
    assert s["by_gesture"]["fist"]["pck_01"] == pytest.approx((0.6 + 1.0 + 0.9) / 3)
    assert s["by_camera"]["third"]["detection_rate"] == pytest.approx(2 / 3)
    assert s["by_gesture"]["open_palm"]["pck_01"] is None
    # 95% intervals with the samples as clusters (evaluation.intervals), around each point estimate
    lo, hi = s["detection_rate_ci95"]
    assert 0.0 <= lo < s["detection_rate"] < hi <= 1.0
    lo, hi = s["pck_01_ci95"]
    assert 0.0 <= lo < s["pck_01"] < hi <= 1.0
    assert s["by_gesture"]["open_palm"]["pck_01_ci95"] is None  # no detected hand: no PCK interval
    assert s["by_facing"]["side"]["pck_01_ci95"] is None  # one detected hand


def test_scorer_registry_and_options():
    with pytest.raises(ScorerError, match="unknown scorer 'nope'"):
        make_scorer("nope")
    with pytest.raises(ScorerError, match="unknown scorer option"):
        make_scorer("mediapipe:min_box=3")
    with pytest.raises(ScorerError, match="bad value"):
        make_scorer("mediapipe:min_box_px=big")

    class _Fake(Scorer):  # TEST-ONLY FAKE, registered under a test name only
        name = "test-only-fake"

        def __init__(self, arg):
            self.arg = arg

        def score(self, image, label):
            return ScoreResult(self.name, {}, 1.0)

    register_scorer("test-only-fake", _Fake)
    sc = make_scorer("test-only-fake:abc")
    assert isinstance(sc, _Fake) and sc.arg == "abc" and sc.score(None, None).alignment == 1.0
    with pytest.raises(ScorerError):
        register_scorer("bad name:x", _Fake)


# -- the MediaPipe detector ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mediapipe():
    return pytest.importorskip("mediapipe", reason="the MediaPipe scorer needs mediapipe==0.10.14")


def test_landmark_order_maps_to_our_joints(mediapipe):
    from evaluation.detector import MEDIAPIPE_LANDMARKS, MEDIAPIPE_TO_JOINTS
    from pipeline.kinematics import JOINT_NAMES

    names = [lm.name for lm in sorted(mediapipe.solutions.hands.HandLandmark, key=int)]
    assert [names[i] for i in MEDIAPIPE_TO_JOINTS] == [mp for mp, _ in MEDIAPIPE_LANDMARKS]
    assert tuple(ours for _, ours in MEDIAPIPE_LANDMARKS) == JOINT_NAMES


def test_detector_inputs_and_lifecycle(mediapipe):
    from evaluation.detector import DetectorError, HandDetector, UnreadableImageError

    with HandDetector() as det:
        assert det.detect(np.zeros((128, 160, 3), np.uint8)) == []
        assert det.detect(np.full((64, 64), 128, np.uint8)) == []  # grey is expanded to RGB
        for bad in (
            np.zeros((8, 8, 3), np.float32),
            np.zeros((8, 8, 2), np.uint8),
            np.zeros((0, 8, 3), np.uint8),
        ):
            with pytest.raises(UnreadableImageError):
                det.detect(bad)
    det.close()  # idempotent
    with pytest.raises(DetectorError, match="closed"):
        det.detect(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DetectorError, match="min_detection_confidence"):
        HandDetector(min_detection_confidence=1.5)


# -- end to end on a generated run ---------------------------------------------------------------------------

SEED, N = 19, 7  # with this seed, MediaPipe finds and aligns well hands in samples 5 and 6 (on CPU)


@pytest.fixture(scope="module")
def run(tmp_path_factory, mediapipe):
    out = tmp_path_factory.mktemp("evaluate") / "run"
    cmd = [sys.executable, "-m", "flows.cli", "generate", "--out", str(out), "--samples", str(N)]
    cmd += ["--seed", str(SEED), "--no-prefect", "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.fixture
def hands(monkeypatch):
    """``flows.cli.main`` with ``evaluate`` registered (until flows/cli.py registers it itself)."""
    import flows.cli as cli
    from flows import evaluate_cli

    build = cli.build_parser

    def build_with_evaluate():
        p = build()
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        if "evaluate" not in sub.choices:
            evaluate_cli.register(sub)
        return p

    monkeypatch.setattr(cli, "build_parser", build_with_evaluate)
    return cli.main


def test_evaluate_end_to_end(run, hands, tmp_path, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "eval"
    assert (
        hands(["evaluate", str(run), "--out", str(out), "-q", "--workers", "2"]) == 0
    )  # a pool of detectors
    printed = capsys.readouterr().out
    assert (
        f"evaluated {N} samples" in printed and "2 workers" in printed and "FID/KID not computed" in printed
    )
    scores = pq.read_table(out / "scores.parquet").to_pylist()
    index = pq.read_table(run / "index.parquet").to_pylist()
    assert sorted(r["key"] for r in scores) == sorted(r["key"] for r in index)  # one row per key
    by_key = {r["key"]: r for r in index}
    for r in scores:  # joinable: the same index and shard as index.parquet
        assert (r["index"], r["shard"]) == (by_key[r["key"]]["index"], by_key[r["key"]]["shard"])
        assert r["status"] == "ok" and r["hand_type"] == by_key[r["key"]]["hand_type"]
        assert (r["alignment"] is None) == (not r["assessed"])
        assert r["alignment"] is None or 0.0 <= r["alignment"] <= 1.0
        for s in ("right", "left"):
            if not r[f"{s}_present"]:
                continue
            assert 0 <= r[f"{s}_visible_joints"] <= 21 and r[f"{s}_box_px"] > 0
            assert -180 <= r[f"{s}_azimuth"] <= 180 and -90 <= r[f"{s}_elevation"] <= 90
            if r[f"{s}_detected"]:
                assert 0 <= r[f"{s}_pck_005"] <= r[f"{s}_pck_01"] <= 1
                assert 0 <= r[f"{s}_error_norm"] < 0.5 and r[f"{s}_mse_2d"] >= 0
                assert 0.5 <= r[f"{s}_handedness_score"] <= 1 and len(r[f"{s}_keypoints"]) == 42
                dist = np.asarray(r[f"{s}_joint_offsets"], float).reshape(21, 3)[:, 2]
                seen = dist[np.isfinite(dist)]  # the label's visible joints, and PCK@0.1 from them
                assert len(seen) == r[f"{s}_visible_joints"]
                assert np.mean(seen < 0.1) == pytest.approx(r[f"{s}_pck_01"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == N and summary["unreadable"] == 0
    assert summary["detected_hands"] <= summary["eligible_hands"] <= summary["hands"]
    for k in ("detection_rate", "hand_conf", "pck_005", "pck_01", "alignment_mean"):
        assert summary[k] is None or 0.0 <= summary[k] <= 1.0, k
    assert summary["settings"]["min_visible_joints"] == 15 and summary["settings"]["min_box_px"] == 48
    assert set(summary["by_facing"]) == {"palm", "back", "side"}
    for name in ("facing", "gesture", "distance", "object", "camera", "overlap"):  # the prior: each in one
        groups = summary[f"by_{name}"]
        assert sum(v["eligible"] for v in groups.values()) == summary["eligible_hands"], name
        assert sum(v["detected"] for v in groups.values()) == summary["detected_hands"], name
        for v in groups.values():
            assert v["detection_rate"] == (v["detected"] / v["eligible"] if v["eligible"] else None)
            assert (v["pck_01"] is None) == (v["detected"] == 0)
            assert (v["detection_rate_ci95"] is None) == (v["eligible"] == 0)
    if summary["eligible_hands"]:
        lo, hi = summary["detection_rate_ci95"]
        assert lo <= summary["detection_rate"] <= hi
        assert "detection rate (detected / eligible hands; 95% interval" in (out / "report.html").read_text()
        assert f"detection rate {summary['detection_rate']:.3f} (95%: {lo:.3f}-{hi:.3f})" in printed
    # the keypoint table pools the detected eligible hands' visible joints
    det = [(r, s) for r in scores for s in ("right", "left") if r[f"{s}_eligible"] and r[f"{s}_detected"]]
    joints = summary["by_joint"]
    assert list(joints)[:2] == ["wrist", "thumb1"] and len(joints) == 21
    visible = sum(r[f"{s}_visible_joints"] for r, s in det)
    assert sum(v["visible"] for v in joints.values()) == visible
    if visible:
        pooled = sum(v["pck_01"] * v["visible"] for v in joints.values() if v["visible"]) / visible
        assert pooled == pytest.approx(
            sum(r[f"{s}_pck_01"] * r[f"{s}_visible_joints"] for r, s in det) / visible
        )
    for f, table in summary["by_joint_facing"].items():
        assert sum(v["visible"] for v in table.values()) == sum(
            r[f"{s}_visible_joints"] for r, s in det if r[f"{s}_facing"] == f
        )
    page = (out / "report.html").read_text()
    assert ("By keypoint" in page) == bool(det) and ("keypoints farthest from the label" in printed) == bool(
        det
    )
    for heading in (
        "By view",
        "By gesture",
        "By distance",
        "By held object",
        "By camera",
        "By the other hand",
    ):
        assert (heading in page) == (summary["eligible_hands"] > 0), heading
    for r in scores:  # the share of each hand's box under the other's, only with two hands
        for s, o in (("right", "left"), ("left", "right")):
            assert (r[f"{s}_box_overlap"] is None) == (not (r[f"{s}_present"] and r[f"{o}_present"]))
            assert r[f"{s}_box_overlap"] is None or 0.0 <= r[f"{s}_box_overlap"] <= 1.0
    for line in ("the side facing the camera: ", "gesture: ", "distance from the camera: ", "camera: "):
        assert (f"detected by {line}" in printed) == (summary["eligible_hands"] > 0), line
    assert page.count("data:image/png;base64,") >= 10 and "data:image/jpeg;base64," in page
    for external in ("http://", "https://", "<link", "<script", "src='/", 'src="'):
        assert external not in page
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "scores.parquet", "summary.json"]
    # the pool gives exactly the rows that one detector in this process gives
    from evaluation.run import EvalConfig, evaluate_run

    alone = evaluate_run(EvalConfig(run=str(run), out=str(tmp_path / "alone"), quiet=True, workers=1))
    assert alone.summary["workers"] == 1
    assert pq.read_table(alone.files["scores.parquet"]).equals(pq.read_table(out / "scores.parquet"))


def _records(run):
    from evaluation.run import iter_raw_records, run_shards
    from pipeline.schema import Label
    from sinks.records import decode_image

    for raw in iter_raw_records(run_shards(str(run)), collections.Counter()):
        yield Label.from_bytes(raw["label.json"], raw["verts.npy"]), decode_image(raw["image.jpg"])


def test_shifted_or_mirrored_image_scores_lower(run):
    with make_scorer("mediapipe") as sc:
        good = [(lab, im, r.alignment) for lab, im in _records(run) if (r := sc.score(im, lab)).alignment]
        good = [g for g in good if g[2] >= 0.5]
        if not good:
            pytest.skip(
                f"MediaPipe aligns no hand of this run (seed {SEED}) on this machine; nothing to compare"
            )
        for label, image, original in good:
            box = [h.bbox for h in label.hands.values() if h is not None]
            size = max(metrics.box_size(b) for b in box)
            cx = np.mean([(b[0] + b[2]) / 2 for b in box])
            dx = int(0.6 * size) * (1 if cx < image.shape[1] / 2 else -1)  # towards the wider side
            shifted = np.roll(image, dx, axis=1)
            assert sc.score(shifted, label).alignment < original - 0.25, label.key
            mirrored = np.ascontiguousarray(image[:, ::-1])
            assert sc.score(mirrored, label).alignment < original, label.key


def test_not_a_run_is_one_line_and_exit_2(run, hands, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, tmp_path / "missing"):
        assert hands(["evaluate", str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("hands: error: ") and "not a handgen run" in err[0], err
    assert hands(["evaluate", str(empty), "--reference", str(empty)]) == 2
    assert "need both --reference" in capsys.readouterr().err
    # a bad scorer spec fails before anything is written
    assert hands(["evaluate", str(run), "--scorer", "nope", "--out", str(tmp_path / "never")]) == 2
    assert "unknown scorer 'nope'" in capsys.readouterr().err and not (tmp_path / "never").exists()


def test_garbage_image_is_counted_not_fatal(run, hands, tmp_path, capsys):
    bad_run = tmp_path / "bad"
    bad_run.mkdir()
    src = sorted(run.glob("*.tar"))[0]
    victim = None
    with tarfile.open(src) as tin, tarfile.open(bad_run / src.name, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if m.name.endswith(".image.jpg") and victim is None:
                victim, data = m.name.split(".")[0], b"this is not a JPEG"
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    assert hands(["evaluate", str(bad_run), "--limit", "3", "-q"]) == 0
    assert "unreadable 1" in capsys.readouterr().out
    summary = json.loads((bad_run / "eval" / "summary.json").read_text())
    assert summary["samples"] == 3 and summary["unreadable"] == 1
    import pyarrow.parquet as pq

    rows = {r["key"]: r for r in pq.read_table(bad_run / "eval" / "scores.parquet").to_pylist()}
    assert rows[victim]["status"] == "unreadable" and rows[victim]["alignment"] is None


def test_fid_is_called_when_reference_and_weights_are_given(run, hands, tmp_path, capsys, monkeypatch):
    fid = pytest.importorskip("evaluation.fid")
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 32), (120, 80, 60)).save(photos / "a.png")
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"not read: compute_fid_kid is replaced below")
    calls = []

    def fake_compute(generated, reference, weights, device="cpu", **kw):  # records the wiring, no network
        calls.append((len(list(generated)), str(reference), str(weights), device))
        return {"fid": 12.5, "kid_mean": 0.01, "kid_std": 0.001, "fid_h": None, "fid_h_note": "no crops here"}

    monkeypatch.setattr(fid, "compute_fid_kid", fake_compute)
    out = tmp_path / "eval"
    args = ["evaluate", str(run), "--out", str(out), "--limit", "2", "-q", "--device", "cpu"]
    assert hands([*args, "--reference", str(photos), "--inception", str(weights)]) == 0
    assert calls == [(2, str(photos), str(weights), "cpu")]
    assert "FID 12.50" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fid"]["fid"] == 12.5 and summary["fid_note"] is None
    assert "no crops here" in (out / "report.html").read_text()
    # a reference folder without images, or a missing weights file: one line, exit 2, before any scoring
    empty = tmp_path / "empty"
    empty.mkdir()
    assert hands([*args, "--reference", str(empty), "--inception", str(weights)]) == 2
    assert hands([*args, "--reference", str(photos), "--inception", str(tmp_path / "nope.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "holds no images" in err[0] and "weights file not found" in err[1], err


def test_run_behind_an_fsspec_url(run, tmp_path):
    import fsspec

    from evaluation.run import EvalConfig, evaluate_run

    fs = fsspec.filesystem("memory")
    for p in run.iterdir():
        if p.is_file():
            fs.pipe(f"/evalrun/{p.name}", p.read_bytes())
    try:
        res = evaluate_run(EvalConfig(run="memory://evalrun", limit=2, quiet=True, worst=1))
        assert res.summary["samples"] == 2 and res.out_dir == "memory://evalrun/eval"
        assert fs.exists("/evalrun/eval/scores.parquet") and fs.exists("/evalrun/eval/report.html")
    finally:
        fs.rm("/evalrun", recursive=True)
