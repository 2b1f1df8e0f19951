"""Bounded overlap of work on background threads: ``Prefetch`` runs a producer ahead of its consumer,
``WriteBehind`` runs a consumer behind its producer.

The generation run (``flows.stages.run_shard`` and its ``ShardStream``, across shard boundaries) uses both so
that the generator never waits: ``Prefetch`` draws, renders and captions the next batches while the generator
works on the current one, and ``WriteBehind`` encodes and writes the previous batch meanwhile. The generator
itself stays on the calling thread (the one that built the models and owns the GPU).

``Prefetch(items, depth)`` pulls the items of ``items`` (typically a generator doing CPU work) on a thread of
its own:

* Items come out in the order ``items`` yields them, each exactly once.
* At most ``depth`` items are produced ahead of the consumer: finished and waiting, or in progress. An item
  the consumer has taken no longer counts. So memory is bounded by ``depth`` items plus the one in use.
* An exception raised by ``items`` reaches the consumer as that very exception object (same type, the
  producer's traceback kept), at the position where it happened: every item before it is delivered first.
* ``close()`` (or leaving the ``with`` block, normally or by an exception) stops the producer: it starts no
  new item, closes ``items`` (so a generator's ``finally`` blocks run, on the producer thread) and the thread
  is joined. An item already in progress is finished first (a thread cannot be interrupted), so ``close()``
  waits for at most one item. Reaching the end, or an exception from ``items``, joins the thread too.

``WriteBehind(consume, depth)`` calls ``consume(item)`` for each ``put(item)``, in order, on a thread of its
own:

* At most ``depth`` items are put and not yet consumed (waiting or in progress): ``put`` blocks until one
  finishes.
* The first exception raised by ``consume`` is raised, as that very object, by the next ``put`` or by
  ``close()``; the items put after the failing one are dropped, never consumed.
* ``flush()`` waits until every item put so far is consumed and raises a pending error; the thread stays.
* Leaving the ``with`` block normally waits for every item put (``close()``) and raises a pending error;
  leaving it by an exception drops the waiting items, waits for the one in progress (``abort()``) and lets
  the original exception propagate. Either way the thread is joined.

``depth=0`` runs no thread at all: ``Prefetch`` pulls each item on the consumer's thread at ``next()``, and
``WriteBehind.put`` consumes the item before it returns, exactly as plain sequential code would (the reference
behaviour).

Use both as context managers, so that a consumer that stops early or raises never leaves a thread behind::

    with Prefetch(batches(), depth=2) as ahead, WriteBehind(write, depth=2) as behind:
        for batch in ahead:
            behind.put(work(batch))

The threads share every object with the caller: what ``items`` or ``consume`` touches must not be touched by
anyone else at the same time (give each thread counters of its own and merge them once they are handed back).
Python threads overlap where the work releases the GIL: native code, I/O, sleeps, GPU kernels.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_DEPTH = 2  # one item ready and one in progress while the consumer works on a third

_ITEM, _END, _ERROR = "item", "end", "error"


class Prefetch(Generic[T]):
    """Iterate ``items`` with up to ``depth`` items produced ahead on a background thread (module doc)."""

    def __init__(self, items: Iterable[T], depth: int = DEFAULT_DEPTH, name: str = "prefetch") -> None:
        self.depth = _check_depth(depth)
        self._items = iter(items)
        self._done = False
        self._thread: threading.Thread | None = None
        if depth == 0:
            return
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Semaphore(depth)  # one per item produced and not yet taken
        self._stop = threading.Event()
        # the thread holds the shared state, not ``self``: an abandoned Prefetch is collected, and stops it
        self._thread = threading.Thread(
            target=_produce, args=(self._items, self._queue, self._slots, self._stop), name=name, daemon=True
        )
        self._thread.start()

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        if self._thread is None:  # depth 0: the item is produced here and now
            try:
                return next(self._items)
            except BaseException:
                self._done = True
                raise
        kind, value = self._queue.get()
        if kind == _ITEM:
            self._slots.release()
            return value
        self._done = True
        self._thread.join()  # the producer has returned (it puts nothing after the end or an error)
        if kind == _END:
            raise StopIteration
        raise value  # the producer's own exception object, with its traceback

    def close(self) -> None:
        """Stop the producer and wait for its thread (at most the item in progress). Idempotent."""
        self._done = True
        if self._thread is None:
            _close(self._items)
            return
        self._stop.set()
        self._slots.release()  # wakes a producer waiting for room
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a safety net for a Prefetch used without ``with``: stop, do not wait
        stop = getattr(self, "_stop", None)
        if stop is not None and not stop.is_set():
            stop.set()
            self._slots.release()


def _produce(items: Iterator, out: queue.SimpleQueue, slots: threading.Semaphore, stop: threading.Event):
    """The producer thread: one slot per item; the end or an error is the last thing it puts."""
    try:
        while True:
            slots.acquire()
            if stop.is_set():
                break
            try:
                item = next(items)
            except StopIteration:
                out.put((_END, None))
                return
            out.put((_ITEM, item))
    except BaseException as exc:  # everything goes to the consumer, which re-raises it
        out.put((_ERROR, exc))
        return
    _close(items)  # stopped early: let a generator clean up


def _close(items: Iterator) -> None:
    close = getattr(items, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # nobody is listening any more: log it rather than lose it
        logger.exception("error while closing a prefetched iterator")


class WriteBehind(Generic[T]):
    """Call ``consume(item)`` for each ``put(item)``, in order, on a background thread (module doc)."""

    def __init__(
        self, consume: Callable[[T], object], depth: int = DEFAULT_DEPTH, name: str = "write-behind"
    ) -> None:
        self.depth = _check_depth(depth)
        self._consume = consume
        self._closed = False
        self._errors: list[BaseException] = []  # the worker's first error, raised once by put() or close()
        self._raised = False
        self._thread: threading.Thread | None = None
        if depth == 0:
            return
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Semaphore(depth)  # one per item put and not yet consumed
        self._stop = threading.Event()
        args = (consume, self._queue, self._slots, self._stop, self._errors)
        self._thread = threading.Thread(target=_drain, args=args, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        """Hand ``item`` to the consumer; blocks while ``depth`` items are pending. Raises the consumer's
        error, if it failed on an earlier item."""
        if self._closed:
            raise RuntimeError("WriteBehind.put after close")
        if self._thread is None:
            self._consume(item)
            return
        self._slots.acquire()
        if self._errors:
            self._slots.release()
            self._raise()
        self._queue.put((_ITEM, item))

    def flush(self) -> None:
        """Wait until every item put so far is consumed (the thread keeps running), and raise the consumer's
        error if any."""
        if self._thread is not None:
            for _ in range(self.depth):  # every slot free again: nothing waiting, nothing in progress
                self._slots.acquire()
            for _ in range(self.depth):
                self._slots.release()
        if self._errors and not self._raised:
            self._raise()

    def close(self) -> None:
        """Wait until every item put is consumed, join the thread, and raise the consumer's error if any."""
        self._finish(drop=False)
        if self._errors and not self._raised:
            self._raise()

    def abort(self) -> None:
        """Drop the items still waiting, wait for the one in progress and join the thread; raises nothing."""
        self._finish(drop=True)

    def _finish(self, drop: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        if drop:
            self._stop.set()
        self._queue.put((_END, None))
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _raise(self) -> None:
        self._raised = True
        raise self._errors[0]

    def __enter__(self) -> WriteBehind[T]:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # a safety net for a WriteBehind used without ``with``: drop, do not wait
        if getattr(self, "_thread", None) is not None and not self._closed:
            self._stop.set()
            self._queue.put((_END, None))


def _drain(
    consume: Callable,
    items: queue.SimpleQueue,
    slots: threading.Semaphore,
    stop: threading.Event,
    errors: list,
) -> None:
    """The write-behind thread: consume until the end mark; after an error or a stop, drop the rest."""
    while True:
        kind, item = items.get()
        if kind == _END:
            return
        try:
            if not errors and not stop.is_set():
                consume(item)
        except BaseException as exc:  # everything goes to the caller, which re-raises it
            errors.append(exc)
        finally:
            del item
            slots.release()


def _check_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"prefetch depth must be an integer >= 0, got {depth!r}")
    return depth
