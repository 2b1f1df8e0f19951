"""Prefect flows ``generate-shards`` and ``prepare-training-shards``: one task run per shard, then the index,
manifest and preview.

Parameters: the run config (as a dict; ``pipeline.config.RunConfig``), an optional shard range
``[first, stop)`` (workers of a scaled-out run each take a disjoint range; the run's manifest is written by the
call that covers everything), and ``resume`` (complete shards are kept). Tasks carry the ``gpu`` tag for
concurrency limits, retry transient failures, and rewrite a shard idempotently (``flows.stages.run_shard``).
Models load once per worker process.
"""

from __future__ import annotations

import logging
import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.stages import finalize, output_for, run_shard
from pipeline.config import RunConfig

logger = logging.getLogger(__name__)


@task(name="generate-shard", retries=2, retry_delay_seconds=5, tags=["gpu"])
def generate_shard(config: dict, shard: int) -> dict:
    """Write one shard; returns its small report (name, count, skips, sha256)."""
    report = run_shard(RunConfig(**config), shard)
    return {"name": report.name, "shard": report.shard, "count": report.count, "skipped": report.skipped,
            "sha256": report.sha256}  # fmt: skip


prepare_shard = generate_shard.with_options(name="prepare-shard")


def shard_ranges(num_shards: int, parts: int) -> list[tuple[int, int]]:
    """Split ``[0, num_shards)`` into at most ``parts`` contiguous, disjoint, covering ranges."""
    parts = max(1, min(parts, num_shards))
    bounds = [round(i * num_shards / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _fan_out(cfg: RunConfig, fan_out: int, deployment: str, log) -> None:
    """Run child flow runs of ``deployment`` on disjoint shard ranges (on whichever workers pick them up) and wait."""
    from prefect.deployments import run_deployment

    runs = []
    for a, b in shard_ranges(cfg.num_shards, fan_out):
        runs.append(run_deployment(name=deployment, parameters={"config": cfg.model_dump(mode="json"), "first_shard": a,
                                   "stop_shard": b, "resume": True}, timeout=0, as_subflow=True))  # fmt: skip
        log.info("child run %s: shards [%d, %d)", runs[-1].name, a, b)
    from prefect import get_client
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        pending = {r.id for r in runs}
        while pending:
            time.sleep(2.0)
            for rid in list(pending):
                state = client.read_flow_run(rid).state
                if state is not None and state.is_final():
                    pending.discard(rid)
                    if state.type != StateType.COMPLETED:
                        raise RuntimeError(f"child run {rid} ended {state.type.value}; rerun with resume to finish")


def _run(cfg: RunConfig, first_shard: int, stop_shard: int | None, resume: bool, fan_out: int, deployment: str,
         task, flow_name: str) -> dict:  # fmt: skip
    """Shards ``[first_shard, stop_shard)`` of ``cfg``, then index, manifest, preview and summary artifact when the
    run is complete (the body shared by ``generate-shards`` and ``prepare-training-shards``)."""
    log = get_run_logger()
    stop = cfg.num_shards if stop_shard is None else min(stop_shard, cfg.num_shards)
    if not 0 <= first_shard < stop:
        raise ValueError(f"empty shard range [{first_shard}, {stop}) for {cfg.num_shards} shards")
    output = output_for(cfg)
    output.prepare(resume=resume or first_shard > 0 or stop < cfg.num_shards or fan_out > 0)
    t0 = time.perf_counter()
    if fan_out > 0:
        _fan_out(cfg, fan_out, deployment, log)
    todo = [k for k in range(first_shard, stop) if not output.is_complete(k)]  # after a fan-out: none left
    log.info("%d of %d shards to write (%s)", len(todo), stop - first_shard, cfg.out)
    # one shard after another in this process (the models and the GL context are not shared across threads);
    # parallelism comes from several workers taking disjoint shard ranges
    reports = [task(cfg.model_dump(mode="json"), k) for k in todo]
    summary = {"shards": [first_shard, stop], "shards_written": len(reports),
               "samples_written": sum(r["count"] for r in reports),
               "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    if all(output.is_complete(k) for k in range(cfg.num_shards)):
        manifest = finalize(cfg)
        summary["manifest"] = {"written": manifest["counts"]["written"], "skipped": manifest["counts"]["skipped"],
                               "shards": len(manifest["shards"])}  # fmt: skip
        try:
            from sinks.preview import preview

            if not manifest["counts"]["written"]:
                raise FileNotFoundError("every sample was skipped")

            preview(str(cfg.out), str(cfg.out / "preview.png") if output.store.is_local else "/tmp/preview.png", n=16)
        except Exception as exc:  # a preview is a convenience; the shards are what matter
            log.warning("preview not written: %s", exc)
        rate = summary["samples_written"] / max(summary["seconds"], 1e-9)
        skipped = ", ".join(f"{k} {v}" for k, v in manifest["counts"]["skipped"].items()) or "none"
        create_markdown_artifact(
            key=f"{flow_name}-summary",
            markdown=(f"# {flow_name}\n\n- output: `{cfg.out}`\n- written: {manifest['counts']['written']}\n"
                      f"- skipped: {skipped}\n- samples/s (this run): {rate:.2f}\n"
                      f"- shards: {', '.join(s['name'] for s in manifest['shards'])}\n"),
            description=f"{flow_name} run summary",
        )  # fmt: skip
    return summary


@flow(name="generate-shards", log_prints=False)
def generate_shards(config: dict | None = None, preset: str | None = None, first_shard: int = 0,
                    stop_shard: int | None = None, resume: bool = True, fan_out: int = 0,
                    deployment: str = "generate-shards/adhoc") -> dict:  # fmt: skip
    """Generate shards ``[first_shard, stop_shard)`` of the run described by ``preset`` (a YAML file, see
    ``presets/``) updated with ``config``; when they complete the run, write ``index.parquet``,
    ``manifest.json`` and ``preview.png``. With ``fan_out = N`` the shards are split into N disjoint ranges,
    each run as a child flow run of ``deployment`` (so N workers share the run), then the run is finalised.
    Returns a summary."""
    from pipeline.config import load_config

    cfg = load_config(preset, **(config or {}))
    return _run(cfg, first_shard, stop_shard, resume, fan_out, deployment, generate_shard, "generate-shards")


@flow(name="prepare-training-shards", log_prints=False)
def prepare_training_shards(config: dict | None = None, preset: str | None = None, first_shard: int = 0,
                            stop_shard: int | None = None, resume: bool = True, fan_out: int = 0,
                            deployment: str = "prepare-training-shards/default") -> dict:  # fmt: skip
    """Write AttentionHand training tuples (``mode: prepare``, see ``pipeline.config.RunConfig``) from a dataset
    source: the real image letterboxed, its mesh images, crop, local crop, caption, hand tokens and label, as
    WebDataset shards with index and manifest. Parameters as ``generate-shards``."""
    from pipeline.config import load_config

    cfg = load_config(preset, **{**(config or {}), "mode": "prepare"})
    return _run(cfg, first_shard, stop_shard, resume, fan_out, deployment, prepare_shard, "prepare-training-shards")
