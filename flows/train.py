"""Prefect flow ``train-generator``: AttentionHand guidance-module training as one task run.

The flow takes the training config (a dict; ``generators.attention_hand.train.TrainConfig``) or a YAML preset,
runs the training task (tag ``gpu``; it resumes from the latest checkpoint in ``out`` when there is one, so a
retried or re-run flow continues instead of starting over), and publishes a summary artifact (steps, final
loss, checkpoint, exported model, latest sample grid). For several GPUs on one node, run
``accelerate launch --multi_gpu --num_processes N -m flows.cli train-generator ... --no-prefect`` instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.runtime import retry_unless
from generators.attention_hand.train import TrainConfig, train

logger = logging.getLogger(__name__)


@task(
    name="train-guidance",
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=retry_unless(FileNotFoundError),
    tags=["gpu"],
)
def train_task(config: dict, resume: bool = True) -> dict:
    """Train (or continue) the run described by ``config``; returns the summary without the per-step
    losses."""
    summary = train(TrainConfig(**config), resume=resume)
    summary.pop("losses", None)
    return summary


@flow(name="train-generator", log_prints=False)
def train_generator(config: dict | None = None, preset: str | None = None, resume: bool = True) -> dict:
    """Train the AttentionHand guidance module on shards written by ``prepare-training-shards``; continue from
    the latest checkpoint of ``out`` when ``resume`` (the default). Returns the summary."""
    from generators.attention_hand.train import load_train_config

    log = get_run_logger()
    cfg = load_train_config(preset, **(config or {}))
    log.info("training %s on %s for %d steps into %s", cfg.model, cfg.data, cfg.steps, cfg.out)
    summary = train_task(cfg.model_dump(mode="json"), resume=resume)
    grids = sorted((Path(cfg.out) / "samples").glob("step_*.png"))
    create_markdown_artifact(
        key="train-generator-summary",
        markdown=(
            f"# train-generator\n\n- steps: {summary['steps']}\n- mean loss of the last steps: "
            f"{summary['final_loss']:.4f}\n- checkpoint: `{summary['checkpoint']}`\n"
            f"- model: `{summary.get('model')}`\n- latest sample grid: `{grids[-1] if grids else None}`\n"
        ),
        description="train-generator run summary",
    )
    return summary


def run_training(cfg: TrainConfig, resume: bool = False, prefect: bool = True, quiet: bool = False) -> dict:
    """``hands train-generator``: the flow in-process (or the trainer directly), with a progress bar."""
    from tqdm import tqdm

    from generators.attention_hand.train import preflight

    done = preflight(cfg, resume)  # fail before any model loads or a flow starts
    if not prefect:
        with tqdm(total=cfg.steps, unit="step", desc="train", disable=quiet, dynamic_ncols=True) as bar:
            bar.update(int(done[-1].name.split("_")[1]) if resume and done else 0)
            return train(cfg, resume=resume, progress=bar.update)
    from flows import runtime

    with runtime.temporary_server():
        return runtime.run_flow(train_generator, cfg.model_dump(mode="json"), resume=resume)
