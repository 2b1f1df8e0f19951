"""``hands validate DIR``: check every record and the run's bookkeeping.

Checks (each counted per item as passed/failed):

* manifest: ``manifest.json`` parses and has the schema version this code reads;
* shards: every listed shard exists with the listed record count and sha256; no unlisted shard is present;
* index: ``index.parquet`` matches its sha256 and has one row per record, same keys;
* schema: each record decodes and its label validates (shapes, dtypes, finiteness, units);
* projection: ``joints_2d`` equals the projection of ``joints_3d`` with K (and distortion) within 0.01 px;
* visibility: visible joints lie inside the image and on (or within 1 px of) their hand's mask;
* render: the label re-rendered equals ``mesh.png``/``mask.png``/``mesh_local.png`` exactly with the backend
  that wrote them (the manifest's ``renderer``), or has mask IoU >= 0.995 with another backend.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.camera import project_points
from pipeline.schema import SCHEMA_VERSION, SIDES, SchemaError
from sinks.records import decode_record

logger = logging.getLogger(__name__)

CHECKS = ("manifest", "shards", "index", "schema", "projection", "visibility", "render")
PROJECTION_TOLERANCE_PX = 0.01
CROSS_BACKEND_IOU = 0.995


@dataclasses.dataclass
class ValidationReport:
    """Per-check [passed, failed] counts and the first failure messages."""

    counts: dict = dataclasses.field(default_factory=lambda: {c: [0, 0] for c in CHECKS})
    errors: list = dataclasses.field(default_factory=list)

    def ok(self, check: str) -> None:
        self.counts[check][0] += 1

    def fail(self, check: str, message: str) -> None:
        self.counts[check][1] += 1
        self.errors.append(f"{check}: {message}")

    @property
    def passed(self) -> bool:
        return all(f == 0 for _, f in self.counts.values()) and self.counts["schema"][0] > 0

    def table(self) -> str:
        lines = [f"{'check':12s} {'passed':>8s} {'failed':>8s}"]
        lines += [f"{c:12s} {p:8d} {f:8d}" for c, (p, f) in self.counts.items()]
        return "\n".join(lines)


def _records(tar_bytes: bytes, name: str):
    """(key, files) per record of a tar, in order; raises ValueError naming the shard when unreadable."""
    groups: dict[str, dict] = defaultdict(dict)
    order: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                if key not in groups:
                    order.append(key)
                groups[key][ext] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"shard {name} is not a readable tar: {exc}") from exc
    return [(k, groups[k]) for k in order]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = ((a > 0) | (b > 0)).sum()
    return 1.0 if union == 0 else float(((a > 0) & (a == b)).sum() / union)


class _Rerender:
    """Re-renders labels with the manifest's renderer settings (or another backend)."""

    def __init__(self, manifest: dict, backend: str | None, mano_dir: str | None) -> None:
        from renderers.base import RenderConfig, make_renderer

        info = manifest.get("renderer") or {}
        self.written_by = info.get("name", "opengl")
        self.backend = backend or self.written_by
        cfg = {k: info[k] for k in ("local_size", "crop_margin", "min_crop", "tint", "own_tolerance",
                                    "other_tolerance") if k in info}  # fmt: skip
        self.renderer = make_renderer(self.backend, device="auto", config=RenderConfig(**cfg))
        cfg_mano = ((manifest.get("config") or {}).get("hand_model") or {}).get("mano_dir")
        self.mano_dir = mano_dir or cfg_mano
        self._models: dict = {}

    def faces(self, hand_model: dict):
        from pipeline.hand_model import HandModel

        name, sha = hand_model.get("name"), hand_model.get("sha256")
        if sha not in self._models:
            if name != "standin" and not self.mano_dir:
                raise SchemaError("labels use MANO: pass --mano-dir to re-render them")
            model = HandModel(None if name == "standin" else self.mano_dir)
            if model.info.sha256 != sha:
                raise SchemaError(f"hand model sha256 {model.info.sha256[:12]} differs from the label's {sha[:12]}")
            self._models[sha] = model.faces
        return self._models[sha]

    def check(self, dec: dict) -> str | None:
        from renderers.base import RenderBatch, RenderItem

        label = dec["label"]
        verts = {s: label.verts[i] for i, s in enumerate(SIDES) if label.hands[s] is not None}
        joints = {s: label.hands[s].joints_3d for s in verts}
        item = RenderItem(verts, joints, label.camera.K, label.image_size, label.camera.dist)
        res = self.renderer.render(RenderBatch([item], self.faces(label.hand_model)))[0]
        mesh = dec["mesh"][..., :3] if dec["mesh"].ndim == 3 else dec["mesh"]
        if self.backend == self.written_by:
            if not np.array_equal(res.mask, dec["mask"]):
                return f"mask.png differs from the re-render in {(res.mask != dec['mask']).sum()} pixels"
            if not np.array_equal(res.mesh_image, mesh):
                return f"mesh.png differs from the re-render in {(res.mesh_image != mesh).any(-1).sum()} pixels"
            if res.mesh_local.shape == dec["mesh_local"].shape and not np.array_equal(res.mesh_local, dec["mesh_local"]):
                return "mesh_local.png differs from the re-render"
            if not np.allclose(res.crop_box, label.crop_box, atol=1e-6):
                return f"crop_box {label.crop_box.tolist()} differs from the re-render's {res.crop_box.tolist()}"
            return None
        iou = _iou(res.mask, dec["mask"])
        return None if iou >= CROSS_BACKEND_IOU else f"mask IoU with the {self.backend} re-render is {iou:.4f} < {CROSS_BACKEND_IOU}"


def _check_record(dec: dict, report: ValidationReport, where: str) -> None:
    label = dec["label"]
    H, W = label.image_size
    shapes_ok = (
        dec["image"].shape == (H, W, 3) and dec["mesh"].shape[:2] == (H, W) and dec["mask"].shape == (H, W)
        and dec["mesh_local"].ndim == 3 and dec["mesh_local"].shape[0] == dec["mesh_local"].shape[1]
        and set(np.unique(dec["mask"]).tolist()) <= {0, 1, 2}
        and ("image_local" not in dec or dec["image_local"].shape == dec["mesh_local"].shape)
    )  # fmt: skip
    if not shapes_ok:
        report.fail("schema", f"{where}: image/mesh/mask shapes {dec['image'].shape}, {dec['mesh'].shape}, "
                              f"{dec['mask'].shape} do not match image_size {(H, W)} (or mask values outside 0-2)")  # fmt: skip
        return
    report.ok("schema")
    proj_err, vis_err = 0.0, None
    for s in SIDES:
        h = label.hands[s]
        if h is None:
            continue
        uv = project_points(h.joints_3d, label.camera.K, label.camera.dist)
        proj_err = max(proj_err, float(np.nanmax(np.abs(uv - h.joints_2d))))
        hid = 1 if s == "right" else 2
        for j in np.nonzero(h.joints_visible)[0]:
            u, v = h.joints_2d[j]
            if not (-0.5 <= u < W - 0.5 and -0.5 <= v < H - 0.5):
                vis_err = f"{s} joint {j} is visible but outside the image at ({u:.1f}, {v:.1f})"
                break
            r0, r1 = max(int(round(v)) - 1, 0), min(int(round(v)) + 2, H)
            c0, c1 = max(int(round(u)) - 1, 0), min(int(round(u)) + 2, W)
            rows, cols = np.nonzero(dec["mask"][r0:r1, c0:c1] == hid)
            if not len(rows) or np.hypot(cols + c0 - u, rows + r0 - v).min() > 1.0:
                vis_err = f"{s} joint {j} is visible but not on its hand's mask at ({u:.1f}, {v:.1f})"
                break
    if proj_err <= PROJECTION_TOLERANCE_PX:
        report.ok("projection")
    else:
        report.fail("projection", f"{where}: joints_2d differ from the projection of joints_3d by {proj_err:.4f} px")
    if vis_err is None:
        report.ok("visibility")
    else:
        report.fail("visibility", f"{where}: {vis_err}")


def validate(out_dir: str | Path, renderer: str | None = None, mano_dir: str | None = None, render: bool = True,
             limit: int | None = None) -> ValidationReport:
    """Validate an output folder (see module doc). ``limit`` caps the records checked per shard."""
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"output folder not found: {out}")
    report = ValidationReport()
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {manifest.get('schema_version')!r}, this code reads {SCHEMA_VERSION}")
        report.ok("manifest")
    except (OSError, ValueError) as exc:
        report.fail("manifest", f"{out / 'manifest.json'}: {exc}")
        return report
    listed = {s["name"]: s for s in manifest.get("shards", [])}
    for extra in sorted(p.name for p in out.glob("*.tar") if p.name not in listed):
        report.fail("shards", f"{extra} is not listed in the manifest")
    rerender = None
    if render:
        try:
            rerender = _Rerender(manifest, renderer, mano_dir)
        except Exception as exc:  # a renderer that cannot start is a failed check, reported in one line
            report.fail("render", f"cannot start the renderer: {exc}")
    keys: list[str] = []
    for name, entry in listed.items():
        path = out / name
        if not path.is_file():
            report.fail("shards", f"{name} is listed but missing")
            continue
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        try:
            records = _records(data, name)
        except ValueError as exc:
            report.fail("shards", str(exc))
            continue
        if sha != entry.get("sha256") or len(records) != entry.get("count"):
            report.fail("shards", f"{name}: sha256/count {sha[:12]}/{len(records)} differ from the manifest's "
                                  f"{str(entry.get('sha256'))[:12]}/{entry.get('count')}")  # fmt: skip
        else:
            report.ok("shards")
        for key, files in records[: limit or len(records)]:
            keys.append(key)
            where = f"{name}:{key}"
            try:
                dec = decode_record({**files, "__key__": key})
            except (SchemaError, OSError, ValueError) as exc:
                report.fail("schema", f"{where}: {exc}")
                continue
            if dec["label"].key != key:
                report.fail("schema", f"{where}: label key {dec['label'].key} differs from the record key")
                continue
            _check_record(dec, report, where)
            if rerender is not None:
                try:
                    err = rerender.check(dec)
                except (SchemaError, ValueError) as exc:
                    err = str(exc)
                if err is None:
                    report.ok("render")
                else:
                    report.fail("render", f"{where}: {err}")
    if rerender is not None:
        rerender.renderer.close()  # release the GL context before interpreter exit
    _check_index(out, manifest, keys if limit is None else None, report)
    return report


def _check_index(out: Path, manifest: dict, keys: list[str] | None, report: ValidationReport) -> None:
    import pyarrow.parquet as pq

    entry = manifest.get("index") or {}
    path = out / entry.get("name", "index.parquet")
    try:
        data = path.read_bytes()
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # missing or unreadable parquet
        report.fail("index", f"{path}: {exc}")
        return
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        report.fail("index", f"{path.name}: sha256 differs from the manifest")
    elif table.num_rows != manifest.get("counts", {}).get("written"):
        report.fail("index", f"{path.name}: {table.num_rows} rows, manifest says {manifest['counts'].get('written')}")
    elif keys is not None and sorted(table.column("key").to_pylist()) != sorted(keys):
        report.fail("index", f"{path.name}: keys differ from the shards' records")
    else:
        report.ok("index")
