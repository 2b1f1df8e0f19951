"""Reading shards for training: ``open_shards`` (a WebDataset pipeline) and ``collate``.

Each sample is a dict of arrays (hands stacked right then left, zeros where a hand is absent and
``hand_present`` False):

    key str; image (H, W, 3) uint8; mesh (H, W, 3) uint8; mesh_local (L, L, 3) uint8; mask (H, W) uint8;
    verts (2, 778, 3) float32 m; joints_3d (2, 21, 3) float32 m; joints_2d (2, 21, 2) float32 px;
    joints_visible (2, 21) bool; hand_present (2,) bool; mano_pose (2, 48) float32; mano_shape (2, 10);
    mano_trans (2, 3) m; K (3, 3) float32 px; dist (8,) float32 zero-padded, n_dist int; bbox (2, 4) px;
    crop_box (4,) px; caption str; hand_token_indices list[int]; hand_type str; seed int.

Errors: a corrupt or truncated shard raises ``ShardReadError`` naming the shard (``handler="raise"``), or is
logged and skipped (``handler="skip"``). A label from a newer schema version is refused with a message
saying so.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np

from pipeline.schema import SIDES, SchemaError
from sinks.records import decode_record

logger = logging.getLogger(__name__)


class ShardReadError(RuntimeError):
    """A shard that cannot be read; the message names the shard."""


def resolve_shards(source: str | os.PathLike | Sequence[str]) -> list[str]:
    """A folder (its ``*.tar``), a file, a brace/glob pattern, or a list of paths/URLs -> list of shard URLs."""
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    s = str(source)
    if os.path.isdir(s):
        urls = sorted(glob.glob(os.path.join(s, "*.tar")))
        if not urls:
            raise FileNotFoundError(f"no .tar shards in {s}")
        return urls
    if any(c in s for c in "*?[") and "://" not in s:
        urls = sorted(glob.glob(s))
        if not urls:
            raise FileNotFoundError(f"no shards match {s}")
        return urls
    return [s]


def to_arrays(decoded: dict) -> dict:
    """``sinks.records.decode_record`` output -> the training dict described in the module doc."""
    label = decoded["label"]
    present = np.array([label.hands[s] is not None for s in SIDES])

    def stack(attr: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        out = np.zeros((2, *shape), dtype=dtype)
        for i, s in enumerate(SIDES):
            if label.hands[s] is not None:
                out[i] = getattr(label.hands[s], attr)
        return out

    dist = np.zeros(8, dtype=np.float32)
    n_dist = 0 if label.camera.dist is None else len(label.camera.dist)
    if n_dist:
        dist[:n_dist] = label.camera.dist
    return {
        "key": label.key,
        "image": decoded["image"],
        "mesh": decoded["mesh"],
        "mesh_local": decoded["mesh_local"],
        "mask": decoded["mask"],
        "verts": np.nan_to_num(label.verts, nan=0.0),
        "joints_3d": stack("joints_3d", (21, 3)),
        "joints_2d": stack("joints_2d", (21, 2)),
        "joints_visible": stack("joints_visible", (21,), bool),
        "hand_present": present,
        "mano_pose": stack("mano_pose", (48,)),
        "mano_shape": stack("mano_shape", (10,)),
        "mano_trans": stack("mano_trans", (3,)),
        "K": label.camera.K.astype(np.float32),
        "dist": dist,
        "n_dist": n_dist,
        "bbox": stack("bbox", (4,)),
        "crop_box": label.crop_box.astype(np.float32),
        "caption": label.caption,
        "hand_token_indices": list(label.hand_token_indices),
        "hand_type": label.hand_type,
        "seed": label.seed,
    }


def _wrap_handler(handler: str):
    """A WebDataset error handler: 'skip' logs and continues; 'raise' raises ``ShardReadError`` naming the
    shard (WebDataset appends the shard URL to the exception's args)."""
    if handler not in ("raise", "skip"):
        raise ValueError(f"handler must be 'raise' or 'skip', got {handler!r}")

    def handle(exn: Exception) -> bool:
        url = next((a for a in getattr(exn, "args", ()) if isinstance(a, str) and ".tar" in a), None)
        where = f"shard {url}" if url else "a shard"
        if handler == "skip":
            logger.warning("skipping unreadable data in %s: %s", where, exn)
            return True
        if isinstance(exn, (ShardReadError, SchemaError)):
            raise exn
        first = exn.args[0] if exn.args else ""
        raise ShardReadError(f"cannot read {where}: {type(exn).__name__}: {first}") from exn

    return handle


def open_shards(
    source: str | os.PathLike | Sequence[str],
    shuffle: int = 0,
    seed: int = 0,
    handler: str = "raise",
    split_by_worker: bool = True,
) -> Iterable[dict]:
    """A WebDataset over the shards yielding training dicts (module doc).

    shuffle: shuffle buffer size (0 = keep order; >0 also shuffles shard order with ``seed``).
    handler: 'raise' (``ShardReadError`` naming the shard) or 'skip' (log and continue).
    With ``torch.utils.data.DataLoader(num_workers > 0)`` each worker reads its own shards.
    """
    import webdataset as wds

    urls = resolve_shards(source)
    h = _wrap_handler(handler)
    ds = wds.WebDataset(
        urls,
        shardshuffle=(max(len(urls), 1) if shuffle > 0 else False),
        seed=seed,
        handler=h,
        workersplitter=wds.split_by_worker if split_by_worker else None,
        nodesplitter=None,
        empty_check=False,
    )
    if shuffle > 0:
        ds = ds.shuffle(shuffle, seed=seed)

    def decode(sample: dict) -> dict:
        url = sample.get("__url__", "?")
        try:
            return to_arrays(decode_record(sample))
        except SchemaError as exc:
            raise SchemaError(f"{url}: {sample.get('__key__')}: {exc}") from exc

    return ds.map(decode, handler=h)


def collate(samples: list[dict]) -> dict:
    """Batch training dicts: arrays become torch tensors with a leading batch dim; strings and lists stay lists.

    Images must share a size within a batch; absent hands are zeros with ``hand_present`` False.
    """
    import torch

    out: dict = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        if isinstance(vals[0], np.ndarray):
            out[k] = torch.as_tensor(np.stack(vals))
        elif isinstance(vals[0], (int, np.integer)) and not isinstance(vals[0], bool) and k != "seed":
            out[k] = torch.as_tensor(vals)
        else:
            out[k] = vals
    return out
