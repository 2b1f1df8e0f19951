"""``hands preview DIR --out sheet.png``: a contact sheet of records.

Each row: the image with the projected skeleton (one colour per finger; right hand solid lines with filled
joints, left hand thinner lines with hollow joints; occluded joints greyed), the mesh image, the local mesh
image, and the caption underneath.
"""

from __future__ import annotations

import io
import logging
import os
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.errors import HandgenError, one_line
from pipeline.kinematics import FINGER_CHAINS, FINGERS
from pipeline.schema import SIDES

logger = logging.getLogger(__name__)


class PreviewError(HandgenError, ValueError):
    """A preview that cannot be made as asked (bad image name, bad sizes); the message is one line."""


FINGER_COLOURS = {
    "thumb": (255, 80, 80),
    "index": (255, 200, 0),
    "middle": (80, 220, 80),
    "ring": (0, 190, 255),
    "pinky": (200, 110, 255),
}


def draw_skeleton(image: np.ndarray, joints_2d: dict, visible: dict, scale: float = 1.0) -> Image.Image:
    """Image (H, W, 3) uint8 with the skeletons drawn; ``joints_2d``/``visible``: side -> (21, 2)/(21,) or
    None."""
    im = Image.fromarray(image).convert("RGB")
    if scale != 1.0:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
    d = ImageDraw.Draw(im)
    for side in SIDES:
        uv = joints_2d.get(side)
        if uv is None:
            continue
        uv = (np.asarray(uv, dtype=np.float64) + 0.5) * scale - 0.5
        vis = np.asarray(visible[side], dtype=bool)
        width, r = (3, 3) if side == "right" else (1, 3)
        for finger, joints in zip(FINGERS, FINGER_CHAINS, strict=True):
            chain = [0, *joints]
            colour = FINGER_COLOURS[finger]
            for a, b in zip(chain, chain[1:], strict=False):
                c = colour if vis[a] and vis[b] else (110, 110, 110)
                d.line([tuple(uv[a]), tuple(uv[b])], fill=c, width=width)
            for j in chain[1:]:
                c = colour if vis[j] else (110, 110, 110)
                box = [uv[j, 0] - r, uv[j, 1] - r, uv[j, 0] + r, uv[j, 1] + r]
                d.ellipse(box, fill=c if side == "right" else None, outline=c)
        d.rectangle([uv[0, 0] - r, uv[0, 1] - r, uv[0, 0] + r, uv[0, 1] + r], outline=(255, 255, 255))
    return im


def contact_sheet(records: list[dict], tile: int = 256) -> Image.Image:
    """Rows of [image + skeleton | mesh | local mesh] with the caption below, one row per training dict
    (``sinks.reader.to_arrays`` output)."""
    cap_h = 44
    sheet = Image.new("RGB", (3 * tile, len(records) * (tile + cap_h)), (20, 20, 20))
    d = ImageDraw.Draw(sheet)
    for r, rec in enumerate(records):
        H, W = rec["image"].shape[:2]
        scale = tile / max(H, W)
        j2d = {s: rec["joints_2d"][i] if rec["hand_present"][i] else None for i, s in enumerate(SIDES)}
        vis = {s: rec["joints_visible"][i] for i, s in enumerate(SIDES)}
        tiles = [
            draw_skeleton(rec["image"], j2d, vis, scale),
            Image.fromarray(rec["mesh"]).convert("RGB").resize((round(W * scale), round(H * scale))),
            Image.fromarray(rec["mesh_local"]).convert("RGB").resize((tile, tile)),
        ]
        y = r * (tile + cap_h)
        for c, t in enumerate(tiles):
            sheet.paste(t, (c * tile, y))
        caption = f"{rec['key']} [{rec['hand_type']}]: {rec['caption']}"
        d.text(
            (4, y + tile + 2),
            "\n".join(textwrap.wrap(caption, width=3 * tile // 7)[:3]),
            fill=(230, 230, 230),
        )
    return sheet


def check_image_name(target: str | os.PathLike) -> str:
    """The PIL format that ``target``'s extension names (``PreviewError`` when it has none or an unknown
    one)."""
    target = str(target)
    name = target.rstrip("/").rpartition("/")[2]
    ext = os.path.splitext(name)[1].lower()
    if not ext:
        raise PreviewError(f"{target} has no file extension: name the image .png or .jpg")
    Image.init()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise PreviewError(f"{target}: unknown image extension {ext!r}; name the image .png or .jpg")
    return fmt


def save_image(image: Image.Image, target: str | os.PathLike) -> str:
    """Write ``image`` to ``target`` (a local path or an fsspec URL, format from its extension) through
    ``sinks.store.Store``: atomic, and a full disk or an unwritable place is a one-line ``StoreError`` naming
    the file. Returns the path or URL written."""
    from sinks.store import Store, StoreError, describe_os_error

    target = str(target)
    fmt = check_image_name(target)
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt)
    except (OSError, ValueError, KeyError) as exc:
        raise PreviewError(f"cannot write {target} as {fmt}: {one_line(exc)}") from exc
    folder, _, name = target.rstrip("/").rpartition("/")
    if "://" in target and "/" not in target.split("://", 1)[1]:
        raise PreviewError(f"{target} names no file")
    try:
        store = Store(folder or ".")
    except (ImportError, ValueError) as exc:  # an fsspec protocol whose package is not installed, a bad URL
        raise StoreError(f"cannot write {target}: {one_line(exc)}") from exc
    try:
        if store.is_local:
            if store.root.exists() and not store.root.is_dir():
                raise StoreError(f"cannot write {target}: {store.root} is not a folder")
            store.root.mkdir(parents=True, exist_ok=True)
        else:
            store.fs.makedirs(store.root, exist_ok=True)
    except StoreError:
        raise
    except OSError as exc:
        raise StoreError(describe_os_error(exc, target)) from exc
    store.write_bytes(name, buf.getvalue())
    return target


def preview(out_dir: str | Path, out_png: str | Path, n: int = 16, tile: int = 256) -> int:
    """Write a contact sheet of the first ``n`` records of ``out_dir`` (a folder or URL) to ``out_png`` (a
    path or URL; its extension names the format); returns the number of records drawn.

    Errors are one-line ``HandgenError``s: a bad target name (``PreviewError``, checked before anything is
    read), a missing or empty run folder or an unreadable shard (``ShardReadError``), a target that cannot be
    written (``StoreError``).
    """
    from sinks.reader import ShardsNotFoundError, open_shards

    if n < 1:
        raise PreviewError(f"the number of records must be >= 1, got {n}")
    if tile < 1:
        raise PreviewError(f"the tile size must be >= 1 pixel, got {tile}")
    check_image_name(str(out_png))
    records = []
    for rec in open_shards(out_dir, split_by_worker=False):
        records.append(rec)
        if len(records) >= n:
            break
    if not records:
        raise ShardsNotFoundError(f"no records in {out_dir}")
    written = save_image(contact_sheet(records, tile), out_png)
    logger.info("wrote %s (%d records)", written, len(records))
    return len(records)
