"""``hands attentionhand convert SRC.ckpt OUT_DIR``: the official AttentionHand checkpoint -> the loadable
layout.

The official checkpoint (redorangeyellowy/AttentionHand, ``models/attentionhand.yaml``:
``cldm.cldm.ConditioningPhase``) is a latent-diffusion state dict with four models:

* ``VAS.*``: the guidance module, ``VisualAttentionStage`` (``cldm/cldm.py``: ``self.VAS``), a standard
  ControlNet (``input_hint_block``, ``zero_convs``, ``middle_block_out``); ControlNet-style forks store the
  same module as ``control_model.*``. The layout is detected; ``guidance_prefix`` names another one
  explicitly;
* ``model.diffusion_model.*``: the UNet; ``first_stage_model.*``: the VAE;
* ``cond_stage_model.transformer.text_model.*``: the CLIP text encoder (``FrozenCLIPEmbedder``: a transformers
  4 ``CLIPTextModel``, whose weights sit under ``text_model.``; transformers 5 dropped that level, and LDM
  forks saved with it, ``cond_stage_model.transformer.*``, are read too).

Its other entries are not weights of these models: the diffusion schedule buffers, EMA bookkeeping and shadow
copies, and the CLIP position ids. They are ignored by name (``IGNORED_KEYS``, ``EMA_SHADOW_KEY``), and the
log says how many. Everything else must be exactly the weights of the target architecture
(``--config-from DIR``, a diffusers-layout model folder, e.g. one written by ``hands attentionhand tiny``; by
default Stable Diffusion 1.5's): an unknown key, a missing weight or a wrong shape is a one-line
``ConversionError`` that names a few keys. Each part goes through diffusers' own LDM converters
(``diffusers.loaders.single_file_utils``), and the converted models load strictly.

``to_ldm_state_dict`` is the inverse mapping (diffusers -> LDM key layout). The converter uses it for the
exact key set it expects; the tests build official-layout checkpoints with it and check that conversion
returns the original weights exactly.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from pipeline.errors import HandgenError, one_line

logger = logging.getLogger(__name__)

SD15_UNET = dict(
    sample_size=64,
    cross_attention_dim=768,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
)
SD15_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
SD15_CLIP = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

GUIDANCE_PREFIXES = {"VAS.": "AttentionHand (VAS.*)", "control_model.": "ControlNet (control_model.*)"}
"""The guidance module's key prefix in the official checkpoint (``ConditioningPhase.VAS``) and in ControlNet
forks (``ControlLDM.control_model``)."""

UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX = (
    "model.diffusion_model.",
    "first_stage_model.",
    "cond_stage_model.transformer.text_model.",
)
PARTS = {UNET_PREFIX: "UNet", VAE_PREFIX: "VAE", TEXT_PREFIX: "CLIP text encoder"}

# Entries of an LDM checkpoint that are no model's weights, by name. The places are in the official code
# (redorangeyellowy/AttentionHand, commit 13e7b03).
SCHEDULE_BUFFERS = (
    # ldm/models/diffusion/ddpm.py, DDPM.register_schedule, lines 157-177
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    # line 191: registered non-persistent, so absent from the official checkpoint; kept for older LDM forks
    "lvlb_weights",
)
IGNORED_KEYS = {
    **dict.fromkeys(SCHEDULE_BUFFERS, "LDM schedule buffers"),
    # ddpm.py line 132: the per-timestep log-variance buffer (a parameter only with learn_logvar, unused here)
    "logvar": "LDM schedule buffers",
    # ddpm.py lines 567 and 606: the latent scale, a buffer when scale_by_std (the diffusers VAE config holds
    # it)
    "scale_factor": "LDM schedule buffers",
    # ldm/modules/ema.py lines 12-13: LitEma's bookkeeping (DDPM.model_ema, ddpm.py line 96, when use_ema)
    "model_ema.decay": "EMA entries",
    "model_ema.num_updates": "EMA entries",
    # ldm/modules/encoders/modules.py line 100: FrozenCLIPEmbedder.transformer is a transformers
    # CLIPTextModel, whose position-id buffer transformers before 4.31 saved with the weights
    TEXT_PREFIX + "embeddings.position_ids": "CLIP position ids",
}
"""Known non-weight entries: key -> what kind of entry (for the log line)."""

EMA_SHADOW_KEY = re.compile(r"model_ema\.diffusion_model\w+")
"""LitEma's shadow copies of the UNet weights (ema.py lines 16-21: ``model.diffusion_model.X.Y`` is stored as
``model_ema.diffusion_modelXY``, dots removed). The converter takes the non-EMA weights."""


def ignored_kind(key: str) -> str | None:
    """What kind of known non-weight entry ``key`` is (``IGNORED_KEYS``, ``EMA_SHADOW_KEY``), or None."""
    if key in IGNORED_KEYS:
        return IGNORED_KEYS[key]
    return "EMA entries" if EMA_SHADOW_KEY.fullmatch(key) else None


class ConversionError(HandgenError, ValueError):
    """A checkpoint that does not convert; the message says which part and which keys."""


_NOT_A_CHECKPOINT = "is not a PyTorch checkpoint or safetensors file"


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with its JSON header's length (8 bytes, little-endian) and then ``{``."""
    return len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8


def _torch_error(exc: Exception) -> str:
    """The informative line of a ``torch.load`` error (a refused global for weights-only loads)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    refused = next((ln for ln in lines if "Unsupported global" in ln or "WeightsUnpickler error" in ln), None)
    return refused or (lines[0] if lines else type(exc).__name__)


def load_state_dict(path: str | Path) -> dict:
    """Tensors of a ``.ckpt``/``.pt`` (``state_dict`` inside, if any) or ``.safetensors`` file.

    Anything else is a one-line ``ConversionError`` saying what the file is not: missing, a folder, empty, not
    a PyTorch checkpoint or safetensors file, unsafe to unpickle, or holding no state dict.
    """
    path = Path(path)
    if path.is_dir():
        raise ConversionError(f"{path} is a folder, not a checkpoint file (.ckpt, .pt or .safetensors)")
    if not path.is_file():
        raise ConversionError(f"checkpoint not found: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise ConversionError(f"cannot read checkpoint {path}: {exc.strerror or one_line(exc)}") from exc
    if size == 0:
        raise ConversionError(f"{path} is empty: it {_NOT_A_CHECKPOINT}")
    if path.suffix == ".safetensors" or _is_safetensors(head, size):
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 (safetensors raises its own error type for bad headers)
            raise ConversionError(f"{path} is not a valid safetensors file ({one_line(exc)})") from exc
    elif not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: a zip archive, or a legacy pickle
        raise ConversionError(f"{path} {_NOT_A_CHECKPOINT}")
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 (pickle and zip errors come in many types)
            if "Weights only load failed" in str(exc):
                refused = _torch_error(exc)
                raise ConversionError(f"{path} holds objects that a safe load refuses ({refused})") from exc
            raise ConversionError(f"{path} {_NOT_A_CHECKPOINT} ({_torch_error(exc)})") from exc
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or not any(torch.is_tensor(v) for v in sd.values()):
        raise ConversionError(f"{path} holds no state dict (no tensors in it)")
    return sd


# -- diffusers -> LDM (the inverse of diffusers' converters), for building official-layout checkpoints -------
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_block_map(cfg: dict, controlnet: bool) -> dict[str, str]:
    """diffusers module prefix -> LDM module prefix for a UNet (or the ControlNet's UNet-like encoder)."""
    m = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
    }
    levels, n = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    down_attn = ["CrossAttn" in t for t in cfg["down_block_types"]]
    ib = 1
    for lvl in range(levels):
        for j in range(n):
            m[f"down_blocks.{lvl}.resnets.{j}"] = f"input_blocks.{ib}.0"
            if down_attn[lvl]:
                m[f"down_blocks.{lvl}.attentions.{j}"] = f"input_blocks.{ib}.1"
            ib += 1
        if lvl < levels - 1:
            m[f"down_blocks.{lvl}.downsamplers.0.conv"] = f"input_blocks.{ib}.0.op"
            ib += 1
    if controlnet:
        for i in range(ib):
            m[f"controlnet_down_blocks.{i}"] = f"zero_convs.{i}.0"
        m["controlnet_mid_block"] = "middle_block_out.0"
        m["controlnet_cond_embedding.conv_in"] = "input_hint_block.0"
        nb = len(cfg["conditioning_embedding_out_channels"]) - 1
        for i in range(2 * nb):
            m[f"controlnet_cond_embedding.blocks.{i}"] = f"input_hint_block.{2 * (i + 1)}"
        m["controlnet_cond_embedding.conv_out"] = f"input_hint_block.{2 * (2 * nb + 1)}"
        return m
    up_attn = ["CrossAttn" in t for t in cfg["up_block_types"]]
    ob = 0
    for lvl in range(levels):
        for j in range(n + 1):
            m[f"up_blocks.{lvl}.resnets.{j}"] = f"output_blocks.{ob}.0"
            if up_attn[lvl]:
                m[f"up_blocks.{lvl}.attentions.{j}"] = f"output_blocks.{ob}.1"
            if j == n and lvl < levels - 1:
                m[f"up_blocks.{lvl}.upsamplers.0.conv"] = (
                    f"output_blocks.{ob}.{2 if up_attn[lvl] else 1}.conv"
                )
            ob += 1
    m["conv_norm_out"], m["conv_out"] = "out.0", "out.2"
    return m


def _vae_block_map(cfg: dict) -> dict[str, str]:
    m = {}
    levels, n = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    for lvl in range(levels):
        for j in range(n):
            m[f"encoder.down_blocks.{lvl}.resnets.{j}"] = f"encoder.down.{lvl}.block.{j}"
        if lvl < levels - 1:
            m[f"encoder.down_blocks.{lvl}.downsamplers.0.conv"] = f"encoder.down.{lvl}.downsample.conv"
        for j in range(n + 1):
            m[f"decoder.up_blocks.{lvl}.resnets.{j}"] = f"decoder.up.{levels - 1 - lvl}.block.{j}"
        if lvl < levels - 1:
            m[f"decoder.up_blocks.{lvl}.upsamplers.0.conv"] = f"decoder.up.{levels - 1 - lvl}.upsample.conv"
    for part in ("encoder", "decoder"):
        m[f"{part}.mid_block.resnets.0"] = f"{part}.mid.block_1"
        m[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
        m[f"{part}.mid_block.resnets.1"] = f"{part}.mid.block_2"
        m[f"{part}.conv_norm_out"] = f"{part}.norm_out"
    return m


def _rename(sd: dict, blocks: dict[str, str], leaf: dict[str, str], prefix: str, vae: bool = False) -> dict:
    out = {}
    for key, value in sd.items():
        head = max((b for b in blocks if key.startswith(b + ".")), key=len, default=None)
        if head is None:
            new = key
        else:
            rest = key[len(head) + 1 :]
            sub = max((k for k in leaf if rest.startswith(k + ".")), key=len, default=None)
            if sub is not None and ("resnets" in head or "attentions" in head or "mid.attn" in blocks[head]):
                rest = leaf[sub] + rest[len(sub) :]
            new = f"{blocks[head]}.{rest}"
            if vae and "attentions" in head and value.ndim == 2:
                value = value[:, :, None, None]  # the LDM VAE's attention uses 1x1 convolutions
        out[prefix + new] = value
    return out


def to_ldm_state_dict(unet, guidance, vae, text_encoder, guidance_prefix: str = "control_model.") -> dict:
    """One state dict in the LDM key layout: the official one with ``guidance_prefix="VAS."``, a ControlNet
    fork's with the default. Only model weights: no schedule buffers, EMA entries or position ids."""
    sd = {}
    sd.update(
        _rename(
            unet.state_dict(), _unet_block_map(dict(unet.config), False), _RESNET, "model.diffusion_model."
        )
    )
    sd.update(
        _rename(guidance.state_dict(), _unet_block_map(dict(guidance.config), True), _RESNET, guidance_prefix)
    )
    vae_map = _vae_block_map(dict(vae.config))
    vae_sd = {}
    for key, value in vae.state_dict().items():
        head = max((b for b in vae_map if key.startswith(b + ".")), key=len, default=None)
        table = _VAE_ATTN if head and "attentions" in head else _VAE_RESNET
        vae_sd.update(_rename({key: value}, vae_map, table, "first_stage_model.", vae=True))
    sd.update(vae_sd)
    sd.update({TEXT_PREFIX + k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()})
    return sd


# -- LDM -> diffusers (diffusers' own converters) ----------------------------------------------------------
def _few(keys, n: int = 3) -> str:
    """Up to ``n`` keys, quoted, and how many more."""
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _normalize_prefix(prefix: str) -> str:
    prefix = prefix.strip()
    if not prefix.strip("."):
        raise ConversionError(f"guidance prefix {prefix!r} is empty")
    return prefix if prefix.endswith(".") else prefix + "."


def guidance_prefix_of(sd: dict, src, guidance_prefix: str | None = None) -> str:
    """The guidance module's key prefix: ``guidance_prefix`` if given (it must have keys), else whichever of
    ``GUIDANCE_PREFIXES`` the checkpoint holds; neither or both is a one-line ``ConversionError``."""
    if guidance_prefix is not None:
        prefix = _normalize_prefix(guidance_prefix)
        if not any(k.startswith(prefix) for k in sd):
            raise ConversionError(f"{src} holds no '{prefix}*' weights (the guidance prefix given)")
        return prefix
    found = [p for p in GUIDANCE_PREFIXES if any(k.startswith(p) for k in sd)]
    if not found:
        neither = " nor ".join(GUIDANCE_PREFIXES.values())
        raise ConversionError(
            f"{src} is not an AttentionHand checkpoint: it holds neither {neither} guidance weights"
        )
    if len(found) > 1:
        both = " and ".join(GUIDANCE_PREFIXES.values())
        raise ConversionError(
            f"{src} holds both {both} guidance weights; a checkpoint has one guidance module, so which one "
            "to convert is ambiguous"
        )
    return found[0]


def _with_text_level(sd: dict, src) -> dict:
    """``sd`` with its text-encoder keys in the official form, ``cond_stage_model.transformer.text_model.*``
    (an LDM fork saved with transformers 5 has no ``text_model.`` level); a weight in both forms is an
    error."""
    outer = TEXT_PREFIX[: -len("text_model.")]
    out = {}
    for key, value in sd.items():
        if key.startswith(outer) and not key.startswith(TEXT_PREFIX):
            key = TEXT_PREFIX + key[len(outer) :]
            if key in sd:
                raise ConversionError(
                    f"{src} holds the text-encoder weight {key!r} twice, with and without 'text_model.'"
                )
        out[key] = value
    return out


def split_checkpoint(sd: dict, src, guidance_prefix: str | None = None) -> tuple[dict, str, dict[str, int]]:
    """``(weights, guidance prefix, ignored)``: the checkpoint without its known non-weight entries, the
    guidance module's prefix, and how many entries of each kind were ignored. A part with no weights is an
    error."""
    prefix = guidance_prefix_of(sd, src, guidance_prefix)
    weights, ignored = {}, {}
    for key, value in _with_text_level(sd, src).items():
        kind = ignored_kind(key)
        if kind is None:
            weights[key] = value
        else:
            ignored[kind] = ignored.get(kind, 0) + 1
    for part, name in PARTS.items():
        if not any(k.startswith(part) for k in weights):
            raise ConversionError(
                f"{src} is not a full AttentionHand checkpoint: no '{part}*' ({name}) weights"
            )
    return weights, prefix, ignored


def _check_keys(weights: dict, expected: set[str], src, arch: str) -> None:
    """The checkpoint's weights are exactly the ``expected`` LDM keys of the target architecture."""
    unknown, missing = set(weights) - expected, expected - set(weights)
    not_tensors = [k for k, v in weights.items() if k in expected and not torch.is_tensor(v)]
    if not_tensors:
        raise ConversionError(f"{src}: {len(not_tensors)} weights are not tensors ({_few(not_tensors)})")
    if not unknown and not missing:
        return
    what = []
    if unknown:
        what.append(f"{len(unknown)} unknown keys ({_few(unknown)})")
    if missing:
        what.append(f"{len(missing)} missing weights ({_few(missing)})")
    why = "; unknown keys are neither its weights nor known non-weight LDM entries" if unknown else ""
    raise ConversionError(f"{src} does not match the {arch}: {' and '.join(what)}{why}")


def _load_strict(model, sd: dict, part: str):
    """Load ``sd`` into ``model``: every weight present with its shape, and nothing else."""
    own = model.state_dict()
    missing = [k for k in own if sd.get(k) is None]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise ConversionError(
            f"{part}: the converted weights do not fit: {len(missing)} missing ({_few(missing)}), "
            f"{len(unexpected)} unexpected ({_few(unexpected)})"
        )
    wrong = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise ConversionError(
            f"{part}: {len(wrong)} weights of the wrong shape, e.g. {k!r}: "
            f"{tuple(sd[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
        )
    model.load_state_dict(sd, strict=True)
    return model


def _convert(fn, sd: dict, config: dict, part: str) -> dict:
    """One diffusers converter call; its own failures (on keys that passed the key check) become one line."""
    try:
        return fn(sd, config)
    except Exception as exc:  # noqa: BLE001 (the converters raise KeyError, IndexError, AttributeError, ...)
        raise ConversionError(
            f"{part}: the diffusers converter failed ({type(exc).__name__}: {one_line(exc)})"
        ) from exc


def _models(config_from: str | Path | None) -> dict:
    """Fresh ``unet``, ``guidance``, ``vae`` and ``text_encoder`` of the target architecture
    (``config_from``'s or Stable Diffusion 1.5's), on the current default device (``torch.device("meta")`` for
    their keys alone)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if config_from is not None:
        base = Path(config_from)
        return {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base / "unet")),
            "guidance": ControlNetModel.from_config(ControlNetModel.load_config(base / "guidance")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(base / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(base / "text_encoder")),
        }
    unet = UNet2DConditionModel(**SD15_UNET)
    return {
        "unet": unet,
        "guidance": ControlNetModel.from_unet(unet),
        "vae": AutoencoderKL(**SD15_VAE),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_CLIP)),
    }


def _tokenizer_and_scheduler(config_from: str | Path | None) -> dict:
    from diffusers import DDIMScheduler

    if config_from is not None:
        from transformers import CLIPTokenizer

        base = Path(config_from)
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(base / "tokenizer", model_max_length=77),
            "scheduler": DDIMScheduler.from_pretrained(base / "scheduler"),
        }
    from generators.attention_hand.models import sd15_ddim_scheduler
    from pipeline.tagging import clip_tokenizer

    return {"tokenizer": clip_tokenizer(), "scheduler": sd15_ddim_scheduler()}


def convert_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    config_from: str | Path | None = None,
    guidance_prefix: str | None = None,
) -> Path:
    """Convert an official AttentionHand checkpoint (or a ControlNet-style fork's) into ``out_dir``: the
    diffusers layout with ``guidance/``. ``guidance_prefix``: the guidance module's key prefix, when it is
    neither ``VAS.`` nor ``control_model.`` (by default the one present is used)."""
    sd = load_state_dict(src)  # bad inputs fail before diffusers is imported
    weights, prefix, ignored = split_checkpoint(sd, src, guidance_prefix)
    if config_from is not None:
        parts = ("unet", "guidance", "vae", "text_encoder", "tokenizer", "scheduler")
        missing = [f"{p}/" for p in parts if not (Path(config_from) / p).is_dir()]
        if missing:
            raise ConversionError(
                f"--config-from {config_from} is not a model folder: no {', '.join(missing)}"
            )

    from diffusers.loaders import single_file_utils as sfu

    from generators.attention_hand.pipeline import AttentionHandPipeline

    with torch.device("meta"):  # the key check first, without memory or random initialisation
        layout = to_ldm_state_dict(**_models(config_from), guidance_prefix=prefix)
    if config_from is not None:
        arch = f"architecture in --config-from {config_from}"
    else:
        arch = "Stable Diffusion 1.5 architecture (the default; --config-from DIR gives another)"
    _check_keys(weights, {k for k in layout if ignored_kind(k) is None}, src, arch)
    n_ignored = sum(ignored.values())
    kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(ignored.items()))
    detail = f" ({kinds})" if kinds else ""
    logger.info(
        "%s: guidance module '%s*'; ignored %d non-weight entries by name%s", src, prefix, n_ignored, detail
    )
    m = _models(config_from)
    unet, guidance, vae, text = m["unet"], m["guidance"], m["vae"], m["text_encoder"]

    def part(p: str) -> dict:
        return {k[len(p) :]: v for k, v in weights.items() if k.startswith(p)}

    unet_sd = {UNET_PREFIX + k: v for k, v in part(UNET_PREFIX).items()}
    vae_sd = {VAE_PREFIX + k: v for k, v in part(VAE_PREFIX).items()}
    _load_strict(unet, _convert(sfu.convert_ldm_unet_checkpoint, unet_sd, dict(unet.config), "unet"), "unet")
    guidance_sd = _convert(sfu.convert_controlnet_checkpoint, part(prefix), dict(guidance.config), "guidance")
    _load_strict(guidance, guidance_sd, "guidance")
    _load_strict(vae, _convert(sfu.convert_ldm_vae_checkpoint, vae_sd, dict(vae.config), "vae"), "vae")
    text_level = "text_model." if any(k.startswith("text_model.") for k in text.state_dict()) else ""
    _load_strict(text, {text_level + k: v for k, v in part(TEXT_PREFIX).items()}, "text_encoder")
    pipe = AttentionHandPipeline(**m, **_tokenizer_and_scheduler(config_from))
    pipe.save_pretrained(str(out_dir))
    logger.info("converted %s into %s", src, out_dir)
    return Path(out_dir)
