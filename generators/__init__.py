"""Image generators: the weight-free composite, AttentionHand (diffusers) and the real-photo generator of
training tuples. ``GENERATORS`` builds one from its typed config (``pipeline.stage_configs``)."""

from pipeline.registry import Registry

GENERATORS = Registry(
    "generator",
    {
        "composite": "generators.composite:CompositeGenerator.from_config",
        "attentionhand": "generators.attention_hand.generator:AttentionHandGenerator.from_config",
        "real": "generators.real:RealImageGenerator.from_config",
    },
)
"""Generators by ``kind``; a factory takes the config, ``run`` (the ``RunConfig``) and ``device``."""
