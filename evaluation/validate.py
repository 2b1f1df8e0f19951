"""``hands validate DIR``: check every record and the run's bookkeeping.

``DIR`` is a local folder or any fsspec URL (``s3://bucket/run``, ``memory://x``, ...); everything is read
through ``sinks.store.Store``. A location that does not exist or holds nothing of a run (no ``manifest.json``,
no ``run.json``, no shard) raises ``StoreError`` with a one-line message.

Checks (each counted per item as passed/failed):

* manifest: ``manifest.json`` parses and has the schema version this code reads;
* run: ``run.json`` (the run's identity) parses; its ``config_sha256`` equals the hash recomputed from its
  config, and its run tag, shard size, shard count and prefix follow from that config; it agrees with the
  manifest (same ``config_sha256`` and ``run_tag``; the manifest's config hashes to it too);
* shards: every listed shard exists with the listed record count and sha256;
* membership: the manifest lists exactly the run's shards (``<prefix>-<k:06d>.tar``, k < num_shards); no
  other shard is present; every ``index.parquet`` row names a listed shard, as many rows per shard as the
  manifest counts;
* index: ``index.parquet`` matches its sha256 and has one row per record, same keys;
* keys: each record's key is ``<run_tag>-<index:010d>`` (``-local`` appended for a local record) with the
  run's tag, its index lies in the index range of the shard holding it (shard k: ``[k * shard_size,
  min((k + 1) * shard_size, samples))``), its seed is the run's per-sample seed for that index, and
  ``index.parquet`` has its key with that index, shard and view;
* views: in a run with ``views`` global,local every global record is followed, in its shard, by its local
  record (and a run without them has none); a local record agrees with its global record (its parent, the
  record right before it): the same ``crop_box`` and image size as its ``view`` records, camera K equal to
  ``crop_intrinsics(parent K, crop_box, L)`` and the same distortion, and the same hands (MANO parameters,
  joints_3d, verts), seed, caption and hand type;
* schema: each record decodes and its label validates (shapes, dtypes, finiteness, units);
* params: per present hand, ``mano_pose/shape/trans`` run through the label's hand model (same sha256)
  reproduce ``verts.npy`` and ``joints_3d`` within 0.1 mm (absent hands are not counted);
* projection: ``joints_2d`` equals the projection of ``joints_3d`` with K (and distortion) within 0.01 px;
* visibility: visible joints lie inside the image and on (or within 1 px of) their hand's mask, or, for a
  hand with a forearm, on a pixel that shows no hand (its own arm, which ``mask.png`` does not hold: the
  re-render below checks those exactly);
* render: the label re-rendered equals ``mesh.png``/``mask.png``/``mesh_local.png`` and ``joints_visible``
  exactly with the backend that wrote them (the manifest's ``renderer``), or has mask IoU >= 0.995 with
  another backend.

Local records (``--views global,local``) go through every check in their own frame: projection and
visibility with the local camera and mask, and the re-render from the local camera at (L, L), with the
pixels outside the parent's global image black (``Renderer.render_local``, from ``view.parent_crop_box`` and
``view.parent_image_size``).

When ``run.json`` is missing or unreadable (a failed "run" check), the keys are checked against the
manifest's run tag and config instead, when it has them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from pipeline.camera import project_points
from pipeline.schema import SCHEMA_VERSION, SIDES, SchemaError
from sinks.records import ShardReadError, decode_record, iter_records
from sinks.store import Store, StoreError

logger = logging.getLogger(__name__)

CHECKS = (
    "manifest",
    "run",
    "shards",
    "membership",
    "index",
    "keys",
    "views",
    "schema",
    "params",
    "projection",
    "visibility",
    "render",
)
PROJECTION_TOLERANCE_PX = 0.01
CROSS_BACKEND_IOU = 0.995
#: Largest difference (metres) between the hand model's output and the stored ``verts.npy`` / ``joints_3d``.
PARAMS_TOLERANCE_M = 1e-4
#: Hands posed per forward pass of the parameter check.
PARAMS_BATCH = 256
RUN_FILE = "run.json"


@dataclasses.dataclass
class ValidationReport:
    """Per-check [passed, failed] counts and the first failure messages."""

    counts: dict = dataclasses.field(default_factory=lambda: {c: [0, 0] for c in CHECKS})
    errors: list = dataclasses.field(default_factory=list)

    def ok(self, check: str, n: int = 1) -> None:
        self.counts[check][0] += n

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


# ----------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------
def _records(tar_bytes: bytes, name: str):
    """(key, files) per record of a tar, in order (``sinks.records.iter_records``); raises ValueError naming
    the shard (and the last complete key) when unreadable or truncated."""
    out = []
    try:
        for rec in iter_records(io.BytesIO(tar_bytes), url=name):
            out.append((rec["__key__"], {k: v for k, v in rec.items() if not k.startswith("__")}))
    except ShardReadError as exc:
        raise ValueError(exc.one_line()) from exc
    return out


def _open_store(out_dir: str | Path) -> tuple[Store, list[str]]:
    """The run's store and its file names; ``StoreError`` (one line) when it is not a run."""
    where = str(out_dir)
    try:
        store = Store(where)
    except (ValueError, ImportError, OSError) as exc:  # unknown protocol, missing fsspec backend, ...
        raise StoreError(f"cannot open {where}: {exc}") from exc
    if store.is_local and store.root.exists() and not store.root.is_dir():
        raise StoreError(f"not a folder: {where}")
    try:
        names = store.listdir()
        found = bool(names) or (store.root.is_dir() if store.is_local else store.fs.isdir(store.root))
    except OSError as exc:
        raise StoreError(f"cannot list {where}: {exc}") from exc
    if not found:
        raise StoreError(f"output folder not found: {where}")
    if not ({"manifest.json", RUN_FILE} & set(names)) and not any(n.endswith(".tar") for n in names):
        raise StoreError(f"{where} is not a handgen run: it holds no manifest.json, {RUN_FILE} or shards")
    return store, names


def _read_json(store: Store, name: str) -> dict:
    """A JSON object file of the store; ``ValueError`` naming the problem otherwise."""
    try:
        data = json.loads(store.read_bytes(name))
    except OSError as exc:
        raise ValueError(f"cannot read: {exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------------------------------
# run identity
# ----------------------------------------------------------------------------------------------------
def _run_config(config, what: str):
    """``RunConfig`` of a stored config (its ``out``, if any, is ignored); ``ValueError`` naming the field."""
    from pydantic import ValidationError

    from pipeline.config import RunConfig

    if not isinstance(config, dict):
        raise ValueError(f"{what}: expected a config object, got {type(config).__name__}")
    from pipeline.config import ADDED_FIELDS

    # a field the stored config lacks was added later: the run was made with the value it stood for then
    stored = {**{k: v for k, v in ADDED_FIELDS.items() if k not in config}, **config}
    try:
        return RunConfig(**{k: v for k, v in stored.items() if k != "out"})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        raise ValueError(f"{what}: not a valid run config: {loc}: {err['msg']}") from exc


@dataclasses.dataclass(frozen=True)
class _Identity:
    """What records of the run must agree with: run tag, run seed, samples, shard size and prefix."""

    run_tag: str
    seed: int
    samples: int
    shard_size: int
    prefix: str
    origin: str  # "run.json" or "manifest.json"
    views: tuple = ("global",)

    @property
    def num_shards(self) -> int:
        return (self.samples + self.shard_size - 1) // self.shard_size

    def shard_names(self) -> list[str]:
        return [f"{self.prefix}-{k:06d}.tar" for k in range(self.num_shards)]

    def shard_number(self, name: str) -> int | None:
        """k for ``<prefix>-<k:06d>.tar`` with k < num_shards, else None."""
        m = re.fullmatch(re.escape(self.prefix) + r"-(\d{6})\.tar", name)
        return int(m.group(1)) if m and int(m.group(1)) < self.num_shards else None

    def indices(self, k: int) -> range:
        """Sample indices of shard ``k``."""
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.samples))


def _check_run(
    store: Store, names: list[str], manifest: dict | None, report: ValidationReport
) -> _Identity | None:
    """The "run" check; returns the identity records are checked against (None when there is none)."""
    if RUN_FILE not in names:
        report.fail("run", f"{store.path(RUN_FILE)} is missing: the run's identity is unknown")
        return _manifest_identity(manifest)
    try:
        run = _read_json(store, RUN_FILE)
        if run.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {run.get('schema_version')!r}, this code reads {SCHEMA_VERSION}"
            )
        missing = [k for k in ("config", "config_sha256", "run_tag") if k not in run]
        if missing:
            raise ValueError(f"missing fields {missing}")
        cfg = _run_config(run["config"], "config")
    except ValueError as exc:
        report.fail("run", f"{store.path(RUN_FILE)}: {exc}")
        return _manifest_identity(manifest)
    report.ok("run")
    # run.json on its own: the hash and everything derived from the config
    problems = []
    if run["config_sha256"] != cfg.config_sha256():
        problems.append(
            f"config_sha256 {str(run['config_sha256'])[:12]} differs from its config's hash "
            f"{cfg.config_sha256()[:12]}"
        )
    if run["run_tag"] != cfg.effective_run_tag():
        problems.append(f"run_tag {run['run_tag']!r} differs from its config's {cfg.effective_run_tag()!r}")
    derived = {
        "num_shards": cfg.num_shards,
        "shard_size": cfg.shard_size,
        "shard_prefix": cfg.shard_prefix,
        "samples": cfg.samples,
    }
    for field, want in derived.items():
        if field in run and run[field] != want:
            problems.append(f"{field} {run[field]!r} differs from its config's {want!r}")
    if problems:
        report.fail("run", f"{RUN_FILE}: " + "; ".join(problems))
    else:
        report.ok("run")
    # run.json against the manifest
    if manifest is not None:
        problems = []
        if manifest.get("config_sha256") != run["config_sha256"]:
            problems.append(
                f"config_sha256 {str(manifest.get('config_sha256'))[:12]} differs from "
                f"{RUN_FILE}'s {str(run['config_sha256'])[:12]}"
            )
        if manifest.get("run_tag") != run["run_tag"]:
            problems.append(
                f"run_tag {manifest.get('run_tag')!r} differs from {RUN_FILE}'s {run['run_tag']!r}"
            )
        try:
            m_sha = _run_config(manifest.get("config"), "config").config_sha256()
            if m_sha != run["config_sha256"]:
                problems.append(
                    f"its config hashes to {m_sha[:12]}, not {RUN_FILE}'s {str(run['config_sha256'])[:12]}"
                )
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            report.fail("run", "manifest.json: " + "; ".join(problems))
        else:
            report.ok("run")
    return _Identity(
        str(run["run_tag"]),
        cfg.seed,
        cfg.samples,
        cfg.shard_size,
        cfg.shard_prefix,
        RUN_FILE,
        tuple(cfg.views),
    )


def _manifest_identity(manifest: dict | None) -> _Identity | None:
    """The identity recorded in the manifest (runs without a readable ``run.json``): only when its config is a
    whole run config that hashes to its ``config_sha256``; else None."""
    if manifest is None:
        return None
    try:
        cfg = _run_config(manifest.get("config"), "config")
    except ValueError:
        return None
    if cfg.config_sha256() != manifest.get("config_sha256"):
        return None
    tag = manifest.get("run_tag") or cfg.effective_run_tag()
    return _Identity(
        str(tag), cfg.seed, cfg.samples, cfg.shard_size, cfg.shard_prefix, "manifest.json", tuple(cfg.views)
    )


# ----------------------------------------------------------------------------------------------------
# hand model: parameters and re-rendering
# ----------------------------------------------------------------------------------------------------
class _HandModels:
    """Hand models by the label's ``hand_model`` record: the stand-in, or MANO from ``mano_dir``; the loaded
    model's sha256 must equal the label's."""

    def __init__(self, mano_dir: str | None) -> None:
        self.mano_dir = mano_dir
        self._models: dict = {}

    def get(self, hand_model: dict):
        """The ``pipeline.hand_model.HandModel`` (CPU, float32) for a label; ``SchemaError`` when
        unavailable."""
        from pipeline.hand_model import HandModel, HandModelError, standin_version_of
        from pipeline.standin import STANDIN_VERSIONS

        name, sha = hand_model.get("name"), hand_model.get("sha256")
        if sha not in self._models:
            try:
                if name != "standin" and not self.mano_dir:
                    raise SchemaError("labels use MANO: pass --mano-dir to check and re-render them")
                if name == "standin":  # the stand-in geometry the labels were made with
                    version = standin_version_of(sha)
                    if version is None:
                        raise SchemaError(
                            f"the label's stand-in hand model (sha256 {str(sha)[:12]}) is none of this "
                            f"version's stand-ins (versions {', '.join(map(str, STANDIN_VERSIONS))})"
                        )
                    model = HandModel(standin_version=version)
                else:
                    model = HandModel(self.mano_dir)
                    if model.info.sha256 != sha:
                        raise SchemaError(
                            f"hand model sha256 {model.info.sha256[:12]} differs from the label's "
                            f"{str(sha)[:12]}"
                        )
                self._models[sha] = model
            except (SchemaError, HandModelError) as exc:
                self._models[sha] = SchemaError(str(exc))
        got = self._models[sha]
        if isinstance(got, Exception):
            raise got
        return got


@dataclasses.dataclass
class _Hand:
    """One present hand of a record, for the batched parameter check (metres; pose in radians)."""

    where: str
    side: str
    hand_model: dict
    pose: np.ndarray
    shape: np.ndarray
    trans: np.ndarray
    verts: np.ndarray
    joints: np.ndarray


def _hands_of(label, where: str) -> list[_Hand]:
    out = []
    for i, s in enumerate(SIDES):
        h = label.hands[s]
        if h is not None:
            out.append(
                _Hand(
                    where,
                    s,
                    label.hand_model,
                    h.mano_pose,
                    h.mano_shape,
                    h.mano_trans,
                    label.verts[i],
                    h.joints_3d,
                )
            )
    return out


def _check_params(hands: list[_Hand], models: _HandModels, report: ValidationReport) -> None:
    """The "params" check for ``hands``, one forward pass per (hand model, side) and ``PARAMS_BATCH``
    hands."""
    groups: dict[tuple, list[_Hand]] = defaultdict(list)
    for h in hands:
        groups[(h.hand_model.get("sha256"), h.side)].append(h)
    for (_, side), group in groups.items():
        try:
            model = models.get(group[0].hand_model)
        except SchemaError as exc:
            for h in group:
                report.fail("params", f"{h.where}: {exc}")
            continue
        for start in range(0, len(group), PARAMS_BATCH):
            chunk = group[start : start + PARAMS_BATCH]
            try:
                out = model(
                    side,
                    np.stack([h.pose for h in chunk]),
                    np.stack([h.shape for h in chunk]),
                    np.stack([h.trans for h in chunk]),
                )
            except ValueError as exc:  # non-finite parameters
                for h in chunk:
                    report.fail("params", f"{h.where}: {side} hand: {exc}")
                continue
            verts = out.vertices.cpu().numpy().astype(np.float64)
            joints = out.joints.cpu().numpy().astype(np.float64)
            dv = np.abs(verts - np.stack([h.verts for h in chunk]).astype(np.float64)).max(axis=(1, 2))
            dj = np.abs(joints - np.stack([h.joints for h in chunk])).max(axis=(1, 2))
            for h, ev, ej in zip(chunk, dv, dj, strict=True):
                if ev <= PARAMS_TOLERANCE_M and ej <= PARAMS_TOLERANCE_M:
                    report.ok("params")
                else:
                    report.fail(
                        "params",
                        f"{h.where}: {side} hand: mano_pose/shape/trans give vertices {ev * 1e3:.3f} mm and "
                        f"joints {ej * 1e3:.3f} mm away from verts.npy/joints_3d "
                        f"(tolerance {PARAMS_TOLERANCE_M * 1e3:g} mm)",
                    )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = ((a > 0) | (b > 0)).sum()
    return 1.0 if union == 0 else float(((a > 0) & (a == b)).sum() / union)


class _Rerender:
    """Re-renders labels with the manifest's renderer settings (or another backend)."""

    def __init__(self, manifest: dict, backend: str | None, models: _HandModels) -> None:
        from renderers.base import LEGACY_STYLE, RenderConfig, make_renderer

        info = manifest.get("renderer") or {}
        self.written_by = info.get("name", "opengl")
        self.backend = backend or self.written_by
        fields = (
            "local_size",
            "crop_margin",
            "min_crop",
            "tint",
            "own_tolerance",
            "other_tolerance",
            "wrist_tolerance",
            "enclosed_tolerance",
        )
        # a run written before conditioning styles records none: it was drawn in the grey style; one written
        # before the wrist's own tolerance or the enclosed-joint rule records none: its visibility followed
        # the rule before it
        cfg = {
            "style": info.get("style", LEGACY_STYLE),
            "wrist_tolerance": None,
            "enclosed_tolerance": None,
            **{k: info[k] for k in fields if k in info},
        }
        self.renderer = make_renderer(self.backend, device="auto", config=RenderConfig(**cfg))
        self.models = models

    def check(self, dec: dict) -> str | None:
        from renderers.base import RenderBatch, render_item

        label = dec["label"]
        batch = RenderBatch([render_item(label)], self.models.get(label.hand_model).faces)
        if label.view is None:
            res = self.renderer.render(batch)[0]
        else:  # a local record: its own camera and size, black outside its parent's global image
            view = label.view
            res = self.renderer.render_local(batch, [view["parent_crop_box"]], [view["parent_image_size"]])[0]
        mesh = dec["mesh"][..., :3] if dec["mesh"].ndim == 3 else dec["mesh"]
        if self.backend == self.written_by:
            if not np.array_equal(res.mask, dec["mask"]):
                return f"mask.png differs from the re-render in {(res.mask != dec['mask']).sum()} pixels"
            if not np.array_equal(res.mesh_image, mesh):
                return (
                    f"mesh.png differs from the re-render in {(res.mesh_image != mesh).any(-1).sum()} pixels"
                )
            local = dec["mesh_local"]
            if res.mesh_local.shape == local.shape and not np.array_equal(res.mesh_local, local):
                return "mesh_local.png differs from the re-render"
            if not np.allclose(res.crop_box, label.crop_box, atol=1e-6):
                return (
                    f"crop_box {label.crop_box.tolist()} differs from the re-render's {res.crop_box.tolist()}"
                )
            for s in SIDES:
                h = label.hands[s]
                if h is not None and not np.array_equal(res.joints_visible[s], h.joints_visible):
                    bad = np.nonzero(np.asarray(res.joints_visible[s]) != np.asarray(h.joints_visible))[0]
                    return f"{s} joints_visible differs from the re-render at joints {bad.tolist()}"
            return None
        iou = _iou(res.mask, dec["mask"])
        if iou >= CROSS_BACKEND_IOU:
            return None
        return f"mask IoU with the {self.backend} re-render is {iou:.4f} < {CROSS_BACKEND_IOU}"


# ----------------------------------------------------------------------------------------------------
# per-record checks
# ----------------------------------------------------------------------------------------------------
def _shapes_ok(dec: dict) -> bool:
    H, W = dec["label"].image_size
    local = dec["mesh_local"]
    return (
        dec["image"].shape == (H, W, 3)
        and dec["mesh"].shape[:2] == (H, W)
        and dec["mask"].shape == (H, W)
        and local.ndim == 3
        and local.shape[0] == local.shape[1]
        and set(np.unique(dec["mask"]).tolist()) <= {0, 1, 2}
        and ("image_local" not in dec or dec["image_local"].shape == local.shape)
    )


def _check_record(dec: dict, report: ValidationReport, where: str) -> None:
    label = dec["label"]
    H, W = label.image_size
    if not _shapes_ok(dec):
        report.fail(
            "schema",
            f"{where}: image/mesh/mask shapes {dec['image'].shape}, {dec['mesh'].shape}, {dec['mask'].shape} "
            f"do not match image_size {(H, W)} (or mask values outside 0-2)",
        )
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
        arm = bool(((label.props or {}).get("forearm") or {}).get(s))
        for j in np.nonzero(h.joints_visible)[0]:
            u, v = h.joints_2d[j]
            if not (-0.5 <= u < W - 0.5 and -0.5 <= v < H - 0.5):
                vis_err = f"{s} joint {j} is visible but outside the image at ({u:.1f}, {v:.1f})"
                break
            r, c = int(round(v)), int(round(u))  # inside the image (checked above): 0..H-1, 0..W-1
            r0, r1, c0, c1 = max(r - 1, 0), min(r + 2, H), max(c - 1, 0), min(c + 2, W)
            rows, cols = np.nonzero(dec["mask"][r0:r1, c0:c1] == hid)
            on_arm = arm and dec["mask"][r, c] == 0
            if (not len(rows) or np.hypot(cols + c0 - u, rows + r0 - v).min() > 1.0) and not on_arm:
                vis_err = f"{s} joint {j} is visible but not on its hand's mask at ({u:.1f}, {v:.1f})"
                break
    if proj_err <= PROJECTION_TOLERANCE_PX:
        report.ok("projection")
    else:
        report.fail(
            "projection", f"{where}: joints_2d differ from the projection of joints_3d by {proj_err:.4f} px"
        )
    if vis_err is None:
        report.ok("visibility")
    else:
        report.fail("visibility", f"{where}: {vis_err}")


@dataclasses.dataclass
class _Index:
    """``index.parquet`` as read: raw bytes and per-key (index, shard) rows (None when unreadable)."""

    name: str
    data: bytes | None = None
    table: object = None
    error: str | None = None
    rows: dict = dataclasses.field(default_factory=dict)  # key -> (index, shard)
    views: dict = dataclasses.field(default_factory=dict)  # key -> view (None: no view column)
    shards: Counter = dataclasses.field(default_factory=Counter)  # shard name -> rows


def _read_index(store: Store, manifest: dict) -> _Index:
    import pyarrow.parquet as pq

    entry = manifest.get("index") or {}
    idx = _Index(name=entry.get("name", "index.parquet"))
    try:
        idx.data = store.read_bytes(idx.name)
        idx.table = pq.read_table(io.BytesIO(idx.data))
    except Exception as exc:  # missing or unreadable parquet
        idx.error = f"{store.path(idx.name)}: {exc}"
        return idx
    cols = idx.table.column_names
    keys = idx.table.column("key").to_pylist() if "key" in cols else []
    indices = idx.table.column("index").to_pylist() if "index" in cols else [None] * len(keys)
    shards = idx.table.column("shard").to_pylist() if "shard" in cols else [None] * len(keys)
    views = idx.table.column("view").to_pylist() if "view" in cols else [None] * len(keys)
    idx.rows = dict(zip(keys, zip(indices, shards, strict=True), strict=True))
    idx.views = dict(zip(keys, views, strict=True))
    idx.shards = Counter(shards)
    return idx


def _check_key(
    label, name: str, identity: _Identity | None, index: _Index, seen: set, report: ValidationReport
) -> None:
    """The "keys" check of one decoded record in shard ``name``."""
    from pipeline.seeding import sample_seed

    where = f"{name}:{label.key}"
    if identity is None:
        return  # counted once, before the shards
    problems = []
    want = f"{identity.run_tag}-{label.index:010d}" + ("" if label.view is None else "-local")
    if label.key != want:
        problems.append(f"key differs from {want!r} (run tag {identity.run_tag!r} from {identity.origin})")
    k = identity.shard_number(name)
    if k is None:
        problems.append(f"{name} is not one of the run's shards")
    elif label.index not in identity.indices(k):
        r = identity.indices(k)
        problems.append(f"index {label.index} is outside shard {k}'s range [{r.start}, {r.stop})")
    if label.seed != sample_seed(identity.seed, label.index):
        problems.append(
            f"seed {label.seed} is not the run's seed for index {label.index} (run seed {identity.seed})"
        )
    if label.key in seen:
        problems.append("key appears more than once in the run")
    seen.add(label.key)
    if index.error is None:
        row = index.rows.get(label.key)
        if row is None:
            problems.append(f"key is not in {index.name}")
        elif row != (label.index, name):
            problems.append(f"{index.name} has it as index {row[0]} in shard {row[1]}")
        elif index.views.get(label.key) not in (None, label.view_name):
            problems.append(f"{index.name} has it as view {index.views[label.key]!r}")
    if problems:
        report.fail("keys", f"{where}: " + "; ".join(problems))
    else:
        report.ok("keys")


def _check_membership(
    names: list[str],
    listed: dict,
    identity: _Identity | None,
    index: _Index,
    report: ValidationReport,
) -> None:
    """The "membership" check: manifest shard list vs the run, tars present, index rows per shard."""
    for extra in sorted(n for n in names if n.endswith(".tar") and n not in listed):
        report.fail("membership", f"{extra} is not listed in the manifest")
    if identity is not None:
        want = identity.shard_names()
        if list(listed) == want:
            report.ok("membership")
        else:
            unknown = [n for n in listed if n not in want]
            absent = [n for n in want if n not in listed]
            report.fail(
                "membership",
                f"manifest.json lists shards {list(listed)[:6]}, the run ({identity.origin}: "
                f"{identity.samples} samples, {identity.shard_size} per shard) has {want[:6]} "
                f"(not of the run: {unknown[:6]}; not listed: {absent[:6]})",
            )
    if index.error is not None:
        return  # the "index" check reports it
    for name, entry in listed.items():
        rows = index.shards.get(name, 0)
        if rows == entry.get("count"):
            report.ok("membership")
        else:
            report.fail(
                "membership",
                f"{index.name} has {rows} rows for {name}, the manifest counts {entry.get('count')}",
            )
    for name, rows in sorted(index.shards.items(), key=lambda kv: str(kv[0])):
        if name not in listed:
            report.fail(
                "membership",
                f"{index.name} has {rows} rows for shard {name}, which the manifest does not list",
            )


def _check_index(index: _Index, manifest: dict, keys: list[str] | None, report: ValidationReport) -> None:
    if index.error is not None:
        report.fail("index", index.error)
        return
    entry = manifest.get("index") or {}
    table = index.table
    if hashlib.sha256(index.data).hexdigest() != entry.get("sha256"):
        report.fail("index", f"{index.name}: sha256 differs from the manifest")
    elif table.num_rows != manifest.get("counts", {}).get("written"):
        report.fail(
            "index", f"{index.name}: {table.num_rows} rows, manifest says {manifest['counts'].get('written')}"
        )
    elif keys is not None and sorted(index.rows) != sorted(keys):
        report.fail("index", f"{index.name}: keys differ from the shards' records")
    elif len(index.rows) != table.num_rows:
        report.fail("index", f"{index.name}: {table.num_rows - len(index.rows)} duplicate keys")
    else:
        report.ok("index")


# ----------------------------------------------------------------------------------------------------
# the validator
# ----------------------------------------------------------------------------------------------------
def validate(
    out_dir: str | Path,
    renderer: str | None = None,
    mano_dir: str | None = None,
    render: bool = True,
    limit: int | None = None,
) -> ValidationReport:
    """Validate a run at a local folder or fsspec URL (see module doc). ``limit`` caps the records checked
    per shard. Raises ``StoreError`` (one line) when ``out_dir`` is missing or not a run."""
    store, names = _open_store(out_dir)
    report = ValidationReport()
    manifest = None
    try:
        if "manifest.json" not in names:
            raise ValueError("missing (the run is not finalised, or this is not a run folder)")
        manifest = _read_json(store, "manifest.json")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {manifest.get('schema_version')!r}, this code reads {SCHEMA_VERSION}"
            )
        report.ok("manifest")
    except ValueError as exc:
        report.fail("manifest", f"{store.path('manifest.json')}: {exc}")
        manifest = None
    identity = _check_run(store, names, manifest, report)
    if manifest is None:
        return report
    if identity is None:
        report.fail(
            "keys",
            f"cannot check keys: neither {RUN_FILE} nor the manifest holds a run config "
            "that matches its hash",
        )
    listed = {s.get("name"): s for s in manifest.get("shards", []) if isinstance(s, dict)}
    index = _read_index(store, manifest)
    _check_membership(names, listed, identity, index, report)
    if index.error is not None and identity is not None:
        report.fail("keys", f"cannot check keys against {index.name}: it is unreadable")
    mano_dir = mano_dir or ((manifest.get("config") or {}).get("hand_model") or {}).get("mano_dir")
    models = _HandModels(mano_dir)
    rerender = None
    if render:
        try:
            rerender = _Rerender(manifest, renderer, models)
        except Exception as exc:  # a renderer that cannot start is a failed check, reported in one line
            report.fail("render", f"cannot start the renderer: {exc}")
    keys: list[str] = []
    seen: set[str] = set()
    try:
        for name, entry in listed.items():
            _check_shard(
                store, names, name, entry, limit, identity, index, models, rerender, keys, seen, report
            )
    finally:
        if rerender is not None:
            rerender.renderer.close()  # release the GL context before interpreter exit
    _check_index(index, manifest, keys if limit is None else None, report)
    return report


def _check_shard(
    store: Store,
    names: list[str],
    name: str,
    entry: dict,
    limit: int | None,
    identity: _Identity | None,
    index: _Index,
    models: _HandModels,
    rerender: _Rerender | None,
    keys: list[str],
    seen: set,
    report: ValidationReport,
) -> None:
    """Every check of one listed shard and its records."""
    if name not in names:
        report.fail("shards", f"{name} is listed but missing")
        return
    try:
        data = store.read_bytes(name)
        records = _records(data, name)
    except (OSError, ValueError) as exc:
        report.fail("shards", f"{name}: {exc}" if isinstance(exc, OSError) else str(exc))
        return
    sha = hashlib.sha256(data).hexdigest()
    if sha != entry.get("sha256") or len(records) != entry.get("count"):
        report.fail(
            "shards",
            f"{name}: sha256/count {sha[:12]}/{len(records)} differ from the manifest's "
            f"{str(entry.get('sha256'))[:12]}/{entry.get('count')}",
        )
    else:
        report.ok("shards")
    hands: list[_Hand] = []
    checked = records[: limit or len(records)]
    prev = None  # the label of the record before this one in the shard (None: the first, or unreadable)
    for key, files in checked:
        keys.append(key)
        where = f"{name}:{key}"
        try:
            dec = decode_record({**files, "__key__": key})
        except (SchemaError, OSError, ValueError) as exc:
            report.fail("schema", f"{where}: {exc}")
            prev = None
            continue
        label = dec["label"]
        if label.key != key:
            report.fail("schema", f"{where}: label key {label.key} differs from the record key")
            prev = None
            continue
        _check_key(label, name, identity, index, seen, report)
        _check_views(label, prev, identity, report, where)
        prev = label
        _check_record(dec, report, where)
        hands += _hands_of(label, where)
        if rerender is not None:
            try:
                err = rerender.check(dec)
            except (SchemaError, ValueError) as exc:
                err = str(exc)
            if err is None:
                report.ok("render")
            else:
                report.fail("render", f"{where}: {err}")
    local_run = identity is not None and "local" in identity.views
    if local_run and prev is not None and prev.view is None and len(checked) == len(records):
        report.fail("views", f"{name}:{prev.key}: the shard ends without its local record")
    _check_params(hands, models, report)


def _check_views(label, prev, identity: _Identity | None, report: ValidationReport, where: str) -> None:
    """The "views" check of one record; ``prev``: the label of the record before it in its shard (or None)."""
    local_run = identity is not None and "local" in identity.views
    if label.view is None:
        if not local_run:
            return  # a global-only run: nothing to pair
        if prev is not None and prev.view is None:
            report.fail("views", f"{where}: the record before it, {prev.key}, has no local record after it")
        else:
            report.ok("views")
        return
    problems = []
    if identity is not None and not local_run:
        problems.append(
            f"the run's views are {','.join(identity.views)} ({identity.origin}): no local records"
        )
    parent = label.view["parent"]
    if prev is None or prev.key != parent:
        before = prev.key if prev else "none"
        problems.append(f"the record before it is {before}, not its global record {parent}")
    else:
        problems += _local_vs_parent(label, prev)
    if problems:
        report.fail("views", f"{where}: " + "; ".join(problems))
    else:
        report.ok("views")


def _local_vs_parent(label, parent) -> list[str]:
    """How a local record's label disagrees with its global record's (empty when it agrees)."""
    from pipeline.camera import crop_intrinsics

    view, out = label.view, []
    if not np.array_equal(np.asarray(view["parent_crop_box"], dtype=np.float64), parent.crop_box):
        out.append(
            f"view.parent_crop_box {view['parent_crop_box']} differs from {parent.key}'s crop_box "
            f"{parent.crop_box.tolist()}"
        )
    if list(view["parent_image_size"]) != list(parent.image_size):
        out.append(f"view.parent_image_size {view['parent_image_size']} differs from {parent.key}'s")
    K = crop_intrinsics(parent.camera.K, parent.crop_box, label.image_size[0])
    if not np.allclose(label.camera.K, K, rtol=1e-12, atol=1e-9):
        out.append(f"camera.K {label.camera.K.tolist()} is not the crop camera {K.tolist()} of {parent.key}")
    d0, d1 = label.camera.dist, parent.camera.dist
    if (d0 is None) != (d1 is None) or (d0 is not None and not np.array_equal(d0, d1)):
        out.append("camera.dist differs from the global record's")
    for name in ("index", "seed", "caption", "hand_type", "props"):
        if getattr(label, name) != getattr(parent, name):
            out.append(f"{name} differs from the global record's")
    if not np.array_equal(label.verts, parent.verts, equal_nan=True):
        out.append("verts.npy differs from the global record's")
    for s in SIDES:
        a, b = label.hands[s], parent.hands[s]
        if a is None or b is None:
            continue  # presence follows hand_type, compared above
        for f in ("mano_pose", "mano_shape", "mano_trans", "joints_3d"):
            if not np.array_equal(getattr(a, f), getattr(b, f)):
                out.append(f"hands.{s}.{f} differs from the global record's")
    return out
