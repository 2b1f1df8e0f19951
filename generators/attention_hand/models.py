"""Loading AttentionHand models, and a tiny random-weight model for smoke tests and CI.

``attentionhand:PATH`` accepts:

* a diffusers-layout folder with ``model_index.json`` and ``unet/ vae/ text_encoder/ tokenizer/ scheduler/
  guidance/`` (what ``hands attentionhand tiny`` and ``hands attentionhand convert`` write);
* a base Stable Diffusion 1.5 folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``) plus a guidance
  module given separately (a ``ControlNetModel`` folder), or found in ``PATH/guidance``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from generators.attention_hand.pipeline import AttentionHandPipeline
from pipeline.errors import HandgenError

logger = logging.getLogger(__name__)


class AttentionHandLoadError(HandgenError, RuntimeError):
    """A model folder that cannot be loaded; the message names the folder and what is missing."""


BASE_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
"""The frozen Stable Diffusion component folders that ``load_base`` reads from a model folder."""


def weight_folders(path: str | Path, guidance: str | Path | None = None) -> dict[str, Path]:
    """The folders ``load_pipeline(path, guidance)`` loads, by component name: ``PATH/<name>`` for each of
    ``BASE_COMPONENTS``, and ``guidance`` (the separate guidance folder when given, else
    ``PATH/guidance``)."""
    path = Path(path)
    folders = {name: path / name for name in BASE_COMPONENTS}
    folders["guidance"] = Path(guidance) if guidance else path / "guidance"
    return folders


def model_weights_id(path: str | Path, guidance: str | Path | None = None) -> str:
    """The ``weights_id`` (``pipeline.weights``: a 16-hex content hash, cached per folder) of exactly the
    files ``load_pipeline(path, guidance)`` loads: every base component plus the guidance module in use."""
    from pipeline.weights import weights_id

    return weights_id(weight_folders(path, guidance))


def tiny_components(seed: int = 0) -> dict:
    """Tiny random SD-style components (64x64 images, 32x32 latents) with the real CLIP tokenizer.

    The guidance module is ``ControlNetModel.from_unet`` (zero convolutions), so it starts as a no-op.
    """
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipeline.tagging import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    guidance = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=16,
        sample_size=64,
    )
    tokenizer = clip_tokenizer()
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = sd15_ddim_scheduler()
    return {
        "vae": vae.eval(),
        "text_encoder": text.eval(),
        "tokenizer": tokenizer,
        "unet": unet.eval(),
        "guidance": guidance.eval(),
        "scheduler": scheduler,
    }


def save_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight model in the loadable layout."""
    pipe = AttentionHandPipeline(**tiny_components(seed))
    pipe.save_pretrained(str(out_dir))
    return Path(out_dir)


def _resolve(device: str, dtype: torch.dtype | None) -> tuple[str, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = (
            (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
            if device.startswith("cuda")
            else torch.float32
        )
    return device, dtype


def load_base(path: str | Path, dtype: torch.dtype = torch.float32) -> dict:
    """The frozen Stable Diffusion components of a model folder: ``vae``, ``text_encoder``, ``tokenizer``,
    ``unet`` (``dtype``) and ``scheduler`` (DDIM, from the folder's scheduler config)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    if not path.is_dir():
        raise AttentionHandLoadError(f"AttentionHand model folder not found: {path}")
    missing = [n for n in BASE_COMPONENTS if not (path / n).is_dir()]
    if missing:
        raise AttentionHandLoadError(
            f"{path} is not a Stable Diffusion / AttentionHand folder: missing {missing}"
        )
    try:
        return {
            "vae": AutoencoderKL.from_pretrained(path / "vae", torch_dtype=dtype),
            "text_encoder": CLIPTextModel.from_pretrained(path / "text_encoder", torch_dtype=dtype),
            "tokenizer": CLIPTokenizer.from_pretrained(path / "tokenizer", model_max_length=77),
            "unet": UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=dtype),
            "scheduler": DDIMScheduler.from_pretrained(path / "scheduler"),
        }
    except (OSError, ValueError) as exc:
        raise AttentionHandLoadError(f"cannot load the model in {path}: {str(exc).splitlines()[0]}") from exc


def load_guidance(path: str | Path, dtype: torch.dtype = torch.float32):
    """A guidance module (``ControlNetModel`` folder)."""
    from diffusers import ControlNetModel

    g = Path(path)
    if not g.is_dir():
        raise AttentionHandLoadError(
            f"no guidance module: {g} missing (give one with attentionhand:PATH,guidance=DIR)"
        )
    try:
        return ControlNetModel.from_pretrained(g, torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        raise AttentionHandLoadError(
            f"cannot load the guidance module in {g}: {str(exc).splitlines()[0]}"
        ) from exc


def load_pipeline(
    path: str | Path,
    guidance: str | Path | None = None,
    device: str = "auto",
    dtype: torch.dtype | None = None,
) -> AttentionHandPipeline:
    """Load an AttentionHand pipeline (module doc). fp16 (bf16 where supported) on CUDA, float32 on CPU."""
    device, dtype = _resolve(device, dtype)
    base = load_base(path, dtype)
    pipe = AttentionHandPipeline(
        **base, guidance=load_guidance(weight_folders(path, guidance)["guidance"], dtype)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def sd15_ddim_scheduler():
    """DDIM with Stable Diffusion 1.5's noise schedule (scaled-linear betas 0.00085 to 0.012, 1000 steps)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
