"""The composite generator, version 3 (skin, lights, natural backgrounds, camera effects): exact masks,
determinism per seed and try, 1/f spectra, diversity records, bounded camera effects, photo backgrounds."""

from __future__ import annotations

import copy
import dataclasses
import re

import numpy as np
import pytest

from generators.composite import (
    BACKGROUND_KINDS,
    LIGHT_PRESETS,
    CompositeConfig,
    CompositeGenerator,
    pink_noise,
    skin_albedo,
    spectrum_slope,
    to_srgb8,
)
from pipeline.seeding import stage_rng
from tests.samples import generated


@pytest.fixture(scope="module")
def samples(hand_model):
    """Six rendered prior samples at 128 px (mask, depth and 2D joints filled in)."""
    from pipeline.sources import make_source, posed_sample
    from renderers.base import RenderBatch, RenderConfig, make_renderer, render_item

    gl = make_renderer("opengl", config=RenderConfig(local_size=128))
    src = make_source("prior", hand_model, run_seed=5, image_size=(128, 128))
    posed = [posed_sample(src, i, hand_model) for i in range(6)]
    rendered = gl.render(RenderBatch([render_item(s) for s in posed], hand_model.faces))
    gl.close()
    out = [s.with_(rendered=r) for s, r in zip(posed, rendered, strict=True)]
    assert all((s.mask > 0).any() for s in out)
    return out


def _fresh(samples, attempt=0):
    return [s.with_(attempt=attempt) for s in samples]


def _with_seed(sample, seed):
    return sample.with_(drawn=dataclasses.replace(sample.drawn, seed=seed))


def test_hand_pixels_are_exactly_the_mask(samples):
    gen = CompositeGenerator()
    for s in samples:
        comp, _ = gen.compose(s)
        assert np.array_equal(comp.alpha, s.mask > 0)
        a = comp.alpha
        assert np.array_equal(comp.image[a], comp.hand[a])  # inside: the hand, nothing of the background
        assert np.array_equal(comp.image[~a], comp.background[~a])  # outside: the background, untouched
        assert (comp.hand[~a] == 0).all()
        assert comp.image.dtype == np.float32 and np.isfinite(comp.image).all()


def test_hand_does_not_depend_on_the_background(samples, tmp_path):
    from PIL import Image, ImageFilter

    for name, colour in (("a", (250, 20, 20)), ("b", (20, 250, 250))):
        (tmp_path / name).mkdir()
        Image.new("RGB", (80, 80), colour).save(tmp_path / name / "bg.png")
    ga = CompositeGenerator(CompositeConfig(backgrounds=str(tmp_path / "a")))
    gb = CompositeGenerator(CompositeConfig(backgrounds=str(tmp_path / "b")))
    for s in samples:
        ca, _ = ga.compose(s)
        cb, _ = gb.compose(s)
        assert np.array_equal(ca.hand, cb.hand)  # exposure is metered on the lights, not on the background
        assert not np.allclose(ca.background, cb.background)
        img, rec = ga.render(s)
        assert rec["background"] == "bg.png" and rec["background_kind"] == "photo"
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        grown = Image.fromarray((s.mask > 0).astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(25))
        far = ~np.asarray(grown, dtype=bool)  # well away from the hand
        mean = img[far].astype(float).mean(0)
        assert mean[0] > mean[1] + 60 and mean[0] > mean[2] + 60  # the red photo, tinted by the lights only


def test_deterministic_per_seed_and_attempt(samples):
    gen = CompositeGenerator()
    a = _fresh(samples[:3])
    b = _fresh(samples[:3])
    c = _fresh(samples[:3], attempt=1)
    a, b, c = (generated(gen, batch) for batch in (a, b, c))
    for x, y, z in zip(a, b, c, strict=True):
        assert np.array_equal(x.image, y.image) and x.generator == y.generator
        assert not np.array_equal(x.image, z.image)  # a regeneration try is another image
    assert len({s.generator["skin_tone"] for s in a}) == 3  # per sample, not per run


def test_generator_record_holds_the_diversity_controls(samples):
    gen = CompositeGenerator()
    (s,) = generated(gen, _fresh(samples[:1]))
    rec = s.generator
    assert rec["name"] == "composite" and rec["version"] == 3 and rec["seed"] == s.seed
    assert rec["components"] == {
        "skin": "v2",
        "light": "presets",
        "background": "blobs",
        "camera_effects": True,
        "spectrum_match": 0.0,
    }
    assert 0.0 <= rec["skin_tone"] <= 1.0 and len(rec["skin_rgb"]) == 3
    assert rec["lighting"]["preset"] in LIGHT_PRESETS
    for role in ("key", "fill", "rim"):
        assert 1500 <= rec["lighting"][role]["kelvin"] <= 15000 and len(rec["lighting"][role]["dir"]) == 3
    assert rec["background"] == "procedural" and rec["background_kind"] == "blobs"
    natural = CompositeGenerator(CompositeConfig(background="natural"))
    (s,) = generated(natural, _fresh(samples[:1]))
    assert s.generator["background_kind"] in BACKGROUND_KINDS
    cam = rec["camera"]
    assert set(cam) >= {"white_balance", "defocus", "motion_blur", "noise", "jpeg_quality"}
    import json

    assert json.loads(json.dumps(rec)) == rec  # plain JSON for label.json


def test_record_covers_the_ranges():
    """The diversity draws themselves (no rendering): over many seeds every preset and background kind occurs,
    and skin tones cover the light-to-dark range evenly."""
    from generators.composite import _draw_lights

    tones, presets, kinds = [], set(), set()
    gen = CompositeGenerator()
    for seed in range(300):
        rng = stage_rng(seed, "generator", 0)
        presets.add(_draw_lights(rng, "presets")["preset"])
        tones.append(float(rng.uniform(0.0, 1.0)))
        if seed < 40:
            kinds.add(gen._natural(stage_rng(seed, "generator", 0), 32, 32)[1])
    assert presets == set(LIGHT_PRESETS) and kinds == set(BACKGROUND_KINDS)
    assert min(tones) < 0.05 and max(tones) > 0.95
    light, dark = skin_albedo(0.0), skin_albedo(1.0)
    assert light.mean() > 0.75 and dark.mean() < 0.25  # the anchors' span: very light to very dark skin
    mid = skin_albedo(0.5)
    assert dark.mean() < mid.mean() < light.mean() and (mid[0] > mid[1] > mid[2])  # continuous, red-leaning


def test_skin_tones_in_images_span_light_to_dark(samples):
    """Across seeds the rendered skin's brightness spans a wide range (dark to light people) and follows the
    recorded tone; in a two-hand sample both hands have the same colour (one person)."""
    gen = CompositeGenerator(CompositeConfig(camera_effects=False))
    means, tones = [], []
    for seed in range(12):
        t = _with_seed(samples[0], seed)
        comp, _ = gen.compose(t)
        means.append(float(to_srgb8(np.clip(comp.hand[comp.alpha], 0, 1)).mean()))
        tones.append(comp.record["skin_tone"])
    assert np.corrcoef(tones, means)[0, 1] < -0.6  # darker tone, darker hand
    assert max(means) - min(means) > 50
    two = [s for s in samples if (s.mask == 1).sum() > 200 and (s.mask == 2).sum() > 200]
    assert two, "the fixture should hold a two-hand sample"
    for seed in range(4):
        t = _with_seed(two[0], seed)
        comp, _ = gen.compose(t)
        chroma = []
        for value in (1, 2):
            px = comp.hand[t.mask == value].astype(np.float64)
            chroma.append(np.median(px[:, 0] / np.maximum(px[:, 1], 1e-6)))
        assert abs(np.log(chroma[0] / chroma[1])) < 0.25, chroma  # the same skin under the same lights


def test_pink_noise_has_a_one_over_f_spectrum():
    rng = np.random.default_rng(0)
    for alpha in (0.8, 1.0, 1.2):
        slope = spectrum_slope(pink_noise(rng, 256, 256, alpha))
        assert abs(slope + alpha) < 0.12, (alpha, slope)
    white = rng.standard_normal((256, 256))
    assert abs(spectrum_slope(white)) < 0.15  # the fit itself: flat for white noise


def test_natural_backgrounds_have_natural_spectra():
    gen = CompositeGenerator()
    slopes = {}
    for seed in range(30):
        bg, kind, _ = gen._natural(stage_rng(seed, "generator", 0), 256, 256)
        assert bg.dtype == np.uint8 and bg.shape == (256, 256, 3)
        slopes.setdefault(kind, []).append(spectrum_slope(bg.astype(float).mean(-1)))
    assert set(slopes) == set(BACKGROUND_KINDS)
    for kind, ss in slopes.items():
        assert -1.6 < float(np.median(ss)) < -0.7, (kind, ss)  # natural images: about -1
    flat = gen._blobs(stage_rng(0, "generator", 0), 256, 256, np.array([1.0, 0.0]))
    assert spectrum_slope(flat.astype(float).mean(-1)) < -1.6  # version 1's blobs: far too smooth


def test_camera_effects_change_the_image_within_bounds(samples):
    base = CompositeConfig(defocus=(0.0, 0.0), motion_blur=0.0, jpeg=0.0)
    for s in samples[:3]:
        comp, rng = CompositeGenerator(base).compose(s)
        clean, _ = CompositeGenerator(base)._camera(comp, copy.deepcopy(rng))
        gains = np.asarray(
            CompositeGenerator(base)._camera(comp, copy.deepcopy(rng))[1]["camera"]["white_balance"]
        )
        assert np.all((gains > 0.5) & (gains < 2.5))
        for cfg in (
            dataclasses.replace(base, jpeg=1.0),
            dataclasses.replace(base, motion_blur=1.0),
            dataclasses.replace(base, defocus=(1.0, 1.0)),
        ):
            img, rec = CompositeGenerator(cfg)._camera(comp, copy.deepcopy(rng))
            diff = np.abs(img.astype(float) - clean.astype(float))
            assert diff.mean() > 0.05  # the effect does something
            assert diff.mean() < 12.0 and np.percentile(diff, 50) < 10  # but the image stays the image
            if cfg.jpeg:
                assert 50 <= rec["camera"]["jpeg_quality"] <= 95
            if cfg.motion_blur:
                assert 3 <= rec["camera"]["motion_blur"]["length"] <= 9
        noise = rec["camera"]["noise"]
        assert 0.5 <= noise["read"] <= 3.0 and 0 <= noise["shot"] <= 0.08


def test_spectrum_matching_moves_the_slope_toward_minus_one(samples):
    s = samples[0]
    off = CompositeGenerator(
        CompositeConfig(
            background="natural", camera_effects=False, blur=(0.0, 0.0), noise=(0.0, 0.0), jitter=0.0
        )
    )
    on = CompositeGenerator(dataclasses.replace(off.config, spectrum_match=1.0))
    a, _ = off.render(s)
    b, rec = on.render(s)
    sa, sb = spectrum_slope(a.astype(float).mean(-1)), spectrum_slope(b.astype(float).mean(-1))
    assert abs(sb + 1.0) < abs(sa + 1.0) and abs(sb + 1.0) < 0.3, (sa, sb)
    assert rec["components"]["spectrum_match"] == 1.0


def test_version1_components_still_available(samples):
    cfg = CompositeConfig(skin="flat", light="single", background="blobs", camera_effects=False)
    (s,) = generated(CompositeGenerator(cfg), _fresh(samples[:1]))
    rec = s.generator
    assert isinstance(rec["skin_tone"], int) and rec["background_kind"] == "blobs" and len(rec["light"]) == 3
    assert "blur" in rec and "noise" in rec and "camera" not in rec
    with pytest.raises(ValueError, match="composite skin"):
        CompositeConfig(skin="shiny")
    with pytest.raises(ValueError, match="spectrum_match"):
        CompositeConfig(spectrum_match=2.0)


def test_composite_spec_options():
    from pipeline.stage_configs import CompositeGeneratorConfig, SpecError

    def parse_spec(spec):
        return CompositeGeneratorConfig.from_spec(spec).model_dump(exclude={"kind"}, exclude_defaults=True)

    assert parse_spec("composite") == {}
    assert parse_spec("composite:background=natural,camera_effects=off,spectrum_match=0.25") == {
        "background": "natural",
        "camera_effects": False,
        "spectrum_match": 0.25,
    }
    spec = "composite:background=natural,camera_effects=off,spectrum_match=0.25"
    assert (
        CompositeGeneratorConfig.from_spec(spec).spec()
        == "composite:background=natural,camera_effects=0,spectrum_match=0.25"
    )
    for spec, message in (
        ("composite:sky=blue", "unknown option 'sky' (known options: skin, light, background"),
        ("composite:background", "'background' needs the form NAME=VALUE"),
        ("composite:background=photo", "composite background must be one of"),
        ("composite:camera_effects=maybe", "camera_effects expects a bool"),
        ("composite:spectrum_match=2", "spectrum_match must be in [0, 1]"),
        ("composite:skin=v2,skin=flat", "given twice"),
    ):
        with pytest.raises(SpecError, match=re.escape(message)):
            parse_spec(spec)


def test_cli_composite_options_reach_the_label(tmp_path):
    import json
    import subprocess
    import sys
    import tarfile

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "generate",
        "--out",
        str(out),
        "--samples",
        "2",
        "--image-size",
        "128",
        "--generator",
        "composite:background=natural,camera_effects=0",
        "--no-prefect",
        "-q",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with tarfile.open(next(out.glob("*.tar"))) as t:
        m = next(m for m in t.getmembers() if m.name.endswith(".label.json"))
        rec = json.load(t.extractfile(m))["generator"]
    assert rec["components"]["background"] == "natural" and rec["components"]["camera_effects"] is False
    cmd[5] = str(tmp_path / "bad")
    bad = subprocess.run(
        cmd[:-4] + ["--generator", "composite:sky=blue", "--no-prefect", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown option 'sky'" in bad.stderr and "Traceback" not in bad.stderr
