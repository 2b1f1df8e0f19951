"""Typed, frozen run configuration (pydantic v2; unknown keys are rejected) and YAML presets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names it."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HandModelConfig(_Frozen):
    """``mano_dir``: folder with MANO_{RIGHT,LEFT}.pkl (or its parent with ``mano/``); None = the stand-in."""

    mano_dir: Path | None = None


class RunConfig(_Frozen):
    """One generation run. ``out`` is where outputs go and is not part of the config hash."""

    out: Path = Path("out")
    samples: int = Field(64, ge=1)
    shard_size: int = Field(32, ge=1)
    seed: int = Field(0, ge=0, lt=2**63)
    source: str = "prior"
    captioner: str = "labels"
    generator: str = "composite"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    image_size: int = Field(512, ge=64, le=4096)
    run_tag: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$")
    hand_model: HandModelConfig = HandModelConfig()

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v != "prior" and not v.startswith(("prior:", "interhand:", "reinterhand:")):
            raise ValueError(f"source must be prior, interhand:ROOT or reinterhand:ROOT, got {v!r}")
        return v

    def config_sha256(self) -> str:
        """sha256 of the canonical JSON of everything but the output location."""
        d = self.model_dump(mode="json", exclude={"out"})
        return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def effective_run_tag(self) -> str:
        """``run_tag`` if given, else the first 8 hex digits of ``config_sha256``."""
        return self.run_tag or self.config_sha256()[:8]


def load_config(path: str | Path | None = None, **overrides) -> RunConfig:
    """Read a YAML preset (optional) and apply ``overrides`` (None values ignored)."""
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
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        raise ConfigError(f"{loc}: {err['msg']} (got {err.get('input')!r})") from exc
