"""weights_id: a content hash of the weights actually loaded (pipeline.weights), cached per folder."""

import json
import os
import shutil
import time

import numpy as np
import pytest

from generators.attention_hand.models import model_weights_id, save_tiny, weight_folders
from pipeline import weights
from pipeline.errors import HandgenError

N_FILES = 11  # files of a tiny model that are loaded: 5 base components + guidance (model_index.json is not)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Each test gets its own empty weights cache (and never touches the user's)."""
    monkeypatch.setenv("HANDGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two tiny random models (seeds 0 and 1), written once; tests copy before modifying them."""
    root = tmp_path_factory.mktemp("tiny")
    return {seed: save_tiny(root / f"m{seed}", seed=seed) for seed in (0, 1)}


@pytest.fixture
def hashed(monkeypatch):
    """Counts the files whose content is read by the weights hasher (a list of their paths)."""
    calls = []
    real = weights.sha256_file

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(weights, "sha256_file", counting)
    return calls


def _age(folder, seconds=3600.0):
    """Set every file's mtime ``seconds`` into the past (older than the cache's racy window)."""
    t = time.time_ns() - int(seconds * 1e9)
    for dirpath, _, names in os.walk(folder):
        for n in names:
            os.utime(os.path.join(dirpath, n), ns=(t, t))


def _copy(src, dst, age=3600.0):
    """Copy a model folder; its files' mtimes are set ``age`` seconds into the past (0: now, a fresh file)."""
    shutil.copytree(src, dst)
    _age(dst, age)
    return dst


def _flip_byte(path, offset=None):
    """Change one byte in place (same size) and move the mtime to another past time."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    t = time.time_ns() - 1800 * 10**9
    os.utime(path, ns=(t, t))


def test_id_is_content_not_path(tiny, tmp_path):
    a, b = model_weights_id(tiny[0]), model_weights_id(tiny[1])
    assert len(a) == 16 and all(c in "0123456789abcdef" for c in a)
    assert a != b
    assert model_weights_id(_copy(tiny[0], tmp_path / "elsewhere")) == a
    # model_index.json (class names only) is not a loaded weight; the id ignores it
    (tmp_path / "elsewhere" / "model_index.json").write_text("{}")
    assert model_weights_id(tmp_path / "elsewhere") == a


def test_symlinked_files_and_dot_names(tiny, tmp_path):
    """A Hugging Face cache snapshot (files are links to blobs) gets the id of its content; dot-names are
    skipped."""
    linked = tmp_path / "snapshot"
    for dirpath, _, names in os.walk(tiny[0]):
        rel = os.path.relpath(dirpath, tiny[0])
        (linked / rel).mkdir(parents=True, exist_ok=True)
        for n in names:
            os.symlink(os.path.join(dirpath, n), linked / rel / n)
    (linked / "unet" / ".cache").mkdir()
    (linked / "unet" / ".cache" / "download.lock").write_text("x")
    assert model_weights_id(linked) == model_weights_id(tiny[0])


def test_one_byte_changes_the_id_and_the_cache_notices(tiny, tmp_path, hashed):
    m = _copy(tiny[0], tmp_path / "m")
    before = model_weights_id(m)
    assert len(hashed) == N_FILES
    hashed.clear()
    target = m / "unet" / "diffusion_pytorch_model.safetensors"
    size = target.stat().st_size
    _flip_byte(target)
    assert target.stat().st_size == size
    after = model_weights_id(m)
    assert after != before
    assert hashed == [str(target.resolve())]  # only the changed file is read again (size/mtime key)
    assert after != model_weights_id(tiny[0])
    _flip_byte(target)  # back to the original bytes (with a new mtime): back to the original id
    assert model_weights_id(m) == before


def test_a_file_changed_within_the_racy_window_is_not_trusted(tiny, tmp_path):
    """A freshly written file could change again within one filesystem timestamp tick, keeping its mtime; its
    digest is not cached, so a rewrite with the same size and mtime is still noticed."""
    m = _copy(tiny[0], tmp_path / "m", age=0)
    before = model_weights_id(m)
    target = m / "vae" / "diffusion_pytorch_model.safetensors"
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[100] ^= 0x01
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: as within one tick
    assert target.stat().st_mtime_ns == st.st_mtime_ns
    assert model_weights_id(m) != before


def test_separate_guidance_folder_counts(tiny, tmp_path):
    base = _copy(tiny[0], tmp_path / "base")
    shutil.rmtree(base / "guidance")
    g0, g1 = tiny[0] / "guidance", tiny[1] / "guidance"
    base_only = weights.weights_id({k: v for k, v in weight_folders(base).items() if k != "guidance"})
    with_g0, with_g1 = model_weights_id(base, guidance=g0), model_weights_id(base, guidance=g1)
    assert len({base_only, with_g0, with_g1}) == 3
    # the same loaded content gives the same id, however the guidance module is given
    assert with_g0 == model_weights_id(tiny[0])
    # with a separate guidance folder, the model's own guidance/ is not loaded and does not count
    assert model_weights_id(tiny[0], guidance=g1) == with_g1


def test_the_cache_is_used(tiny, tmp_path, hashed, _cache):
    m = _copy(tiny[0], tmp_path / "m")
    first = model_weights_id(m)
    assert len(hashed) == N_FILES
    caches = sorted(_cache.glob("weights/*.json"))
    assert len(caches) == len(weight_folders(m))  # one cache file per folder
    unet_cache = json.loads(weights.cache_file(m / "unet").read_text())
    assert unet_cache["folder"] == str((m / "unet").resolve())
    st = (m / "unet" / "config.json").stat()
    assert unet_cache["files"]["config.json"] == [
        st.st_size,
        st.st_mtime_ns,
        weights.sha256_file(m / "unet" / "config.json"),
    ]
    hashed.clear()
    assert model_weights_id(m) == first
    assert hashed == []  # nothing read again


def test_fresh_files_are_hashed_again_until_old(tiny, tmp_path, hashed):
    m = _copy(tiny[0], tmp_path / "m", age=0)
    first = model_weights_id(m)
    assert model_weights_id(m) == first and len(hashed) == 2 * N_FILES
    _age(m)
    hashed.clear()
    model_weights_id(m)
    model_weights_id(m)
    assert len(hashed) == N_FILES


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xffnot json",
        b"[]",
        b'{"format": "handgen-weights-cache/1"}',
        b"",
    ],
    ids=["garbage", "list", "no-table", "empty"],
)
def test_a_corrupt_cache_is_ignored(tiny, tmp_path, hashed, content):
    m = _copy(tiny[0], tmp_path / "m")
    expected = model_weights_id(m)
    for folder in weight_folders(m).values():
        weights.cache_file(folder).write_bytes(content)
    hashed.clear()
    assert model_weights_id(m) == expected
    assert len(hashed) == N_FILES
    hashed.clear()
    assert model_weights_id(m) == expected and hashed == []  # rewritten, valid again


def test_malformed_cache_entries_and_other_folders_are_ignored(tiny, tmp_path, hashed):
    m = _copy(tiny[0], tmp_path / "m")
    expected = model_weights_id(m)
    path = weights.cache_file(m / "unet")
    data = json.loads(path.read_text())
    rel = "diffusion_pytorch_model.safetensors"
    data["files"][rel][2] = "not-a-digest"
    path.write_text(json.dumps(data))
    vae_cache = weights.cache_file(m / "vae")
    other = json.loads(vae_cache.read_text())
    other["folder"] = "/somewhere/else"
    vae_cache.write_text(json.dumps(other))
    hashed.clear()
    assert model_weights_id(m) == expected
    assert sorted(hashed) == sorted(
        [str((m / "unet" / rel).resolve())] + [str(p.resolve()) for p in (m / "vae").iterdir()]
    )


def test_an_unwritable_cache_location_is_not_fatal(tiny, tmp_path, monkeypatch, hashed):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("HANDGEN_CACHE", str(blocker))
    m = _copy(tiny[0], tmp_path / "m")
    a = model_weights_id(m)
    assert model_weights_id(m) == a and len(hashed) == 2 * N_FILES  # no cache: recomputed, same id


def test_missing_folder_is_a_handgen_error(tmp_path):
    with pytest.raises(HandgenError, match="weights folder not found"):
        weights.weights_id({"unet": tmp_path / "nope"})


def test_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HANDGEN_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert weights.user_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("HANDGEN_CACHE")
    assert weights.user_cache_dir() == tmp_path / "x" / "handgen"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.user_cache_dir() == tmp_path / "home" / ".cache" / "handgen"


def test_sha256_file_streams_in_chunks(tmp_path):
    import hashlib

    p = tmp_path / "blob"
    data = os.urandom(10_000)
    p.write_bytes(data)
    assert weights.sha256_file(p, chunk_bytes=4096) == hashlib.sha256(data).hexdigest()


def _sample(size=64):
    from tests.samples import stub_sample

    rng = np.random.default_rng(0)
    mesh = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    local = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    return stub_sample(0, 7, size, mesh, local, caption="A person holding up a hand.")


def test_generator_label_records_the_content_id(tiny):
    from generators.attention_hand.generator import AttentionHandGenerator
    from tests.samples import generated

    gen = AttentionHandGenerator(tiny[0], steps=1, batch_size=1, device="cpu")
    (s,) = generated(gen, [_sample()])
    assert s.generator["weights_id"] == model_weights_id(tiny[0]) == gen.weights_id
    # the id follows the folders named, also when the pipeline is passed in (no reload here)
    g1 = tiny[1] / "guidance"
    other = AttentionHandGenerator(tiny[0], pipeline=gen.pipe, guidance=g1)
    assert other.weights_id == model_weights_id(tiny[0], guidance=g1) != gen.weights_id
    assert AttentionHandGenerator(tiny[1], pipeline=gen.pipe).weights_id not in (
        gen.weights_id,
        other.weights_id,
    )
    assert AttentionHandGenerator(pipeline=gen.pipe).weights_id == "in-memory"
