"""End-to-end generation on embedded defaults (prior, labels, composite), measured in one process.

* samples/s of direct stage calls (``flows.stages.run_shard``) with the per-stage time breakdown;
* the same samples through the Prefect flow ``generate-shards`` (in-process, its temporary API already
  started by a warm-up flow run), and the ratio flow / direct (goal <= 1.10);
* peak RSS after runs of ``--small`` and ``--large`` samples (flat memory: the second should not grow with the
  sample count).

Usage: python bench/pipeline.py [--n 96] [--size 256] [--small 200] [--large 1000] [--shard-size 32]
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
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect_bench_"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from flows import stages
    from flows.generate import generate_shards
    from pipeline.config import RunConfig

    d = tempfile.mkdtemp(prefix="bench_pipeline_")
    base = {"samples": args.n, "shard_size": args.shard_size, "image_size": args.size, "seed": 1, "run_tag": "bench"}
    direct = RunConfig(out=f"{d}/direct", **base)
    st = stages.stages_for(direct)  # models load here, once, outside the timings
    stages.output_for(direct).prepare(resume=False)
    st.timings.clear()
    t = time.perf_counter()
    for k in range(direct.num_shards):
        stages.run_shard(direct, k)
    stages.finalize(direct)  # the same finishing work as the flow: index, manifest, preview
    from sinks.preview import preview

    preview(str(direct.out), str(direct.out / "preview.png"), n=16)
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
        stages.output_for(cfg).prepare(resume=False)
        for k in range(cfg.num_shards):
            stages.run_shard(cfg, k)
        print(f"after {n:6d} samples: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
