"""hands validate: run identity, keys, shard membership, label parameters through the hand model, fsspec
URLs, and labels that Hugging Face ``datasets`` and pandas read (per-sample seeds fit int64).

Runs are generated through the real code path (``sinks.run.RunFolder`` + ``flows.stages``) once per module;
tests tamper with copies and then reseal every checksum (shard sha256/count/bytes in the manifest and the
shard reports, ``index.parquet`` rebuilt from the labels and its sha256), so only the check under test can
catch the tampering.
"""

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from evaluation.validate import CHECKS, PARAMS_TOLERANCE_M, validate
from flows import stages
from pipeline.config import RunConfig
from pipeline.schema import Label
from pipeline.seeding import SEED_LIMIT, sample_seed
from sinks.records import index_row
from sinks.run import RunFolder
from sinks.store import StoreError
from sinks.webdataset_sink import INDEX_SCHEMA, meta_name

BASE = {"samples": 6, "shard_size": 3, "image_size": 96, "batch_size": 3}


def _generate(out: Path, shards: list[int] | None = None, finalize: bool = True, **kw) -> RunConfig:
    """A run written as ``hands generate`` writes it (run.json first, shards under claims, then the index and
    the manifest); ``shards`` limits the shards written (then nothing is finalised)."""
    cfg = RunConfig(out=str(out), **{**BASE, **kw})
    folder = RunFolder(cfg)
    folder.open(resume=True)
    stages.run_shards(cfg, list(range(cfg.num_shards)) if shards is None else shards, folder)
    if finalize and shards is None:
        stages.finalize(cfg, folder)
    return cfg


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A complete run of ``BASE`` (seed 0, 2 shards of 3 samples, hash-derived run tag)."""
    out = tmp_path_factory.mktemp("base") / "run"
    _generate(out)
    return out


@pytest.fixture
def run_copy(tmp_path, base_run) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(base_run, dst)
    return dst


def _failed(report) -> set[str]:
    return {c for c, (_, f) in report.counts.items() if f}


# ----------------------------------------------------------------------------------------------------
# tampering helpers
# ----------------------------------------------------------------------------------------------------
def _rewrite_tar(path: Path, edit) -> None:
    """Rewrite a shard in place, passing each member through ``edit(member_name, bytes) -> bytes``; member
    order and headers (mtime 0, no user) are kept, as the shard writer makes them."""
    out = io.BytesIO()
    with tarfile.open(path) as tin, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin.getmembers():
            data = edit(m.name, tin.extractfile(m).read())
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    path.write_bytes(out.getvalue())


def _labels(path: Path) -> list[Label]:
    files: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, _, ext = m.name.partition(".")
            files.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return [Label.from_bytes(f["label.json"], f["verts.npy"]) for f in files.values()]


def _reseal(run: Path) -> None:
    """Recompute every checksum a tamperer would: each listed shard's sha256, bytes and count (manifest and
    shard report), ``index.parquet`` rebuilt from the shards' labels, its sha256 and the written count."""
    manifest = json.loads((run / "manifest.json").read_text())
    rows = []
    for entry in manifest["shards"]:
        tar = run / entry["name"]
        data = tar.read_bytes()
        labels = _labels(tar)
        shard_rows = [index_row(label, entry["name"]) for label in labels]
        rows += shard_rows
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), count=len(labels))
        meta_path = run / meta_name(entry["name"])
        meta = json.loads(meta_path.read_text())
        meta.update(sha256=entry["sha256"], bytes=entry["bytes"], count=entry["count"], rows=shard_rows)
        meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True))
    _write_index(run, manifest, pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))
    manifest["counts"]["written"] = len(rows)
    (run / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def _write_index(run: Path, manifest: dict, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    (run / "index.parquet").write_bytes(buf.getvalue())
    manifest["index"].update(sha256=hashlib.sha256(buf.getvalue()).hexdigest(), rows=table.num_rows)


def _edit_label(key: str, change):
    """A tar edit applying ``change(label_dict)`` to record ``key``'s label.json."""

    def edit(name: str, data: bytes) -> bytes:
        if name == f"{key}.label.json":
            d = json.loads(data)
            change(d)
            return (json.dumps(d, indent=1) + "\n").encode()
        return data

    return edit


# ----------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------
def test_untouched_run_passes_every_check(base_run, run_copy):
    report = validate(base_run)
    assert report.passed, report.errors
    c = report.counts
    assert set(c) == set(CHECKS) and _failed(report) == set()
    assert c["run"] == [3, 0]  # run.json readable, self-consistent, agrees with the manifest
    assert c["keys"] == [6, 0] and c["schema"] == [6, 0] and c["membership"] == [3, 0]
    hands = sum(
        h is not None for p in sorted(base_run.glob("*.tar")) for lb in _labels(p) for h in lb.hands.values()
    )
    assert (
        c["params"] == [hands, 0] and 6 <= hands <= 12
    )  # one item per present hand; absent hands not counted
    _reseal(run_copy)  # the tampering helper alone breaks nothing
    resealed = validate(run_copy, render=False)
    assert resealed.passed, resealed.errors


def test_shifted_mano_pose_fails_params(run_copy):
    tar = run_copy / "hands-000001.tar"
    victim = _labels(tar)[1]
    n_hands = sum(h is not None for h in victim.hands.values())

    def shift(d):
        for h in d["hands"].values():
            if h is not None:
                h["mano_pose"] = [v + 0.3 for v in h["mano_pose"]]

    _rewrite_tar(tar, _edit_label(victim.key, shift))
    _reseal(run_copy)
    report = validate(run_copy)
    assert _failed(report) == {"params"}, (
        report.errors
    )  # checksums, index, render, projection: all still pass
    assert report.counts["params"][1] == n_hands
    assert victim.key in report.errors[0] and "mm" in report.errors[0]


def test_forearms_are_re_rendered(base_run, run_copy):
    """The default (composite) run has forearms (``props``); validate re-renders them with the hands, so a
    changed forearm in a label (its mask no longer matches) fails the render check, and nothing else."""
    labels = [lb for p in sorted(base_run.glob("*.tar")) for lb in _labels(p)]
    assert all(lb.props is not None for lb in labels)
    tar = run_copy / "hands-000000.tar"
    victims = [lb for lb in _labels(tar) if lb.props is not None]

    def stretch(d):  # every arm turned by 0.6 rad about both axes: the pixels it covers change
        for arm in d["props"]["forearm"].values():
            if arm is not None:
                arm["bend"] = [arm["bend"][0] + 0.6, arm["bend"][1] - 0.6]

    for lb in victims:
        _rewrite_tar(tar, _edit_label(lb.key, stretch))
    _reseal(run_copy)
    report = validate(run_copy)
    assert _failed(report) <= {"render", "visibility"} and "render" in _failed(report), report.errors


def test_a_run_written_before_the_enclosed_joint_rule_validates_under_it(run_copy, hand_model):
    """A renderer record without ``enclosed_tolerance`` (a run written before the enclosed-joint rule) is
    re-rendered under the depth tolerance alone: this run's labels, drawn under the rule, then differ from the
    re-render, and the same run relabelled as the earlier rule drew it passes."""
    from renderers.base import RenderBatch, RenderConfig, make_renderer, render_item

    path = run_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    record = manifest["renderer"]
    assert record.pop("enclosed_tolerance") == 0.03
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    _reseal(run_copy)
    report = validate(run_copy)
    assert _failed(report) == {"render"}, report.errors
    assert "joints_visible differs from the re-render" in " ".join(report.errors)

    settings = {k: v for k, v in record.items() if k != "name"}
    legacy = make_renderer("opengl", config=RenderConfig(**settings, enclosed_tolerance=None))
    changed = 0
    try:
        for tar in sorted(run_copy.glob("*.tar")):
            for lb in _labels(tar):
                res = legacy.render(RenderBatch([render_item(lb)], hand_model.faces))[0]
                old = {s: np.asarray(v).tolist() for s, v in res.joints_visible.items() if v is not None}
                changed += sum(old[s] != list(h.joints_visible) for s, h in lb.hands.items() if h is not None)

                def relabel(d, old=old):
                    for s, vis in old.items():
                        d["hands"][s]["joints_visible"] = vis

                _rewrite_tar(tar, _edit_label(lb.key, relabel))
    finally:
        legacy.close()
    assert changed >= 1
    _reseal(run_copy)
    report = validate(run_copy)
    assert report.passed, report.errors


def test_visibility_is_checked_against_the_re_render(base_run, run_copy):
    """A hidden joint of a hand with a forearm marked visible: where its pixel shows no hand (the arm's, which
    ``mask.png`` does not hold), the record check cannot tell, so the re-render's ``joints_visible`` does;
    ``render=False`` (no re-render) passes such a label."""
    tar = run_copy / "hands-000000.tar"
    masks = {}
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            if m.name.endswith(".mask.png"):
                masks[m.name[: -len(".mask.png")]] = np.asarray(
                    Image.open(io.BytesIO(tf.extractfile(m).read()))
                )
    target = None
    for lb in _labels(tar):
        for s, h in lb.hands.items():
            arm = h is not None and (lb.props or {}).get("forearm", {}).get(s)
            if not arm or lb.view is not None:
                continue
            H, W = lb.image_size
            for j in np.nonzero(~np.asarray(h.joints_visible))[0]:
                u, v = np.rint(h.joints_2d[j]).astype(int)
                if 0 <= u < W and 0 <= v < H and masks[lb.key][v, u] == 0:
                    target = (lb.key, s, int(j))
                    break
            if target:
                break
        if target:
            break
    assert target is not None, "no hidden joint over a non-hand pixel in the base run"
    key, side, joint = target

    def show(d):
        d["hands"][side]["joints_visible"][joint] = True

    _rewrite_tar(tar, _edit_label(key, show))
    _reseal(run_copy)
    assert validate(run_copy, render=False).passed
    report = validate(run_copy)
    assert _failed(report) == {"render"}, report.errors
    assert f"{side} joints_visible differs from the re-render at joints [{joint}]" in " ".join(report.errors)


def test_small_numeric_noise_is_within_tolerance(run_copy):
    """A label re-serialised with joints moved by a tenth of the tolerance still passes: the check compares
    within 0.1 mm, it does not demand bit equality with the writer's forward pass."""
    tar = run_copy / "hands-000000.tar"
    key = _labels(tar)[0].key

    def nudge(d):
        for h in d["hands"].values():
            if h is not None:
                h["joints_3d"] = (np.asarray(h["joints_3d"]) + PARAMS_TOLERANCE_M / 10).tolist()

    _rewrite_tar(tar, _edit_label(key, nudge))
    _reseal(run_copy)
    report = validate(run_copy, render=False)
    assert "params" not in _failed(report), report.errors


@pytest.fixture(scope="module")
def foreign_shards(tmp_path_factory, base_run) -> dict[str, Path]:
    """Shard 0 of two other runs of 3 samples: seed 7 with its own (hash-derived) run tag, and seed 7 under
    the base run's tag given explicitly (same keys as the base run, other content)."""
    tag = json.loads((base_run / "run.json").read_text())["run_tag"]
    out = {}
    for name, kw in {"other_tag": {}, "same_tag": {"run_tag": tag}}.items():
        run = tmp_path_factory.mktemp(name) / "run"
        _generate(run, samples=3, seed=7, shards=[0], **kw)
        out[name] = run / "hands-000000.tar"
    return out


@pytest.mark.parametrize("variant", ["other_tag", "same_tag"])
def test_foreign_shard_resealed_fails_keys(run_copy, foreign_shards, variant):
    shutil.copyfile(foreign_shards[variant], run_copy / "hands-000000.tar")
    _reseal(run_copy)
    report = validate(run_copy)
    assert _failed(report) == {"keys"}, report.errors
    assert report.counts["keys"] == [3, 3]
    msgs = "\n".join(report.errors)
    assert "seed" in msgs and ("run tag" in msgs if variant == "other_tag" else "key differs" not in msgs)


def test_index_row_moved_to_another_shard_fails(run_copy):
    manifest = json.loads((run_copy / "manifest.json").read_text())
    rows = pq.read_table(run_copy / "index.parquet").to_pylist()
    rows[4]["shard"] = "hands-000009.tar"
    _write_index(run_copy, manifest, pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))
    (run_copy / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    report = validate(run_copy, render=False)
    assert _failed(report) == {"membership", "keys"}, report.errors
    msgs = "\n".join(report.errors)
    assert "hands-000009.tar, which the manifest does not list" in msgs
    assert "1 rows for shard hands-000009.tar" in msgs and "2 rows for hands-000001.tar" in msgs


def test_manifest_missing_a_shard_fails_membership(run_copy):
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:1]
    (run_copy / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (run_copy / "hands-000001.tar").unlink()
    (run_copy / meta_name("hands-000001.tar")).unlink()
    _reseal(run_copy)
    report = validate(run_copy, render=False)
    assert _failed(report) == {"membership"}, report.errors
    assert "not listed: ['hands-000001.tar']" in report.errors[0]


def _edit_run_json(run: Path, change) -> None:
    d = json.loads((run / "run.json").read_text())
    change(d)
    (run / "run.json").write_text(json.dumps(d, indent=1))


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("config_changed", "config_sha256"),
        ("hash_replaced", "differs from its config's hash"),
        ("manifest_other_tag", "manifest.json: run_tag"),
        ("unreadable", "not valid JSON"),
        ("missing", "run.json is missing"),
    ],
)
def test_run_identity_tampering_fails_run(run_copy, case, expect):
    run_file = run_copy / "run.json"
    if case == "config_changed":  # the config says 21 steps, the hash (and tag) are the 20-step run's
        _edit_run_json(run_copy, lambda d: d["config"].update(steps=21))
    elif case == "hash_replaced":
        _edit_run_json(run_copy, lambda d: d.update(config_sha256="0" * 64))
    elif case == "manifest_other_tag":
        m = json.loads((run_copy / "manifest.json").read_text())
        m["run_tag"] = "elsewhere"
        (run_copy / "manifest.json").write_text(json.dumps(m))
    elif case == "unreadable":
        run_file.write_text("{not json")
    else:
        run_file.unlink()
    report = validate(run_copy, render=False)
    # keys still pass: without a usable run.json they are checked against the manifest's identity
    assert _failed(report) == {"run"}, report.errors
    assert expect in "\n".join(report.errors), report.errors
    if case == "hash_replaced":  # the manifest's hash now disagrees with run.json's too
        assert report.counts["run"] == [1, 2]


def test_seeds_fit_int64():
    seeds = [
        sample_seed(s, i) for s in (0, 1, 7, 2**32 + 5, 2**63 - 1) for i in (*range(500), 10**9, 10**10 - 1)
    ]
    assert all(0 <= s < SEED_LIMIT == 2**63 for s in seeds)
    assert len(set(seeds)) == len(seeds)
    assert sum(s >= 2**62 for s in seeds) > len(seeds) // 3  # 63 bits used, not squeezed into a small range
    assert sample_seed(3, 11) == sample_seed(3, 11)  # still a pure function of (run seed, index)


def test_huggingface_datasets_and_pandas_read_the_run(base_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # read when datasets is first imported
    import datasets
    import pandas as pd

    tars = [str(p) for p in sorted(base_run.glob("*.tar"))]
    ds = datasets.load_dataset(
        "webdataset", data_files={"train": tars}, split="train", cache_dir=str(tmp_path / "hf")
    )
    assert ds.num_rows == 6
    labels = ds["label.json"]
    assert [lb["index"] for lb in labels] == list(range(6))
    assert all(0 <= lb["seed"] < 2**63 for lb in labels)
    assert [lb["seed"] for lb in labels] == [sample_seed(0, i) for i in range(6)]
    assert ds[2]["__key__"] == labels[2]["key"]
    df = pd.read_parquet(base_run / "index.parquet")
    assert len(df) == 6 and df["key"].tolist() == [lb["key"] for lb in labels]
    assert df["shard"].tolist() == ["hands-000000.tar"] * 3 + ["hands-000001.tar"] * 3
    assert set(df["hand_type"]) <= {"right", "left", "interacting"}


@pytest.fixture
def memory_run(base_run):
    import fsspec

    fs = fsspec.filesystem("memory")
    root = "/validate-tests/run"
    for p in base_run.iterdir():
        fs.pipe_file(f"{root}/{p.name}", p.read_bytes())
    yield f"memory://{root}"
    fs.rm("/validate-tests", recursive=True)


def test_validate_on_a_memory_url(memory_run):
    report = validate(memory_run)
    assert report.passed, report.errors
    c = report.counts
    assert c["run"] == [3, 0] and c["keys"] == [6, 0] and c["render"] == [6, 0] and c["params"][0] >= 6


def test_not_a_run_is_one_line(tmp_path, capsys):
    from flows.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path / "missing": "output folder not found",
        tmp_path / "empty": "is not a handgen run",
        tmp_path / "junk": "is not a handgen run",
        tmp_path / "file": "not a folder",
        "memory://validate-tests/nothing": "output folder not found",
    }
    for where, msg in cases.items():
        with pytest.raises(StoreError, match=msg):
            validate(where)
        capsys.readouterr()
        assert main(["validate", str(where)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("hands: error: ") and msg in err[0]


def test_unfinished_run_reports_a_missing_manifest(tmp_path):
    out = tmp_path / "partial"
    _generate(out, shards=[0])
    report = validate(out, render=False)
    assert not report.passed and report.counts["manifest"] == [0, 1] and report.counts["run"] == [2, 0]
    assert "not finalised" in report.errors[0]


def test_a_run_made_before_props_keeps_its_identity():
    """A stored config without ``props`` (written before props existed) is read as the run it was
    (``props: none``), not as today's default, so ``hands validate`` finds its hash and run tag unchanged."""
    from evaluation.validate import _run_config

    stored = RunConfig(props="none").model_dump(mode="json")
    del stored["props"]
    cfg = _run_config(stored, "run.json")
    assert cfg.props == "none"
    assert cfg.config_sha256() == "3d5c120baf6bb8599c6caabbe80e431e359236e49578b2f2ca68c6d7d8ef7efe"
    assert RunConfig(**{k: v for k, v in stored.items() if k != "out"}).props == "forearm,objects"


def test_a_run_made_with_the_first_stand_in_validates(tmp_path, monkeypatch):
    """Labels record the stand-in by its sha256; ``hands validate`` finds the stand-in version that made them
    (a run written before the palmar tissue of version 2 still validates), and names a stand-in that is none
    of this version's in one line."""
    import pipeline.hand_model as hm

    def first(side, version=None):
        return hm.standin.build_standin(side, 1)

    monkeypatch.setattr(hm, "standin_data", first)
    out = tmp_path / "run"
    _generate(out, samples=3, shard_size=3)
    monkeypatch.undo()
    old_sha = hm.HandModel(standin_version=1).info.sha256
    assert old_sha != hm.HandModel().info.sha256
    labels = _labels(out / "hands-000000.tar")
    assert {lb.hand_model["sha256"] for lb in labels} == {old_sha}
    report = validate(out)
    assert report.passed, report.errors

    def unknown(d):
        d["hand_model"]["sha256"] = "ab" * 32

    _rewrite_tar(out / "hands-000000.tar", _edit_label(labels[0].key, unknown))
    _reseal(out)
    report = validate(out)
    assert "params" in _failed(report), report.errors
    assert any("is none of this version's stand-ins (versions 1, 2, 3)" in e for e in report.errors), (
        report.errors
    )
