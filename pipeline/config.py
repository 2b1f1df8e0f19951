"""Typed, frozen run configuration (pydantic v2; unknown keys are rejected) and YAML presets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_serializer, field_validator, model_validator

from pipeline.config_base import FrozenModel
from pipeline.errors import HandgenError
from pipeline.stage_configs import (
    CAPTIONER_CONFIGS,
    CAPTIONER_USAGE,
    DATASET_SOURCES,
    GENERATOR_CONFIGS,
    GENERATOR_USAGE,
    SOURCE_CONFIGS,
    SOURCE_USAGE,
    CaptionerConfig,
    CompositeGeneratorConfig,
    GeneratorConfig,
    LabelsCaptionerConfig,
    PriorSourceConfig,
    ScorerConfig,
    SourceConfig,
    StageConfig,
    parse_stage,
)


class ConfigError(HandgenError, ValueError):
    """A configuration value or file that cannot be used; the message names it."""


class HandModelConfig(FrozenModel):
    """``mano_dir``: folder with MANO_{RIGHT,LEFT}.pkl (or its parent with ``mano/``); None = the stand-in.

    ``standin_version``: the embedded stand-in's geometry (``pipeline.standin.STANDIN_VERSIONS``; None = the
    current one, ``STANDIN_VERSION``), e.g. to finish or extend a run begun before the default changed. Like
    the code version, it is not part of the run's identity (``RunConfig.identity``): each shard's report
    records the hand model's sha256, and a run refuses shards made with another one."""

    mano_dir: Path | None = None
    standin_version: int | None = None

    @model_validator(mode="after")
    def _check_standin_version(self) -> HandModelConfig:
        from pipeline.standin import STANDIN_VERSIONS

        v = self.standin_version
        if v is None:
            return self
        if v not in STANDIN_VERSIONS:
            choices = ", ".join(map(str, STANDIN_VERSIONS))
            raise ValueError(f"standin_version must be one of {choices}, got {v}")
        if self.mano_dir is not None:
            raise ValueError("standin_version is the embedded stand-in's geometry: not with mano_dir")
        return self


PROP_KINDS = ("forearm", "objects")
AUTO_PROPS = "forearm,objects"
"""What ``props: auto`` means for the composite generator (measured in docs/benchmarks.md)."""


class RunConfig(FrozenModel):
    """One generation run. ``out`` is where outputs go and is not part of the config hash.

    ``mode``: ``generate`` (synthetic images from the generator) or ``prepare`` (AttentionHand training
    tuples: the dataset's real image letterboxed to ``image_size``, rendered in that image's camera; the
    generator setting is not used). ``prepare`` needs a dataset source (interhand:ROOT or reinterhand:ROOT).

    ``batch_size`` samples are sampled, rendered and captioned together; ``generation_batch_size`` (default:
    ``batch_size``) is the diffusion generator's batch. ``steps``, ``guidance_scale`` (classifier-free),
    ``conditioning_scale`` (guidance-module strength) and ``tas`` set the AttentionHand sampler.
    ``min_alignment`` (in [0, 1]; None = no filter): each generated image is scored against its label by
    ``scorer`` (``evaluation.scorers``; default ``mediapipe``); a sample below it is generated again from the
    next seed of its own streams, at most ``max_tries`` times in all, then skipped as ``misaligned``.
    ``prefetch``: batches whose CPU stages run ahead of the generator, and whose writing runs behind it, on
    background threads (0: every stage in turn; the output is the same either way).
    ``views``: ``("global",)`` or ``("global", "local")``: each sample's local close-up is also written, as a
    record of its own right after the global one (``sinks.records.local_sample``), and AttentionHand samples
    its local branch too.
    ``props``: scene geometry drawn in the depth test with the hands (``pipeline.props``): a comma-separated
    list of ``PROP_KINDS`` (``forearm``: an arm from each hand's wrist; ``objects``: sometimes an object held
    against a palm) or ``none``; ``auto`` (the default) is ``AUTO_PROPS`` for the composite generator and
    ``none`` otherwise (AttentionHand is conditioned on hand-only mesh images, as it was trained). Parsed to
    the concrete value in ``PROP_KINDS`` order, which is what the run's identity holds.
    """

    mode: Literal["generate", "prepare"] = "generate"
    out: str = "out"
    samples: int = Field(64, ge=1)
    shard_size: int = Field(32, ge=1)
    seed: int = Field(0, ge=0, lt=2**63)
    source: SourceConfig = PriorSourceConfig()
    captioner: CaptionerConfig = LabelsCaptionerConfig()
    generator: GeneratorConfig = CompositeGeneratorConfig()
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    image_size: int = Field(512, ge=64, le=4096)
    run_tag: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$")
    hand_model: HandModelConfig = HandModelConfig()
    renderer: Literal["auto", "opengl", "pytorch3d"] = "auto"
    batch_size: int = Field(8, ge=1, le=256)
    shard_prefix: str = Field("hands", pattern=r"^[A-Za-z0-9_.-]+$")
    lossless: bool = False
    backgrounds: str | None = None
    min_hand_px: float = Field(0.0, ge=0.0)
    max_truncation: float = Field(1.0, ge=0.0, le=1.0)
    min_visible_joints: int = Field(0, ge=0, le=21)
    steps: int = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0.0)
    conditioning_scale: float = Field(1.0, ge=0.0)
    tas: bool = True
    generation_batch_size: int | None = Field(None, ge=1, le=256)
    min_alignment: float | None = Field(None, ge=0.0, le=1.0)
    max_tries: int = Field(3, ge=1, le=100)
    scorer: ScorerConfig = ScorerConfig()
    cache_dir: str | None = None
    prefetch: int = Field(2, ge=0, le=64)
    views: tuple[str, ...] = ("global",)
    props: str = Field("auto", validate_default=True)

    @field_validator("out", mode="before")
    @classmethod
    def _out(cls, v) -> str:
        # a local path or a URL (file://, s3://, gs://, memory://, ...); kept as a string so "s3://b/x" stays
        # whole
        v = str(v) if isinstance(v, Path) else v
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"out must be a folder path or URL, got {v!r}")
        return v.rstrip("/") if v.rstrip("/") else v

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v):
        return parse_stage(v, SOURCE_CONFIGS, "source", SOURCE_USAGE)

    @field_validator("captioner", mode="before")
    @classmethod
    def _captioner(cls, v):
        return parse_stage(v, CAPTIONER_CONFIGS, "captioner", CAPTIONER_USAGE)

    @field_validator("generator", mode="before")
    @classmethod
    def _generator(cls, v):
        return parse_stage(v, GENERATOR_CONFIGS, "generator", GENERATOR_USAGE)

    @field_validator("scorer", mode="before")
    @classmethod
    def _scorer(cls, v):
        if isinstance(v, str):
            return ScorerConfig.from_spec(v)
        return v

    @field_serializer("source", "captioner", "generator", "scorer")
    def _spec(self, v: StageConfig) -> str:
        # stage configs are written as their canonical spec strings (run.json, the identity, flow parameters)
        return v.spec()

    @field_validator("views", mode="before")
    @classmethod
    def _views(cls, v) -> tuple[str, ...]:
        # the records written per sample: ("global",) or ("global", "local") (each local close-up as a record)
        from pipeline.schema import normalize_views

        return normalize_views(v)

    @field_validator("props", mode="before")
    @classmethod
    def _props(cls, v, info):
        if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
            v = ",".join(v)  # YAML may give a list
        if not isinstance(v, str):
            raise ValueError(f"expected auto, none or a list of {', '.join(PROP_KINDS)}, got {v!r}")
        v = v.strip().lower()
        generator, mode = info.data.get("generator"), info.data.get("mode")
        if v == "auto":
            composite = generator is not None and generator.kind == "composite" and mode == "generate"
            return AUTO_PROPS if composite else "none"
        if v == "none":
            return v
        if mode == "prepare":
            raise ValueError("mode prepare keeps the dataset's real photos: props are for generated images")
        parts = [p.strip() for p in v.split(",")]
        bad = [p for p in parts if p not in PROP_KINDS]
        if bad or len(set(parts)) != len(parts):
            raise ValueError(
                f"expected auto, none or a comma-separated list of {', '.join(PROP_KINDS)} "
                f"(each once), got {v!r}"
            )
        return ",".join(k for k in PROP_KINDS if k in parts)

    @property
    def prop_kinds(self) -> frozenset[str]:
        """The props drawn (``PROP_KINDS``; empty for ``none``)."""
        return frozenset() if self.props == "none" else frozenset(self.props.split(","))

    @property
    def num_shards(self) -> int:
        return (self.samples + self.shard_size - 1) // self.shard_size

    def shard_indices(self, k: int) -> range:
        """Sample indices of shard ``k``: ``[k * shard_size, min((k + 1) * shard_size, samples))``."""
        if not 0 <= k < self.num_shards:
            raise ValueError(f"shard {k} is outside 0..{self.num_shards - 1}")
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.samples))

    @model_validator(mode="after")
    def _prepare_needs_images(self) -> RunConfig:
        if self.mode == "prepare" and self.source.kind not in DATASET_SOURCES:
            raise ValueError(
                f"mode prepare needs a dataset source with images (interhand:ROOT or reinterhand:ROOT), "
                f"got {self.source.spec()!r}"
            )
        if self.mode == "prepare" and "local" in self.views:
            raise ValueError(
                "views global,local writes generated local close-ups; mode prepare's records "
                "already carry the real image's crop (image_local)"
            )
        if self.mode == "prepare" and self.min_alignment is not None:
            raise ValueError(
                "min_alignment filters generated images; mode prepare keeps the dataset's real images"
            )
        return self

    def identity(self) -> dict:
        """The run's identity: the config as JSON without the output location and the purely operational
        settings (``OPERATIONAL``: where the run writes, which device computes it, where caches go). Two
        configs with equal identities write the same records, so they may resume or share one run folder."""
        d = self.model_dump(mode="json", exclude=set(OPERATIONAL))
        for (
            name,
            default,
        ) in ADDED_FIELDS.items():  # runs made before a field existed keep their hash (run tag)
            if d[name] == default:
                del d[name]
        d["hand_model"].pop("standin_version", None)  # checked by the shards' hand-model record instead
        return d

    def config_sha256(self) -> str:
        """sha256 of the canonical JSON of ``identity()``."""
        return canonical_sha256(self.identity())

    def effective_run_tag(self) -> str:
        """``run_tag`` if given, else the first 8 hex digits of ``config_sha256``."""
        return self.run_tag or self.config_sha256()[:8]


ADDED_FIELDS = {
    "mode": "generate",
    "conditioning_scale": 1.0,
    "generation_batch_size": None,
    "min_alignment": None,
    "max_tries": 3,
    "scorer": "mediapipe",
    "views": ["global"],
    "props": "none",
}
"""RunConfig fields added after runs were made: left out of ``identity()`` while they hold these defaults, so
an older run's identity, hash and run tag stay as they were."""

OPERATIONAL = ("out", "device", "cache_dir", "prefetch")
"""RunConfig fields that say how or where a run is computed, not what it writes (left out of its identity)."""


def canonical_sha256(data: dict) -> str:
    """sha256 (hex) of the canonical JSON of ``data`` (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def identity_diff(a: dict, b: dict) -> list[str]:
    """Dotted names of the fields whose values differ between two identity dicts (``RunConfig.identity``)."""
    out: list[str] = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += [f"{k}.{sub}" for sub in identity_diff(va, vb)]
        elif va != vb:
            out.append(k)
    return out


def resolve_device(device: str) -> str:
    """The torch device a run computes on: ``auto`` is ``cuda`` when CUDA is available, else ``cpu``;
    ``cuda`` and ``cuda:N`` (one GPU of a node; one worker per GPU) must exist here
    (``ConfigError`` if not)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= n:
            have = (
                f"this machine has {n} CUDA device{'s' if n != 1 else ''}"
                if n
                else "CUDA is not available here"
            )
            raise ConfigError(f"device {device}: {have} (use --device cpu or auto)")
    return device


MERGED_OVERRIDES = ("hand_model",)
"""Sub-configs that an override mapping completes field by field instead of replacing (``load_model``)."""


def load_model(cls: type[BaseModel], path: str | Path | None, overrides: dict) -> BaseModel:
    """An instance of the config model ``cls`` from a YAML file (optional) and ``overrides`` (None values
    ignored); any problem is a ``ConfigError`` naming the field or the file."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping, got {type(loaded).__name__}")
        data.update(loaded or {})
    for k, v in overrides.items():
        if v is None:
            continue
        # a mapping that only names some of a sub-config's fields (``--standin-version`` next to a preset's
        # ``hand_model.mano_dir``) completes the file's, so a contradiction is reported, not lost
        merge = k in MERGED_OVERRIDES and isinstance(v, dict) and isinstance(data.get(k), dict)
        data[k] = {**data[k], **v} if merge else v
    try:
        return cls(**data)
    except ValidationError as exc:
        # one line naming the dotted field; a validator's own message as it is (it names the value),
        # pydantic's built-in messages with the offending value (short, never the whole config)
        errors = exc.errors()
        err = errors[0]
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        cause = (err.get("ctx") or {}).get("error")
        if err["type"] in ("value_error", "assertion_error") and cause is not None:
            msg = str(cause)
        else:
            msg = err["msg"]
            if "input" in err and not isinstance(err["input"], dict):
                shown = repr(err["input"])
                msg += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
        msg = " ".join(msg.split())  # one line
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{loc}: {msg}{more}") from exc


def load_config(path: str | Path | None = None, **overrides) -> RunConfig:
    """Read a YAML preset (optional) and apply ``overrides`` (None values ignored)."""
    return load_model(RunConfig, path, overrides)
