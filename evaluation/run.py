"""``hands evaluate RUN``: score every sample of a run, write ``scores.parquet``, ``summary.json`` and
``report.html``.

One pass over the run's shards (a local folder or an fsspec URL): each record's label and image are decoded,
the scorer (default ``mediapipe``) scores the image against the label, and the label itself is described
(gesture, interaction, palm facing, camera viewpoint in the hand's frame, box size, visible joints, caption
length). Detection runs in a small pool of processes (``workers``), one scorer each, since MediaPipe
uses about one core per image. Records keep their shard order.

Outputs (``out``, default ``RUN/eval``; a folder or fsspec URL, written through ``sinks.store.Store``):

* ``scores.parquet``: one row per record key, joinable with the run's ``index.parquet`` on ``key`` (it also
  has ``index`` and ``shard``); per-hand columns are prefixed ``right_`` / ``left_`` (``scores_columns``).
* ``summary.json``: the dataset-level numbers (``summarize``) and the settings.
* ``report.html``: one self-contained page (``evaluation.report``).

Bad input: a folder or URL without shards is a one-line ``NotARunError`` (exit 2); an image that cannot be
decoded or that the detector rejects is counted as ``unreadable``, a label that breaks the schema as
``bad_label``, a corrupt shard as ``bad_shards``; none of these stops the evaluation.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Iterator

import numpy as np

from evaluation import metrics
from evaluation.intervals import run_intervals
from pipeline.errors import HandgenError, one_line
from pipeline.gestures import FACINGS
from pipeline.schema import SIDES

logger = logging.getLogger(__name__)

SCORES_FILE = "scores.parquet"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
#: alignment thresholds whose pass rates the summary reports
PASS_THRESHOLDS = (0.25, 0.5, 0.75)
_POOL_MIN_RECORDS = 200  # below this, starting a process pool (a few s) costs more than it saves


class NotARunError(HandgenError, FileNotFoundError):
    """RUN holds no shards: not a handgen run (or a wrong path); one line."""


class EvaluateError(HandgenError, ValueError):
    """Bad evaluate settings (flags that go together, a missing weights file, ...); one line."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation. ``scorer`` is a ``make_scorer`` spec; for ``mediapipe`` the eligibility
    rule (``min_visible_joints``, ``min_box_px``) is passed to it. ``workers``: detector processes,
    0 = automatic (1 below 200 records, else the usable cores, at most 4). ``worst``: tiles in the report's
    worst-aligned grid."""

    run: str
    out: str | None = None
    limit: int | None = None
    min_visible_joints: int = metrics.MIN_VISIBLE_JOINTS
    min_box_px: float = metrics.MIN_BOX_PX
    scorer: str = "mediapipe"
    workers: int = 0
    worst: int = 12
    reference: str | None = None
    inception: str | None = None
    device: str = "auto"
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise EvaluateError(f"--limit must be >= 1, got {self.limit}")
        if not 1 <= self.min_visible_joints <= 21:
            raise EvaluateError(f"--min-visible-joints must be in [1, 21], got {self.min_visible_joints}")
        if self.min_box_px < 0:
            raise EvaluateError(f"--min-box-px must be >= 0, got {self.min_box_px:g}")
        if self.workers < 0:
            raise EvaluateError(f"--workers must be >= 0, got {self.workers}")
        if bool(self.reference) != bool(self.inception):
            raise EvaluateError("FID/KID need both --reference REAL and --inception WEIGHTS")

    @property
    def out_dir(self) -> str:
        """``out``, or ``eval`` inside the run folder (beside the shard when RUN is one ``.tar``)."""
        if self.out:
            return self.out
        run = self.run.rstrip("/")
        if run.endswith(".tar"):
            run = run.rpartition("/")[0] or "."
        return f"{run}/eval"

    def scorer_spec(self) -> str:
        """The scorer spec, with the eligibility rule added for the MediaPipe scorer."""
        name, _, arg = self.scorer.partition(":")
        if name != "mediapipe":
            return self.scorer
        opts = f"min_visible_joints={self.min_visible_joints},min_box_px={self.min_box_px:g}"
        return f"{name}:{opts}" + (f",{arg}" if arg else "")


# -- reading -------------------------------------------------------------------------------------------------
def run_shards(run: str) -> list[str]:
    """The shard URLs of ``run``; ``NotARunError`` (one line) when it has none."""
    from sinks.records import ShardReadError, ShardsNotFoundError, resolve_shards

    try:
        urls = resolve_shards(run)
    except ShardsNotFoundError as exc:
        raise NotARunError(f"{run} is not a handgen run: {exc.one_line()}") from exc
    except ShardReadError as exc:
        raise NotARunError(f"cannot read {run}: {exc.one_line()}") from exc
    if len(urls) == 1 and not urls[0].endswith(".tar"):
        raise NotARunError(f"{run} is not a handgen run: it is a file, not a folder of .tar shards")
    return urls


def _expected_records(run: str) -> int | None:
    """The run's sample count from its manifest (None when there is none)."""
    from sinks.store import Store

    try:
        m = json.loads(Store(run).read_bytes("manifest.json"))
        return int(m["counts"]["written"])
    except Exception:  # noqa: BLE001 (an unfinished run, a URL without a manifest: no total)
        return None


def iter_raw_records(urls: list[str], counts: collections.Counter) -> Iterator[dict]:
    """Raw records (``__key__``, ``__url__``, file name -> bytes) of the shards in order; a corrupt shard is
    logged and counted (``counts['bad_shards']``), its complete records before the damage are kept."""
    from sinks.records import ShardReadError, iter_records

    for url in urls:
        try:
            yield from iter_records(url)
        except ShardReadError as exc:
            counts["bad_shards"] += 1
            logger.warning("skipping the rest of a shard: %s", exc.one_line())


# -- per record (runs in the worker processes) ---------------------------------------------------------------
_KEY_INDEX = re.compile(r"-(\d+)$")
_WORDS = re.compile(r"[a-z]+(?:'[a-z]+)?")


def _label_stats(label) -> dict:
    """What the report shows about the label itself: gesture, facing, viewpoint per hand; interaction."""
    from pipeline.gestures import classify_gesture, hands_relation, palm_facing

    row: dict = {"hand_type": label.hand_type}
    present = {s: h for s, h in label.hands.items() if h is not None}
    for s in SIDES:
        h = present.get(s)
        row[f"{s}_present"] = h is not None
        row[f"{s}_gesture"] = None if h is None else classify_gesture(h.joints_3d)
        row[f"{s}_facing"] = None if h is None else palm_facing(h.joints_3d, s)
        az, el = (math.nan, math.nan) if h is None else metrics.camera_viewpoint(h.joints_3d, s)
        row[f"{s}_azimuth"], row[f"{s}_elevation"] = az, el
        # metres from the camera to the centroid of the hand's 21 joints (camera frame)
        row[f"{s}_distance_m"] = math.nan if h is None else float(np.linalg.norm(h.joints_3d.mean(axis=0)))
        other = present.get("left" if s == "right" else "right")
        # the share of this hand's box that the other hand's box covers (NaN without two hands)
        row[f"{s}_box_overlap"] = (
            math.nan if h is None or other is None else metrics.box_overlap(h.bbox, other.bbox)
        )
    row["interaction"] = (
        hands_relation(present["right"].joints_3d, present["left"].joints_3d)
        if len(present) == 2
        else "single"
    )
    row["caption_words"] = len(_WORDS.findall(label.caption.lower()))
    row["objects"] = len((label.props or {}).get("objects") or ())
    camera = label.source.get("camera")  # the prior's camera kind ('third' | 'ego'); datasets: None
    row["camera_kind"] = camera if isinstance(camera, str) else None
    return row


class _DecodeError(ValueError):
    """Image bytes that do not decode."""


def _decode(data: bytes) -> np.ndarray:
    from sinks.records import decode_image

    try:
        return decode_image(data)
    except Exception as exc:  # noqa: BLE001 (PIL raises many types for bad bytes)
        detail = re.sub(r" <[^>]* at 0x[0-9a-f]+>", "", one_line(exc))  # PIL names the buffer object
        raise _DecodeError(f"not a readable image: {detail}") from exc


def score_record(scorer, raw: dict) -> dict:
    """One raw record -> {"row": flat scores row, "detections": [(21, 2) keypoints], "caption", "hand_conf":
    [handedness scores of all detections]}. Never raises for bad data: it sets ``status``."""
    from pipeline.schema import Label
    from sinks.records import IMAGE_FILES, LABEL_FILE, VERTS_FILE, find_file

    key = raw.get("__key__", "?")
    m = _KEY_INDEX.search(key)
    row: dict = {
        "key": key,
        "index": int(m.group(1)) if m else -1,
        "shard": raw.get("__url__", "").rstrip("/").rpartition("/")[2],
        "status": "ok",
    }
    out = {"row": row, "detections": [], "caption": "", "hand_conf": []}
    files = {k.lstrip("."): v for k, v in raw.items()}
    try:
        label = Label.from_bytes(files[LABEL_FILE], files[VERTS_FILE])
    except Exception as exc:  # noqa: BLE001 (a missing file, bad JSON, a schema break: counted, not fatal)
        row["status"] = "bad_label"
        logger.warning("record %s: unusable label: %s", key, one_line(exc))
        return out
    row["index"] = label.index
    row.update(_label_stats(label))
    out["caption"] = label.caption
    from evaluation.detector import UnreadableImageError

    name = find_file(files, IMAGE_FILES)
    try:
        if name is None:
            raise _DecodeError(f"no {' or '.join(IMAGE_FILES)} in the record")
        image = _decode(files[name])
        result = scorer.score(image, label)
    except (UnreadableImageError, _DecodeError) as exc:
        row["status"] = "unreadable"
        logger.warning("record %s: unreadable image: %s", key, one_line(exc))
        return out
    row["alignment"] = math.nan if result.alignment is None else float(result.alignment)
    row["assessed"] = result.alignment is not None
    row["n_detections"] = len(result.detections)
    for s, h in result.hands.items():
        for k, v in h.items():
            row[f"{s}_{k}"] = v
        k = h.get("detection")
        if k is not None:
            kp = result.detections[k].keypoints
            row[f"{s}_keypoints"] = np.round(kp, 2).ravel().tolist()
            hl = label.hands[s]
            offsets = metrics.joint_offsets(kp, hl.joints_2d, hl.joints_visible, metrics.box_size(hl.bbox))
            # nulls, not NaNs, for the joints the label does not show (NaN never equals itself in a table)
            row[f"{s}_joint_offsets"] = [
                x if math.isfinite(x) else None for x in np.round(offsets, 6).ravel().tolist()
            ]
    out["detections"] = [np.asarray(getattr(d, "keypoints", d), dtype=np.float32) for d in result.detections]
    out["hand_conf"] = [
        float(d.handedness_score) for d in result.detections if hasattr(d, "handedness_score")
    ]
    return out


_WORKER_SCORER = None


def _worker_init(spec: str) -> None:
    global _WORKER_SCORER
    from evaluation.scorers import make_scorer

    logging.basicConfig(level=logging.WARNING)
    _WORKER_SCORER = make_scorer(spec)


def _worker_score(raw: dict) -> dict:
    return score_record(_WORKER_SCORER, raw)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_workers(expected: int | None) -> int:
    """Detector processes for ``expected`` records: 1 for short runs, else the usable cores (at most 4)."""
    if expected is not None and expected < _POOL_MIN_RECORDS:
        return 1
    return max(1, min(4, _usable_cores()))


def score_records(records: Iterable[dict], spec: str, workers: int, scorer=None) -> Iterator[dict]:
    """``score_record`` over ``records`` in order: in this process (``workers`` <= 1; ``scorer`` reused if
    given) or in a pool of ``workers`` spawned processes with one scorer each (bounded in flight)."""
    if workers <= 1:
        from evaluation.scorers import make_scorer

        own = scorer is None
        scorer = scorer or make_scorer(spec)
        try:
            for raw in records:
                yield score_record(scorer, raw)
        finally:
            if own:
                scorer.close()
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # no forked copies of MediaPipe's or torch's threads
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(spec,)) as pool:
        pending: collections.deque = collections.deque()
        for raw in records:
            pending.append(pool.submit(_worker_score, raw))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# -- dataset level -------------------------------------------------------------------------------------------
def _mean(xs) -> float | None:
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return float(np.mean(xs)) if xs else None


def summarize(rows: list[dict], hand_conf: list[float], counts: collections.Counter | None = None) -> dict:
    """Dataset-level numbers from scores rows (docs/evaluation.md):

    detection_rate: detected eligible hands / eligible hands; hand_conf: the Hand1000 "Hand Conf.",
    MediaPipe's handedness score averaged over every detected hand (``hand_conf`` lists them); pck_005,
    pck_01, error_norm, mse_2d: means over the detected eligible hands; handedness_agreement: the share of
    those whose (converted) handedness equals the label's; alignment: mean and median over assessed samples,
    and the share of them at or above each of ``PASS_THRESHOLDS``; ``by_<name>`` for each of ``BREAKDOWNS``:
    the eligible hands split by a property of the label, with how many there are and are detected, the
    detection rate and PCK@0.1 of each group: ``by_facing`` (palm, back or side toward the camera,
    ``pipeline.gestures.palm_facing``), ``by_gesture`` (``classify_gesture``), ``by_distance`` (the joints'
    centroid from the camera, ``DISTANCE_BINS_M``), ``by_object`` (a held object in the sample's props or
    not), ``by_camera`` (the prior's third-person or egocentric camera; empty for dataset sources),
    ``by_overlap`` (alone in the sample, or beside the other hand with the label boxes apart or overlapping,
    ``OVERLAP_GROUPS``). The
    detector's misses depend on these more than on the rendering (docs/benchmarks.md)."""
    counts = counts or collections.Counter()
    ok = [r for r in rows if r.get("status") == "ok"]
    hands = [(r, s) for r in ok for s in SIDES if r.get(f"{s}_present") and f"{s}_eligible" in r]
    elig = [(r, s) for r, s in hands if r[f"{s}_eligible"]]
    det = [(r, s) for r, s in elig if r[f"{s}_detected"]]
    assessed = [r["alignment"] for r in ok if r.get("assessed")]
    agree = [r[f"{s}_handedness_agrees"] for r, s in det if r.get(f"{s}_handedness_agrees") is not None]
    return {
        "samples": len(rows),
        "scored": len(ok),
        "unreadable": sum(r.get("status") == "unreadable" for r in rows),
        "bad_label": sum(r.get("status") == "bad_label" for r in rows),
        "bad_shards": int(counts.get("bad_shards", 0)),
        "hands": len(hands),
        "eligible_hands": len(elig),
        "detected_hands": len(det),
        "detection_rate": len(det) / len(elig) if elig else None,
        **_intervals(elig),
        "detections": len(hand_conf),
        "hand_conf": _mean(hand_conf),
        "hand_conf_matched": _mean(r.get(f"{s}_handedness_score") for r, s in det),
        "pck_005": _mean(r.get(f"{s}_pck_005") for r, s in det),
        "pck_01": _mean(r.get(f"{s}_pck_01") for r, s in det),
        "error_norm": _mean(r.get(f"{s}_error_norm") for r, s in det),
        "mse_2d": _mean(r.get(f"{s}_mse_2d") for r, s in det),
        "handedness_agreement": float(np.mean(agree)) if agree else None,
        "assessed_samples": len(assessed),
        "alignment_mean": _mean(assessed),
        "alignment_median": float(np.median(assessed)) if assessed else None,
        "alignment_pass": {
            f"{t:g}": float(np.mean([a >= t for a in assessed])) if assessed else None
            for t in PASS_THRESHOLDS
        },
        **{f"by_{name}": _breakdown(elig, group, order) for name, (group, order) in BREAKDOWNS.items()},
        "by_joint": joint_table(det),
        "by_joint_facing": {
            f: joint_table([(r, s) for r, s in det if r.get(f"{s}_facing") == f]) for f in FACINGS
        },
    }


def joint_table(hands: list[tuple[dict, str]]) -> dict:
    """``{joint name: {visible, error, pck_01, along, across}}`` over the given detected (row, side) hands'
    ``<side>_joint_offsets`` (``metrics.joint_offsets``): how many of them show the joint, the mean error /
    box size, the share under 0.1 (the joint's PCK@0.1), and the mean signed offsets along the hand (+ toward
    the fingertips) and across it (+ toward the thumb's side). A joint no hand shows has None values."""
    from pipeline.kinematics import JOINT_NAMES

    rows = [
        np.asarray(r[f"{s}_joint_offsets"], float).reshape(-1, 3)
        for r, s in hands
        if r.get(f"{s}_joint_offsets")
    ]
    table = np.stack(rows) if rows else np.full((0, len(JOINT_NAMES), 3), math.nan)
    out = {}
    for j, name in enumerate(JOINT_NAMES):
        col = table[:, j]
        seen = col[np.isfinite(col[:, 2])]
        out[name] = {
            "visible": int(len(seen)),
            "error": _mean(seen[:, 2]),
            "pck_01": float(np.mean(seen[:, 2] < 0.1)) if len(seen) else None,
            "along": _mean(seen[:, 0]),
            "across": _mean(seen[:, 1]),
        }
    return out


#: metres: the hands' distance bins of ``by_distance``
DISTANCE_BINS_M = (0.3, 0.5)
_DISTANCE_GROUPS = (
    f"under {DISTANCE_BINS_M[0]:g} m",
    *(f"{lo:g}-{hi:g} m" for lo, hi in zip(DISTANCE_BINS_M[:-1], DISTANCE_BINS_M[1:], strict=True)),
    f"{DISTANCE_BINS_M[-1]:g} m and over",
)


def _distance_bin(r: dict, s: str) -> str | None:
    d = r.get(f"{s}_distance_m")
    if d is None or not math.isfinite(d):
        return None
    return _DISTANCE_GROUPS[int(np.searchsorted(DISTANCE_BINS_M, d, side="right"))]


#: ``by_overlap``'s groups: the hand alone in its sample, or beside the other hand, their boxes apart or not
OVERLAP_GROUPS = ("one hand", "two hands, boxes apart", "two hands, boxes overlap")


def _overlap_group(r: dict, s: str) -> str:
    v = r.get(f"{s}_box_overlap")
    if v is None or not math.isfinite(v):
        return OVERLAP_GROUPS[0]
    return OVERLAP_GROUPS[1] if v == 0.0 else OVERLAP_GROUPS[2]


#: summary breakdowns of the eligible hands: name -> (the group of a (row, side) or None, groups in order;
#: None: the groups met, sorted)
BREAKDOWNS = {
    "facing": (lambda r, s: r.get(f"{s}_facing"), FACINGS),
    "gesture": (lambda r, s: r.get(f"{s}_gesture"), None),
    "distance": (_distance_bin, _DISTANCE_GROUPS),
    "object": (lambda r, s: "held object" if r.get("objects") else "no object", ("no object", "held object")),
    "camera": (lambda r, s: r.get("camera_kind"), ("third", "ego")),
    "overlap": (_overlap_group, OVERLAP_GROUPS),
}


def _breakdown(elig: list[tuple[dict, str]], group, order) -> dict:
    """``{group: {eligible, detected, detection_rate, pck_01}}`` over the eligible (row, side) hands; hands
    whose group is None are left out (a dataset's camera kind, a label without joints)."""
    groups: dict[str, list] = collections.defaultdict(list)
    for r, s in elig:
        g = group(r, s)
        if g is not None:
            groups[g].append((r, s))
    names = order if order is not None else sorted(groups)
    out = {}
    for g in names:
        e = groups.get(g, [])
        d = [(r, s) for r, s in e if r[f"{s}_detected"]]
        out[g] = {
            "eligible": len(e),
            "detected": len(d),
            "detection_rate": len(d) / len(e) if e else None,
            "pck_01": _mean(r.get(f"{s}_pck_01") for r, s in d),
            **_intervals(e),
        }
    return out


def _intervals(elig: list[tuple[dict, str]]) -> dict:
    """``detection_rate_ci95`` and ``pck_01_ci95``: [low, high] 95% intervals over the eligible (row, side)
    hands, with the samples as clusters (``evaluation.intervals.run_intervals``); None where there is
    nothing to estimate from."""
    per_row: dict[int, list] = {}
    for r, s in elig:
        counts = per_row.setdefault(id(r), [0, 0, 0.0, 0])
        counts[0] += 1
        if r[f"{s}_detected"]:
            counts[1] += 1
            pck = r.get(f"{s}_pck_01")
            if pck is not None and math.isfinite(float(pck)):
                counts[2] += float(pck)
                counts[3] += 1
    e, d, p, c = zip(*per_row.values(), strict=True) if per_row else ((), (), (), ())
    ci = run_intervals(e, d, p, c)
    return {f"{k}_ci95": None if v is None else [round(v[0], 4), round(v[1], 4)] for k, v in ci.items()}


# -- outputs -------------------------------------------------------------------------------------------------
def _columns(rows: list[dict]) -> list[str]:
    """Column order: the fixed leading columns, then the rest in first-seen order."""
    lead = [
        "key",
        "index",
        "shard",
        "status",
        "alignment",
        "assessed",
        "n_detections",
        "hand_type",
        "interaction",
        "caption_words",
    ]
    seen = dict.fromkeys(lead)
    for r in rows:
        seen.update(dict.fromkeys(r))
    return list(seen)


def scores_table(rows: list[dict]):
    """A pyarrow table of the rows (one per key); missing values are nulls."""
    import pyarrow as pa

    cols = _columns(rows)
    data = {}
    for c in cols:
        vals = [r.get(c) for r in rows]
        vals = [None if isinstance(v, float) and math.isnan(v) else v for v in vals]
        vals = [bool(v) if isinstance(v, np.bool_) else v for v in vals]
        data[c] = vals
    return pa.table(data)


def _write_parquet(store, name: str, table) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.write_bytes(name, buf.getvalue())


@dataclasses.dataclass
class EvalResult:
    summary: dict
    out_dir: str
    files: dict[str, str]
    seconds: float


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _fid_check(cfg: EvalConfig):
    """Import ``evaluation.fid`` and check the reference and the weights before the long pass;
    (module, note)."""
    if not cfg.reference:
        return None, "FID/KID not computed: give --reference REAL and --inception WEIGHTS to compute them."
    try:
        from evaluation import fid
    except ImportError as exc:
        return None, f"FID/KID not computed: evaluation.fid is not available ({one_line(exc)})."
    if not os.path.isfile(cfg.inception):
        raise EvaluateError(f"Inception weights file not found: {cfg.inception}")
    fid.ReferenceSet(
        cfg.reference
    )  # a missing or empty reference is a one-line error now, not after the pass
    return fid, None


def _fid_scores(fid, cfg: EvalConfig, urls: list[str]) -> dict:
    from sinks.reader import open_shards

    gen = open_shards(urls, split_by_worker=False, handler="skip")
    if cfg.limit:
        gen = itertools.islice(gen, cfg.limit)
    return fid.compute_fid_kid(gen, cfg.reference, cfg.inception, device=_resolve_device(cfg.device))


class _Worst:
    """The ``k`` worst-aligned assessed samples (lowest alignment; among equals those with more detections,
    then by key), with what their grid tile needs; holds at most ``4 k`` candidates at a time."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._items: list[tuple[tuple, dict, dict]] = []

    def offer(self, raw: dict, scored: dict) -> None:
        row = scored["row"]
        if self.k <= 0 or not row.get("assessed"):
            return
        self._items.append(((row["alignment"], -row.get("n_detections", 0), row["key"]), raw, scored))
        if len(self._items) > 4 * self.k:
            self._prune()

    def _prune(self) -> None:
        self._items = sorted(self._items, key=lambda e: e[0])[: self.k]

    def items(self) -> list[tuple[dict, dict]]:
        self._prune()
        return [(raw, scored) for _, raw, scored in self._items]


def evaluate_run(cfg: EvalConfig) -> EvalResult:
    """Score ``cfg.run`` and write its outputs (module doc); returns the summary and the files written."""
    from evaluation import report
    from evaluation.scorers import make_scorer
    from sinks.store import Store

    t0 = time.perf_counter()
    urls = run_shards(cfg.run)
    fid, fid_note = _fid_check(cfg)
    spec = cfg.scorer_spec()
    scorer = make_scorer(spec)  # a bad spec or a missing detector fails here, in this process
    settings = scorer.settings
    try:
        store = Store(cfg.out_dir)
        store.makedirs()  # an unwritable --out fails now, not after the pass
    except BaseException:
        scorer.close()
        raise
    expected = _expected_records(cfg.run)
    if cfg.limit:
        expected = min(expected, cfg.limit) if expected else cfg.limit
    workers = cfg.workers or auto_workers(expected)
    if workers > 1:
        scorer.close()
        scorer = None
    counts: collections.Counter = collections.Counter()
    records = iter_raw_records(urls, counts)
    if cfg.limit:
        records = itertools.islice(records, cfg.limit)
    rows, hand_conf, captions = [], [], []
    worst = _Worst(cfg.worst)
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    t_pass = time.perf_counter()
    t_first = None
    bar = tqdm(total=expected, unit="sample", desc="evaluate", disable=cfg.quiet, dynamic_ncols=True)
    with bar, logging_redirect_tqdm():  # log lines print above the bar, not through it
        raws: collections.deque = collections.deque()

        def remember(it):
            for raw in it:
                raws.append(raw)
                yield raw

        try:
            for scored in score_records(remember(records), spec, workers, scorer):
                raw = raws.popleft()
                rows.append(scored["row"])
                hand_conf.extend(scored["hand_conf"])
                captions.append(scored["caption"])
                worst.offer(raw, scored)
                bar.update(1)
                if t_first is None:
                    t_first = time.perf_counter()
        finally:
            if scorer is not None:
                scorer.close()
    pass_seconds = time.perf_counter() - t_pass
    if not rows:
        raise NotARunError(f"{cfg.run} holds no readable records")
    summary = summarize(rows, hand_conf, counts)
    summary["seconds"] = round(pass_seconds, 3)
    summary["samples_per_s"] = round(len(rows) / max(pass_seconds, 1e-9), 2)
    # after the first record: without the workers' start (model loading), what a long run sustains
    steady = t_pass + pass_seconds - (t_first or t_pass)
    summary["steady_samples_per_s"] = (
        round((len(rows) - 1) / steady, 2) if len(rows) > 1 and steady > 0 else None
    )
    summary["workers"] = workers
    summary["settings"] = {
        **settings,
        "min_visible_joints": cfg.min_visible_joints,
        "min_box_px": cfg.min_box_px,
    }
    summary["fid"] = None
    summary["fid_note"] = fid_note
    if fid is not None:
        summary["fid"] = _fid_scores(fid, cfg, urls)
    summary["run"] = cfg.run
    table = scores_table(rows)
    _write_parquet(store, SCORES_FILE, table)
    store.write_bytes(SUMMARY_FILE, (json.dumps(_jsonable(summary), indent=1) + "\n").encode())
    html = report.render(summary, rows, captions, worst.items())
    store.write_bytes(REPORT_FILE, html.encode("utf-8"))
    files = {n: store.path(n) for n in (SCORES_FILE, SUMMARY_FILE, REPORT_FILE)}
    return EvalResult(summary, cfg.out_dir, files, time.perf_counter() - t0)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    return x
