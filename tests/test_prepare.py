"""hands prepare: AttentionHand training tuples from the InterHand2.6M fixture with real (tiny JPEG)
photos."""

import json
import subprocess
import sys

import numpy as np
import pytest

from evaluation.validate import validate
from pipeline.imaging import Letterbox, crop_resample
from sinks.reader import open_shards
from sinks.records import decode_record
from tests.source_fixtures import write_interhand, write_interhand_photos

MISSING = "Capture0/ROM01_Interaction/cam400263/image0012.jpg"
WRONG_SIZE = "Capture0/ROM01_Interaction/cam400263/image0011.jpg"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, hand_model):
    root = tmp_path_factory.mktemp("ih")
    write_interhand(root, hand_model)
    photos = write_interhand_photos(
        root, hand_model, missing=(MISSING,), wrong_size=(WRONG_SIZE,), padding_only=(1, 400262)
    )
    out = root / "prepared"
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "prepare",
        "--source",
        f"interhand:{root}",
        "--out",
        str(out),
        "--samples",
        "16",
        "--shard-size",
        "8",
        "--no-prefect",
        "-q",
        "--run-tag",
        "ihprep",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return root, out, photos, r


def _records(out):
    import tarfile

    recs = []
    for p in sorted(out.glob("*.tar")):
        with tarfile.open(p) as tf:
            files: dict = {}
            for m in tf.getmembers():
                key, _, name = m.name.partition(".")
                files.setdefault(key, {"__key__": key})[name] = tf.extractfile(m).read()
        recs += [decode_record(f) for f in files.values()]
    return recs


def test_letterbox_geometry():
    lb = Letterbox.fit((512, 334), 512)
    assert lb.new_size == (512, 334) and lb.offset == (89, 0) and lb.scale == (1.0, 1.0)
    lb = Letterbox.fit((300, 400), 128)  # wider than tall: scaled 0.32, padded top and bottom
    assert lb.new_size == (96, 128) and lb.offset == (0, 16)
    M = lb.matrix()
    # the image's outer pixel edges map onto the letterboxed image's content edges
    assert np.allclose((M @ [-0.5, -0.5, 1])[:2], [-0.5, 15.5]) and np.allclose(
        (M @ [399.5, 299.5, 1])[:2], [127.5, 111.5]
    )
    assert lb.valid_region().sum() == 96 * 128
    img = np.zeros((300, 400, 3), np.uint8)
    img[100:200, 100:300] = 255  # a bright box: its letterboxed position follows M
    out = lb.apply(img)
    ys, xs = np.nonzero(out[..., 0] > 127)
    (x0, y0), (x1, y1) = (M @ [99.5, 99.5, 1])[:2], (M @ [299.5, 199.5, 1])[:2]
    assert abs(xs.min() - 0.5 - x0) <= 1 and abs(xs.max() + 0.5 - x1) <= 1 and abs(ys.min() - 0.5 - y0) <= 1
    assert abs(ys.max() + 0.5 - y1) <= 1


def test_crop_resample_matches_local_mapping():
    from pipeline.camera import local_to_global

    H = W = 100
    img = np.zeros((H, W, 3), np.uint8)
    xx, yy = np.meshgrid(np.arange(W), np.arange(H))
    img[..., 0], img[..., 1] = xx * 2, yy * 2  # pixel value = 2 x its centre coordinate
    box = np.array([10.25, 20.5, 74.25, 84.5])
    out = crop_resample(img, box, 64)
    loc = np.array([[3, 7], [40, 12], [60, 50]])
    g = local_to_global(loc, box, 64)
    got = out[loc[:, 1], loc[:, 0], :2] / 2.0
    assert np.abs(got - g).max() <= 0.5  # bilinear on a linear ramp, up to uint8 rounding
    corner = crop_resample(img, np.array([-50.0, -50.0, 50.0, 50.0]), 20)
    assert (corner[:9, :9] == 0).all() and (corner[11:, 11:, 0] > 0).all()  # black outside the image


def test_prepare_counts_and_alignment(prepared):
    root, out, photos, r = prepared
    m = json.loads((out / "manifest.json").read_text())
    skipped = m["counts"]["skipped"]
    # 16 fixture images: 7 with invalid annotations (InterHand's own skips), 1 photo missing, 1 of the wrong
    # size, 1 whose hands land on the letterbox padding only; 6 written
    assert skipped == {
        "bad_mano_params": 4,
        "hand_type_invalid": 2,
        "no_camera": 1,
        "no_source_image": 1,
        "image_size_mismatch": 1,
        "no_overlap": 1,
    }
    assert m["counts"]["written"] == 6 and m["config"]["mode"] == "prepare"
    recs = _records(out)
    assert len(recs) == 6
    for rec in recs:
        label = rec["label"]
        lb = Letterbox.from_json(label.source["letterbox"])
        assert label.image_size == (512, 512) and rec["image"].shape == (512, 512, 3)
        assert rec["image_local"].shape == rec["mesh_local"].shape == (512, 512, 3)
        assert label.generator["name"] == "real" and label.caption and label.hand_token_indices
        # never stretched: black padding beside the photo (beyond the JPEG block that straddles the edge)
        far = ~lb.valid_region()
        far[:, lb.offset[0] - 8 : lb.offset[0] + lb.new_size[1] + 8] = False
        assert lb.offset[0] == 89 and far.any() and rec["image"][far].max() <= 3
        # the label's visible 2D joints fall inside the rendered mask, and the rendered mask sits on the
        # photo's hands
        skin = np.abs(rec["image"].astype(int) - (225, 180, 150)).sum(-1) < 60
        mask = rec["mask"] > 0
        for side in ("right", "left"):
            h = label.hands[side]
            if h is None:
                continue
            uv = np.rint(h.joints_2d[h.joints_visible]).astype(int)
            assert len(uv) > 0
            grown = np.zeros_like(mask)  # within 1 px (the visibility rule)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    grown |= np.roll(np.roll(mask, dy, 0), dx, 1)
            assert grown[uv[:, 1], uv[:, 0]].all()
        iou = (skin & mask).sum() / (skin | mask).sum()
        assert iou > 0.9, iou
        # the local RGB crop is the same resampling as the local mesh image: their hand regions agree
        skin_l = np.abs(rec["image_local"].astype(int) - (225, 180, 150)).sum(-1) < 60
        mesh_l = rec["mesh_local"].any(-1)
        assert (skin_l & mesh_l).sum() / (skin_l | mesh_l).sum() > 0.85
    report = validate(out)
    assert report.passed, report.errors
    batch = next(iter(open_shards(out, split_by_worker=False)))
    assert batch["image"].shape == (512, 512, 3)


def test_prepare_refuses_prior(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", "prepare", "--source", "prior", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "needs a dataset source" in r.stderr and "Traceback" not in r.stderr


def test_prepare_reinterhand_with_fisheye(tmp_path, hand_model):
    """Re:InterHand: Mugsy photos (square) and egocentric fisheye photos (640x480, letterboxed to
    512x384 + padding, distortion kept); the records re-render exactly (hands validate)."""
    from tests.source_fixtures import write_reinterhand

    write_reinterhand(tmp_path / "rih", hand_model)
    out = tmp_path / "prepared"
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "prepare",
        "--source",
        f"reinterhand:{tmp_path / 'rih'},ego=1",
        "--out",
        str(out),
        "--samples",
        "12",
        "--shard-size",
        "12",
        "--no-prefect",
        "-q",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    recs = _records(out)
    assert recs
    ego = [x for x in recs if x["label"].camera.dist is not None]
    assert ego, [x["label"].source for x in recs]
    for rec in ego:
        lb = Letterbox.from_json(rec["label"].source["letterbox"])
        assert lb.orig_size == (480, 640) and lb.new_size == (384, 512) and lb.offset == (0, 64)
        assert len(rec["label"].camera.dist) == 4
    m = json.loads((out / "manifest.json").read_text())
    assert (
        m["counts"]["written"] == len(recs)
        and m["counts"]["written"] + sum(m["counts"]["skipped"].values()) == 12
    )
    report = validate(out)
    assert report.passed, report.errors


def test_prepare_captions_the_photo_with_qwen_vl(prepared, tmp_path):
    """--captioner qwen-vl:PATH sees each tuple's letterboxed photo (never the 'no source image' fallback)."""
    from tests.qwen_tiny import save_tiny_qwen2vl

    root = prepared[0]
    qwen = save_tiny_qwen2vl(tmp_path / "qwen")
    out = tmp_path / "q"
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "prepare",
        "--source",
        f"interhand:{root}",
        "--out",
        str(out),
        "--samples",
        "6",
        "--captioner",
        f"qwen-vl:{qwen}",
        "--no-prefect",
        "-q",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    recs = _records(out)
    assert recs
    for rec in recs:
        prompt = rec["label"].generator["prompt"]
        assert prompt.get("fallback") != "no source image"
        assert prompt["captioner"] == "qwen-vl" or prompt.get("fallback") == "empty answer", prompt
        assert rec["label"].caption
