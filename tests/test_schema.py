"""Label schema v1: round trips and rejection of bad records with named fields."""

import json

import numpy as np
import pytest

from pipeline.sample import Caption, Drawn, Generation, HandParams, RenderResult, Sample
from pipeline.schema import SCHEMA_VERSION, Camera, Label, SchemaError, make_key


def _sample(hand_type="interacting", hand_model=None) -> Sample:
    from pipeline.hand_model import HandModel
    from pipeline.sources import pose_hands

    hm = hand_model or HandModel()
    rng = np.random.default_rng(0)
    K = np.array([[600.0, 0, 255.5], [0, 600.0, 255.5], [0, 0, 1]])
    present = {"right": ("right",), "left": ("left",), "interacting": ("right", "left")}[hand_type]
    params = {"right": None, "left": None}
    for side in present:
        pose, shape = rng.normal(0, 0.2, 48), rng.normal(0, 1, 10)
        trans = np.array([0.05 * (1 if side == "right" else -1), 0.0, 0.45])
        params[side] = HandParams(pose, shape, trans)
    drawn = Drawn(
        index=7,
        seed=123456789,
        key=make_key("abc123", 7),
        image_size=(512, 512),
        camera=Camera(K),
        hand_type=hand_type,
        params=params,
        source={"dataset": "prior", "split": None, "capture": None, "frame": None, "camera": None},
    )
    posed = pose_hands(drawn, hm)
    j2d, vis, box = {}, {}, {}
    for side in ("right", "left"):
        j3 = posed.joints_3d[side]
        if j3 is None:
            j2d[side] = vis[side] = box[side] = None
            continue
        j2d[side] = (j3 @ K.T)[:, :2] / j3[:, 2:]
        vis[side], box[side] = np.ones(21, bool), np.array([*j2d[side].min(0), *j2d[side].max(0)])
    blank = np.zeros((512, 512), np.uint8)
    rendered = RenderResult(
        mesh_image=np.zeros((512, 512, 3), np.uint8),
        mask=blank,
        depth=np.zeros((512, 512), np.float32),
        joints_2d=j2d,
        joints_visible=vis,
        bbox=box,
        crop_box=np.array([100.0, 100.0, 400.0, 400.0]),
        mesh_local=np.zeros((64, 64, 3), np.uint8),
        mask_local=np.zeros((64, 64), np.uint8),
    )
    caption = Caption("A person holding a cup with the right hand.", "labels", "1", hand_token_indices=(3, 8))
    generated = Generation(np.zeros((512, 512, 3), np.uint8), {"name": "composite", "version": 1, "seed": 1})
    return Sample(drawn, posed, rendered, caption, generated)


@pytest.fixture(scope="module")
def label(hand_model):
    return _sample(hand_model=hand_model).to_label()


@pytest.mark.parametrize("hand_type", ["right", "left", "interacting"])
def test_round_trip_is_exact(hand_model, hand_type):
    lab = _sample(hand_type, hand_model).to_label()
    again = Label.from_bytes(lab.label_bytes(), lab.verts_bytes())
    assert again.label_bytes() == lab.label_bytes()
    assert again.verts_bytes() == lab.verts_bytes()
    assert np.array_equal(again.verts, lab.verts, equal_nan=True)
    for s in ("right", "left"):
        assert (again.hands[s] is None) == (lab.hands[s] is None)
    d = json.loads(lab.label_bytes())
    assert d["schema_version"] == SCHEMA_VERSION and d["key"] == "abc123-0000000007"
    assert list(d) == [
        "schema_version",
        "key",
        "index",
        "seed",
        "image_size",
        "camera",
        "hand_type",
        "hands",
        "crop_box",
        "caption",
        "hand_token_indices",
        "source",
        "hand_model",
        "generator",
    ]
    absent = [s for s in ("right", "left") if lab.hands[s] is None]
    for s in absent:
        assert d["hands"][s] is None and np.isnan(again.verts[("right", "left").index(s)]).all()


def _mutate(label, path, value):
    d = json.loads(label.label_bytes())
    node = d
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return json.dumps(d).encode()


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("hands", "right", "mano_pose"), [0.0] * 45, r"hands\.right\.mano_pose: expected shape \(48,\)"),
        (("hands", "left", "mano_shape"), [float("nan")] + [0.0] * 9, r"hands\.left\.mano_shape: non-finite"),
        (
            ("hands", "right", "mano_trans"),
            [50.0, 0.0, 450.0],
            r"mano_trans: \|value\| 450 > 10 m.*millimetres",
        ),
        (("hands", "right", "joints_visible"), [1] * 20, r"joints_visible: expected 21 booleans"),
        (("hands", "right", "bbox"), [10, 10, 5, 20], r"hands\.right\.bbox: expected \[x0, y0, x1, y1\]"),
        (("key",), "abc123-7", r"key: expected '<run_tag>-<10-digit index>'"),
        (("index",), 8, r"key: index part 0000000007 does not match index 8"),
        (("hand_type",), "right", r"hands: hand_type 'right' needs hands \['right'\]"),
        (("hand_type",), "both", r"hand_type: expected one of"),
        (("camera", "K"), [[0, 0, 1], [0, 1, 1], [0, 0, 1]], r"camera\.K: focal lengths must be > 0"),
        (("camera", "dist"), [0.1, 0.2], r"camera\.dist: expected null or 4, 5 or 8"),
        (("hand_token_indices",), [0, 3], r"hand_token_indices\[0\]: expected an integer in \[1, 76\]"),
        (("hand_model", "sha256"), "xyz", r"hand_model\.sha256: expected 64 lowercase hex"),
        (("source", "dataset"), "mydata", r"source\.dataset: expected one of"),
        (("image_size",), [512], r"image_size: expected \[H, W\]"),
        (("schema_version",), 2, r"schema_version: this code reads version 1, got 2 \(written by a newer"),
    ],
)
def test_bad_labels_are_rejected_with_field_names(label, path, value, message):
    with pytest.raises(SchemaError, match=message):
        Label.from_bytes(_mutate(label, path, value), label.verts_bytes())


def test_bad_verts_are_rejected(label):
    import io

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    with pytest.raises(SchemaError, match=r"verts: expected dtype float32"):
        Label.from_bytes(label.label_bytes(), npy(label.verts.astype(np.float64)))
    with pytest.raises(SchemaError, match=r"verts: expected shape \(2, 778, 3\)"):
        Label.from_bytes(label.label_bytes(), npy(label.verts[:1]))
    bad = label.verts.copy()
    bad[0, 5, 1] = np.nan
    with pytest.raises(SchemaError, match=r"verts\[0\] \(right hand\): non-finite"):
        Label.from_bytes(label.label_bytes(), npy(bad))
    mm = label.verts * 1000.0
    with pytest.raises(SchemaError, match=r"verts\[0\] \(right hand\): \|value\| .*millimetres"):
        Label.from_bytes(label.label_bytes(), npy(mm.astype(np.float32)))
    with pytest.raises(SchemaError, match=r"label\.json: not valid UTF-8 JSON"):
        Label.from_bytes(b"{not json", label.verts_bytes())
    with pytest.raises(SchemaError, match=r"verts\.npy: not a valid \.npy"):
        Label.from_bytes(label.label_bytes(), b"garbage")


def test_absent_hand_must_be_nan(hand_model):
    s = _sample("right", hand_model)
    s.posed.verts[1] = 0.0
    with pytest.raises(SchemaError, match=r"verts\[1\] \(left hand\): an absent hand must be all NaN"):
        s.to_label()


def test_unfilled_sample_names_the_stage(hand_model):
    s = _sample("left", hand_model)
    with pytest.raises(SchemaError, match=r"hands\.left\.joints_2d: not filled in"):
        s.with_(rendered=None).to_label()
    s = _sample("left", hand_model).with_(captioned=None)
    with pytest.raises(SchemaError, match=r"caption: not filled in"):
        s.to_label()


def test_make_key():
    assert make_key("run_1", 42) == "run_1-0000000042"
    with pytest.raises(SchemaError, match="run_tag"):
        make_key("run.1", 1)  # a dot would split the WebDataset key
    with pytest.raises(SchemaError, match="run_tag"):
        make_key("a/b", 1)
    with pytest.raises(SchemaError, match="index"):
        make_key("a", -1)
