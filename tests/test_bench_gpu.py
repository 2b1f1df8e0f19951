"""bench/gpu.py: the GPU generation benchmark runs end to end at tiny size on CPU (``--quick``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


@pytest.mark.slow  # about 15 s of imports alone, 35-40 s in all on the 2-core development machine
def test_quick_tiny_cpu_prints_the_table(tmp_path):
    out = tmp_path / "gpu.json"
    r = _run("--size", "tiny", "--device", "cpu", "--quick", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| dtype"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert "ratio vs diffusers" in cols and "samples/s" in cols and "diffusers samples/s" in cols
    body = [line for line in lines if line.startswith("| fp32")]
    assert len(body) == 4  # global and global+local, TAS off and on, batch 1
    ratio = cols.index("ratio vs diffusers")
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[ratio]) > 0, line
    assert any(line.startswith("goal 1,") for line in lines)
    rows = json.loads(out.read_text())["rows"]
    assert {(x["views"], x["tas"]) for x in rows} == {
        (v, t) for v in ("global", "global+local") for t in ("off", "on")
    }
    assert all(x["ratio"] > 0 and x["diffusers_samples_per_s"] > 0 for x in rows)


def test_bad_views_exit_2():
    r = _run("--size", "tiny", "--device", "cpu", "--views", "local", timeout=60)
    assert r.returncode != 0 and "--views" in r.stderr
