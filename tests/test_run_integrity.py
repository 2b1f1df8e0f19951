"""Run integrity: one run identity (run.json), shard claims with leases, cooperation and refusal of concurrent
runs, finalisation once without models, foreign shards, and a chaos test with killed workers."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluation.validate import validate
from flows import stages
from pipeline.config import RunConfig
from sinks.run import RunFolder, RunMismatchError, claim_file, try_claim
from sinks.store import Store, StoreError

BASE = {"samples": 6, "shard_size": 3, "image_size": 96, "batch_size": 3}


def _cfg(out, **kw) -> RunConfig:
    return RunConfig(out=str(out), **{**BASE, **kw})


def _run(cfg: RunConfig) -> dict:
    folder = RunFolder(cfg)
    folder.open(resume=True)
    stages.run_shards(cfg, list(range(cfg.num_shards)), folder)
    return stages.finalize(cfg, folder)


def _hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(out).glob("*.tar"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A complete single-process run of ``BASE`` (seed 0)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    _run(_cfg(out))
    return out


def _cli(out, *extra, env=None, **kw):
    cmd = [sys.executable, "-m", "flows.cli", "generate", "--out", str(out), "--no-prefect", "-q"]
    for k, v in BASE.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return subprocess.Popen(
        cmd + list(extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or os.environ,
        **kw,
    )


def _stderr_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_run_json_is_written_first_and_records_identity(reference):
    rec = json.loads((reference / "run.json").read_text())
    cfg = _cfg(reference)
    assert rec["config_sha256"] == cfg.config_sha256() and rec["run_tag"] == cfg.effective_run_tag()
    assert "out" not in rec["config"] and "device" not in rec["config"]
    assert rec["num_shards"] == 2 and rec["shard_size"] == 3
    meta = json.loads((reference / "hands-000000.meta.json").read_text())
    assert meta["run"]["config_sha256"] == rec["config_sha256"]
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["config_sha256"] == rec["config_sha256"] and manifest["renderer"]["name"]


@pytest.mark.parametrize(
    ("change", "field"), [({"seed": 5}, "seed"), ({"shard_size": 2}, "shard_size"), ({"tas": False}, "tas")]
)
def test_resume_with_another_config_is_refused(reference, tmp_path, change, field):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "manifest.json").unlink()
    before = _hashes(out)
    with pytest.raises(RunMismatchError, match=field):
        RunFolder(_cfg(out, **change)).open(resume=True)
    assert _hashes(out) == before


def test_operational_settings_do_not_change_identity(tmp_path):
    a, b = _cfg(tmp_path / "a"), _cfg(tmp_path / "b", device="cpu", cache_dir=str(tmp_path / "c"), prefetch=0)
    assert a.config_sha256() == b.config_sha256() and a.effective_run_tag() == b.effective_run_tag()


def test_resume_cli_mismatch_is_one_line(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    p = _cli(out, "--resume", "--seed", "5")
    _, err = p.communicate(timeout=120)
    lines = _stderr_lines(err)
    assert p.returncode == 2 and len(lines) == 1 and "seed" in lines[0] and "Traceback" not in err, err


def _first_shard_only(reference, tmp_path):
    """A copy of the reference run cut back to its first complete shard (killed before the second): the
    folder, that shard's report path and its report."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for name in ("manifest.json", "index.parquet", "hands-000001.tar", "hands-000001.meta.json"):
        (out / name).unlink()
    meta = out / "hands-000000.meta.json"
    return out, meta, json.loads(meta.read_text())


def _resume_refused(out, meta, rep) -> str:
    """Write ``rep`` as the first shard's report, resume on the CLI and check the refusal: exit 2, one line,
    no traceback, the second shard not written. Returns that line."""
    meta.write_text(json.dumps(rep))
    p = _cli(out, "--resume")
    _, err = p.communicate(timeout=120)
    lines = _stderr_lines(err)
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert not (out / "hands-000001.tar").exists()
    return lines[0]


def test_resume_with_other_props_is_refused(reference, tmp_path):
    """The props record (their kinds and ``pipeline.props.VERSION``) is a stage record: a shard whose props
    were drawn by another version refuses the resume in one line, before anything is written."""
    from pipeline.props import VERSION

    out, meta, rep = _first_shard_only(reference, tmp_path)
    assert rep["run"]["props"] == {"kinds": ["forearm", "objects"], "version": VERSION}
    rep["run"]["props"]["version"] = VERSION - 1
    line = _resume_refused(out, meta, rep)
    assert "hands-000000.tar was written with another props" in line, line


def test_resume_with_another_prior_camera_is_refused(reference, tmp_path):
    """The prior's camera settings and ``CAMERA_VERSION`` are part of the source record: a shard framed by
    another camera version refuses the resume in one line."""
    from pipeline.sources.prior import CAMERA_VERSION

    out, meta, rep = _first_shard_only(reference, tmp_path)
    assert rep["run"]["source"]["camera"]["version"] == CAMERA_VERSION
    del rep["run"]["source"]["camera"]  # a shard written before the camera was recorded
    line = _resume_refused(out, meta, rep)
    assert "hands-000000.tar was written with another source" in line, line


def test_resume_with_other_stages_is_refused_before_generating(reference, tmp_path):
    """A complete shard written by another generator version (an upgrade between kill and resume): the
    resume says so in one line before it writes anything, not only at the manifest after every shard."""
    out, meta, rep = _first_shard_only(reference, tmp_path)
    rep["run"]["generator"]["version"] -= 1
    line = _resume_refused(out, meta, rep)
    assert "hands-000000.tar was written with another generator (version" in line, line
    assert not list(out.glob("*.tmp*"))
    # the same folder with the shard's own record resumes: the check compares like with like
    rep["run"]["generator"]["version"] += 1
    meta.write_text(json.dumps(rep))
    p = _cli(out, "--resume")
    _, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-3000:]
    assert _hashes(out) == _hashes(reference)


def test_run_begun_with_an_older_standin_finishes_with_it(reference, tmp_path):
    """A run begun with stand-in version 2 (before the default became 3), killed after its first shard: the
    plain resume is refused in one line that names the version and the flag; ``--standin-version 2`` finishes
    it with the same bytes as an uninterrupted version-2 run, and ``hands validate`` passes it."""
    from pipeline.hand_model import standin_sha256
    from pipeline.standin import STANDIN_VERSION

    whole = tmp_path / "whole"
    _run(_cfg(whole, hand_model={"standin_version": 2}))
    assert json.loads((whole / "run.json").read_text())["config_sha256"] == _cfg(whole).config_sha256()
    meta = json.loads((whole / "hands-000000.meta.json").read_text())
    assert meta["run"]["hand_model"] == {"name": "standin", "sha256": standin_sha256(2)}
    assert _hashes(whole) != _hashes(reference)  # other geometry, other labels and images
    out = tmp_path / "run"
    shutil.copytree(whole, out)
    for name in ("manifest.json", "index.parquet", "hands-000001.tar", "hands-000001.meta.json"):
        (out / name).unlink()
    p = _cli(out, "--resume")
    _, err = p.communicate(timeout=120)
    lines = _stderr_lines(err)
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    here = f"(this process uses version {STANDIN_VERSION})"
    assert f"hands-000000.tar was written with stand-in version 2 {here}" in lines[0], lines[0]
    assert "--standin-version 2" in lines[0] and not (out / "hands-000001.tar").exists()
    p = _cli(out, "--resume", "--standin-version", "2")
    _, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-3000:]
    assert _hashes(out) == _hashes(whole)
    assert validate(out).passed


def test_claim_temporaries_of_killed_workers_are_removed(reference, tmp_path):
    """A worker killed inside ``create_exclusive`` (claiming a shard) leaves
    ``.<shard>.claim<g>.<random>.tmp``: the next writer of that shard removes it, and the finaliser removes
    those of complete shards."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for name in ("manifest.json", "index.parquet", "hands-000001.tar", "hands-000001.meta.json"):
        (out / name).unlink()
    stale = [
        out / ".hands-000000.tar.claim0.0123456789ab.tmp",
        out / ".hands-000001.tar.claim1.ba9876543210.tmp",
    ]
    for f in stale:
        f.write_bytes(b'{"owner": "killed"}')
    _run(_cfg(out))
    assert not any(f.exists() for f in stale)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert _hashes(out) == _hashes(reference)


def test_folder_without_run_json_is_refused(reference, tmp_path):
    out = tmp_path / "legacy"
    shutil.copytree(reference, out)
    (out / "run.json").unlink()
    with pytest.raises(RunMismatchError, match="no run.json"):
        RunFolder(_cfg(out)).open(resume=True)


def test_foreign_shard_is_refused(reference, tmp_path):
    other = tmp_path / "other"
    _run(_cfg(other, seed=1, samples=3))
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "manifest.json").unlink()
    for suffix in (".tar", ".meta.json"):
        shutil.copy(other / f"hands-000000{suffix}", out / f"hands-000000{suffix}")
    cfg = _cfg(out)
    folder = RunFolder(cfg)
    assert folder.open(resume=True) == "resumed"
    with pytest.raises(RunMismatchError, match="belongs to another run"):
        stages.run_shards(cfg, [0, 1], folder)


def test_claims_are_exclusive_and_expire(tmp_path):
    store = Store(str(tmp_path))
    a = try_claim(store, "s.tar", "ownerA", lease=0.6)
    assert a is not None and try_claim(store, "s.tar", "ownerB", lease=0.6) is None
    a._stop.set()  # owner A "dies": no more heartbeats
    a._thread.join()
    time.sleep(0.8)
    b = try_claim(store, "s.tar", "ownerB", lease=5)
    assert b is not None and b.gen == 1 and not (tmp_path / claim_file("s.tar", 0)).exists()
    b.release()
    assert not list(tmp_path.glob("*.claim*"))


def test_heartbeat_keeps_a_claim_alive(tmp_path):
    store = Store(str(tmp_path))
    a = try_claim(store, "s.tar", "ownerA", lease=0.4)
    time.sleep(1.2)  # three leases: only the heartbeat keeps it
    assert try_claim(store, "s.tar", "ownerB", lease=0.4) is None and not a.lost
    a.release()


def test_sibling_in_progress_file_is_not_removed(reference, tmp_path):
    """A worker of shards [0, 1) leaves shard 1's in-progress file (held by a live claim) alone; once that
    claim expires, the shard is taken over and its leftover removed."""
    out = tmp_path / "run"
    cfg = _cfg(out)
    folder = RunFolder(cfg, owner="me")
    folder.open(resume=False)
    store = folder.store
    sibling = try_claim(store, "hands-000001.tar", "sibling", lease=1.0)
    (out / "hands-000001.tar.sibling.tmp").write_bytes(b"partial")
    stages.run_shards(cfg, [0], folder, wait=False)
    assert (out / "hands-000001.tar.sibling.tmp").exists() and folder.is_complete(0)
    with stages.GenerationPipeline(cfg) as pipe:
        assert stages.run_shard(cfg, 1, pipe, folder) is None  # the sibling's claim is live
    sibling._stop.set()
    sibling._thread.join()
    time.sleep(1.2)
    stages.run_shards(cfg, [1], folder, poll=0.2)
    assert not (out / "hands-000001.tar.sibling.tmp").exists() and folder.is_complete(1)
    stages.finalize(cfg, folder)
    assert _hashes(out) == _hashes(reference)


def test_finalize_loads_no_models(reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for name in ("manifest.json", "index.parquet"):
        (out / name).unlink()

    def no_models(self):
        raise AssertionError("finalize built the stages (hand model, renderer, generator)")

    monkeypatch.setattr(stages.GenerationPipeline, "load", no_models)
    manifest = stages.finalize(_cfg(out))
    assert manifest["counts"]["written"] == 6
    mine, ref = (json.loads((d / "manifest.json").read_text()) for d in (out, reference))
    assert mine["config"].pop("out") != ref["config"].pop("out")
    assert mine == ref and (out / "index.parquet").read_bytes() == (reference / "index.parquet").read_bytes()


def test_concurrent_runs_same_config_cooperate(reference, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HANDGEN_LEASE_SECONDS": "20"}
    procs = [_cli(out, "--samples", "12", "--shard-size", "2", env=env) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    single = tmp_path / "single"
    _run(_cfg(single, samples=12, shard_size=2))
    assert _hashes(out) == _hashes(single) and len(_hashes(out)) == 6
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.claim*"))
    report = validate(out)
    assert report.passed, report.errors


def test_concurrent_runs_other_config_one_is_refused(tmp_path):
    out = tmp_path / "run"
    procs = [_cli(out, "--seed", str(seed)) for seed in (0, 7)]
    results = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    err = next(r[1] for p, r in zip(procs, results, strict=True) if p.returncode == 2)
    assert len(_stderr_lines(err)) == 1 and "seed" in err and "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert manifest["config"]["seed"] == run["config"]["seed"]
    assert validate(out).passed


def test_unfinished_run_without_resume_is_refused(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for name in ("manifest.json", "index.parquet", "hands-000001.tar", "hands-000001.meta.json"):
        (out / name).unlink()
    with pytest.raises(StoreError, match="--resume"):
        RunFolder(_cfg(out)).open(resume=False)


def test_chaos_kill_a_worker_mid_shard(tmp_path):
    """4 local processes (a parent that owns the whole range + 3 workers); whichever process is caught writing
    a shard is killed with SIGKILL. A killed worker's shard is taken over by the others; a killed parent takes
    its workers with it and the rerun finishes the run. Either way every shard exists once, byte-identical to
    a single-process run, the run validates, and a further rerun finds it finished."""
    out = tmp_path / "run"
    kw = {"samples": 24, "shard_size": 4, "image_size": 192}
    args = sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in kw.items()), [])
    env = {**os.environ, "HANDGEN_LEASE_SECONDS": "3"}
    p = _cli(out, "--workers", "4", *args, env=env)
    victim = None
    deadline = time.monotonic() + 240
    while victim is None and time.monotonic() < deadline and p.poll() is None:
        for claim in out.glob("*.claim*"):
            if claim.name.endswith(".tmp"):
                continue
            try:
                held = json.loads(claim.read_text())
            except (OSError, ValueError):
                continue
            shard = claim.name.split(".claim")[0]
            if list(out.glob(f"{shard}.{held['owner']}.tmp")):
                victim = held["pid"]
                os.kill(victim, signal.SIGKILL)
                break
        time.sleep(0.02)
    _, err = p.communicate(timeout=300)
    assert victim is not None, "no process was caught mid-shard"
    if victim == p.pid:  # the parent died (and its workers with it): the rerun finishes the run
        assert p.returncode == -signal.SIGKILL
        assert not (out / "manifest.json").exists()
        rerun = _cli(out, "--resume", "--workers", "2", *args, env=env)
        _, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err[-3000:]
    else:
        assert p.returncode == 0, err[-3000:]
    single = tmp_path / "single"
    _run(_cfg(single, **kw))
    assert _hashes(out) == _hashes(single) and len(_hashes(out)) == 6
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.claim*"))
    report = validate(out)
    assert report.passed, report.errors
    again = _cli(out, "--resume", *args)
    stdout, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "nothing to do" in stdout


def test_s3_kill_resume_validate_read(s3_bucket, tmp_path):
    """On s3:// (a real moto server process): generate, kill -9 after the first shard lands, resume, then
    validate and read the shards back; the shards equal a local single-process run byte for byte."""
    from sinks.reader import open_shards

    url = f"{s3_bucket}/run"
    kw = {"samples": 12, "shard_size": 3}
    args = sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in kw.items()), [])
    store = Store(url)
    p = _cli(url, *args, cwd=tmp_path)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and p.poll() is None:
        if "hands-000000.tar" in store.listdir():
            break
        time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    names = store.listdir()
    assert "hands-000000.tar" in names and "manifest.json" not in names, names
    again = _cli(url, "--resume", *args, cwd=tmp_path)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    names = store.listdir()
    assert not [n for n in names if n.endswith(".tmp") or ".claim" in n], names
    single = tmp_path / "single"
    _run(_cfg(single, **kw))
    remote = {n: hashlib.sha256(store.read_bytes(n)).hexdigest() for n in names if n.endswith(".tar")}
    assert remote == _hashes(single)
    report = validate(url)
    assert report.passed, report.errors
    keys = [rec["key"] for rec in open_shards(url, split_by_worker=False)]
    assert len(keys) == 12 and len(set(keys)) == 12
    assert sorted(os.listdir(tmp_path)) == ["single"]  # nothing went to a local folder named after the URL


def _generate_cmd(out, *extra, prefect: bool) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "generate",
        "--out",
        str(out),
        "-q",
        "--samples",
        "4",
        "--image-size",
        "96",
    ]
    return cmd + ([] if prefect else ["--no-prefect"]) + list(extra)


@pytest.mark.parametrize("prefect", [False, True], ids=["direct", "prefect"])
def test_error_paths_are_one_line(reference, tmp_path, prefect):
    """The same one stderr line and exit 2 on both paths, and no run folder for a bad model path."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    mismatch = tmp_path / "mismatch"
    shutil.copytree(reference, mismatch)
    cases = [
        (tmp_path / "q", ["--captioner", "qwen-vl:/nonexistent"], "Qwen-VL model folder not found"),
        (blocker / "out", [], "file"),
        (mismatch, ["--resume", "--seed", "9"], "seed"),
    ]
    for out, extra, needle in cases:
        r = subprocess.run(
            _generate_cmd(out, *extra, prefect=prefect), capture_output=True, text=True, timeout=300
        )
        lines = _stderr_lines(r.stderr)
        assert r.returncode == 2 and len(lines) == 1, (extra, r.stderr[-3000:])
        assert lines[0].startswith("hands: error: ") and needle in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "q").exists()


def test_ctrl_c_is_one_line_and_resumable(tmp_path):
    out = tmp_path / "run"
    cmd = _generate_cmd(out, "--workers", "2", "--shard-size", "1", prefect=False)
    cmd[cmd.index("4")] = "40"
    p = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list(out.glob("*.tar")):
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = p.communicate(timeout=60)
    lines = _stderr_lines(err)
    assert p.returncode == 130 and lines == ["hands: interrupted; continue with --resume"], err[-3000:]
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert validate(out).passed
