"""Run config, seeding and the command line's error handling."""

import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.config import ConfigError, RunConfig, load_config
from pipeline.seeding import sample_rng, sample_seed


def test_config_frozen_and_strict(tmp_path):
    cfg = RunConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.samples = 3
    p = tmp_path / "c.yaml"
    p.write_text("samples: 10\nseed: 3\nhand_model: {mano_dir: null}\n")
    assert load_config(p).samples == 10
    p.write_text("samples: 10\nsamplez: 3\n")
    with pytest.raises(ConfigError, match="samplez: Extra inputs are not permitted"):
        load_config(p)
    with pytest.raises(ConfigError, match="samples: Input should be greater than or equal to 1"):
        load_config(samples=0)
    with pytest.raises(ConfigError, match="source: source must be prior"):
        load_config(source="coco")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(p)


def test_config_hash_excludes_output_location():
    a, b = RunConfig(out="x", seed=1), RunConfig(out="y", seed=1)
    assert a.config_sha256() == b.config_sha256()
    assert a.config_sha256() != RunConfig(seed=2).config_sha256()
    assert a.effective_run_tag() == a.config_sha256()[:8]
    assert RunConfig(run_tag="mine").effective_run_tag() == "mine"


def test_standin_version_is_checked_and_outside_the_identity(tmp_path):
    """``hand_model.standin_version`` pins an older stand-in; it is not part of the identity (the shards'
    hand-model record pins it, as it did when the default changed), so pinning the version a run was begun
    with resumes that run. A preset's ``mano_dir`` and a command-line version meet, and are refused."""
    pinned = RunConfig(hand_model={"standin_version": 2})
    assert pinned.hand_model.standin_version == 2 and RunConfig().hand_model.standin_version is None
    assert pinned.config_sha256() == RunConfig().config_sha256()
    assert "standin_version" not in pinned.identity()["hand_model"]
    with pytest.raises(ConfigError, match=r"hand_model: standin_version must be one of 1, 2, 3, got 9"):
        load_config(hand_model={"standin_version": 9})
    p = tmp_path / "mano.yaml"
    p.write_text(f"hand_model: {{mano_dir: {tmp_path}}}\n")
    with pytest.raises(ConfigError, match="geometry: not with mano_dir"):
        load_config(p, hand_model={"standin_version": 2})
    other = load_config(p, hand_model={"mano_dir": str(tmp_path / "other")})
    assert other.hand_model.mano_dir.name == "other"


def test_sample_seeds_are_pure_and_distinct():
    seeds = [sample_seed(7, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert seeds[5] == sample_seed(7, 5) and sample_seed(8, 5) != seeds[5]
    code = "from pipeline.seeding import sample_seed; print(sample_seed(7, 5))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == seeds[5]  # same in another process
    assert np.array_equal(sample_rng(seeds[0]).random(4), sample_rng(seeds[0]).random(4))
    with pytest.raises(ValueError):
        sample_seed(-1, 0)


def _run(*args):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["mano"], "the following arguments are required: mano_command"),
        (["mano", "bogus"], "invalid choice: 'bogus'"),
        (["mano", "convert", "/nonexistent/MANO_RIGHT.pkl", "out.pkl"], "MANO file not found"),
        (["mano", "show", "--mano-dir", "/nonexistent", "--out", "x.png"], "MANO folder not found"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["generate", "--out", "x", "--standin-version", "9"], "--standin-version: invalid choice: 9"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args, message):
    r = _run(*args)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hands: error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_cli_standin_writes_loadable_files(tmp_path):
    r = _run("mano", "standin", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    from pipeline.hand_model import HandModel

    assert HandModel(tmp_path / "m").layers["right"].v_template.shape == (778, 3)


def test_cli_unwritable_output_is_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    r = _run("mano", "standin", str(ro / "file" / "sub"))  # a file where a folder is needed
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "hands: error:" in r.stderr
