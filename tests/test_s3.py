"""Object-store output against a real S3-protocol server process (moto's, see ``s3_server`` in conftest).

Store primitives on ``s3://`` (listing what another process wrote, atomic writes, exclusive creates raced by
threads and by processes, also on local disks and ``memory://``), shards written to S3 and read back, the
preview, and ``hands generate`` then ``hands validate`` end to end on a bucket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sinks.store import Store, StoreError

REPO = Path(__file__).resolve().parent.parent


def _python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (inheriting the test's environment, so the S3 settings) in the
    repo."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(params=["local", "s3"])
def any_root(request, tmp_path):
    """A run folder on a local disk or in a fresh bucket."""
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("s3_bucket") + "/run"


# -- Store primitives ----------------------------------------------------------------------------------------


def test_store_primitives_on_s3(s3_bucket):
    store = Store(f"{s3_bucket}/run")
    assert store.is_s3 and not store.is_local
    store.makedirs()  # a prefix needs no creating; the bucket is checked by writing a probe
    assert store.listdir() == []
    store.write_bytes("a.json", b'{"x": 1}')
    assert store.exists("a.json") and not store.exists("b.json")
    assert store.read_bytes("a.json") == b'{"x": 1}' and store.read_text("a.json") == '{"x": 1}'
    assert store.listdir() == ["a.json"]
    assert abs(store.modified("a.json") - time.time()) < 120 and store.modified("b.json") is None
    with pytest.raises(FileNotFoundError):
        store.read_bytes("b.json")
    with store.open_write("big.bin", "big.bin.tmp") as f:
        for _ in range(3):
            f.write(os.urandom(1 << 20))
    assert len(store.read_bytes("big.bin")) == 3 << 20
    assert store.listdir() == ["a.json", "big.bin"]  # uploaded straight to the key: no temporary object
    store.remove("big.bin")
    store.remove("big.bin")  # a missing file is not an error
    assert store.listdir() == ["a.json"]
    assert Store(f"{s3_bucket}/run/").listdir() == ["a.json"]  # a trailing slash names the same folder


def test_failed_write_leaves_previous_object_on_s3(s3_bucket):
    store = Store(f"{s3_bucket}/run")
    store.write_bytes("m.json", b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with store.open_write("m.json") as f:
            f.write(b"new, partial")
            raise RuntimeError("boom")
    assert store.read_bytes("m.json") == b"old" and store.listdir() == ["m.json"]
    s3 = store.fs
    bucket = s3_bucket.removeprefix("s3://")
    with pytest.raises(RuntimeError, match="boom"):  # a multipart upload (> one 5 MB part) is aborted too
        with store.open_write("m.json") as f:
            f.blocksize = 5 << 20
            for _ in range(3):
                f.write(os.urandom(4 << 20))
            raise RuntimeError("boom")
    assert store.read_bytes("m.json") == b"old"
    assert s3.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []) == []


def test_listing_sees_other_processes(s3_bucket):
    store = Store(f"{s3_bucket}/run")
    store.write_bytes("a", b"1")
    assert store.listdir() == ["a"] and not store.exists("b")  # fills s3fs's listing cache
    assert store.read_bytes("a") == b"1"
    r = _python(
        """
        import sys
        from sinks.store import Store
        s = Store(sys.argv[1])
        s.write_bytes("b", b"2")
        s.write_bytes("a", b"a longer content")
        """,
        f"{s3_bucket}/run",
    )
    assert r.returncode == 0, r.stderr
    assert store.listdir() == ["a", "b"] and store.exists("b")
    assert store.read_bytes("a") == b"a longer content"  # not cut to the size of a cached listing
    import s3fs

    other = s3fs.S3FileSystem(skip_instance_cache=True)  # another client, with its own listing cache
    other.rm_file(store.path("b"))
    assert store.listdir() == ["a"] and not store.exists("b")


def test_missing_bucket_and_unreachable_server_are_one_line(s3_bucket, monkeypatch):
    with pytest.raises(StoreError, match="bucket 'handgen-no-such-bucket' does not exist") as exc:
        Store("s3://handgen-no-such-bucket/run").makedirs()
    assert "\n" not in str(exc.value)
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    store = Store(f"{s3_bucket}/run")
    store.fs.retries = 1
    with pytest.raises(StoreError) as exc:
        store.makedirs()
    assert "\n" not in str(exc.value) and "s3://" in str(exc.value)
    s3fs.S3FileSystem.clear_instance_cache()


# -- create_exclusive ----------------------------------------------------------------------------------------


def test_create_exclusive_basics(any_root):
    store = Store(any_root)
    store.makedirs()
    assert store.create_exclusive("claim", b"first") is True
    assert store.create_exclusive("claim", b"second") is False
    assert store.read_bytes("claim") == b"first"
    assert store.listdir() == ["claim"]  # no temporary or probe files are left behind
    store.remove("claim")
    assert store.create_exclusive("claim", b"third") is True and store.read_bytes("claim") == b"third"


def _race_threads(store: Store, name: str, n: int = 8) -> list[bool]:
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def go(i: int) -> None:
        barrier.wait()
        results[i] = store.create_exclusive(name, f"owner-{i}".encode() * 500)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_create_exclusive_threads(any_root):
    store = Store(any_root)
    store.makedirs()
    for trial in range(4):
        results = _race_threads(store, f"claim{trial}")
        assert results.count(True) == 1, results
        winner = results.index(True)
        assert store.read_bytes(f"claim{trial}") == f"owner-{winner}".encode() * 500


def test_create_exclusive_threads_memory():
    import uuid

    store = Store(f"memory://excl-{uuid.uuid4().hex[:8]}")
    store.makedirs()
    for trial in range(4):
        assert _race_threads(store, f"claim{trial}").count(True) == 1


def test_create_exclusive_processes(any_root, tmp_path):
    """Two processes race for the same 12 names at the same moments: each name has exactly one winner."""
    store = Store(any_root)
    store.makedirs()
    names = [f"shard-{i:02d}.claim0" for i in range(12)]
    code = """
        import json, sys, time
        from pathlib import Path
        from sinks.store import Store
        store, who, flags, names = Store(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
        store.exists("warm-up")  # import the client and open its connection pool before the race
        (flags / f"ready-{who}").touch()
        deadline = time.monotonic() + 60  # do not outlive a killed test
        while not (flags / "go").exists():
            if time.monotonic() > deadline:
                sys.exit("no go signal")
            time.sleep(0.01)
        start = float((flags / "go").read_text())
        won = []
        for i, name in enumerate(names):
            time.sleep(max(0.0, start + 0.05 * i - time.time()))
            if store.create_exclusive(name, who.encode()):
                won.append(name)
        print(json.dumps(won))
    """
    procs = {
        who: subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), any_root, who, str(tmp_path), *names],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("p0", "p1")
    }
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{who}").exists() for who in procs) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs.values()), [p.communicate() for p in procs.values()]
        time.sleep(0.02)
    (tmp_path / "go.tmp").write_text(str(time.time() + 0.2))
    os.replace(tmp_path / "go.tmp", tmp_path / "go")
    won = {}
    for who, p in procs.items():
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        won[who] = json.loads(out.strip().splitlines()[-1])
    assert sorted(won["p0"] + won["p1"]) == names  # every name won once, by exactly one process
    for who, mine in won.items():
        for name in mine:
            assert store.read_bytes(name) == who.encode()


def test_conditional_put_is_refused_by_the_server(s3_bucket):
    """The server itself (not a client-side check) refuses an If-None-Match PUT of an existing key."""
    store = Store(f"{s3_bucket}/run")
    assert store.create_exclusive("k", b"1")
    bucket, key = store.path("k").removeprefix("s3://").split("/", 1)
    import boto3
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as exc:
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=b"2", IfNoneMatch="*")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert exc.value.response["Error"]["Code"] == "PreconditionFailed"
    assert store.read_bytes("k") == b"1"


# -- shards and the reader -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gl():
    from renderers.base import RenderConfig, make_renderer

    r = make_renderer("opengl", config=RenderConfig(local_size=64))
    yield r
    r.close()


def test_shards_on_s3_read_back(s3_bucket, hand_model, gl):
    from sinks.reader import open_shards
    from sinks.webdataset_sink import ShardedOutput
    from tests.samples import make_samples

    url = f"{s3_bucket}/run"
    output = ShardedOutput(url, prefix="hands")
    output.prepare(resume=False)
    samples = make_samples(hand_model, gl, range(3))
    with output.shard(0) as w:
        for s in samples[:2]:
            w.write(s)
    with output.shard(1) as w:
        w.write(samples[2])
    manifest = output.finalize([0, 1], {"samples": 3}, "0" * 64)
    names = Store(url).listdir()
    shard_files = [f"hands-00000{k}.{ext}" for k in (0, 1) for ext in ("meta.json", "tar")]
    assert names == [*shard_files, "index.parquet", "manifest.json"]
    assert manifest["counts"]["written"] == 3 and output.is_complete(0) and output.is_complete(1)
    keys = [r["key"] for r in open_shards(url + "/", split_by_worker=False)]
    assert keys == [s.key for s in samples]


def test_preview_lands_in_bucket(s3_bucket, hand_model, gl, tmp_path, monkeypatch):
    """``flows.stages.write_preview`` names the target with ``Store.path``, which is a full URL on S3."""
    from flows.stages import write_preview
    from pipeline.config import RunConfig
    from sinks.webdataset_sink import ShardedOutput
    from tests.samples import make_samples

    monkeypatch.chdir(tmp_path)
    url = f"{s3_bucket}/run"
    output = ShardedOutput(url, prefix="hands")
    output.prepare(resume=False)
    with output.shard(0) as w:
        for s in make_samples(hand_model, gl, range(2)):
            w.write(s)
    manifest = output.finalize([0], {"samples": 2}, "0" * 64)
    write_preview(RunConfig(out=url, samples=2, shard_size=2), manifest)
    assert "preview.png" in Store(url).listdir() and os.listdir(tmp_path) == []


# -- hands generate end to end -------------------------------------------------------------------------------


def test_config_keeps_s3_url():
    from pipeline.config import RunConfig

    assert RunConfig(out="s3://b/run").out == "s3://b/run"
    assert RunConfig(out="s3://b/run/").out == "s3://b/run"


def test_generate_into_s3(s3_bucket, capsys, tmp_path, monkeypatch):
    from flows.cli import main

    monkeypatch.chdir(tmp_path)  # whatever is misrouted to a local path lands here, not in the repo
    url = f"{s3_bucket}/run"
    argv = f"generate --no-prefect --out {url} --samples 4 --shard-size 2 --image-size 128 -q".split()
    assert main(argv) == 0, capsys.readouterr().err
    names = Store(url).listdir()
    want = {
        "hands-000000.tar",
        "hands-000001.tar",
        "index.parquet",
        "manifest.json",
        "run.json",
        "preview.png",
    }
    assert want <= set(names), names
    assert not any(n.endswith(".tmp") or ".claim" in n for n in names), names
    manifest = json.loads(Store(url).read_bytes("manifest.json"))
    assert manifest["counts"]["written"] == 4 and manifest["config"]["out"] == url
    assert main(["validate", url]) == 0, capsys.readouterr().out  # validates the run in the bucket
    assert os.listdir(tmp_path) == []  # nothing went to a local folder named after the URL ("s3:/b/run")
