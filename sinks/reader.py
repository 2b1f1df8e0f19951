"""Reading shards for training: ``open_shards`` (a WebDataset-style pipeline) and ``collate``.

Each sample is a dict of arrays (hands stacked right then left, zeros where a hand is absent and
``hand_present`` False):

    key str; image (H, W, 3) uint8; mesh (H, W, 3) uint8; mesh_local (L, L, 3) uint8; mask (H, W) uint8;
    verts (2, 778, 3) float32 m; joints_3d (2, 21, 3) float32 m; joints_2d (2, 21, 2) float32 px;
    joints_visible (2, 21) bool; hand_present (2,) bool; mano_pose (2, 48) float32; mano_shape (2, 10);
    mano_trans (2, 3) m; K (3, 3) float32 px; dist (8,) float32 zero-padded, n_dist int; bbox (2, 4) px;
    crop_box (4,) px; caption str; hand_token_indices list[int]; hand_type str; seed int; view str
    (``global``, or ``local`` for a local close-up record of a ``--views global,local`` run: its image, mesh,
    mask, K and keypoints are in the crop's frame, see ``sinks.records``); parent str (the key of the
    sample's global record: the record's own key for a global record).

Shards are local paths, ``file://`` URLs or any fsspec URL (``s3://``, ``gs://``, ``memory://``, ...;
``pipe:`` commands go through WebDataset's opener), read record by record with ``sinks.records.iter_records``
(the one tar reader; ``ShardReadError``, ``ShardsNotFoundError`` and ``resolve_shards`` live there too and are
re-exported here). With ``verify=True`` each shard's sha256 is checked against the run's
``manifest.json`` (or, before the run is finalised, the shard's ``<prefix>-NNNNNN.meta.json`` report) before
any of its records is yielded.

Errors: every problem is a one-line ``ShardReadError`` (or ``SchemaError`` for a label that breaks the schema,
e.g. a newer schema version) naming the shard and, where known, the record key. ``handler="raise"`` raises it;
``handler="skip"`` logs it and goes on with the next record (a bad record) or the next shard (a corrupt,
truncated, missing or mismatching shard).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from pipeline.errors import HandgenError, one_line
from pipeline.schema import SIDES, SchemaError
from sinks.records import (
    IMAGE_FILES,
    LOCAL_IMAGE_FILES,
    MASK_FILE,
    MESH_FILE,
    MESH_LOCAL_FILE,
    ShardChecksums,
    ShardReadError,
    ShardsNotFoundError,
    decode_image,
    decode_record,
    iter_records,
    resolve_shards,
)

__all__ = [
    "ShardReadError",
    "ShardsNotFoundError",
    "collate",
    "decode_sample",
    "open_shards",
    "resolve_shards",
    "to_arrays",
]

logger = logging.getLogger(__name__)


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
        "view": label.view_name,
        "parent": label.parent_key,
    }


def _check_handler(handler: str) -> str:
    if handler not in ("raise", "skip"):
        raise ValueError(f"handler must be 'raise' or 'skip', got {handler!r}")
    return handler


def _fail(handler: str, err: HandgenError) -> None:
    """Raise ``err`` (handler 'raise') or log it and return (handler 'skip')."""
    if handler == "raise":
        raise err
    logger.warning("skipping: %s", err.one_line())


def _read_stage(src: Iterable[dict], handler: str, verify: bool) -> Iterator[dict]:
    """Pipeline stage: shard URLs (``{"url": ...}``) -> raw records; a bad shard goes to ``handler``."""
    checksums = ShardChecksums() if verify else None
    for item in src:
        url = item["url"]
        try:
            yield from iter_records(url, checksums=checksums)
        except ShardReadError as exc:
            _fail(handler, exc)


def _bad_file(sample: dict) -> str | None:
    """The first image file of a raw record that does not decode (None if they all do)."""
    for name in (*IMAGE_FILES, *LOCAL_IMAGE_FILES, MESH_FILE, MESH_LOCAL_FILE, MASK_FILE):
        if name in sample:
            try:
                decode_image(sample[name])
            except Exception:  # noqa: BLE001 (PIL raises many types for bad data)
                return name
    return None


def decode_sample(sample: dict) -> dict:
    """A raw record (``__key__``, ``__url__``, file name -> bytes) -> training dict; one-line errors naming
    the shard and the key (``SchemaError`` for a label that breaks the schema, ``ShardReadError``
    otherwise)."""
    url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
    try:
        return to_arrays(decode_record(sample))
    except SchemaError as exc:
        detail = one_line(exc).removeprefix(f"record {key}: ")
        raise SchemaError(f"shard {url}: record {key}: {detail}") from exc
    except Exception as exc:  # noqa: BLE001 (image decoders and numpy raise many types for bad bytes)
        bad = _bad_file(sample)
        what = (
            f"{bad} is not a readable image"
            if bad
            else f"cannot decode: {type(exc).__name__}: {one_line(exc)}"
        )
        raise ShardReadError(f"shard {url}: record {key}: {what}") from exc


def _decode_stage(src: Iterable[dict], handler: str) -> Iterator[dict]:
    """Pipeline stage: raw records -> training dicts; a bad record goes to ``handler``."""
    for sample in src:
        try:
            out = decode_sample(sample)
        except (ShardReadError, SchemaError) as exc:
            _fail(handler, exc)
            continue
        yield out


def open_shards(
    source: str | os.PathLike | Sequence[str],
    shuffle: int = 0,
    seed: int = 0,
    handler: str = "raise",
    split_by_worker: bool = True,
    verify: bool = False,
) -> Iterable[dict]:
    """A WebDataset pipeline over the shards yielding training dicts (module doc).

    shuffle: shuffle buffer size (0 = keep order; >0 also shuffles shard order with ``seed``).
    handler: 'raise' (``ShardReadError`` naming the shard and key) or 'skip' (log and continue).
    verify: check each shard's sha256 against ``manifest.json`` (or its ``.meta.json``) before reading it.
    With ``torch.utils.data.DataLoader(num_workers > 0)`` each worker reads its own shards.
    """
    import webdataset as wds

    _check_handler(handler)
    urls = resolve_shards(source)
    stages: list = [wds.SimpleShardList(urls)]
    if split_by_worker:
        stages.append(wds.split_by_worker)
    if shuffle > 0:
        stages.append(wds.filters.shuffle(max(len(urls), 1), seed=seed))
    stages.append(functools.partial(_read_stage, handler=handler, verify=verify))
    if shuffle > 0:
        stages.append(wds.filters.shuffle(shuffle, seed=seed))
    stages.append(functools.partial(_decode_stage, handler=handler))
    return wds.DataPipeline(*stages)


def collate(samples: list[dict]) -> dict:
    """Batch training dicts: arrays become torch tensors with a leading batch dim; strings and lists stay
    lists.

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
