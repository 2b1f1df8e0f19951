"""Registries: one per kind of stage, mapping a config's ``kind`` to the code that builds the stage.

Entries are ``"module:attribute"`` strings, imported only when a stage is built, so that parsing configs and
listing names never loads torch, diffusers or mediapipe. Plug-ins register from an entry point group (the
scorers' ``handgen.scorers``) or with ``register``. A factory takes the stage's typed config
(``pipeline.stage_configs``) and keyword context (device, hand model, ...) and returns the stage object.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pipeline.errors import HandgenError


class RegistryError(HandgenError, ValueError):
    """A kind that no registry entry or plug-in provides; the message lists the known ones."""


class Registry:
    """``kind`` -> factory of one kind of stage (``what``: "generator", "source", ...)."""

    def __init__(
        self, what: str, entries: dict[str, str | Callable], entry_points: str | None = None
    ) -> None:
        self.what = what
        self._entries: dict[str, str | Callable] = dict(entries)
        self._group = entry_points

    def register(self, kind: str, factory: str | Callable) -> None:
        """Add (or replace) the factory of ``kind``: a callable or a ``"module:attribute"`` string."""
        self._entries[kind] = factory

    def names(self) -> list[str]:
        """Every known kind, plug-ins included."""
        return sorted({*self._entries, *(ep.name for ep in self._plugins())})

    def _plugins(self):
        if self._group is None:
            return []
        from importlib.metadata import entry_points

        return list(entry_points(group=self._group))

    def factory(self, kind: str) -> Callable:
        """The factory of ``kind``; ``RegistryError`` when nothing provides it."""
        target = self._entries.get(kind)
        if target is None:
            found = [ep for ep in self._plugins() if ep.name == kind]
            if not found:
                raise RegistryError(f"unknown {self.what} {kind!r}; known: {', '.join(self.names())}")
            return found[0].load()
        if callable(target):
            return target
        module, _, attr = target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def build(self, config, **context):
        """The stage of ``config`` (its ``kind`` picks the factory), built with ``context``."""
        return self.factory(config.kind)(config, **context)
