"""Tiny datasets in the exact InterHand2.6M and Re:InterHand formats, generated from the hand model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.hand_model import PROJECT_TO_INTERHAND
from pipeline.rotations import aa_to_matrix


def _world_hand(hm, side, rng, x):
    pose = np.concatenate([rng.normal(0, 0.4, 3), rng.normal(0, 0.15, 45)])
    shape = rng.normal(0, 0.8, 10)
    trans = np.array([x, rng.normal(0, 0.02), rng.normal(0, 0.02)])
    out = hm(side, pose[None], shape[None], trans[None])
    return {"pose": pose.tolist(), "shape": shape.tolist(), "trans": trans.tolist()}, out.joints[0].numpy()


def interhand_cameras():
    """Two cameras looking at the origin from 1 m (mm units, X_cam = R (X_world - campos))."""
    R2 = aa_to_matrix(np.array([0.0, -0.5, 0.0]))
    pos2 = -R2.T @ np.array([0.0, 0.0, 1000.0])
    return {"400262": (np.eye(3), np.array([0.0, 0.0, -1000.0])), "400263": (R2, pos2)}


def write_interhand(root: Path, hm, split: str = "train") -> dict:
    """Captures 0 and 1. Frames of capture 0: 10 interacting, 11 right only (left null), 12 left only,
    13 hand_type_valid 0, 14 both hands but the right root invalid, 15 NaN in the right pose, 16 a 45-value
    pose. Capture 1: frame 5 interacting, seen by camera 400262 and by 400999 (missing from camera.json).
    Returns the world parameters and joints for checks."""
    rng = np.random.default_rng(7)
    cams = interhand_cameras()
    ann_dir = root / "annotations" / split
    ann_dir.mkdir(parents=True, exist_ok=True)
    camera_json = {
        str(c): {
            "campos": {k: v[1].tolist() for k, v in cams.items()},
            "camrot": {k: v[0].tolist() for k, v in cams.items()},
            "focal": {k: [1200.0, 1210.0] for k in cams},
            "princpt": {k: [166.0, 255.0] for k in cams},
        }
        for c in (0, 1)
    }
    del camera_json["1"]["campos"]["400263"], camera_json["1"]["camrot"]["400263"]
    frames = {0: [10, 11, 12, 13, 14, 15, 16], 1: [5]}
    mano, joint3d, world = {}, {}, {}
    images, annotations = [], []
    for cap, frs in frames.items():
        mano[str(cap)], joint3d[str(cap)] = {}, {}
        for fr in frs:
            hands, joints = {}, np.zeros((42, 3))
            for side, x in (("right", 0.06), ("left", -0.06)):
                params, j = _world_hand(hm, side, rng, x)
                hands[side] = params
                off = 0 if side == "right" else 21
                joints[off : off + 21][PROJECT_TO_INTERHAND] = j * 1000.0
                world[(cap, fr, side)] = (params, j)
            valid = np.ones(42)
            hand_type, ht_valid = "interacting", 1
            if (cap, fr) == (0, 11):
                hands["left"], hand_type = None, "right"
            if (cap, fr) == (0, 12):
                hands["right"], hand_type = None, "left"
            if (cap, fr) == (0, 13):
                ht_valid = 0
            if (cap, fr) == (0, 14):
                valid[20] = 0
            if (cap, fr) == (0, 15):
                hands["right"] = {**hands["right"], "pose": [float("nan")] + hands["right"]["pose"][1:]}
            if (cap, fr) == (0, 16):
                hands["right"] = {**hands["right"], "pose": hands["right"]["pose"][:45]}
            mano[str(cap)][str(fr)] = hands
            joint3d[str(cap)][str(fr)] = {
                "world_coord": joints.tolist(),
                "joint_valid": valid.tolist(),
                "hand_type": hand_type,
                "hand_type_valid": ht_valid,
            }
            for cam in ("400262", "400263") if cap == 0 else ("400262", "400999"):
                iid = len(images)
                name = f"Capture{cap}/ROM01_Interaction/cam{cam}/image{fr:04d}.jpg"
                images.append(
                    {
                        "id": iid,
                        "file_name": name,
                        "width": 334,
                        "height": 512,
                        "capture": cap,
                        "seq_name": "ROM01_Interaction",
                        "camera": cam,
                        "frame_idx": fr,
                    }
                )
                annotations.append(
                    {
                        "id": iid,
                        "image_id": iid,
                        "bbox": [10, 10, 100, 100],
                        "joint_valid": valid.tolist(),
                        "hand_type": hand_type,
                        "hand_type_valid": ht_valid,
                    }
                )
    files = {
        "data": {"images": images, "annotations": annotations},
        "camera": camera_json,
        "joint_3d": joint3d,
        "MANO_NeuralAnnot": mano,
    }
    for k, v in files.items():
        (ann_dir / f"InterHand2.6M_{split}_{k}.json").write_text(json.dumps(v, allow_nan=True))
    img = root / "images" / split / images[0]["file_name"]
    img.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.new("RGB", (334, 512), (90, 60, 40)).save(img)
    return {"world": world, "cameras": cams}


def write_reinterhand(root: Path, hm) -> dict:
    """One capture, frames 000001 and 000002; Mugsy cameras 'cam01' (with PNG images) and 'cam02' (size in its
    parameters); an egocentric fisheye camera 'ego01'; frame 000002 has only a left hand, and 'cam03' looks
    away from the hands (a truncation skip)."""
    rng = np.random.default_rng(3)
    cap = root / "m--capture01"
    (cap / "mano_fits" / "params").mkdir(parents=True)
    (cap / "frame_list.txt").write_text("000001\n000002\n")
    world = {}
    for fr in ("000001", "000002"):
        for side, x in (("right", 0.06), ("left", -0.06)):
            if fr == "000002" and side == "right":
                continue
            params, j = _world_hand(hm, side, rng, x)
            (cap / "mano_fits" / "params" / f"{fr}_{side}.json").write_text(json.dumps(params))
            world[(fr, side)] = (params, j)
    R3 = aa_to_matrix(np.array([0.0, np.pi, 0.0]))  # turned around: the hands are behind it
    cams = {
        "cam01": {
            "R": np.eye(3).tolist(),
            "t": [0.0, 0.0, 900.0],
            "focal": [800.0, 800.0],
            "princpt": [255.5, 255.5],
        },
        "cam02": {
            "R": aa_to_matrix(np.array([0.3, 0.0, 0.0])).tolist(),
            "t": [0.0, 0.0, 1000.0],
            "focal": [900.0, 900.0],
            "princpt": [320.0, 240.0],
            "size": [640, 480],
        },
        "cam03": {
            "R": R3.tolist(),
            "t": [400.0, 0.0, 1000.0],
            "focal": [800.0, 800.0],
            "princpt": [255.5, 255.5],
            "size": [512, 512],
        },
    }
    (cap / "Mugsy_cameras").mkdir()
    (cap / "Mugsy_cameras" / "cam_params.json").write_text(json.dumps(cams))
    from PIL import Image

    for fr in ("000001", "000002"):
        p = cap / "Mugsy_cameras" / "envmap_per_frame" / "images" / "cam01" / f"{fr}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (512, 512), (30, 30, 30)).save(p)
    ego = cap / "Ego_cameras" / "ego01"
    (ego / "params").mkdir(parents=True)
    (ego / "images").mkdir()
    for fr in ("000001", "000002"):
        params = {
            "R": aa_to_matrix(np.array([0.2, 0.1, 0.0])).tolist(),
            "t": [0.0, 20.0, 350.0],
            "focal": [300.0, 300.0],
            "princpt": [320.0, 240.0],
            "D": [0.05, -0.01, 0.002, -0.0003],
        }
        (ego / "params" / f"{fr}.json").write_text(json.dumps(params))
        Image.new("RGB", (640, 480), (10, 10, 10)).save(ego / "images" / f"{fr}.png")
    return {"world": world, "cameras": cams}


def write_interhand_photos(
    root: Path, hm, split: str = "train", missing=(), wrong_size=(), padding_only=None
) -> dict:
    """Tiny JPEG "photos" for the InterHand2.6M fixture: each valid image shows its hands (skin colour, the
    rendered silhouette in that image's own camera) over a dark textured background, so a training tuple's
    alignment can be checked against real pixels. Returns ``file_name -> (H, W) hand mask`` of the photos.

    missing: file names left without a photo; wrong_size: file names whose photo is 300x512 instead of
    334x512; padding_only: an (capture, camera) whose images become 100x512 with the camera moved so that,
    letterboxed to a square, the hands fall on the black padding only.
    """
    from PIL import Image

    from pipeline.sources import SkipSample, posed_sample
    from pipeline.sources.interhand import InterHandSource
    from renderers.base import RenderBatch, make_renderer, render_item

    ann = root / "annotations" / split
    if padding_only is not None:
        cap, cam = (str(x) for x in padding_only)
        cam_path, data_path = (
            ann / f"InterHand2.6M_{split}_camera.json",
            ann / f"InterHand2.6M_{split}_data.json",
        )
        cams, data = json.loads(cam_path.read_text()), json.loads(data_path.read_text())
        cams[cap]["focal"][cam] = [400.0, 400.0]
        cams[cap]["princpt"][cam] = [-110.0, 255.0]  # hands centred 110 px left of a 100 px wide image
        cam_path.write_text(json.dumps(cams))
        for im in data["images"]:
            if str(im["capture"]) == cap and str(im["camera"]) == cam:
                im["width"] = 100
        data_path.write_text(json.dumps(data))
    src = InterHandSource(root, hm, split=split, cache_dir=root / "cache")
    renderer = make_renderer("opengl")
    masks = {}
    rng = np.random.default_rng(11)
    try:
        for i in range(len(src)):
            try:
                s = posed_sample(src, i, hm)
            except SkipSample:
                continue
            name = s.source["file_name"]
            path = root / "images" / split / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if name in missing:
                path.unlink(missing_ok=True)
                continue
            H, W = s.image_size
            r = renderer.render(RenderBatch([render_item(s)], hm.faces))[0]
            photo = (rng.integers(20, 60, size=(H, W, 3))).astype(np.uint8)
            photo[r.mask > 0] = (225, 180, 150)
            if name in wrong_size:
                photo = photo[:, :300]
            Image.fromarray(photo).save(path, quality=90)
            masks[name] = r.mask > 0
    finally:
        renderer.close()
    return masks
