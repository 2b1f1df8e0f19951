"""AttentionHand training speed: optimiser steps per second with TAS iterations 0, 1 and 5, side by side \
in one run.

* ``--size tiny`` (default, CPU here): the tiny test components at ``--resolution`` (default 64), batch 2;
* ``--size sd15`` (for a GPU): random-weight components with Stable Diffusion 1.5's architecture (UNet
  320-640-1280-1280, VAE 128-256-512-512, CLIP ViT-L/14 text encoder) at 512x512, batch 1, mixed precision and
  gradient checkpointing as the trainer picks them on CUDA. No weights are needed: the speed does not depend
  on them.

The training tuples are ``hands prepare`` output made from the InterHand2.6M-format test fixture
(tiny photos). Each setting runs ``--warmup`` steps, then ``--steps`` timed steps; the timed steps/s and the
ratio to TAS 0 are printed. Usage: python bench/train.py [--size tiny|sd15] [--steps 20] [--tas 0,1,5]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _benchpath  # noqa: F401 - first: fixes the import path


def sd15_components() -> dict:
    """Random components with SD 1.5's architecture and the real CLIP tokenizer."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipeline.tagging import clip_tokenizer

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    tok = clip_tokenizer()
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {"vae": vae, "text_encoder": text, "tokenizer": tok, "unet": unet, "scheduler": sched}


def make_data(tmp: Path) -> Path:
    from pipeline.hand_model import HandModel
    from tests.source_fixtures import write_interhand, write_interhand_photos

    hm = HandModel()
    write_interhand(tmp / "ih", hm)
    write_interhand_photos(tmp / "ih", hm)
    out = tmp / "prepared"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "prepare",
            "--source",
            f"interhand:{tmp / 'ih'}",
            "--out",
            str(out),
            "--samples",
            "24",
            "--shard-size",
            "24",
            "--no-prefect",
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "sd15"), default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tas", default="0,1,5")
    ap.add_argument("--resolution", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from generators.attention_hand.models import tiny_components
    from generators.attention_hand.train import TrainConfig, Trainer

    sd15 = args.size == "sd15"
    res = args.resolution or (512 if sd15 else 64)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        data = make_data(Path(d))
        for tas in (int(x) for x in args.tas.split(",")):
            cfg = TrainConfig(
                model=args.size,
                data=str(data),
                out=Path(d) / f"run{tas}",
                steps=args.warmup + args.steps,
                batch_size=1 if sd15 else 2,
                resolution=res,
                tas_iterations=tas,
                num_workers=2 if torch.cuda.is_available() else 0,
                sample_every=0,
                save_every=10**6,
                log_every=10**6,
            )
            tr = Trainer(cfg, sd15_components() if sd15 else tiny_components(0))
            stamps: list[float] = []

            def tick(_n: int, stamps=stamps) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())

            tr.fit(progress=tick)
            timed = stamps[args.warmup - 1 :]
            sps = (len(timed) - 1) / (timed[-1] - timed[0])
            mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
            rows.append((tas, sps, mem, tr.weight_dtype))
            del tr
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"training steps/s, {args.size} components at {res}x{res} on {device} ({args.steps} timed steps each)"
    )
    print(f"{'TAS iterations':>15} {'steps/s':>9} {'vs TAS 0':>9} {'peak GPU GiB':>13} {'dtype':>15}")
    base = rows[0][1]
    for tas, sps, mem, dt in rows:
        print(f"{tas:>15d} {sps:>9.3f} {sps / base:>9.2f} {mem:>13.1f} {str(dt):>15}")


if __name__ == "__main__":
    main()
