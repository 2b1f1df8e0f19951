"""FID / KID and FID-H / KID-H (issue 16, item 1): the metric maths against direct computations on known
inputs, the FID Inception network with random weights (the official weights cannot be downloaded here), the
weights loader's refusals, the hand-crop geometry, and reference sets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from evaluation import fid as F
from pipeline.errors import HandgenError

# -- FID maths -----------------------------------------------------------------------------------------------


def _spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d) + (0 if rank else 0.1 * np.eye(d))


def _trace_sqrt_explicit(s1, s2):
    """Tr sqrt(S1 S2) by a Denman-Beavers iteration on the (non-symmetric) product; checked by squaring."""
    a = s1 @ s2
    y, z = a.copy(), np.eye(len(a))
    for _ in range(60):
        y, z = (y + np.linalg.inv(z)) / 2, (z + np.linalg.inv(y)) / 2
    assert np.allclose(y @ y, a, rtol=1e-9, atol=1e-9)
    return float(np.trace(y))


def test_trace_sqrt_product_matches_explicit_sqrtm():
    rng = np.random.default_rng(0)
    for d in (1, 3, 8):
        s1, s2 = _spd(rng, d), _spd(rng, d)
        assert F.trace_sqrt_product(s1, s2) == pytest.approx(_trace_sqrt_explicit(s1, s2), rel=1e-9)
        eig = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
        assert F.trace_sqrt_product(s1, s2) == pytest.approx(eig, rel=1e-9)


def test_trace_sqrt_product_rank_deficient():
    """Covariances of fewer samples than dimensions (every FID set under 2048 images): still real and equal to
    the sum of square roots of the (real, non-negative) eigenvalues of S1 S2."""
    rng = np.random.default_rng(1)
    s1, s2 = _spd(rng, 10, rank=3), _spd(rng, 10, rank=4)
    w = np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)
    assert F.trace_sqrt_product(s1, s2) == pytest.approx(np.sqrt(w).sum(), rel=1e-6)


def test_trace_sqrt_product_scipy_route_agrees():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(2)
    s1, s2 = _spd(rng, 6), _spd(rng, 6)
    assert F.trace_sqrt_product(s1, s2, "scipy") == pytest.approx(F.trace_sqrt_product(s1, s2), rel=1e-8)


def test_frechet_distance_closed_forms():
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2
    assert F.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # commuting covariances (a common rotation of diagonals): |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a, b = rng.uniform(0.5, 3, 5), rng.uniform(0.5, 3, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = F.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(want, rel=1e-9)


def test_fid_from_gaussian_features():
    rng = np.random.default_rng(4)
    d, n = 8, 20000
    x = rng.normal(size=(n, d))
    assert F.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)
    m = np.full(d, 0.5)
    y = rng.normal(size=(n, d)) + m
    # population value |m|^2 = 2.0; the estimate's bias and spread are O(d / n)
    assert F.fid_from_features(x, y) == pytest.approx(float(m @ m), abs=0.05)
    # and against the direct formula on the sample statistics
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T)
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * _trace_sqrt_explicit(s1, s2)
    assert F.fid_from_features(x, y) == pytest.approx(direct, rel=1e-9)


def test_fid_routes_agree_for_small_sets():
    """Fewer images than dimensions: the cross-Gram (features) route, the covariance (eigh) route and the
    direct formula give the same FID."""
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(5, 12)), rng.normal(size=(7, 12)) * 1.5 + 0.2
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T)
    w = np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.sqrt(w).sum()
    for method in ("auto", "features", "eigh"):
        assert F.fid_from_features(x, y, method) == pytest.approx(direct, rel=1e-6)
    assert F.fid_from_features(x, x, "features") == pytest.approx(0.0, abs=1e-9)


def test_fid_needs_two_samples():
    with pytest.raises(F.EvaluationError, match="at least 2"):
        F.fid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))


# -- KID maths -----------------------------------------------------------------------------------------------


def _kid_brute(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, by explicit loops."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_brute_force():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.3
    # one subset of all 6 on each side: the subset is a permutation, so the estimate is that of the full sets
    mean, std = F.kid_from_features(x, y, n_subsets=1, subset_size=100)
    assert mean == pytest.approx(_kid_brute(x, y), rel=1e-12)
    assert std == 0.0


def test_kid_subsets_and_both_kernel_paths(monkeypatch):
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(40, 4)), rng.normal(size=(30, 4)) + 1.0
    mean, std = F.kid_from_features(x, y, n_subsets=20, subset_size=10, seed=7)
    # the same subsets, drawn the same way, scored by brute force
    r = np.random.default_rng(7)
    scores = []
    for _ in range(20):
        ix, iy = r.choice(40, 10, replace=False), r.choice(30, 10, replace=False)
        scores.append(_kid_brute(x[ix], y[iy]))
    assert mean == pytest.approx(np.mean(scores), rel=1e-10)
    assert std == pytest.approx(np.std(scores), rel=1e-8)
    monkeypatch.setattr(F, "_GRAM_LIMIT", 0)  # per-subset kernels instead of the shared Gram matrices
    assert F.kid_from_features(x, y, n_subsets=20, subset_size=10, seed=7) == pytest.approx((mean, std))
    assert mean > 0.1  # shifted distributions
    same = F.kid_from_features(x, rng.normal(size=(40, 4)), n_subsets=50, subset_size=20, seed=0)[0]
    assert abs(same) < 0.05 * mean  # unbiased: about zero for the same distribution


def test_kid_needs_two_samples():
    with pytest.raises(F.EvaluationError, match="at least 2"):
        F.kid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))


# -- the FID Inception network -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_net():
    """The FID Inception network with random weights (He init, random BatchNorm statistics, so activations
    keep a sensible scale through the 94 convolutions; PyTorch's default init shrinks them to ~1e-8)."""
    import torch

    torch.manual_seed(0)
    net = F.fid_inception_v3()
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            elif isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.8, 1.2)
                mod.weight.uniform_(0.8, 1.2)
                mod.bias.uniform_(-0.1, 0.1)
    return net


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, random_net):
    import torch

    path = tmp_path_factory.mktemp("inception") / F.FID_WEIGHTS_NAME
    torch.save(random_net.state_dict(), path)
    return path


def _images():
    rng = np.random.default_rng(8)
    a = rng.integers(0, 256, size=(120, 90, 3), dtype=np.uint8)
    b = np.zeros((299, 299, 3), np.uint8)
    b[50:200, 80:250] = (200, 120, 60)
    return a, b


def test_network_layout_is_torchvision_inception3_1008():
    """Same parameter names and shapes as torchvision's Inception3(num_classes=1008, aux_logits=False), the
    network pytorch-fid loads pt_inception-2015-12-05-6726825d.pth into (strictly)."""
    from torchvision.models.inception import Inception3

    ours = F.fid_inception_v3().state_dict()
    theirs = Inception3(num_classes=1008, aux_logits=False, init_weights=False).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_random_weight_network_features(weights_file, random_net):
    import torch

    net = F.load_inception(weights_file)
    loaded, saved = net.state_dict(), random_net.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)  # every parameter and BatchNorm statistic
    a, b = _images()
    feats = F.extract_features(net, [a, b, a], batch_size=2)  # two batches, mixed sizes
    assert feats.shape == (3, 2048) and feats.dtype == np.float64
    assert np.isfinite(feats).all() and feats.std() > 0.01
    assert np.allclose(feats[0], feats[2], rtol=1e-5, atol=1e-6)  # deterministic, batch-independent
    assert not np.allclose(feats[0], feats[1])


def test_loader_accepts_file_without_batchnorm_counters(tmp_path, random_net):
    """The 2019 pytorch-fid file has no ``num_batches_tracked`` buffers; it still loads strictly."""
    import torch

    state = {k: v for k, v in random_net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "w.pth")
    F.load_inception(tmp_path / "w.pth")
    with pytest.raises(F.EvaluationError, match="cannot use device 'bogus'"):
        F.load_inception(tmp_path / "w.pth", device="bogus")


def _one_line_error(path):
    with pytest.raises(F.EvaluationError) as info:
        F.load_inception(path)
    err = info.value
    assert isinstance(err, HandgenError) and err.exit_code == 2
    assert "\n" not in str(err) and str(path) in str(err)
    return str(err)


def test_loader_refuses_junk_and_other_networks(tmp_path, random_net):
    import torch

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint\n" * 10)
    assert "is not a PyTorch state dict file" in _one_line_error(junk)

    state = random_net.state_dict()
    missing = dict(state)
    del missing["Mixed_7c.branch_pool.conv.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    msg = _one_line_error(tmp_path / "missing.pth")
    assert "is not the FID Inception weights" in msg
    assert "1 keys missing (e.g. Mixed_7c.branch_pool.conv.weight)" in msg

    small = {k: state[k] for k in list(state)[:4]}  # small files for the other cases
    torch.save(dict(small, **{"head.weight": torch.zeros(3)}), tmp_path / "extra.pth")
    assert "unexpected keys (e.g. head.weight)" in _one_line_error(tmp_path / "extra.pth")

    imagenet = dict(small, **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    torch.save(imagenet, tmp_path / "imagenet.pth")
    msg = _one_line_error(tmp_path / "imagenet.pth")
    assert (
        "fc.weight (1000, 2048), expected (1008, 2048)" in msg and "torchvision's ImageNet Inception" in msg
    )

    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    assert "holds a Tensor, not a state dict" in _one_line_error(tmp_path / "tensor.pth")

    assert "not found" in _one_line_error(tmp_path / "absent.pth")


# -- hand crops ----------------------------------------------------------------------------------------------


def _centroid(mask):
    ys, xs = np.nonzero(mask)
    return xs.mean() + 0.5, ys.mean() + 0.5  # pixel centres


def test_hand_crop_centres_the_box():
    img = np.zeros((200, 300, 3), np.uint8)
    img[50:90, 100:160] = 255  # box [100, 50, 160, 90]: 60 x 40 px
    crop = F.hand_crop(img, [100, 50, 160, 90])
    assert crop.shape == (299, 299, 3) and crop.dtype == np.uint8
    white = crop[..., 0] > 127
    cx, cy = _centroid(white)
    assert cx == pytest.approx(149.5, abs=1.0) and cy == pytest.approx(149.5, abs=1.0)
    # side = longer side (60) * (1 + 2 * 0.25) = 90 px -> scale 299 / 90: the box spans 2/3 x 4/9 of the crop
    assert white.sum(axis=1).max() == pytest.approx(299 * 60 / 90, abs=2)
    assert white.sum(axis=0).max() == pytest.approx(299 * 40 / 90, abs=2)
    big = F.hand_crop(img, [100, 50, 160, 90], margin=0.5)  # more margin: the hand is smaller in the crop
    assert (big[..., 0] > 127).sum(axis=1).max() == pytest.approx(299 * 60 / 120, abs=2)


def test_hand_crop_pads_black_outside_the_image():
    img = np.full((100, 100, 3), 255, np.uint8)
    crop = F.hand_crop(img, [0, 0, 20, 20])  # crop square [-5, 25]^2: its first 5 px of 30 are outside
    edge = 299 * 5 / 30  # ~49.8
    assert (crop[: int(edge) - 1] == 0).all() and (crop[:, : int(edge) - 1] == 0).all()
    assert (crop[int(edge) + 2 :, int(edge) + 2 :] == 255).all()
    crop = F.hand_crop(img, [80, 40, 100, 60])  # crop [75, 105] x [35, 65]: its last 5 px are beyond x = 100
    assert (crop[:, 299 - int(edge) + 2 :] == 0).all() and (crop[:, : 299 - int(edge) - 2] == 255).all()


def test_hand_crop_degenerate_boxes():
    img = np.zeros((50, 60, 3), np.uint8)
    assert F.hand_crop(img, [0, 0, 0, 0]) is None  # an absent hand's zero box
    assert F.hand_crop(img, [10, 10, 5, 20]) is None
    assert F.hand_crop(img, [np.nan, 0, 10, 10]) is None
    assert F.hand_crop(img, [70, 10, 90, 30]) is None  # entirely outside the image
    assert F.hand_crop(img[..., 0], [10, 10, 20, 20]).shape == (299, 299, 3)  # grey images are accepted


# -- reference sets and the entry point ----------------------------------------------------------------------


def test_reference_without_images_is_one_line_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no photos here")
    (tmp_path / "sub").mkdir()
    for ref in (tmp_path, tmp_path / "absent"):
        with pytest.raises(F.EvaluationError) as info:
            F.ReferenceSet(ref)
        assert "\n" not in str(info.value) and str(ref) in str(info.value)
    with pytest.raises(F.EvaluationError, match="holds no images"):
        F.compute_fid_kid([], tmp_path, tmp_path / "never-read.pth")  # the reference is checked first


def _photo_folder(folder):
    a, b = _images()
    (folder / "sub").mkdir()
    Image.fromarray(a).save(folder / "a.png")
    Image.fromarray(b).save(folder / "sub" / "b.PNG")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return a, b


def test_photo_reference_set(tmp_path):
    a, b = _photo_folder(tmp_path)
    ref = F.ReferenceSet(tmp_path)
    assert not ref.is_shards and not ref.has_boxes
    items = list(ref)  # recursive, any suffix case; the unreadable file is counted and skipped
    assert [im.shape for im, _ in items] == [a.shape, b.shape] and all(bx is None for _, bx in items)
    assert (items[0][0] == a).all() and ref.unreadable == 1
    assert len(list(F.ReferenceSet(tmp_path, limit=1))) == 1


def test_scores_from_features_hand_crop_cases():
    rng = np.random.default_rng(10)
    g, r = rng.normal(size=(6, 16)), rng.normal(size=(8, 16)) + 0.5
    gc, rc = rng.normal(size=(5, 16)), rng.normal(size=(4, 16))
    out = F.scores_from_features(g, r, gc, rc, kid_subsets=10, seed=1)
    assert out["fid"] == pytest.approx(F.fid_from_features(g, r))
    assert (out["kid_mean"], out["kid_std"]) == pytest.approx(F.kid_from_features(g, r, 10, 1000, 1))
    assert out["fid_h"] == pytest.approx(F.fid_from_features(gc, rc)) and out["fid_h_note"] is None
    assert (out["kid_h_mean"], out["kid_h_std"]) == pytest.approx(F.kid_from_features(gc, rc, 10, 1000, 1))
    counts = [out[k] for k in ("n_generated", "n_reference", "n_generated_hands", "n_reference_hands")]
    assert counts == [6, 8, 5, 4]
    assert out["kid_subset_size"] == 6
    photos = F.scores_from_features(g, r, gc, None)
    assert (
        photos["fid_h"] is None
        and photos["kid_h_mean"] is None
        and "without hand labels" in photos["fid_h_note"]
    )
    unlabelled = F.scores_from_features(g, r, None, rc)
    assert unlabelled["fid_h"] is None and "without hand boxes" in unlabelled["fid_h_note"]
    few = F.scores_from_features(g, r, gc[:1], rc)
    assert few["fid_h"] is None and "too few hand crops (1 generated, 4 reference" in few["fid_h_note"]
    with pytest.raises(F.EvaluationError, match="at least 2 images on each side, got 1 generated"):
        F.scores_from_features(g[:1], r)


@pytest.mark.slow
def test_photo_reference_end_to_end(tmp_path, weights_file):
    a, b = _photo_folder(tmp_path)
    out = F.compute_fid_kid([a, b], tmp_path, weights_file, batch_size=4, kid_subsets=5)
    assert out["n_generated"] == 2 and out["n_reference"] == 2 and out["n_reference_unreadable"] == 1
    assert out["fid"] == pytest.approx(0.0, abs=1e-3)  # the same images (PNG is lossless)
    assert out["fid_h"] is None and "without hand labels" in out["fid_h_note"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, hand_model):
    """A finalised run of 2 records (a right and a left hand) written by the real sink."""
    from tests.samples import write_run

    return write_run(tmp_path_factory.mktemp("run"), hand_model, 2, 2, run_tag="f")


def test_shard_reference_gives_hand_crops(run_dir, weights_file):
    from sinks.reader import open_shards

    ref = F.ReferenceSet(run_dir)
    assert ref.is_shards and ref.has_boxes
    items = list(ref)
    assert len(items) == 2 and all(len(boxes) == 1 for _, boxes in items)  # absent hands are left out
    # the generated side as the reader yields it (dicts with bbox + hand_present): identical sets
    out = F.compute_fid_kid(open_shards(run_dir, split_by_worker=False), run_dir, weights_file, kid_subsets=3)
    assert out["n_generated"] == out["n_reference"] == 2
    assert out["n_generated_hands"] == out["n_reference_hands"] == 2
    assert out["fid"] == pytest.approx(0.0, abs=1e-3) and out["fid_h"] == pytest.approx(0.0, abs=1e-3)
    assert out["fid_h_note"] is None and np.isfinite(out["kid_h_mean"]) and out["kid_h_std"] >= 0
    assert out["n_reference_unreadable"] == 0 and len(out["inception_sha256"]) == 64
