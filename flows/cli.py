"""The ``hands`` command line: a thin layer that parses arguments and calls library code.

Errors in arguments or inputs print one line (``hands: error: ...``) and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger("hands")


class UsageError(Exception):
    """Bad command-line arguments or inputs: reported as one line, exit code 2."""


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

    model = HandModel(args.mano_dir)
    sheet = gesture_sheet(model, side=args.side, tile=args.tile)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    print(f"wrote {out} ({model.info.name} hand model, sha256 {model.info.sha256[:12]})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hands", description="Synthetic 3D hand dataset generation (AttentionHand pipeline).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, required=True)

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
    sh.add_argument("--side", choices=("right", "left"), default="right")
    sh.add_argument("--tile", type=int, default=320, help="tile size in pixels")
    sh.add_argument("--out", required=True, help="output PNG")
    sh.set_defaults(func=_cmd_mano_show)
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import ConfigError
    from pipeline.hand_model import HandModelError
    from pipeline.schema import SchemaError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        if args.verbose:
            logging.getLogger().setLevel(logging.DEBUG)
        return int(args.func(args) or 0)
    except (UsageError, ConfigError, HandModelError, SchemaError, FileNotFoundError, PermissionError) as exc:
        print(f"hands: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # full disk, unwritable folder, ...
        print(f"hands: error: {exc.strerror or exc} ({getattr(exc, 'filename', '') or ''})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
