"""HandModel through smplx, joint order, the chumpy-free loader, conversion and the stand-in files."""

import pickle
import sys
import types

import numpy as np
import pytest
import torch

from pipeline import hand_model as hm
from pipeline.hand_model import (
    INTERHAND_TO_PROJECT,
    PROJECT_TO_INTERHAND,
    HandModel,
    HandModelError,
    load_mano_pickle,
    write_standin,
)
from pipeline.kinematics import JOINT_NAMES
from pipeline.schema import SIDES


@pytest.mark.parametrize("side", ["right", "left"])
def test_forward_shapes_and_units(hand_model, side):
    rng = np.random.default_rng(1)
    out = hand_model(
        side, rng.normal(0, 0.3, (3, 48)), rng.normal(0, 1, (3, 10)), np.array([[0, 0, 0.5]] * 3)
    )
    assert out.vertices.shape == (3, 778, 3) and out.joints.shape == (3, 21, 3)
    assert out.vertices.dtype == torch.float64  # the CPU default: labels independent of the thread count
    # metres: a hand 50 cm in front of the camera is about 20 cm across
    extent = out.vertices[0].max(0).values - out.vertices[0].min(0).values
    assert 0.05 < float(extent.max()) < 0.3
    assert abs(float(out.vertices[:, :, 2].mean()) - 0.5) < 0.1


def test_joint_order_matches_smplx_and_tips(hand_model):
    rng = np.random.default_rng(2)
    pose, shape, trans = rng.normal(0, 0.3, (2, 48)), rng.normal(0, 1, (2, 10)), rng.normal(0, 0.1, (2, 3))
    out = hand_model("right", pose, shape, trans)
    layer = hand_model.layers["right"]
    t = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    raw = layer(betas=t(shape), global_orient=t(pose[:, :3]), hand_pose=t(pose[:, 3:]), transl=t(trans))
    smplx_names = [
        "wrist",
        "index1",
        "index2",
        "index3",
        "middle1",
        "middle2",
        "middle3",
        "pinky1",
        "pinky2",
        "pinky3",
        "ring1",
        "ring2",
        "ring3",
        "thumb1",
        "thumb2",
        "thumb3",
    ]
    for i, name in enumerate(smplx_names):
        assert torch.allclose(out.joints[:, JOINT_NAMES.index(name)], raw.joints[:, i])
    for finger, vid in hm.TIP_VERTEX_IDS.items():
        assert torch.allclose(out.joints[:, JOINT_NAMES.index(f"{finger}4")], raw.vertices[:, vid])
    # translation moves everything rigidly
    out0 = hand_model("right", pose, shape, np.zeros_like(trans))
    assert torch.allclose(out.vertices - out0.vertices, t(trans)[:, None].expand(-1, 778, -1), atol=1e-6)


def test_interhand_order_mapping():
    ih_names = []
    for finger in ("thumb", "index", "middle", "ring", "pinky"):
        ih_names += [f"{finger}{k}" for k in (4, 3, 2, 1)]
    ih_names.append("wrist")
    assert [ih_names[i] for i in PROJECT_TO_INTERHAND] == list(JOINT_NAMES)
    assert [JOINT_NAMES[i] for i in INTERHAND_TO_PROJECT] == ih_names


def test_bad_inputs_are_rejected(hand_model):
    with pytest.raises(ValueError, match="pose must have shape"):
        hand_model("right", np.zeros((1, 45)), np.zeros((1, 10)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        hand_model("right", np.full((1, 48), np.nan), np.zeros((1, 10)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="side"):
        hand_model("both", np.zeros((1, 48)), np.zeros((1, 10)), np.zeros((1, 3)))


def test_standin_versions_are_separate_models(hand_model):
    from pipeline.hand_model import HandModelError
    from pipeline.standin import STANDIN_VERSION

    first = HandModel(standin_version=1)
    assert first.info.name == "standin" and first.info.sha256 != hand_model.info.sha256
    assert HandModel(standin_version=STANDIN_VERSION).info == hand_model.info  # the default is the newest
    zero = (np.zeros((1, 48)), np.zeros((1, 10)), np.zeros((1, 3)))
    moved = (hand_model("right", *zero).vertices - first("right", *zero).vertices).norm(dim=-1)
    assert 0.006 < float(moved.max()) < 0.0075  # the thenar eminence, posed (the mean pose) as well
    with pytest.raises(HandModelError, match="stand-in version must be one of"):
        HandModel(standin_version=7)
    with pytest.raises(HandModelError, match="not with a MANO folder"):
        HandModel("/nonexistent", standin_version=1)


def test_standin_sha256_names_the_version(hand_model):
    """``standin_sha256`` is the sha256 a stand-in ``HandModel`` records, and ``standin_version_of`` finds the
    version back from it (what ``hands validate`` and a refused resume use)."""
    from pipeline.hand_model import standin_sha256, standin_version_of
    from pipeline.standin import STANDIN_VERSION, STANDIN_VERSIONS

    assert standin_sha256() == hand_model.info.sha256 == standin_sha256(STANDIN_VERSION)
    assert standin_sha256(1) == HandModel(standin_version=1).info.sha256
    assert len({standin_sha256(v) for v in STANDIN_VERSIONS}) == len(STANDIN_VERSIONS)
    assert [standin_version_of(standin_sha256(v)) for v in STANDIN_VERSIONS] == list(STANDIN_VERSIONS)
    assert standin_version_of("0" * 64) is None and standin_version_of(None) is None


def test_standin_files_load_with_smplx_create(tmp_path, hand_model):
    import smplx

    write_standin(tmp_path)
    assert (tmp_path / "MANO_RIGHT.pkl").is_file() and (tmp_path / "MANO_LEFT.pkl").is_file()
    for is_rhand, side in ((True, "right"), (False, "left")):
        layer = smplx.create(str(tmp_path), "mano", use_pca=False, is_rhand=is_rhand, flat_hand_mean=False)
        pose = torch.zeros(1, 45)
        ours = hand_model(side, np.zeros((1, 48)), np.zeros((1, 10)), np.zeros((1, 3)))
        theirs = layer(betas=torch.zeros(1, 10), global_orient=torch.zeros(1, 3), hand_pose=pose)
        assert torch.allclose(ours.vertices.float(), theirs.vertices, atol=1e-6)
    # plain pickle.load works too (no chumpy, no custom classes)
    with open(tmp_path / "MANO_RIGHT.pkl", "rb") as f:
        assert pickle.load(f)["v_template"].shape == (778, 3)
    # a model loaded from the written folder is the same model with the same hash
    on_disk = HandModel(tmp_path)
    assert on_disk.info.sha256 == hand_model.info.sha256
    assert on_disk.info.name == "standin"  # stand-in files stay labelled as the stand-in


def _fake_module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        v.__module__ = name
        v.__qualname__ = k
        setattr(mod, k, v)
    return mod


@pytest.fixture
def chumpy_pickle(tmp_path, standin_right):
    """An 'official-style' MANO pickle: chumpy arrays and a scipy-style CSC J_regressor, protocol 2."""

    class Ch:
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()

    class csc_matrix:  # noqa: N801 - mimics scipy's class and pickled state
        def __init__(self, dense):
            rows, cols = np.nonzero(dense.T)  # column-major walk
            self.data = dense.T[rows, cols]
            self.indices = cols.astype(np.int32)
            self.indptr = np.searchsorted(rows, np.arange(dense.shape[1] + 1)).astype(np.int32)
            self._shape = dense.shape
            self.maxprint = 50

    mods = {
        "chumpy": _fake_module("chumpy"),
        "chumpy.ch": _fake_module("chumpy.ch", Ch=Ch),
        "scipy": _fake_module("scipy"),
        "scipy.sparse": _fake_module("scipy.sparse"),
        "scipy.sparse._csc": _fake_module("scipy.sparse._csc", csc_matrix=csc_matrix),
    }
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        d = dict(standin_right)
        official = {k: d[k] for k in hm.MANO_KEYS}
        for k in ("v_template", "shapedirs", "posedirs", "weights", "hands_components", "hands_mean"):
            official[k] = Ch(d[k])
        official["J_regressor"] = csc_matrix(d["J_regressor"])
        official["bs_style"] = "lbs"
        path = tmp_path / "MANO_RIGHT.pkl"
        path.write_bytes(pickle.dumps(official, protocol=2))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return path


def test_chumpy_free_loader(chumpy_pickle, standin_right):
    assert b"chumpy.ch" in chumpy_pickle.read_bytes() and b"scipy.sparse" in chumpy_pickle.read_bytes()
    data = load_mano_pickle(chumpy_pickle)
    for k in ("v_template", "shapedirs", "weights", "hands_mean", "J_regressor", "f"):
        assert isinstance(data[k], np.ndarray)
        assert np.array_equal(data[k], standin_right[k]), k


def test_convert_cli_round_trip(chumpy_pickle, tmp_path, standin_right, standin_left):
    from flows.cli import main

    dst = tmp_path / "conv" / "MANO_RIGHT.pkl"
    assert main(["mano", "convert", str(chumpy_pickle), str(dst)]) == 0
    with open(dst, "rb") as f:
        plain = pickle.load(f)  # the converted file needs nothing special
    assert np.array_equal(plain["J_regressor"], standin_right["J_regressor"])
    assert np.array_equal(plain["shapedirs"], standin_right["shapedirs"])
    # a folder of official-layout files (no stand-in marker) is labelled as MANO
    left = {k: standin_left[k] for k in hm.MANO_KEYS}
    hm.dump_mano_pickle(left, dst.parent / "MANO_LEFT.pkl")
    assert HandModel(dst.parent).info.name == "mano"


def test_loader_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"v_template": Evil()}))
    with pytest.raises(HandModelError, match="refusing to unpickle global"):
        load_mano_pickle(p)
    with pytest.raises(HandModelError, match="not found"):
        load_mano_pickle(tmp_path / "missing.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(HandModelError, match="expected a dict"):
        load_mano_pickle(tmp_path / "list.pkl")


def test_left_shapedirs_fix(tmp_path, standin_right, standin_left):
    right, left = dict(standin_right), dict(standin_left)
    assert not hm.fix_left_shapedirs(dict(left), right)  # the stand-in is already correct
    buggy = dict(left)
    buggy["shapedirs"] = left["shapedirs"].copy()
    buggy["shapedirs"][:, 0, :] *= -1  # the official left file's bug: x rows equal the right hand's
    assert hm.fix_left_shapedirs(buggy, right)
    assert np.array_equal(buggy["shapedirs"], left["shapedirs"])
    # HandModel applies it when loading a folder with the bug
    bug = dict(left)
    bug["shapedirs"] = left["shapedirs"].copy()
    bug["shapedirs"][:, 0, :] *= -1
    hm.dump_mano_pickle(right, tmp_path / "MANO_RIGHT.pkl")
    hm.dump_mano_pickle(bug, tmp_path / "MANO_LEFT.pkl")
    model = HandModel(tmp_path)
    assert model.info.name == "standin"
    betas = np.zeros((1, 10))
    betas[0, 0] = 2.0
    r = model("right", np.zeros((1, 48)), betas, np.zeros((1, 3))).vertices[0].numpy()
    lft = model("left", np.zeros((1, 48)), betas, np.zeros((1, 3))).vertices[0].numpy()
    assert np.allclose(lft, r * np.array([-1.0, 1.0, 1.0]), atol=1e-5)


def test_missing_mano_folder_is_clear(tmp_path):
    with pytest.raises(HandModelError, match="not found"):
        HandModel(tmp_path / "nope")
    with pytest.raises(HandModelError, match="no MANO_RIGHT.pkl"):
        HandModel(tmp_path)


def test_labels_do_not_depend_on_the_torch_thread_count(hand_model):
    """A run's workers use different thread counts (``flows.workers``): the CPU hand model must give the same
    bits with 1 and 2 threads (float32 skinning did not: 13 of 200 random hands differed)."""
    rng = np.random.default_rng(1)
    threads = torch.get_num_threads()
    try:
        for trial in range(100):
            side = SIDES[trial % 2]
            args = rng.normal(0, 0.5, (1, 48)), rng.normal(0, 1, (1, 10)), rng.normal(0, 0.1, (1, 3))
            outs = []
            for n in (1, 2):
                torch.set_num_threads(n)
                outs.append(hand_model(side, *args).vertices.numpy().copy())
            assert np.array_equal(outs[0], outs[1]), trial
    finally:
        torch.set_num_threads(threads)
