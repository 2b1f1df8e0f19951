"""Typed settings of each pluggable stage: pose sources, captioners, generators and alignment scorers.

Each kind of stage has a family of frozen configs told apart by ``kind`` (a pydantic discriminated union), and
a registry in its package that maps ``kind`` to the implementation (``pipeline.registry``). A run config holds
these typed configs; they are parsed once, when the run config is made, and unknown options are rejected
there.

The command line (and YAML presets) may write a config as a spec string,
``KIND[:POSITIONAL][,NAME=VALUE...]``:

* sources: ``prior``, ``prior:NAME,NAME`` (gestures and interactions), ``interhand:ROOT[,split=S][,dedup=D]
  [,stratify=1]``, ``reinterhand:ROOT[,ego=0][,stratify=1][,dedup=D]``;
* captioners: ``labels``, ``qwen-vl:PATH``;
* generators: ``composite[:skin=..,light=..,background=..,camera_effects=..,spectrum_match=..,shadows=..]``,
  ``attentionhand:PATH[,guidance=DIR]``;
* scorers: ``mediapipe[:NAME=VALUE,...]``, or a plug-in's ``NAME[:ARG]``.

A YAML preset may also give the mapping form (``generator: {kind: attentionhand, path: /models/ah}``). Configs
serialise back to their canonical spec string (``spec()``: options in declaration order, defaults left out),
which is what ``run.json`` and the run's identity hold, so a config keeps its run tag across releases.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, ValidationError, field_validator

from pipeline.config_base import FrozenModel
from pipeline.errors import HandgenError


class SpecError(HandgenError, ValueError):
    """A spec string that cannot be parsed; the message names the spec and the bad part."""


def parse_options(
    spec: str, flag: str, options: list[str], known: tuple[str, ...], usage: str
) -> dict[str, str]:
    """The ``NAME=VALUE`` options of ``spec`` (already split at the commas), names and values stripped of
    blanks. ``flag`` names where the spec came from (``--generator``). Raises ``SpecError`` (one line, naming
    ``spec``) for an empty option (a stray comma), one without ``=``, an unknown name (not in ``known``), a
    repeated name, or an empty value."""
    values: dict[str, str] = {}
    names = ", ".join(known) or "none"
    for opt in (o.strip() for o in options):
        if not opt:
            raise SpecError(f"{flag} {spec!r}: empty option (a stray comma?); expected {usage}")
        if "=" not in opt:
            raise SpecError(
                f"{flag} {spec!r}: option {opt!r} needs the form NAME=VALUE (known options: {names})"
            )
        name, value = (x.strip() for x in opt.split("=", 1))
        if name not in known:
            raise SpecError(f"{flag} {spec!r}: unknown option {name!r} (known options: {names})")
        if name in values:
            raise SpecError(f"{flag} {spec!r}: option {name!r} is given twice")
        if not value:
            raise SpecError(f"{flag} {spec!r}: option {name!r} has no value")
        values[name] = value
    return values


def _reason(cls: type[FrozenModel], exc: ValidationError) -> str:
    """One line for the first error of ``exc`` (a validator's own message, or which type a field expects)."""
    err = exc.errors()[0]
    field = ".".join(str(x) for x in err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if cause is not None:
        return str(cause)
    if err["type"].endswith(("_parsing", "_type")):
        annotation = cls.model_fields[field].annotation if field in cls.model_fields else None
        kind = getattr(annotation, "__name__", "")
        expects = {"bool": "a bool", "float": "a float", "int": "an int", "str": "a string"}.get(
            kind, "a value"
        )
        return f"{field} expects {expects}, got {err.get('input')!r}"
    return f"{field}: {err['msg'].lower()}, got {err.get('input')!r}"


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class StageConfig(FrozenModel):
    """A stage's typed settings; ``kind`` picks the implementation. Subclasses set ``POSITIONAL`` (the field
    that the spec's first part fills, or None), ``OPTIONS`` (the fields that ``NAME=VALUE`` parts may set) and
    ``USAGE``."""

    FLAG: ClassVar[str] = "--stage"
    POSITIONAL: ClassVar[str | None] = None
    POSITIONAL_NAME: ClassVar[str] = ""
    OPTIONS: ClassVar[tuple[str, ...]] = ()
    USAGE: ClassVar[str] = ""

    kind: str

    @classmethod
    def from_spec(cls, spec: str) -> StageConfig:
        """Parse ``KIND[:POSITIONAL][,NAME=VALUE...]``; ``SpecError`` (one line) for anything that does not
        fit."""
        _, _, rest = spec.partition(":")
        parts = [p.strip() for p in rest.split(",")] if rest else []
        data: dict[str, Any] = {}
        if cls.POSITIONAL is not None:
            if not parts or not parts[0]:
                what = cls.POSITIONAL_NAME or cls.POSITIONAL
                raise SpecError(f"{cls.FLAG} {spec!r}: the {what} is missing (expected {cls.USAGE})")
            data[cls.POSITIONAL] = parts.pop(0)
        data.update(parse_options(spec, cls.FLAG, parts, cls.OPTIONS, cls.USAGE))
        try:
            return cls(**data)
        except ValidationError as exc:
            raise SpecError(f"{cls.FLAG} {spec!r}: {_reason(cls, exc)}") from None

    def spec(self) -> str:
        """The canonical spec string: the kind, the positional part, then the options that differ from their
        defaults, in declaration order."""
        parts = []
        if self.POSITIONAL is not None:
            parts.append(_format(getattr(self, self.POSITIONAL)))
        for name in self.OPTIONS:
            value = getattr(self, name)
            if value != type(self).model_fields[name].default:
                parts.append(f"{name}={_format(value)}")
        return self.kind + (":" + ",".join(parts) if parts else "")


def parse_stage(value: Any, family: dict[str, type[StageConfig]], what: str, usage: str) -> Any:
    """The typed config of one family (kind -> config class) from a spec string, a mapping with ``kind``, or a
    config already made; ``SpecError`` naming ``what`` for an unknown kind or a bad value."""
    if isinstance(value, StageConfig):
        return value
    if isinstance(value, str):
        kind = value.partition(":")[0].strip()
        cls = family.get(kind)
        if cls is None:
            raise SpecError(f"{what} must be {usage}, got {value!r}")
        return cls.from_spec(value)
    if isinstance(value, dict):
        cls = family.get(value.get("kind"))
        if cls is None:
            raise SpecError(f"{what} must be {usage}, got {value!r}")
        try:
            return cls(**value)
        except ValidationError as exc:
            raise SpecError(f"{what} {value!r}: {_reason(cls, exc)}") from None
    raise SpecError(f"{what} must be {usage}, got {value!r}")


# ----------------------------------------------------------------------------------------------------
# pose sources
# ----------------------------------------------------------------------------------------------------
class _SourceConfig(StageConfig):
    FLAG: ClassVar[str] = "--source"


class PriorSourceConfig(_SourceConfig):
    """The built-in pose prior; ``names``: gestures and/or interactions to draw from (empty: all)."""

    USAGE: ClassVar[str] = "prior[:NAME,NAME...]"

    kind: Literal["prior"] = "prior"
    names: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, spec: str) -> PriorSourceConfig:
        _, _, rest = spec.partition(":")
        names = tuple(n.strip() for n in rest.split(",") if n.strip()) if rest else ()
        try:
            return cls(names=names)
        except ValidationError as exc:
            raise SpecError(f"--source {spec!r}: {(exc.errors()[0].get('ctx') or {}).get('error')}") from None

    @field_validator("names")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from pipeline.sources.prior import check_names

        check_names(v)  # a ValueError naming the unknown ones
        return v

    def spec(self) -> str:
        return "prior" + (":" + ",".join(self.names) if self.names else "")


class InterHandSourceConfig(_SourceConfig):
    """InterHand2.6M annotations under ``root``: ``split``, near-duplicate subsampling ``dedup`` (metres of
    joint motion; 0 keeps all frames) and ``stratify`` (balance hand types)."""

    POSITIONAL: ClassVar[str | None] = "root"
    POSITIONAL_NAME: ClassVar[str] = "dataset root folder"
    OPTIONS: ClassVar[tuple[str, ...]] = ("split", "dedup", "stratify")
    USAGE: ClassVar[str] = "interhand:ROOT[,split=S][,dedup=D][,stratify=1]"

    kind: Literal["interhand"] = "interhand"
    root: str
    split: str = "train"
    dedup: float = Field(0.0, ge=0.0)
    stratify: bool = False


class ReInterHandSourceConfig(_SourceConfig):
    """Re:InterHand captures under ``root``: ``ego`` (also the egocentric fisheye cameras), ``stratify``,
    ``dedup`` (as for InterHand2.6M)."""

    POSITIONAL: ClassVar[str | None] = "root"
    POSITIONAL_NAME: ClassVar[str] = "dataset root folder"
    OPTIONS: ClassVar[tuple[str, ...]] = ("ego", "stratify", "dedup")
    USAGE: ClassVar[str] = "reinterhand:ROOT[,ego=0][,stratify=1][,dedup=D]"

    kind: Literal["reinterhand"] = "reinterhand"
    root: str
    ego: bool = True
    stratify: bool = False
    dedup: float = Field(0.0, ge=0.0)


SOURCE_CONFIGS = {
    c.model_fields["kind"].default: c
    for c in (PriorSourceConfig, InterHandSourceConfig, ReInterHandSourceConfig)
}
SOURCE_USAGE = "prior, interhand:ROOT or reinterhand:ROOT"
SourceConfig = Annotated[
    PriorSourceConfig | InterHandSourceConfig | ReInterHandSourceConfig, Field(discriminator="kind")
]
DATASET_SOURCES = ("interhand", "reinterhand")
"""Sources with real photos (what ``mode: prepare`` needs)."""


# ----------------------------------------------------------------------------------------------------
# captioners
# ----------------------------------------------------------------------------------------------------
class _CaptionerConfig(StageConfig):
    FLAG: ClassVar[str] = "--captioner"


class LabelsCaptionerConfig(_CaptionerConfig):
    """Captions derived from the exact 3D label (no model)."""

    kind: Literal["labels"] = "labels"


class QwenVLCaptionerConfig(_CaptionerConfig):
    """Qwen2-VL / Qwen2.5-VL from the local folder ``path`` (the source photo is captioned; labels
    otherwise)."""

    POSITIONAL: ClassVar[str | None] = "path"
    POSITIONAL_NAME: ClassVar[str] = "model folder"
    USAGE: ClassVar[str] = "qwen-vl:PATH"

    kind: Literal["qwen-vl"] = "qwen-vl"
    path: str


CAPTIONER_CONFIGS = {
    c.model_fields["kind"].default: c for c in (LabelsCaptionerConfig, QwenVLCaptionerConfig)
}
CAPTIONER_USAGE = "labels or qwen-vl:PATH"
CaptionerConfig = Annotated[LabelsCaptionerConfig | QwenVLCaptionerConfig, Field(discriminator="kind")]


# ----------------------------------------------------------------------------------------------------
# generators
# ----------------------------------------------------------------------------------------------------
class _GeneratorConfig(StageConfig):
    FLAG: ClassVar[str] = "--generator"


class CompositeGeneratorConfig(_GeneratorConfig):
    """The weight-free composite (``generators.composite``): ``skin`` v2 | flat, ``light`` presets | single,
    ``background`` blobs | natural, ``blob_colours`` scene | random (the blobs' colours: one desaturated
    palette, or uniform in RGB), ``camera_effects``, ``spectrum_match`` (0: off; else the blend toward a
    1/f amplitude spectrum, at most 1), ``shadows`` (the key light's shadow map; on | off), ``penumbra`` (the
    key light's size from its preset: penumbrae that widen away from the occluder; on | off), ``scatter``
    (how much of the key light skin keeps in shadow, in [0, 1] of ``SKIN_SCATTER``), ``occlusion`` (the
    ambient occlusion's strength in [0, 1]; 0.8 by default, 0: off; the single light ignores it),
    ``palm_lines`` (the palm
    creases' darkening in [0, 1]; 0: none)."""

    OPTIONS: ClassVar[tuple[str, ...]] = (
        "skin",
        "light",
        "background",
        "blob_colours",
        "camera_effects",
        "spectrum_match",
        "shadows",
        "penumbra",
        "scatter",
        "occlusion",
        "palm_lines",
    )
    USAGE: ClassVar[str] = "composite[:NAME=VALUE,...]"

    kind: Literal["composite"] = "composite"
    skin: Literal["v2", "flat"] = "v2"
    light: Literal["presets", "single"] = "presets"
    background: Literal["blobs", "natural"] = "blobs"
    blob_colours: Literal["scene", "random"] = "scene"
    camera_effects: bool = True
    spectrum_match: float = 0.0
    shadows: bool = True
    penumbra: bool = True
    scatter: float = 1.0
    occlusion: float = 0.8
    palm_lines: float = 0.3

    @field_validator("skin", "light", "background", "blob_colours", mode="before")
    @classmethod
    def _choice(cls, v, info):
        allowed = get_args(cls.model_fields[info.field_name].annotation)  # the field's Literal values
        if v not in allowed:
            raise ValueError(f"composite {info.field_name} must be one of {allowed}, got {v!r}")
        return v

    @field_validator("spectrum_match", "occlusion", "palm_lines", "scatter", mode="before")
    @classmethod
    def _unit(cls, v, info):
        try:
            ok = 0.0 <= float(v) <= 1.0
        except (TypeError, ValueError):
            return v  # pydantic reports a value that is not a number
        if not ok:
            raise ValueError(f"composite {info.field_name} must be in [0, 1], got {v!r}")
        return v


class AttentionHandGeneratorConfig(_GeneratorConfig):
    """AttentionHand from the model folder ``path`` (diffusers layout); ``guidance``: a separate guidance
    module folder (None: ``path/guidance``). Both exactly as given."""

    POSITIONAL: ClassVar[str | None] = "path"
    POSITIONAL_NAME: ClassVar[str] = "model folder"
    OPTIONS: ClassVar[tuple[str, ...]] = ("guidance",)
    USAGE: ClassVar[str] = "attentionhand:PATH[,guidance=DIR]"

    kind: Literal["attentionhand"] = "attentionhand"
    path: str
    guidance: str | None = None


class RealImageGeneratorConfig(_GeneratorConfig):
    """Training tuples (``mode: prepare``): the record's image is the dataset's own photo."""

    kind: Literal["real"] = "real"


GENERATOR_CONFIGS = {
    c.model_fields["kind"].default: c
    for c in (CompositeGeneratorConfig, AttentionHandGeneratorConfig, RealImageGeneratorConfig)
}
GENERATOR_USAGE = "composite[:OPTIONS] or attentionhand:PATH"
GeneratorConfig = Annotated[
    CompositeGeneratorConfig | AttentionHandGeneratorConfig | RealImageGeneratorConfig,
    Field(discriminator="kind"),
]


# ----------------------------------------------------------------------------------------------------
# alignment scorers
# ----------------------------------------------------------------------------------------------------
class ScorerConfig(StageConfig):
    """An alignment scorer from the scorer registry (``evaluation.scorers``; plug-ins from the
    ``handgen.scorers`` entry points): ``kind`` its name, ``arg`` the text after the colon (for ``mediapipe``,
    ``NAME=VALUE`` options; checked when the scorer is built)."""

    FLAG: ClassVar[str] = "--scorer"

    kind: str = Field("mediapipe", pattern=r"^[A-Za-z0-9_.-]+$")
    arg: str | None = None

    @classmethod
    def from_spec(cls, spec: str) -> ScorerConfig:
        name, colon, arg = spec.partition(":")
        try:
            return cls(kind=name.strip(), arg=arg if colon else None)
        except ValidationError:
            raise SpecError(f"scorer must be NAME or NAME:OPTIONS (e.g. mediapipe), got {spec!r}") from None

    def spec(self) -> str:
        return self.kind + ("" if self.arg is None else ":" + self.arg)
