"""InterHand2.6M (``--source interhand:ROOT[,split=train]``).

Reads ``ROOT/annotations/<split>/InterHand2.6M_<split>_{data,camera,joint_3d,MANO_NeuralAnnot}.json`` (formats
in DESIGN section 7). The files are large, so an index is built once by streaming them (ijson, one capture at
a time) into compact numpy arrays, cached as ``<cache_dir>/interhand_<split>_<key>.npz`` where the key hashes
the files' sizes and modification times, the root folder and the near-duplicate threshold. Peak memory stays
far below the raw JSON size. ``cache_dir`` defaults to the user's cache folder
(``pipeline.sources.base.default_cache_dir``), never the dataset, so datasets on read-only mounts work.

Sample i (a pure function of the run seed and the config) picks an image (capture, frame, camera) from a
seeded permutation of the index (optionally round-robin over hand types), then applies the validity rules:
``hand_type_valid`` must be 1, a hand needs MANO parameters and a valid root joint (``joint_valid`` of its
wrist), and parameters must be finite with the right lengths. MANO parameters are moved from world to camera
space with ``X_cam = R (X_world - campos / 1000)`` (``pipeline.rotations.move_mano``). Failures are counted
skips with a reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from pipeline.rotations import move_mano
from pipeline.sample import Drawn
from pipeline.schema import HAND_TYPES, SIDES
from pipeline.seeding import stage_rng
from pipeline.sources.base import FilterConfig, PoseSource, SkipSample, SourceError, default_cache_dir

logger = logging.getLogger(__name__)

_ROOT_JOINT = {"right": 20, "left": 41}  # wrist of each hand in InterHand's 42-joint layout
_INDEX_VERSION = 1


def _files(root: Path, split: str) -> dict[str, Path]:
    ann = root / "annotations" / split
    return {
        k: ann / f"InterHand2.6M_{split}_{k}.json" for k in ("data", "camera", "joint_3d", "MANO_NeuralAnnot")
    }


class _NonFiniteAsNull:
    """Byte stream that turns the bare ``NaN`` / ``Infinity`` / ``-Infinity`` tokens Python's json module
    writes into ``null`` (same length), so the strict streaming parser reads such files; the affected values
    become counted skips instead of a failed index."""

    _TOKENS = ((b"-Infinity", b"null     "), (b"Infinity", b"null    "), (b"NaN", b"null"))

    def __init__(self, f) -> None:
        self._f, self._tail = f, b""

    def read(self, n: int = -1) -> bytes:
        while True:
            chunk = self._f.read(n)
            data = self._tail + chunk
            for tok, rep in self._TOKENS:  # complete tokens anywhere in data
                data = data.replace(tok, rep)
            if not chunk:  # end of file: nothing can continue
                self._tail = b""
                return data
            # an incomplete token (at most 8 bytes) can only sit in the last 8 bytes: hold them back
            head, self._tail = data[:-8], data[-8:]
            if head:
                return head

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_json_stream(path: Path):
    try:
        return _NonFiniteAsNull(open(path, "rb"))  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _mano_vec(h) -> np.ndarray | None:
    """61 floats (pose 48, shape 10, trans 3) of one hand's MANO dict, or None when absent/malformed."""
    if not isinstance(h, dict):
        return None
    try:
        v = np.concatenate(
            [np.asarray(h[k], dtype=np.float64).reshape(-1) for k in ("pose", "shape", "trans")]
        )
    except (KeyError, TypeError, ValueError):
        return np.full(61, np.nan)  # present but malformed: a counted skip later
    return v if v.shape == (61,) else np.full(61, np.nan)


def build_index(root: Path, split: str, dedup: float = 0.0) -> dict[str, np.ndarray]:
    """Stream the annotation files into arrays (see module doc)."""
    import ijson

    files = _files(root, split)
    for p in files.values():
        if not p.is_file():
            raise SourceError(f"InterHand2.6M file not found: {p}")
    try:
        # MANO parameters per (capture, frame)
        frame_key: dict[tuple[int, int], int] = {}
        mano: list[np.ndarray] = []
        with _open_json_stream(files["MANO_NeuralAnnot"]) as f:
            for cap, frames in ijson.kvitems(f, "", use_float=True):
                for fr, hands in (frames or {}).items():
                    key = (int(cap), int(fr))
                    vec = np.full((2, 61), np.nan)
                    present = np.zeros(2, dtype=bool)
                    for i, s in enumerate(SIDES):
                        v = _mano_vec((hands or {}).get(s))
                        if v is not None:
                            vec[i], present[i] = v, True
                    frame_key[key] = len(mano)
                    mano.append(np.concatenate([vec.reshape(-1), present.astype(np.float64)]))
        mano_arr = np.array(mano, dtype=np.float64).reshape(-1, 124) if mano else np.zeros((0, 124))
        # validity per (capture, frame) from joint_3d: root joints and hand_type_valid
        valid = np.zeros(
            (len(mano_arr), 3), dtype=np.int8
        )  # right root, left root, hand_type_valid (-1 unknown)
        valid[:] = -1
        with _open_json_stream(files["joint_3d"]) as f:
            for cap, frames in ijson.kvitems(f, "", use_float=True):
                for fr, ann in (frames or {}).items():
                    row = frame_key.get((int(cap), int(fr)))
                    if row is None or not isinstance(ann, dict):
                        continue
                    jv = ann.get("joint_valid") or []
                    jv = np.asarray(jv, dtype=float).reshape(-1)
                    if jv.size >= 42:
                        valid[row, 0], valid[row, 1] = int(jv[20] > 0), int(jv[41] > 0)
                    if "hand_type_valid" in ann:
                        valid[row, 2] = int(bool(ann["hand_type_valid"]))
        # images (capture, frame, camera, size, file) and their annotations (hand type)
        caps, frs, cams, hs, ws, seqs, names = [], [], [], [], [], [], []
        seq_table: dict[str, int] = {}
        image_row: dict[int, int] = {}
        with _open_json_stream(files["data"]) as f:
            for img in ijson.items(f, "images.item", use_float=True):
                try:
                    key = (int(img["capture"]), int(img["frame_idx"]))
                    cam = int(img["camera"])
                    h, w = int(img["height"]), int(img["width"])
                    name = str(img["file_name"])
                    seq = str(img.get("seq_name", ""))
                except (KeyError, TypeError, ValueError):
                    key, cam, h, w, name, seq = (-1, -1), -1, 0, 0, "", ""  # malformed: a counted skip
                image_row[int(img.get("id", -len(caps) - 1))] = len(caps)
                caps.append(key[0])
                frs.append(key[1])
                cams.append(cam)
                hs.append(h)
                ws.append(w)
                seqs.append(seq_table.setdefault(seq, len(seq_table)))
                names.append(name)
        hand_type = np.full(len(caps), -1, dtype=np.int8)
        ht_valid = np.full(len(caps), -1, dtype=np.int8)
        with _open_json_stream(files["data"]) as f:
            for ann in ijson.items(f, "annotations.item", use_float=True):
                row = image_row.get(int(ann.get("image_id", -(10**12))))
                if row is None:
                    continue
                hand_type[row] = (
                    HAND_TYPES.index(ann["hand_type"]) if ann.get("hand_type") in HAND_TYPES else -1
                )
                if "hand_type_valid" in ann:
                    ht_valid[row] = int(bool(ann["hand_type_valid"]))
    except ijson.JSONError as exc:
        raise SourceError(f"malformed JSON in InterHand2.6M split {split}: {exc}") from exc
    frame_rows = np.array([frame_key.get((c, f), -1) for c, f in zip(caps, frs, strict=True)], dtype=np.int64)
    keep = np.ones(len(caps), dtype=bool)
    if dedup > 0 and len(mano_arr):
        keep = _dedup_mask(frame_key, mano_arr, frame_rows, dedup)
    return {
        "capture": np.array(caps, dtype=np.int64),
        "frame": np.array(frs, dtype=np.int64),
        "camera": np.array(cams, dtype=np.int64),
        "height": np.array(hs, dtype=np.int32),
        "width": np.array(ws, dtype=np.int32),
        "seq": np.array(seqs, dtype=np.int32),
        "file_name": np.array([n.encode("utf-8") for n in names], dtype=bytes),  # 1 byte per character
        "seq_table": np.array([q.encode("utf-8") for q in seq_table], dtype=bytes),
        "frame_row": frame_rows,
        "mano": mano_arr.astype(np.float64),
        "valid": valid,
        "hand_type": hand_type,
        "ht_valid": ht_valid,
        "keep": keep,
        "version": np.array(_INDEX_VERSION),
    }


def _dedup_mask(frame_key, mano_arr, frame_rows, threshold: float) -> np.ndarray:
    """Keep an image unless its frame's pose is within ``threshold`` (L2 over both hands' 96 pose values) of
    the last kept frame of the same capture (frames in order)."""
    keep_frame = np.ones(len(mano_arr), dtype=bool)
    by_cap: dict[int, list[tuple[int, int]]] = {}
    for (cap, fr), row in frame_key.items():
        by_cap.setdefault(cap, []).append((fr, row))
    for rows in by_cap.values():
        last = None
        for _, row in sorted(rows):
            pose = np.nan_to_num(mano_arr[row].reshape(-1)[:122].reshape(2, 61)[:, :48]).reshape(-1)
            if last is not None and np.linalg.norm(pose - last) < threshold:
                keep_frame[row] = False
            else:
                last = pose
    return np.where(frame_rows >= 0, keep_frame[np.maximum(frame_rows, 0)], True)


class InterHandSource(PoseSource):
    """InterHand2.6M samples in camera space (see module doc)."""

    name = "interhand2.6m"

    @classmethod
    def from_config(cls, config, hand_model, run_seed=0, run_tag="run", cache_dir=None, filters=None, **_):
        """The source of an ``InterHandSourceConfig`` (``pipeline.sources.SOURCES``; the image size is the
        dataset's)."""
        return cls(
            config.root,
            hand_model,
            split=config.split,
            cache_dir=cache_dir,
            run_seed=run_seed,
            run_tag=run_tag,
            filters=filters,
            dedup=config.dedup,
            stratify=config.stratify,
        )

    def __init__(
        self,
        root: str | Path,
        hand_model,
        split: str = "train",
        cache_dir: str | Path | None = None,
        run_seed: int = 0,
        run_tag: str = "run",
        filters: FilterConfig | None = None,
        dedup: float = 0.0,
        stratify: bool = False,
    ) -> None:
        super().__init__(run_seed, run_tag, filters)
        self.root, self.split, self.hm = Path(root), split, hand_model
        if not self.root.is_dir():
            raise SourceError(f"InterHand2.6M root not found: {self.root}")
        files = _files(self.root, split)
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise SourceError(f"InterHand2.6M files not found: {', '.join(missing)}")
        stats = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files.values()]
        stamp = json.dumps([*stats, dedup, _INDEX_VERSION, str(self.root.resolve())])
        key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
        # the user's cache folder by default, never the dataset itself (it may be read-only)
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        path = cache / f"interhand_{split}_{key}.npz"
        self.index = None
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    self.index = {k: z[k] for k in z.files}
            except (OSError, ValueError) as exc:  # a damaged cache file is rebuilt
                logger.warning("ignoring the unreadable index cache %s: %s", path, exc)
        if self.index is None:
            logger.info("building the InterHand2.6M %s index (once) into %s", split, path)
            self.index = build_index(self.root, split, dedup)
            tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
            try:
                cache.mkdir(parents=True, exist_ok=True)
                np.savez(tmp, **self.index)
                tmp.replace(path)
            except OSError as exc:  # an unwritable cache only costs a rebuild next time
                logger.warning(
                    "cannot cache the InterHand2.6M index in %s (%s); set a writable cache_dir", cache, exc
                )
                with contextlib.suppress(OSError):
                    tmp.unlink()
        try:
            with open(files["camera"], encoding="utf-8") as f:
                self.cameras = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise SourceError(f"cannot read {files['camera']}: {exc}") from exc
        self.pool = np.nonzero(self.index["keep"])[0]
        if len(self.pool) == 0:
            raise SourceError(f"InterHand2.6M split {split} has no images")
        perm = stage_rng(self.run_seed, "interhand-order").permutation(len(self.pool))
        if stratify:
            ht = self.index["hand_type"][self.pool[perm]]
            self._strata = [perm[ht == t] for t in range(3) if (ht == t).any()]
        else:
            self._strata = [perm]

    def __len__(self) -> int:
        return len(self.pool)

    def entry(self, index: int) -> int:
        """Index row of sample ``index``: round robin over strata, a seeded permutation within each."""
        stratum = self._strata[index % len(self._strata)]
        return int(self.pool[stratum[(index // len(self._strata)) % len(stratum)]])

    def _camera(self, cap: int, cam: int):
        try:
            c = self.cameras[str(cap)]
            R = np.asarray(c["camrot"][str(cam)], dtype=np.float64).reshape(3, 3)
            pos = np.asarray(c["campos"][str(cam)], dtype=np.float64).reshape(3) / 1000.0
            fx, fy = (float(x) for x in c["focal"][str(cam)])
            cx, cy = (float(x) for x in c["princpt"][str(cam)])
        except (KeyError, TypeError, ValueError) as exc:
            raise SkipSample("no_camera", f"capture {cap} camera {cam}: {exc}") from exc
        if not (np.isfinite(R).all() and np.isfinite(pos).all() and fx > 0 and fy > 0):
            raise SkipSample("no_camera", f"capture {cap} camera {cam}: invalid parameters")
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        return K, R, -R @ pos

    def _draw(self, index: int, seed: int) -> Drawn:
        ix = self.index
        e = self.entry(index)
        cap, fr, cam = int(ix["capture"][e]), int(ix["frame"][e]), int(ix["camera"][e])
        if cap < 0 or ix["height"][e] <= 0:
            raise SkipSample("bad_image_entry", f"data.json image row {e}")
        if ix["ht_valid"][e] == 0:
            raise SkipSample("hand_type_invalid", f"capture {cap} frame {fr}")
        row = int(ix["frame_row"][e])
        if row < 0:
            raise SkipSample("no_mano", f"capture {cap} frame {fr}")
        K, R, t = self._camera(cap, cam)
        params = ix["mano"][row][:122].reshape(2, 61)
        present = ix["mano"][row][122:] > 0
        hands = {}
        for i, s in enumerate(SIDES):
            if not present[i]:
                continue
            if ix["valid"][row, i] == 0:
                continue  # root joint invalid: the hand is dropped
            p = params[i]
            if not np.isfinite(p).all():
                raise SkipSample("bad_mano_params", f"capture {cap} frame {fr} {s}")
            pose, shape, trans = p[:48], p[48:58], p[58:61]
            cam_pose, cam_trans = move_mano(pose, trans, self.hm.root_joint(s, shape), R, t)
            hands[s] = (cam_pose, shape, cam_trans)
        if not hands:
            raise SkipSample("no_valid_hand", f"capture {cap} frame {fr}")
        name = ix["file_name"][e].decode("utf-8")
        img = self.root / "images" / self.split / name
        source = {
            "dataset": "interhand2.6m",
            "split": self.split,
            "capture": cap,
            "frame": fr,
            "camera": cam,
            "file_name": name,
        }
        size = (int(ix["height"][e]), int(ix["width"][e]))
        return self._new_sample(
            index, seed, size, K, None, hands, source, str(img) if img.is_file() else None
        )

    def inspect(self) -> dict:
        ix = self.index
        pool = self.pool
        ht = ix["hand_type"][pool]
        cams, counts = np.unique(ix["camera"][pool], return_counts=True)
        frames = len({(int(c), int(f)) for c, f in zip(ix["capture"][pool], ix["frame"][pool], strict=True)})
        return {
            "source": self.name,
            "split": self.split,
            "images": int(len(pool)),
            "images_total": int(len(ix["capture"])),
            "frames": frames,
            "hand_types": {HAND_TYPES[t]: int((ht == t).sum()) for t in range(3)}
            | {"unknown": int((ht < 0).sum())},
            "cameras": {str(int(c)): int(n) for c, n in zip(cams, counts, strict=True)},
        }
