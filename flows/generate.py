"""Prefect flow ``generate-shards``: one task run per shard, then the index, manifest and preview.

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


@flow(name="generate-shards", log_prints=False)
def generate_shards(config: dict, first_shard: int = 0, stop_shard: int | None = None, resume: bool = True) -> dict:
    """Generate shards ``[first_shard, stop_shard)`` of the run described by ``config``; when they complete
    the run, write ``index.parquet``, ``manifest.json`` and ``preview.png``. Returns a summary."""
    log = get_run_logger()
    cfg = RunConfig(**config)
    stop = cfg.num_shards if stop_shard is None else min(stop_shard, cfg.num_shards)
    if not 0 <= first_shard < stop:
        raise ValueError(f"empty shard range [{first_shard}, {stop}) for {cfg.num_shards} shards")
    output = output_for(cfg)
    output.prepare(resume=resume or first_shard > 0 or stop < cfg.num_shards)
    t0 = time.perf_counter()
    todo = [k for k in range(first_shard, stop) if not output.is_complete(k)]
    log.info("%d of %d shards to write (%s)", len(todo), stop - first_shard, cfg.out)
    # one shard after another in this process (the models and the GL context are not shared across threads);
    # parallelism comes from several workers taking disjoint shard ranges
    reports = [generate_shard(cfg.model_dump(mode="json"), k) for k in todo]
    summary = {"shards_written": len(reports), "samples_written": sum(r["count"] for r in reports),
               "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    if all(output.is_complete(k) for k in range(cfg.num_shards)):
        manifest = finalize(cfg)
        summary["manifest"] = {"written": manifest["counts"]["written"], "skipped": manifest["counts"]["skipped"],
                               "shards": len(manifest["shards"])}  # fmt: skip
        try:
            from sinks.preview import preview

            preview(str(cfg.out), str(cfg.out / "preview.png") if output.store.is_local else "/tmp/preview.png", n=16)
        except Exception as exc:  # a preview is a convenience; the shards are what matter
            log.warning("preview not written: %s", exc)
        rate = summary["samples_written"] / max(summary["seconds"], 1e-9)
        create_markdown_artifact(
            key="generate-shards-summary",
            markdown=(f"# generate-shards\n\n- output: `{cfg.out}`\n- written: {manifest['counts']['written']}\n"
                      f"- skipped: {manifest['counts']['skipped']}\n- samples/s (this run): {rate:.2f}\n"
                      f"- shards: {', '.join(s['name'] for s in manifest['shards'])}\n"),
            description="generate-shards run summary",
        )  # fmt: skip
    return summary
