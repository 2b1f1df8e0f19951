"""Integration: a real Prefect server, a process work pool with two workers, prefect.yaml deployments.

``prefect deployment run generate-shards/adhoc`` with ``fan_out=2`` makes the parent run split the shards into
two disjoint ranges, each a child flow run that either worker may pick up; the parent finalises the run.
Everything the test starts is stopped by process group at the end.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from evaluation.validate import validate

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):  # a worker needs two SIGTERMs
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def prefect_server(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect_home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HANDGEN_ROOT": str(REPO),
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    logs = open(tmp_path / "server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=logs,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started = []
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError(
                    f"Prefect server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(1)
        yield env, started
    finally:
        for p in started:
            _stop(p)
        _stop(server)
        logs.close()


def test_deployment_run_with_two_workers(prefect_server, tmp_path):
    env, started = prefect_server

    def run(*a, timeout=120):
        return subprocess.run(
            [*PREFECT, *a], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )

    r = run("work-pool", "create", "test-pool", "--type", "process")
    assert r.returncode == 0, r.stderr
    for i in range(2):
        log = open(tmp_path / f"worker{i}.log", "w")  # noqa: SIM115
        started.append(
            subprocess.Popen(
                [*PREFECT, "worker", "start", "--pool", "test-pool", "--name", f"w{i}"],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    r = run("--no-prompt", "deploy", "--name", "adhoc", "--pool", "test-pool")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # the training deployments load (their flows import, their parameters validate) and register
    for name in ("train-generator/default", "prepare-training-shards/default"):
        r = run("--no-prompt", "deploy", "--name", name, "--pool", "test-pool")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        r = run("deployment", "inspect", name)
        assert r.returncode == 0 and "test-pool" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    out = tmp_path / "out"
    config = {"out": str(out), "samples": 9, "shard_size": 3, "image_size": 128, "seed": 4, "run_tag": "srv"}
    r = run(
        "deployment",
        "run",
        "generate-shards/adhoc",
        "--param",
        f"config={json.dumps(config)}",
        "--param",
        "fan_out=2",
        "--param",
        "preset=null",
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    deadline = time.time() + 420
    while not (out / "manifest.json").exists():
        assert time.time() < deadline, "the deployment run did not finish: " + "".join(
            (tmp_path / f"worker{i}.log").read_text()[-1500:] for i in range(2)
        )
        time.sleep(3)
    m = json.loads((out / "manifest.json").read_text())
    names = [s["name"] for s in m["shards"]]
    assert names == ["hands-000000.tar", "hands-000001.tar", "hands-000002.tar"]  # each shard exactly once
    assert sorted(p.name for p in out.glob("*.tar")) == names
    assert m["counts"]["written"] == 9
    report = validate(out)
    assert report.passed, report.errors
    logs = "".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))
    assert logs.count("generate-shard") >= 3  # the shards ran as task runs in child flow runs
