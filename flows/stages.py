"""The generation run in plain Python (no Prefect): the pipeline of stages, one shard, finalisation.

``GenerationPipeline`` owns every stage of a run: the hand model, the pose source, the renderer, the
captioner, the tagger (with the generator's tokenizer), the generator and the alignment scorer. It builds them
from the run config through the stage registries (``load``) and closes them when its ``with`` block ends. The
data flow of a batch, each stage returning its own frozen part of the samples (``pipeline.sample``):

    sample -> pose -> render -> caption -> generate (-> score) -> write

``run_shard`` produces shard ``k`` of a run with it: the samples with indices in ``config.shard_indices(k)``
go through ``GenerationPipeline.prepare`` (sample, pose, render, caption: the CPU stages) and
``GenerationPipeline.generate``, then to the shard writer; a bad sample is skipped and counted by reason.

A ``Session`` is what one process keeps while it writes shards: its pipelines (one per run config, so models
load once per process) and where progress goes. The command line opens one for the whole command; a Prefect
flow run uses the session of its process, or opens its own. The Prefect flow (``flows.generate``) and
``hands generate --no-prefect`` call exactly this code.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from pipeline.config import RunConfig, resolve_device
from pipeline.errors import one_line
from pipeline.sample import Sample, Skipped
from pipeline.schema import SIDES, SchemaError
from sinks.run import RunFolder, wait_for
from sinks.webdataset_sink import ShardedOutput, ShardReport

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]
"""Called with the number of samples a batch processed (generated; its writing may still be under way)."""


@contextlib.contextmanager
def progress_bar(config: RunConfig, desc: str, quiet: bool, workers=None) -> Iterator[Progress]:
    """A tqdm bar over the run's samples for the ``with`` block; yields its update function (``Progress``) for
    this process's shards, and also polls the local ``workers``' counts (``flows.workers.LocalWorkers``)."""
    import threading

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=config.samples, unit="sample", desc=desc, disable=quiet, dynamic_ncols=True)
    lock = threading.Lock()
    stop = threading.Event()
    seen = [0]

    def update(n: int) -> None:
        with lock:
            bar.update(n)

    def poll() -> None:
        while not stop.wait(0.5):
            now = workers.done()
            if now > seen[0]:
                update(now - seen[0])
                seen[0] = now

    thread = None
    if workers is not None and workers.extra:
        thread = threading.Thread(target=poll, name="progress", daemon=True)
        thread.start()
    failed = False
    try:
        with logging_redirect_tqdm():  # log lines print above the bar, not through it
            yield update
    except BaseException:
        failed = True
        raise
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        if failed:  # an error ends the command with its one line: the bar goes away first
            bar.leave = False
        bar.close()


class GenerationPipeline:
    """Every stage of a run (module doc). ``load()`` builds them (models load here; idempotent), ``close()``
    (or leaving the ``with`` block) releases them. ``timings``: seconds spent per stage in this pipeline."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.timings: Counter = Counter()
        self.loaded = False
        self._run_info: dict | None = None

    def __enter__(self) -> GenerationPipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def load(self) -> GenerationPipeline:
        """Build every stage from the run config (once); returns this pipeline."""
        if self.loaded:
            return self
        from captioning import CAPTIONERS
        from generators import GENERATORS
        from pipeline.hand_model import HandModel
        from pipeline.sources import FilterConfig, make_source
        from pipeline.stage_configs import RealImageGeneratorConfig
        from pipeline.tagging import HandTokenTagger
        from renderers.base import RenderConfig, make_renderer

        config = self.config
        self.device = resolve_device(config.device)  # a GPU that is not there is one line
        hm = config.hand_model
        self.hand_model = HandModel(hm.mano_dir, device=self.device, standin_version=hm.standin_version)
        filters = FilterConfig(min_hand_px=config.min_hand_px, max_truncation=config.max_truncation)
        self.source = make_source(
            config.source,
            self.hand_model,
            run_seed=config.seed,
            run_tag=config.effective_run_tag(),
            cache_dir=config.cache_dir,
            image_size=(config.image_size, config.image_size),
            filters=filters,
        )
        self.render_config = RenderConfig(local_size=512)
        self.renderer = make_renderer(config.renderer, device=self.device, config=self.render_config)
        self.captioner = CAPTIONERS.build(config.captioner, device=self.device)
        generator = RealImageGeneratorConfig() if config.mode == "prepare" else config.generator
        self.generator = GENERATORS.build(generator, run=config, device=self.device)
        self.tagger = HandTokenTagger(tokenizer=self.generator.tokenizer)  # the positions TAS attends to
        self.scorer = None
        if config.min_alignment is not None:
            from evaluation.scorers import make_scorer

            self.scorer = make_scorer(config.scorer)
        self.loaded = True
        return self

    def close(self) -> None:
        """Release the stages' models, contexts and devices (the pipeline can be loaded again)."""
        if not self.loaded:
            return
        self.loaded = False
        for stage in (self.renderer, self.captioner, self.generator, self.scorer):
            if stage is not None:
                stage.close()

    def for_thread(self) -> GenerationPipeline:
        """The same stages with a ``timings`` of their own, for a background thread
        (merge them afterwards)."""
        twin = copy.copy(self)
        twin.timings = Counter()
        return twin

    # -- what the shard reports record --------------------------------------------------------------------
    def renderer_record(self) -> dict:
        """What the validator needs to re-render labels exactly."""
        import dataclasses

        return {"name": self.renderer.name, **dataclasses.asdict(self.render_config)}

    def run_info(self) -> dict:
        """What a shard report records about the stages that wrote it (the manifest takes it from there):
        renderer, hand model, source, generator and, when the run draws props, their kinds and
        ``pipeline.props.VERSION``."""
        if self._run_info is None:
            from pipeline.props import VERSION as props_version

            g = self.generator
            kinds = sorted(self.config.prop_kinds)
            self._run_info = {
                "renderer": self.renderer_record(),
                "hand_model": self.hand_model.info.to_json(),
                "source": self.source.inspect(),
                "generator": {
                    "name": g.name,
                    "version": g.version,
                    "weights_id": getattr(g, "weights_id", None),
                },
                "props": {"kinds": kinds, "version": props_version} if kinds else None,
            }
        return self._run_info

    # -- the stages, a batch at a time ----------------------------------------------------------------------
    def prepare(self, indices: Sequence[int], skips: Counter) -> list[Sample]:
        """The CPU stages of a batch: sample, pose, render, caption. Returns the samples ready for
        ``generate``; the others are counted in ``skips`` by reason."""
        samples = self.sample(indices, skips)
        samples = self.pose(samples, skips)
        samples = self.props(samples, skips)
        samples = self.render(samples, skips) if samples else []
        return self.caption(samples) if samples else []

    def sample(self, indices: Sequence[int], skips: Counter) -> list[Sample]:
        """Draw each index from the pose source (mode prepare: with its photo, letterboxed)."""
        from pipeline.sources import SkipSample, letterbox

        t0 = time.perf_counter()
        out = []
        for index in indices:
            try:
                drawn = self.source.sample(index)
                photo = None
                if (
                    self.config.mode == "prepare"
                ):  # training tuples: the real image, letterboxed, and its camera
                    drawn, photo = letterbox(drawn, self.config.image_size)
                out.append(Sample(drawn, photo=photo))
            except SkipSample as exc:
                _skip(skips, exc.reason, f"sample {index}", exc)
        self.timings["sample"] += time.perf_counter() - t0
        return out

    def pose(self, samples: Sequence[Sample], skips: Counter) -> list[Sample]:
        """Run the hand model and the source's filters (hands behind the camera, too small, truncated)."""
        from pipeline.sources import SkipSample, apply_filters, pose_hands

        t0 = time.perf_counter()
        out = []
        for s in samples:
            try:
                posed = pose_hands(s.drawn, self.hand_model)
                apply_filters(s.drawn, posed, self.source.filters)
                out.append(s.with_(posed=posed))
            except SkipSample as exc:
                _skip(skips, exc.reason, f"sample {s.index}", exc)
        self.timings["hand_model"] += time.perf_counter() - t0
        return out

    def props(self, samples: Sequence[Sample], skips: Counter) -> list[Sample]:
        """Draw each sample's props (``pipeline.props``, ``RunConfig.props``) from its ``props`` stream; a
        hand mesh without a wrist opening is skipped and counted as ``props``."""
        kinds = self.config.prop_kinds
        if not kinds:
            return list(samples)
        from pipeline.props import PropsError, draw_props
        from pipeline.seeding import stage_rng

        faces = self.hand_model.faces
        out = []
        for s in samples:
            hands = {
                side: None if s.hands[side] is None else (s.verts[i], s.hands[side].joints_3d)
                for i, side in enumerate(SIDES)
            }
            try:
                props = draw_props(
                    stage_rng(s.seed, "props"),
                    hands,
                    faces,
                    forearm="forearm" in kinds,
                    objects="objects" in kinds,
                    camera=(s.camera.K, tuple(s.image_size)),
                )
            except PropsError as exc:
                _skip(skips, "props", f"sample {s.index}", exc)
                continue
            out.append(s.with_(props=props))
        return out

    def render(self, samples: Sequence[Sample], skips: Counter) -> list[Sample]:
        """Render the batch; skip samples whose hands do not show (``not_visible``), show only on the
        letterbox padding (``no_overlap``) or show fewer joints than ``min_visible_joints``
        (per present hand)."""
        from renderers.base import RenderBatch, render_item

        t0 = time.perf_counter()
        results = self.renderer.render(RenderBatch([render_item(s) for s in samples], self.hand_model.faces))
        self.timings["render"] += time.perf_counter() - t0
        out = []
        for s, r in zip(samples, results, strict=True):
            if not (r.mask > 0).any():
                skips["not_visible"] += 1
                continue
            if "letterbox" in s.source and not ((r.mask > 0) & _valid_region(s)).any():
                skips["no_overlap"] += 1  # the hands render only onto the letterbox padding
                continue
            vis = [int(v.sum()) for v in r.joints_visible.values() if v is not None]
            if min(vis) < self.config.min_visible_joints:  # the visibility filter (per present hand)
                skips["too_few_visible_joints"] += 1
                continue
            out.append(s.with_(rendered=r))
        return out

    def caption(self, samples: Sequence[Sample]) -> list[Sample]:
        """Caption the batch and tag each caption's hand tokens with the generator's tokenizer."""
        import dataclasses

        t0 = time.perf_counter()
        captions = self.captioner.caption(samples)
        t1 = time.perf_counter()
        out = []
        for s, cap in zip(samples, captions, strict=True):
            tokens = tuple(self.tagger.tag(cap.text).hand_token_indices)
            out.append(s.with_(captioned=dataclasses.replace(cap, hand_token_indices=tokens)))
        self.timings["caption"] += t1 - t0
        self.timings["tag"] += time.perf_counter() - t1
        return out

    def generate(self, samples: Sequence[Sample], skips: Counter) -> list[Sample]:
        """Generate the images of prepared samples; returns the samples that made it.

        With ``min_alignment``, each image is scored against its label; the samples below it are generated
        again, together, from the streams of their next try (``Sample.attempt``), at most ``max_tries`` tries
        in all; those still below are skipped as ``misaligned``. Every kept sample carries the verdict on its
        image in ``quality`` (with ``try``, 1-based). A sample the generator answers with ``Skipped`` (e.g.
        out of memory for a single image) is counted under its reason, and the batch goes on."""
        done: dict[int, Sample] = {}  # position in ``samples`` -> the sample with its accepted image
        pending = list(enumerate(samples))
        tries = 1 if self.scorer is None else self.config.max_tries
        for attempt in range(tries):
            t0 = time.perf_counter()
            batch = [s.with_(attempt=attempt) for _, s in pending]
            made = []
            for (i, s), g in zip(pending, self.generator.generate(batch), strict=True):
                if isinstance(g, Skipped):
                    _skip(skips, g.reason, s.key, g.detail)
                else:
                    made.append((i, s.with_(generated=g, attempt=attempt)))
            pending = [(i, s) for i, s in made]
            made = [s for _, s in made]
            t1 = time.perf_counter()
            self.timings["generate"] += t1 - t0
            if self.scorer is None:
                done.update((i, s) for (i, _), s in zip(pending, made, strict=True))
                pending = []
                break
            judged = [self._judge(s, attempt) for s in made]
            done.update((i, s) for (i, _), (s, ok) in zip(pending, judged, strict=True) if ok)
            pending = [(i, s) for (i, _), (s, ok) in zip(pending, judged, strict=True) if not ok]
            self.timings["score"] += time.perf_counter() - t1
            if not pending:
                break
        for _, s in pending:  # below min_alignment after the last try
            skips["misaligned"] += 1
            logger.info(
                "skipped %s: alignment %s below %s after %d tries",
                s.key,
                s.quality.get("alignment"),
                self.config.min_alignment,
                tries,
            )
        return [done[i] for i in sorted(done)]

    def _judge(self, s: Sample, attempt: int) -> tuple[Sample, bool]:
        """``s`` with the scorer's verdict on its image in ``quality``, and whether it passes."""
        result = self.scorer.score(s.image, s)
        judged = s.with_(quality={**result.quality(), "try": attempt + 1})
        ok = result.passes(self.config.min_alignment)
        if not ok:
            logger.debug(
                "%s: try %d alignment %s below %s",
                s.key,
                attempt + 1,
                result.alignment,
                self.config.min_alignment,
            )
        return judged, ok


def _skip(skips: Counter, reason: str, what: str, detail) -> None:
    skips[reason] += 1
    logger.info("skipped %s: %s", what, detail)


def _valid_region(s: Sample):
    from pipeline.imaging import Letterbox

    return Letterbox.from_json(s.source["letterbox"]).valid_region()


class Session:
    """What one process keeps while it writes shards: its pipelines, one per run config (models load once per
    process), and ``progress`` (where batch counts go; None: nowhere). ``with Session(...)`` makes it the
    current session of the code inside (``current_session``; the Prefect tasks of a flow run in this process
    included) and closes every pipeline it opened when the block ends."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress
        self._pipelines: dict[str, GenerationPipeline] = {}
        self._streams: dict[str, ShardStream] = {}
        self._token = None

    def pipeline(self, config: RunConfig) -> GenerationPipeline:
        """The pipeline of ``config`` in this session (``load()`` it to build its stages; once loaded, it
        stays loaded until the session ends)."""
        key = config.config_sha256()
        if key not in self._pipelines:
            self._pipelines[key] = GenerationPipeline(config)
        return self._pipelines[key]

    @contextlib.contextmanager
    def streaming(self, config: RunConfig, folder: RunFolder, shards) -> Iterator[ShardStream | None]:
        """For the ``with`` block, ``stream(config)`` is a ``ShardStream`` over ``shards`` (the shards this
        process means to write, in order; none with ``config.prefetch`` 0). It is closed when the block
        ends."""
        key = config.config_sha256()
        todo = [k for k in shards if not folder.is_complete(k)]
        if config.prefetch == 0 or key in self._streams or not todo:  # an open stream of this run is kept
            yield self._streams.get(key)
            return
        pipe = self.pipeline(config).load()
        self._streams[key] = stream = ShardStream(config, pipe, folder, todo, config.prefetch)
        try:
            yield stream
        finally:
            stream.close()
            self._streams.pop(key, None)

    def stream(self, config: RunConfig) -> ShardStream | None:
        """The open ``ShardStream`` of ``config`` (``streaming``), or None."""
        return self._streams.get(config.config_sha256())

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()
        while self._pipelines:
            _, pipe = self._pipelines.popitem()
            pipe.close()

    def __enter__(self) -> Session:
        self._token = _SESSION.set(self)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        finally:
            _SESSION.reset(self._token)


_SESSION: contextvars.ContextVar[Session | None] = contextvars.ContextVar("handgen_session", default=None)


@contextlib.contextmanager
def session(progress: Progress | None = None) -> Iterator[Session]:
    """The current session (``Session``) for the ``with`` block, or a new one that ends with it."""
    current = _SESSION.get()
    if current is not None:
        yield current
        return
    with Session(progress) as new:
        yield new


def current_session() -> Session | None:
    """The session of the innermost ``with Session(...)`` around the caller, or None."""
    return _SESSION.get()


def output_for(config: RunConfig) -> ShardedOutput:
    return ShardedOutput(config.out, prefix=config.shard_prefix, lossless=config.lossless)


def shard_chunks(config: RunConfig, k: int) -> list[list[int]]:
    """The sample indices of shard ``k`` in batches of ``config.batch_size``, in order."""
    indices = list(config.shard_indices(k))
    return [indices[i : i + config.batch_size] for i in range(0, len(indices), config.batch_size)]


class ShardStream:
    """One worker's planned shards as one stream across shard boundaries, so that the generator never waits.

    A background thread takes the next shard of ``shards`` that nobody holds (its claim) and runs the CPU
    stages (``GenerationPipeline.prepare``) of its batches, up to ``depth`` batches ahead of the generator:
    near the end of a shard it is already preparing the next one. Another thread encodes and writes ``depth``
    batches behind. At the end of a shard, while its last batches are written, the generator already makes the
    first batch of the next shard (``run_shard``). ``take(k)`` hands the stream's claim on shard ``k`` to
    ``run_shard``; ``close()`` stops both threads and releases every claim not handed out.
    """

    def __init__(
        self, config: RunConfig, pipeline: GenerationPipeline, folder: RunFolder, shards, depth: int
    ) -> None:
        from flows.prefetch import Prefetch, WriteBehind

        self.config, self.pipeline, self.folder = config, pipeline, folder
        self.shards = list(shards)
        self.closed = False
        self._lock = threading.Lock()
        self._unhanded: list = []  # claims taken by the producer and not yet handed to run_shard
        self._next: tuple | None = None  # the next item taken from the prefetch, not yet used
        self._ahead_claim: tuple | None = None  # (k, claim): the shard whose first batch was generated ahead
        self.ready: tuple | None = None  # (k, samples, skips, timings): a batch generated ahead (run_shard)
        self.ahead = Prefetch(self._produce(), depth, name="prefetch")
        self.behind = WriteBehind(_write_job, depth, name="write-behind")

    def _produce(self):  # on the prefetch thread
        cpu = self.pipeline.for_thread()
        for k in self.shards:
            if self.folder.is_complete(k):
                continue
            claim = self.folder.claim(self.folder.output.shard_name(k))
            if claim is None:  # another worker holds it
                continue
            if self.folder.is_complete(k):
                claim.release()
                continue
            with self._lock:
                self._unhanded.append(claim)
            for chunk in shard_chunks(self.config, k):  # the shard's first batch carries its claim
                cpu.timings, skips = Counter(), Counter()
                yield (k, claim, chunk, cpu.prepare(chunk, skips), skips, cpu.timings)
                claim = None

    def plans(self, k: int) -> bool:
        """Whether shard ``k`` is the stream's to decide (it is planned and the stream is open)."""
        return not self.closed and k in self.shards

    def _peek(self) -> tuple | None:
        if self._next is None:
            self._next = next(self.ahead, None)
        return self._next

    def take(self, k: int):
        """The stream's claim on shard ``k``, when ``k`` is the next shard it holds; None when the stream
        passed ``k`` over (another worker held it, or it was complete) or has no shard left."""
        if self._ahead_claim is not None:  # the next shard's first batch was generated ahead
            nxt, claim = self._ahead_claim
        else:
            item = self._peek()
            nxt, claim = (None, None) if item is None else item[:2]
        if nxt is None or nxt < k or claim is None:  # none left, or one nobody asked for: done here
            self.close()  # (run_shard then claims shards on its own)
            return None
        if nxt != k:
            return None
        if self._ahead_claim is not None:
            self._ahead_claim = None
        else:
            self._next = (k, None, *self._next[2:])  # its first batch is still to be taken (``next_batch``)
        with self._lock:
            self._unhanded.remove(claim)
        return claim

    def next_start(self) -> tuple[int, object] | None:
        """The next shard the stream holds, ``(k, claim)``, once the current shard's batches are taken; None
        when there is none. It stays the next: ``take(k)`` hands it out."""
        if self._ahead_claim is not None:
            return self._ahead_claim
        item = self._peek()
        return None if item is None or item[1] is None else item[:2]

    def next_batch(self, k: int) -> tuple:
        """The next prepared batch of shard ``k``: (chunk, samples, skips, timings). The first batch of a
        shard not handed out yet (generated ahead, ``next_start``) leaves its claim to ``take``."""
        item, self._next = self._peek(), None
        if item is None or item[0] != k:  # cannot happen: the producer yields every batch in order
            raise RuntimeError(
                f"shard stream out of order: {None if item is None else item[0]} for shard {k}"
            )
        if item[1] is not None:
            self._ahead_claim = item[:2]
        return item[2:]

    def close(self) -> None:
        """Stop the threads and release the claims not handed out. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.ahead.close()
        self.behind.abort()
        with self._lock:
            claims, self._unhanded = self._unhanded, []
        for claim in claims:
            claim.release()
        self._next = self.ready = self._ahead_claim = None


def _write_job(job) -> None:
    """The write-behind thread's work: a batch's records into its shard's writer."""
    writer, views, samples, write_skips, write_timings = job
    from sinks.records import view_records

    for s in samples:
        tw = time.perf_counter()
        try:
            for record in view_records(s, views):  # views global,local: + its local record
                writer.write(record)
        except SchemaError as exc:
            write_skips["invalid_label"] += 1
            logger.warning("skipped %s: %s", s.key, exc)
        write_timings["write"] += time.perf_counter() - tw


def run_shard(
    config: RunConfig,
    k: int,
    pipeline: GenerationPipeline,
    folder: RunFolder | None = None,
    prefetch: int | None = None,
    progress: Progress | None = None,
    stream: ShardStream | None = None,
) -> ShardReport | None:
    """Write shard ``k`` with ``pipeline`` (loaded here if it is not yet) under its claim (``sinks.run``).
    Returns its report, or None when this call wrote nothing: the shard is complete already, or another worker
    holds a live claim on it. ``progress`` hears the samples of each batch once they are generated.

    The generator runs on this thread; the CPU stages run ahead and the writing behind on background threads:
    with ``stream`` (a ``ShardStream`` that plans ``k``: the worker's shards streamed across shard
    boundaries), or else on threads of this shard alone, up to ``prefetch`` batches ahead and behind
    (``flows.prefetch``; default ``config.prefetch``; 0 runs every stage in turn on this thread). The shard's
    bytes, its sample order and its skip counts are the same either way."""
    from flows.prefetch import Prefetch, WriteBehind

    depth = config.prefetch if prefetch is None else prefetch
    folder = folder or RunFolder(config)
    if folder.is_complete(k):
        folder.report(k)  # refuses a shard of another run
        return None
    pipeline.load()  # models load before the claim: a bad setting fails with nothing begun
    folder.check_stages(pipeline.run_info())  # a resume with other stages than the written shards': refused
    claim = None
    if stream is not None and stream.plans(k):
        claim = stream.take(k)
        if claim is None and not stream.closed:
            return None  # the stream passed it over: another worker holds it, or it is complete
    if claim is None:
        stream = None  # this shard alone
    try:
        with folder.writing(k, claim) as held:
            if held is None:
                return None
            claim, writer = held
            writer.report.run.update(pipeline.run_info())
            t0 = time.perf_counter()
            with writer:
                if stream is not None:
                    skips = _write_batches(config, k, pipeline, claim, writer, stream, progress)
                else:

                    def prepared(chunks):  # on the prefetch thread
                        cpu = pipeline.for_thread()
                        for chunk in chunks:
                            cpu.timings, batch_skips = Counter(), Counter()
                            yield chunk, cpu.prepare(chunk, batch_skips), batch_skips, cpu.timings

                    with (
                        Prefetch(
                            prepared(shard_chunks(config, k)), depth, name=f"prefetch-shard-{k}"
                        ) as ahead,
                        WriteBehind(_write_job, depth, name=f"write-shard-{k}") as behind,
                    ):
                        skips = _generate_shard(config, k, pipeline, claim, writer, ahead, behind, progress)
                writer.add_skips(skips)
    except BaseException:
        if stream is not None:
            stream.close()  # its claims on later shards go back; they are written without the stream
        raise
    report = writer.report
    logger.info(
        "shard %d: %d written, %d skipped in %.1f s",
        k,
        report.count,
        sum(skips.values()),
        time.perf_counter() - t0,
    )
    return report


def _generate_shard(config, k, pipeline, claim, writer, batches, behind, progress) -> Counter:
    """Generate the prepared ``batches`` of shard ``k`` (chunk, samples, skips, timings) and hand them to the
    write-behind ``behind``; returns the shard's skip counts once every batch is written."""
    counted: list[tuple[Counter, Counter, Counter]] = []  # per batch: skips before/while writing, timings
    for chunk, batch, batch_skips, batch_timings in batches:
        claim.check()
        pipeline.timings.update(batch_timings)
        done = pipeline.generate(batch, batch_skips) if batch else []
        counted.append((batch_skips, Counter(), Counter()))
        behind.put((writer, config.views, done, *counted[-1][1:]))
        if progress is not None:  # the batch is generated; its writing may still be under way
            progress(len(chunk))
    behind.flush()
    return _merge(pipeline, counted)


def _write_batches(config, k, pipeline, claim, writer, stream: ShardStream, progress) -> Counter:
    """``_generate_shard`` on the stream: the batch generated ahead (if it is this shard's) first; at the end,
    the next shard's first batch is generated while this shard's last batches are written."""
    counted: list[tuple[Counter, Counter, Counter]] = []

    def generate(claim, chunk, batch, batch_skips):
        claim.check()
        done = pipeline.generate(batch, batch_skips) if batch else []
        if progress is not None:  # the batch is generated; its writing may still be under way
            progress(len(chunk))
        return done

    n, i, done = len(shard_chunks(config, k)), 0, None
    if stream.ready is not None and stream.ready[0] == k:  # generated at the end of the previous shard
        _, done, batch_skips, batch_timings = stream.ready
        stream.ready, i = None, 1
    while True:
        if done is not None:
            counted.append((batch_skips, Counter(), Counter()))
            stream.behind.put((writer, config.views, done, *counted[-1][1:]))
            pipeline.timings.update(batch_timings)
        if i == n:
            break
        chunk, batch, batch_skips, batch_timings = stream.next_batch(k)
        done = generate(claim, chunk, batch, batch_skips)
        i += 1
    try:  # keep the generator busy while this shard's last batches are written: the next shard's first batch
        following = stream.next_start()
        if following is not None:
            k2, claim2 = following
            chunk, batch, batch_skips, batch_timings = stream.next_batch(k2)
            stream.ready = (k2, generate(claim2, chunk, batch, batch_skips), batch_skips, batch_timings)
    except Exception as exc:  # the look-ahead never costs this shard: the next one is written on its own
        logger.info("stopped preparing shards ahead: %s", one_line(exc))
        stream.behind.flush()
        stream.close()
        return _merge(pipeline, counted)
    stream.behind.flush()
    return _merge(pipeline, counted)


def _merge(pipeline: GenerationPipeline, counted) -> Counter:
    """A shard's skip counts from its batches' counters (in batch order); timings go to the pipeline."""
    skips: Counter = Counter()
    for before, writing, timings in counted:
        skips.update(before)
        skips.update(writing)
        pipeline.timings.update(timings)
    return skips


def run_shards(
    config: RunConfig,
    shards: list[int],
    folder: RunFolder,
    write: Callable[[int], ShardReport | None] | None = None,
    wait: bool = True,
    poll: float = 2.0,
) -> list[ShardReport]:
    """Write every shard of ``shards`` that no other worker holds, then (``wait``) wait for the others,
    taking over any whose worker died. ``write(k)`` writes one shard (default: ``run_shard`` with the current
    session's pipeline and progress; the Prefect flow passes its task). Returns the reports of the shards this
    call wrote."""
    if write is None:  # the current session's pipeline (or, without one, a session for this call)
        with session() as current, current.streaming(config, folder, shards):
            return run_shards(config, shards, folder, _session_writer(current, config, folder), wait, poll)
    reports: list[ShardReport] = []

    def take(k: int) -> bool:
        rep = write(k)
        if rep is not None:
            reports.append(rep)
        return rep is not None

    for k in shards:
        if folder.is_complete(k):
            folder.report(k)  # a complete shard must be this run's: refuses a foreign one
        else:
            take(k)
    if wait:
        wait_for(lambda: [k for k in shards if not folder.is_complete(k)], take, poll=poll)
    return reports


def _session_writer(current: Session, config: RunConfig, folder: RunFolder) -> Callable:
    def write(k: int) -> ShardReport | None:
        pipe, stream = current.pipeline(config), current.stream(config)
        return run_shard(config, k, pipe, folder, progress=current.progress, stream=stream)

    return write


def finalize(
    config: RunConfig, folder: RunFolder | None = None, wait: bool = True, poll: float = 1.0
) -> dict:
    """Write index and manifest for all shards of the run (all must be complete). Loads no models: the run's
    records come from ``run.json`` and the shard reports. When another worker is finalising, waits for its
    manifest (``wait``)."""
    folder = folder or RunFolder(config)
    while True:
        manifest = folder.finalize()
        if manifest is not None or not wait:
            return manifest
        time.sleep(poll)


def write_preview(config: RunConfig, manifest: dict) -> str | None:
    """Write the run's ``preview.png`` contact sheet (16 records); None when every sample was skipped."""
    if not manifest["counts"]["written"]:
        logger.warning("every sample was skipped: no preview")
        return None
    from sinks.preview import preview

    path = output_for(config).store.path("preview.png")
    preview(config.out, path, n=16)
    return path
