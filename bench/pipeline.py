"""End-to-end generation on embedded defaults (prior, labels, composite), measured in one process.

* samples/s of direct stage calls (``flows.stages.run_shard``) with the per-stage time breakdown;
* the same samples through the Prefect flow ``generate-shards`` (in-process, its temporary API already
  started by a warm-up flow run), and the ratio flow / direct (goal <= 1.10);
* peak RSS after runs of ``--small`` and ``--large`` samples (flat memory: the second should not grow with the
  sample count).

With ``--workers N``, instead: ``hands generate --no-prefect --workers 1`` and ``--workers N`` on the same
config (``--n`` samples, ``--size`` px), alternately ``--repeats`` times, whole commands timed (start-up and
model loading included), and the samples/s ratio N / 1 (goal on this 2-core machine: >= 1.7 for N = 2).

With ``--overlap SECONDS`` (default 0.1), instead: how well the CPU stages hide behind generation
(``flows.prefetch``: draw + prepare run ahead of the generator, encoding + writing behind it). A simulated
generator (``SleepGenerator``, bench only) costs SECONDS per sample in ``time.sleep``, which releases the GIL
like a GPU computing, and fills each image from its mesh image. On the same samples, side by side: the CPU
stages alone (draw + prepare, ms/sample), (a) the generator alone (samples/s), then the run (b) streamed
across shard boundaries (``flows.stages.ShardStream``, what ``run_shards`` does), (c) with prefetch within
each shard only (``run_shard`` shard by shard: each shard starts with an empty pipeline, and waits for its
last writes) and (d) without prefetch (depth 0), alternately ``--repeats`` times; overlap efficiency =
end-to-end rate / generator-only rate (goal with the stream: >= 0.95 at the default shard size).

Usage: python bench/pipeline.py [--n 96] [--size 256] [--small 200] [--large 1000] [--shard-size 32]
       python bench/pipeline.py --workers 2 [--n 192] [--size 512] [--shard-size 16] [--repeats 2]
       python bench/pipeline.py --overlap [0.1] [--n 96] [--size 256] [--shard-size 32] [--batch-size 8]
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
    ap.add_argument(
        "--overlap",
        type=float,
        nargs="?",
        const=0.1,
        default=None,
        metavar="SECONDS_PER_SAMPLE",
        help="run_shard with and without prefetch against a simulated generator",
    )
    ap.add_argument("--batch-size", type=int, default=8, help="samples per batch (--overlap)")
    ap.add_argument("--props", default="auto", help="RunConfig.props of the runs (--overlap)")
    args = ap.parse_args()
    if args.workers:
        return compare_workers(args)
    if args.overlap is not None:
        return compare_overlap(args)
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect_bench_"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from flows import stages
    from pipeline.config import RunConfig

    d = tempfile.mkdtemp(prefix="bench_pipeline_")
    base = {
        "samples": args.n,
        "shard_size": args.shard_size,
        "image_size": args.size,
        "seed": 1,
        "run_tag": "bench",
    }
    direct = RunConfig(out=f"{d}/direct", **base)
    with stages.Session() as session:  # every run below shares its pipeline: the hash excludes ``out``
        _compare_flow(args, d, base, direct, session.pipeline(direct).load())


def _compare_flow(args, d, base, direct, st) -> None:
    """Direct stage calls vs the Prefect flow with the same (loaded) pipeline ``st``, then peak memory."""
    from flows import stages
    from flows.generate import generate_shards
    from pipeline.config import RunConfig
    from sinks.run import RunFolder

    folder = RunFolder(direct)
    folder.open(resume=False)
    st.timings.clear()
    t = time.perf_counter()
    stages.run_shards(direct, list(range(direct.num_shards)), folder)
    manifest = stages.finalize(
        direct, folder
    )  # the same finishing work as the flow: index, manifest, preview
    stages.write_preview(direct, manifest)
    t_direct = time.perf_counter() - t
    timing = dict(st.timings)
    print(
        f"direct stage calls: {args.n / t_direct:.2f} samples/s ({args.n} samples at {args.size}x{args.size})"
    )
    total = sum(timing.values())
    for name, sec in sorted(timing.items(), key=lambda kv: -kv[1]):
        print(f"  {name:11s} {sec / args.n * 1000:8.1f} ms/sample  {100 * sec / total:5.1f}%")

    generate_shards(
        RunConfig(out=f"{d}/warm", **{**base, "samples": 1}).model_dump(mode="json")
    )  # starts the API
    flow_cfg = RunConfig(out=f"{d}/flow", **base)
    # same models (the session's pipeline): the comparison is orchestration only
    t = time.perf_counter()
    generate_shards(flow_cfg.model_dump(mode="json"))
    t_flow = time.perf_counter() - t
    print(
        f"Prefect flow: {args.n / t_flow:.2f} samples/s; ratio flow / direct = {t_flow / t_direct:.3f} "
        "(goal <= 1.10)"
    )

    for n in (args.small, args.large):
        cfg = RunConfig(out=f"{d}/mem{n}", **{**base, "samples": n, "shard_size": 100})
        folder = RunFolder(cfg)
        folder.open(resume=False)
        stages.run_shards(cfg, list(range(cfg.num_shards)), folder)
        print(
            f"after {n:6d} samples: peak RSS "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
        )


def compare_workers(args) -> None:
    """Samples/s of ``hands generate --workers 1`` vs ``--workers N``, alternating, whole commands timed."""
    import subprocess
    import sys

    d = tempfile.mkdtemp(prefix="bench_workers_")
    rates: dict[int, list[float]] = {1: [], args.workers: []}
    for r in range(args.repeats):
        for n in (1, args.workers):
            out = f"{d}/w{n}-{r}"
            cmd = [
                sys.executable,
                "-m",
                "flows.cli",
                "generate",
                "--out",
                out,
                "--no-prefect",
                "-q",
                "--samples",
                str(args.n),
                "--shard-size",
                str(args.shard_size),
                "--image-size",
                str(args.size),
                "--seed",
                "1",
                "--workers",
                str(n),
            ]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            rates[n].append(args.n / (time.perf_counter() - t))
            print(f"run {r + 1}: --workers {n}: {rates[n][-1]:.2f} samples/s")
    for i, (one, many) in enumerate(zip(rates[1], rates[args.workers], strict=True)):
        print(f"pair {i + 1}: ratio workers {args.workers} / 1 = {many / one:.2f}")
    mean = sum(rates[args.workers]) / sum(rates[1])
    print(f"overall ratio {args.workers} / 1 = {mean:.2f} (goal >= 1.7 for 2 workers on 2 cores)")


class SleepGenerator:
    """A simulated GPU generator (bench only, never shipped): ``seconds`` per sample in ``time.sleep``, which
    releases the GIL as a GPU computing does; each image is its mesh image, with a generator record."""

    name = "bench-sleep"
    version = 1

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    tokenizer = None

    def generate(self, samples) -> list:
        from pipeline.sample import Generation

        time.sleep(self.seconds * len(samples))
        return [
            Generation(
                s.mesh_image.copy(),
                {
                    "name": self.name,
                    "version": self.version,
                    "weights_id": None,
                    "seed": int(s.seed),
                    "seconds_per_sample": self.seconds,
                },
            )
            for s in samples
        ]

    def close(self) -> None:
        pass


def compare_overlap(args) -> None:
    """Generator-only rate vs ``run_shard`` with and without prefetch, on the same samples (module doc)."""

    from flows import stages
    from pipeline.config import RunConfig

    d = tempfile.mkdtemp(prefix="bench_overlap_")
    base = {
        "samples": args.n,
        "shard_size": args.shard_size,
        "image_size": args.size,
        "batch_size": args.batch_size,
        "seed": 1,
        "run_tag": "bench",
        "props": args.props,
    }
    with stages.Session() as session:  # models load here, once, outside the timings
        st = session.pipeline(RunConfig(out=f"{d}/cpu", **base)).load()
        st.generator = SleepGenerator(args.overlap)  # every run below shares these stages (one config)
        _compare_overlap(args, d, base, st)


def _compare_overlap(args, d, base, st) -> None:
    from collections import Counter

    from flows import stages
    from flows.prefetch import DEFAULT_DEPTH
    from pipeline.config import RunConfig
    from sinks.run import RunFolder

    print(
        f"{args.n} samples at {args.size}x{args.size}, batches of {args.batch_size}, shards of "
        f"{args.shard_size}; simulated generator {args.overlap * 1000:.0f} ms/sample; "
        f"load average {os.getloadavg()[0]:.2f}"
    )

    def cpu_and_generator_alone() -> tuple[float, float]:
        """(CPU stages ms/sample, generator-only samples/s) on the run's samples."""
        skips: Counter = Counter()
        batches = []
        t = time.perf_counter()
        for i in range(0, args.n, args.batch_size):
            batches.append(st.prepare(range(i, min(i + args.batch_size, args.n)), skips))
        cpu_ms = (time.perf_counter() - t) / args.n * 1000
        t = time.perf_counter()
        for b in batches:
            st.generate(b, skips)  # the call run_shard makes
        return cpu_ms, sum(len(b) for b in batches) / (time.perf_counter() - t)

    st.prepare(range(args.batch_size), Counter())  # warm-up: llvmpipe compiles its shaders on the first draw
    variants = {  # name -> (prefetch depth, stream across shards)
        "stream": (DEFAULT_DEPTH, True),
        "per-shard": (DEFAULT_DEPTH, False),
        "none": (0, False),
    }
    labels = {
        "stream": f"(b) prefetch depth {DEFAULT_DEPTH}, across shards",
        "per-shard": f"(c) prefetch depth {DEFAULT_DEPTH}, per shard",
        "none": "(d) no prefetch (depth 0)",
    }
    eff: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.repeats):
        cpu_ms, gen_rate = cpu_and_generator_alone()
        print(
            f"run {r + 1}: CPU stages alone (draw + prepare) {cpu_ms:6.1f} ms/sample; "
            f"(a) generator alone {gen_rate:6.2f} samples/s"
        )
        for name, (depth, across) in variants.items():
            cfg = RunConfig(out=f"{d}/run{r}-{name}", prefetch=depth, **base)
            if stages.current_session().pipeline(cfg) is not st:
                raise RuntimeError("the output folder changed the config identity: the stages are not shared")
            folder = RunFolder(cfg)
            folder.open(resume=False)
            st.timings.clear()
            t = time.perf_counter()
            shards = list(range(cfg.num_shards))
            if across:  # run_shards' own path: the session's stream over the shards
                reports = stages.run_shards(cfg, shards, folder)
            else:
                reports = stages.run_shards(
                    cfg,
                    shards,
                    folder,
                    write=lambda k, cfg=cfg, folder=folder, depth=depth: stages.run_shard(
                        cfg, k, st, folder, prefetch=depth
                    ),
                )
            wall = time.perf_counter() - t
            written = sum(rep.count for rep in reports)
            eff[name].append(written / wall / gen_rate)
            write_ms = st.timings["write"] / max(written, 1) * 1000
            print(
                f"run {r + 1}: {labels[name]:36s} {written / wall:6.2f} samples/s  overlap efficiency "
                f"{eff[name][-1]:.3f}  ({written} samples in {wall:.1f} s; write {write_ms:.1f} ms/sample)"
            )
    for name in variants:
        goal = " (goal >= 0.95)" if name == "stream" else ""
        print(f"mean overlap efficiency, {labels[name][4:]}: {sum(eff[name]) / len(eff[name]):.3f}{goal}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
