"""Golden runs: the bytes a fixed set of small runs writes must not change by accident.

Each case runs ``hands`` (``--no-prefect``) on a fixed config and compares the sha256 of every shard and of
``index.parquet``, plus the manifest's counts, with ``tests/golden/runs.json``. A refactor that keeps
behaviour keeps these hashes; a change that means to alter the output updates the file (and says why in its
commit):

    .venv/bin/python -m tests.test_golden --write

The digests depend on the machine's floating-point paths (llvmpipe's rasterizer, BLAS, the JPEG encoder), so
a new kind of machine may need a fresh ``--write`` from an unchanged checkout first.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden" / "runs.json"

# name -> command-line arguments after ``hands generate|prepare --out OUT`` (a "{tiny}" is the tiny
# AttentionHand model's folder, "{ih}" the InterHand2.6M fixture's root: temporary folders, so those cases fix
# their run tag, which is otherwise a hash of the config, paths included)
CASES = {
    "composite": ["generate", "--samples", "6", "--shard-size", "3", "--image-size", "128", "--seed", "11"],
    "composite_views_natural": [
        "generate",
        "--samples",
        "4",
        "--shard-size",
        "2",
        "--image-size",
        "128",
        "--seed",
        "5",
        "--views",
        "global,local",
        "--generator",
        "composite:background=natural",
    ],
    "composite_alignment": [
        "generate",
        "--samples",
        "4",
        "--shard-size",
        "4",
        "--image-size",
        "256",
        "--seed",
        "19",
        "--min-alignment",
        "0.3",
        "--max-tries",
        "2",
    ],
    "attentionhand_tiny": [
        "generate",
        "--samples",
        "3",
        "--shard-size",
        "2",
        "--image-size",
        "64",
        "--seed",
        "2",
        "--steps",
        "2",
        "--generator",
        "attentionhand:{tiny}",
        "--run-tag",
        "ahtiny",
    ],
    "prepare_interhand": [
        "prepare",
        "--source",
        "interhand:{ih}",
        "--samples",
        "16",
        "--shard-size",
        "8",
        "--run-tag",
        "ihprep",
    ],
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest(out: Path) -> dict:
    """What a golden case compares: every shard's and the index's sha256, and the manifest's counts."""
    files = {p.name: _sha256(p) for p in sorted(out.glob("*.tar"))}
    files["index.parquet"] = _sha256(out / "index.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"files": files, "counts": manifest["counts"]}


def _inputs(root: Path) -> dict:
    """The tiny AttentionHand model and the InterHand2.6M fixture (with photos) that the cases read."""
    from pipeline.hand_model import HandModel
    from tests.source_fixtures import write_interhand, write_interhand_photos

    tiny = root / "tiny"
    cmd = [sys.executable, "-m", "flows.cli", "attentionhand", "tiny", str(tiny)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"hands attentionhand tiny failed: {r.stderr[-2000:]}")
    ih = root / "ih"
    hm = HandModel()
    write_interhand(ih, hm)
    missing = ("Capture0/ROM01_Interaction/cam400263/image0012.jpg",)
    wrong_size = ("Capture0/ROM01_Interaction/cam400263/image0011.jpg",)
    write_interhand_photos(ih, hm, missing=missing, wrong_size=wrong_size, padding_only=(1, 400262))
    return {"tiny": str(tiny), "ih": str(ih)}


def run_case(name: str, root: Path, inputs: dict) -> dict:
    """Run golden case ``name`` into ``root/name`` and return its digest."""
    command, *args = CASES[name]
    out = root / name
    cmd = [sys.executable, "-m", "flows.cli", command, "--out", str(out), "--no-prefect", "-q"]
    cmd += [a.format(**inputs) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"golden case {name} failed ({r.returncode}): {r.stderr[-2000:]}")
    return _digest(out)


@pytest.fixture(scope="module")
def golden_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden_inputs")
    return _inputs(root)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_run(name, golden_inputs, tmp_path):
    expected = json.loads(GOLDEN.read_text())[name]
    got = run_case(name, tmp_path, golden_inputs)
    assert got["counts"] == expected["counts"]
    changed = sorted(
        f
        for f in expected["files"].keys() | got["files"].keys()
        if expected["files"].get(f) != got["files"].get(f)
    )
    assert not changed, f"{name}: these outputs changed: {changed}"


def _write() -> None:
    import os
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        # the same isolated data and cache folders as the test session
        os.environ["HANDGEN_DATA"] = str(Path(tmp) / "data")
        os.environ["HANDGEN_CACHE"] = str(Path(tmp) / "cache")
        inputs = _inputs(Path(tmp))
        result = {name: run_case(name, Path(tmp), inputs) for name in sorted(CASES)}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_golden --write")
    _write()
