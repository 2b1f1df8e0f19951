"""hands generate end to end: the direct path, crash safety with resume, and the Prefect flow."""

import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from evaluation.validate import validate


def _generate(out, *extra, env=None, verbose=False, **kw):
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        *(["-v"] if verbose else []),
        "generate",
        "--out",
        str(out),
        "--image-size",
        "128",
        "-q",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)


def _labels(out) -> dict[str, bytes]:
    labels = {}
    for p in sorted(out.glob("*.tar")):
        with tarfile.open(p) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".label.json") or m.name.endswith(".verts.npy"):
                    labels[m.name] = tf.extractfile(m).read()
    return labels


def test_generate_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = _generate(out, "--samples", "10", "--shard-size", "4", "--no-prefect", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "wrote 10 samples in 3 shards" in r.stdout
    assert {p.name for p in out.iterdir()} >= {
        "hands-000000.tar",
        "hands-000002.tar",
        "manifest.json",
        "index.parquet",
        "preview.png",
    }
    report = validate(out)
    assert report.passed, report.errors
    m = json.loads((out / "manifest.json").read_text())
    assert (
        m["config"]["samples"] == 10
        and m["renderer"]["name"] == "opengl"
        and m["hand_model"]["name"] == "standin"
    )
    again = _generate(out, "--samples", "10", "--shard-size", "4", "--no-prefect", "--seed", "3")
    assert again.returncode == 2 and "--resume" in again.stderr  # refuses to overwrite a finished run


def test_visibility_filter_counts_skips(tmp_path):
    out = tmp_path / "vis"
    r = _generate(out, "--samples", "6", "--shard-size", "6", "--no-prefect", "--min-visible-joints", "21")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["written"] + m["counts"]["skipped"].get("too_few_visible_joints", 0) == 6
    assert (
        m["counts"]["skipped"].get("too_few_visible_joints", 0) >= 1
    )  # a hand never shows all 21 joints often
    for rec in __import__("sinks.reader", fromlist=["open_shards"]).open_shards(out, split_by_worker=False):
        assert rec["joints_visible"][rec["hand_present"]].all()


@pytest.mark.slow  # about 31 s; the golden and official-settings runs cover the AttentionHand path
def test_generate_with_attentionhand_base_plus_guidance(tmp_path):
    """attentionhand:PATH,guidance=DIR: a base SD folder plus a separate guidance module, through hands
    generate."""
    import shutil

    tiny = tmp_path / "tiny"
    assert (
        subprocess.run([sys.executable, "-m", "flows.cli", "attentionhand", "tiny", str(tiny)]).returncode
        == 0
    )
    shutil.move(str(tiny / "guidance"), str(tmp_path / "guidance"))  # the base folder alone has no guidance
    out = tmp_path / "ah"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "generate",
            "--out",
            str(out),
            "--samples",
            "2",
            "--image-size",
            "64",
            "--no-prefect",
            "-q",
            "--generator",
            f"attentionhand:{tiny},guidance={tmp_path / 'guidance'}",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert validate(out).passed
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["generator"].startswith("attentionhand:")
    rec = next(
        iter(__import__("sinks.reader", fromlist=["open_shards"]).open_shards(out, split_by_worker=False))
    )
    assert rec["image"].shape == (64, 64, 3)


def test_bad_arguments(tmp_path):
    r = _generate(tmp_path / "x", "--samples", "0")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "positive integer" in r.stderr
    r = _generate(tmp_path / "x", "--source", "coco", "--no-prefect")
    assert r.returncode == 2 and "source must be prior" in r.stderr
    r = _generate(tmp_path / "x", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "config file not found" in r.stderr


@pytest.mark.slow  # about 24 s; test_run_integrity kills and resumes (chaos, S3, Ctrl-C) by default
def test_crash_safety_kill_and_resume(tmp_path):
    args = ("--samples", "14", "--shard-size", "3", "--no-prefect", "--seed", "11", "--run-tag", "crash")
    clean = tmp_path / "clean"
    assert _generate(clean, *args).returncode == 0
    crashed = tmp_path / "crashed"
    rng = random.Random(0)
    kills = 0
    for attempt in range(3):  # kill -9 at a random moment while a shard is being written, 3 times
        extra = ("--resume",) if attempt else ()
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flows.cli",
                "generate",
                "--out",
                str(crashed),
                "--image-size",
                "128",
                "-q",
                *args,
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 240  # the moment is chosen once writing has begun, whatever the load
        while p.poll() is None and time.monotonic() < deadline and not list(crashed.glob("*.tmp")):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if p.poll() is not None:  # finished before the kill: it must have succeeded
            assert p.returncode == 0, p.stderr.read()[-3000:]
            break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stderr.close()
        kills += 1
    assert kills >= 2, kills
    final = _generate(crashed, *args, "--resume")
    assert final.returncode == 0, final.stderr
    assert not list(crashed.glob("*.tmp"))
    report = validate(crashed)
    assert report.passed, report.errors
    a, b = _labels(clean), _labels(crashed)
    assert a.keys() == b.keys() and len(a) == 2 * 14  # no missing or duplicate keys
    assert all(a[k] == b[k] for k in a)  # byte-identical labels and vertices


@pytest.mark.slow  # about 24 s; test_prefect_server runs the same flow through a real server and workers
def test_prefect_flow_locally(tmp_path):
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    out = tmp_path / "flow"
    r = _generate(
        out, "--samples", "5", "--shard-size", "3", "--seed", "2", env=env, verbose=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 5 samples in 2 shards" in r.stdout
    assert validate(out).passed
    assert "generate-shards" in r.stderr  # Prefect ran the flow (its logs name it; -v shows them)
    assert "Traceback" not in r.stderr
