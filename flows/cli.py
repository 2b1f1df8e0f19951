"""The ``hands`` command line: a thin layer that parses arguments and calls library code.

Errors in arguments or inputs print one line (``hands: error: ...``) and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flows.argtypes import count as _count
from flows.argtypes import device as _device
from flows.argtypes import non_negative, unit_interval
from flows.argtypes import positive_int as _positive_int
from pipeline.errors import HandgenError, one_line
from pipeline.schema import SIDES
from pipeline.standin import STANDIN_VERSION, STANDIN_VERSIONS

logger = logging.getLogger("hands")


class UsageError(HandgenError):
    """Bad command-line arguments or inputs: reported as one line, exit code 2."""


def _views(text: str) -> str:
    """An argparse type for ``--views``: ``global`` or ``global,local``
    (``pipeline.schema.normalize_views``)."""
    from pipeline.schema import SchemaError, normalize_views

    try:
        normalize_views(text)
    except SchemaError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _cmd_mano_standin(args) -> int:
    from pipeline.hand_model import write_standin

    right, left = write_standin(args.out_dir)
    logger.info("wrote %s and %s (stand-in hand model)", right, left)
    print(f"wrote {right} and {left}")
    return 0


def _cmd_mano_convert(args) -> int:
    from pipeline.hand_model import convert_mano_pickle

    if Path(args.dst).resolve() == Path(args.src).resolve():
        raise UsageError("SRC and DST must differ; convert writes a new file")
    convert_mano_pickle(args.src, args.dst)
    print(f"wrote {args.dst} (chumpy-free copy of {args.src})")
    return 0


def _cmd_mano_show(args) -> int:
    from pipeline.hand_model import HandModel
    from renderers.quicklook import gesture_sheet
    from sinks.preview import check_image_name, save_image

    check_image_name(args.out)  # a bad name fails before the hand model is rendered
    model = HandModel(args.mano_dir)
    sheet = gesture_sheet(model, side=args.side, tile=args.tile)
    out = save_image(sheet, args.out)
    print(f"wrote {out} ({model.info.name} hand model, sha256 {model.info.sha256[:12]})")
    return 0


def _cmd_validate(args) -> int:
    from evaluation.validate import validate

    report = validate(
        args.dir, renderer=args.renderer, mano_dir=args.mano_dir, render=not args.no_render, limit=args.limit
    )
    print(report.table())
    for err in report.errors[:20]:
        print(f"FAIL {err}")
    if len(report.errors) > 20:
        print(f"... and {len(report.errors) - 20} more failures")
    print("valid" if report.passed else "INVALID")
    return 0 if report.passed else 1


def _cmd_preview(args) -> int:
    from sinks.preview import preview

    n = preview(args.dir, args.out, n=args.n, tile=args.tile)  # one-line HandgenErrors for bad names/folders
    print(f"wrote {args.out} ({n} records)")
    return 0


def _cmd_caption_tag(args) -> int:
    import json

    from pipeline.tagging import HandTokenTagger

    print(json.dumps(HandTokenTagger().tag(args.text).to_json(), ensure_ascii=False))
    return 0


def _source(args):
    from pipeline.hand_model import HandModel
    from pipeline.sources import make_source

    return make_source(args.source, HandModel(args.mano_dir), run_seed=args.seed, cache_dir=args.cache_dir)


def _cmd_sources_dump(args) -> int:
    import json
    from collections import Counter

    from pipeline.sources import SkipSample, dump_record, posed_sample
    from sinks.store import Store

    src = _source(args)
    skipped: Counter = Counter()
    lines = []
    for i in range(args.limit):
        try:
            s = posed_sample(src, i, src.hm, src.filters)
        except SkipSample as exc:
            skipped[exc.reason] += 1
            logger.info("skipped sample %d: %s", i, exc)
            continue
        lines.append(json.dumps(dump_record(s), allow_nan=False))
    out = Path(args.out)
    Store(str(out.parent)).write_bytes(out.name, ("\n".join(lines) + "\n").encode())
    print(
        f"wrote {len(lines)} samples to {out}; skipped {sum(skipped.values())} "
        f"{dict(skipped) if skipped else ''}"
    )
    return 0


def _cmd_sources_inspect(args) -> int:
    import json

    print(json.dumps(_source(args).inspect(), indent=1))
    return 0


def _cmd_generate(args) -> int:
    from flows import runtime

    # the temporary Prefect API starts first, so that its start-up overlaps the config and folder checks
    server = None if args.no_prefect else runtime.TemporaryServer().start()
    try:
        return _generate(args, server)
    finally:
        if server is not None:
            server.stop()


def _generate(args, server) -> int:
    import time

    from flows import stages
    from pipeline.config import load_config
    from sinks.run import RunFolder

    prepare = args.command == "prepare"
    overrides = {
        "mode": "prepare" if prepare else None,
        "out": args.out,
        "samples": args.samples,
        "shard_size": args.shard_size,
        "source": args.source,
        "captioner": args.captioner,
        "generator": getattr(args, "generator", None),
        "seed": args.seed,
        "device": args.device,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "renderer": args.renderer,
        "run_tag": args.run_tag,
        "backgrounds": getattr(args, "backgrounds", None),
        "min_visible_joints": args.min_visible_joints,
        "cache_dir": args.cache_dir,
        "prefetch": args.prefetch,
        **{
            k: getattr(args, k, None)
            for k in (
                "steps",
                "guidance_scale",
                "conditioning_scale",
                "tas",
                "generation_batch_size",
                "min_alignment",
                "max_tries",
                "scorer",
                "views",
                "props",
            )
        },
        "hand_model": {
            k: v
            for k, v in (("mano_dir", args.mano_dir), ("standin_version", args.standin_version))
            if v is not None
        }
        or None,
    }
    cfg = load_config(args.config, **overrides)
    from flows.workers import LocalWorkers

    folder = RunFolder(cfg)
    finished = folder.finished()
    t0 = time.perf_counter()
    # extra workers start first, so that their model loading overlaps this process's; each checks the models
    # and the run folder itself before it claims a shard
    extra = 0 if finished else args.workers - 1
    # the session closes every stage it loaded (models, GL contexts) when the command ends
    with (
        LocalWorkers(cfg, extra, verbose=args.verbose, resume=args.resume) as workers,
        stages.Session() as session,
    ):
        if not finished:
            # models load first: a bad model path fails before the run folder is created
            session.pipeline(cfg).load()
        state = folder.open(resume=args.resume)  # run.json first; a mismatch or a foreign folder is one line
        if state == "finished":
            print(f"{cfg.out} already holds the finished run {folder.record['run_tag']}: nothing to do")
            return 0
        return _write(args, cfg, folder, workers, session, prepare, t0, server)


def _write(args, cfg, folder, workers, session, prepare: bool, t0: float, server) -> int:
    import time

    from flows import runtime, stages

    with stages.progress_bar(cfg, args.command, args.quiet, workers) as progress:
        session.progress = progress
        if args.no_prefect:
            stages.run_shards(cfg, list(range(cfg.num_shards)), folder)
            manifest = stages.finalize(cfg, folder)
            try:
                stages.write_preview(cfg, manifest)
            except HandgenError as exc:  # the shards are complete: a preview failure does not fail the run
                logger.warning("preview not written: %s", exc.one_line())
        else:
            import json

            from flows.generate import generate_shards, prepare_training_shards

            flow = prepare_training_shards if prepare else generate_shards
            with runtime.temporary_server(server):
                runtime.run_flow(flow, cfg.model_dump(mode="json"), resume=True)
            manifest = json.loads(folder.store.read_bytes("manifest.json"))
    dt = time.perf_counter() - t0
    counts = manifest["counts"]
    samples = counts["written"] // len(cfg.views)  # with views global,local: one local record per sample
    what = f"{samples} samples"
    if samples != counts["written"]:
        what += f" ({counts['written']} records with their local views)"
    print(
        f"wrote {what} in {len(manifest['shards'])} shards to {cfg.out} "
        f"({samples / max(dt, 1e-9):.1f} samples/s, {dt:.0f} s)"
    )
    if counts["skipped"]:
        print("skipped: " + ", ".join(f"{k} {v}" for k, v in counts["skipped"].items()))
    print(
        f"manifest: {cfg.out}/manifest.json  index: {cfg.out}/index.parquet  preview: {cfg.out}/preview.png"
    )
    return 0


def _cmd_attentionhand_tiny(args) -> int:
    from generators.attention_hand.models import save_tiny

    out = save_tiny(args.out_dir, seed=args.seed)
    print(f"wrote a tiny random-weight AttentionHand model to {out}")
    return 0


def _cmd_attentionhand_convert(args) -> int:
    from generators.attention_hand.convert import convert_checkpoint

    out = convert_checkpoint(
        args.src, args.out_dir, config_from=args.config_from, guidance_prefix=args.guidance_prefix
    )
    print(f"wrote {out} (load it with --generator attentionhand:{out})")
    return 0


def _cmd_train_generator(args) -> int:
    import os

    from flows.train import run_training
    from generators.attention_hand.train import load_train_config

    overrides = {
        "model": args.model,
        "guidance_init": args.guidance_init,
        "data": args.data,
        "out": args.out,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "lr": args.lr,
        "tas_iterations": args.tas_iterations,
        "resolution": args.resolution,
        "mixed_precision": args.mixed_precision,
        "seed": args.seed,
        "save_every": args.save_every,
        "sample_every": args.sample_every,
        "log_every": args.log_every,
        "num_workers": args.num_workers,
        "device": args.device,
    }
    cfg = load_train_config(args.config, **overrides)
    summary = run_training(cfg, resume=args.resume, prefect=not args.no_prefect, quiet=args.quiet)
    if int(os.environ.get("RANK", "0")):  # one summary for a multi-process run (accelerate launch, torchrun)
        return 0
    print(
        f"trained {summary['steps']} steps in {summary['seconds']:.0f} s; mean loss of the last steps "
        f"{summary['final_loss']:.4f}"
    )
    print(
        f"checkpoint: {summary['checkpoint']}  model: {summary.get('model')}  log: "
        f"{cfg.out / 'logs' / 'loss.jsonl'}"
    )
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"hands (handgen) {version('handgen')}"
    except PackageNotFoundError:
        return "hands (handgen) unknown version"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hands", description="Synthetic 3D hand dataset generation (AttentionHand pipeline).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=_version(), help="print the version and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, required=True)

    g = sub.add_parser("generate", help="generate WebDataset shards (runs the generate-shards flow locally)")
    pr = sub.add_parser(
        "prepare",
        help="write AttentionHand training shards from a dataset's real images "
        "(runs the prepare-training-shards flow locally)",
    )
    for q in (g, pr):
        prep = q is pr
        q.add_argument("--out", required=True, help="output folder (or fsspec URL)")
        q.add_argument("--samples", type=_positive_int, default=None, help="number of samples (default 64)")
        q.add_argument(
            "--shard-size", type=_positive_int, default=None, help="samples per shard (default 32)"
        )
        q.add_argument(
            "--source",
            default=None,
            required=prep,
            help="interhand:ROOT[,split=S] | reinterhand:ROOT"
            if prep
            else "prior | prior:NAMES | interhand:ROOT | reinterhand:ROOT",
        )
        q.add_argument("--captioner", default=None, help="labels | qwen-vl:PATH")
        if not prep:
            q.add_argument(
                "--generator",
                default=None,
                help="composite[:background=natural,...] | attentionhand:PATH[,guidance=DIR]",
            )
            q.add_argument(
                "--backgrounds", default=None, help="folder of background images for the composite generator"
            )
            q.add_argument(
                "--steps", type=_positive_int, default=None, help="diffusion sampling steps (default 20)"
            )
            q.add_argument(
                "--guidance-scale",
                type=non_negative,
                default=None,
                help="classifier-free guidance scale (default 7.5; official 9.0)",
            )
            q.add_argument(
                "--conditioning-scale",
                type=non_negative,
                default=None,
                help="strength of the mesh guidance module (default 1.0)",
            )
            q.add_argument(
                "--tas",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="Text Attention Stage at sampling time (default on; official inference: off)",
            )
            q.add_argument(
                "--generation-batch-size",
                type=_positive_int,
                default=None,
                help="images per generator call (default: --batch-size)",
            )
            q.add_argument(
                "--min-alignment",
                type=unit_interval,
                default=None,
                help="regenerate images whose alignment score with their label is below this (0..1)",
            )
            q.add_argument(
                "--max-tries",
                type=_positive_int,
                default=None,
                help="tries per sample under --min-alignment before it is skipped (default 3)",
            )
            q.add_argument(
                "--scorer", default=None, help="alignment scorer for --min-alignment (default mediapipe)"
            )
            q.add_argument(
                "--views",
                type=_views,
                default=None,
                help="global (default) | global,local: also write each sample's local close-up "
                "as a record of its own, right after it",
            )
            q.add_argument(
                "--props",
                default=None,
                metavar="auto|none|forearm,objects",
                help="geometry drawn with the hands in the depth test: forearm and/or objects, or none "
                "(default auto: both with the composite generator, none otherwise)",
            )
        q.add_argument("--seed", type=int, default=None)
        q.add_argument(
            "--device",
            type=_device,
            default=None,
            help="auto | cpu | cuda | cuda:N (one worker per GPU: --device cuda:0, cuda:1, ...)",
        )
        q.add_argument("--config", default=None, help="YAML preset (command-line values override it)")
        q.add_argument(
            "--resume", action="store_true", help="continue a run in --out (complete shards are kept)"
        )
        q.add_argument(
            "--image-size",
            type=_positive_int,
            default=None,
            help="side of the letterboxed images (default 512)" if prep else None,
        )
        q.add_argument("--batch-size", type=_positive_int, default=None)
        q.add_argument("--renderer", choices=("auto", "opengl", "pytorch3d"), default=None)
        q.add_argument("--run-tag", default=None, help="key prefix (default: a hash of the config)")
        q.add_argument("--mano-dir", default=None, help="MANO folder (default: the embedded stand-in)")
        q.add_argument(
            "--standin-version",
            type=int,
            choices=STANDIN_VERSIONS,
            default=None,
            help=f"the embedded stand-in's geometry (default {STANDIN_VERSION}, the newest): an older one "
            "finishes a run begun with it",
        )
        q.add_argument(
            "--min-visible-joints", type=int, default=None, help="skip samples whose hands show fewer joints"
        )
        q.add_argument(
            "--no-prefect", action="store_true", help="call the stages directly instead of the Prefect flow"
        )
        q.add_argument(
            "--workers",
            type=_positive_int,
            default=1,
            help="local worker processes sharing the run (default 1)",
        )
        q.add_argument(
            "--cache-dir",
            default=None,
            help="where dataset indexes are cached (default: the user cache folder)",
        )
        q.add_argument(
            "--prefetch",
            type=_count,
            default=None,
            help="batches prepared ahead of the generator and written behind it (default 2; 0 = none)",
        )
        q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        q.set_defaults(func=_cmd_generate)
    t = sub.add_parser(
        "train-generator",
        help="train the AttentionHand guidance module on prepared shards "
        "(runs the train-generator flow locally)",
    )
    t.add_argument("--model", default=None, help="base Stable Diffusion 1.5 folder (diffusers layout)")
    t.add_argument("--data", default=None, help="training shards written by hands prepare (folder or glob)")
    t.add_argument("--out", default=None, help="output folder: checkpoints/, logs/, samples/, model/")
    t.add_argument(
        "--config", default=None, help="YAML file of training settings (command-line values override it)"
    )
    t.add_argument(
        "--guidance-init", default=None, help="guidance module folder to start from (default: from the UNet)"
    )
    t.add_argument("--steps", type=_positive_int, default=None, help="optimiser steps (default 1000)")
    t.add_argument(
        "--batch-size", type=_positive_int, default=None, help="tuples per micro-batch and GPU (default 1)"
    )
    t.add_argument(
        "--grad-accum", type=_positive_int, default=None, help="micro-batches per step (default 1)"
    )
    t.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-5)")
    t.add_argument(
        "--tas-iterations", type=int, default=None, help="TAS updates per step (default 1; 0 = off)"
    )
    t.add_argument("--resolution", type=_positive_int, default=None, help="training image side (default 512)")
    t.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument(
        "--save-every", type=_positive_int, default=None, help="checkpoint every N steps (default 500)"
    )
    t.add_argument(
        "--sample-every", type=int, default=None, help="sample grid every N steps (default 500; 0 = never)"
    )
    t.add_argument(
        "--log-every", type=_positive_int, default=None, help="loss line every N steps (default 10)"
    )
    t.add_argument("--num-workers", type=int, default=None, help="data loader workers (default 2)")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    t.add_argument(
        "--no-prefect", action="store_true", help="train directly instead of through the Prefect flow"
    )
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train_generator)
    mano = sub.add_parser("mano", help="hand model files: stand-in, conversion, pictures")
    msub = mano.add_subparsers(dest="mano_command", parser_class=_Parser, required=True)
    s = msub.add_parser("standin", help="write the procedural stand-in MANO_RIGHT.pkl / MANO_LEFT.pkl")
    s.add_argument("out_dir", help="output folder (smplx.create(OUT_DIR, 'mano') loads it)")
    s.set_defaults(func=_cmd_mano_standin)
    c = msub.add_parser("convert", help="copy an official MANO pickle without chumpy objects")
    c.add_argument("src", help="official MANO_RIGHT.pkl or MANO_LEFT.pkl")
    c.add_argument("dst", help="output pickle")
    c.set_defaults(func=_cmd_mano_convert)
    sh = msub.add_parser("show", help="render the hand model in four gestures (open, fist, point, pinch)")
    sh.add_argument("--mano-dir", default=None, help="MANO folder (default: the embedded stand-in)")
    sh.add_argument("--side", choices=SIDES, default="right")
    sh.add_argument("--tile", type=_positive_int, default=320, help="tile size in pixels")
    sh.add_argument("--out", required=True, help="output image (.png or .jpg; a path or fsspec URL)")
    sh.set_defaults(func=_cmd_mano_show)
    so = sub.add_parser("sources", help="pose sources: dump samples, inspect counts")
    sosub = so.add_subparsers(dest="sources_command", parser_class=_Parser, required=True)
    for name, fn, hlp in (
        ("dump", _cmd_sources_dump, "write one JSON line per sample (label schema v1 fields)"),
        ("inspect", _cmd_sources_inspect, "print counts: frames, hand types, cameras"),
    ):
        sp = sosub.add_parser(name, help=hlp)
        sp.add_argument("source", help="prior | prior:NAMES | interhand:ROOT[,split=S] | reinterhand:ROOT")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--mano-dir", default=None, help="MANO folder (default: the embedded stand-in)")
        sp.add_argument(
            "--cache-dir",
            default=None,
            help="where dataset indexes are cached (default: sources/ in $HANDGEN_CACHE or ~/.cache/handgen)",
        )
        if name == "dump":
            sp.add_argument("--out", required=True, help="output .jsonl")
            sp.add_argument("--limit", type=_positive_int, default=100, help="number of sample indices")
        sp.set_defaults(func=fn)
    ah = sub.add_parser("attentionhand", help="AttentionHand model files")
    ahsub = ah.add_subparsers(dest="ah_command", parser_class=_Parser, required=True)
    at = ahsub.add_parser("tiny", help="write a tiny random-weight model (smoke tests, CI)")
    at.add_argument("out_dir")
    at.add_argument("--seed", type=int, default=0)
    at.set_defaults(func=_cmd_attentionhand_tiny)
    ac = ahsub.add_parser(
        "convert", help="convert the official AttentionHand checkpoint to the loadable layout"
    )
    ac.add_argument(
        "src",
        help="official checkpoint (.ckpt/.pt/.safetensors: the official VAS.* layout or a "
        "ControlNet-style control_model.* fork)",
    )
    ac.add_argument("out_dir", help="output folder (diffusers layout with guidance/)")
    ac.add_argument(
        "--config-from", default=None, help="model folder whose architecture to use (default: SD 1.5)"
    )
    ac.add_argument(
        "--guidance-prefix",
        default=None,
        help="key prefix of the guidance module when it is neither VAS. nor control_model.",
    )
    ac.set_defaults(func=_cmd_attentionhand_convert)
    cap = sub.add_parser("caption", help="captioning tools")
    csub = cap.add_subparsers(dest="caption_command", parser_class=_Parser, required=True)
    ct = csub.add_parser(
        "tag", help="print the CLIP tokens of TEXT and the positions of its hand-related tokens"
    )
    ct.add_argument("text", help="a prompt")
    ct.set_defaults(func=_cmd_caption_tag)
    v = sub.add_parser("validate", help="check every record, the index and the manifest of an output folder")
    v.add_argument("dir", help="output folder of a run")
    v.add_argument(
        "--renderer",
        choices=("opengl", "pytorch3d"),
        default=None,
        help="re-render with this backend (default: the one that wrote the run)",
    )
    v.add_argument("--mano-dir", default=None, help="MANO folder, for runs made with the official model")
    v.add_argument("--no-render", action="store_true", help="skip the re-render check")
    v.add_argument("--limit", type=_positive_int, default=None, help="check at most N records per shard")
    v.set_defaults(func=_cmd_validate)
    pv = sub.add_parser("preview", help="contact sheet: image + skeleton, mesh image, local image, caption")
    pv.add_argument("dir", help="output folder of a run")
    pv.add_argument("--out", required=True, help="output image (.png or .jpg; a path or fsspec URL)")
    pv.add_argument("--n", type=_positive_int, default=16, help="number of records")
    pv.add_argument("--tile", type=_positive_int, default=256, help="tile size in pixels")
    pv.set_defaults(func=_cmd_preview)
    from flows import evaluate_cli

    evaluate_cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; every user-caused error (``HandgenError``) is one stderr line and exit code 2."""
    from flows import runtime

    runtime.quiet_logging(False)  # before anything imports prefect: it reads its logging settings at import
    try:
        args = build_parser().parse_args(argv)
        if args.verbose:
            runtime.quiet_logging(2)  # DEBUG, third-party libraries included
        return int(args.func(args) or 0)
    except HandgenError as exc:
        print(f"hands: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError) as exc:
        msg = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else one_line(exc)
        print(f"hands: error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:  # full disk, unwritable folder, ...
        msg = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else one_line(exc)
        print(f"hands: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hands: {runtime.INTERRUPTED}", file=sys.stderr)
        return 130


def entry() -> None:
    """Console-script entry point: ``main``'s code is the process's exit code. Every stage a command loads
    closes when the command ends (``flows.stages.Session``), so the process ends normally."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
