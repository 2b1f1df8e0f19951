"""End-to-end generation on embedded defaults (prior, labels, composite), measured in one process.

* samples/s of direct stage calls (``flows.stages.run_shard``) with the per-stage time breakdown;
* the same samples through the Prefect flow ``generate-shards`` (in-process, its temporary API already
  started by a warm-up flow run), and the ratio flow / direct (goal <= 1.10);
* peak RSS after runs of ``--small`` and ``--large`` samples (flat memory: the second should not grow with the
  sample count).

With ``--workers N``, instead: ``hands generate --no-prefect --workers 1`` and ``--workers N`` on the same
config (``--n`` samples, ``--size`` px), alternately ``--repeats`` times, whole commands timed (start-up and
model loading included), and the samples/s ratio N / 1 (goal on this 2-core machine: >= 1.7 for N = 2).

Usage: python bench/pipeline.py [--n 96] [--size 256] [--small 200] [--large 1000] [--shard-size 32]
       python bench/pipeline.py --workers 2 [--n 192] [--size 512] [--shard-size 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import _benchpath  # noqa: F401 - first: fixes the import path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--large", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="compare hands generate --workers 1 and N")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.workers:
        return compare_workers(args)
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect_bench_"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from flows import stages
    from flows.generate import generate_shards
    from pipeline.config import RunConfig
    from sinks.run import RunFolder

    d = tempfile.mkdtemp(prefix="bench_pipeline_")
    base = {"samples": args.n, "shard_size": args.shard_size, "image_size": args.size, "seed": 1, "run_tag": "bench"}
    direct = RunConfig(out=f"{d}/direct", **base)
    st = stages.stages_for(direct)  # models load here, once, outside the timings
    folder = RunFolder(direct)
    folder.open(resume=False)
    st.timings.clear()
    t = time.perf_counter()
    stages.run_shards(direct, list(range(direct.num_shards)), folder)
    manifest = stages.finalize(direct, folder)  # the same finishing work as the flow: index, manifest, preview
    stages.write_preview(direct, manifest)
    t_direct = time.perf_counter() - t
    timing = dict(st.timings)
    print(f"direct stage calls: {args.n / t_direct:.2f} samples/s ({args.n} samples at {args.size}x{args.size})")
    total = sum(timing.values())
    for name, sec in sorted(timing.items(), key=lambda kv: -kv[1]):
        print(f"  {name:11s} {sec / args.n * 1000:8.1f} ms/sample  {100 * sec / total:5.1f}%")

    generate_shards(RunConfig(out=f"{d}/warm", **{**base, "samples": 1}).model_dump(mode="json"))  # starts the API
    flow_cfg = RunConfig(out=f"{d}/flow", **base)
    stages._STAGES[flow_cfg.config_sha256()] = st  # same models: the comparison is orchestration only
    t = time.perf_counter()
    generate_shards(flow_cfg.model_dump(mode="json"))
    t_flow = time.perf_counter() - t
    print(f"Prefect flow: {args.n / t_flow:.2f} samples/s; ratio flow / direct = {t_flow / t_direct:.3f} (goal <= 1.10)")

    for n in (args.small, args.large):
        cfg = RunConfig(out=f"{d}/mem{n}", **{**base, "samples": n, "shard_size": 100})
        stages._STAGES[cfg.config_sha256()] = st
        folder = RunFolder(cfg)
        folder.open(resume=False)
        stages.run_shards(cfg, list(range(cfg.num_shards)), folder)
        print(f"after {n:6d} samples: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def compare_workers(args) -> None:
    """Samples/s of ``hands generate --workers 1`` vs ``--workers N``, alternating, whole commands timed."""
    import subprocess
    import sys

    d = tempfile.mkdtemp(prefix="bench_workers_")
    rates: dict[int, list[float]] = {1: [], args.workers: []}
    for r in range(args.repeats):
        for n in (1, args.workers):
            out = f"{d}/w{n}-{r}"
            cmd = [sys.executable, "-m", "flows.cli", "generate", "--out", out, "--no-prefect", "-q", "--samples",
                   str(args.n), "--shard-size", str(args.shard_size), "--image-size", str(args.size), "--seed", "1",
                   "--workers", str(n)]  # fmt: skip
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            rates[n].append(args.n / (time.perf_counter() - t))
            print(f"run {r + 1}: --workers {n}: {rates[n][-1]:.2f} samples/s")
    for i, (one, many) in enumerate(zip(rates[1], rates[args.workers], strict=True)):
        print(f"pair {i + 1}: ratio workers {args.workers} / 1 = {many / one:.2f}")
    mean = sum(rates[args.workers]) / sum(rates[1])
    print(f"overall ratio {args.workers} / 1 = {mean:.2f} (goal >= 1.7 for 2 workers on 2 cores)")


if __name__ == "__main__":
    main()
