"""The one mapping between a ``Sample`` and the files of a WebDataset record (DESIGN section 3), both ways.

Record files: ``image.jpg`` (quality 95; ``image.png`` when lossless), ``mesh.png``, ``mesh_local.png``,
``mask.png`` (uint8 0/1/2), ``verts.npy`` (2, 778, 3) float32, ``label.json``; training tuples (``hands prepare``)
add ``image_local.jpg`` (``.png`` when lossless), the real image's crop. Encoding is deterministic: equal samples
give byte-identical files.

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
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

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
    ``mask`` (H, W) uint8, and ``image_local`` (L, L, 3) for training tuples (absent otherwise). Raises ``SchemaError`` for a missing file or a label that breaks the schema
    (including a newer schema version).
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
