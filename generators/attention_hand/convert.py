"""``hands attentionhand convert SRC.ckpt OUT_DIR``: the official AttentionHand checkpoint -> the loadable layout.

The official checkpoint is a ControlNet-style latent-diffusion state dict: ``control_model.*`` (the guidance
module), ``model.diffusion_model.*`` (the UNet), ``first_stage_model.*`` (the VAE) and ``cond_stage_model.*``
(the CLIP text encoder). Each part goes through diffusers' own LDM converters
(``diffusers.loaders.single_file_utils``) with the architecture of ``--config-from DIR`` (a diffusers-layout
model folder, e.g. one written by ``hands attentionhand tiny``) or, by default, Stable Diffusion 1.5's. The
converted models must load strictly (every weight used, none missing).

``to_ldm_state_dict`` is the inverse mapping (diffusers -> LDM key layout); the tests build official-layout
checkpoints with it and check that conversion returns the original weights exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipeline.errors import HandgenError, one_line

logger = logging.getLogger(__name__)

SD15_UNET = dict(sample_size=64, cross_attention_dim=768, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, attention_head_dim=8)  # fmt: skip
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)  # fmt: skip
SD15_CLIP = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
                 bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)  # fmt: skip


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


# -- diffusers -> LDM (the inverse of diffusers' converters), for building official-layout checkpoints --------
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_block_map(cfg: dict, controlnet: bool) -> dict[str, str]:
    """diffusers module prefix -> LDM module prefix for a UNet (or the ControlNet's UNet-like encoder)."""
    m = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2", "conv_in": "input_blocks.0.0",
         "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
         "mid_block.resnets.1": "middle_block.2"}  # fmt: skip
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
                m[f"up_blocks.{lvl}.upsamplers.0.conv"] = f"output_blocks.{ob}.{2 if up_attn[lvl] else 1}.conv"
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


def to_ldm_state_dict(unet, guidance, vae, text_encoder) -> dict:
    """One state dict in the official (ControlNet-style LDM) key layout."""
    sd = {}
    sd.update(_rename(unet.state_dict(), _unet_block_map(dict(unet.config), False), _RESNET, "model.diffusion_model."))
    sd.update(_rename(guidance.state_dict(), _unet_block_map(dict(guidance.config), True), _RESNET, "control_model."))
    vae_map = _vae_block_map(dict(vae.config))
    vae_sd = {}
    for key, value in vae.state_dict().items():
        head = max((b for b in vae_map if key.startswith(b + ".")), key=len, default=None)
        table = _VAE_ATTN if head and "attentions" in head else _VAE_RESNET
        vae_sd.update(_rename({key: value}, vae_map, table, "first_stage_model.", vae=True))
    sd.update(vae_sd)
    sd.update({f"cond_stage_model.transformer.{k}": v for k, v in text_encoder.state_dict().items()})
    return sd


# -- LDM -> diffusers (diffusers' own converters) ----------------------------------------------------------
def _load_strict(model, sd: dict, part: str):
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ConversionError(f"{part}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                              f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")  # fmt: skip
    return model


def convert_checkpoint(src: str | Path, out_dir: str | Path, config_from: str | Path | None = None) -> Path:
    """Convert an official AttentionHand checkpoint into ``out_dir`` (diffusers layout with ``guidance/``)."""
    sd = load_state_dict(src)  # bad inputs fail before diffusers is imported
    for prefix in ("model.diffusion_model.", "control_model.", "first_stage_model.", "cond_stage_model."):
        if not any(k.startswith(prefix) for k in sd):
            raise ConversionError(f"{src}: no '{prefix}*' weights; not an AttentionHand (ControlNet LDM) checkpoint")
    if config_from is not None:
        parts = ("unet", "guidance", "vae", "text_encoder", "tokenizer", "scheduler")
        missing = [f"{p}/" for p in parts if not (Path(config_from) / p).is_dir()]
        if missing:
            raise ConversionError(f"--config-from {config_from} is not a model folder: no {', '.join(missing)}")

    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    from generators.attention_hand.pipeline import AttentionHandPipeline

    if config_from is not None:
        base = Path(config_from)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base / "unet"))
        guidance = ControlNetModel.from_config(ControlNetModel.load_config(base / "guidance"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(base / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(base / "text_encoder"))
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer", model_max_length=77)
        scheduler = DDIMScheduler.from_pretrained(base / "scheduler")
    else:
        from captioning.tagging import clip_tokenizer

        unet = UNet2DConditionModel(**SD15_UNET)
        guidance = ControlNetModel.from_unet(unet)
        vae = AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD15_CLIP))
        tokenizer = clip_tokenizer()
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    _load_strict(unet, sfu.convert_ldm_unet_checkpoint(sd, dict(unet.config)), "unet")
    _load_strict(guidance, sfu.convert_controlnet_checkpoint(sd, dict(guidance.config)), "guidance")
    _load_strict(vae, sfu.convert_ldm_vae_checkpoint(sd, dict(vae.config)), "vae")
    text_sd = {k[len("cond_stage_model.transformer."):]: v for k, v in sd.items()
               if k.startswith("cond_stage_model.transformer.")}  # fmt: skip
    text_sd.pop("text_model.embeddings.position_ids", None)
    _load_strict(text, text_sd, "text_encoder")
    pipe = AttentionHandPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, guidance=guidance,
                                 scheduler=scheduler)  # fmt: skip
    pipe.save_pretrained(str(out_dir))
    logger.info("converted %s into %s", src, out_dir)
    return Path(out_dir)
