"""The one mapping between a ``Sample`` and the files of a WebDataset record (DESIGN section 3), both ways.

Record files: ``image.jpg`` (quality 95; ``image.png`` when lossless), ``mesh.png``, ``mesh_local.png``,
``mask.png`` (uint8 0/1/2), ``verts.npy`` (2, 778, 3) float32, ``label.json``; training tuples
(``hands prepare``) add ``image_local.jpg`` (``.png`` when lossless), the real image's crop. Encoding is
deterministic: equal samples give byte-identical files.

Views (``--views global,local``): ``local_sample`` turns a rendered, generated sample into its local record,
a record of its own with the same files, written right after the global one:

* key ``<run_tag>-<index:010d>-local``; camera K = ``crop_intrinsics(K, crop_box, L)`` (same distortion);
  image_size (L, L);
* per hand the same MANO parameters, joints_3d and verts, with joints_2d, joints_visible and bbox in the
  local frame (the renderer's ``RenderResult.local``);
* ``mesh.png`` / ``mask.png``: the local mesh image and mask (black / 0 where the crop leaves the global
  image); ``crop_box`` its whole frame ``[-0.5, -0.5, L - 0.5, L - 0.5]``, so ``mesh_local.png`` is the same
  image as ``mesh.png`` (the local view of a local record is itself);
* ``image``: the generator's local image (AttentionHand with views global,local), or else the global image
  resampled through the crop (``pipeline.imaging.crop_resample``: the composite);
* the rest of the label (index, seed, caption, source, generator, quality) is the global record's, and
  ``label.json`` adds ``view``: ``{name: "local", parent: <global key>, parent_image_size: [H, W],
  parent_crop_box: [...] (global px), image: "generated" | "resampled"}``, what ``hands validate`` needs to
  re-render it exactly.

Global records have no ``view`` field (labels of global-only runs are unchanged), and do not carry the
generator's local image (``image_local``): the local record does.

Shards: this module is the one place that reads and writes the tar files themselves (no other product module
imports ``tarfile``). A shard is an uncompressed tar in WebDataset's layout: the files of a record are the
consecutive members ``<key>.<name>`` (sorted by name), written by ``RecordWriter`` (PAX format, mtime 0, mode
0444, no user or group names: equal records give byte-identical shards). ``iter_records`` streams the raw
records of a shard (``{"__key__", "__url__", "<name>": bytes, ...}``) in file order, from a path, a
``file://`` or fsspec URL (``s3://``, ``memory://``, ...), a ``pipe:`` command or an open binary file, never
yielding a partial record of a truncated shard, optionally checking the shard's sha256 first
(``ShardChecksums``). ``RecordIndex`` holds the byte offset and size of every member of a shard by record key,
for random access. ``resolve_shards`` turns a run folder, a glob or a list into shard URLs. Every read error
is a one-line ``ShardReadError`` naming the shard and, where known, the record key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

import numpy as np
from PIL import Image

from pipeline.errors import HandgenError, one_line
from pipeline.sample import Sample
from pipeline.schema import Camera, Label, SchemaError, make_key

RECORD_FILES = ("label.json", "verts.npy", "mesh.png", "mesh_local.png", "mask.png")
IMAGE_FILES = ("image.jpg", "image.png")
LOCAL_IMAGE_FILES = ("image_local.jpg", "image_local.png")
JPEG_QUALITY = 95


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _jpg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def _check_image(name: str, arr, shape_hw: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    if arr is None:
        raise SchemaError(f"{name}: not filled in (stage missing?)")
    a = np.asarray(arr)
    want = (*shape_hw, channels) if channels else tuple(shape_hw or ())
    if a.dtype != np.uint8 or (shape_hw is not None and a.shape != want):
        raise SchemaError(f"{name}: expected uint8 array of shape {want}, got {a.dtype} {a.shape}")
    return a


def encode_record(sample: Sample, lossless: bool = False) -> tuple[dict[str, bytes], Label]:
    """Files of one record (name -> bytes, plus ``__key__``) and the validated label."""
    label = sample.to_label()
    H, W = label.image_size
    image = _check_image("image", sample.image, (H, W), 3)
    mesh = _check_image("mesh_image", sample.mesh_image, (H, W), 3)
    mask = _check_image("mask", sample.mask, (H, W), None)
    local = _check_image("mesh_local", sample.mesh_local, None, None)
    if local.ndim != 3 or local.shape[0] != local.shape[1] or local.shape[2] != 3:
        raise SchemaError(f"mesh_local: expected a square (L, L, 3) uint8 image, got {local.shape}")
    if mask.max(initial=0) > 2:
        raise SchemaError(f"mask: values must be 0, 1 or 2, got max {int(mask.max())}")
    files = {
        "__key__": label.key,
        "image.png" if lossless else "image.jpg": _png(image) if lossless else _jpg(image),
        "mesh.png": _png(mesh),
        "mesh_local.png": _png(local),
        "mask.png": _png(mask),
        "verts.npy": label.verts_bytes(),
        "label.json": label.label_bytes(),
    }
    if sample.image_local is not None:
        crop = _check_image("image_local", sample.image_local, local.shape[:2], 3)
        files["image_local.png" if lossless else "image_local.jpg"] = _png(crop) if lossless else _jpg(crop)
    return files, label


def local_sample(sample: Sample) -> Sample:
    """The local record of a rendered, generated global ``sample`` (module doc); the input is not changed."""
    from pipeline.imaging import crop_resample

    loc = None if sample.rendered is None else sample.rendered.local
    if loc is None:
        raise SchemaError(f"{sample.key}: local view: not rendered (stage missing?)")
    if sample.image is None:
        raise SchemaError(f"{sample.key}: image: not filled in (stage missing?)")
    L = int(loc.mask.shape[0])
    if sample.image_local is not None:
        image, origin = _check_image("image_local", sample.image_local, (L, L), 3), "generated"
    else:
        image, origin = crop_resample(sample.image, sample.crop_box, L), "resampled"
    H, W = (int(v) for v in sample.image_size)
    crop = np.asarray(sample.crop_box, dtype=np.float64).tolist()
    view = {
        "name": "local",
        "parent": sample.key,
        "parent_image_size": [H, W],
        "parent_crop_box": crop,
        "image": origin,
    }
    tag, _, _ = sample.key.rpartition("-")
    drawn = dataclasses.replace(
        sample.drawn,
        key=make_key(tag, sample.index, "local"),
        image_size=(L, L),
        camera=Camera(loc.K, sample.camera.dist),
    )
    generated = dataclasses.replace(sample.generated, image=image, image_local=None)
    return sample.with_(drawn=drawn, rendered=loc, generated=generated, view=view)


def view_records(sample: Sample, views) -> list[Sample]:
    """The records of one sample for ``views`` (``RunConfig.views``): ``[sample]`` for the global view only;
    with ``local``, the global record (without the generator's ``image_local``: the local record carries it)
    and then its local record."""
    if "local" not in views:
        return [sample]
    local = local_sample(sample)
    generated = dataclasses.replace(sample.generated, image_local=None)
    return [sample.with_(generated=generated), local]


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 array (H, W, 3) or (H, W) for single-channel PNGs."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def decode_record(files: dict) -> dict:
    """Record files (name -> bytes; names with or without a leading '.') -> decoded dict.

    Returns ``label`` (``Label``), ``image`` (H, W, 3) uint8, ``mesh`` (H, W, 3), ``mesh_local`` (L, L, 3),
    ``mask`` (H, W) uint8, and ``image_local`` (L, L, 3) for training tuples (absent otherwise). Raises
    ``SchemaError`` for a missing file or a label that breaks the schema (including a newer schema version).
    """
    f = {k.lstrip("."): v for k, v in files.items()}
    missing = [n for n in RECORD_FILES if n not in f]
    image_name = next((n for n in IMAGE_FILES if n in f), None)
    if missing or image_name is None:
        raise SchemaError(
            f"record {f.get('__key__', '?')}: missing files {missing + ([] if image_name else ['image.jpg'])}"
        )
    label = Label.from_bytes(f["label.json"], f["verts.npy"])
    out = {
        "label": label,
        "image": decode_image(f[image_name]),
        "mesh": decode_image(f["mesh.png"]),
        "mesh_local": decode_image(f["mesh_local.png"]),
        "mask": decode_image(f["mask.png"]),
    }
    local_name = next((n for n in LOCAL_IMAGE_FILES if n in f), None)
    if local_name is not None:
        out["image_local"] = decode_image(f[local_name])
    return out


def index_row(label: Label, shard: str) -> dict:
    """The ``index.parquet`` row of one record."""
    src = label.source
    return {
        "key": label.key,
        "index": label.index,
        "shard": shard,
        "view": label.view_name,
        "hand_type": label.hand_type,
        "dataset": src.get("dataset"),
        "split": None if src.get("split") is None else str(src.get("split")),
        "capture": None if src.get("capture") is None else str(src.get("capture")),
        "frame": None if src.get("frame") is None else str(src.get("frame")),
        "camera": None if src.get("camera") is None else str(src.get("camera")),
        "caption": label.caption,
        "bbox_right": None if label.hands["right"] is None else label.hands["right"].bbox.tolist(),
        "bbox_left": None if label.hands["left"] is None else label.hands["left"].bbox.tolist(),
        "crop_box": label.crop_box.tolist(),
        "generator": label.generator.get("name"),
        "alignment": None if label.quality is None else label.quality.get("alignment"),
        "tries": None if label.quality is None else label.quality.get("try"),
    }


# ----------------------------------------------------------------------------------------------------
# file names
# ----------------------------------------------------------------------------------------------------
LABEL_FILE = "label.json"
VERTS_FILE = "verts.npy"
MESH_FILE = "mesh.png"
MESH_LOCAL_FILE = "mesh_local.png"
MASK_FILE = "mask.png"


def find_file(files: Iterable[str], names: Sequence[str]) -> str | None:
    """The first of ``names`` (e.g. ``IMAGE_FILES``) among the record's file names ``files``; None if
    absent."""
    have = set(files)
    return next((n for n in names if n in have), None)


# ----------------------------------------------------------------------------------------------------
# writing shards
# ----------------------------------------------------------------------------------------------------
class RecordWriter:
    """Appends records to a binary stream as an uncompressed tar in WebDataset's layout (module doc).

    Plain ``tarfile`` in seekless ``"w"`` mode over ``fileobj`` (wrap it in a buffer: tar writes 512-byte
    blocks); webdataset.TarWriter's stream mode (``"w|"``) re-buffers every block in Python and measured ~20%
    slower (bench/sink.py). ``close()`` writes the end-of-archive blocks and leaves ``fileobj`` open.
    """

    def __init__(self, fileobj: BinaryIO) -> None:
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT)

    def write(self, files: dict) -> None:
        """Append one record: ``files`` maps ``__key__`` to the key and each file name to its bytes; names
        starting with ``__`` are not written. Members ``<key>.<name>`` in name order, mtime 0, mode 0444."""
        key = files["__key__"]
        for name in sorted(k for k in files if not k.startswith("__")):
            data = files[name]
            ti = tarfile.TarInfo(f"{key}.{name}")
            ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 0, 0o444, "", ""
            self._tar.addfile(ti, io.BytesIO(data))

    def close(self) -> None:
        """Write the tar's end-of-archive blocks (the file object stays open); a second call does nothing."""
        self._tar.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------
# finding shards
# ----------------------------------------------------------------------------------------------------
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


def _split_url(url: str) -> tuple[str, str]:
    """(folder, file name) of a shard path or URL."""
    head, _, name = url.rstrip("/").rpartition("/")
    return head, name


class ShardChecksums:
    """Expected sha256 of shards, from each folder's ``manifest.json`` (read once per folder: share one
    instance across the shards of a run) or, for a run that is not finalised yet, the shard's ``.meta.json``
    report."""

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
        """The sha256 (hex str) that shard ``url`` must have; ``ShardReadError`` when no record of it
        exists."""
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


# ----------------------------------------------------------------------------------------------------
# reading shards
# ----------------------------------------------------------------------------------------------------
_SPOOL_BYTES = 256 * 2**20  # a verified shard is held in memory up to this size, then in a temporary file


def _open_raw(url: str):
    """A binary file object for a shard path or URL (``pipe:`` commands go through WebDataset's opener)."""
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    if _is_url(url):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(_local(url), "rb")  # noqa: SIM115 (closed by the caller)


def _open_url(url: str):
    """``_open_raw`` with its errors as one-line ``ShardReadError``s."""
    try:
        return _open_raw(url)
    except FileNotFoundError:
        raise ShardReadError(f"shard not found: {url}") from None
    except (OSError, ValueError, ImportError) as exc:
        raise ShardReadError(f"cannot open shard {url}: {one_line(exc)}") from exc


def _shard_url(shard, url: str | None) -> str:
    """The name of ``shard`` (a path, URL or file object) in records (``__url__``) and error messages."""
    if url is not None:
        return str(url)
    if isinstance(shard, (str, os.PathLike)):
        return str(shard)
    name = getattr(shard, "name", None)
    return name if isinstance(name, str) else "<stream>"


@contextlib.contextmanager
def _open_shard(shard, url: str, checksums: ShardChecksums | None):
    """Open a shard (a path or URL; an open file object is used as it is and not closed) for reading; with
    ``checksums``, read it once while hashing it (into memory or a temporary file) and refuse it on a mismatch
    before anything is yielded."""
    with contextlib.ExitStack() as stack:
        if isinstance(shard, (str, os.PathLike)):
            raw = stack.enter_context(_open_url(url))
        else:
            raw = shard
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
                f"shard {url} fails verification: sha256 {digest.hexdigest()[:16]}..., expected "
                f"{expected[:16]}..."
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


def _record_member(member: tarfile.TarInfo) -> tuple[str, str] | None:
    """(key, file name) of a tar member that belongs to a record; None for anything else (directories, links,
    ``__``-prefixed names, names without an extension)."""
    if not member.isreg() or member.name.startswith("__"):
        return None
    return _split_name(member.name)


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


def _corrupt(url: str, last_key: str | None, exc: BaseException) -> ShardReadError:
    after = f" after record {last_key}" if last_key else ""
    return ShardReadError(f"shard {url} is corrupt or truncated{after}: {one_line(exc)}")


def iter_records(
    shard: str | os.PathLike | BinaryIO,
    *,
    url: str | None = None,
    checksums: ShardChecksums | None = None,
) -> Iterator[dict]:
    """Raw records of one shard, in file order: ``{"__key__": str, "__url__": str, "<name>": bytes, ...}``
    with file names such as ``image.jpg``, ``label.json`` (lower-cased, without the key).

    shard: a local path, a ``file://`` or fsspec URL, a ``pipe:`` command, or a binary file object read from
    its current position (not closed here). url: the shard's name in ``__url__`` and in messages (default: the
    path or URL, or the file object's ``name``). checksums: check the shard's sha256 against its run's
    manifest (or ``.meta.json``) before the first record is yielded (needs a path/URL or ``url`` to find
    them).

    A record is yielded only once the next record starts, or once the shard has ended with its end-of-archive
    blocks, so a truncated shard never yields a partial record. Errors are ``ShardReadError`` naming the shard
    and the last complete key.
    """
    url = _shard_url(shard, url)
    if checksums is not None and url == "<stream>":
        raise ValueError("iter_records: verifying a file object's checksum needs its url")
    last_key = None
    with _open_shard(shard, url, checksums) as raw:
        f = _TailTracker(raw)
        current: dict | None = None
        try:
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                for member in tar:
                    parts = _record_member(member)
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
            raise _corrupt(url, last_key, exc) from exc
        if current is not None:
            yield current


# ----------------------------------------------------------------------------------------------------
# random access
# ----------------------------------------------------------------------------------------------------
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz


def _padded(size: int) -> int:
    """``size`` bytes rounded up to whole tar blocks."""
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _check_end(f, end: int) -> None:
    """Raise ``EOFError`` unless the file holds only zero bytes from ``end`` (the end of the last member) on,
    at least the two end-of-archive blocks, and ends on a block boundary."""
    f.seek(end)
    rest = 0
    for chunk in iter(functools.partial(f.read, 2**16), b""):
        if chunk.count(0) != len(chunk):
            raise EOFError(f"data after the last member at byte {end + rest}")
        rest += len(chunk)
    if rest < 2 * tarfile.BLOCKSIZE or (end + rest) % tarfile.BLOCKSIZE:
        raise EOFError("no end-of-archive blocks")


@dataclasses.dataclass(frozen=True)
class RecordIndex:
    """Where the files of every record of an uncompressed shard lie: ``members[key][name] = (offset, size)``,
    byte offset of the member's data in the shard and its size in bytes (ints), keys in file order.

    ``build(shard)`` reads only the tar headers (seeking over the data) and checks that the shard is complete;
    ``read(key)`` then returns one raw record, like ``iter_records`` yields it, with one ``seek`` + ``read``
    per file. The index is small and picklable (e.g. for ``DataLoader`` workers); it describes the shard as it
    was when built.
    """

    url: str
    members: dict[str, dict[str, tuple[int, int]]]

    @classmethod
    def build(cls, shard: str | os.PathLike) -> RecordIndex:
        """The index of a shard (a local path, ``file://`` or fsspec URL; not a ``pipe:``). ``ShardReadError``
        (one line, naming the shard and the last complete key) for a missing, corrupt or truncated shard, a
        duplicate file in a record, or a record whose files are not consecutive."""
        url = str(shard)
        if url.startswith("pipe:"):
            raise ShardReadError(f"shard {url}: random access needs a file or URL, not a pipe")
        members: dict[str, dict[str, tuple[int, int]]] = {}
        last_key = key = None
        with _open_url(url) as f:
            try:
                if f.read(6).startswith(_COMPRESSED_MAGIC):
                    raise ShardReadError(
                        f"shard {url}: random access needs an uncompressed tar, this one is compressed"
                    )
                f.seek(0)
                end = 0
                with tarfile.open(fileobj=f, mode="r:") as tar:
                    for member in tar:
                        end = member.offset_data + _padded(member.size)
                        parts = _record_member(member)
                        if parts is None:
                            continue
                        if parts[0] != key:
                            last_key, key = key, parts[0]
                            if key in members:
                                raise ShardReadError(
                                    f"shard {url}: record {key}: its files are not consecutive"
                                )
                            members[key] = {}
                        if parts[1] in members[key]:
                            raise ShardReadError(f"shard {url}: record {key}: duplicate file {member.name}")
                        members[key][parts[1]] = (member.offset_data, member.size)
                _check_end(f, end)
            except ShardReadError:
                raise
            except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
                raise _corrupt(url, last_key, exc) from exc
        return cls(url, members)

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[str]:
        return iter(self.members)

    def __contains__(self, key: object) -> bool:
        return key in self.members

    def keys(self) -> list[str]:
        """The record keys in file order."""
        return list(self.members)

    def read(self, key: str, names: Iterable[str] | None = None) -> dict:
        """The raw record ``key`` (``__key__``, ``__url__``, file name -> bytes), all its files or only
        ``names``. ``KeyError`` for a key not in the shard; ``ShardReadError`` for a file the record lacks, or
        a shard that no longer holds the indexed bytes."""
        if key not in self.members:
            raise KeyError(f"shard {self.url}: no record {key}")
        files = self.members[key]
        wanted = list(files) if names is None else list(names)
        lacking = [n for n in wanted if n not in files]
        if lacking:
            raise ShardReadError(f"shard {self.url}: record {key}: no file {lacking[0]}")
        out = {"__key__": key, "__url__": self.url}
        with _open_url(self.url) as f:
            try:
                for name in sorted(wanted, key=lambda n: files[n][0]):
                    offset, size = files[name]
                    f.seek(offset)
                    data = f.read(size)
                    if len(data) != size:
                        raise EOFError(f"{key}.{name} holds {len(data)} of its {size} bytes")
                    out[name] = data
            except (OSError, EOFError, ValueError) as exc:
                raise ShardReadError(f"shard {self.url}: record {key}: cannot read: {one_line(exc)}") from exc
        return out
