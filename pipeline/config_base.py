"""The base of every typed config (run, stages, training): a frozen pydantic model that rejects unknown
keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FrozenModel(BaseModel):
    """Base of every typed config: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")
