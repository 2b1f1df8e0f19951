"""Pose sources: the built-in prior, InterHand2.6M and Re:InterHand (see ``base``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.camera import project_points
from pipeline.schema import SIDES, Sample
from pipeline.sources.base import (
    FilterConfig,
    PoseSource,
    SkipSample,
    SourceError,
    apply_filters,
    letterbox_sample,
    pose_hands,
)

__all__ = [
    "FilterConfig",
    "PoseSource",
    "SkipSample",
    "SourceError",
    "apply_filters",
    "dump_record",
    "letterbox_sample",
    "make_source",
    "pose_hands",
]


def _options(parts: list[str], allowed: dict) -> dict:
    out = {}
    for p in parts:
        if "=" not in p:
            raise SourceError(f"bad source option {p!r}: expected name=value")
        k, v = (x.strip() for x in p.split("=", 1))
        if k not in allowed:
            raise SourceError(f"unknown source option {k!r}; allowed: {sorted(allowed)}")
        try:
            out[k] = allowed[k](v)
        except ValueError as exc:
            raise SourceError(f"bad value for source option {k}: {v!r}") from exc
    return out


def _flag(v: str) -> bool:
    if v.lower() in ("1", "true", "yes"):
        return True
    if v.lower() in ("0", "false", "no"):
        return False
    raise ValueError(v)


def make_source(
    spec: str,
    hand_model,
    run_seed: int = 0,
    run_tag: str = "run",
    cache_dir: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    filters: FilterConfig | None = None,
) -> PoseSource:
    """Build a source from its spec: ``prior``, ``prior:NAME,NAME`` (gestures / interactions),
    ``interhand:ROOT[,split=train][,dedup=0.05][,stratify=1]`` or
    ``reinterhand:ROOT[,ego=0][,stratify=1][,dedup=0.05]``."""
    kind, _, rest = spec.partition(":")
    if kind == "prior":
        from pipeline.sources.prior import PriorConfig, PriorSource

        kw = {"image_size": tuple(image_size)} if image_size else {}
        try:
            cfg = PriorConfig.from_names(rest.split(","), **kw) if rest else PriorConfig(**kw)
        except ValueError as exc:
            raise SourceError(str(exc)) from exc
        return PriorSource(hand_model, cfg, run_seed, run_tag, filters)
    if kind in ("interhand", "reinterhand"):
        parts = [p for p in rest.split(",") if p]
        if not parts:
            raise SourceError(f"{kind} needs a root folder: {kind}:ROOT")
        root = parts[0]
        if kind == "interhand":
            from pipeline.sources.interhand import InterHandSource

            opts = _options(parts[1:], {"split": str, "dedup": float, "stratify": _flag})
            return InterHandSource(
                root,
                hand_model,
                cache_dir=cache_dir,
                run_seed=run_seed,
                run_tag=run_tag,
                filters=filters,
                **opts,
            )
        from pipeline.sources.reinterhand import ReInterHandSource

        opts = _options(parts[1:], {"ego": _flag, "stratify": _flag, "dedup": float})
        return ReInterHandSource(
            root, hand_model, run_seed=run_seed, run_tag=run_tag, filters=filters, **opts
        )
    raise SourceError(f"unknown source {spec!r}: use prior, prior:NAMES, interhand:ROOT or reinterhand:ROOT")


def dump_record(sample: Sample) -> dict:
    """The label fields that sampling determines, formatted as in label schema v1 (after ``pose_hands``)."""
    hands = {}
    for s in SIDES:
        h = sample.hands[s]
        if h is None:
            hands[s] = None
            continue
        j2d = project_points(h.joints_3d, sample.camera.K, sample.camera.dist)
        hands[s] = {
            "mano_pose": h.pose.tolist(),
            "mano_shape": h.shape.tolist(),
            "mano_trans": h.trans.tolist(),
            "joints_3d": np.asarray(h.joints_3d, dtype=np.float64).tolist(),
            "joints_2d": j2d.tolist(),
        }
    return {
        "key": sample.key,
        "index": sample.index,
        "seed": sample.seed,
        "hand_type": sample.hand_type,
        "hands": hands,
        "camera": sample.camera.to_json(),
        "image_size": list(sample.image_size),
        "source": sample.source,
    }
