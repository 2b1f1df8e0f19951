"""Sinks: atomic shards, manifest and index, resume, reader, validator, preview, faults."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from evaluation.validate import validate
from pipeline.config import RunConfig
from pipeline.schema import SchemaError
from sinks.reader import ShardReadError, collate, open_shards
from sinks.run import run_record
from sinks.store import StoreError
from sinks.webdataset_sink import ShardedOutput
from tests.samples import make_samples

SHARD = 3


@pytest.fixture(scope="module")
def gl():
    from renderers.base import RenderConfig, make_renderer

    r = make_renderer("opengl", config=RenderConfig(local_size=64))
    yield r
    r.close()


def write_run(out, hand_model, gl, n=7, resume=False, shards=None, run_tag="t"):
    output = ShardedOutput(str(out), prefix="hands")
    output.prepare(resume=resume)
    n_shards = (n + SHARD - 1) // SHARD
    for k in shards if shards is not None else range(n_shards):
        if resume and output.is_complete(k):
            continue
        idx = list(range(k * SHARD, min((k + 1) * SHARD, n)))
        with output.shard(k) as w:
            for s in make_samples(hand_model, gl, idx, run_tag=run_tag):
                w.write(s)
            w.skip(f"{run_tag}-x", "test skip")
    renderer = {
        "name": "opengl",
        "local_size": 64,
        "style": gl.config.style,
        "wrist_tolerance": gl.config.wrist_tolerance,
        "enclosed_tolerance": gl.config.enclosed_tolerance,
    }
    cfg = RunConfig(out=str(out), samples=n, shard_size=SHARD, run_tag=run_tag)
    output.store.write_bytes("run.json", json.dumps(run_record(cfg), indent=1).encode())
    extra = {"renderer": renderer, "run_tag": cfg.effective_run_tag()}
    return output.finalize(list(range(n_shards)), cfg.model_dump(mode="json"), cfg.config_sha256(), extra)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, hand_model, gl):
    out = tmp_path_factory.mktemp("run")
    write_run(out, hand_model, gl)
    return out


def test_layout_manifest_and_index(run_dir):
    import pyarrow.parquet as pq

    names = sorted(os.listdir(run_dir))
    assert [n for n in names if n.endswith(".tar")] == [
        "hands-000000.tar",
        "hands-000001.tar",
        "hands-000002.tar",
    ]
    assert not any(n.endswith(".tmp") for n in names)
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["counts"] == {"written": 7, "skipped": {"test skip": 3}}
    assert [s["count"] for s in m["shards"]] == [3, 3, 1]
    assert m["code_version"].startswith("handgen")
    t = pq.read_table(run_dir / "index.parquet")
    assert t.num_rows == 7 and t.column("key").to_pylist() == [f"t-{i:010d}" for i in range(7)]
    assert set(t.column("hand_type").to_pylist()) == {"right", "left", "interacting"}
    with tarfile.open(run_dir / "hands-000000.tar") as tf:
        names = tf.getnames()
        assert sorted(names[:6]) == sorted(
            f"t-0000000000.{f}"
            for f in ("image.jpg", "mesh.png", "mesh_local.png", "mask.png", "verts.npy", "label.json")
        )
        assert all(m.mtime == 0 and m.uname == "" for m in tf.getmembers())


def test_validator_passes_on_a_good_run(run_dir):
    report = validate(run_dir)
    assert report.passed, report.errors
    assert report.counts["schema"] == [7, 0] and report.counts["render"] == [7, 0]
    assert report.counts["shards"] == [3, 0] and report.counts["index"] == [1, 0]


def test_validator_cross_backend(run_dir):
    report = validate(run_dir, renderer="pytorch3d")
    assert report.passed, report.errors


def test_resume_reproduces_bytes(tmp_path, hand_model, gl, run_dir):
    out = tmp_path / "resumed"
    output = ShardedOutput(str(out), prefix="hands")
    output.prepare(resume=False)
    with output.shard(0) as w:  # a complete shard
        for s in make_samples(hand_model, gl, [0, 1, 2]):
            w.write(s)
        w.skip("t-x", "test skip")
    crash = f"""
import os, sys
sys.path.insert(0, {os.getcwd()!r})
from pipeline.hand_model import HandModel
from renderers.base import RenderConfig, make_renderer
from sinks.webdataset_sink import ShardedOutput
from tests.samples import make_samples
w = ShardedOutput({str(out)!r}, prefix="hands").shard(1)
w.write(make_samples(HandModel(), make_renderer("opengl", config=RenderConfig(local_size=64)), [3])[0])
w._hashing.flush()
os._exit(1)  # die mid-shard
"""
    assert subprocess.run([sys.executable, "-c", crash]).returncode == 1
    assert (out / "hands-000001.tar.tmp").exists() and not (out / "hands-000001.tar").exists()
    first_shard = (out / "hands-000000.tar").read_bytes()
    with pytest.raises(StoreError, match="--resume"):
        ShardedOutput(str(out), prefix="hands").prepare(resume=False)
    write_run(out, hand_model, gl, resume=True)
    assert not (out / "hands-000001.tar.tmp").exists()
    assert (out / "hands-000000.tar").read_bytes() == first_shard  # kept, not rewritten
    for k in range(3):  # byte-identical to the uninterrupted run
        assert (out / f"hands-{k:06d}.tar").read_bytes() == (run_dir / f"hands-{k:06d}.tar").read_bytes()
    assert validate(out).passed


def test_reader_and_collate(run_dir):
    recs = list(open_shards(run_dir, split_by_worker=False))
    assert [r["key"] for r in recs] == [f"t-{i:010d}" for i in range(7)]
    r = recs[0]  # index 0: right hand only
    assert (
        r["image"].shape == (96, 128, 3)
        and r["mask"].shape == (96, 128)
        and r["mesh_local"].shape == (64, 64, 3)
    )
    assert r["hand_present"].tolist() == [True, False] and (r["joints_3d"][1] == 0).all()
    assert r["verts"].shape == (2, 778, 3) and np.isfinite(r["verts"]).all()
    batch = collate(recs[:4])
    assert (
        tuple(batch["joints_2d"].shape) == (4, 2, 21, 2)
        and batch["hand_present"].dtype.is_floating_point is False
    )
    assert batch["hand_present"].tolist() == [[True, False], [False, True], [True, True], [True, False]]
    assert batch["caption"][2] == "a hand number 2"
    shuffled = [r["key"] for r in open_shards(run_dir, shuffle=10, seed=1, split_by_worker=False)]
    assert sorted(shuffled) == sorted(r["key"] for r in recs)


def test_reader_in_dataloader_with_workers(run_dir):
    import torch

    ds = open_shards(run_dir)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    keys = [k for b in loader for k in b["key"]]
    assert sorted(keys) == [f"t-{i:010d}" for i in range(7)]


def test_reader_corrupt_and_truncated(tmp_path, run_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = (run_dir / "hands-000000.tar").read_bytes()
    (bad / "a-000000.tar").write_bytes(good)
    (bad / "a-000001.tar").write_bytes((run_dir / "hands-000001.tar").read_bytes()[:5000])  # truncated
    with pytest.raises(ShardReadError, match="a-000001.tar"):
        list(open_shards(bad, split_by_worker=False))
    got = [r["key"] for r in open_shards(bad, handler="skip", split_by_worker=False)]
    assert got[:3] == ["t-0000000000", "t-0000000001", "t-0000000002"]
    report = validate(bad)
    assert not report.passed


def _rewrite_record(src, dst, edit):
    """Copy a shard, editing each record's files with ``edit(name, bytes) -> bytes``."""
    out = io.BytesIO()
    with tarfile.open(src) as tin, tarfile.open(fileobj=out, mode="w") as tout:
        for m in tin.getmembers():
            data = edit(m.name, tin.extractfile(m).read())
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    dst.write_bytes(out.getvalue())


def test_newer_schema_is_refused(tmp_path, run_dir):
    def bump(name, data):
        if name.endswith("label.json"):
            d = json.loads(data)
            d["schema_version"] = 2
            return json.dumps(d).encode()
        return data

    (tmp_path / "new").mkdir()
    _rewrite_record(run_dir / "hands-000000.tar", tmp_path / "new" / "x-000000.tar", bump)
    with pytest.raises(SchemaError, match="newer version"):
        list(open_shards(tmp_path / "new", split_by_worker=False))


@pytest.fixture
def run_copy(tmp_path, run_dir):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst)
    return dst


def _fix_manifest_sha(d):
    import hashlib

    m = json.loads((d / "manifest.json").read_text())
    for s in m["shards"]:
        s["sha256"] = hashlib.sha256((d / s["name"]).read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(m))


def test_validator_catches_bad_projection(run_copy):
    def shift(name, data):
        if name.endswith("label.json"):
            d = json.loads(data)
            for h in d["hands"].values():
                if h is not None:
                    h["joints_2d"][5][0] += 0.5
            return json.dumps(d, indent=1).encode()
        return data

    _rewrite_record(run_copy / "hands-000001.tar", run_copy / "hands-000001.tar", shift)
    _fix_manifest_sha(run_copy)
    r = validate(run_copy)
    assert not r.passed and r.counts["projection"][1] == 3 and r.counts["shards"][1] == 0


def test_validator_catches_bad_mesh_and_manifest(run_copy):
    def paint(name, data):
        if name.endswith(".mesh.png"):
            import PIL.Image

            im = np.asarray(PIL.Image.open(io.BytesIO(data))).copy()
            im[10:20, 10:20] = 255
            buf = io.BytesIO()
            PIL.Image.fromarray(im).save(buf, format="PNG")
            return buf.getvalue()
        return data

    _rewrite_record(run_copy / "hands-000002.tar", run_copy / "hands-000002.tar", paint)
    r = validate(run_copy)
    assert r.counts["render"][1] == 1 and r.counts["shards"][1] == 1  # the sha256 no longer matches
    (run_copy / "hands-000009.tar").write_bytes(b"")
    os.remove(run_copy / "hands-000000.tar")
    r = validate(run_copy)
    msgs = "\n".join(r.errors)
    assert "hands-000009.tar is not listed" in msgs and "hands-000000.tar is listed but missing" in msgs


def test_cli_validate_and_preview(run_dir, run_copy, tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "flows.cli", "validate", str(run_dir)], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "valid" in ok.stdout and "render" in ok.stdout, ok.stderr
    os.remove(run_copy / "index.parquet")
    bad = subprocess.run(
        [sys.executable, "-m", "flows.cli", "validate", str(run_copy)], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "INVALID" in bad.stdout and "FAIL index" in bad.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "flows.cli", "validate", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and missing.stderr.strip().startswith(
        "hands: error: output folder not found"
    )
    png = tmp_path / "sheet.png"
    pv = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "preview",
            str(run_dir),
            "--out",
            str(png),
            "--n",
            "4",
            "--tile",
            "128",
        ],
        capture_output=True,
        text=True,
    )
    assert pv.returncode == 0, pv.stderr
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (3 * 128, 4 * (128 + 44))
        arr = np.asarray(im)
    assert (arr[:128, :128] != 20).any(axis=-1).mean() > 0.05  # the first tile has content
    bad_n = subprocess.run(
        [sys.executable, "-m", "flows.cli", "preview", str(run_dir), "--out", str(png), "--n", "0"],
        capture_output=True,
        text=True,
    )
    assert bad_n.returncode == 2 and len(bad_n.stderr.strip().splitlines()) == 1


def test_unwritable_output_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError) as exc:
        ShardedOutput(str(tmp_path / "file" / "out")).prepare(resume=False)
    assert "\n" not in str(exc.value) and "file" in str(exc.value)


def test_file_size_limit_keeps_complete_shards(tmp_path, hand_model, gl):
    """A real OS write failure (RLIMIT_FSIZE -> EFBIG) mid-run: one-line error, complete shards intact."""
    out = tmp_path / "limited"
    code = f"""
import resource, signal, sys
sys.path.insert(0, {os.getcwd()!r})
from pipeline.hand_model import HandModel
from renderers.base import RenderConfig, make_renderer
from sinks.webdataset_sink import ShardedOutput
from sinks.store import StoreError
from tests.samples import make_samples
hm, gl = HandModel(), make_renderer("opengl", config=RenderConfig(local_size=64))
samples = make_samples(hm, gl, range(12))
output = ShardedOutput({str(out)!r}); output.prepare(resume=False)
with output.shard(0) as w:
    w.write(samples[0])
size = (output.store.root / "hands-000000.tar").stat().st_size
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(size * 2.5), int(size * 2.5)))
try:
    with output.shard(1) as w:
        for s in samples[1:]:
            w.write(s)
except StoreError as exc:
    print(exc, file=sys.stderr); sys.exit(2)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "file size limit exceeded" in err[0] and "hands-000001.tar" in err[0]
    assert sorted(os.listdir(out)) == ["hands-000000.meta.json", "hands-000000.tar"]  # no partial shard left
    meta = json.loads((out / "hands-000000.meta.json").read_text())
    import hashlib

    assert hashlib.sha256((out / "hands-000000.tar").read_bytes()).hexdigest() == meta["sha256"]


def test_full_disk_tmpfs(tmp_path, hand_model, gl):
    """ENOSPC on a tiny tmpfs: one-line error, the complete shard is untouched, no partial shard remains."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        output = ShardedOutput(str(mnt))
        output.prepare(resume=False)
        samples = make_samples(hand_model, gl, range(40))
        with output.shard(0) as w:
            w.write(samples[0])
        before = (mnt / "hands-000000.tar").read_bytes()
        with pytest.raises(StoreError) as exc:
            with output.shard(1) as w:
                for s in samples[1:]:
                    w.write(s)
        assert "no space left on device" in str(exc.value) and "\n" not in str(exc.value)
        assert (mnt / "hands-000000.tar").read_bytes() == before
        assert not (mnt / "hands-000001.tar").exists() and not (mnt / "hands-000001.tar.tmp").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_shards_on_an_fsspec_store(hand_model, gl):
    import fsspec

    output = ShardedOutput("memory://runs/seq", prefix="p")
    output.prepare(resume=False)
    samples = make_samples(hand_model, gl, range(5))
    for k, part in enumerate((samples[:2], samples[2:4], samples[4:])):
        with output.shard(k) as w:
            for s in part:
                w.write(s)
    m = output.finalize([0, 1, 2], {}, "0" * 64)
    fs = fsspec.filesystem("memory")
    assert fs.exists("/runs/seq/p-000002.tar") and fs.exists("/runs/seq/manifest.json")
    assert [s["count"] for s in m["shards"]] == [2, 2, 1] and m["counts"]["written"] == 5
    assert not any(p.endswith(".tmp") for p in fs.ls("/runs/seq", detail=False))
