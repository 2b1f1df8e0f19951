"""Generators: the AttentionHand pipeline (TAS + VAS) on tiny components, loading, and the composite
generator."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from generators.attention_hand.pipeline import AttentionHandPipeline, TASConfig, tas_loss
from tests.samples import generated

PROMPTS = ["A man holding a cup with his right hand.", "A woman pointing with her left index finger."]


@pytest.fixture(scope="module")
def inputs(pipe):
    from pipeline.tagging import HandTokenTagger

    rng = np.random.default_rng(0)
    mesh = (rng.random((2, 64, 64, 3)) * 255).astype(np.uint8)
    local = (rng.random((2, 64, 64, 3)) * 255).astype(np.uint8)
    idx = [HandTokenTagger(tokenizer=pipe.tokenizer).tag(p).hand_token_indices for p in PROMPTS]
    assert idx == [[3, 9], [3, 8]]  # "holding", "hand" / "pointing", "finger"
    return mesh, local, idx


def run(pipe, inputs, seeds=(1, 2), **kw):
    mesh, local, idx = inputs
    return pipe(
        PROMPTS,
        mesh,
        local,
        idx,
        list(seeds),
        height=64,
        width=64,
        num_inference_steps=kw.pop("steps", 3),
        **kw,
    )


def test_full_pipeline_with_tas(pipe, inputs):
    out = run(pipe, inputs, return_attention=True, views=("global", "local"))
    assert out.images.shape == (2, 64, 64, 3) and out.local_images.shape == (2, 64, 64, 3)
    assert out.images.dtype == np.uint8
    assert len(out.attention_maps) == 2  # TAS on the first half of 3 steps (rounded): 2 passes
    maps = out.attention_maps[0]
    assert maps.shape == (4, 16, 16, 77)  # global and local rows, 16x16, all 77 positions
    assert np.allclose(maps.sum(-1), 1.0, atol=1e-4)  # attention probabilities over the text positions
    assert all(loss.shape == (4,) and (loss >= 0).all() and (loss <= 1).all() for loss in out.tas_losses)


def test_tas_loss_uses_exactly_the_requested_positions():
    cfg = TASConfig()
    maps = torch.full((1, 8, 8, 77), -5.0)
    maps[0, 4, 4, 6] = 5.0  # token 6 peaks at one place; everything else is flat
    low = tas_loss(maps, [[6]], [10], cfg)
    high = tas_loss(maps, [[7]], [10], cfg)
    assert low.item() < 0.5 < high.item()
    assert tas_loss(maps, [[6, 7]], [10], cfg).item() == pytest.approx(high.item())  # max over hand tokens
    assert tas_loss(maps, [[]], [10], cfg).item() == 0.0  # no hand token: no loss
    assert tas_loss(maps, [[0, 12]], [10], cfg).item() == 0.0  # <sot> and positions past <eot> are ignored


def test_one_tas_update_lowers_the_loss(pipe, inputs):
    mesh, local, idx = inputs
    cfg = TASConfig()
    cond, _, eot = pipe._encode(PROMPTS)
    cond_images = torch.cat(
        [pipe._condition(mesh, 64, 64, torch.float32), pipe._condition(local, 64, 64, torch.float32)]
    )
    pipe.scheduler.set_timesteps(10)
    t = pipe.scheduler.timesteps[0]
    lat = pipe._latents([1, 2], 64, 64, torch.float32)
    args = (t, torch.cat([cond, cond]), cond_images, 1.0, idx * 2, eot * 2, cfg)
    new, before, _ = pipe.tas_step(lat, *args, alpha=20.0, target_res=8)
    _, after, _ = pipe.tas_step(new, *args, alpha=0.0, target_res=8)
    assert (after < before).all(), (before, after)


def test_tas_changes_output_and_seeds_reproduce(pipe, inputs):
    on = run(pipe, inputs, views=("global", "local"))
    off = run(pipe, inputs, tas=TASConfig(enabled=False), views=("global", "local"))
    assert not np.array_equal(on.images, off.images) and not np.array_equal(on.local_images, off.local_images)
    again = run(pipe, inputs, views=("global", "local"))
    assert np.array_equal(on.images, again.images) and np.array_equal(on.local_images, again.local_images)
    other = run(pipe, inputs, seeds=(3, 2), views=("global", "local"))
    assert not np.array_equal(other.images[0], on.images[0]) and np.array_equal(other.images[1], on.images[1])


def test_zero_guidance_equals_plain_stable_diffusion(pipe, inputs):
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    sd.set_progress_bar_config(disable=True)
    lat = pipe._latents([5, 6], 64, 64, torch.float32, views=("global",))
    ours = run(pipe, inputs, tas=TASConfig(enabled=False), latents=lat, guidance_scale=5.0)
    theirs = sd(
        PROMPTS,
        height=64,
        width=64,
        num_inference_steps=3,
        guidance_scale=5.0,
        latents=lat / 1.0,
        output_type="np",
    ).images
    theirs = (np.clip(theirs, 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(ours.images.astype(int) - theirs.astype(int)).max() <= 1  # identical up to uint8 rounding


def test_bad_inputs(pipe, inputs):
    mesh, local, idx = inputs
    with pytest.raises(ValueError, match="mesh must be"):
        pipe(PROMPTS, mesh[:1], local, idx, [1, 2], height=64, width=64, num_inference_steps=1)
    with pytest.raises(ValueError, match="multiples of"):
        pipe(PROMPTS, mesh, local, idx, [1, 2], height=62, width=62, num_inference_steps=1)
    with pytest.raises(ValueError, match="one hand-token list and one seed"):
        pipe(PROMPTS, mesh, local, idx[:1], [1, 2], height=64, width=64, num_inference_steps=1)


def test_tiny_model_cli_and_loading(tmp_path):
    import subprocess
    import sys

    from generators.attention_hand.models import AttentionHandLoadError, load_pipeline

    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", "attentionhand", "tiny", str(tmp_path / "m")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "model_index.json").is_file() and (tmp_path / "m" / "guidance").is_dir()
    p = load_pipeline(tmp_path / "m", device="cpu")
    assert isinstance(p, AttentionHandPipeline) and p.unet.dtype == torch.float32
    with pytest.raises(AttentionHandLoadError, match="not found"):
        load_pipeline(tmp_path / "nope")
    import shutil

    shutil.rmtree(tmp_path / "m" / "guidance")
    with pytest.raises(AttentionHandLoadError, match="no guidance module"):
        load_pipeline(tmp_path / "m")


def _rendered_samples(hand_model, n=3, size=64, seed=1, tokenizer=None):
    """Rendered prior samples captioned "A person holding up a hand.", tagged with ``tokenizer`` (what the
    pipeline does with the generator's tokenizer)."""
    from pipeline.sample import Caption
    from pipeline.sources import make_source, posed_sample
    from pipeline.tagging import HandTokenTagger
    from renderers.base import RenderBatch, RenderConfig, make_renderer, render_item

    gl = make_renderer("opengl", config=RenderConfig(local_size=size))
    src = make_source("prior", hand_model, run_seed=seed, image_size=(size, size))
    samples = [posed_sample(src, i, hand_model) for i in range(n)]
    rendered = gl.render(RenderBatch([render_item(s) for s in samples], hand_model.faces))
    gl.close()
    text = "A person holding up a hand."
    tokens = tuple(HandTokenTagger(tokenizer).tag(text).hand_token_indices)
    caption = Caption(text, "test", "1", hand_token_indices=tokens)
    return [s.with_(rendered=r, captioned=caption) for s, r in zip(samples, rendered, strict=True)]


def test_generator_stage_on_samples(pipe, hand_model):
    from generators.attention_hand.generator import AttentionHandGenerator

    gen = AttentionHandGenerator(pipeline=pipe, steps=2, batch_size=2)
    assert gen.tokenizer is pipe.tokenizer  # the pipeline tags captions with it
    samples = generated(gen, _rendered_samples(hand_model, tokenizer=gen.tokenizer))
    for s in samples:
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert (
            s.generator["name"] == "attentionhand"
            and s.generator["tas"]["enabled"]
            and s.generator["steps"] == 2
        )
        assert s.generator["views"] == ["global"]
        assert list(s.hand_token_indices) == [3, 6]  # <sot> a person "holding" up a "hand"
    again = generated(gen, _rendered_samples(hand_model, tokenizer=gen.tokenizer))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(samples, again, strict=True))


def test_composite_hand_pixels_are_the_mask(hand_model, tmp_path):
    from PIL import Image

    from generators.composite import CompositeConfig, CompositeGenerator

    for name, colour in (("a", (250, 20, 20)), ("b", (20, 250, 250))):
        (tmp_path / name).mkdir()
        Image.new("RGB", (80, 80), colour).save(tmp_path / name / "bg.png")
    s1 = _rendered_samples(hand_model, n=4, size=128, seed=2)
    s2 = _rendered_samples(hand_model, n=4, size=128, seed=2)
    # no JPEG round trip: its 8 x 8 blocks and halved chroma carry a saturated background a few pixels into
    # a small hand (measured: up to 78 levels two pixels inside a 128 px sample's fingers at quality 76)
    s1 = generated(CompositeGenerator(CompositeConfig(backgrounds=str(tmp_path / "a"), jpeg=0.0)), s1)
    s2 = generated(CompositeGenerator(CompositeConfig(backgrounds=str(tmp_path / "b"), jpeg=0.0)), s2)
    for a, b in zip(s1, s2, strict=True):
        assert a.image.shape == (128, 128, 3) and a.generator["name"] == "composite"
        same = np.abs(a.image.astype(int) - b.image.astype(int)).max(-1) < 40  # unaffected by the background
        hand = a.mask > 0
        # 2-pixel erosion / dilation: the final blur mixes about that much at the edges
        inner, outer = ndimage.binary_erosion(hand, iterations=2), ndimage.binary_dilation(hand, iterations=2)
        assert inner.any() and same[inner].all()  # inside the mask: the hand, whatever the background
        assert not same[~outer].any()  # outside the mask: the background
        skin = a.image[hand].astype(float).mean(0)
        assert skin[0] >= skin[2]  # skin tones are red-leaning
    procedural = generated(CompositeGenerator(), _rendered_samples(hand_model, n=2, size=128, seed=2))
    assert procedural[0].generator["background"] == "procedural"
    again = generated(CompositeGenerator(), _rendered_samples(hand_model, n=2, size=128, seed=2))
    assert np.array_equal(procedural[0].image, again[0].image)  # deterministic per sample seed
    with pytest.raises(FileNotFoundError, match="backgrounds folder not found"):
        CompositeGenerator(CompositeConfig(backgrounds=str(tmp_path / "none")))


def _converter_components():
    """Tiny components with the standard ControlNet hint encoder (the layout of official checkpoints)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    from generators.attention_hand.models import tiny_components

    c = tiny_components(seed=3)
    torch.manual_seed(2)
    c["unet"] = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    c["guidance"] = ControlNetModel.from_unet(c["unet"])
    c["vae"] = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    )
    for m in c.values():
        if isinstance(m, torch.nn.Module):
            for p in m.parameters():
                p.data.normal_(0.0, 0.02)  # no zero convolutions: every weight must land in its place
    return c


def test_converter_round_trips_an_official_layout_checkpoint(tmp_path):
    import subprocess
    import sys

    from generators.attention_hand.convert import to_ldm_state_dict
    from generators.attention_hand.models import load_pipeline

    c = _converter_components()
    AttentionHandPipeline(**c).save_pretrained(str(tmp_path / "tpl"))
    sd = to_ldm_state_dict(c["unet"], c["guidance"], c["vae"], c["text_encoder"])
    assert {k.split(".")[0] for k in sd} == {
        "model",
        "control_model",
        "first_stage_model",
        "cond_stage_model",
    }
    assert any(k.startswith("control_model.input_hint_block.14.") for k in sd)  # official ControlNet layout
    assert any(k.startswith("model.diffusion_model.output_blocks.") for k in sd)
    torch.save({"state_dict": sd}, tmp_path / "ah.ckpt")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "attentionhand",
            "convert",
            str(tmp_path / "ah.ckpt"),
            str(tmp_path / "out"),
            "--config-from",
            str(tmp_path / "tpl"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    p = load_pipeline(tmp_path / "out", device="cpu")
    for name in ("unet", "guidance", "vae", "text_encoder"):
        a, b = c[name].state_dict(), getattr(p, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name  # every weight converted exactly


def test_converter_bad_input(tmp_path):
    import subprocess
    import sys

    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, tmp_path / "x.ckpt")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "attentionhand",
            "convert",
            str(tmp_path / "x.ckpt"),
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 2 and "not an AttentionHand" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "attentionhand",
            "convert",
            str(tmp_path / "none.ckpt"),
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "checkpoint not found" in r.stderr
