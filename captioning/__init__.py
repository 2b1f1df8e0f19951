"""Captioners: captions derived from the label, and Qwen-VL. ``CAPTIONERS`` builds one from its typed config
(``pipeline.stage_configs``)."""

from pipeline.registry import Registry

CAPTIONERS = Registry(
    "captioner",
    {
        "labels": "captioning.labels:LabelCaptioner.from_config",
        "qwen-vl": "captioning.qwen_vl:QwenVLCaptioner.from_config",
    },
)
"""Captioners by ``kind``; a factory takes the config and ``device``."""
