import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _project_data_dir(tmp_path_factory):
    """Tagger and CLIP vocabulary prepared into a per-session folder (tests never write to ~/.cache)."""
    os.environ["HANDGEN_DATA"] = str(tmp_path_factory.mktemp("handgen_data"))
    os.environ["HANDGEN_CACHE"] = str(tmp_path_factory.mktemp("handgen_cache"))  # weights ids, source indexes
    yield


@pytest.fixture(autouse=True)
def _restore_environment():
    """Tests that call ``flows.cli.main`` in-process get its environment settings (quiet Prefect logging, the
    temporary API's URL); restore the environment after each test so they do not leak into later ones."""
    saved = dict(os.environ)
    yield
    for k in set(os.environ) - set(saved):
        del os.environ[k]
    os.environ.update(saved)


@pytest.fixture(scope="session")
def hand_model():
    from pipeline.hand_model import HandModel

    return HandModel()


@pytest.fixture(scope="session")
def standin_right():
    from pipeline.standin import build_standin

    return build_standin("right")


@pytest.fixture(scope="session")
def standin_left():
    from pipeline.standin import build_standin

    return build_standin("left")


def pose_batch(rng: np.random.Generator, n: int, scale: float = 0.4) -> np.ndarray:
    return rng.normal(0.0, scale, size=(n, 48))


# -- S3: a real S3-protocol server process (moto) for object-store tests -------------------------------------

_MOTO_SERIAL = """
import os
import sys
import threading
import time

import moto.server as ms

_parent = os.getppid()


def _exit_with_parent():  # no orphan server when the test session is killed (kill -9 included)
    while os.getppid() == _parent:
        time.sleep(0.5)
    os._exit(0)


threading.Thread(target=_exit_with_parent, daemon=True).start()

_run_simple = ms.run_simple


def run_simple(*args, **kwargs):
    kwargs["threaded"] = False
    return _run_simple(*args, **kwargs)


ms.run_simple = run_simple
ms.main(sys.argv[1:])
"""
"""Runs moto's standalone server (what the ``moto_server`` console script runs) with one request at a time.

moto's threaded server checks ``If-None-Match: *`` and stores the object in two unlocked steps, so two
concurrent conditional PUTs of one key can both succeed (seen about once in 300 eight-way races); AWS S3 does
not allow that. Serving requests one at a time gives the atomicity that claims rely on. Werkzeug closes every
connection after its response, so a single-threaded server cannot be blocked by an idle pooled connection.
The server exits when the process that started it (the test session) is gone.
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """Endpoint URL (``http://127.0.0.1:PORT``) of moto's S3 server, run as a separate process for the
    session.

    Skips when moto's server or s3fs is not installed (``pip install "moto[server]" s3fs``).
    """
    import importlib.util
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    script = Path(sys.executable).parent / "moto_server"
    if not script.exists() and shutil.which("moto_server") is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]' s3fs)")
    for mod in ("moto.server", "flask", "s3fs"):
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f"{mod} is not installed (pip install 'moto[server]' s3fs)")
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    last_error = ""
    for _ in range(3):  # the free port may be taken by someone else before the server binds it
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", _MOTO_SERIAL, "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url + "/", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError as exc:
                last_error = str(exc)
                time.sleep(0.1)
        else:
            proc.kill()
            proc.wait()
            continue
        try:
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    log_tail = log_path.read_text(errors="replace")[-2000:]
    pytest.fail(f"moto_server did not start ({last_error}); log:\n{log_tail}")


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, tmp_path):
    """A fresh, empty bucket on ``s3_server``, as ``s3://<bucket>``.

    The environment (``monkeypatch``, so subprocesses started by the test inherit it, and restored afterwards)
    points botocore, and with it s3fs, boto3 and the ``hands`` command, at the server: ``AWS_ENDPOINT_URL_S3``
    (honoured by botocore >= 1.31) plus fake credentials and region, with ``~/.aws`` shut out.
    """
    import uuid

    import boto3
    import s3fs

    env = {
        "AWS_ENDPOINT_URL_S3": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    unset = (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
    )
    for k in (*unset, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(k, raising=False)
    bucket = f"handgen-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    s3fs.S3FileSystem.clear_instance_cache()  # no cached client from before these settings
    yield f"s3://{bucket}"
    s3fs.S3FileSystem.clear_instance_cache()  # nor one pointing at the test server afterwards


@pytest.fixture(scope="module")
def pipe():
    """A tiny random-weight AttentionHand pipeline (seed 0), progress bars off; one per test module."""
    from generators.attention_hand.models import tiny_components
    from generators.attention_hand.pipeline import AttentionHandPipeline

    p = AttentionHandPipeline(**tiny_components(seed=0))
    p.set_progress_bar_config(disable=True)
    return p
