"""The generation run in plain Python (no Prefect): stage objects, one shard, finalisation.

``Stages`` builds every model once (hand model, source, renderer, captioner, tagger, generator); a worker
process keeps one per run config (``stages_for``). ``run_shard`` produces shard ``k`` of a run: the samples
with indices in ``config.shard_indices(k)`` go through sample -> hand model -> render -> caption -> generate
-> write, in batches; a bad sample is skipped and counted by reason. The Prefect flow (``flows.generate``) and
``hands generate --no-prefect`` call exactly this code.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable

from pipeline.config import RunConfig, resolve_device
from pipeline.schema import SIDES, SchemaError
from sinks.run import RunFolder, wait_for
from sinks.webdataset_sink import ShardedOutput, ShardReport

logger = logging.getLogger(__name__)
_STAGES: dict[str, Stages] = {}
_PROGRESS: list = []  # callbacks (samples done) of a local progress bar, set by the command line


@contextlib.contextmanager
def progress_bar(config: RunConfig, desc: str, quiet: bool, workers=None):
    """A tqdm bar over the run's samples for the ``with`` block, fed by this process's shards and, when
    given, the local ``workers``' counts (``flows.workers.LocalWorkers``)."""
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

    set_progress(update)
    thread = None
    if workers is not None and workers.extra:
        thread = threading.Thread(target=poll, name="progress", daemon=True)
        thread.start()
    failed = False
    try:
        with logging_redirect_tqdm():  # log lines print above the bar, not through it
            yield bar
    except BaseException:
        failed = True
        raise
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        set_progress(None)
        if failed:  # an error ends the command with its one line: the bar goes away first
            bar.leave = False
        bar.close()


def set_progress(callback: Callable[[int], None] | None) -> None:
    """Report processed sample counts to ``callback`` (None: stop reporting)."""
    _PROGRESS.clear()
    if callback is not None:
        _PROGRESS.append(callback)


class Stages:
    """Every stage of a run, built once (models load here)."""

    def __init__(self, config: RunConfig) -> None:
        from captioning import CAPTIONERS
        from generators import GENERATORS
        from pipeline.hand_model import HandModel
        from pipeline.sources import FilterConfig, make_source
        from pipeline.stage_configs import RealImageGeneratorConfig
        from pipeline.tagging import HandTokenTagger
        from renderers.base import RenderConfig, make_renderer

        self.config = config
        self.timings: Counter = Counter()  # seconds spent per stage in this process
        self._run_info: dict | None = None
        device = resolve_device(config.device)  # a GPU that is not there is one line
        self.device = device
        self.hand_model = HandModel(config.hand_model.mano_dir, device=device)
        filters = FilterConfig(min_hand_px=config.min_hand_px, max_truncation=config.max_truncation)
        size = (config.image_size, config.image_size)
        self.source = make_source(
            config.source,
            self.hand_model,
            run_seed=config.seed,
            run_tag=config.effective_run_tag(),
            cache_dir=config.cache_dir,
            image_size=size,
            filters=filters,
        )
        self.render_config = RenderConfig(local_size=512)
        self.renderer = make_renderer(config.renderer, device=device, config=self.render_config)
        self.captioner = CAPTIONERS.build(config.captioner, device=device)
        self.tagger = HandTokenTagger()
        generator = RealImageGeneratorConfig() if config.mode == "prepare" else config.generator
        self.generator = GENERATORS.build(generator, run=config, device=device)
        self.scorer = None
        if config.min_alignment is not None:
            from evaluation.scorers import make_scorer

            self.scorer = make_scorer(config.scorer)

    def renderer_record(self) -> dict:
        """What the validator needs to re-render labels exactly."""
        import dataclasses

        return {"name": self.renderer.name, **dataclasses.asdict(self.render_config)}

    def run_info(self) -> dict:
        """What a shard report records about the stages that wrote it (the manifest takes it from there)."""
        if self._run_info is None:
            g = self.generator
            self._run_info = {
                "renderer": self.renderer_record(),
                "hand_model": self.hand_model.info.to_json(),
                "source": self.source.inspect(),
                "generator": {
                    "name": g.name,
                    "version": g.version,
                    "weights_id": getattr(g, "weights_id", None),
                },
            }
        return self._run_info

    def draw(self, index: int, skips: Counter):
        """Sample ``index`` with hands posed and filters applied, or None (counted in ``skips``)."""
        from pipeline.sources import SkipSample, apply_filters, letterbox_sample, pose_hands

        t0 = time.perf_counter()
        t1 = None
        try:
            s = self.source.sample(index)
            if self.config.mode == "prepare":  # training tuples: the real image, letterboxed, and its camera
                letterbox_sample(s, self.config.image_size)
            t1 = time.perf_counter()
            s = pose_hands(s, self.hand_model)
            apply_filters(s, self.source.filters)
            return s
        except SkipSample as exc:
            skips[exc.reason] += 1
            logger.info("skipped sample %d: %s", index, exc)
            return None
        finally:
            t2 = time.perf_counter()
            self.timings["sample"] += (t1 or t2) - t0
            self.timings["hand_model"] += t2 - (t1 or t2)

    def process(self, samples: list, skips: Counter) -> list:
        """Render, caption and generate a batch; returns the samples that made it."""
        return self.generate(self.prepare(samples, skips), skips)

    def prepare(self, samples: list, skips: Counter) -> list:
        """Render, filter and caption a batch (the CPU side); returns the samples ready for ``generate``."""
        from renderers.base import RenderBatch, RenderItem

        items = []
        for s in samples:
            verts = {side: s.verts[i] for i, side in enumerate(SIDES) if s.hands[side] is not None}
            joints = {side: s.hands[side].joints_3d for side in verts}
            items.append(RenderItem(verts, joints, s.camera.K, s.image_size, s.camera.dist))
        kept = []
        t0 = time.perf_counter()
        results = self.renderer.render(RenderBatch(items, self.hand_model.faces))
        t1 = time.perf_counter()
        self.timings["render"] += t1 - t0
        for s, r in zip(samples, results, strict=True):
            for side in SIDES:
                if s.hands[side] is not None:
                    h = s.hands[side]
                    h.joints_2d, h.joints_visible, h.bbox = (
                        r.joints_2d[side],
                        r.joints_visible[side],
                        r.bbox[side],
                    )
            s.crop_box, s.mesh_image, s.mesh_local = r.crop_box, r.mesh_image, r.mesh_local
            s.mask, s.depth, s.local = r.mask, r.depth, r.local
            if not (r.mask > 0).any():
                skips["not_visible"] += 1
                continue
            if "letterbox" in s.source and not ((r.mask > 0) & self._valid_region(s)).any():
                skips["no_overlap"] += 1  # the hands render only onto the letterbox padding
                continue
            vis = [int(r.joints_visible[side].sum()) for side in SIDES if s.hands[side] is not None]
            if min(vis) < self.config.min_visible_joints:  # the visibility filter (per present hand)
                skips["too_few_visible_joints"] += 1
                continue
            kept.append(s)
        t0 = time.perf_counter()
        caps = self.captioner.caption(kept)
        t1 = time.perf_counter()
        for s, cap in zip(kept, caps, strict=True):
            s.caption, s.caption_meta = cap.text, cap.record()
            s.hand_token_indices = tuple(self.tagger.tag(cap.text).hand_token_indices)
        self.timings["caption"] += t1 - t0
        self.timings["tag"] += time.perf_counter() - t1
        return kept

    def generate(self, samples: list, skips: Counter) -> list:
        """Generate the images of prepared samples; returns the samples that made it.

        With ``min_alignment``, each image is scored against its label; the samples below it are generated
        again, together, from the streams of their next try (``Sample.attempt``), at most ``max_tries`` tries
        in all; those still below are skipped as ``misaligned``. Every kept sample carries the verdict on
        its image in ``quality`` (with ``try``, 1-based)."""
        pending = list(samples)
        tries = 1 if self.scorer is None else self.config.max_tries
        for attempt in range(tries):
            for s in pending:
                s.attempt = attempt
            t0 = time.perf_counter()
            self.generator.generate(pending)
            t1 = time.perf_counter()
            self.timings["generate"] += t1 - t0
            if self.scorer is None:
                pending = []
                break
            pending = [s for s in pending if not self._judge(s, attempt)]
            self.timings["score"] += time.perf_counter() - t1
            if not pending:
                break
        for s in pending:  # below min_alignment after the last try
            skips["misaligned"] += 1
            logger.info(
                "skipped %s: alignment %s below %s after %d tries",
                s.key,
                s.quality.get("alignment"),
                self.config.min_alignment,
                tries,
            )
        rejected = {id(s) for s in pending}
        kept = [s for s in samples if id(s) not in rejected]
        for s in kept:
            s.generator = {**s.generator, "prompt": s.caption_meta}
        return kept

    def _judge(self, s, attempt: int) -> bool:
        """Score ``s.image`` against its label, record the verdict in ``s.quality``; True when it passes."""
        result = self.scorer.score(s.image, s)
        s.quality = {**result.quality(), "try": attempt + 1}
        ok = result.passes(self.config.min_alignment)
        if not ok:
            logger.debug(
                "%s: try %d alignment %s below %s",
                s.key,
                attempt + 1,
                result.alignment,
                self.config.min_alignment,
            )
        return ok

    @staticmethod
    def _valid_region(s):
        from pipeline.imaging import Letterbox

        return Letterbox.from_json(s.source["letterbox"]).valid_region()

    def close(self) -> None:
        for obj in (self.renderer, self.captioner, self.generator, self.scorer):
            if obj is not None:
                obj.close()


def stages_for(config: RunConfig) -> Stages:
    """The process-wide ``Stages`` of a run config (models load once per worker process)."""
    key = config.config_sha256()
    if key not in _STAGES:
        _STAGES[key] = Stages(config)
    return _STAGES[key]


def output_for(config: RunConfig) -> ShardedOutput:
    return ShardedOutput(config.out, prefix=config.shard_prefix, lossless=config.lossless)


def run_shard(
    config: RunConfig, k: int, folder: RunFolder | None = None, prefetch: int | None = None
) -> ShardReport | None:
    """Write shard ``k`` under its claim (``sinks.run``). Returns its report, or None when this call wrote
    nothing: the shard is complete already, or another worker holds a live claim on it.

    While this thread generates a batch, a background thread runs the CPU stages (draw, prepare) of up to
    ``prefetch`` batches ahead and another encodes and writes up to ``prefetch`` batches behind
    (``flows.prefetch``; default ``config.prefetch``); 0 runs every stage in turn on this thread. The shard's
    bytes, its sample order and its skip counts are the same either way."""
    import copy

    from flows.prefetch import Prefetch, WriteBehind
    from sinks.records import view_records

    depth = config.prefetch if prefetch is None else prefetch
    folder = folder or RunFolder(config)
    if folder.is_complete(k):
        folder.report(k)  # refuses a shard of another run
        return None
    stages = stages_for(config)  # models load before the claim: a bad setting fails with nothing begun
    with folder.writing(k) as held:
        if held is None:
            return None
        claim, writer = held
        writer.report.run.update(stages.run_info())
        skips: Counter = Counter()
        t0 = time.perf_counter()
        # Each batch's counters belong to one thread at a time; this thread merges them, in batch order.
        counted: list[tuple[Counter, Counter, Counter]] = []  # per batch: skips before/while writing, timings

        def prepared(chunks):  # on the prefetch thread
            cpu = copy.copy(stages)  # the same models, with a ``timings`` of its own
            for chunk in chunks:
                cpu.timings, batch_skips = Counter(), Counter()
                batch = [s for s in (cpu.draw(j, batch_skips) for j in chunk) if s is not None]
                yield (cpu.prepare(batch, batch_skips) if batch else None), batch_skips, cpu.timings

        def write(job):  # on the write-behind thread
            samples, write_skips, write_timings = job
            for s in samples:
                tw = time.perf_counter()
                try:
                    for record in view_records(s, config.views):  # views global,local: + its local record
                        writer.write(record)
                except SchemaError as exc:
                    write_skips["invalid_label"] += 1
                    logger.warning("skipped %s: %s", s.key, exc)
                write_timings["write"] += time.perf_counter() - tw

        with writer:
            indices = list(config.shard_indices(k))
            chunks = [indices[i : i + config.batch_size] for i in range(0, len(indices), config.batch_size)]
            with (
                Prefetch(prepared(chunks), depth, name=f"prefetch-shard-{k}") as ahead,
                WriteBehind(write, depth, name=f"write-shard-{k}") as behind,
            ):
                for chunk in chunks:
                    claim.check()
                    batch, batch_skips, batch_timings = next(ahead)
                    stages.timings.update(batch_timings)
                    done = stages.generate(batch, batch_skips) if batch is not None else []
                    counted.append((batch_skips, Counter(), Counter()))
                    behind.put((done, *counted[-1][1:]))
                    for cb in _PROGRESS:  # the batch is generated; its writing may still be under way
                        cb(len(chunk))
            for before, writing, timings in counted:
                skips.update(before)
                skips.update(writing)
                stages.timings.update(timings)
            writer.add_skips(skips)
    report = writer.report
    logger.info(
        "shard %d: %d written, %d skipped in %.1f s",
        k,
        report.count,
        sum(skips.values()),
        time.perf_counter() - t0,
    )
    return report


def run_shards(
    config: RunConfig,
    shards: list[int],
    folder: RunFolder,
    write: Callable[[int], ShardReport | None] | None = None,
    wait: bool = True,
    poll: float = 2.0,
) -> list[ShardReport]:
    """Write every shard of ``shards`` that no other worker holds, then (``wait``) wait for the others,
    taking over any whose worker died. ``write(k)`` writes one shard (default ``run_shard``; the Prefect flow
    passes its task). Returns the reports of the shards this call wrote."""
    write = write or (lambda k: run_shard(config, k, folder))
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
