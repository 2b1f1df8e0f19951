"""Evaluation speed, measured side by side in one run: the detector part and ``hands evaluate`` end to end.

* detector, 1 process: ``HandDetector.detect`` on the run's decoded images (512 px by default), samples/s and
  CPU ms per sample (the CPU time is what the machine's other load cannot change much);
* detector, pool: the same images through ``--pool`` spawned processes, one detector each (the way ``hands
  evaluate`` runs it), measured after the workers have started;
* the lite landmark model (``model_complexity=0``), 1 process, for comparison;
* end to end: ``evaluation.run.evaluate_run`` (read shards, decode, detect, match, label statistics,
  scores.parquet, report.html) in this process and with ``--pool`` workers: samples/s of the scoring pass
  (and after its first record, i.e. without the workers' start) and of the whole call.

Goal: >= 20 samples/s for the detector part at 512 px on the 2-core CPU machine.

Usage: python bench/evaluate.py [--run DIR | --samples 128] [--pool 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

try:
    import _benchpath  # noqa: F401 - first: fixes the import path
except ModuleNotFoundError:  # a spawned pool worker: it inherits the fixed path, without bench/ on it
    pass


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _images(run: str) -> list:
    import collections

    from evaluation.run import iter_raw_records, run_shards
    from sinks.records import decode_image

    counts = collections.Counter()
    out = []
    for raw in iter_raw_records(run_shards(run), counts):
        name = "image.jpg" if "image.jpg" in raw else "image.png"
        out.append(decode_image(raw[name]))
    return out


_DET = None


def _init(options: dict) -> None:
    global _DET
    from evaluation.detector import HandDetector

    _DET = HandDetector(**options)


def _detect(image) -> int:
    return len(_DET.detect(image))


def bench_single(images, **options) -> tuple[float, float, int]:
    """(samples/s, CPU ms per sample, hands found) of one detector in this process."""
    from evaluation.detector import HandDetector

    with HandDetector(**options) as det:
        det.detect(images[0])
        t, c = time.perf_counter(), time.process_time()
        found = sum(len(det.detect(im)) for im in images)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    return len(images) / wall, 1000 * cpu / len(images), found


def bench_pool(images, workers: int, **options) -> tuple[float, int]:
    """(samples/s, hands found) of ``workers`` spawned processes, timed after they have started."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(options,)) as pool:
        list(pool.map(_detect, images[:workers]))  # every worker has built its detector
        t = time.perf_counter()
        found = sum(pool.map(_detect, images, chunksize=4))
        wall = time.perf_counter() - t
    return len(images) / wall, found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run", default=None, help="an existing run (default: generate one in a temporary folder)"
    )
    ap.add_argument("--samples", type=int, default=128, help="samples to generate when --run is not given")
    ap.add_argument("--pool", type=int, default=2, help="detector processes for the pool measurement")
    args = ap.parse_args()

    tmp = None
    run = args.run
    if run is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-evaluate-")
        run = os.path.join(tmp.name, "run")
        cmd = [sys.executable, "-m", "flows.cli", "generate", "--out", run, "--samples", str(args.samples)]
        t = time.perf_counter()
        subprocess.run([*cmd, "--no-prefect", "-q"], check=True, capture_output=True)
        print(f"generated {args.samples} samples in {time.perf_counter() - t:.0f} s: {run}")
    images = _images(run)
    H, W = images[0].shape[:2]
    print(f"{len(images)} images of {W}x{H} px; usable cores {len(os.sched_getaffinity(0))}; load {_load()}")

    rate1, cpu1, found1 = bench_single(images)
    print(
        f"detector, 1 process (full model):   {rate1:6.1f} samples/s  {cpu1:5.1f} CPU ms/sample  "
        f"({found1} hands)"
    )
    rate_p, found_p = bench_pool(images, args.pool)
    print(f"detector, pool of {args.pool} (full model):   {rate_p:6.1f} samples/s  ({found_p} hands)")
    rate0, cpu0, found0 = bench_single(images, model_complexity=0)
    print(
        f"detector, 1 process (lite model):   {rate0:6.1f} samples/s  {cpu0:5.1f} CPU ms/sample  "
        f"({found0} hands)"
    )
    print(f"  ideal 2-core rate from CPU time (full model): {2000 / cpu1:.1f} samples/s")

    from evaluation.run import EvalConfig, evaluate_run

    for workers in (1, args.pool):
        with tempfile.TemporaryDirectory(prefix="bench-evaluate-out-") as out:
            t = time.perf_counter()
            res = evaluate_run(EvalConfig(run=run, out=out, quiet=True, workers=workers))
            total = time.perf_counter() - t
        s = res.summary
        print(
            f"evaluate end to end, {workers} worker(s): scoring pass {s['samples_per_s']:.1f} samples/s "
            f"(after the first record {s['steady_samples_per_s']:.1f}); "
            f"whole call {s['samples'] / total:.1f} samples/s ({total:.1f} s incl. start and report)"
        )
    print(
        f"quality: detection rate {s['detection_rate']:.3f} ({s['detected_hands']}/{s['eligible_hands']} "
        f"eligible hands), PCK@0.05 {s['pck_005']:.3f}, PCK@0.1 {s['pck_01']:.3f}, "
        f"Hand Conf. {s['hand_conf']:.3f}, MSE-2D {s['mse_2d']:.1f} px^2"
    )
    print(f"load at the end {_load()}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
