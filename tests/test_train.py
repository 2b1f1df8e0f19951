"""AttentionHand training on tiny components: the loss falls, resume is exact, the export loads and generates,
and ``hands train-generator`` runs through its Prefect flow."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from generators.attention_hand.models import load_pipeline, save_tiny, tiny_components
from generators.attention_hand.train import (
    StreamBatches,
    TrainConfig,
    Trainer,
    TrainError,
    TrainingTuples,
    train,
)
from tests.source_fixtures import write_interhand, write_interhand_photos


@pytest.fixture(scope="module")
def data(tmp_path_factory, hand_model):
    """~20 training tuples prepared from the InterHand2.6M fixture (its 8 usable photos, drawn repeatedly)."""
    root = tmp_path_factory.mktemp("ih_train")
    write_interhand(root, hand_model)
    write_interhand_photos(root, hand_model)
    out = root / "prepared"
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "prepare",
        "--source",
        f"interhand:{root}",
        "--out",
        str(out),
        "--samples",
        "36",
        "--shard-size",
        "18",
        "--image-size",
        "128",
        "--no-prefect",
        "-q",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def _cfg(data, out, **kw) -> TrainConfig:
    base = {
        "model": "tiny",
        "data": str(data),
        "out": out,
        "batch_size": 2,
        "resolution": 32,
        "num_workers": 0,
        "sample_every": 0,
        "device": "cpu",
        "log_every": 5,
    }
    return TrainConfig(**{**base, **kw})


def test_dataset_and_stream_order(data):
    ds = TrainingTuples(data, 32)
    assert len(ds) >= 16
    item = ds[0]
    assert item["pixels"].shape == (2, 3, 32, 32) and item["mesh"].shape == (2, 3, 32, 32)
    assert -1.0 <= float(item["pixels"].min()) and float(item["pixels"].max()) <= 1.0 and item["caption"]
    s = StreamBatches(len(ds), 3, seed=5, start=0, stop=20)
    batches = list(s)
    flat = [i for b in batches for i in b]
    assert sorted(flat[: len(ds)]) == list(range(len(ds)))  # each epoch is a permutation
    assert (
        list(StreamBatches(len(ds), 3, seed=5, start=7, stop=20)) == batches[7:]
    )  # resumable at any micro-step
    r0, r1 = (
        StreamBatches(len(ds), 2, 5, 0, 4, rank=0, world=2),
        StreamBatches(len(ds), 2, 5, 0, 4, rank=1, world=2),
    )
    assert not set(map(tuple, r0)) & set(map(tuple, r1))  # two processes never share a micro-batch


def test_loss_falls_and_export_generates(data, tmp_path):
    cfg = _cfg(
        data,
        tmp_path / "run",
        steps=50,
        lr=1e-3,
        tas_iterations=1,
        save_every=25,
        sample_every=50,
        num_samples=2,
        sample_steps=2,
    )
    summary = train(cfg, components=tiny_components(0))
    losses = summary["losses"]
    assert len(losses) == 50 and all(np.isfinite(losses))
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    assert last < 0.9 * first, (first, last)
    lines = [json.loads(x) for x in (tmp_path / "run" / "logs" / "loss.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(5, 51, 5)) and lines[-1]["tas_loss"] is not None
    assert (tmp_path / "run" / "samples" / "step_00000050.png").is_file()
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").iterdir())] == [
        "step_00000025",
        "step_00000050",
    ]
    # the exported folder loads through attentionhand:PATH's loader, holds the trained weights, and generates
    pipe = load_pipeline(summary["model"], device="cpu")
    init = tiny_components(0)["guidance"].state_dict()
    got = pipe.guidance.state_dict()
    assert any(
        not torch.equal(got[k], init[k]) for k in init
    )  # the export is the trained module, not the init
    mesh = (np.random.default_rng(0).random((1, 32, 32, 3)) * 255).astype(np.uint8)
    out = pipe(
        ["a hand holding a cup"],
        mesh,
        mesh,
        [[2]],
        seeds=[1],
        height=32,
        width=32,
        num_inference_steps=2,
        progress=False,
    )
    assert out.images.shape == (1, 32, 32, 3) and out.images.std() > 0


def test_resume_is_exact(data, tmp_path):
    kw = {"steps": 6, "grad_accum": 2, "lr": 1e-3, "tas_iterations": 1, "save_every": 3}
    full = Trainer(_cfg(data, tmp_path / "full", **kw), tiny_components(0))
    full_losses = full.fit()["losses"]
    half = Trainer(_cfg(data, tmp_path / "half", **{**kw, "steps": 3}), tiny_components(0))
    half.fit()
    ckpt = tmp_path / "half" / "checkpoints" / "step_00000003"
    at3 = {k: v.clone() for k, v in half.pipe.guidance.state_dict().items()}
    del half
    resumed = Trainer(_cfg(data, tmp_path / "half", **kw), tiny_components(0))
    assert resumed.load_checkpoint(ckpt) == 3
    rest = resumed.fit()["losses"]
    assert rest == full_losses[3:]
    a, b = full.pipe.guidance.state_dict(), resumed.pipe.guidance.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(b[k], at3[k]) for k in b)  # it did train after the checkpoint
    # a checkpoint made with other settings is refused
    other = Trainer(_cfg(data, tmp_path / "other", **{**kw, "lr": 2e-3}), tiny_components(0))
    with pytest.raises(TrainError, match="lr"):
        other.load_checkpoint(ckpt)


@pytest.mark.slow  # about 33 s; the in-process training tests cover the same loop (default suite < 15 min)
def test_train_generator_cli(data, tmp_path):
    model = save_tiny(tmp_path / "tiny")
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "train-generator",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        "2",
        "--resolution",
        "32",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--sample-every",
        "0",
        "--device",
        "cpu",
        "-q",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "trained 2 steps" in r.stdout and (out / "model" / "guidance").is_dir()
    assert (out / "checkpoints" / "step_00000002" / "trainer_state.json").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr
    bad = subprocess.run(
        [*cmd[:6], "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "training data" in bad.stderr and "Traceback" not in bad.stderr


def test_each_branch_is_noised_from_its_own_latent(data, tmp_path):
    """Same micro-step (same noise and timesteps), different local photo: only the local loss changes.
    (Noising the local branch from the global latent, as the official code does, would leave the local loss
    unchanged.)"""
    tr = Trainer(_cfg(data, tmp_path / "b", steps=1, tas_iterations=0), tiny_components(0))
    items = [tr.data[0], tr.data[1]]
    batch = {
        "pixels": torch.stack([x["pixels"] for x in items]),
        "mesh": torch.stack([x["mesh"] for x in items]),
        "caption": [x["caption"] for x in items],
        "key": [x["key"] for x in items],
    }
    a = tr.train_step(batch, micro_step=3)
    other = dict(batch, pixels=batch["pixels"].clone())
    other["pixels"][:, 1] = -other["pixels"][:, 1]  # a different local photo
    b = tr.train_step(other, micro_step=3)
    assert a["loss_global"] == b["loss_global"] and a["loss_local"] != b["loss_local"]
    assert a["tas_loss"] is None
    again = tr.train_step(batch, micro_step=3)
    assert again == a  # a micro-step's randomness depends only on (seed, micro-step, rank)


@pytest.mark.slow  # about 30 s with its set-up (default suite < 15 min)
def test_two_processes_share_the_run(data, tmp_path):
    """Two processes (torchrun, gloo on CPU; what accelerate launch does on GPUs): one checkpoint with both
    RNG states, one summary, and the logged loss is the mean over both processes."""
    model = save_tiny(tmp_path / "tiny")
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "flows.cli",
        "train-generator",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        "2",
        "--resolution",
        "32",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--sample-every",
        "0",
        "--log-every",
        "1",
        "--device",
        "cpu",
        "--no-prefect",
        "-q",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("trained 2 steps") == 1
    ckpt = out / "checkpoints" / "step_00000002"
    assert json.loads((ckpt / "trainer_state.json").read_text())["num_processes"] == 2
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert len((out / "logs" / "loss.jsonl").read_text().splitlines()) == 2
