"""Pose sources: the built-in prior, InterHand2.6M and Re:InterHand (see ``base``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.camera import project_points
from pipeline.registry import Registry
from pipeline.sample import Sample
from pipeline.schema import SIDES
from pipeline.sources.base import (
    FilterConfig,
    PoseSource,
    SkipSample,
    SourceError,
    apply_filters,
    letterbox,
    pose_hands,
)
from pipeline.stage_configs import SOURCE_CONFIGS, SOURCE_USAGE, SourceConfig, SpecError, parse_stage

__all__ = [
    "FilterConfig",
    "SOURCES",
    "PoseSource",
    "SkipSample",
    "SourceError",
    "apply_filters",
    "dump_record",
    "letterbox",
    "make_source",
    "pose_hands",
    "posed_sample",
]


SOURCES = Registry(
    "source",
    {
        "prior": "pipeline.sources.prior:PriorSource.from_config",
        "interhand": "pipeline.sources.interhand:InterHandSource.from_config",
        "reinterhand": "pipeline.sources.reinterhand:ReInterHandSource.from_config",
    },
)
"""The pose sources by ``kind`` (``pipeline.stage_configs.SourceConfig``); a factory takes the config and the
keyword context of ``make_source``."""


def make_source(
    config: SourceConfig | str,
    hand_model,
    run_seed: int = 0,
    run_tag: str = "run",
    cache_dir: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    filters: FilterConfig | None = None,
) -> PoseSource:
    """The source of ``config`` (a ``SourceConfig`` or its spec string: ``prior``, ``prior:NAME,NAME``
    (gestures / interactions), ``interhand:ROOT[,split=train][,dedup=0.05][,stratify=1]`` or
    ``reinterhand:ROOT[,ego=0][,stratify=1][,dedup=0.05]``); ``SourceError`` (one line) for a bad spec."""
    if isinstance(config, str):
        try:
            config = parse_stage(config, SOURCE_CONFIGS, "source", SOURCE_USAGE)
        except SpecError as exc:
            raise SourceError(str(exc)) from None
    context = {"run_seed": run_seed, "run_tag": run_tag, "cache_dir": cache_dir, "image_size": image_size}
    return SOURCES.build(config, hand_model=hand_model, filters=filters, **context)


def posed_sample(source: PoseSource, index: int, hand_model, filters: FilterConfig | None = None) -> Sample:
    """Sample ``index`` of ``source`` with its hands posed by ``hand_model`` (a ``Sample`` of its ``Drawn``
    and ``Posed`` parts); with ``filters``, ``SkipSample`` for a sample they reject."""
    drawn = source.sample(index)
    posed = pose_hands(drawn, hand_model)
    if filters is not None:
        apply_filters(drawn, posed, filters)
    return Sample(drawn, posed)


def dump_record(sample: Sample) -> dict:
    """The label fields that sampling determines, formatted as in label schema v1 (a sample with its ``Drawn``
    and ``Posed`` parts)."""
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
