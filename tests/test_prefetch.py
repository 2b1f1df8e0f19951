"""The overlap primitives (``flows.prefetch``: ``Prefetch``, ``WriteBehind``) and the overlapped generation
run (``flows.stages.run_shard``)."""

import gc
import hashlib
import threading
import time
from pathlib import Path

import pytest

from flows import stages
from flows.prefetch import DEFAULT_DEPTH, Prefetch, WriteBehind
from pipeline.config import RunConfig
from pipeline.schema import SchemaError
from sinks.run import RunFolder

TIMEOUT = 10.0  # seconds; generous: nothing here should take more than a fraction of that


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("prefetch", "write-"))]


def _wait_until(cond, timeout: float = TIMEOUT) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


@pytest.fixture(autouse=True)
def _no_thread_left_behind():
    yield
    assert _wait_until(lambda: not _prefetch_threads(), 2.0), _prefetch_threads()


class Boom(Exception):
    pass


# -- Prefetch ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_items_come_in_order_each_once(depth):
    assert list(Prefetch(iter(range(50)), depth)) == list(range(50))
    with Prefetch((i * i for i in range(7)), depth) as ahead:
        assert list(ahead) == [i * i for i in range(7)]
        assert list(ahead) == []  # exhausted stays exhausted
    assert list(Prefetch([], depth)) == []


@pytest.mark.parametrize("depth", [0, 2])
def test_producer_exception_reaches_consumer_with_its_type(depth):
    def items():
        yield 1
        yield 2
        raise Boom("third item failed")

    got = []
    with pytest.raises(Boom, match="third item failed") as info, Prefetch(items(), depth) as ahead:
        for x in ahead:
            got.append(x)
    assert got == [1, 2]  # every item before the failure, then the failure itself
    assert type(info.value) is Boom
    assert any(entry.name == "items" for entry in info.traceback)  # the producer's traceback is kept
    assert not _prefetch_threads()  # the error joined the thread


@pytest.mark.parametrize("how", ["break", "raise"])
def test_consumer_stopping_early_stops_the_producer(how):
    state = {"produced": 0, "closed_on": None}

    def endless():
        try:
            while True:
                state["produced"] += 1
                yield state["produced"]
        finally:
            state["closed_on"] = threading.current_thread().name

    t0 = time.monotonic()
    with pytest.raises(Boom) if how == "raise" else _nothing():
        with Prefetch(endless(), 3, name="prefetch-test") as ahead:
            for x in ahead:
                if x == 4:
                    if how == "raise":
                        raise Boom
                    break
    assert time.monotonic() - t0 < TIMEOUT
    assert not _prefetch_threads()  # joined when the block was left
    assert state["closed_on"] == "prefetch-test"  # the generator was closed, on the producer thread
    assert state["produced"] <= 4 + 3 + 1  # taken + depth + at most one finished while stopping


def test_close_waits_for_the_item_in_progress_only():
    started, release = threading.Event(), threading.Event()

    def items():
        yield 0
        started.set()
        release.wait(TIMEOUT)  # an item in progress when the consumer stops
        yield 1
        raise AssertionError("the producer must not start another item after close()")

    ahead = Prefetch(items(), 2, name="prefetch-test")
    assert next(ahead) == 0
    assert started.wait(TIMEOUT)
    threading.Timer(0.2, release.set).start()
    t0 = time.monotonic()
    ahead.close()
    assert 0.1 < time.monotonic() - t0 < TIMEOUT
    assert not _prefetch_threads()
    ahead.close()  # idempotent
    with pytest.raises(StopIteration):
        next(ahead)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_at_most_depth_items_are_produced_ahead(depth):
    produced = [0]

    def items():
        for i in range(100):
            produced[0] += 1
            yield i

    with Prefetch(items(), depth) as ahead:
        for taken in range(1, 6):
            assert next(ahead) == taken - 1
            assert _wait_until(lambda t=taken: produced[0] == t + depth)  # it does run ahead ...
            time.sleep(0.05)
            assert produced[0] == taken + depth  # ... and no further


def test_depth_zero_is_plain_iteration_on_this_thread():
    seen = []

    def items():
        for i in range(3):
            seen.append((i, threading.current_thread() is threading.main_thread()))
            yield i

    ahead = Prefetch(items(), 0)
    assert not _prefetch_threads() and seen == []  # nothing runs ahead
    assert next(ahead) == 0 and seen == [(0, True)]
    assert list(ahead) == [1, 2] and seen == [(0, True), (1, True), (2, True)]


def test_producer_overlaps_the_consumer():
    """The next item is produced while the consumer holds the current one (no timing involved)."""
    second_started = threading.Event()

    def items():
        yield 0
        second_started.set()
        yield 1

    with Prefetch(items(), 1) as ahead:
        assert next(ahead) == 0
        assert second_started.wait(TIMEOUT)  # with depth 0 this would wait forever
        assert next(ahead) == 1


def test_abandoned_prefetch_stops_its_thread():
    ahead = Prefetch(iter(range(1000)), 2, name="prefetch-test")
    assert next(ahead) == 0
    del ahead
    gc.collect()
    assert _wait_until(lambda: not _prefetch_threads())


@pytest.mark.parametrize("depth", [-1, 1.5, True, "2"])
def test_bad_depth_is_refused(depth):
    with pytest.raises(ValueError, match="prefetch depth"):
        Prefetch([], depth)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- WriteBehind ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_write_behind_consumes_every_item_in_order(depth):
    got = []
    with WriteBehind(got.append, depth, name="write-test") as behind:
        for i in range(50):
            behind.put(i)
    assert got == list(range(50))  # leaving the block waited for all of them


def test_write_behind_depth_zero_consumes_before_put_returns():
    got = []
    behind = WriteBehind(lambda x: got.append((x, threading.current_thread() is threading.main_thread())), 0)
    behind.put(1)
    assert got == [(1, True)] and not _prefetch_threads()
    behind.close()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_write_behind_holds_at_most_depth_items(depth):
    gate, started, done = threading.Semaphore(0), threading.Semaphore(0), []

    def consume(x):
        started.release()
        gate.acquire()
        done.append(x)

    with WriteBehind(consume, depth, name="write-test") as behind:
        for i in range(depth):
            behind.put(i)  # room for ``depth`` items: none of these blocks
        assert started.acquire(timeout=TIMEOUT)  # the first is in progress
        blocked = threading.Thread(target=behind.put, args=(depth,), name="write-test-put")
        blocked.start()
        time.sleep(0.05)
        assert blocked.is_alive()  # the next put waits for room ...
        gate.release()
        blocked.join(TIMEOUT)
        assert not blocked.is_alive() and done == [0]  # ... which one finished item makes
        for _ in range(depth):
            gate.release()
    assert done == list(range(depth + 1))


@pytest.mark.parametrize("where", ["put", "close"])
def test_write_behind_error_is_raised_with_its_type(where):
    got = []

    def consume(x):
        if x == 2:
            raise Boom(f"cannot write {x}")
        got.append(x)

    with pytest.raises(Boom, match="cannot write 2") as info:
        with WriteBehind(consume, 2, name="write-test") as behind:
            for i in range(4 if where == "close" else 100):
                behind.put(i)
                if where == "put":
                    time.sleep(0.01)
    assert type(info.value) is Boom
    assert any(entry.name == "consume" for entry in info.traceback)  # the consumer's traceback is kept
    assert got == [0, 1]  # nothing after the failing item is consumed
    assert not _prefetch_threads()


def test_write_behind_abort_drops_waiting_items():
    started, release, got = threading.Event(), threading.Event(), []

    def consume(x):
        started.set()
        release.wait(TIMEOUT)
        got.append(x)

    with pytest.raises(Boom), WriteBehind(consume, 3, name="write-test") as behind:
        for i in range(3):
            behind.put(i)
        assert started.wait(TIMEOUT)
        threading.Timer(0.1, release.set).start()
        raise Boom  # the caller fails: the item in progress finishes, the waiting ones are dropped
    assert got == [0]
    assert not _prefetch_threads()
    with pytest.raises(RuntimeError, match="after close"):
        behind.put(9)


# -- the generation run ------------------------------------------------------------------------------------

# 12 samples in 2 shards of 3 batches; the filters skip some samples while drawing and some after rendering
BASE = {
    "samples": 12,
    "image_size": 128,
    "shard_size": 6,
    "batch_size": 2,
    "seed": 3,
    "min_hand_px": 20.0,  # the prior keeps hands at 0.3 m or more: at 128 px some are smaller than this
    "min_visible_joints": 12,  # some hands of seed 3 show fewer: a skip after rendering
}


def _run(out: Path, depth: int) -> dict:
    cfg = RunConfig(out=str(out), **BASE)
    folder = RunFolder(cfg)
    folder.open(resume=False)
    with stages.GenerationPipeline(cfg) as pipe:
        shards = list(range(cfg.num_shards))
        stages.run_shards(cfg, shards, folder, write=lambda k: stages.run_shard(cfg, k, pipe, folder, depth))
    return stages.finalize(cfg, folder)


def _shards(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


def test_prefetched_run_writes_the_same_bytes(tmp_path, monkeypatch):
    from sinks.webdataset_sink import ShardWriter

    threads: dict[tuple, set] = {}
    depth = [None]

    def traced(cls, name):
        method = getattr(cls, name)

        def wrapper(self, *args):
            threads.setdefault((name, depth[0]), set()).add(threading.current_thread().name)
            return method(self, *args)

        monkeypatch.setattr(cls, name, wrapper)

    traced(stages.GenerationPipeline, "prepare")
    traced(stages.GenerationPipeline, "generate")
    traced(ShardWriter, "write")
    write = ShardWriter.write

    def write_or_refuse(self, sample):  # some labels fail validation while writing: skips counted there too
        if sample.index % 4 == 1:
            raise SchemaError("refused by the test")
        return write(self, sample)

    monkeypatch.setattr(ShardWriter, "write", write_or_refuse)
    manifests = {}
    for depth[0] in (0, DEFAULT_DEPTH):
        manifests[depth[0]] = _run(tmp_path / f"depth{depth[0]}", depth[0])
    sequential, prefetched = manifests[0], manifests[DEFAULT_DEPTH]
    here = {threading.current_thread().name}
    assert threads["prepare", 0] == threads["generate", 0] == threads["write", 0] == here  # depth 0: all here
    assert threads["prepare", DEFAULT_DEPTH] == {"prefetch-shard-0", "prefetch-shard-1"}
    assert threads["generate", DEFAULT_DEPTH] == here  # the generator stays on the calling thread
    assert threads["write", DEFAULT_DEPTH] == {"write-shard-0", "write-shard-1"}
    counts = sequential["counts"]
    assert counts["written"] > 0 and sum(counts["skipped"].values()) > 0, counts  # both paths exercised
    assert len(counts["skipped"]) >= 3, counts  # skips while drawing, after rendering, while writing
    assert counts["skipped"].get("invalid_label"), counts
    assert prefetched["counts"] == counts
    assert list(prefetched["counts"]["skipped"].items()) == list(counts["skipped"].items())
    ref = _shards(tmp_path / "depth0")
    assert len(ref) == 2
    assert _shards(tmp_path / f"depth{DEFAULT_DEPTH}") == ref  # byte-identical shards
    assert [s["sha256"] for s in prefetched["shards"]] == [s["sha256"] for s in sequential["shards"]]


@pytest.mark.parametrize("where", ["prepare", "write"])
def test_prefetched_run_error_is_raised_with_its_type(tmp_path, monkeypatch, where):
    from sinks.webdataset_sink import ShardWriter

    cls = stages.GenerationPipeline if where == "prepare" else ShardWriter
    method, calls = getattr(cls, where), [0]

    def failing(self, *args):
        calls[0] += 1
        if calls[0] == 2:
            raise Boom(f"{where} failed")
        return method(self, *args)

    monkeypatch.setattr(cls, where, failing)
    cfg = RunConfig(out=str(tmp_path / "run"), **{**BASE, "min_hand_px": 0.0, "min_visible_joints": 0})
    folder = RunFolder(cfg)
    folder.open(resume=False)
    with pytest.raises(Boom, match=f"{where} failed"), stages.GenerationPipeline(cfg) as pipe:
        stages.run_shard(cfg, 0, pipe, folder, prefetch=2)
    assert not folder.is_complete(0)
    assert not list((tmp_path / "run").glob("*.tar"))


# -- the shard stream: across shard boundaries ---------------------------------------------------------------
def _streamed(out: Path, prefetch: int) -> dict:
    cfg = RunConfig(out=str(out), **{**BASE, "prefetch": prefetch})
    folder = RunFolder(cfg)
    folder.open(resume=False)
    with stages.Session():  # run_shards' default path: the session's pipeline and stream
        stages.run_shards(cfg, list(range(cfg.num_shards)), folder)
    return stages.finalize(cfg, folder)


def test_stream_prepares_and_generates_across_shard_boundaries(tmp_path, monkeypatch):
    from sinks.webdataset_sink import ShardWriter

    events: list[tuple] = []  # (what, shard, thread), in the order they happened
    lock = threading.Lock()

    def traced(cls, name, shard_of):
        method = getattr(cls, name)

        def wrapper(self, *args):
            with lock:
                events.append((name, shard_of(self, *args), threading.current_thread().name))
            return method(self, *args)

        monkeypatch.setattr(cls, name, wrapper)

    shard = BASE["shard_size"]
    traced(stages.GenerationPipeline, "prepare", lambda self, chunk, skips: chunk[0] // shard)
    traced(
        stages.GenerationPipeline,
        "generate",
        lambda self, batch, skips: batch[0].index // shard if batch else None,
    )
    traced(ShardWriter, "close", lambda self: self.report.shard)
    streamed = _streamed(tmp_path / "streamed", DEFAULT_DEPTH)
    here = threading.current_thread().name
    assert {t for what, _, t in events if what == "prepare"} == {"prefetch"}  # one thread for all shards
    assert {t for what, _, t in events if what == "generate"} == {here}
    order = [(what, k) for what, k, _ in events]
    commit0 = order.index(("close", 0))
    # before shard 0 is committed, shard 1's CPU stages have run and its first batch is generated
    assert ("prepare", 1) in order[:commit0] and ("generate", 1) in order[:commit0]
    sequential = _streamed(tmp_path / "sequential", 0)  # every stage in turn, shard by shard
    assert streamed["counts"] == sequential["counts"] and sum(streamed["counts"]["skipped"].values()) > 0
    assert _shards(tmp_path / "streamed") == _shards(tmp_path / "sequential")  # byte-identical shards


def test_stream_look_ahead_failure_costs_nothing(tmp_path, monkeypatch):
    """The next shard's first batch fails while it is generated ahead: the shard being written is committed,
    the stream stops and gives its claim back, and the next shard is written on its own (where, this time,
    the generator works)."""
    generate, failed = stages.GenerationPipeline.generate, []

    def once(self, batch, skips):
        if batch and batch[0].index >= BASE["shard_size"] and not failed:
            failed.append(batch[0].index)
            raise Boom("generator failed")
        return generate(self, batch, skips)

    monkeypatch.setattr(stages.GenerationPipeline, "generate", once)
    _streamed(tmp_path / "run", DEFAULT_DEPTH)
    assert failed  # the failure happened, and was the look-ahead's
    monkeypatch.undo()
    _streamed(tmp_path / "ref", DEFAULT_DEPTH)
    assert _shards(tmp_path / "run") == _shards(tmp_path / "ref")
    assert not list((tmp_path / "run").glob("*.claim*"))


def test_stream_error_releases_every_claim(tmp_path, monkeypatch):
    """A failure in a shard's own batch stops the run: the claim the stream took ahead on the next shard goes
    back, nothing half-written is left, no thread stays behind (fixture), and a rerun completes the run."""
    generate, seen = stages.GenerationPipeline.generate, []

    def failing(self, batch, skips):
        if batch and batch[0].index < BASE["shard_size"]:
            seen.append(batch[0].index)
            if len(seen) == 2:  # shard 0's second batch with samples: by now the stream holds shard 1 too
                raise Boom("generator failed")
        return generate(self, batch, skips)

    monkeypatch.setattr(stages.GenerationPipeline, "generate", failing)
    out = tmp_path / "run"
    with pytest.raises(Boom, match="generator failed"):
        _streamed(out, DEFAULT_DEPTH)
    assert not list(out.glob("*.claim*")) and not list(out.glob("*.tmp")) and not list(out.glob("*.tar"))
    monkeypatch.undo()
    cfg = RunConfig(out=str(out), **{**BASE, "prefetch": DEFAULT_DEPTH})
    folder = RunFolder(cfg)
    folder.open(resume=True)
    with stages.Session():
        stages.run_shards(cfg, list(range(cfg.num_shards)), folder)
    stages.finalize(cfg, folder)
    _streamed(tmp_path / "ref", DEFAULT_DEPTH)
    assert _shards(out) == _shards(tmp_path / "ref")


def test_stream_skips_a_shard_another_worker_holds(tmp_path):
    from sinks.run import try_claim

    cfg = RunConfig(out=str(tmp_path / "run"), **{**BASE, "prefetch": DEFAULT_DEPTH})
    folder = RunFolder(cfg, owner="me")
    folder.open(resume=False)
    other = try_claim(folder.store, "hands-000000.tar", "sibling", lease=60.0)
    try:
        with stages.Session():
            reports = stages.run_shards(cfg, [0, 1], folder, wait=False)
        assert [r.shard for r in reports] == [1] and not folder.is_complete(0)
    finally:
        other.release()
