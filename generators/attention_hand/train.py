"""Training the AttentionHand guidance module (AttentionHand 3.3.3, supplementary I.3.1).

Data: training tuples written by ``hands prepare`` (``sinks.records``: ``image`` = the real photo letterboxed,
``image_local`` its crop, ``mesh`` / ``mesh_local`` the mesh images in the same geometry, the caption).

One step, for a batch of B tuples (``train_step``):

1. encode the global and local photos with the frozen VAE: ``X_0 = (X_0^G, X_0^L)``, (2B, 4, h, w);
2. encode the caption with the frozen text encoder (both branches share it);
3. draw one timestep t per tuple (shared by its two branches) and noise each branch from its **own** latent
   with its own noise: ``X_t = sqrt(abar_t) X_0 + sqrt(1 - abar_t) eps``;
4. TAS: ``tas_iterations`` updates ``X_t <- X_t - alpha grad L_TAS`` on the noisy latents (the attention maps
   of the frozen UNet with the current guidance residuals; no parameter gradients), giving ``X_hat_t``;
5. the regression target is the residual noise ``eps_hat = (X_hat_t - sqrt(abar_t) X_0) / sqrt(1 - abar_t)``;
6. one guidance module (shared weights) conditions both branches on their mesh images; the frozen UNet
   predicts noise; ``L = lambda_G L_G + lambda_L L_L`` with mean-squared errors.

Only the guidance module trains (initialised with ``ControlNetModel.from_unet``: a copy of the UNet encoder
with zero convolutions). AdamW, gradient accumulation, mixed precision and gradient checkpointing on CUDA,
several processes / GPUs through ``accelerate launch`` or ``torchrun`` (each process draws its own
micro-batches).

Determinism: the data order and every random draw of micro-step m depend only on (seed, m, process rank),
so a run resumed from a checkpoint (weights, optimiser, LR schedule, RNG states, step) continues exactly as
the uninterrupted run would.

Outputs under ``out``: ``checkpoints/step_XXXXXXXX/`` (the last ``keep_checkpoints``), ``logs/loss.jsonl``
(one line per logged optimiser step), ``samples/step_XXXXXXXX.png`` (sample grids: mesh, generated, real
photo), and ``model/`` at the end (the folder layout ``attentionhand:PATH`` loads).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field, model_validator

from pipeline.config import load_model
from pipeline.config_base import FrozenModel
from pipeline.errors import HandgenError

logger = logging.getLogger(__name__)
_STATE = "trainer_state.json"


class TrainError(HandgenError, ValueError):
    """A training setup that cannot run (bad data folder, incompatible checkpoint); the message is one
    line."""


class TrainConfig(FrozenModel):
    """One training run (typed, frozen; unknown keys are rejected).

    model: base Stable Diffusion 1.5 folder (diffusers layout) or an AttentionHand folder. guidance_init: a
    ``ControlNetModel`` folder to start from (default: ``from_unet`` of the base UNet). data: prepared shards
    (folder, file or glob). steps: optimiser steps. batch_size: tuples per micro-batch and process;
    grad_accum: micro-batches per optimiser step. lr: AdamW learning rate (paper: 1e-5). lambda_global /
    lambda_local: loss weights. tas_iterations: TAS updates per step (0 = off; the official code does 50);
    tas_alpha: their step size. resolution: training image side (pixels, a multiple of the model's size
    step). mixed_precision: ``auto`` = bf16 (or fp16) on CUDA, none on CPU. gradient_checkpointing: None = on
    for CUDA. Checkpoints every ``save_every`` steps (the last ``keep_checkpoints`` kept), loss lines every
    ``log_every`` steps, a sample grid of ``num_samples`` tuples every ``sample_every`` steps (0 = never).
    """

    model: str
    guidance_init: str | None = None
    data: str
    out: Path = Path("train-out")
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    lr_warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    lambda_global: float = Field(0.5, ge=0)
    lambda_local: float = Field(0.5, ge=0)
    tas_iterations: int = Field(1, ge=0, le=100)
    tas_alpha: float = Field(20.0, ge=0)
    resolution: int = Field(512, ge=8)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    gradient_checkpointing: bool | None = None
    seed: int = Field(0, ge=0, lt=2**63)
    save_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(500, ge=0)
    num_samples: int = Field(4, ge=1)
    sample_steps: int = Field(20, ge=1)
    num_workers: int = Field(2, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _weights(self) -> TrainConfig:
        if self.lambda_global + self.lambda_local <= 0:
            raise ValueError("lambda_global + lambda_local must be > 0")
        return self

    def resume_key(self) -> dict:
        """The settings a checkpoint must share with the run that resumes it (everything that shapes the
        trajectory; the step budget and logging may change)."""
        keep = (
            "model",
            "guidance_init",
            "data",
            "batch_size",
            "grad_accum",
            "lr",
            "weight_decay",
            "adam_beta1",
            "adam_beta2",
            "adam_eps",
            "lr_warmup_steps",
            "max_grad_norm",
            "lambda_global",
            "lambda_local",
            "tas_iterations",
            "tas_alpha",
            "resolution",
            "mixed_precision",
            "seed",
        )
        return self.model_dump(mode="json", include=set(keep))


def load_train_config(path: str | Path | None = None, **overrides) -> TrainConfig:
    """A ``TrainConfig`` from a YAML file (optional) and overrides (None values ignored)."""
    return load_model(TrainConfig, path, overrides)


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------
class TrainingTuples(torch.utils.data.Dataset):
    """Training tuples of prepared shards, read by random access (``sinks.records.RecordIndex``: each shard's
    member offsets are indexed once, then an item is one ``seek`` + ``read`` per file).

    Item i: ``pixels`` (2, 3, R, R) float32 in [-1, 1] (global photo, local crop), ``mesh`` (2, 3, R, R)
    float32 in [0, 1] (global, local mesh image), ``caption`` str, ``key`` str, with R = ``resolution``.
    """

    def __init__(self, source: str | Path, resolution: int) -> None:
        from sinks.records import (
            IMAGE_FILES,
            LABEL_FILE,
            LOCAL_IMAGE_FILES,
            MESH_FILE,
            MESH_LOCAL_FILE,
            RecordIndex,
            ShardReadError,
            find_file,
            resolve_shards,
        )

        try:
            self.shards = resolve_shards(str(source))
        except FileNotFoundError as exc:
            raise TrainError(f"training data: {exc}") from exc
        self.resolution = int(resolution)
        self.indexes: list[RecordIndex] = []
        # (shard, key, the files read per item: label, image, local image, mesh, local mesh)
        self.items: list[tuple[int, str, tuple[str, ...]]] = []
        for si, url in enumerate(self.shards):
            if "://" in url:
                raise TrainError(f"training data must be local shard files, got {url}")
            try:
                index = RecordIndex.build(url)
            except ShardReadError as exc:
                raise TrainError(f"cannot read training shard {url}: {exc.one_line()}") from exc
            self.indexes.append(index)
            for key, files in index.members.items():
                missing = [n for n in (LABEL_FILE, MESH_FILE, MESH_LOCAL_FILE) if n not in files]
                image, local = find_file(files, IMAGE_FILES), find_file(files, LOCAL_IMAGE_FILES)
                if missing or image is None:
                    raise TrainError(f"{url}: record {key} lacks {missing or ['image']}")
                if local is None:
                    raise TrainError(
                        f"{url}: record {key} has no image_local: not a training shard "
                        "(write training data with hands prepare)"
                    )
                self.items.append((si, key, (LABEL_FILE, image, local, MESH_FILE, MESH_LOCAL_FILE)))
        if not self.items:
            raise TrainError(f"no training tuples in {source}")

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, data: bytes, resample) -> np.ndarray:
        """PNG/JPEG bytes -> (R, R, 3) uint8 RGB, resized with ``resample`` when the size differs."""
        from sinks.records import decode_image

        im = Image.fromarray(decode_image(data)).convert("RGB")
        if im.size != (self.resolution, self.resolution):
            im = im.resize((self.resolution, self.resolution), resample)
        return np.asarray(im)

    def __getitem__(self, i: int) -> dict:
        shard, key, names = self.items[i]
        rec = self.indexes[shard].read(key, names)
        label, img, img_l, mesh_g, mesh_l = (rec[n] for n in names)
        label = json.loads(label)
        rgb = [self._image(b, Image.Resampling.BICUBIC) for b in (img, img_l)]
        mesh = [self._image(b, Image.Resampling.BILINEAR) for b in (mesh_g, mesh_l)]
        pixels = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return {
            "pixels": pixels,
            "mesh": torch.from_numpy(np.stack(mesh)).permute(0, 3, 1, 2).float() / 255.0,
            "caption": label["caption"],
            "key": label["key"],
        }


def _collate(items: list[dict]) -> dict:
    return {
        "pixels": torch.stack([x["pixels"] for x in items]),
        "mesh": torch.stack([x["mesh"] for x in items]),
        "caption": [x["caption"] for x in items],
        "key": [x["key"] for x in items],
    }


def _seed(*parts: int) -> int:
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1
    )


class StreamBatches(torch.utils.data.Sampler):
    """Index batches of micro-steps ``start, start + 1, ...``: an endless stream of per-epoch permutations
    (epoch e permuted with a generator seeded by (seed, e)); micro-step m of process r takes stream
    positions ``[(m * world + r) * B, ... + B)``. A pure function of (seed, m, r): resuming at any micro-step
    reproduces the order exactly."""

    def __init__(
        self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1
    ):
        self.n, self.B, self.seed, self.start, self.stop, self.rank, self.world = (
            n,
            batch_size,
            seed,
            start,
            stop,
            rank,
            world,
        )
        self._perm: dict[int, np.ndarray] = {}

    def _at(self, pos: int) -> int:
        e, j = divmod(pos, self.n)
        if e not in self._perm:
            self._perm = {e: np.random.default_rng(_seed(self.seed, 7, e)).permutation(self.n)}
        return int(self._perm[e][j])

    def batch(self, m: int) -> list[int]:
        first = (m * self.world + self.rank) * self.B
        return [self._at(p) for p in range(first, first + self.B)]

    def __iter__(self):
        for m in range(self.start, self.stop):
            yield self.batch(m)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


# ----------------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------------
class Trainer:
    """Holds the frozen models, the trainable guidance module, the optimiser and the accelerator.

    ``components``: optional ready-made components (``vae``, ``text_encoder``, ``tokenizer``, ``unet``,
    ``scheduler`` and optionally ``guidance``), e.g. tiny test models; otherwise they load from
    ``config.model``.
    """

    def __init__(self, config: TrainConfig, components: dict | None = None) -> None:
        from accelerate import Accelerator
        from diffusers import ControlNetModel, DDPMScheduler
        from diffusers.optimization import get_scheduler

        from generators.attention_hand.models import load_base, load_guidance
        from generators.attention_hand.pipeline import AttentionHandPipeline, TASConfig
        from pipeline.tagging import HandTokenTagger

        self.config = cfg = config
        cuda = torch.cuda.is_available() and cfg.device != "cpu"
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise TrainError("device cuda was asked for, but no CUDA device is available")
        mp = cfg.mixed_precision
        if mp == "auto":
            mp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
        if mp != "no" and not cuda:
            raise TrainError(f"mixed precision {mp} needs a CUDA device; use mixed_precision: no on CPU")
        self.accelerator = Accelerator(
            gradient_accumulation_steps=cfg.grad_accum, mixed_precision=mp, cpu=not cuda
        )
        acc = self.accelerator
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp, torch.float32)
        comps = dict(components) if components else load_base(cfg.model, self.weight_dtype)
        guidance = comps.pop("guidance", None)
        if cfg.guidance_init:
            guidance = load_guidance(cfg.guidance_init)
        elif guidance is None:
            # the conditioning encoder downsamples by 2 ** (levels - 1): the VAE's factor
            # (8 for SD 1.5's 4 levels)
            levels = len(comps["vae"].config.block_out_channels)
            guidance = ControlNetModel.from_unet(
                comps["unet"], conditioning_embedding_out_channels=(16, 32, 96, 256)[:levels]
            )
        if guidance.dtype != torch.float32:
            guidance = guidance.to(dtype=torch.float32)  # trainable master weights stay in float32
        for name in ("vae", "text_encoder", "unet"):
            m = comps[name].requires_grad_(False).eval().to(acc.device)
            if m.dtype != self.weight_dtype:
                m.to(dtype=self.weight_dtype)
        noise_cfg = comps["scheduler"].config
        if noise_cfg.get("prediction_type", "epsilon") != "epsilon":
            raise TrainError(
                f"only epsilon-prediction models are supported, got {noise_cfg.get('prediction_type')}"
            )
        self.noise_scheduler = DDPMScheduler.from_config(noise_cfg)
        self.pipe = AttentionHandPipeline(**comps, guidance=guidance)  # installs the TAS attention processors
        self.pipe.set_progress_bar_config(disable=True)
        step = self.pipe.vae_scale_factor * 2 ** (len(comps["unet"].config.block_out_channels) - 1)
        if cfg.resolution % step:
            raise TrainError(f"resolution must be a multiple of {step} for this model, got {cfg.resolution}")
        if cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else cuda:
            guidance.enable_gradient_checkpointing()
            comps["unet"].enable_gradient_checkpointing()
        guidance.train()
        self.tagger = HandTokenTagger(tokenizer=comps["tokenizer"])
        self.tas = TASConfig(enabled=cfg.tas_iterations > 0, iterations=cfg.tas_iterations)
        optimizer = torch.optim.AdamW(
            guidance.parameters(),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
            eps=cfg.adam_eps,
        )
        schedule = get_scheduler(
            "constant_with_warmup", optimizer, num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes
        )
        self.guidance, self.optimizer, self.lr_scheduler = acc.prepare(guidance, optimizer, schedule)
        self.pipe.to(acc.device)
        self.global_step = 0
        self.data = TrainingTuples(cfg.data, cfg.resolution)

    # -- one step ------------------------------------------------------------------------------------
    def _text(self, captions: list[str]) -> tuple[torch.Tensor, list[list[int]], list[int]]:
        ids, eot = self.pipe.tokenize(captions)
        indices = [list(self.tagger.tag(c).hand_token_indices) for c in captions]
        with torch.no_grad():
            emb = self.pipe.text_encoder(ids.to(self.accelerator.device))[0]
        return emb, indices, eot

    def train_step(self, batch: dict, micro_step: int) -> dict:
        """Forward and backward of one micro-batch (module doc, steps 1-6); returns the losses (floats)."""
        cfg, acc, pipe = self.config, self.accelerator, self.pipe
        dev, wd = acc.device, self.weight_dtype
        gen = torch.Generator().manual_seed(_seed(cfg.seed, 11, micro_step, acc.process_index))
        B = batch["pixels"].shape[0]
        # 1. latents of the global and local photos, rows [global; local]
        pixels = torch.cat([batch["pixels"][:, 0], batch["pixels"][:, 1]]).to(dev, wd)
        with torch.no_grad():
            dist = pipe.vae.encode(pixels).latent_dist
            eps0 = torch.randn(dist.mean.shape, generator=gen).to(dev, dist.mean.dtype)
            x0 = (dist.mean + dist.std * eps0).float() * pipe.vae.config.scaling_factor
        cond = torch.cat([batch["mesh"][:, 0], batch["mesh"][:, 1]]).to(dev, wd)
        # 2. the caption (shared by both branches) and its hand tokens
        emb, indices, eot = self._text(batch["caption"])
        emb2 = torch.cat([emb, emb])
        # 3. one timestep per tuple; each branch noised from its own latent with its own noise
        T = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, T, (B,), generator=gen)
        t2 = torch.cat([t, t]).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        abar = self.noise_scheduler.alphas_cumprod.to(dev)[t2].float().view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        # 4. TAS on the noisy latents (gradients reach the latents only)
        x_hat = x_t
        tas_losses = []
        if cfg.tas_iterations:
            target_res = x0.shape[-1] // 4
            for _ in range(cfg.tas_iterations):
                with acc.autocast():  # float32 guidance outputs meet the half-precision UNet under autocast
                    x_hat, loss_tas, _ = pipe.tas_step(
                        x_hat.to(wd),
                        t2,
                        emb2,
                        cond,
                        1.0,
                        indices * 2,
                        eot * 2,
                        self.tas,
                        cfg.tas_alpha,
                        target_res,
                    )
                tas_losses.append(float(loss_tas.float().mean()))
            x_hat = x_hat.float()
        # 5. the residual noise between X_0 and the updated latents
        eps_hat = (x_hat - abar.sqrt() * x0) / (1 - abar).sqrt()
        # 6. shared guidance on both branches, frozen UNet, weighted losses
        with acc.autocast():
            down, mid = self.guidance(
                x_hat.to(wd), t2, encoder_hidden_states=emb2, controlnet_cond=cond, return_dict=False
            )
            pred = pipe.unet(
                x_hat.to(wd),
                t2,
                encoder_hidden_states=emb2,
                down_block_additional_residuals=[d.to(wd) for d in down],
                mid_block_additional_residual=mid.to(wd),
            ).sample
        loss_g = F.mse_loss(pred[:B].float(), eps_hat[:B])
        loss_l = F.mse_loss(pred[B:].float(), eps_hat[B:])
        loss = cfg.lambda_global * loss_g + cfg.lambda_local * loss_l
        acc.backward(loss)
        return {
            "loss": float(loss.detach()),
            "loss_global": float(loss_g.detach()),
            "loss_local": float(loss_l.detach()),
            "tas_loss": float(np.mean(tas_losses)) if tas_losses else None,
        }

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self, progress: Callable[[int], None] | None = None) -> dict:
        """Train until ``config.steps`` optimiser steps (resuming from ``global_step``); returns a summary
        with ``losses`` (the mean loss of every optimiser step run here)."""
        cfg, acc = self.config, self.accelerator
        start = self.global_step
        if start >= cfg.steps:
            return {"steps": start, "losses": [], "seconds": 0.0}
        sampler = StreamBatches(
            len(self.data),
            cfg.batch_size,
            cfg.seed,
            start * cfg.grad_accum,
            cfg.steps * cfg.grad_accum,
            acc.process_index,
            acc.num_processes,
        )
        loader = torch.utils.data.DataLoader(
            self.data,
            batch_sampler=sampler,
            collate_fn=_collate,
            num_workers=cfg.num_workers,
            persistent_workers=False,
        )
        log_path = cfg.out / "logs" / "loss.jsonl"
        if acc.is_main_process:
            _truncate_log(log_path, start)
        losses, window = [], []
        t0 = time.perf_counter()
        t_log = t0
        for m, batch in enumerate(loader, start=start * cfg.grad_accum):
            with acc.accumulate(self.guidance):
                window.append(self.train_step(batch, m))
                if acc.sync_gradients:
                    acc.clip_grad_norm_(self.guidance.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            if not acc.sync_gradients:
                continue
            self.global_step += 1
            tas = [w["tas_loss"] for w in window if w["tas_loss"] is not None]
            vals = [float(np.mean([w[k] for w in window])) for k in ("loss", "loss_global", "loss_local")]
            vals.append(float(np.mean(tas)) if tas else math.nan)
            if acc.num_processes > 1:  # the step's loss over all processes' micro-batches
                vals = acc.reduce(torch.tensor(vals, device=acc.device), "mean").tolist()
            rec = dict(zip(("loss", "loss_global", "loss_local"), vals[:3], strict=True))
            rec["tas_loss"] = None if math.isnan(vals[3]) else vals[3]
            window = []
            losses.append(rec["loss"])
            step = self.global_step
            if acc.is_main_process and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.perf_counter()
                line = {
                    "step": step,
                    **rec,
                    "lr": self.lr_scheduler.get_last_lr()[0],
                    "steps_per_s": cfg.log_every / max(now - t_log, 1e-9)
                    if step % cfg.log_every == 0
                    else None,
                }
                t_log = now
                _append(log_path, line)
                logger.info(
                    "step %d: loss %.4f (global %.4f, local %.4f)",
                    step,
                    rec["loss"],
                    rec["loss_global"],
                    rec["loss_local"],
                )
            if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.steps):
                self.sample_grid(cfg.out / "samples" / f"step_{step:08d}.png")
            if step % cfg.save_every == 0 or step == cfg.steps:
                self.save_checkpoint()
            if progress is not None:
                progress(1)
        return {"steps": self.global_step, "losses": losses, "seconds": time.perf_counter() - t0}

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_XXXXXXXX`` (weights, optimiser, LR schedule, RNG states, step) atomically:
        a temporary folder renamed when complete; older checkpoints beyond ``keep_checkpoints`` are
        removed."""
        cfg, acc = self.config, self.accelerator
        root = cfg.out / "checkpoints"
        final = root / f"step_{self.global_step:08d}"
        tmp = root / f".tmp_step_{self.global_step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {
                "step": self.global_step,
                "micro_step": self.global_step * cfg.grad_accum,
                "num_processes": acc.num_processes,
                "config": cfg.resume_key(),
            }
            (tmp / _STATE).write_text(json.dumps(state, indent=1) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in list_checkpoints(root)[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            logger.info("checkpoint %s", final)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: str | Path) -> int:
        """Restore a checkpoint written by ``save_checkpoint`` (refused when its run settings differ)."""
        path = Path(path)
        try:
            state = json.loads((path / _STATE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainError(f"not a complete checkpoint: {path} ({exc})") from exc
        mine = self.config.resume_key()
        diff = sorted(k for k in mine if state["config"].get(k) != mine[k])
        if diff:
            raise TrainError(f"checkpoint {path} was made with different settings: {', '.join(diff)}")
        if state.get("num_processes", 1) != self.accelerator.num_processes:
            raise TrainError(
                f"checkpoint {path} was made with {state['num_processes']} processes, "
                f"this run has {self.accelerator.num_processes}"
            )
        self.accelerator.load_state(str(path))
        self.global_step = int(state["step"])
        logger.info("resumed from %s at step %d", path, self.global_step)
        return self.global_step

    # -- images and export ---------------------------------------------------------------------------
    def sample_grid(self, path: Path) -> Path | None:
        """A grid of the first ``num_samples`` tuples: rows of (global mesh image, generated image, real
        photo), generated with the current guidance module (fixed seeds, ``sample_steps`` DDIM steps)."""
        if not self.accelerator.is_main_process:
            return None
        cfg = self.config
        items = [self.data[i] for i in range(min(cfg.num_samples, len(self.data)))]
        pipe, g = self.pipe, self.pipe.guidance  # the trained module itself (unwrapped)
        g.eval()
        try:
            mesh = [(x["mesh"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for x in items]
            mesh_l = [(x["mesh"][1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for x in items]
            caps = [x["caption"] for x in items]
            with self.accelerator.autocast():
                out = pipe(
                    caps,
                    np.stack(mesh),
                    np.stack(mesh_l),
                    [self.tagger.tag(c).hand_token_indices for c in caps],
                    seeds=list(range(len(items))),
                    height=cfg.resolution,
                    width=cfg.resolution,
                    num_inference_steps=cfg.sample_steps,
                    progress=False,
                )
        finally:
            g.train()
        rows = []
        for x, m, img in zip(items, mesh, out.images, strict=True):
            real = (
                ((x["pixels"][0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
            )
            rows.append(np.concatenate([m, img, real], axis=1))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
        return path

    def export(self, out_dir: str | Path) -> Path:
        """Write the trained model in the folder layout ``attentionhand:PATH`` loads (diffusers layout with
        ``guidance/``); the frozen components are saved as they are, the guidance module in float32."""
        out_dir = Path(out_dir)
        if self.accelerator.is_main_process:
            tmp = out_dir.with_name(out_dir.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            self.pipe.save_pretrained(str(tmp))
            shutil.rmtree(out_dir, ignore_errors=True)
            os.replace(tmp, out_dir)
        self.accelerator.wait_for_everyone()
        return out_dir


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / _STATE).is_file())


def _append(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, allow_nan=True) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (left by a run that stopped after its last checkpoint)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def preflight(config: TrainConfig, resume: bool, check_model: bool = True) -> list[Path]:
    """Check a run can start before any model loads: ``out`` holds no checkpoints unless resuming, and the
    model folder (when ``check_model``) and the training data exist. Returns the complete checkpoints, oldest
    first."""
    ckpts = list_checkpoints(Path(config.out) / "checkpoints")
    if not resume and ckpts:
        raise TrainError(
            f"{config.out} already holds checkpoints; pass --resume (resume: true) to continue or use a "
            "new out folder"
        )
    for what, path in (("model", config.model if check_model else None), ("training data", config.data)):
        if path is not None and "*" not in path and not Path(path).exists():
            raise TrainError(f"{what} not found: {path}")
    return ckpts


def train(
    config: TrainConfig,
    resume: bool = False,
    components: dict | None = None,
    progress: Callable[[int], None] | None = None,
    export: bool = True,
) -> dict:
    """Run (or, with ``resume``, continue from the latest checkpoint in ``config.out``) a training run; export
    the model to ``out/model`` at the end. Returns a summary: steps, the losses of this call's steps, seconds,
    checkpoint and model paths."""
    out = Path(config.out)
    ckpts = preflight(config, resume, check_model=components is None)
    trainer = Trainer(config, components)
    if resume and ckpts:
        trainer.load_checkpoint(ckpts[-1])
    summary = trainer.fit(progress)
    if export:
        summary["model"] = str(trainer.export(out / "model"))
    summary["checkpoint"] = str(list_checkpoints(out / "checkpoints")[-1])
    last = summary["losses"][-10:]
    summary["final_loss"] = float(np.mean(last)) if last else math.nan
    return summary
