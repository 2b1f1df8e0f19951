"""bench/detector_probe.py's probes that move labels keep image and labels together."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def probe():
    sys.path.insert(0, str(BENCH))  # for ``_benchpath``, which takes bench/ off the path again
    spec = importlib.util.spec_from_file_location("detector_probe", BENCH / "detector_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if str(BENCH) in sys.path:  # ``_benchpath`` was imported before (it runs once)
        sys.path.remove(str(BENCH))
    return mod


def _scene(H=96, W=128):
    """An image with one bright pixel per joint, at the joints' rounded positions, and its labels."""
    rng = np.random.default_rng(0)
    j = np.c_[rng.integers(30, 90, 21), rng.integers(20, 70, 21)].astype(np.float64)
    img = np.zeros((H, W, 3), np.uint8)
    img[j[:, 1].astype(int), j[:, 0].astype(int)] = 255
    box = np.array([j[:, 0].min(), j[:, 1].min(), j[:, 0].max(), j[:, 1].max()])
    return img, {"right": (j, np.ones(21, bool), box)}


def test_flip_mirrors_image_and_labels(probe):
    img, labels = _scene()
    out, moved = probe._flip(img, np.zeros(img.shape[:2], np.uint8), labels)
    j, _, box = moved["right"]
    assert (out[j[:, 1].astype(int), j[:, 0].astype(int)] == 255).all()
    assert (box[:2] <= j.min(0)).all() and (box[2:] >= j.max(0)).all()
    back, again = probe._flip(out, None, moved)
    assert np.array_equal(back, img) and np.allclose(again["right"][0], labels["right"][0])


def test_crop2x_moves_the_joints_with_the_image(probe):
    img, labels = _scene()
    out, moved = probe._crop2x(img, None, labels)
    j = moved["right"][0]
    assert out.shape == img.shape
    # each joint's pixel stays bright after the resampling (bilinear spreads it, it does not move it)
    lit = out[np.rint(j[:, 1]).astype(int), np.rint(j[:, 0]).astype(int)].max(axis=1)
    assert (lit > 60).all(), lit


def test_every_probe_keeps_the_image_shape(probe):
    img, labels = _scene()
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[30:60, 40:80] = 1
    for name, fn in probe.PROBES.items():
        out, moved = fn(img, mask, labels)
        assert out.shape == img.shape and out.dtype == np.uint8, name
        assert set(moved) == set(labels), name


def test_rotations_turn_the_hands_axis_and_move_the_joints_with_the_image(probe):
    img, labels = _scene()
    j0 = labels["right"][0]
    for dx in (-1, 0, 1):  # 3 x 3 bright blocks: a bilinear turn spreads a single pixel over four
        for dy in (-1, 0, 1):
            img[j0[:, 1].astype(int) + dy, j0[:, 0].astype(int) + dx] = 255
    for name, target in (("upright", -np.pi / 2), ("upside_down", np.pi / 2)):
        out, moved = probe.PROBES[name](img, None, labels)
        j, _, box = moved["right"]
        axis = j[9] - j[0]
        assert np.arctan2(axis[1], axis[0]) == pytest.approx(target, abs=1e-9), name
        assert np.linalg.norm(axis) == pytest.approx(np.linalg.norm(j0[9] - j0[0]))  # a turn, not a scaling
        inside = (j[:, 0] >= 0) & (j[:, 0] <= 127) & (j[:, 1] >= 0) & (j[:, 1] <= 95)
        lit = out[np.rint(j[inside, 1]).astype(int), np.rint(j[inside, 0]).astype(int)].max(axis=1)
        # each joint's pixel went with it
        assert inside.sum() >= 15 and (lit > 100).all() and lit.mean() > 200, (name, lit)
        assert max(box[2] - box[0], box[3] - box[1]) == pytest.approx(max(np.ptp(j0[:, 0]), np.ptp(j0[:, 1])))
    a, _ = probe.PROBES["rotate_random"](img, None, labels)
    b, _ = probe.PROBES["rotate_random"](img, None, labels)
    assert np.array_equal(a, b)  # the same image turns by the same angle
