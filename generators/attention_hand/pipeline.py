"""AttentionHand: Stable Diffusion + a ControlNet-style guidance module (VAS) + the Text Attention Stage (TAS).

VAS: each step denoises the global and the local latent together (one batch), each conditioned on its own mesh
image through one shared guidance module (a ``ControlNetModel``); its residuals are added to the frozen UNet's.

TAS (AttentionHand 3.3.1, 4.4.1): while sampling (by default the first half of the steps), cross-attention
maps of the UNet are captured by an attention processor, averaged over heads and layers at the resolution
closest to ``latent / 4`` (16x16 for SD 1.5 at 512x512), soft-maxed over the text tokens (``<sot>`` and the
padding after ``<eot>`` excluded), and the hand-token maps are smoothed with a fixed Gaussian (kernel 3,
sigma 0.5). The loss ``L = max_n (1 - max A_n)`` over hand tokens drives a gradient step on the latents,
``X_t <- X_t - alpha_t * grad L``, with ``alpha_t`` falling linearly from 20 to 10 over the TAS steps.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.utils import BaseOutput

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TASConfig:
    """Text Attention Stage settings: on/off, the fraction of steps it runs for (from the start), the step size
    schedule (alpha from ``alpha_start`` to ``alpha_end``), updates per step, the softmax temperature over
    text tokens, and the Gaussian smoothing (kernel, sigma)."""

    enabled: bool = True
    steps_fraction: float = 0.5
    alpha_start: float = 20.0
    alpha_end: float = 10.0
    iterations: int = 1
    softmax_scale: float = 100.0
    kernel: int = 3
    sigma: float = 0.5

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class AttentionHandOutput(BaseOutput):
    """images / local_images: (B, H, W, 3) uint8. attention_maps: per TAS pass, (2B, r, r, N) cross-attention
    averaged over heads and layers (global then local), when asked for. tas_losses: L per TAS update, (2B,)."""

    images: np.ndarray
    local_images: np.ndarray
    attention_maps: list | None = None
    tas_losses: list | None = None


class AttentionStore:
    """Collects cross-attention probabilities of the UNet during TAS passes."""

    def __init__(self) -> None:
        self.active = False
        self.maps: dict[int, list[torch.Tensor]] = {}

    def reset(self, active: bool) -> None:
        self.active = active
        self.maps = {}

    def add(self, probs: torch.Tensor, batch: int) -> None:
        """probs: (batch * heads, HW, N) attention probabilities of one layer."""
        hw = probs.shape[1]
        res = int(math.isqrt(hw))
        if res * res != hw:
            return
        self.maps.setdefault(res, []).append(probs.reshape(batch, -1, hw, probs.shape[-1]).mean(1))

    def average(self, target: int) -> torch.Tensor:
        """(B, r, r, N) mean over layers at the captured resolution closest to ``target``."""
        if not self.maps:
            raise RuntimeError("no cross-attention maps were captured")
        res = min(self.maps, key=lambda r: (abs(r - target), -r))
        m = torch.stack(self.maps[res]).mean(0)
        return m.reshape(m.shape[0], res, res, m.shape[-1])


class TASAttnProcessor:
    """Cross-attention with explicit probabilities, stored while the ``AttentionStore`` is active; otherwise
    (and for self-attention) the SDPA processor does the work."""

    def __init__(self, store: AttentionStore) -> None:
        self.store = store
        self._sdpa = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is None or not self.store.active:
            return self._sdpa(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.store.add(probs, batch)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def gaussian_kernel(size: int, sigma: float, device=None, dtype=None) -> torch.Tensor:
    """(1, 1, size, size) normalised Gaussian."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return (k / k.sum()).to(device=device, dtype=dtype)[None, None]


def tas_loss(maps: torch.Tensor, token_indices: Sequence[Sequence[int]], eot: Sequence[int], cfg: TASConfig) -> torch.Tensor:
    """L = max_n (1 - max A_n) per sample (zero for a sample with no hand token).

    maps: (B, r, r, N) cross-attention over all N text positions. token_indices: CLIP positions of the hand
    tokens per sample (``<sot>`` = 0). eot: position of ``<eot>`` per sample (text tokens are 1 .. eot - 1).
    """
    kernel = gaussian_kernel(cfg.kernel, cfg.sigma, maps.device, maps.dtype)
    losses = []
    for b in range(maps.shape[0]):
        idx = [i for i in token_indices[b] if 0 < i < eot[b]]
        if not idx:
            losses.append(maps.new_zeros(()))
            continue
        text = torch.softmax(maps[b, :, :, 1 : eot[b]] * cfg.softmax_scale, dim=-1)  # (r, r, T)
        sel = text[:, :, [i - 1 for i in idx]].permute(2, 0, 1)[:, None]  # (n, 1, r, r)
        smooth = F.conv2d(F.pad(sel, [cfg.kernel // 2] * 4, mode="reflect"), kernel)
        peak = smooth.flatten(1).max(dim=1).values
        losses.append((1.0 - peak).max())
    return torch.stack(losses)


class AttentionHandPipeline(DiffusionPipeline):
    """Text- and mesh-conditioned hand image generation (module doc). Components: ``vae``, ``text_encoder``,
    ``tokenizer``, ``unet`` (frozen SD 1.5), ``guidance`` (ControlNetModel shared by both branches),
    ``scheduler`` (DDIM by default)."""

    model_cpu_offload_seq = "text_encoder->guidance->unet->vae"

    def __init__(self, vae: AutoencoderKL, text_encoder, tokenizer, unet: UNet2DConditionModel,
                 guidance: ControlNetModel, scheduler) -> None:  # fmt: skip
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, guidance=guidance,
                              scheduler=scheduler)  # fmt: skip
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.store = AttentionStore()
        procs = {}
        for name in self.unet.attn_processors:
            procs[name] = TASAttnProcessor(self.store) if name.endswith("attn2.processor") else AttnProcessor2_0()
        self.unet.set_attn_processor(procs)

    # -- steps ---------------------------------------------------------------------------------------
    def _check_inputs(self, prompt, mesh, mesh_local, token_indices, seeds, height, width):
        if isinstance(prompt, str):
            prompt = [prompt]
        B = len(prompt)
        for nm, x in (("mesh", mesh), ("mesh_local", mesh_local)):
            if x.ndim != 4 or x.shape[0] != B or x.shape[-1] != 3:
                raise ValueError(f"{nm} must be (B, H, W, 3) uint8 with B = {B} prompts, got {tuple(x.shape)}")
        if len(token_indices) != B or len(seeds) != B:
            raise ValueError(f"need one hand-token list and one seed per prompt ({B}), got {len(token_indices)}, {len(seeds)}")
        m = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if height % m or width % m:
            raise ValueError(f"height and width must be multiples of {m}, got {height}x{width}")
        return list(prompt)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
        """CLIP input ids (B, 77) int64 on CPU, padded and truncated, and the position of ``<eot>`` per prompt."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids  # fmt: skip
        eos = self.tokenizer.eos_token_id
        return ids, [int((row == eos).nonzero()[0]) if (row == eos).any() else len(row) - 1 for row in ids]

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        ids, eot = self.tokenize(prompts)
        cond = self.text_encoder(ids.to(self.device))[0]
        empty = self.tokenizer([""] * len(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                               return_tensors="pt").input_ids.to(self.device)  # fmt: skip
        uncond = self.text_encoder(empty)[0]
        return cond, uncond, eot

    def _condition(self, images: np.ndarray, height: int, width: int, dtype) -> torch.Tensor:
        x = torch.as_tensor(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-2:] != (height, width):
            if abs(x.shape[-1] / x.shape[-2] - width / height) > 1e-3:
                raise ValueError(f"mesh image aspect {x.shape[-1]}x{x.shape[-2]} differs from {width}x{height}")
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        return x.to(dtype)

    def _latents(self, seeds: Sequence[int], height: int, width: int, dtype) -> torch.Tensor:
        shape = (self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        g_lat, l_lat = [], []
        for s in seeds:
            gen = torch.Generator(device="cpu").manual_seed(int(s) % (2**63))
            g_lat.append(torch.randn(shape, generator=gen))
            l_lat.append(torch.randn(shape, generator=gen))
        lat = torch.stack(g_lat + l_lat).to(self.device, dtype)
        return lat * self.scheduler.init_noise_sigma

    def _guided_noise(self, latents, t, emb, cond_images, scale):
        down, mid = self.guidance(latents, t, encoder_hidden_states=emb, controlnet_cond=cond_images,
                                  conditioning_scale=scale, return_dict=False)  # fmt: skip
        return self.unet(latents, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample  # fmt: skip

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        mesh: np.ndarray,
        mesh_local: np.ndarray,
        hand_token_indices: Sequence[Sequence[int]],
        seeds: Sequence[int],
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        conditioning_scale: float = 1.0,
        tas: TASConfig | None = None,
        latents: torch.Tensor | None = None,
        return_attention: bool = False,
        progress: bool = True,
    ) -> AttentionHandOutput:
        """Generate B global and B local images.

        mesh / mesh_local: (B, H, W, 3) uint8 global and local mesh images. hand_token_indices: CLIP positions
        per prompt. seeds: one per prompt (global then local latent drawn from it). latents: optional
        (2B, C, h, w) starting latents (global rows first).
        """
        tas = tas or TASConfig()
        # 1. check inputs
        prompts = self._check_inputs(prompt, mesh, mesh_local, hand_token_indices, seeds, height, width)
        B = len(prompts)
        dtype = self.unet.dtype
        # 2. encode the prompt (both branches share it) and the empty prompt for classifier-free guidance
        cond, uncond, eot = self._encode(prompts)
        cond2, uncond2 = torch.cat([cond, cond]), torch.cat([uncond, uncond])
        # 3. the global and local mesh conditions, one batch: [global; local]
        cond_images = torch.cat([self._condition(mesh, height, width, dtype), self._condition(mesh_local, height, width, dtype)])
        # 4. timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        n_tas = int(round(num_inference_steps * tas.steps_fraction)) if tas.enabled else 0
        # 5. latents
        latents = self._latents(seeds, height, width, dtype) if latents is None else latents.to(self.device, dtype)
        target_res = latents.shape[-1] // 4
        indices2 = [list(ix) for ix in hand_token_indices] * 2
        eot2 = eot * 2
        maps_out, losses_out = ([] if return_attention else None), []
        # 6. denoising loop
        for i, t in enumerate(self.progress_bar(timesteps) if progress else timesteps):
            if i < n_tas:
                alpha = tas.alpha_start + (tas.alpha_end - tas.alpha_start) * (i / max(n_tas - 1, 1))
                for _ in range(tas.iterations):
                    latents, loss, maps = self.tas_step(latents, t, cond2, cond_images, conditioning_scale,
                                                        indices2, eot2, tas, alpha, target_res)  # fmt: skip
                    losses_out.append(loss.detach().cpu().numpy())
                    if maps_out is not None:
                        maps_out.append(maps.detach().cpu().numpy())
            model_in = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
            noise = self._guided_noise(model_in, t, torch.cat([uncond2, cond2]), torch.cat([cond_images, cond_images]),
                                       conditioning_scale)  # fmt: skip
            n_uncond, n_cond = noise.chunk(2)
            noise = n_uncond + guidance_scale * (n_cond - n_uncond)
            latents = self.scheduler.step(noise, t, latents).prev_sample
        # 7. decode
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return AttentionHandOutput(images=images[:B], local_images=images[B:], attention_maps=maps_out,
                                   tas_losses=losses_out)  # fmt: skip

    def tas_step(self, latents, t, cond2, cond_images, scale, indices2, eot2, tas: TASConfig, alpha: float,
                 target_res: int):  # fmt: skip
        """One TAS update: (new latents, L per latent (2B,), attention maps (2B, r, r, N))."""
        with torch.enable_grad():
            lat = latents.detach().requires_grad_(True)
            self.store.reset(active=True)
            try:
                self._guided_noise(self.scheduler.scale_model_input(lat, t), t, cond2, cond_images, scale)
                maps = self.store.average(target_res)
            finally:
                self.store.reset(active=False)
            loss = tas_loss(maps.float(), indices2, eot2, tas)
            if loss.requires_grad and float(loss.detach().sum()) > 0:
                grad = torch.autograd.grad(loss.sum(), lat)[0]
                lat = lat - alpha * grad
        return lat.detach(), loss.detach(), maps.detach()
