"""Prefect flows ``generate-shards`` and ``prepare-training-shards``: one task run per shard, then the index,
manifest and preview.

Parameters: the run config (as a dict; ``pipeline.config.RunConfig``), an optional shard range
``[first, stop)``, ``resume`` (complete shards are kept) and ``finalize``. Every shard is written under its
claim (``sinks.run``), so several flow runs on one run folder (fan-out children, a second worker, a rerun)
split the shards with no overlap; a run that covers the whole range waits for shards held by others and then
finalises the run once (``finalize=False``: fan-out children never do). Tasks carry the ``gpu`` tag for
concurrency limits and retry only transient failures (never a ``HandgenError``). Models load once per worker
process.
"""

from __future__ import annotations

import logging
import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows import stages
from flows.runtime import no_retry_for_user_errors
from flows.stages import finalize, run_shard, run_shards, write_preview
from pipeline.config import ConfigError, RunConfig
from pipeline.errors import one_line
from sinks.run import RunFolder, process_owner

logger = logging.getLogger(__name__)


@task(
    name="generate-shard",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=no_retry_for_user_errors,
    tags=["gpu"],
)
def generate_shard(config: dict, shard: int) -> dict | None:
    """Write one shard under its claim; returns its small report (name, count, skips, sha256), or None when
    this task wrote nothing (the shard is complete, or another worker holds it)."""
    cfg = RunConfig(**config)
    with stages.session() as session:  # the flow run's session: its pipeline loads once per process
        folder = RunFolder(cfg, owner=process_owner())
        pipe, stream = session.pipeline(cfg), session.stream(cfg)  # the flow run's stream of its shards
        report = run_shard(cfg, shard, pipe, folder, progress=session.progress, stream=stream)
    if report is None:
        return None
    return {
        "name": report.name,
        "shard": report.shard,
        "count": report.count,
        "skipped": report.skipped,
        "sha256": report.sha256,
    }


prepare_shard = generate_shard.with_options(name="prepare-shard")


def shard_ranges(num_shards: int, parts: int) -> list[tuple[int, int]]:
    """Split ``[0, num_shards)`` into at most ``parts`` contiguous, disjoint, covering ranges."""
    parts = max(1, min(parts, num_shards))
    bounds = [round(i * num_shards / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _fan_out(cfg: RunConfig, fan_out: int, deployment: str, log) -> None:
    """Run child flow runs of ``deployment`` on disjoint shard ranges (on whichever workers pick them up) and
    wait. Children never finalise: the parent owns the whole range and finalises once."""
    from prefect.deployments import run_deployment

    runs = []
    for a, b in shard_ranges(cfg.num_shards, fan_out):
        params = {
            "config": cfg.model_dump(mode="json"),
            "first_shard": a,
            "stop_shard": b,
            "resume": True,
            "finalize": False,
        }
        runs.append(run_deployment(name=deployment, parameters=params, timeout=0, as_subflow=True))
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
                        log.warning(
                            "child run %s ended %s; its shards are taken over here", rid, state.type.value
                        )


def _run(
    cfg: RunConfig,
    first_shard: int,
    stop_shard: int | None,
    resume: bool,
    fan_out: int,
    deployment: str,
    task,
    flow_name: str,
    finalize_run: bool | None,
) -> dict:
    """Shards ``[first_shard, stop_shard)`` of ``cfg``, then (when this run owns the whole range and
    ``finalize_run`` is not False) index, manifest, preview and summary artifact: the body shared by
    ``generate-shards`` and ``prepare-training-shards``."""
    log = get_run_logger()
    stop = cfg.num_shards if stop_shard is None else min(stop_shard, cfg.num_shards)
    if not 0 <= first_shard < stop:
        raise ConfigError(f"empty shard range [{first_shard}, {stop}) for {cfg.num_shards} shards")
    whole = first_shard == 0 and stop == cfg.num_shards
    folder = RunFolder(cfg, owner=process_owner())
    with stages.session() as session:  # the command line's session, or one for this flow run
        if fan_out == 0 and not folder.finished():
            # models load first: a bad model path fails before the run folder is created
            session.pipeline(cfg).load()
        folder.open(resume=resume or not whole or fan_out > 0)
        t0 = time.perf_counter()
        if fan_out > 0:
            _fan_out(cfg, fan_out, deployment, log)
        shards = list(range(first_shard, stop))
        log.info("%d shards [%d, %d) in %s", len(shards), first_shard, stop, cfg.out)
        # one shard after another in this process (the generator stays on this thread); parallelism comes from
        # several workers (or fan-out children) claiming shards of the same run
        cfg_json = cfg.model_dump(mode="json")
        with session.streaming(cfg, folder, shards):  # CPU stages run ahead across shard boundaries
            reports = run_shards(cfg, shards, folder, write=lambda k: task(cfg_json, k))
    reports = [r for r in reports if r is not None]
    summary = {
        "shards": [first_shard, stop],
        "shards_written": len(reports),
        "samples_written": sum(r["count"] for r in reports),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if not whole or finalize_run is False:
        return summary
    return _finish(cfg, folder, summary, flow_name, log)


def _finish(cfg: RunConfig, folder: RunFolder, summary: dict, flow_name: str, log) -> dict:
    """Index, manifest, preview and the summary artifact of a run whose shards are all written."""
    manifest = finalize(cfg, folder)
    summary["manifest"] = {
        "written": manifest["counts"]["written"],
        "skipped": manifest["counts"]["skipped"],
        "shards": len(manifest["shards"]),
    }
    try:
        write_preview(cfg, manifest)
    except Exception as exc:  # a preview is a convenience; the shards are what matter
        log.warning("preview not written: %s", one_line(exc))
    rate = summary["samples_written"] / max(summary["seconds"], 1e-9)
    skipped = ", ".join(f"{k} {v}" for k, v in manifest["counts"]["skipped"].items()) or "none"
    create_markdown_artifact(
        key=f"{flow_name}-summary",
        markdown=(
            f"# {flow_name}\n\n- output: `{cfg.out}`\n- written: {manifest['counts']['written']}\n"
            f"- skipped: {skipped}\n- samples/s (this run): {rate:.2f}\n"
            f"- shards: {', '.join(s['name'] for s in manifest['shards'])}\n"
        ),
        description=f"{flow_name} run summary",
    )
    return summary


@flow(name="generate-shards", log_prints=False)
def generate_shards(
    config: dict | None = None,
    preset: str | None = None,
    first_shard: int = 0,
    stop_shard: int | None = None,
    resume: bool = True,
    fan_out: int = 0,
    deployment: str = "generate-shards/adhoc",
    finalize: bool | None = None,
) -> dict:
    """Generate shards ``[first_shard, stop_shard)`` of the run described by ``preset`` (a YAML file, see
    ``presets/``) updated with ``config``; when they complete the run, write ``index.parquet``,
    ``manifest.json`` and ``preview.png``. With ``fan_out = N`` the shards are split into N disjoint ranges,
    each run as a child flow run of ``deployment`` (so N workers share the run), then the run is finalised.
    Returns a summary."""
    from pipeline.config import load_config

    cfg = load_config(preset, **(config or {}))
    return _run(
        cfg, first_shard, stop_shard, resume, fan_out, deployment, generate_shard, "generate-shards", finalize
    )


@flow(name="prepare-training-shards", log_prints=False)
def prepare_training_shards(
    config: dict | None = None,
    preset: str | None = None,
    first_shard: int = 0,
    stop_shard: int | None = None,
    resume: bool = True,
    fan_out: int = 0,
    deployment: str = "prepare-training-shards/default",
    finalize: bool | None = None,
) -> dict:
    """Write AttentionHand training tuples (``mode: prepare``, see ``pipeline.config.RunConfig``) from a
    dataset source: the real image letterboxed, its mesh images, crop, local crop, caption, hand tokens and
    label, as WebDataset shards with index and manifest. Parameters as ``generate-shards``."""
    from pipeline.config import load_config

    cfg = load_config(preset, **{**(config or {}), "mode": "prepare"})
    return _run(
        cfg,
        first_shard,
        stop_shard,
        resume,
        fan_out,
        deployment,
        prepare_shard,
        "prepare-training-shards",
        finalize,
    )
