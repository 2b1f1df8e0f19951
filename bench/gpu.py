"""AttentionHand generation speed against diffusers' ControlNet pipeline, side by side in one run (GPU-ready).

Both pipelines are built from the SAME component objects (random weights: the speed does not depend on them):

* ``--size sd15``: Stable Diffusion 1.5's architectures, configs written below (UNet 320-640-1280-1280, VAE
  128-256-512-512, CLIP ViT-L/14 text encoder, the SD 1.5 ControlNet as the guidance module), 512x512;
* ``--size tiny``: the tiny test components (``models.tiny_components``), 64x64.

For each combination of dtype, batch, views, TAS, ``torch.compile`` (UNet and guidance module, in place) and
channels_last, the script times ``AttentionHandPipeline.__call__`` and, at the same settings (DDIM, steps,
CFG, conditioning scale, resolution, dtype, compile, memory format), ``StableDiffusionControlNetPipeline``
producing the same number of images. A sample is an image that ships as a record: B per call for ``global``,
2B (global and local close-up) for ``global,local``. The diffusers baseline makes B, or 2B, images per call.

Timing: ``--warmup`` untimed calls (compilation happens there), then ``--repeats`` timed calls; the fastest is
reported (``torch.cuda.synchronize`` around each on CUDA). Peak memory: ``torch.cuda.max_memory_allocated``
over the timed calls on CUDA; the peak resident set size (RSS, sampled every 10 ms) on CPU.

Usage:
  python bench/gpu.py --size sd15 --device cuda [--dtypes fp16,bf16] [--batches 1,4,8,16] [--steps 20]
      [--views global global,local] [--tas off,on] [--compile off,on] [--channels-last off,on]
      [--json out.json]
  python bench/gpu.py --size tiny --device cpu --quick      # smoke run, CPU, a few seconds

``--views`` takes view sets separated by spaces; each set is a comma list (``global`` or ``global,local``),
as the generator's ``--views`` flag. The other list flags take comma-separated alternatives.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import sys
import threading
import time
from pathlib import Path

import _benchpath  # noqa: F401 - first: fixes the import path

GOAL_RATIO = 0.95  # global only, TAS off: samples/s >= 0.95x the diffusers pipeline's
GOAL_TAS_TIME = 1.5  # TAS on: time per sample <= 1.5x the diffusers pipeline's
GOAL_RATE = 4.0  # samples/s on one H100/H200, sd15 at 512x512, 20 steps, global, TAS off, compiled

PROMPTS = (
    "A man holding a cup with his right hand.",
    "A woman pointing with her left index finger.",
    "Two hands clapping in front of a window.",
    "A person making a fist with the right hand.",
)

# Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5 and lllyasviel ControlNet 1.1 configs), written out so
# that nothing is downloaded.
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_CONTROLNET = {
    "in_channels": 4,
    "conditioning_channels": 3,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": SD15_UNET["down_block_types"],
    "block_out_channels": SD15_UNET["block_out_channels"],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
    "controlnet_conditioning_channel_order": "rgb",
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT = {  # CLIP ViT-L/14 text tower; vocabulary and special ids come from the tokenizer
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
SD15_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
MODELS = ("vae", "text_encoder", "unet", "guidance")


# -- components ----------------------------------------------------------------------------------------------
def sd15_components() -> dict:
    """Random-weight components with SD 1.5's architectures and the real CLIP tokenizer."""
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipeline.tagging import clip_tokenizer

    tok = clip_tokenizer()
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    return {
        "vae": AutoencoderKL(**SD15_VAE),
        "text_encoder": CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), **SD15_TEXT, **ids)),
        "tokenizer": tok,
        "unet": UNet2DConditionModel(**SD15_UNET),
        "guidance": ControlNetModel(**SD15_CONTROLNET),
        "scheduler": DDIMScheduler(**SD15_SCHEDULER),
    }


def build_components(size: str, device: str, dtype, seed: int = 0) -> dict:
    """Components on ``device`` in ``dtype``, eval mode, weights frozen (random init runs on the device)."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    from generators.attention_hand.models import tiny_components

    torch.manual_seed(seed)
    with torch.device(device):
        comps = sd15_components() if size == "sd15" else tiny_components(seed)
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # "modules that should be kept in float32: []" per cast
    try:
        for name in MODELS:
            comps[name] = comps[name].to(device=device, dtype=dtype).eval().requires_grad_(False)
    finally:
        diffusers_logging.set_verbosity(level)
    return comps


def set_memory_format(comps: dict, channels_last: bool) -> None:
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for name in ("unet", "guidance", "vae"):
        comps[name].to(memory_format=fmt)


def set_compiled(comps: dict, on: bool, mode: str) -> None:
    """``torch.compile`` the UNet and the guidance module in place (``nn.Module.compile``), or undo it; both
    pipelines hold these very objects."""
    for name in ("unet", "guidance"):
        m = comps[name]
        if on:
            m.compile(mode=None if mode == "default" else mode)
        else:
            m._compiled_call_impl = None


# -- the two pipelines ---------------------------------------------------------------------------------------
def views_mode(pipe_cls) -> str:
    """How ``AttentionHandPipeline.__call__`` can run the global branch alone: ``views`` (a ``views=``
    argument), ``mesh_local=None`` (an optional local mesh), or ``both`` (it always runs both branches)."""
    params = inspect.signature(pipe_cls.__call__).parameters
    if "views" in params:
        return "views"
    p = params.get("mesh_local")
    if p is not None and p.default is None:
        return "mesh_local=None"
    return "both"


class Runner:
    """Calls of the AttentionHand pipeline and of diffusers' ControlNet pipeline on shared components."""

    def __init__(self, comps: dict, res: int, steps: int, cfg: float, cond_scale: float) -> None:
        import numpy as np
        from diffusers import StableDiffusionControlNetPipeline

        from generators.attention_hand.pipeline import AttentionHandPipeline
        from pipeline.tagging import HandTokenTagger

        self.ours = AttentionHandPipeline(**comps)
        self.base = StableDiffusionControlNetPipeline(
            vae=comps["vae"],
            text_encoder=comps["text_encoder"],
            tokenizer=comps["tokenizer"],
            unet=comps["unet"],
            controlnet=comps["guidance"],
            scheduler=comps["scheduler"],
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        for p in (self.ours, self.base):
            p.set_progress_bar_config(disable=True)
        self.mode = views_mode(AttentionHandPipeline)
        self.res, self.steps, self.cfg, self.cond_scale = res, steps, cfg, cond_scale
        self.tagger = HandTokenTagger(tokenizer=comps["tokenizer"])
        self._rng = np.random.default_rng(0)
        self._inputs: dict[int, tuple] = {}
        self.last_tas_losses = None

    def inputs(self, n: int):
        """n prompts, their hand tokens, global and local mesh images (random uint8), seeds."""
        import numpy as np

        if n not in self._inputs:
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
            idx = [list(self.tagger.tag(p).hand_token_indices) for p in prompts]
            shape = (n, self.res, self.res, 3)
            mesh = self._rng.integers(0, 256, shape, dtype=np.uint8)
            mesh_l = self._rng.integers(0, 256, shape, dtype=np.uint8)
            self._inputs[n] = (prompts, idx, mesh, mesh_l, list(range(1, n + 1)))
        return self._inputs[n]

    def run_ours(self, batch: int, views: tuple[str, ...], tas: bool):
        from generators.attention_hand.pipeline import TASConfig

        prompts, idx, mesh, mesh_l, seeds = self.inputs(batch)
        kw = {
            "height": self.res,
            "width": self.res,
            "num_inference_steps": self.steps,
            "guidance_scale": self.cfg,
            "conditioning_scale": self.cond_scale,
            "tas": TASConfig(enabled=tas),
            "progress": False,
        }
        local = "local" in views
        if self.mode == "views":
            try:
                out = self.ours(prompts, mesh, mesh_l, idx, seeds, views=views, **kw)
            except (TypeError, ValueError):  # a views= that wants the flag's spelling
                out = self.ours(prompts, mesh, mesh_l, idx, seeds, views=",".join(views), **kw)
        elif self.mode == "mesh_local=None":
            out = self.ours(prompts, mesh, mesh_l if local else None, idx, seeds, **kw)
        else:  # always both branches: "global" keeps the global images only
            out = self.ours(prompts, mesh, mesh_l, idx, seeds, **kw)
        self.last_tas_losses = out.tas_losses
        return out

    def run_base(self, n: int):
        """diffusers at batch n (n = B for global, 2B for global+local: the same number of images)."""
        import torch

        prompts, _idx, mesh, _mesh_l, seeds = self.inputs(n)
        image = torch.from_numpy(mesh).permute(0, 3, 1, 2).float() / 255.0
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        return self.base(
            prompt=prompts,
            image=image,
            height=self.res,
            width=self.res,
            num_inference_steps=self.steps,
            guidance_scale=self.cfg,
            controlnet_conditioning_scale=self.cond_scale,
            eta=0.0,
            generator=gens,
            output_type="np",
        )


# -- measuring -----------------------------------------------------------------------------------------------
class PeakRSS:
    """Peak resident set size (bytes) while the block runs, sampled every 10 ms on a thread."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.peak = 0

    def __enter__(self):
        if not self.enabled:
            return self
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def measure(calls: dict[str, tuple], warmup: int, repeats: int, cuda: bool) -> dict[str, dict]:
    """Per name in ``calls`` (name -> (function, samples per call)): samples/s of the fastest of ``repeats``
    timed calls after ``warmup`` calls, and the peak memory in bytes over its timed calls. The functions take
    turns (warm-up, then one timed call of each per round), so that a noisy machine slows them alike."""
    import torch

    for _ in range(warmup):
        for fn, _n in calls.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    peaks = dict.fromkeys(calls, 0)
    for _ in range(repeats):
        for name, (fn, _n) in calls.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            with PeakRSS(enabled=not cuda) as rss:
                t = time.perf_counter()
                fn()
                if cuda:
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
            peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() if cuda else rss.peak)
    out = {}
    for name, (_fn, n) in calls.items():
        best = min(times[name])
        out[name] = {
            "samples_per_s": n / best,
            "seconds": best,
            "times": times[name],
            "peak_bytes": peaks[name],
        }
    return out


def tas_note(losses) -> str:
    """A warning when TAS skipped its gradient step (random weights gave a non-finite or zero loss)."""
    import numpy as np

    if not losses:
        return "TAS made no update"
    arr = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in losses])
    if not np.isfinite(arr).all() or not (arr > 0).any():
        return "TAS loss not finite/zero: gradient step skipped, time understated"
    return ""


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0][:120] if msg else ''}"


class Group:
    """The settings sharing one dtype, memory format and compile state: measures rows, caching the diffusers
    baseline by images per call (global at 2B and global+local at B make the same diffusers call)."""

    def __init__(self, runner: Runner, cuda: bool, warmup: int, repeats: int, compiled: bool) -> None:
        self.runner, self.cuda, self.warmup, self.repeats, self.compiled = (
            runner,
            cuda,
            warmup,
            repeats,
            compiled,
        )
        self.base: dict[int, dict] = {}
        self.compile_broken = ""

    def measure_row(self, row: dict, batch: int, views: tuple[str, ...], tas: bool) -> bool:
        """Fill in ``row``; True when the setting failed with an error (not out of memory or compile)."""
        import torch

        if self.compile_broken:
            row["note"] = f"skipped: compile failed ({self.compile_broken})"
            return False
        n_img = batch * len(views)
        notes = ["ran both branches"] if self.runner.mode == "both" and len(views) == 1 else []
        try:
            calls = {"ours": (lambda: self.runner.run_ours(batch, views, tas), n_img)}
            if n_img not in self.base:  # measured side by side with the first row that needs it
                calls["diffusers"] = (lambda: self.runner.run_base(n_img), n_img)
            res = measure(calls, self.warmup, self.repeats, self.cuda)
            m = res["ours"]
            if "diffusers" in res:
                self.base[n_img] = res["diffusers"]
            if tas and (tn := tas_note(self.runner.last_tas_losses)):
                notes.append(tn)
        except Exception as exc:  # noqa: BLE001 - one setting's failure is reported in its row
            if self.cuda:
                torch.cuda.empty_cache()
            if is_oom(exc):
                row["note"] = "out of memory"
                return False
            if self.compiled:
                self.compile_broken = one_line(exc)
                row["note"] = f"skipped: compile failed ({self.compile_broken})"
                return False
            row["note"] = f"error: {one_line(exc)}"
            return True
        bm = self.base[n_img]
        row.update(
            samples_per_s=m["samples_per_s"],
            seconds=m["seconds"],
            times=m["times"],
            peak_bytes=m["peak_bytes"],
            diffusers_samples_per_s=bm["samples_per_s"],
            diffusers_seconds=bm["seconds"],
            diffusers_peak_bytes=bm["peak_bytes"],
            diffusers_images_per_call=n_img,
            ratio=m["samples_per_s"] / bm["samples_per_s"],
            note="; ".join(notes),
        )
        return False


def progress(row: dict) -> None:
    """One line per measured setting on stderr, as it completes."""
    sps, r = row.get("samples_per_s"), row.get("ratio")
    what = f"{sps:.3f} samples/s, ratio {r:.3f}" if sps and r else ""
    print(
        f"  {row['dtype']} batch {row['batch']} {row['views']} TAS {row['tas']} compile {row['compile']} "
        f"channels_last {row['channels_last']}: " + "; ".join(x for x in (what, row.get("note", "")) if x),
        file=sys.stderr,
        flush=True,
    )


# -- goals and the table -------------------------------------------------------------------------------------
def goal_text(row: dict) -> str:
    r = row.get("ratio")
    if r is None:
        return "-"
    if row["tas"] == "on":
        t = 1.0 / r
        return f"time {t:.2f}x <= {GOAL_TAS_TIME}x: {'met' if t <= GOAL_TAS_TIME else 'MISSED'}"
    if row["views"] == "global":
        return f">= {GOAL_RATIO}x: {'met' if r >= GOAL_RATIO else 'MISSED'}"
    return "-"


def fmt_mem(b, cuda: bool) -> str:
    if b is None:
        return "-"
    return f"{b / 2**30:.2f} GiB" if cuda else f"{b / 2**20:.0f} MiB"


def table(rows: list[dict], cuda: bool) -> str:
    head = [
        "dtype",
        "batch",
        "views",
        "TAS",
        "compile",
        "ch-last",
        "samples/s",
        "diffusers samples/s",
        "ratio vs diffusers",
        "peak mem",
        "diffusers peak",
        "goal",
        "note",
    ]
    body = []
    for r in rows:
        sps, bsps = r.get("samples_per_s"), r.get("diffusers_samples_per_s")
        body.append(
            [
                r["dtype"],
                str(r["batch"]),
                r["views"],
                r["tas"],
                r["compile"],
                r["channels_last"],
                f"{sps:.3f}" if sps else "-",
                f"{bsps:.3f}" if bsps else "-",
                f"{r['ratio']:.3f}" if r.get("ratio") else "-",
                fmt_mem(r.get("peak_bytes"), cuda),
                fmt_mem(r.get("diffusers_peak_bytes"), cuda),
                goal_text(r),
                r.get("note", ""),
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


def summary(rows: list[dict], meta: dict) -> list[str]:
    ok = [r for r in rows if r.get("ratio")]
    lines = []
    g1 = [r["ratio"] for r in ok if r["views"] == "global" and r["tas"] == "off"]
    if g1:
        met = sum(x >= GOAL_RATIO for x in g1)
        lines.append(
            f"goal 1, global only, TAS off, rate >= {GOAL_RATIO}x diffusers: {met} of {len(g1)} settings "
            f"met (ratios {min(g1):.3f}-{max(g1):.3f})"
        )
    else:
        lines.append(f"goal 1, global only, TAS off, rate >= {GOAL_RATIO}x diffusers: no such row measured")
    g2 = [1.0 / r["ratio"] for r in ok if r["tas"] == "on"]
    if g2:
        met = sum(x <= GOAL_TAS_TIME for x in g2)
        lines.append(
            f"goal 2, TAS on, time <= {GOAL_TAS_TIME}x diffusers: {met} of {len(g2)} settings met "
            f"(time ratios {min(g2):.2f}-{max(g2):.2f})"
        )
    else:
        lines.append(f"goal 2, TAS on, time <= {GOAL_TAS_TIME}x diffusers: no TAS-on row measured")
    g3 = [r for r in ok if r["views"] == "global" and r["tas"] == "off" and r["compile"] == "on"]
    name = meta["device_name"]
    applies = (
        any(x in name for x in ("H100", "H200"))
        and meta["size"] == "sd15"
        and meta["steps"] == 20
        and meta["resolution"] == 512
    )
    if g3:
        best = max(g3, key=lambda r: r["samples_per_s"])
        verdict = (
            ("met" if best["samples_per_s"] >= GOAL_RATE else "MISSED") if applies else "not applicable here"
        )
        lines.append(
            f"goal 3, >= {GOAL_RATE} samples/s on one H100/H200 (sd15, 512, 20 steps, global, TAS off, "
            f"compiled): best {best['samples_per_s']:.3f} at {best['dtype']} batch {best['batch']} "
            f"on {name}: {verdict}"
        )
    else:
        lines.append(
            f"goal 3, >= {GOAL_RATE} samples/s on one H100/H200: "
            "no global-only, TAS off, compiled row measured"
        )
    return lines


# -- main ----------------------------------------------------------------------------------------------------
def parse_list(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise ValueError(f"{flag} takes a comma list of {'/'.join(allowed)}, got {text!r}")
    return items


def parse_views(sets: list[str]) -> list[tuple[str, ...]]:
    out = []
    for s in sets:
        v = tuple(x.strip() for x in s.split(",") if x.strip())
        if not v or v[0] != "global" or any(x not in ("global", "local") for x in v) or len(set(v)) != len(v):
            raise ValueError(
                f"--views takes view sets 'global' or 'global,local' (separated by spaces), got {s!r}"
            )
        out.append(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "sd15"), default="tiny")
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    ap.add_argument(
        "--dtypes", default=None, help="comma list of fp16, bf16, fp32 (default fp16,bf16; fp32 on CPU)"
    )
    ap.add_argument("--batches", default=None, help="comma list (default 1,4,8,16)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default 20)")
    ap.add_argument("--resolution", type=int, default=None, help="default 512 (sd15), 64 (tiny)")
    ap.add_argument(
        "--views", nargs="+", default=None, help="view sets: global and/or global,local (default both)"
    )
    ap.add_argument("--tas", default=None, help="off,on (default both)")
    ap.add_argument("--compile", default=None, help="off,on (default both)")
    ap.add_argument(
        "--compile-mode", default="default", help="torch.compile mode (default, max-autotune, ...)"
    )
    ap.add_argument("--channels-last", default=None, help="off,on (default both)")
    ap.add_argument("--guidance-scale", type=float, default=9.0, help="CFG scale (official inference: 9.0)")
    ap.add_argument("--conditioning-scale", type=float, default=1.0)
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls per setting (default 1)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed calls per setting, fastest kept (default 2)"
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default torch's; 1 with --quick)"
    )
    ap.add_argument("--budget-s", type=float, default=None, help="skip settings not started within this time")
    ap.add_argument(
        "--json", type=Path, default=None, help="also write the rows here (rewritten after each row)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke subset: batch 1, 2 steps, first dtype, compile and channels_last off, 1 call each",
    )
    args = ap.parse_args(argv)
    q = args.quick
    try:  # everything that needs no torch is checked first: bad input fails fast, with exit status 2
        dtypes = parse_list(args.dtypes, tuple(DTYPES), "--dtypes") if args.dtypes else None
        batches = [int(x) for x in (args.batches or ("1" if q else "1,4,8,16")).split(",")]
        if any(b < 1 for b in batches):
            raise ValueError(f"--batches must be positive, got {args.batches!r}")
        views = parse_views(args.views or ["global", "global,local"])
        tas_opts = parse_list(args.tas or "off,on", ("off", "on"), "--tas")
        compile_opts = parse_list(args.compile or ("off" if q else "off,on"), ("off", "on"), "--compile")
        cl_opts = parse_list(
            args.channels_last or ("off" if q else "off,on"), ("off", "on"), "--channels-last"
        )
    except ValueError as exc:
        ap.error(
            str(exc)
            if "--" in str(exc)
            else f"--batches takes a comma list of integers, got {args.batches!r}"
        )
    steps = args.steps or (2 if q else 20)
    res = args.resolution or (512 if args.size == "sd15" else 64)
    warmup = args.warmup if args.warmup is not None else 1
    repeats = args.repeats or (1 if q else 2)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cuda", "cpu") or (dev.type == "cpu" and dev.index):
        ap.error(f"--device takes cuda, cuda:N or cpu, got {device!r}")
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error(f"--device {device} but no CUDA device is available")
    if cuda and dev.index is not None:
        torch.cuda.set_device(dev)
    threads = args.threads or (1 if q and not cuda else None)
    if threads:
        torch.set_num_threads(threads)
    notes: list[str] = []
    dtypes = dtypes or (["fp16", "bf16"] if cuda else ["fp32"])
    if not cuda and any(d != "fp32" for d in dtypes):
        notes.append(f"CPU: {','.join(d for d in dtypes if d != 'fp32')} replaced by fp32")
        dtypes = ["fp32"]
    dtypes = list(dict.fromkeys(dtypes))
    if q and args.dtypes is None:
        dtypes = dtypes[:1]

    import diffusers

    from generators.attention_hand.pipeline import AttentionHandPipeline

    mode = views_mode(AttentionHandPipeline)
    if mode == "both":
        notes.append(
            "AttentionHandPipeline.__call__ has no global-only option: it always denoises and decodes the "
            "global and the local branch, so 'global' rows do the global+local work and keep B images"
        )
    dyn = torch._dynamo.config
    dyn.automatic_dynamic_shapes = False  # one static graph per shape, as a fixed-batch worker would use
    for knob in (
        "recompile_limit",
        "cache_size_limit",
        "accumulated_recompile_limit",
        "accumulated_cache_size_limit",
    ):
        if hasattr(dyn, knob):
            setattr(dyn, knob, max(getattr(dyn, knob), 256))
    meta = {
        "size": args.size,
        "device": device,
        "device_name": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
        "resolution": res,
        "steps": steps,
        "scheduler": "DDIM (eta 0)",
        "guidance_scale": args.guidance_scale,
        "conditioning_scale": args.conditioning_scale,
        "warmup": warmup,
        "repeats": repeats,
        "compile_mode": args.compile_mode,
        "cpu_threads": torch.get_num_threads(),
        "pipeline_views_mode": mode,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "notes": notes,
    }
    print(
        f"AttentionHand vs diffusers StableDiffusionControlNetPipeline: {args.size} components "
        f"(random weights) at {res}x{res}, DDIM {steps} steps, CFG {args.guidance_scale}, "
        f"conditioning {args.conditioning_scale}, on {meta['device_name']}"
        + ("" if cuda else f", {meta['cpu_threads']} torch threads")
        + f"; fastest of {repeats} timed calls after {warmup} warm-up",
        flush=True,
    )
    for n in notes:
        print(f"note: {n}", flush=True)

    rows: list[dict] = []
    t_start = time.perf_counter()

    def dump() -> None:
        if args.json:
            args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))

    failed = False
    for dname in dtypes:
        comps = build_components(args.size, device, getattr(torch, DTYPES[dname]))
        runner = Runner(comps, res, steps, args.guidance_scale, args.conditioning_scale)
        for cl, comp in itertools.product(cl_opts, compile_opts):
            set_memory_format(comps, cl == "on")
            torch._dynamo.reset()
            set_compiled(comps, comp == "on", args.compile_mode)
            group = Group(runner, cuda, warmup, repeats, comp == "on")
            for b, v, tas in itertools.product(batches, views, tas_opts):
                row = {
                    "dtype": dname,
                    "batch": b,
                    "views": "global" if v == ("global",) else "global+local",
                    "tas": tas,
                    "compile": comp,
                    "channels_last": cl,
                }
                rows.append(row)
                if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
                    row["note"] = "skipped: --budget-s spent"
                else:
                    failed |= group.measure_row(row, b, v, tas == "on")
                progress(row)
                dump()
        set_compiled(comps, False, args.compile_mode)
        del runner, comps, group
        torch._dynamo.reset()
        if cuda:
            torch.cuda.empty_cache()

    print()
    print(table(rows, cuda))
    print()
    for line in summary(rows, meta):
        print(line)
    print(
        "samples: images shipped as records (B per call for global, 2B for global+local); the diffusers "
        "pipeline makes the same number of images per call; ratio = samples/s / diffusers samples/s"
    )
    print(f"total {time.perf_counter() - t_start:.1f} s", flush=True)
    dump()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
