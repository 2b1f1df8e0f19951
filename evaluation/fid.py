"""FID and KID, on whole images and on hand crops (FID-H, KID-H), with the standard FID Inception network.

The network is the one pytorch-fid and clean-fid use: InceptionV3 as ported from TensorFlow's
``inception-2015-12-05`` graph (``pt_inception-2015-12-05-6726825d.pth``, as distributed by pytorch-fid), with
its FID-specific blocks (average pools that do not count the padding, and a max pool in the last block).
Features are the 2048-d pool3 activations of the image resized to 299 x 299 (bilinear, as pytorch-fid does it)
and scaled to [-1, 1]. The architecture is built here; the weights come only from a local file given by the
user (``--inception WEIGHTS``). Nothing is ever downloaded.

Metrics:

- FID: ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))``, covariances with ``ddof=1``, computed without a
  general matrix square root, so it stays real and exact for the rank-deficient covariances of sets smaller
  than 2048: ``Tr sqrt(S1 S2)`` is the sum of the square roots of the eigenvalues of the symmetric
  ``sqrt(S1) S2 sqrt(S1)`` (same spectrum as ``S1 S2``) or, for small sets, the sum of the singular values of
  the centred features' cross-Gram matrix (the same number, an (N1, N2) problem instead of a (2048, 2048)
  one). ``method="scipy"`` uses pytorch-fid's ``scipy.linalg.sqrtm`` route instead, when scipy is installed.
- KID: the unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over
  ``n_subsets`` random subsets of ``min(subset_size, n_generated, n_reference)`` per side (seeded); mean and
  standard deviation over the subsets (as torchmetrics reports them).
- FID-H / KID-H: the same on square hand crops (``hand_crop``) from the hands' label boxes. A reference set of
  plain photos has no boxes, so FID-H / KID-H are ``None`` there (with the reason in ``fid_h_note``);
  reference shards (a run, or ``hands prepare`` output) carry boxes, so crops are available.

Every user-caused problem (a missing or wrong weights file, an empty reference folder, too few images) is a
one-line ``EvaluationError``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.errors import HandgenError, one_line

logger = logging.getLogger(__name__)

FID_SIZE = 299  # the Inception input size
FEATURE_DIM = 2048  # pool3
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
CROP_MARGIN = 0.25  # hand crops: the box's longer side plus this fraction of it on each side


class EvaluationError(HandgenError, ValueError):
    """A user-caused evaluation problem (bad weights file, empty reference, too few images): one line."""


# -- the FID Inception network -------------------------------------------------------------------------------
# Module and parameter names follow torchvision's Inception3 (num_classes=1008, aux_logits=False), which is
# what the pytorch-fid weights file is a state dict of.


def _build_network_classes():
    """The network's classes (defined lazily so that importing this module does not import torch)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class BasicConv2d(nn.Module):
        def __init__(self, cin: int, cout: int, **kw) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)), inplace=True)

    def avg3(x):  # TensorFlow's average pool: padded zeros are not counted
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class BlockA(nn.Module):  # Mixed_5b..5d
        def __init__(self, cin: int, pool_features: int) -> None:
            super().__init__()
            self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
            self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
            self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
            self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
            self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

        def forward(self, x):
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(avg3(x))
            return torch.cat([b1, b5, b3, bp], 1)

    class BlockB(nn.Module):  # Mixed_6a
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
            self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

        def forward(self, x):
            b3 = self.branch3x3(x)
            bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = F.max_pool2d(x, kernel_size=3, stride=2)
            return torch.cat([b3, bd, bp], 1)

    class BlockC(nn.Module):  # Mixed_6b..6e
        def __init__(self, cin: int, c7: int) -> None:
            super().__init__()
            self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
            self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
            self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
            self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
            self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

        def forward(self, x):
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                bd = layer(bd)
            bp = self.branch_pool(avg3(x))
            return torch.cat([b1, b7, bd, bp], 1)

    class BlockD(nn.Module):  # Mixed_7a
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
            self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
            self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
            self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

        def forward(self, x):
            b3 = self.branch3x3_2(self.branch3x3_1(x))
            b7 = x
            for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
                b7 = layer(b7)
            bp = F.max_pool2d(x, kernel_size=3, stride=2)
            return torch.cat([b3, b7, bp], 1)

    class BlockE(nn.Module):  # Mixed_7b (average pool) and Mixed_7c (max pool: the FID network's quirk)
        def __init__(self, cin: int, max_pool: bool) -> None:
            super().__init__()
            self.max_pool = max_pool
            self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
            self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
            self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
            self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
            self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
            self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
            self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
            self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

        def forward(self, x):
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else avg3(x)
            return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)

    class FIDInceptionV3(nn.Module):
        """The FID Inception network; ``forward`` takes (N, 3, H, W) floats in [0, 1] and returns (N, 2048)
        pool3 features. ``fc`` (1008 classes) is kept only so that the weights file loads strictly."""

        def __init__(self) -> None:
            super().__init__()
            self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
            self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
            self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
            self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
            self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
            self.Mixed_5b = BlockA(192, 32)
            self.Mixed_5c = BlockA(256, 64)
            self.Mixed_5d = BlockA(288, 64)
            self.Mixed_6a = BlockB(288)
            self.Mixed_6b = BlockC(768, 128)
            self.Mixed_6c = BlockC(768, 160)
            self.Mixed_6d = BlockC(768, 160)
            self.Mixed_6e = BlockC(768, 192)
            self.Mixed_7a = BlockD(768)
            self.Mixed_7b = BlockE(1280, max_pool=False)
            self.Mixed_7c = BlockE(2048, max_pool=True)
            self.fc = nn.Linear(2048, 1008)

        def forward(self, x):
            if x.shape[-2:] != (FID_SIZE, FID_SIZE):
                x = F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)
            x = 2 * x - 1
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
                x = getattr(self, f"Mixed_{name}")(x)
            return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    return FIDInceptionV3


_NETWORK_CLASS = None


def fid_inception_v3():
    """A new FID Inception network with PyTorch's default (random) initialisation, in eval mode."""
    global _NETWORK_CLASS
    if _NETWORK_CLASS is None:
        _NETWORK_CLASS = _build_network_classes()
    return _NETWORK_CLASS().eval()


def _shape(t) -> str:
    return "(" + ", ".join(str(int(s)) for s in t.shape) + ")"


def _check_state_dict(path: Path, state, expected: Mapping) -> None:
    """One-line ``EvaluationError`` unless ``state`` holds exactly the network's tensors (the BatchNorm
    ``num_batches_tracked`` counters may be absent, as in the 2019 pytorch-fid file)."""
    import torch

    what = f"{path} is not the FID Inception weights ({FID_WEIGHTS_NAME})"
    if not isinstance(state, Mapping):
        raise EvaluationError(f"{what}: it holds a {type(state).__name__}, not a state dict")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise EvaluationError(f"{what}: it is not a state dict of named tensors")
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} of the wrong shape (e.g. {k} {_shape(state[k])}, expected {_shape(expected[k])})"
        )
    hint = ""
    if "fc.weight" in state and tuple(state["fc.weight"].shape) == (1000, 2048):
        hint = "; torchvision's ImageNet Inception is a different network"
    raise EvaluationError(f"{what}: {', '.join(parts)}{hint}")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_inception(weights: str | os.PathLike, device: str = "cpu"):
    """The FID Inception network with the state dict at the local path ``weights``, loaded strictly, in eval
    mode on ``device``. One-line ``EvaluationError`` for a missing file, a file that is not a PyTorch state
    dict, a state dict of another network, or an unusable device."""
    import torch

    path = Path(weights)
    if not path.is_file():
        raise EvaluationError(f"Inception weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (torch.load raises many types for bad files)
        raise EvaluationError(f"{path} is not a PyTorch state dict file ({one_line(exc)[:200]})") from exc
    net = fid_inception_v3()
    _check_state_dict(path, state, net.state_dict())
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EvaluationError(f"{path} is not the FID Inception weights: {one_line(exc)[:300]}") from exc
    try:
        net = net.to(torch.device(device))
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise EvaluationError(
            f"cannot use device {device!r} for the Inception network: {one_line(exc)}"
        ) from exc
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


# -- feature extraction --------------------------------------------------------------------------------------


def as_rgb(image) -> np.ndarray:
    """(H, W, 3) uint8 from (H, W, 3), (H, W, 4) (alpha dropped) or (H, W) uint8; ``EvaluationError`` else."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise EvaluationError(f"images must be uint8, got {a.dtype} {a.shape}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise EvaluationError(f"images must be (H, W, 3) uint8, got shape {a.shape}")
    return a


class FeatureExtractor:
    """Feeds images (any size, uint8) to the network in batches; ``features()`` -> float64 (N, 2048).

    Each image is resized to 299 x 299 on ``device`` (bilinear, no antialiasing, as pytorch-fid does) when
    it is added, so a batch may mix sizes."""

    def __init__(self, net, device: str = "cpu", batch_size: int = 32) -> None:
        import torch

        if batch_size < 1:
            raise EvaluationError(f"batch size must be at least 1, got {batch_size}")
        self.net, self.device, self.batch_size = net, torch.device(device), int(batch_size)
        self._pending: list = []
        self._done: list[np.ndarray] = []
        self.count = 0

    def add(self, image) -> None:
        import torch
        import torch.nn.functional as F

        a = as_rgb(image)
        x = torch.from_numpy(np.array(a, order="C")).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        if x.shape[-2:] != (FID_SIZE, FID_SIZE):
            x = F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)
        self._pending.append(x)
        self.count += 1
        if len(self._pending) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        import torch

        if not self._pending:
            return
        with torch.inference_mode():
            out = self.net(torch.cat(self._pending, 0))
        self._done.append(out.double().cpu().numpy())
        self._pending = []

    def features(self) -> np.ndarray:
        self._flush()
        if not self._done:
            return np.zeros((0, FEATURE_DIM), dtype=np.float64)
        return np.concatenate(self._done, 0)


def extract_features(net, images: Iterable, device: str = "cpu", batch_size: int = 32) -> np.ndarray:
    """float64 (N, 2048) pool3 features of uint8 images (H, W, 3), in batches."""
    ex = FeatureExtractor(net, device=device, batch_size=batch_size)
    for im in images:
        ex.add(im)
    return ex.features()


# -- the metrics ---------------------------------------------------------------------------------------------


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance with ddof=1) of (N, d) features, N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise EvaluationError(f"FID needs at least 2 feature vectors, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) positive semi-definite matrix; negative eigenvalues -> 0."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, method: str = "eigh") -> float:
    """``Tr sqrt(S1 S2)`` for covariance matrices.

    ``eigh``: the sum of the square roots of the eigenvalues of ``sqrt(S1) S2 sqrt(S1)``, which is symmetric
    PSD and has the spectrum of ``S1 S2``. ``scipy``: pytorch-fid's route, ``scipy.linalg.sqrtm(S1 S2)``
    (with 1e-6 added to the diagonals when that is not finite), real part of its trace.
    """
    s1, s2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if method == "eigh":
        r = _sqrt_psd(s1)
        m = r @ s2 @ r
        w = np.linalg.eigvalsh((m + m.T) / 2)
        return float(np.sqrt(np.clip(w, 0.0, None)).sum())
    if method == "scipy":
        try:
            from scipy import linalg
        except ImportError as exc:
            raise EvaluationError("method 'scipy' needs scipy, which is not installed") from exc
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
        return float(np.real(np.trace(covmean)))
    raise ValueError(f"method must be 'eigh' or 'scipy', got {method!r}")


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "eigh") -> float:
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))`` (>= 0; rounding below 0 is clipped)."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2, method)
    return max(float(value), 0.0)


def _fid_low_rank(x: np.ndarray, y: np.ndarray) -> float:
    """FID from the features themselves: with centred A (n1, d), B (n2, d), ``S1 S2`` has the nonzero spectrum
    of ``M M^T / c`` (``M = A B^T``, ``c = (n1 - 1)(n2 - 1)``), so ``Tr sqrt(S1 S2)`` is the sum of the
    singular values of ``M`` over ``sqrt(c)``: exact, and an (n1, n2) problem instead of a (d, d) one."""
    n1, n2 = x.shape[0], y.shape[0]
    a, b = x - x.mean(axis=0), y - y.mean(axis=0)
    diff = x.mean(axis=0) - y.mean(axis=0)
    tr_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    value = diff @ diff + (a * a).sum() / (n1 - 1) + (b * b).sum() / (n2 - 1) - 2 * tr_sqrt
    return max(float(value), 0.0)


def fid_from_features(f1: np.ndarray, f2: np.ndarray, method: str = "auto") -> float:
    """FID between two (N, d) feature sets (N >= 2 each).

    method: ``features`` (the singular values of the (N1, N2) cross-Gram matrix of the centred features),
    ``eigh`` / ``scipy`` (``frechet_distance`` on the (d, d) statistics), or ``auto``: ``features`` when that
    is the smaller problem (fewer images than feature dimensions), else ``eigh``. All are the same
    quantity."""
    x, y = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    for f in (x, y):
        if f.ndim != 2 or f.shape[0] < 2:
            raise EvaluationError(f"FID needs at least 2 feature vectors, got shape {f.shape}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"mismatched features: {x.shape} and {y.shape}")
    n1, n2, d = x.shape[0], y.shape[0], x.shape[1]
    if method == "auto":
        method = "features" if n1 * n2 * min(n1, n2) <= d**3 else "eigh"
    if method == "features":
        return _fid_low_rank(x, y)
    mu1, s1 = feature_stats(x)
    mu2, s2 = feature_stats(y)
    return frechet_distance(mu1, s1, mu2, s2, method)


def _poly_kernel(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    return (a @ b.T / d + 1.0) ** 3


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m = kxx.shape[0]
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2.0 * kxy.sum() / (m * m))


# per side: up to this many features, the kernel matrices are computed once and shared by all subsets
_GRAM_LIMIT = 3000


def kid_from_features(
    f1: np.ndarray, f2: np.ndarray, n_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID between (N1, d) and (N2, d) features: (mean, std) over ``n_subsets`` subsets of
    ``m = min(subset_size, N1, N2)`` drawn without replacement on each side (``numpy`` generator ``seed``) of
    the unbiased MMD^2 with kernel ``(x.y / d + 1)^3``."""
    x, y = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mismatched features: {x.shape} and {y.shape}")
    m = min(int(subset_size), x.shape[0], y.shape[0])
    if m < 2:
        raise EvaluationError(
            f"KID needs at least 2 feature vectors per side, got {x.shape[0]} and {y.shape[0]}"
        )
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be at least 1, got {n_subsets}")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    gram = x.shape[0] <= _GRAM_LIMIT and y.shape[0] <= _GRAM_LIMIT
    if gram:
        kxx_all, kyy_all, kxy_all = _poly_kernel(x, x, d), _poly_kernel(y, y, d), _poly_kernel(x, y, d)
    scores = np.empty(n_subsets)
    for i in range(n_subsets):
        ix = rng.choice(x.shape[0], m, replace=False)
        iy = rng.choice(y.shape[0], m, replace=False)
        if gram:
            kxx, kyy, kxy = kxx_all[np.ix_(ix, ix)], kyy_all[np.ix_(iy, iy)], kxy_all[np.ix_(ix, iy)]
        else:
            xs, ys = x[ix], y[iy]
            kxx, kyy, kxy = _poly_kernel(xs, xs, d), _poly_kernel(ys, ys, d), _poly_kernel(xs, ys, d)
        scores[i] = _mmd2_unbiased(kxx, kyy, kxy)
    return float(scores.mean()), float(scores.std())


# -- hand crops ----------------------------------------------------------------------------------------------


def crop_square(box: Sequence[float], margin: float = CROP_MARGIN) -> tuple[float, float, float] | None:
    """(centre x, centre y, side) of the square crop around ``box`` [x0, y0, x1, y1] px: centred on the box,
    side = longer side * (1 + 2 * margin). None for a box that is not finite or has no area."""
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size != 4 or not np.isfinite(b).all():
        return None
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
        return None
    return (x0 + x1) / 2, (y0 + y1) / 2, max(w, h) * (1 + 2 * margin)


def hand_crop(
    image, box: Sequence[float], margin: float = CROP_MARGIN, size: int = FID_SIZE
) -> np.ndarray | None:
    """The square crop around a hand box, resized to ``size`` x ``size`` (uint8, (size, size, 3)).

    The crop is centred on the box [x0, y0, x1, y1] (pixel coordinates, pixel i spanning [i, i + 1)) with side
    ``max(w, h) * (1 + 2 * margin)``; what falls outside the image is black. The visible part is resized with
    PIL's antialiased bilinear filter, so the result is the same as padding then resizing, within half an
    output pixel, without ever building the padded image. None for a degenerate box or one entirely outside
    the image (no hand to see)."""
    from PIL import Image

    a = as_rgb(image)
    H, W = a.shape[:2]
    sq = crop_square(box, margin)
    if sq is None:
        return None
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b[2] <= 0 or b[3] <= 0 or b[0] >= W or b[1] >= H:
        return None
    cx, cy, side = sq
    X0, Y0 = cx - side / 2, cy - side / 2
    scale = size / side
    out = np.zeros((size, size, 3), dtype=np.uint8)
    # visible part of the crop, in output pixels (rounded), then back in image coordinates
    ox0 = max(0, round((0 - X0) * scale))
    oy0 = max(0, round((0 - Y0) * scale))
    ox1 = min(size, round((W - X0) * scale))
    oy1 = min(size, round((H - Y0) * scale))
    if ox1 <= ox0 or oy1 <= oy0:
        return out
    src = (
        min(max(X0 + ox0 / scale, 0.0), W),
        min(max(Y0 + oy0 / scale, 0.0), H),
        min(max(X0 + ox1 / scale, 0.0), W),
        min(max(Y0 + oy1 / scale, 0.0), H),
    )
    part = Image.fromarray(a).resize((ox1 - ox0, oy1 - oy0), Image.Resampling.BILINEAR, box=src)
    out[oy0:oy1, ox0:ox1] = np.asarray(part)
    return out


def _present_boxes(sample: Mapping) -> list:
    """Hand boxes of a reader dict (``bbox`` (2, 4), ``hand_present`` (2,)) or of a ``boxes`` entry."""
    if sample.get("boxes") is not None:
        return list(sample["boxes"])
    if "bbox" not in sample:
        return []
    boxes = np.asarray(sample["bbox"], dtype=np.float64).reshape(-1, 4)
    present = np.asarray(sample.get("hand_present", np.ones(len(boxes), bool)), dtype=bool).reshape(-1)
    return [bx for bx, p in zip(boxes, present, strict=False) if p]


def _split_item(item) -> tuple[np.ndarray, list | None]:
    """A generated item -> (image, boxes or None for 'no labels').

    Items: an image array; ``(image, boxes)``; or a dict with ``image`` and ``boxes`` (a list of
    [x0, y0, x1, y1]) or ``bbox`` + ``hand_present`` (what ``sinks.reader.open_shards`` yields)."""
    if isinstance(item, Mapping):
        if "image" not in item:
            raise EvaluationError(f"a generated sample has no 'image' (keys: {sorted(item)[:8]})")
        has_labels = item.get("boxes") is not None or "bbox" in item
        return item["image"], (_present_boxes(item) if has_labels else None)
    if isinstance(item, tuple) and len(item) == 2:
        image, boxes = item
        return image, (None if boxes is None else list(boxes))
    return item, None


# -- reference sets ------------------------------------------------------------------------------------------


def _is_shards(path: str) -> bool:
    if "://" in path and not path.startswith("file://"):
        return True
    p = Path(path.removeprefix("file://"))
    if p.is_file():
        return p.suffix == ".tar"
    return p.is_dir() and (any(p.glob("*.tar")) or (p / "manifest.json").is_file())


def _photos(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


class ReferenceSet:
    """A reference set: shards (a run folder, a .tar, a URL; via ``sinks.reader.open_shards``, with label
    boxes) or a folder of photos (``.jpg``, ``.jpeg``, ``.png``, recursively; no boxes). Construction checks
    that it exists and holds images (one-line ``EvaluationError`` otherwise)."""

    def __init__(self, path: str | os.PathLike, limit: int | None = None) -> None:
        self.path = str(path)
        self.limit = limit
        self.unreadable = 0
        local = Path(self.path.removeprefix("file://"))
        if "://" not in self.path.removeprefix("file://") and not local.exists():
            raise EvaluationError(f"reference not found: {self.path}")
        self.is_shards = _is_shards(self.path)
        self.photos: list[Path] = []
        if not self.is_shards:
            if not local.is_dir():
                raise EvaluationError(
                    f"reference {self.path} is neither a folder of photos nor shards (.tar)"
                )
            self.photos = _photos(local)
            if not self.photos:
                raise EvaluationError(
                    f"reference folder {self.path} holds no images ({', '.join(PHOTO_SUFFIXES)}) "
                    "and no shards (.tar)"
                )

    @property
    def has_boxes(self) -> bool:
        return self.is_shards

    def __iter__(self) -> Iterator[tuple[np.ndarray, list | None]]:
        n = 0
        if self.is_shards:
            from sinks.reader import open_shards

            for sample in open_shards(self.path, split_by_worker=False):
                if self.limit is not None and n >= self.limit:
                    return
                n += 1
                yield sample["image"], _present_boxes(sample)
            return
        from PIL import Image

        for p in self.photos:
            if self.limit is not None and n >= self.limit:
                return
            try:
                with Image.open(p) as im:
                    arr = np.asarray(im.convert("RGB"))
            except Exception as exc:  # noqa: BLE001 (PIL raises many types for bad files)
                self.unreadable += 1
                logger.warning("skipping unreadable reference image %s: %s", p, one_line(exc))
                continue
            n += 1
            yield arr, None


# -- the entry point -----------------------------------------------------------------------------------------


def _features_with_crops(net, items: Iterable, device: str, batch_size: int, margin: float):
    """(image features, hand-crop features, whether any item carried hand labels) over ``items``."""
    full = FeatureExtractor(net, device, batch_size)
    crops = FeatureExtractor(net, device, batch_size)
    labelled = False
    for item in items:
        image, boxes = _split_item(item)
        image = as_rgb(image)
        full.add(image)
        if boxes is not None:
            labelled = True
            for box in boxes:
                c = hand_crop(image, box, margin=margin)
                if c is not None:
                    crops.add(c)
        if full.count % (10 * batch_size) == 0:
            logger.info("Inception features: %d images, %d hand crops", full.count, crops.count)
    return full.features(), crops.features(), labelled


def scores_from_features(
    generated: np.ndarray,
    reference: np.ndarray,
    generated_crops: np.ndarray | None = None,
    reference_crops: np.ndarray | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict:
    """FID/KID and FID-H/KID-H from Inception features: (N, 2048) arrays of whole images and of hand crops.

    A crops argument of None means that side has no hand labels (a folder of photos, or generated images
    given without boxes): FID-H/KID-H are then None, and so are they with fewer than 2 crops on a side;
    ``fid_h_note`` says why. Fewer than 2 images on a side is an ``EvaluationError``."""
    n_gen, n_ref = len(generated), len(reference)
    if n_gen < 2 or n_ref < 2:
        raise EvaluationError(
            f"FID/KID need at least 2 images on each side, got {n_gen} generated and {n_ref} reference"
        )
    kid_mean, kid_std = kid_from_features(generated, reference, kid_subsets, kid_subset_size, seed)
    n_gen_hands = None if generated_crops is None else len(generated_crops)
    n_ref_hands = None if reference_crops is None else len(reference_crops)
    out = {
        "fid": fid_from_features(generated, reference),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "fid_h": None,
        "kid_h_mean": None,
        "kid_h_std": None,
        "fid_h_note": None,
        "n_generated": n_gen,
        "n_reference": n_ref,
        "n_generated_hands": n_gen_hands or 0,
        "n_reference_hands": n_ref_hands or 0,
        "kid_subset_size": min(kid_subset_size, n_gen, n_ref),
    }
    if n_ref_hands is None:
        out["fid_h_note"] = "the reference is a folder of photos without hand labels, so it has no hand crops"
    elif n_gen_hands is None:
        out["fid_h_note"] = "the generated samples came without hand boxes"
    elif n_gen_hands < 2 or n_ref_hands < 2:
        out["fid_h_note"] = (
            f"too few hand crops ({n_gen_hands} generated, {n_ref_hands} reference; at least 2 each)"
        )
    else:
        out["fid_h"] = fid_from_features(generated_crops, reference_crops)
        out["kid_h_mean"], out["kid_h_std"] = kid_from_features(
            generated_crops, reference_crops, kid_subsets, kid_subset_size, seed
        )
    for k in ("fid", "kid_mean", "fid_h", "kid_h_mean"):
        if out[k] is not None and not math.isfinite(out[k]):
            raise EvaluationError(f"{k} is not finite ({out[k]}): are the Inception weights sound?")
    return out


def compute_fid_kid(
    generated: Iterable,
    reference: str | os.PathLike,
    weights: str | os.PathLike,
    device: str = "cpu",
    batch_size: int = 32,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    margin: float = CROP_MARGIN,
    max_reference: int | None = None,
) -> dict:
    """FID/KID of ``generated`` against ``reference``, and FID-H/KID-H on hand crops.

    generated: iterable of images (H, W, 3) uint8, ``(image, boxes)`` pairs, or dicts with ``image`` and
        ``boxes`` or ``bbox`` + ``hand_present`` (e.g. ``sinks.reader.open_shards(run)``); boxes are
        [x0, y0, x1, y1] px.
    reference: a folder of photos (no boxes: FID-H/KID-H are None) or shards (boxes from the labels).
    weights: local path of ``pt_inception-2015-12-05-6726825d.pth``.

    Returns ``scores_from_features``'s dict (fid, kid_mean, kid_std, fid_h, kid_h_mean, kid_h_std, fid_h_note,
    n_generated, n_reference, n_generated_hands, n_reference_hands, kid_subset_size) plus
    n_reference_unreadable and inception_sha256. The reference is checked before the network runs.
    """
    ref = ReferenceSet(reference, limit=max_reference)
    net = load_inception(weights, device)
    g_full, g_crops, g_labelled = _features_with_crops(net, generated, device, batch_size, margin)
    r_full, r_crops, _ = _features_with_crops(net, ref, device, batch_size, margin)
    out = scores_from_features(
        g_full,
        r_full,
        g_crops if g_labelled else None,
        r_crops if ref.has_boxes else None,
        kid_subsets,
        kid_subset_size,
        seed,
    )
    out["n_reference_unreadable"] = ref.unreadable
    out["inception_sha256"] = file_sha256(weights)
    return out
