"""Local worker processes for ``hands generate --workers N``.

The extra workers are plain processes (``multiprocessing`` spawn) that claim and write shards of the same run
folder as the main process, through the same claims (``sinks.run``): no shard is written twice, and a worker
that dies only delays its shard until its lease expires, when another worker takes it over. Extra workers
never wait for others and never finalise; the main process waits for every shard and finalises once.

Each process gets an equal share of the CPU cores for its torch and llvmpipe threads, so N processes do not
oversubscribe the machine. A worker dies with its parent (Linux ``PR_SET_PDEATHSIG``), so a killed run leaves
no orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys

logger = logging.getLogger(__name__)


def _threads_per_process(processes: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, processes))


def limit_threads(processes: int) -> None:
    """Give this process its share of the cores: torch's intra-op threads, and llvmpipe's (``LP_NUM_THREADS``,
    read when a GL context starts; a value the user set is kept). Call before any heavy work."""
    import torch

    n = _threads_per_process(processes)
    torch.set_num_threads(n)
    os.environ.setdefault("LP_NUM_THREADS", str(n))  # the one place this process's environment is set


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent exits (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def worker_main(
    config: dict, counter, processes: int, parent: int, verbose: bool = False, resume: bool = True
) -> None:
    """Entry point of one extra worker: write every shard nobody holds, then exit (0 done, 2 user error)."""
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        sys.exit(1)
    limit_threads(processes)  # before GL starts (workers inherit the parent's environment)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s[worker]: %(message)s",
    )
    from flows import stages
    from pipeline.config import RunConfig
    from pipeline.errors import HandgenError
    from sinks.run import RunFolder

    cfg = RunConfig(**config)  # the main process's config, already valid
    try:

        def progress(n: int) -> None:
            with counter.get_lock():
                counter.value += n

        with stages.Session(progress) as session:
            session.pipeline(
                cfg
            ).load()  # the models first, then the folder's identity, as the main process does
            folder = RunFolder(cfg)
            folder.open(resume=resume)
            stages.run_shards(cfg, list(range(cfg.num_shards)), folder, wait=False)
    except HandgenError as exc:  # the main process meets the same error and reports it: one line in all
        if RunFolder(cfg).finished():  # the others finished the whole run before this worker got going
            logger.info("worker stops: the run is finished")
            return
        logger.info("worker stops: %s", exc.one_line())
        sys.exit(2)


class LocalWorkers:
    """``extra`` worker processes for the duration of a ``with`` block (0: none). ``done()``: the samples
    they processed so far."""

    def __init__(self, cfg, extra: int, verbose: bool = False, resume: bool = True) -> None:
        self.cfg, self.extra, self.verbose, self.resume = cfg, max(0, extra), verbose, resume
        self._ctx = mp.get_context("spawn")
        self._counter = self._ctx.Value("q", 0)
        self._procs: list = []

    def done(self) -> int:
        return int(self._counter.value)

    def __enter__(self) -> LocalWorkers:
        if not self.extra:
            return self
        processes = self.extra + 1
        limit_threads(processes)
        args = (
            self.cfg.model_dump(mode="json"),
            self._counter,
            processes,
            os.getpid(),
            self.verbose,
            self.resume,
        )
        # workers ignore Ctrl-C (SIG_IGN is inherited from the start on): the main process handles it, prints
        # its one line and stops them with SIGTERM
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for i in range(self.extra):
                p = self._ctx.Process(
                    target=worker_main, args=args, name=f"hands-worker-{i + 1}", daemon=False
                )
                p.start()
                self._procs.append(p)
        finally:
            signal.signal(signal.SIGINT, previous)
        logger.info("started %d extra local workers", self.extra)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for p in self._procs:
            if exc_type is not None and p.is_alive():
                p.terminate()
            p.join()
        failed = [p for p in self._procs if p.exitcode not in (0, None)]
        if failed and exc_type is None:
            logger.warning(
                "%d local worker(s) exited with codes %s; the main process took over their shards",
                len(failed),
                [p.exitcode for p in failed],
            )
