"""AttentionHand views (global only vs global + local), the diffusers-style call options, the generator's
generation batch and CUDA out-of-memory fallback, and ``attentionhand:`` spec parsing.

``Reference`` below is a frozen copy of ``AttentionHandPipeline.__call__`` as it was before views existed
(every call denoised the global and the local latent as one batch and decoded both). It runs on its own copy
of the tiny components (same seed, so the same weights) with its own attention processors, so it shares no
code path with the pipeline under test: ``views=("global", "local")`` must reproduce it bit for bit.
"""

import math

import numpy as np
import pydantic
import pytest
import torch
import torch.nn.functional as F

from generators.attention_hand.pipeline import TASConfig

PROMPTS = ["A man holding a cup with his right hand.", "A woman pointing with her left index finger."]


# -- the reference: the pre-views pipeline, verbatim in behaviour --------------------------------------------
class _RefStore:
    def __init__(self) -> None:
        self.active = False
        self.maps: dict[int, list[torch.Tensor]] = {}

    def reset(self, active: bool) -> None:
        self.active, self.maps = active, {}

    def add(self, probs, batch):
        hw = probs.shape[1]
        res = int(math.isqrt(hw))
        if res * res != hw:
            return
        self.maps.setdefault(res, []).append(probs.reshape(batch, -1, hw, probs.shape[-1]).mean(1))

    def average(self, target):
        res = min(self.maps, key=lambda r: (abs(r - target), -r))
        m = torch.stack(self.maps[res]).mean(0)
        return m.reshape(m.shape[0], res, res, m.shape[-1])


class _RefProcessor:
    def __init__(self, store: _RefStore) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.store, self._sdpa = store, AttnProcessor2_0()

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        if encoder_hidden_states is None or not self.store.active:
            return self._sdpa(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.store.add(probs, batch)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _ref_tas_loss(maps, token_indices, eot, cfg):
    x = torch.arange(cfg.kernel, dtype=torch.float64) - (cfg.kernel - 1) / 2
    g = torch.exp(-(x**2) / (2 * cfg.sigma**2))
    k = torch.outer(g, g)
    kernel = (k / k.sum()).to(device=maps.device, dtype=maps.dtype)[None, None]
    losses = []
    for b in range(maps.shape[0]):
        idx = [i for i in token_indices[b] if 0 < i < eot[b]]
        if not idx:
            losses.append(maps.new_zeros(()))
            continue
        text = torch.softmax(maps[b, :, :, 1 : eot[b]] * cfg.softmax_scale, dim=-1)
        sel = text[:, :, [i - 1 for i in idx]].permute(2, 0, 1)[:, None]
        smooth = F.conv2d(F.pad(sel, [cfg.kernel // 2] * 4, mode="reflect"), kernel)
        losses.append((1.0 - smooth.flatten(1).max(dim=1).values).max())
    return torch.stack(losses)


class Reference:
    """The pre-views ``AttentionHandPipeline.__call__`` (global and local latents always denoised
    together)."""

    def __init__(self, comps: dict) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.__dict__.update(comps)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.store = _RefStore()
        procs = {}
        for n in self.unet.attn_processors:
            procs[n] = _RefProcessor(self.store) if n.endswith("attn2.processor") else AttnProcessor2_0()
        self.unet.set_attn_processor(procs)
        self.device = torch.device("cpu")

    def _encode(self, prompts):
        tok = self.tokenizer
        ids = tok(
            prompts,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        eos = tok.eos_token_id
        eot = [int((row == eos).nonzero()[0]) if (row == eos).any() else len(row) - 1 for row in ids]
        cond = self.text_encoder(ids)[0]
        empty = tok(
            [""] * len(prompts), padding="max_length", max_length=tok.model_max_length, return_tensors="pt"
        ).input_ids
        return cond, self.text_encoder(empty)[0], eot

    def _condition(self, images, height, width, dtype):
        x = torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-2:] != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        return x.to(dtype)

    def _latents(self, seeds, height, width, dtype):
        f = self.vae_scale_factor
        shape = (self.unet.config.in_channels, height // f, width // f)
        g_lat, l_lat = [], []
        for s in seeds:
            gen = torch.Generator(device="cpu").manual_seed(int(s) % (2**63))
            g_lat.append(torch.randn(shape, generator=gen))
            l_lat.append(torch.randn(shape, generator=gen))
        return torch.stack(g_lat + l_lat).to(self.device, dtype) * self.scheduler.init_noise_sigma

    def _guided_noise(self, latents, t, emb, cond_images, scale):
        down, mid = self.guidance(
            latents,
            t,
            encoder_hidden_states=emb,
            controlnet_cond=cond_images,
            conditioning_scale=scale,
            return_dict=False,
        )
        return self.unet(
            latents,
            t,
            encoder_hidden_states=emb,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample

    def tas_step(self, latents, t, cond2, cond_images, scale, indices2, eot2, tas, alpha, target_res):
        with torch.enable_grad():
            lat = latents.detach().requires_grad_(True)
            self.store.reset(active=True)
            try:
                self._guided_noise(self.scheduler.scale_model_input(lat, t), t, cond2, cond_images, scale)
                maps = self.store.average(target_res)
            finally:
                self.store.reset(active=False)
            loss = _ref_tas_loss(maps.float(), indices2, eot2, tas)
            if loss.requires_grad and float(loss.detach().sum()) > 0:
                lat = lat - alpha * torch.autograd.grad(loss.sum(), lat)[0]
        return lat.detach(), loss.detach(), maps.detach()

    @torch.no_grad()
    def __call__(
        self,
        prompts,
        mesh,
        mesh_local,
        hand_token_indices,
        seeds,
        height,
        width,
        num_inference_steps=3,
        guidance_scale=7.5,
        conditioning_scale=1.0,
        tas=None,
        latents=None,
    ):
        tas = tas or TASConfig()
        B, dtype = len(prompts), self.unet.dtype
        cond, uncond, eot = self._encode(prompts)
        cond2, uncond2 = torch.cat([cond, cond]), torch.cat([uncond, uncond])
        cond_images = torch.cat(
            [self._condition(mesh, height, width, dtype), self._condition(mesh_local, height, width, dtype)]
        )
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        n_tas = int(round(num_inference_steps * tas.steps_fraction)) if tas.enabled else 0
        if latents is None:
            latents = self._latents(seeds, height, width, dtype)
        else:
            latents = latents.to(self.device, dtype)
        target_res = latents.shape[-1] // 4
        indices2, eot2 = [list(ix) for ix in hand_token_indices] * 2, eot * 2
        maps_out, losses_out = [], []
        for i, t in enumerate(self.scheduler.timesteps):
            if i < n_tas:
                alpha = tas.alpha_start + (tas.alpha_end - tas.alpha_start) * (i / max(n_tas - 1, 1))
                for _ in range(tas.iterations):
                    latents, loss, maps = self.tas_step(
                        latents,
                        t,
                        cond2,
                        cond_images,
                        conditioning_scale,
                        indices2,
                        eot2,
                        tas,
                        alpha,
                        target_res,
                    )
                    losses_out.append(loss.cpu().numpy())
                    maps_out.append(maps.cpu().numpy())
            model_in = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
            noise = self._guided_noise(
                model_in,
                t,
                torch.cat([uncond2, cond2]),
                torch.cat([cond_images, cond_images]),
                conditioning_scale,
            )
            n_uncond, n_cond = noise.chunk(2)
            noise = n_uncond + guidance_scale * (n_cond - n_uncond)
            latents = self.scheduler.step(noise, t, latents).prev_sample
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        images = images.permute(0, 2, 3, 1).numpy()
        return images[:B], images[B:], maps_out, losses_out


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref():
    from generators.attention_hand.models import tiny_components

    return Reference(tiny_components(seed=0))


@pytest.fixture(scope="module")
def inputs(pipe):
    from pipeline.tagging import HandTokenTagger

    rng = np.random.default_rng(0)
    mesh = (rng.random((2, 64, 64, 3)) * 255).astype(np.uint8)
    local = (rng.random((2, 64, 64, 3)) * 255).astype(np.uint8)
    idx = [HandTokenTagger(tokenizer=pipe.tokenizer).tag(p).hand_token_indices for p in PROMPTS]
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
        progress=False,
        **kw,
    )


# -- views ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tas", [True, False], ids=["tas", "no-tas"])
def test_global_and_local_reproduce_the_pre_views_pipeline_exactly(pipe, ref, inputs, tas):
    mesh, local, idx = inputs
    cfg = TASConfig(enabled=tas)
    want_g, want_l, want_maps, want_losses = ref(PROMPTS, mesh, local, idx, [1, 2], 64, 64, tas=cfg)
    out = run(pipe, inputs, tas=cfg, return_attention=True, views=("global", "local"))
    assert np.array_equal(out.images, want_g) and np.array_equal(out.local_images, want_l)
    assert len(out.tas_losses) == len(want_losses) == (2 if tas else 0)
    assert all(np.array_equal(a, b) for a, b in zip(out.tas_losses, want_losses, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(out.attention_maps, want_maps, strict=True))


def _batch_rows(module, calls: list):
    """Record the batch size of every forward call of ``module`` (a hook; returns its handle)."""
    return module.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))


@pytest.mark.parametrize("tas", [True, False], ids=["tas", "no-tas"])
def test_global_only_matches_the_global_view_of_both(pipe, inputs, tas):
    mesh, _local, idx = inputs
    cfg = TASConfig(enabled=tas)
    both = run(pipe, inputs, tas=cfg, views=("global", "local"), return_attention=True)
    calls: dict[str, list] = {"unet": [], "guidance": [], "decode": []}
    hooks = [
        _batch_rows(pipe.unet, calls["unet"]),
        _batch_rows(pipe.guidance, calls["guidance"]),
        _batch_rows(pipe.vae.decoder, calls["decode"]),
    ]
    try:  # no local mesh needed for the default views
        one = pipe(
            PROMPTS,
            mesh,
            None,
            idx,
            [1, 2],
            height=64,
            width=64,
            num_inference_steps=3,
            tas=cfg,
            return_attention=True,
            progress=False,
        )
    finally:
        for h in hooks:
            h.remove()
    assert one.local_images is None and one.images.shape == (2, 64, 64, 3) and one.images.dtype == np.uint8
    # half the work: 3 CFG passes of 2B rows (+ 2 TAS passes of B rows), one VAE decode of B latents
    assert calls["unet"] == calls["guidance"] == ([2, 4, 2, 4, 4] if tas else [4, 4, 4])
    assert calls["decode"] == [2]
    # the same latent noise, and per-sample maths: equal up to float batching effects (here at most one uint8
    # level on a few pixels; often exact). Exact equality is not claimed: kernels may depend on the batch.
    diff = np.abs(one.images.astype(int) - both.images.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert len(one.tas_losses) == len(both.tas_losses) == (2 if tas else 0)
    for a, b in zip(one.tas_losses, both.tas_losses, strict=True):
        assert a.shape == (2,) and np.allclose(a, b[:2], atol=1e-5)
    for a, b in zip(one.attention_maps, both.attention_maps, strict=True):
        assert a.shape == (2, 16, 16, 77) and b.shape == (4, 16, 16, 77) and np.allclose(a, b[:2], atol=1e-5)
    lat_one = run(pipe, inputs, tas=cfg, output_type="latent").images
    lat_both = run(pipe, inputs, tas=cfg, views=("global", "local"), output_type="latent").images
    assert torch.allclose(lat_one, lat_both, atol=1e-4)


def test_tas_works_on_the_global_view_alone(pipe, inputs):
    on = run(pipe, inputs)
    off = run(pipe, inputs, tas=TASConfig(enabled=False))
    assert not np.array_equal(on.images, off.images)
    assert on.tas_losses and all(loss.shape == (2,) and (loss > 0).all() for loss in on.tas_losses)
    assert off.tas_losses == []


def test_views_validation(pipe, inputs):
    from generators.attention_hand.pipeline import AttentionHandError, normalize_views
    from pipeline.errors import HandgenError

    assert normalize_views(("global",)) == ("global",)
    assert normalize_views(["local", "global"]) == normalize_views("global, local") == ("global", "local")
    for bad, match in (
        (("global", "face"), "unknown view 'face'"),
        (("local",), "lack 'global'"),
        ((), "lack 'global'"),
        (("global", "global"), "twice"),
        ("", "unknown view ''"),
        (None, "sequence"),
    ):
        with pytest.raises(AttentionHandError, match=match) as e:
            normalize_views(bad)
        assert isinstance(e.value, HandgenError) and isinstance(e.value, ValueError)
        assert len(str(e.value).splitlines()) == 1
    with pytest.raises(AttentionHandError, match="unknown view 'face'"):
        run(pipe, inputs, views=("global", "face"))
    mesh, _local, idx = inputs
    with pytest.raises(AttentionHandError, match="mesh_local is needed"):
        pipe(
            PROMPTS,
            mesh,
            None,
            idx,
            [1, 2],
            height=64,
            width=64,
            views=("global", "local"),
            num_inference_steps=1,
        )


def test_generator_argument_matches_seeds(pipe, inputs):
    mesh, local, idx = inputs
    cfg = TASConfig(enabled=False)
    by_seed = run(pipe, inputs, tas=cfg, views="global,local")
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    by_gens = pipe(
        PROMPTS,
        mesh,
        local,
        idx,
        generator=gens,
        height=64,
        width=64,
        num_inference_steps=3,
        tas=cfg,
        views=("global", "local"),
        progress=False,
    )
    assert np.array_equal(by_gens.images, by_seed.images)
    assert np.array_equal(by_gens.local_images, by_seed.local_images)
    # one generator: the (B, C, h, w) block of global latents, as diffusers draws it
    one = pipe(
        PROMPTS,
        mesh,
        None,
        None,
        generator=torch.Generator().manual_seed(0),
        height=64,
        width=64,
        num_inference_steps=3,
        tas=cfg,
        progress=False,
    )
    lat = torch.randn((2, 4, 32, 32), generator=torch.Generator().manual_seed(0))
    given = pipe(
        PROMPTS,
        mesh,
        None,
        None,
        latents=lat,
        height=64,
        width=64,
        num_inference_steps=3,
        tas=cfg,
        progress=False,
    )
    assert np.array_equal(one.images, given.images)
    for kw, match in (
        ({"seeds": [1, 2], "generator": gens}, "not both"),
        ({}, "give seeds, a generator or latents"),
        ({"generator": gens[:1]}, "one generator per prompt"),
        ({"latents": lat[:1]}, r"latents must be \(2, 4, 32, 32\)"),
    ):
        with pytest.raises(ValueError, match=match):
            pipe(PROMPTS, mesh, None, None, height=64, width=64, num_inference_steps=1, tas=cfg, **kw)
    with pytest.raises(ValueError, match="TAS needs hand_token_indices"):
        pipe(PROMPTS, mesh, None, None, [1, 2], height=64, width=64, num_inference_steps=1)


def test_output_types_and_return_dict(pipe, inputs):
    from PIL import Image

    cfg = TASConfig(enabled=False)
    ref_out = run(pipe, inputs, tas=cfg, views=("global", "local"))
    pil = run(pipe, inputs, tas=cfg, views=("global", "local"), output_type="pil")
    assert all(isinstance(x, Image.Image) and x.size == (64, 64) for x in pil.images + pil.local_images)
    assert np.array_equal(np.stack([np.asarray(x) for x in pil.local_images]), ref_out.local_images)
    lat = run(pipe, inputs, tas=cfg, views=("global", "local"), output_type="latent")
    assert isinstance(lat.images, torch.Tensor)
    assert lat.images.shape == lat.local_images.shape == (2, 4, 32, 32)
    with torch.no_grad():
        decoded = pipe.vae.decode(torch.cat([lat.images, lat.local_images]) / pipe.vae.config.scaling_factor)
    decoded = ((decoded.sample.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(decoded[:2], ref_out.images)
    tup = run(pipe, inputs, tas=cfg, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 4 and tup[1] is None and tup[2] is None and tup[3] == []
    assert np.array_equal(tup[0], run(pipe, inputs, tas=cfg).images)
    with pytest.raises(ValueError, match="unknown output_type 'pt'"):
        run(pipe, inputs, tas=cfg, output_type="pt", steps=1)


def test_callback_on_step_end(pipe, inputs):
    seen = []

    def callback(p, step, t, kwargs):
        assert p is pipe and set(kwargs) == {"latents"} and kwargs["latents"].shape == (4, 4, 32, 32)
        seen.append((step, int(t)))
        return {"latents": torch.zeros_like(kwargs["latents"])} if step == 2 else {}

    out = run(pipe, inputs, views=("global", "local"), output_type="latent", callback_on_step_end=callback)
    pipe.scheduler.set_timesteps(3)
    assert seen == list(enumerate(int(t) for t in pipe.scheduler.timesteps))
    assert not out.images.any() and not out.local_images.any()  # the last step's latents were replaced
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        run(pipe, inputs, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_no_attention_state_between_calls(pipe, inputs, monkeypatch):
    from generators.attention_hand.pipeline import TASAttnProcessor

    procs = [p for p in pipe.unet.attn_processors.values() if isinstance(p, TASAttnProcessor)]
    assert procs and not hasattr(pipe, "store")
    big = run(pipe, inputs, views=("global", "local"), return_attention=True)
    assert all(p.store is None for p in procs)
    mesh, _local, idx = inputs
    small = pipe(
        PROMPTS[:1],
        mesh[:1],
        None,
        idx[:1],
        [1],
        height=64,
        width=64,
        num_inference_steps=3,
        return_attention=True,
        progress=False,
    )
    assert big.attention_maps[0].shape[0] == 4 and small.attention_maps[0].shape[0] == 1
    calls = []

    def failing(*args):
        calls.append(1)
        raise RuntimeError("boom")

    monkeypatch.setattr(pipe, "_guided_noise", failing)
    with pytest.raises(RuntimeError, match="boom"):
        run(pipe, inputs, steps=1)
    assert calls and all(p.store is None for p in procs)  # detached even when the TAS pass fails


# -- the generator stage -------------------------------------------------------------------------------------
def _samples(n=5, size=64, local_size=64, caption="A person holding up a hand.", with_local=True):
    from pipeline.tagging import HandTokenTagger, clip_tokenizer
    from tests.samples import stub_sample

    tagger = HandTokenTagger(clip_tokenizer())  # the tiny model's tokenizer has the same vocabulary
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        mesh = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        local = rng.integers(0, 256, (local_size, local_size, 3), dtype=np.uint8)
        out.append(stub_sample(i, 100 + i, size, mesh, local if with_local else None, caption, tagger))
    return out


class FakePipe:
    """Deterministic per-sample images (from the seed and the mesh image); CUDA-style out of memory for more
    than ``fits`` samples per call."""

    def __init__(self, fits: int | None = None) -> None:
        from types import SimpleNamespace

        from pipeline.tagging import clip_tokenizer

        self.tokenizer, self.fits, self.calls = clip_tokenizer(), fits, []
        self.scheduler, self.unet = SimpleNamespace(), SimpleNamespace(dtype=torch.float32)
        self.device = "cuda:0"

    def __call__(self, prompts, mesh, mesh_local, idx, seeds, height, width, views, **kw):
        from generators.attention_hand.pipeline import AttentionHandOutput

        self.calls.append(len(prompts))
        if self.fits is not None and len(prompts) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        images = np.stack(
            [(m.astype(np.int64) + s % 251).astype(np.uint8) for m, s in zip(mesh, seeds, strict=True)]
        )
        local = None if mesh_local is None else 255 - images
        return AttentionHandOutput(images=images, local_images=local, tas_losses=[])


def test_generator_oom_halves_the_batch_and_keeps_it(caplog):
    import logging

    from generators.attention_hand.generator import AttentionHandGenerator
    from tests.samples import generated

    want = generated(AttentionHandGenerator(pipeline=FakePipe(), batch_size=8), _samples(7))
    fake = FakePipe(fits=2)
    gen = AttentionHandGenerator(pipeline=fake, batch_size=8)
    with caplog.at_level(logging.WARNING, logger="generators.attention_hand.generator"):
        got = generated(gen, _samples(7))
    assert all(s.image is not None for s in got)
    assert all(np.array_equal(s.image, w.image) for s, w in zip(got, want, strict=True))
    assert [s.generator for s in got] == [w.generator for w in want]
    assert fake.calls == [7, 4, 2, 2, 2, 1]  # 7 -> halves of 4 -> 2, then 2 at a time
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("out of memory" in r.getMessage() for r in warnings)
    assert "batches of 4" in warnings[0].getMessage() and "batches of 2" in warnings[1].getMessage()
    assert gen.current_batch_size == 2 and gen.batch_size == 8
    caplog.clear()
    fake.calls.clear()
    with caplog.at_level(logging.WARNING, logger="generators.attention_hand.generator"):
        gen.generate(_samples(5))  # the reduced size is remembered: no more failed calls, no more warnings
    assert fake.calls == [2, 2, 1] and not caplog.records


def test_generator_oom_at_one_sample_is_a_counted_skip(caplog):
    import logging

    from generators.attention_hand.generator import AttentionHandGenerator
    from pipeline.sample import Skipped

    gen = AttentionHandGenerator(pipeline=FakePipe(fits=0), batch_size=2)
    with caplog.at_level(logging.WARNING, logger="generators.attention_hand.generator"):
        out = gen.generate(_samples(2))
    assert [type(g) for g in out] == [Skipped, Skipped] and {g.reason for g in out} == {"out_of_memory"}
    detail = out[0].detail
    assert (
        detail.startswith("out of memory on cuda:0 generating one 64x64 image")
        and len(detail.splitlines()) == 1
    )
    assert (
        "--image-size" in detail and "--no-tas" in detail and "--views" not in detail
    )  # global only already
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2 and skipped[0].startswith("attentionhand: skipped t-0000000000: out of memory")


def test_pipeline_counts_an_out_of_memory_skip_and_goes_on(tmp_path):
    from flows.stages import GenerationPipeline
    from pipeline.config import RunConfig
    from pipeline.sample import Skipped

    class OneTooBig:  # the real composite, except that sample 1 does not fit
        name, version, tokenizer = "fake", 1, None

        def __init__(self, inner):
            self.inner = inner

        def generate(self, samples):
            made = self.inner.generate(samples)
            too_big = Skipped("out_of_memory", "too big")
            return [too_big if s.index == 1 else g for s, g in zip(samples, made, strict=True)]

        def close(self):
            self.inner.close()

    from collections import Counter

    with GenerationPipeline(RunConfig(out=str(tmp_path), samples=4, image_size=128)) as pipe:
        pipe.load()
        pipe.generator = OneTooBig(pipe.generator)
        skips: Counter = Counter()
        kept = pipe.generate(pipe.prepare(range(4), skips), skips)
    assert (
        skips["out_of_memory"] == 1
        and 1 not in [s.index for s in kept]
        and len(kept) == 4 - sum(skips.values())
    )


def test_generator_views_and_records(pipe):
    from generators.attention_hand.generator import AttentionHandGenerator
    from generators.attention_hand.pipeline import AttentionHandError
    from tests.samples import generated

    fake = FakePipe()
    one = _samples(2, with_local=False)  # mesh_local is not needed for the global view
    one = generated(AttentionHandGenerator(pipeline=fake, batch_size=2), one)
    assert all(s.generator["views"] == ["global"] and s.image_local is None for s in one)
    assert one[0].generator["version"] == 2
    both = generated(
        AttentionHandGenerator(pipeline=fake, batch_size=2, views="global,local"), _samples(2, local_size=32)
    )
    assert all(s.generator["views"] == ["global", "local"] for s in both)
    # at mesh_local's size
    assert all(s.image_local.shape == (32, 32, 3) and s.image_local.dtype == np.uint8 for s in both)
    with pytest.raises(AttentionHandError, match="unknown view 'side'"):
        AttentionHandGenerator(pipeline=fake, views=("global", "side"))
    with pytest.raises(AttentionHandError, match="batch size"):
        AttentionHandGenerator(pipeline=fake, batch_size=0)
    # the real tiny pipeline: the generator's global view is the pipeline's, whatever the views
    real = generated(
        AttentionHandGenerator(pipeline=pipe, steps=2, batch_size=2, views=("global", "local")), _samples(2)
    )
    assert all(s.image.shape == s.image_local.shape == (64, 64, 3) for s in real)
    alone = generated(AttentionHandGenerator(pipeline=pipe, steps=2, batch_size=2), _samples(2))
    for a, b in zip(real, alone, strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


# -- attentionhand:PATH[,options] ----------------------------------------------------------------------------
def test_parse_spec():
    from pipeline.config import load_config
    from pipeline.errors import HandgenError
    from pipeline.stage_configs import AttentionHandGeneratorConfig, SpecError

    parse_spec = AttentionHandGeneratorConfig.from_spec
    assert parse_spec("attentionhand:/m") == AttentionHandGeneratorConfig(path="/m")
    assert parse_spec("attentionhand:/m,guidance=/g") == AttentionHandGeneratorConfig(
        path="/m", guidance="/g"
    )
    # blanks are stripped; a path may hold a colon, a value an '='
    assert parse_spec("attentionhand: /m, guidance = /g ") == AttentionHandGeneratorConfig(
        path="/m", guidance="/g"
    )
    assert parse_spec("attentionhand:C:/models/ah,guidance=a=b").path == "C:/models/ah"
    assert parse_spec("attentionhand:C:/models/ah,guidance=a=b").guidance == "a=b"
    assert parse_spec("attentionhand:/m,guidance=/g").spec() == "attentionhand:/m,guidance=/g"
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        parse_spec("attentionhand:/m").path = "/x"
    for spec, match in (
        ("attentionhand:", "model folder is missing"),
        ("attentionhand:,guidance=/g", "model folder is missing"),
        ("attentionhand:/m,steps=3", "unknown option 'steps' \\(known options: guidance\\)"),
        ("attentionhand:/m,guidance=/a,guidance=/b", "'guidance' is given twice"),
        ("attentionhand:/m,guidance", "'guidance' needs the form NAME=VALUE"),
        ("attentionhand:/m,guidance=", "'guidance' has no value"),
        ("attentionhand:/m,", "empty option"),
    ):
        with pytest.raises(SpecError, match=match) as e:
            parse_spec(spec)
        assert isinstance(e.value, HandgenError) and isinstance(e.value, ValueError)
        assert len(str(e.value).splitlines()) == 1 and repr(spec) in str(e.value)
    # parsed once, in the run config; a YAML preset may give the mapping form
    cfg = load_config(None, generator={"kind": "attentionhand", "path": "/m"})
    assert cfg.generator == AttentionHandGeneratorConfig(path="/m")
    assert cfg.model_dump(mode="json")["generator"] == "attentionhand:/m"


def test_generator_from_config():
    from generators import GENERATORS
    from generators.attention_hand.models import AttentionHandLoadError
    from pipeline.config import load_config

    cfg = load_config(None, generator="attentionhand:/nowhere,guidance=/g", device="cpu")
    with pytest.raises(AttentionHandLoadError, match="not found: /nowhere"):
        GENERATORS.build(cfg.generator, run=cfg, device="cpu")
