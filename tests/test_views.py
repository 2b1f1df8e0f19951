"""``hands generate --views global,local``: each sample's local close-up is a record of its own, right after
the global one, with an exact label in the crop's frame (camera, keypoints, visibility, box, mask), that
``hands validate`` checks like any other, and that the index and the reader name as ``local``.

Runs go through the real command line (``flows.cli.main``, ``--no-prefect``) on the embedded composite
generator; one test runs a tiny AttentionHand model, whose local records carry its generated local image.
"""

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.validate import validate
from flows.cli import main
from pipeline.camera import crop_intrinsics, project_points
from pipeline.config import RunConfig
from pipeline.imaging import crop_resample
from pipeline.schema import Label
from sinks.records import decode_image, decode_record, index_row
from sinks.webdataset_sink import INDEX_SCHEMA, meta_name

L = 512  # RenderConfig.local_size
COMMON = (
    "--samples",
    "4",
    "--shard-size",
    "2",
    "--image-size",
    "96",
    "--batch-size",
    "2",
    "--run-tag",
    "vw",
    "--no-prefect",
    "-q",
)
#: label.json fields of a global record (DESIGN section 3): no ``view``
GLOBAL_FIELDS = {
    "schema_version",
    "key",
    "index",
    "seed",
    "image_size",
    "camera",
    "hand_type",
    "hands",
    "crop_box",
    "caption",
    "hand_token_indices",
    "source",
    "hand_model",
    "generator",
}


def _generate(out: Path, *args: str) -> None:
    assert main(["generate", "--out", str(out), *COMMON, *args]) == 0


def _records(run: Path) -> list[tuple[str, str, dict]]:
    """(shard name, key, files) of every record, in shard and file order."""
    out = []
    for tar in sorted(run.glob("*.tar")):
        groups: dict[str, dict] = {}
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, _, ext = m.name.partition(".")
                groups.setdefault(key, {})[ext] = tf.extractfile(m).read()
        out += [(tar.name, k, f) for k, f in groups.items()]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The same 4 samples (run tag ``vw``, 2 shards) written with ``--views global,local`` and by default."""
    root = tmp_path_factory.mktemp("views")
    _generate(root / "local", "--views", "global,local")
    _generate(root / "default")
    return {"local": root / "local", "default": root / "default"}


@pytest.fixture
def local_copy(tmp_path, runs) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(runs["local"], dst)
    return dst


def test_two_records_per_sample_local_right_after_global(runs):
    run = runs["local"]
    recs = _records(run)
    by_shard: dict[str, list[str]] = {}
    for shard, key, _ in recs:
        by_shard.setdefault(shard, []).append(key)
    assert by_shard == {
        "hands-000000.tar": ["vw-0000000000", "vw-0000000000-local", "vw-0000000001", "vw-0000000001-local"],
        "hands-000001.tar": ["vw-0000000002", "vw-0000000002-local", "vw-0000000003", "vw-0000000003-local"],
    }
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["written"] == 8 and [s["count"] for s in manifest["shards"]] == [4, 4]
    assert manifest["config"]["views"] == ["global", "local"]
    index = pq.read_table(run / "index.parquet").to_pylist()
    assert [(r["key"], r["view"], r["index"], r["shard"]) for r in index] == [
        (key, "local" if key.endswith("-local") else "global", int(key.split("-")[1]), shard)
        for shard, key, _ in recs
    ]
    # a local record has the same files as a global one; mesh_local.png is its mesh.png (its own local view)
    for _, key, files in recs:
        assert set(files) == {
            "image.jpg",
            "mesh.png",
            "mesh_local.png",
            "mask.png",
            "verts.npy",
            "label.json",
        }
        if key.endswith("-local"):
            assert files["mesh_local.png"] == files["mesh.png"]


def test_local_labels_are_exact_in_the_crop_frame(runs):
    recs = _records(runs["local"])
    decoded = {key: decode_record({**files, "__key__": key}) for _, key, files in recs}
    n_visible = 0
    for key, dec in decoded.items():
        if not key.endswith("-local"):
            continue
        lab, parent = dec["label"], decoded[key.removesuffix("-local")]
        glab = parent["label"]
        assert lab.view == {
            "name": "local",
            "parent": glab.key,
            "parent_image_size": [96, 96],
            "parent_crop_box": glab.crop_box.tolist(),
            "image": "resampled",
        }
        assert lab.image_size == (L, L) and lab.crop_box.tolist() == [-0.5, -0.5, L - 0.5, L - 0.5]
        assert dec["image"].shape == dec["mesh"].shape == (L, L, 3) and dec["mask"].shape == (L, L)
        # the crop camera: K composed with the crop box and the resize
        np.testing.assert_array_equal(lab.camera.K, crop_intrinsics(glab.camera.K, glab.crop_box, L))
        assert (lab.index, lab.seed, lab.caption, lab.hand_type) == (
            glab.index,
            glab.seed,
            glab.caption,
            glab.hand_type,
        )
        np.testing.assert_array_equal(lab.verts, glab.verts)
        for i, s in enumerate(("right", "left")):
            h, g = lab.hands[s], glab.hands[s]
            if h is None:
                assert g is None
                continue
            np.testing.assert_array_equal(h.joints_3d, g.joints_3d)
            np.testing.assert_array_equal(h.mano_pose, g.mano_pose)
            # joints_2d: the projection of joints_3d with the local camera
            np.testing.assert_allclose(h.joints_2d, project_points(h.joints_3d, lab.camera.K), atol=1e-9)
            # the global joints mapped through the crop land at the same place (up to float rounding)
            s_ = L / (glab.crop_box[2] - glab.crop_box[0])
            np.testing.assert_allclose(h.joints_2d, (g.joints_2d - glab.crop_box[:2]) * s_ - 0.5, atol=1e-6)
            # every visible joint lies on (within 1 px of) its hand's local mask, or on a pixel that shows no
            # hand when the hand has a forearm (its own arm, which the mask does not hold)
            arm = bool(((lab.props or {}).get("forearm") or {}).get(s))
            for j in np.nonzero(h.joints_visible)[0]:
                u, v = h.joints_2d[j]
                r, c = int(round(v)), int(round(u))
                win = dec["mask"][max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] == i + 1
                rows, cols = np.nonzero(win)
                on_mask = (
                    len(rows) and np.hypot(cols + max(c - 1, 0) - u, rows + max(r - 1, 0) - v).min() <= 1.0
                )
                assert on_mask or (arm and dec["mask"][r, c] == 0)
                n_visible += 1
            # the box holds the hand's mask pixels
            rows, cols = np.nonzero(dec["mask"] == i + 1)
            if len(rows):
                x0, y0, x1, y1 = h.bbox
                assert x0 - 1 <= cols.min() and cols.max() <= x1 + 1
                assert y0 - 1 <= rows.min() and rows.max() <= y1 + 1
        # composite: the local image is the global image resampled through the crop (JPEG noise aside)
        want = crop_resample(parent["image"], glab.crop_box, L).astype(float)
        assert np.abs(dec["image"].astype(float) - want).mean() < 4.0
    assert n_visible > 20


def test_validate_passes_on_a_local_run(runs):
    report = validate(runs["local"])
    assert report.passed, report.errors
    c = report.counts
    assert c["keys"] == [8, 0] and c["views"] == [8, 0] and c["schema"] == [8, 0] and c["render"] == [8, 0]
    assert c["projection"] == [8, 0] and c["visibility"] == [8, 0]


# ----------------------------------------------------------------------------------------------------
# tampering (every checksum resealed, so only the record checks can catch it)
# ----------------------------------------------------------------------------------------------------
def _edit_label(run: Path, key: str, change=None) -> None:
    """Apply ``change(label_dict)`` to record ``key``'s label.json (no ``change``: drop it); reseal."""
    tar = next(p for p, k, _ in ((run / s, k, f) for s, k, f in _records(run)) if k == key)
    out = io.BytesIO()
    with tarfile.open(tar) as tin, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if change is None and m.name.startswith(key + "."):
                continue
            if m.name == f"{key}.label.json":
                d = json.loads(data)
                change(d)
                data = (json.dumps(d, indent=1) + "\n").encode()
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    tar.write_bytes(out.getvalue())
    _reseal(run)


def _reseal(run: Path) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    rows = []
    for entry in manifest["shards"]:
        tar = run / entry["name"]
        data = tar.read_bytes()
        files = [f for s, _, f in _records(run) if s == tar.name]
        labels = [Label.from_bytes(f["label.json"], f["verts.npy"]) for f in files]
        shard_rows = [index_row(label, entry["name"]) for label in labels]
        rows += shard_rows
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), count=len(labels))
        meta = json.loads((run / meta_name(entry["name"])).read_text())
        meta.update(sha256=entry["sha256"], bytes=entry["bytes"], count=entry["count"], rows=shard_rows)
        (run / meta_name(entry["name"])).write_text(json.dumps(meta, indent=1, sort_keys=True))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), buf, compression="zstd")
    (run / "index.parquet").write_bytes(buf.getvalue())
    manifest["index"].update(sha256=hashlib.sha256(buf.getvalue()).hexdigest(), rows=len(rows))
    manifest["counts"]["written"] = len(rows)
    (run / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def _failed(report) -> set[str]:
    return {c for c, (_, f) in report.counts.items() if f}


def test_a_shifted_local_camera_fails_validate(local_copy):
    def shift(d):
        d["camera"]["K"][0][2] += 3.0

    _edit_label(local_copy, "vw-0000000001-local", shift)
    report = validate(local_copy)
    assert not report.passed
    assert {"projection", "render", "views"} <= _failed(report), report.errors
    assert all("vw-0000000001-local" in e for e in report.errors), report.errors


def test_a_consistently_shifted_local_camera_still_fails(local_copy):
    """joints_2d re-projected with the shifted camera: projection passes; the re-render and the parent not."""

    def shift(d):
        d["camera"]["K"][1][2] -= 5.0
        for h in d["hands"].values():
            if h is not None:
                h["joints_2d"] = project_points(np.array(h["joints_3d"]), np.array(d["camera"]["K"])).tolist()

    _edit_label(local_copy, "vw-0000000002-local", shift)
    report = validate(local_copy)
    assert _failed(report) == {"render", "views"} or _failed(report) == {"render", "views", "visibility"}, (
        report.errors
    )


def test_a_local_record_without_its_global_record_fails(local_copy):
    _edit_label(local_copy, "vw-0000000001")  # the global record goes, its local record stays
    report = validate(local_copy)
    assert _failed(report) == {"views"}, report.errors
    assert "not its global record vw-0000000001" in report.errors[0]


def test_a_global_record_without_its_local_record_fails(local_copy):
    _edit_label(local_copy, "vw-0000000003-local")  # the shard then ends on a global record
    report = validate(local_copy)
    assert _failed(report) == {"views"} and "ends without its local record" in report.errors[0], report.errors


def test_the_reader_yields_each_records_view(runs):
    from sinks.reader import open_shards

    got = list(open_shards(runs["local"], verify=True))
    assert [(s["key"], s["view"], s["parent"]) for s in got] == [
        (f"vw-{i:010d}{suffix}", view, f"vw-{i:010d}")
        for i in range(4)
        for suffix, view in (("", "global"), ("-local", "local"))
    ]
    for s in got:
        assert s["image"].shape == ((L, L, 3) if s["view"] == "local" else (96, 96, 3))
    assert {s["view"] for s in open_shards(runs["default"])} == {"global"}


def test_default_run_is_unchanged_by_views(runs):
    """A default (global-only) run writes today's labels: no view field, the DESIGN field set (and the
    forearms' ``props``); and the global
    records of a --views global,local run are byte-identical to it (the feature only adds records)."""
    default = _records(runs["default"])
    assert [k for _, k, _ in default] == [f"vw-{i:010d}" for i in range(4)]
    for _, _, files in default:
        assert set(json.loads(files["label.json"])) == GLOBAL_FIELDS | {"props"}  # the composite's forearms
    local_globals = [(s, k, f) for s, k, f in _records(runs["local"]) if not k.endswith("-local")]
    assert local_globals == default
    index = pq.read_table(runs["default"] / "index.parquet")
    assert index.column("view").to_pylist() == ["global"] * 4
    run = json.loads((runs["default"] / "run.json").read_text())
    assert "views" not in RunConfig(**{k: v for k, v in run["config"].items() if k != "out"}).identity()
    report = validate(runs["default"])
    assert report.passed and report.counts["views"] == [0, 0], report.errors


@pytest.mark.parametrize("value", ["local", "global,foo", "global,global", "", "local,global,local"])
def test_bad_views_are_one_line_and_exit_2(tmp_path, capsys, value):
    out = tmp_path / "r"
    code = main(["generate", "--out", str(out), "--samples", "1", "--no-prefect", "-q", "--views", value])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hands: error: "), err
    assert "--views" in lines[0] and "Traceback" not in err and not out.exists()


def test_bad_views_in_a_preset_are_one_line(tmp_path, capsys):
    preset = tmp_path / "p.yaml"
    preset.write_text("views: [local]\n")
    code = main(
        [
            "generate",
            "--out",
            str(tmp_path / "r"),
            "--samples",
            "1",
            "--no-prefect",
            "-q",
            "--config",
            str(preset),
        ]
    )
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "views" in lines[0], lines


def test_attentionhand_local_records_carry_the_generated_local_image(tmp_path, monkeypatch):
    from generators.attention_hand.generator import AttentionHandGenerator

    model = tmp_path / "m"
    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", "attentionhand", "tiny", str(model)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    made: dict[str, np.ndarray] = {}
    original = AttentionHandGenerator.generate

    def spy(self, samples):
        out = original(self, samples)
        made.update({s.key: g.image_local.copy() for s, g in zip(samples, out, strict=True)})
        return out

    monkeypatch.setattr(AttentionHandGenerator, "generate", spy)
    preset = tmp_path / "lossless.yaml"
    preset.write_text("lossless: true\n")
    out = tmp_path / "run"
    assert (
        main(
            [
                "generate",
                "--out",
                str(out),
                "--samples",
                "2",
                "--shard-size",
                "2",
                "--image-size",
                "64",
                "--generator",
                f"attentionhand:{model}",
                "--steps",
                "1",
                "--views",
                "global,local",
                "--config",
                str(preset),
                "--run-tag",
                "ah",
                "--no-prefect",
                "-q",
            ]
        )
        == 0
    )
    recs = _records(out)
    assert [k for _, k, _ in recs] == [f"ah-{i:010d}{v}" for i in range(2) for v in ("", "-local")]
    for _, key, files in recs:
        label = json.loads(files["label.json"])
        assert label["generator"]["views"] == ["global", "local"]
        assert "image_local.png" not in files  # the local image travels in its own record
        if key.endswith("-local"):
            assert label["view"]["image"] == "generated"
            img = decode_image(files["image.png"])
            np.testing.assert_array_equal(img, made[label["view"]["parent"]])
            assert img.shape == (L, L, 3)
    report = validate(out)
    assert report.passed and report.counts["views"] == [4, 0], report.errors
