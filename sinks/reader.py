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

Shards are local paths, ``file://`` URLs or any fsspec URL (``s3://``, ``gs://``, ``memory://``, ...; ``pipe:``
commands go through WebDataset's opener). With ``verify=True`` each shard's sha256 is checked against the run's
``manifest.json`` (or, before the run is finalised, the shard's ``<prefix>-NNNNNN.meta.json`` report) before
any of its records is yielded.

Errors: every problem is a one-line ``ShardReadError`` (or ``SchemaError`` for a label that breaks the schema,
e.g. a newer schema version) naming the shard and, where known, the record key. ``handler="raise"`` raises it;
``handler="skip"`` logs it and goes on with the next record (a bad record) or the next shard (a corrupt,
truncated, missing or mismatching shard).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from pipeline.errors import HandgenError, one_line
from pipeline.schema import SIDES, SchemaError
from sinks.records import IMAGE_FILES, LOCAL_IMAGE_FILES, decode_image, decode_record

logger = logging.getLogger(__name__)

_SPOOL_BYTES = 256 * 2**20  # a verified shard is held in memory up to this size, then in a temporary file


class ShardReadError(HandgenError, RuntimeError):
    """A shard (or a record in it) that cannot be read; the one-line message names the shard and the key."""


class ShardsNotFoundError(ShardReadError, FileNotFoundError):
    """No shards where the reader was pointed: a missing folder or file, or a folder without ``*.tar``."""


def _is_url(s: str) -> bool:
    return "://" in s and not s.startswith("file://")


def _local(s: str) -> str:
    return s.removeprefix("file://")


def _expand_braces(s: str) -> list[str]:
    if "{" not in s:
        return [s]
    import braceexpand

    return list(braceexpand.braceexpand(s))


def resolve_shards(source: str | os.PathLike | Sequence[str]) -> list[str]:
    """A folder (its ``*.tar``), a file, a brace/glob pattern, or a list of paths/URLs -> list of shard URLs.

    Folders and glob patterns may be fsspec URLs (``s3://bucket/run``). Raises ``ShardsNotFoundError`` (also a
    ``FileNotFoundError``) for a missing folder or file, or a folder or pattern without shards.
    """
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    s = str(source)
    if s.startswith("pipe:"):
        return [s]
    if _is_url(s):
        return _resolve_url(s)
    path = _local(s)
    if "{" in path:
        return _expand_braces(s)
    if os.path.isdir(path):
        urls = sorted(glob.glob(os.path.join(glob.escape(path), "*.tar")))
        if not urls:
            raise ShardsNotFoundError(f"no .tar shards in {s}")
        return urls
    if any(c in path for c in "*?["):
        urls = sorted(glob.glob(path))
        if not urls:
            raise ShardsNotFoundError(f"no shards match {s}")
        return urls
    if not os.path.exists(path):
        what = "shard" if path.endswith(".tar") else "output folder"
        raise ShardsNotFoundError(f"{what} not found: {s}")
    return [s]


def _resolve_url(s: str) -> list[str]:
    """``resolve_shards`` for an fsspec URL: a folder is listed, a glob is matched, anything else is kept."""
    if "{" in s:
        return _expand_braces(s)
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(s)
        if any(c in path for c in "*?["):
            urls = sorted(fs.unstrip_protocol(p) for p in fs.glob(path))
            if not urls:
                raise ShardsNotFoundError(f"no shards match {s}")
            return urls
        if s.endswith(".tar"):
            return [s]
        if fs.isdir(path):
            urls = sorted(fs.unstrip_protocol(p) for p in fs.glob(path.rstrip("/") + "/*.tar"))
            if not urls:
                raise ShardsNotFoundError(f"no .tar shards in {s}")
            return urls
        if not fs.exists(path):
            raise ShardsNotFoundError(f"output folder not found: {s}")
    except ShardReadError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        raise ShardReadError(f"cannot list shards at {s}: {one_line(exc)}") from exc
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


def _split_url(url: str) -> tuple[str, str]:
    """(folder, file name) of a shard path or URL."""
    head, _, name = url.rstrip("/").rpartition("/")
    return head, name


class _Checksums:
    """Expected sha256 of shards, from each folder's ``manifest.json`` (read once per folder) or, for a run that
    is not finalised yet, the shard's ``.meta.json`` report."""

    def __init__(self) -> None:
        self._manifests: dict[str, dict[str, str] | None] = {}

    def _manifest(self, folder: str) -> dict[str, str] | None:
        if folder not in self._manifests:
            from sinks.store import Store

            store = Store(folder or ".")
            if not store.exists("manifest.json"):
                self._manifests[folder] = None
            else:
                where = store.path("manifest.json")
                try:
                    shards = json.loads(store.read_bytes("manifest.json"))["shards"]
                    self._manifests[folder] = {str(e["name"]): str(e["sha256"]) for e in shards}
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise ShardReadError(f"cannot read {where}: {one_line(exc)}") from exc
        return self._manifests[folder]

    def expected(self, url: str) -> str:
        """The sha256 that shard ``url`` must have; ``ShardReadError`` when no record of it exists."""
        from sinks.store import Store

        folder, name = _split_url(url)
        manifest = self._manifest(folder)
        if manifest is not None:
            if name not in manifest:
                raise ShardReadError(f"shard {url} is not listed in {folder}/manifest.json")
            return manifest[name]
        meta = name.removesuffix(".tar") + ".meta.json"
        store = Store(folder or ".")
        try:
            return str(json.loads(store.read_bytes(meta))["sha256"])
        except FileNotFoundError:
            raise ShardReadError(f"cannot verify shard {url}: no manifest.json or {meta} beside it") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ShardReadError(f"cannot verify shard {url}: cannot read {meta}: {one_line(exc)}") from exc


def _open_raw(url: str):
    """A binary file object for a shard path or URL."""
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    if _is_url(url):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(_local(url), "rb")  # noqa: SIM115 (closed by the caller)


@contextlib.contextmanager
def _open_shard(url: str, checksums: _Checksums | None):
    """Open a shard for reading; with ``checksums``, read it once while hashing it (into memory or a temporary
    file) and refuse it on a mismatch before anything is yielded."""
    try:
        raw = _open_raw(url)
    except FileNotFoundError:
        raise ShardReadError(f"shard not found: {url}") from None
    except (OSError, ValueError, ImportError) as exc:
        raise ShardReadError(f"cannot open shard {url}: {one_line(exc)}") from exc
    with contextlib.ExitStack() as stack:
        stack.enter_context(raw)
        if checksums is None:
            yield raw
            return
        expected = checksums.expected(url)
        spool = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES))
        digest = hashlib.sha256()
        try:
            for chunk in iter(functools.partial(raw.read, 2**20), b""):
                digest.update(chunk)
                spool.write(chunk)
        except OSError as exc:
            raise ShardReadError(f"cannot read shard {url}: {one_line(exc)}") from exc
        if digest.hexdigest() != expected:
            raise ShardReadError(
                f"shard {url} fails verification: sha256 {digest.hexdigest()[:16]}..., expected {expected[:16]}..."
            )
        spool.seek(0)
        yield spool


def _split_name(name: str) -> tuple[str, str] | None:
    """``dir/key.ext.ext`` -> (``dir/key``, ``ext.ext``) as WebDataset groups files; None for no extension."""
    head, sep, base = name.rpartition("/")
    key, dot, ext = base.partition(".")
    if not dot or not key:
        return None
    return head + sep + key, ext.lower()


class _TailTracker:
    """A read-only file wrapper that remembers the last bytes read (to see the tar end-of-archive blocks)."""

    TAIL = 2 * tarfile.BLOCKSIZE

    def __init__(self, f) -> None:
        self._f, self.tail, self.size = f, b"", 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.size += len(data)
        self.tail = (self.tail + data)[-self.TAIL :]
        return data

    def drain(self) -> None:
        """Read what the tar reader left (padding after the end-of-archive blocks)."""
        while self.read(2**20):
            pass

    def ended_cleanly(self) -> bool:
        """True when the stream ends with a tar's two zero blocks, on a block boundary."""
        return self.size % tarfile.BLOCKSIZE == 0 and self.tail == bytes(self.TAIL)


def _shard_records(url: str, checksums: _Checksums | None) -> Iterator[dict]:
    """Raw records (``__key__``, ``__url__``, extension -> bytes) of one shard, in file order.

    A record is yielded only once the next record starts, or once the shard has ended with its end-of-archive
    blocks, so a truncated shard never yields a partial record. Errors are ``ShardReadError`` naming the shard
    and the last complete key.
    """
    last_key = None
    with _open_shard(url, checksums) as raw:
        f = _TailTracker(raw)
        current: dict | None = None
        try:
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                for member in tar:
                    if not member.isreg() or member.name.startswith("__"):
                        continue
                    parts = _split_name(member.name)
                    if parts is None:
                        continue
                    key, ext = parts
                    data = tar.extractfile(member).read()
                    if len(data) != member.size:
                        raise EOFError(f"{member.name} holds {len(data)} of its {member.size} bytes")
                    if current is None or current["__key__"] != key:
                        if current is not None:
                            last_key = current["__key__"]
                            yield current
                        current = {"__key__": key, "__url__": url}
                    if ext in current:
                        raise ShardReadError(f"shard {url}: record {key}: duplicate file {member.name}")
                    current[ext] = data
            f.drain()
            if not f.ended_cleanly():
                raise EOFError("no end-of-archive blocks")
        except ShardReadError:
            raise
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            after = f" after record {last_key}" if last_key else ""
            raise ShardReadError(f"shard {url} is corrupt or truncated{after}: {one_line(exc)}") from exc
        if current is not None:
            yield current


def _read_stage(src: Iterable[dict], handler: str, verify: bool) -> Iterator[dict]:
    """Pipeline stage: shard URLs (``{"url": ...}``) -> raw records; a bad shard goes to ``handler``."""
    checksums = _Checksums() if verify else None
    for item in src:
        url = item["url"]
        try:
            yield from _shard_records(url, checksums)
        except ShardReadError as exc:
            _fail(handler, exc)


def _bad_file(sample: dict) -> str | None:
    """The first image file of a raw record that does not decode (None if they all do)."""
    for name in (*IMAGE_FILES, *LOCAL_IMAGE_FILES, "mesh.png", "mesh_local.png", "mask.png"):
        if name in sample:
            try:
                decode_image(sample[name])
            except Exception:  # noqa: BLE001 (PIL raises many types for bad data)
                return name
    return None


def decode_sample(sample: dict) -> dict:
    """A raw record (``__key__``, ``__url__``, file name -> bytes) -> training dict; one-line errors naming the
    shard and the key (``SchemaError`` for a label that breaks the schema, ``ShardReadError`` otherwise)."""
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
