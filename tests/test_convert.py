"""The AttentionHand checkpoint converter: the official layout (``VAS.*``) and ControlNet forks
(``control_model.*``) with their non-weight entries, converted exactly; everything else refused with one
line."""

import logging

import numpy as np
import pytest
import torch

from generators.attention_hand.convert import ConversionError, convert_checkpoint, to_ldm_state_dict
from generators.attention_hand.pipeline import AttentionHandPipeline
from pipeline.errors import HandgenError

MODELS = ("unet", "guidance", "vae", "text_encoder")


def _components() -> dict:
    """Tiny components with the standard ControlNet hint encoder (8 convolutions, like
    ``VisualAttentionStage``), two layers per block and a four-level VAE, every weight random
    (no zero convolutions), so that each weight must land in its own place."""
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
                p.data.normal_(0.0, 0.02)
    return c


@pytest.fixture(scope="module")
def comps():
    return _components()


@pytest.fixture(scope="module")
def template(comps, tmp_path_factory):
    """A diffusers-layout folder of the tiny architecture (``--config-from``)."""
    out = tmp_path_factory.mktemp("convert") / "tpl"
    AttentionHandPipeline(**comps).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def weights(comps):
    """The four models' weights in the LDM key layout of a ControlNet fork (``control_model.*``)."""
    sd = to_ldm_state_dict(comps["unet"], comps["guidance"], comps["vae"], comps["text_encoder"])
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def _schedule_buffers(n: int = 1000) -> dict:
    """The buffers of ``DDPM.register_schedule`` (official ``ldm/models/diffusion/ddpm.py``), by their
    names."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, n, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    buffers = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    out = {k: torch.tensor(v, dtype=torch.float32) for k, v in buffers.items()}
    out["logvar"] = torch.zeros(n)
    return out


def _non_weights(weights: dict) -> dict:
    """What an LDM training checkpoint holds besides the weights: schedule buffers, the latent scale (a buffer
    with ``scale_by_std``), LitEma's bookkeeping and shadow copies of the UNet, and the CLIP position ids."""
    extra = _schedule_buffers()
    extra["scale_factor"] = torch.tensor(0.18215)
    extra["model_ema.decay"] = torch.tensor(0.9999)
    extra["model_ema.num_updates"] = torch.tensor(1234, dtype=torch.int32)
    for k, v in weights.items():
        if k.startswith("model.diffusion_model."):  # LitEma: the parameter name without its dots
            extra["model_ema." + "".join(k.split(".")[1:])] = v + 1.0  # distinct values: never taken
    extra["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None].clone()
    return extra


def _official(weights: dict) -> dict:
    """The official layout: the guidance module is ``ConditioningPhase.VAS``."""
    return {
        ("VAS." + k[len("control_model.") :] if k.startswith("control_model.") else k): v
        for k, v in weights.items()
    }


def _assert_same_weights(comps, pipe):
    for name in MODELS:
        a, b = comps[name].state_dict(), getattr(pipe, name).state_dict()
        assert a.keys() == b.keys(), name
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, (name, different[:3])  # every weight converted exactly


def _one_line_error(src, out, **kw) -> str:
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(src, out, **kw)
    assert isinstance(info.value, HandgenError)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    return msg


def test_official_layout_converts_every_weight_exactly(comps, template, weights, tmp_path, caplog):
    from generators.attention_hand.models import load_pipeline

    sd = {**_official(weights), **_non_weights(weights)}
    guidance = {k.split(".")[1] for k in sd if k.startswith("VAS.")}
    assert {"input_hint_block", "zero_convs", "middle_block_out", "input_blocks", "middle_block"} <= guidance
    assert any(
        k.startswith("VAS.input_hint_block.14.") for k in sd
    )  # 8 hint convolutions, as VisualAttentionStage
    assert not any(k.startswith("control_model.") for k in sd)
    n_extra = len(sd) - len(weights)
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 1200}, tmp_path / "attentionhand.ckpt")
    with caplog.at_level(logging.INFO, logger="generators.attention_hand.convert"):
        convert_checkpoint(tmp_path / "attentionhand.ckpt", tmp_path / "out", config_from=template)
    assert f"ignored {n_extra} non-weight entries" in caplog.text and "'VAS.*'" in caplog.text
    _assert_same_weights(comps, load_pipeline(tmp_path / "out", device="cpu"))


def test_controlnet_fork_layout_converts_every_weight_exactly(comps, template, weights, tmp_path, caplog):
    from safetensors.torch import save_file

    from generators.attention_hand.models import load_pipeline

    sd = {**weights, **_non_weights(weights)}
    text = (
        "cond_stage_model.transformer.text_model."  # a fork saved with transformers 5: no text_model. level
    )
    sd = {
        ("cond_stage_model.transformer." + k[len(text) :] if k.startswith(text) else k): v
        for k, v in sd.items()
    }
    save_file(sd, str(tmp_path / "fork.safetensors"))
    with caplog.at_level(logging.INFO, logger="generators.attention_hand.convert"):
        convert_checkpoint(tmp_path / "fork.safetensors", tmp_path / "out", config_from=template)
    assert "'control_model.*'" in caplog.text
    _assert_same_weights(comps, load_pipeline(tmp_path / "out", device="cpu"))


def test_plain_weights_and_an_explicit_guidance_prefix(comps, template, weights, tmp_path):
    from generators.attention_hand.models import load_pipeline

    torch.save(weights, tmp_path / "bare.pth")  # no "state_dict" wrapper, no buffers
    convert_checkpoint(tmp_path / "bare.pth", tmp_path / "bare", config_from=template)
    _assert_same_weights(comps, load_pipeline(tmp_path / "bare", device="cpu"))

    other = {k.replace("control_model.", "guide.", 1): v for k, v in weights.items()}
    torch.save({"state_dict": other}, tmp_path / "other.ckpt")
    msg = _one_line_error(tmp_path / "other.ckpt", tmp_path / "o", config_from=template)
    assert "neither AttentionHand (VAS.*) nor ControlNet (control_model.*) guidance weights" in msg
    convert_checkpoint(
        tmp_path / "other.ckpt", tmp_path / "guide", config_from=template, guidance_prefix="guide"
    )
    _assert_same_weights(comps, load_pipeline(tmp_path / "guide", device="cpu"))
    msg = _one_line_error(
        tmp_path / "other.ckpt", tmp_path / "o", config_from=template, guidance_prefix="VAS"
    )
    assert "no 'VAS.*' weights" in msg


@pytest.mark.parametrize(
    "extra",
    [
        "model.diffusion_model.extra_head.weight",  # a module the architecture does not have
        "VAS.input_hint_block.16.weight",
        "model_ema.decay_rate",  # EMA-like, but not a known name
        "some_buffer",
    ],
)
def test_an_unknown_key_is_refused_by_name(template, weights, tmp_path, extra):
    sd = {**_official(weights), **_schedule_buffers(), extra: torch.zeros(3)}
    torch.save({"state_dict": sd}, tmp_path / "x.ckpt")
    msg = _one_line_error(tmp_path / "x.ckpt", tmp_path / "out", config_from=template)
    assert "1 unknown keys" in msg and repr(extra) in msg and "missing" not in msg
    assert not (tmp_path / "out").exists()


def test_a_missing_weight_is_refused_by_name(template, weights, tmp_path):
    sd = _official(weights)
    gone = ["VAS.zero_convs.3.0.weight", "first_stage_model.decoder.mid.attn_1.q.bias"]
    for k in gone:
        del sd[k]
    torch.save({"state_dict": sd}, tmp_path / "x.ckpt")
    msg = _one_line_error(tmp_path / "x.ckpt", tmp_path / "out", config_from=template)
    assert "2 missing weights" in msg and all(repr(k) in msg for k in gone) and "unknown" not in msg


def test_a_missing_part_and_a_wrong_shape_are_refused(template, weights, tmp_path):
    sd = {k: v for k, v in _official(weights).items() if not k.startswith("first_stage_model.")}
    torch.save(sd, tmp_path / "novae.ckpt")
    msg = _one_line_error(tmp_path / "novae.ckpt", tmp_path / "out", config_from=template)
    assert "no 'first_stage_model.*' (VAE) weights" in msg
    sd = _official(weights)
    sd["VAS.input_hint_block.0.weight"] = torch.zeros(16, 3, 5, 5)
    torch.save(sd, tmp_path / "shape.ckpt")
    msg = _one_line_error(tmp_path / "shape.ckpt", tmp_path / "out", config_from=template)
    assert "wrong shape" in msg and "(16, 3, 5, 5)" in msg and "(16, 3, 3, 3)" in msg


def test_another_architecture_is_refused(weights, tmp_path):
    from generators.attention_hand.models import save_tiny

    save_tiny(tmp_path / "other")  # one layer per block: the checkpoint's second layers are unknown there
    torch.save(_official(weights), tmp_path / "x.ckpt")
    msg = _one_line_error(tmp_path / "x.ckpt", tmp_path / "out", config_from=tmp_path / "other")
    assert f"does not match the architecture in --config-from {tmp_path / 'other'}" in msg
    assert "unknown keys" in msg and "missing weights" in msg


def test_both_or_neither_guidance_prefix_is_refused(template, weights, tmp_path):
    both = {**weights, **_official(weights)}
    torch.save({"state_dict": both}, tmp_path / "both.ckpt")
    msg = _one_line_error(tmp_path / "both.ckpt", tmp_path / "out", config_from=template)
    assert "holds both AttentionHand (VAS.*) and ControlNet (control_model.*) guidance weights" in msg
    msg = _one_line_error(
        tmp_path / "both.ckpt", tmp_path / "out", config_from=template, guidance_prefix="VAS."
    )
    assert "unknown keys ('control_model." in msg  # an explicit prefix: the other module is left over
    neither = {k: v for k, v in weights.items() if not k.startswith("control_model.")}
    torch.save({"state_dict": neither}, tmp_path / "neither.ckpt")
    msg = _one_line_error(tmp_path / "neither.ckpt", tmp_path / "out", config_from=template)
    assert msg == (
        f"{tmp_path / 'neither.ckpt'} is not an AttentionHand checkpoint: it holds neither AttentionHand "
        "(VAS.*) nor ControlNet (control_model.*) guidance weights"
    )


def test_a_text_weight_in_both_forms_is_refused(template, weights, tmp_path):
    sd = _official(weights)
    key = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
    sd["cond_stage_model.transformer.final_layer_norm.weight"] = sd[key]
    torch.save(sd, tmp_path / "x.ckpt")
    msg = _one_line_error(tmp_path / "x.ckpt", tmp_path / "out", config_from=template)
    assert f"holds the text-encoder weight {key!r} twice" in msg


def test_stable_diffusion_15_key_layout():
    """At full size (meta tensors: no memory), the official key names and counts, and diffusers' converters
    map them 1:1 onto the models."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    from generators.attention_hand import convert

    with torch.device("meta"):
        unet = UNet2DConditionModel(**convert.SD15_UNET)
        guidance = ControlNetModel.from_unet(unet)
        vae = AutoencoderKL(**convert.SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**convert.SD15_CLIP))
    sd = to_ldm_state_dict(unet, guidance, vae, text, guidance_prefix="VAS.")
    parts = (
        "model.diffusion_model.",
        "VAS.",
        "first_stage_model.",
        "cond_stage_model.transformer.text_model.",
    )
    assert [sum(k.startswith(p) for k in sd) for p in parts] == [686, 340, 248, 196]
    for key in (
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.out.2.bias",
        "VAS.input_hint_block.14.weight",
        "VAS.zero_convs.11.0.weight",
        "VAS.middle_block_out.0.bias",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.post_quant_conv.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ):
        assert key in sd, key
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (
        512,
        512,
        1,
        1,
    )  # LDM: 1x1 convolutions

    def part(p):
        return {k: v for k, v in sd.items() if k.startswith(p)}

    converted = {
        "unet": sfu.convert_ldm_unet_checkpoint(part("model.diffusion_model."), dict(unet.config)),
        "guidance": sfu.convert_controlnet_checkpoint(
            {k[4:]: v for k, v in part("VAS.").items()}, guidance.config
        ),
        "vae": sfu.convert_ldm_vae_checkpoint(part("first_stage_model."), dict(vae.config)),
    }
    for name, model in (("unet", unet), ("guidance", guidance), ("vae", vae)):
        own = model.state_dict()
        assert converted[name].keys() == own.keys(), name
        assert all(converted[name][k].shape == own[k].shape for k in own), name


def _junk(tmp_path) -> dict:
    (tmp_path / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "notes.ckpt").write_text("model: attentionhand\nsteps: 20\n")
    torch.save({"epoch": 3, "lr": 1e-5}, tmp_path / "notensors.ckpt")
    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, tmp_path / "foo.ckpt")
    return {
        "random.ckpt": "is not a PyTorch checkpoint or safetensors file",
        "empty.ckpt": "is empty",
        "notes.ckpt": "is not a PyTorch checkpoint or safetensors file",
        "notensors.ckpt": "holds no state dict",
        "foo.ckpt": "holds neither AttentionHand (VAS.*) nor ControlNet (control_model.*)",
    }


def test_junk_files_get_one_line(tmp_path):
    for name, says in _junk(tmp_path).items():
        msg = _one_line_error(tmp_path / name, tmp_path / "out")
        assert msg.startswith(str(tmp_path / name)) and says in msg, msg
    assert not (tmp_path / "out").exists()


def test_cli_converts_and_refuses_junk(comps, template, weights, tmp_path, capsys):
    from flows.cli import main
    from generators.attention_hand.models import load_pipeline

    torch.save({"state_dict": {**_official(weights), **_non_weights(weights)}}, tmp_path / "ah.ckpt")
    code = main(
        [
            "attentionhand",
            "convert",
            str(tmp_path / "ah.ckpt"),
            str(tmp_path / "out"),
            "--config-from",
            str(template),
        ]
    )
    assert code == 0, capsys.readouterr().err[-2000:]
    _assert_same_weights(comps, load_pipeline(tmp_path / "out", device="cpu"))
    capsys.readouterr()
    for name, says in _junk(tmp_path).items():
        assert main(["attentionhand", "convert", str(tmp_path / name), str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("hands: error: ") and says in err[0], err
