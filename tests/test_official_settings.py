"""The official AttentionHand inference settings (``presets/attentionhand-official.yaml``) and the sampler
flags ``--steps``, ``--guidance-scale``, ``--conditioning-scale``, ``--tas/--no-tas`` and
``--generation-batch-size``, end to end through a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline.config import load_config

PRESET = Path(__file__).resolve().parents[1] / "presets" / "attentionhand-official.yaml"


def test_preset_holds_the_official_inference_settings():
    cfg = load_config(PRESET, generator="attentionhand:/models/ah")
    assert (cfg.steps, cfg.guidance_scale, cfg.conditioning_scale, cfg.tas) == (20, 9.0, 1.0, False)
    assert cfg.image_size == 512


def _labels(run: Path) -> list[dict]:
    out = []
    for tar in sorted(run.glob("*.tar")):
        with tarfile.open(tar) as t:
            out += [json.load(t.extractfile(m)) for m in t.getmembers() if m.name.endswith(".label.json")]
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    m = tmp_path_factory.mktemp("ah") / "m"
    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", "attentionhand", "tiny", str(m)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return m


def _generate(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "generate",
        "--out",
        str(out),
        "--samples",
        "3",
        "--image-size",
        "64",
        "--no-prefect",
        "-q",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_official_preset_and_flags_reach_the_generator(tiny_model, tmp_path):
    r = _generate(
        tmp_path / "a", "--config", str(PRESET), "--generator", f"attentionhand:{tiny_model}", "--steps", "2"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    labels = _labels(tmp_path / "a")
    assert len(labels) == 3
    for lab in labels:
        g = lab["generator"]
        assert g["name"] == "attentionhand" and g["steps"] == 2 and g["guidance_scale"] == 9.0
        assert g["conditioning_scale"] == 1.0 and g["tas"]["enabled"] is False and g["views"] == ["global"]
        assert g["scheduler"] == "DDIMScheduler"
    r = _generate(
        tmp_path / "b",
        "--generator",
        f"attentionhand:{tiny_model}",
        "--steps",
        "1",
        "--guidance-scale",
        "3.5",
        "--conditioning-scale",
        "0.5",
        "--tas",
        "--generation-batch-size",
        "2",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for lab in _labels(tmp_path / "b"):
        g = lab["generator"]
        assert (g["steps"], g["guidance_scale"], g["conditioning_scale"]) == (1, 3.5, 0.5)
        assert g["tas"]["enabled"] is True
    run_b = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run_b["config"]["generation_batch_size"] == 2 and run_b["config"]["conditioning_scale"] == 0.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--guidance-scale", "-1"], "expected a number >= 0, got '-1'"),
        (["--conditioning-scale", "inf"], "expected a number >= 0, got 'inf'"),
        (["--steps", "0"], "expected a positive integer, got '0'"),
        (["--generation-batch-size", "x"], "expected a positive integer, got 'x'"),
    ],
)
def test_bad_sampler_flags_are_one_line_and_exit_2(tmp_path, args, message):
    r = _generate(tmp_path / "run", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
