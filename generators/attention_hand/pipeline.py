"""AttentionHand: Stable Diffusion + a ControlNet-style guidance module (VAS) + the Text Attention Stage
(TAS).

Views: the global branch denoises a latent conditioned on the global mesh image, the local branch one
conditioned on the local mesh image (the bbox crop), through one shared guidance module (a
``ControlNetModel``) whose residuals are added to the frozen UNet's. Inference needs the global branch only
(the official AttentionHand ``inference.py`` conditions on the global mesh image alone), so
``views=("global",)`` is the default; ``views=("global", "local")`` denoises both latents together as one
batch (global rows first) and decodes both.

TAS (AttentionHand 3.3.1, 4.4.1): while sampling (by default the first half of the steps), cross-attention
maps of the UNet are captured by an attention processor, averaged over heads and layers at the resolution
closest to ``latent / 4`` (16x16 for SD 1.5 at 512x512), soft-maxed over the text tokens (``<sot>`` and the
padding after ``<eot>`` excluded), and the hand-token maps are smoothed with a fixed Gaussian (kernel 3,
sigma 0.5). The loss ``L = max_n (1 - max A_n)`` over hand tokens drives a gradient step on the latents,
``X_t <- X_t - alpha_t * grad L``, with ``alpha_t`` falling linearly from 20 to 10 over the TAS steps. It runs
on every requested view (each latent has its own loss). The maps go into an ``AttentionStore`` made for that
one TAS pass; the pipeline keeps no attention state between passes or calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.utils import BaseOutput

from pipeline import schema
from pipeline.errors import HandgenError
from pipeline.schema import VIEWS

logger = logging.getLogger(__name__)


OUTPUT_TYPES = ("np", "pil", "latent")


class AttentionHandError(HandgenError, ValueError):
    """Bad arguments to the AttentionHand pipeline or generator; the one-line message names the bad value."""


def normalize_views(views: str | Sequence[str]) -> tuple[str, ...]:
    """``pipeline.schema.normalize_views`` (the views AttentionHand samples, in output order; ``global`` is
    always one of them), raising ``AttentionHandError``."""
    try:
        return schema.normalize_views(views)
    except schema.SchemaError as exc:
        raise AttentionHandError(str(exc)) from None


@dataclasses.dataclass(frozen=True)
class TASConfig:
    """Text Attention Stage settings: on/off, the fraction of steps it runs for (from the start), the step
    size schedule (alpha from ``alpha_start`` to ``alpha_end``), updates per step, the softmax temperature
    over text tokens, and the Gaussian smoothing (kernel, sigma)."""

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
    """What ``AttentionHandPipeline.__call__`` returns (``return_dict=False``: the tuple of these four fields,
    in this order).

    images: the global view. ``output_type="np"``: (B, H, W, 3) uint8 RGB numpy array; ``"pil"``: a list of B
    RGB ``PIL.Image``; ``"latent"``: the final latents, (B, C, H / f, W / f) torch tensor in the UNet's dtype,
    on the pipeline's device, not divided by the VAE scaling factor (f: the VAE's downsampling, 8 for SD 1.5).
    local_images: the local view, in the same form; ``None`` unless ``"local"`` is one of the views.
    attention_maps: only with ``return_attention=True`` (else ``None``): per TAS update, a (V*B, r, r, N)
    float32 array of cross-attention probabilities averaged over heads and layers at resolution r (latent / 4)
    over all N = 77 text positions; rows view by view (global rows first), V = number of views.
    tas_losses: per TAS update, the loss L of every latent, (V*B,) float32 in [0, 1]; an empty list without
    TAS.
    """

    images: np.ndarray | list | torch.Tensor
    local_images: np.ndarray | list | torch.Tensor | None = None
    attention_maps: list | None = None
    tas_losses: list | None = None


class AttentionStore:
    """Collects the cross-attention probabilities of the UNet during one TAS pass (made per pass)."""

    def __init__(self) -> None:
        self.maps: dict[int, list[torch.Tensor]] = {}

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
            raise RuntimeError(
                "no cross-attention maps were captured (TAS needs TASAttnProcessor on the UNet's attn2 "
                "layers)"
            )
        res = min(self.maps, key=lambda r: (abs(r - target), -r))
        m = torch.stack(self.maps[res]).mean(0)
        return m.reshape(m.shape[0], res, res, m.shape[-1])


class TASAttnProcessor:
    """Cross-attention with explicit probabilities, stored into ``store`` while one is set (during a TAS
    pass, ``AttentionHandPipeline.capture_attention``); otherwise (and for self-attention) the SDPA processor
    does the work."""

    def __init__(self, store: AttentionStore | None = None) -> None:
        self.store = store
        self._sdpa = AttnProcessor2_0()

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        store = self.store
        if encoder_hidden_states is None or store is None:
            return self._sdpa(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
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
        store.add(probs, batch)
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


def tas_loss(
    maps: torch.Tensor, token_indices: Sequence[Sequence[int]], eot: Sequence[int], cfg: TASConfig
) -> torch.Tensor:
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
    ``tokenizer``, ``unet`` (frozen SD 1.5), ``guidance`` (ControlNetModel shared by both views),
    ``scheduler`` (DDIM by default)."""

    model_cpu_offload_seq = "text_encoder->guidance->unet->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        unet: UNet2DConditionModel,
        guidance: ControlNetModel,
        scheduler,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            guidance=guidance,
            scheduler=scheduler,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        procs = {}
        for name in self.unet.attn_processors:
            procs[name] = TASAttnProcessor() if name.endswith("attn2.processor") else AttnProcessor2_0()
        self.unet.set_attn_processor(procs)

    # -- steps ---------------------------------------------------------------------------------------
    def _check_inputs(
        self,
        prompt,
        mesh,
        mesh_local,
        token_indices,
        seeds,
        generator,
        latents,
        height,
        width,
        views,
        tas,
        output_type,
        callback_tensor_inputs,
    ) -> list[str]:
        if isinstance(prompt, str):
            prompt = [prompt]
        B = len(prompt)
        if B == 0:
            raise AttentionHandError("no prompts: need at least one")
        meshes = (("mesh", mesh), ("mesh_local", mesh_local)) if "local" in views else (("mesh", mesh),)
        for nm, x in meshes:
            if x is None:
                raise AttentionHandError(f"{nm} is needed for views {list(views)}")
            if x.ndim != 4 or x.shape[0] != B or x.shape[-1] != 3:
                raise AttentionHandError(
                    f"{nm} must be (B, H, W, 3) uint8 with B = {B} prompts, got {tuple(x.shape)}"
                )
        if token_indices is None:
            if tas.enabled:
                raise AttentionHandError(
                    "TAS needs hand_token_indices (or pass tas=TASConfig(enabled=False))"
                )
        elif len(token_indices) != B or (seeds is not None and len(seeds) != B):
            n_seeds = "no" if seeds is None else len(seeds)
            raise AttentionHandError(
                f"need one hand-token list and one seed per prompt ({B}), got {len(token_indices)}, {n_seeds}"
            )
        if seeds is not None and generator is not None:
            raise AttentionHandError("give seeds or generator, not both")
        if seeds is not None and len(seeds) != B:
            raise AttentionHandError(f"need one seed per prompt ({B}), got {len(seeds)}")
        if isinstance(generator, list) and len(generator) != B:
            raise AttentionHandError(f"need one generator per prompt ({B}), got a list of {len(generator)}")
        if latents is None and seeds is None and generator is None:
            raise AttentionHandError("give seeds, a generator or latents (the starting noise)")
        m = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if height % m or width % m:
            raise AttentionHandError(f"height and width must be multiples of {m}, got {height}x{width}")
        if latents is not None:
            f = self.vae_scale_factor
            want = (len(views) * B, self.unet.config.in_channels, height // f, width // f)
            if tuple(latents.shape) != want:
                raise AttentionHandError(
                    f"latents must be {want} (views x prompts, channels, height / {f}, width / {f}), "
                    f"got {tuple(latents.shape)}"
                )
        if output_type not in OUTPUT_TYPES:
            raise AttentionHandError(f"unknown output_type {output_type!r}: one of {', '.join(OUTPUT_TYPES)}")
        bad = [k for k in callback_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise AttentionHandError(
                f"callback_on_step_end_tensor_inputs {bad} unknown: "
                f"choose from {self._callback_tensor_inputs}"
            )
        return list(prompt)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
        """CLIP input ids (B, 77) int64 on CPU, padded and truncated, and the position of ``<eot>`` per
        prompt."""
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        eos = self.tokenizer.eos_token_id
        return ids, [int((row == eos).nonzero()[0]) if (row == eos).any() else len(row) - 1 for row in ids]

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Text embeddings of the prompts and of the empty prompt, (B, 77, D) each; ``<eot>`` positions."""
        ids, eot = self.tokenize(prompts)
        cond = self.text_encoder(ids.to(self.device))[0]
        empty = self.tokenizer(
            [""] * len(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids.to(self.device)
        uncond = self.text_encoder(empty)[0]
        return cond, uncond, eot

    def _condition(self, images: np.ndarray, height: int, width: int, dtype) -> torch.Tensor:
        """(B, H, W, 3) uint8 mesh images -> (B, 3, height, width) in [0, 1] (resized when needed)."""
        x = torch.as_tensor(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-2:] != (height, width):
            if abs(x.shape[-1] / x.shape[-2] - width / height) > 1e-3:
                raise AttentionHandError(
                    f"mesh image aspect {x.shape[-1]}x{x.shape[-2]} differs from {width}x{height}"
                )
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        return x.to(dtype)

    def _latents(
        self,
        seeds: Sequence[int] | None,
        height: int,
        width: int,
        dtype,
        views: Sequence[str] = VIEWS,
        generator: torch.Generator | list[torch.Generator] | None = None,
        batch: int | None = None,
    ) -> torch.Tensor:
        """Starting latents (V*B, C, height / f, width / f), view by view (global rows first), times the
        scheduler's initial sigma, in ``dtype`` on the pipeline's device.

        ``seeds``: each seed makes a CPU generator from which that sample's global latent is drawn, then its
        local one (so a sample's global latent is the same whichever views are sampled). Or ``generator``: a
        list of one per sample, used the same way, or a single one (``batch`` = B samples) that draws the
        (B, C, h, w) global block, then the local block.
        """
        shape = (
            self.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        n_views = len(views)
        if seeds is not None:
            gens = [torch.Generator(device="cpu").manual_seed(int(s) % (2**63)) for s in seeds]
        elif isinstance(generator, list):
            gens = generator
        elif generator is not None and batch is not None:
            blocks = [
                torch.randn((batch, *shape), generator=generator, device=generator.device)
                for _ in range(n_views)
            ]
            return torch.cat(blocks).to(self.device, dtype) * self.scheduler.init_noise_sigma
        else:
            raise AttentionHandError("starting latents need seeds, generators, or a generator and a batch")
        rows: list[list[torch.Tensor]] = [[] for _ in range(n_views)]
        for gen in gens:
            for view_rows in rows:
                view_rows.append(torch.randn(shape, generator=gen, device=gen.device).to(self.device))
        lat = torch.stack([x for view_rows in rows for x in view_rows]).to(dtype)
        return lat * self.scheduler.init_noise_sigma

    def _guided_noise(self, latents, t, emb, cond_images, scale):
        down, mid = self.guidance(
            latents,
            t,
            encoder_hidden_states=emb,
            controlnet_cond=cond_images,
            conditioning_scale=scale,
            return_dict=False,
        )
        return self.unet(
            latents,
            t,
            encoder_hidden_states=emb,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample

    @contextlib.contextmanager
    def capture_attention(self, store: AttentionStore):
        """Within the block, the UNet's ``TASAttnProcessor`` layers record their cross-attention into
        ``store``; afterwards they are detached from it again (also when the block raises)."""
        procs = [p for p in self.unet.attn_processors.values() if isinstance(p, TASAttnProcessor)]
        for p in procs:
            p.store = store
        try:
            yield store
        finally:
            for p in procs:
                p.store = None

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        mesh: np.ndarray,
        mesh_local: np.ndarray | None = None,
        hand_token_indices: Sequence[Sequence[int]] | None = None,
        seeds: Sequence[int] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        conditioning_scale: float = 1.0,
        tas: TASConfig | None = None,
        views: str | Sequence[str] = ("global",),
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_attention: bool = False,
        progress: bool = True,
    ) -> AttentionHandOutput | tuple:
        """Generate B images per requested view.

        prompt: one or B prompts. mesh / mesh_local: (B, H, W, 3) uint8 global and local mesh images, resized
        to ``height`` x ``width`` pixels when their size differs (same aspect); ``mesh_local`` is needed only
        when ``"local"`` is one of the views (``None`` otherwise). hand_token_indices: CLIP positions of the
        hand tokens per prompt (``<sot>`` = 0); needed for TAS, may be ``None`` with TAS off.
        height / width: output size in pixels, multiples of the VAE factor times the UNet's downsampling.
        views: ``("global",)`` (default: the global branch alone) or ``("global", "local")`` (both latents in
        one batch, global rows first); a comma-separated string is accepted too. Anything else raises
        ``AttentionHandError``.
        The starting noise comes from one of: ``seeds`` (one int per prompt; each seeds a CPU generator from
        which the sample's global latent is drawn, then its local one), ``generator`` (a ``torch.Generator``,
        or a list of one per prompt; diffusers style), or ``latents`` ((V*B, C, height / f, width / f), global
        rows first, f the VAE factor; used as given, i.e. already times the scheduler's ``init_noise_sigma``,
        1 for DDIM).
        guidance_scale: classifier-free guidance weight; conditioning_scale: weight of the guidance module's
        residuals; tas: ``TASConfig`` (default: on).
        output_type: ``"np"`` ((B, H, W, 3) uint8 arrays, as written to the dataset; note that diffusers'
        ``"np"`` is float in [0, 1]), ``"pil"`` (lists of PIL images) or ``"latent"`` (no VAE decode).
        return_dict: ``False`` returns the tuple ``(images, local_images, attention_maps, tas_losses)``.
        callback_on_step_end: ``callback(pipe, step, t, kwargs) -> dict`` after each denoising step, with
        ``kwargs`` holding the tensors named in ``callback_on_step_end_tensor_inputs`` (``latents``,
        (V*B, C, h, w)); a ``latents`` entry in the returned dict replaces the latents. diffusers'
        ``PipelineCallback`` and ``MultiPipelineCallbacks`` work too.
        return_attention: also return the TAS attention maps. progress: show a progress bar.
        Returns ``AttentionHandOutput`` (shapes and dtypes there).
        """
        tas = tas or TASConfig()
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        # 1. check inputs
        views = normalize_views(views)
        prompts = self._check_inputs(
            prompt,
            mesh,
            mesh_local,
            hand_token_indices,
            seeds,
            generator,
            latents,
            height,
            width,
            views,
            tas,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        B, V = len(prompts), len(views)
        dtype = self.unet.dtype

        def per_view(x: torch.Tensor) -> torch.Tensor:  # one copy of a per-sample tensor for each view
            return x if V == 1 else torch.cat([x] * V)

        # 2. encode the prompt (all views share it) and the empty prompt for classifier-free guidance
        cond, uncond, eot = self._encode(prompts)
        cond_v, uncond_v = per_view(cond), per_view(uncond)
        # 3. the mesh conditions of the views, one batch: [global; local]
        meshes = {"global": mesh, "local": mesh_local}
        cond_images = [self._condition(meshes[v], height, width, dtype) for v in views]
        cond_images = cond_images[0] if V == 1 else torch.cat(cond_images)
        # 4. timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        n_tas = int(round(num_inference_steps * tas.steps_fraction)) if tas.enabled else 0
        # 5. latents
        if latents is None:
            latents = self._latents(seeds, height, width, dtype, views=views, generator=generator, batch=B)
        else:
            latents = latents.to(self.device, dtype)
        target_res = latents.shape[-1] // 4
        indices_v = [list(ix) for ix in hand_token_indices] * V if hand_token_indices is not None else None
        eot_v = eot * V
        emb_cfg, cond_images_cfg = torch.cat([uncond_v, cond_v]), torch.cat([cond_images, cond_images])
        maps_out, losses_out = ([] if return_attention else None), []
        # 6. denoising loop
        for i, t in enumerate(self.progress_bar(timesteps) if progress else timesteps):
            if i < n_tas:
                alpha = tas.alpha_start + (tas.alpha_end - tas.alpha_start) * (i / max(n_tas - 1, 1))
                for _ in range(tas.iterations):
                    latents, loss, maps = self.tas_step(
                        latents,
                        t,
                        cond_v,
                        cond_images,
                        conditioning_scale,
                        indices_v,
                        eot_v,
                        tas,
                        alpha,
                        target_res,
                    )
                    losses_out.append(loss.float().cpu().numpy())
                    if maps_out is not None:
                        maps_out.append(maps.float().cpu().numpy())
            model_in = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
            noise = self._guided_noise(model_in, t, emb_cfg, cond_images_cfg, conditioning_scale)
            n_uncond, n_cond = noise.chunk(2)
            noise = n_uncond + guidance_scale * (n_cond - n_uncond)
            latents = self.scheduler.step(noise, t, latents).prev_sample
            if callback_on_step_end is not None:
                available = {"latents": latents}
                kwargs = {k: available[k] for k in callback_on_step_end_tensor_inputs}
                latents = (callback_on_step_end(self, i, t, kwargs) or {}).pop("latents", latents)
        # 7. decode (all views in one VAE call)
        if output_type == "latent":
            images = latents
        else:
            images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
            images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            images = images.permute(0, 2, 3, 1).cpu().numpy()
            if output_type == "pil":
                from PIL import Image

                images = [Image.fromarray(x) for x in images]
        self.maybe_free_model_hooks()
        # 8. output: the global rows, then the local ones
        local_images = images[B:] if "local" in views else None
        out = AttentionHandOutput(
            images=images[:B], local_images=local_images, attention_maps=maps_out, tas_losses=losses_out
        )
        return out if return_dict else (out.images, out.local_images, out.attention_maps, out.tas_losses)

    def tas_step(
        self,
        latents,
        t,
        cond,
        cond_images,
        scale,
        indices,
        eot,
        tas: TASConfig,
        alpha: float,
        target_res: int,
    ):
        """One TAS update of all N latents (N = views x prompts; ``cond``, ``cond_images``, ``indices`` and
        ``eot`` row-aligned with them): (new latents, L per latent (N,), attention maps (N, r, r, 77)). The
        attention store lives for this one pass."""
        with torch.enable_grad():
            lat = latents.detach().requires_grad_(True)
            with self.capture_attention(AttentionStore()) as store:
                self._guided_noise(self.scheduler.scale_model_input(lat, t), t, cond, cond_images, scale)
            maps = store.average(target_res)
            loss = tas_loss(maps.float(), indices, eot, tas)
            if loss.requires_grad and float(loss.detach().sum()) > 0:
                grad = torch.autograd.grad(loss.sum(), lat)[0]
                lat = lat - alpha * grad
        return lat.detach(), loss.detach(), maps.detach()
