"""The composite generator, version 7 (skin with palm creases, lights, natural backgrounds, camera effects,
the key light's soft shadows; ambient occlusion as an option): exact masks, determinism per seed and try, 1/f
spectra, diversity records, bounded camera effects, photo backgrounds, shadow maps checked against ray
casting, area-light penumbrae, ambient occlusion on planes, creases and contacts, palm creases on the palm
only."""

from __future__ import annotations

import copy
import dataclasses
import re

import numpy as np
import pytest
from scipy import ndimage

from generators.composite import (
    BACKGROUND_KINDS,
    KEY_SIZE,
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
    assert rec["name"] == "composite" and rec["version"] == 8 and rec["seed"] == s.seed
    assert rec["components"] == {
        "skin": "v2",
        "light": "presets",
        "background": "blobs",
        "blob_colours": "scene",
        "camera_effects": True,
        "spectrum_match": 0.0,
        "shadows": True,
        "penumbra": True,
        "scatter": 1.0,
        "occlusion": 0.8,
        "palm_lines": 0.3,
    }
    assert isinstance(rec["shadow_fraction"], float) and 0.0 <= rec["shadow_fraction"] <= 1.0
    assert 0.0 <= rec["skin_tone"] <= 1.0 and len(rec["skin_rgb"]) == 3
    assert rec["lighting"]["preset"] in LIGHT_PRESETS
    assert set(KEY_SIZE) == set(LIGHT_PRESETS)  # every preset's key light has a size
    assert rec["lighting"]["key_size"] == KEY_SIZE[rec["lighting"]["preset"]] > 0  # the key light's size
    (hard,) = generated(CompositeGenerator(CompositeConfig(penumbra=False)), _fresh(samples[:1]))
    assert hard.generator["lighting"]["key_size"] == 0.0 and hard.generator["components"]["penumbra"] is False
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


def _saturation(img):
    """(H, W) float HSV saturation of an sRGB uint8 image."""
    x = img.astype(float)
    hi, lo = x.max(-1), x.min(-1)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-9), 0.0)


def test_blob_colours_come_from_one_desaturated_scene_palette():
    """``blob_colours="scene"`` (the default) paints the blobs from one scene's palette (``_palette``: mostly
    desaturated, like most photographs), ``"random"`` (version 6) uniformly in RGB; the same stream gives
    the same background, and "random" draws exactly what version 6 drew."""
    light = np.array([0.6, -0.8])
    scene, rand = [], []
    for seed in range(24):
        a = CompositeGenerator._blobs(stage_rng(seed, "generator", 0), 96, 96, light)
        b = CompositeGenerator._blobs(stage_rng(seed, "generator", 0), 96, 96, light, "random")
        assert np.array_equal(a, CompositeGenerator._blobs(stage_rng(seed, "generator", 0), 96, 96, light))
        scene.append(float(np.median(_saturation(a))))
        rand.append(float(np.median(_saturation(b))))
    # measured: medians 0.13 and 0.51 over the 24 backgrounds; "scene" is the less saturated in 23 of 24
    assert np.median(scene) < 0.3 < np.median(rand), (np.median(scene), np.median(rand))
    assert sum(x < y for x, y in zip(scene, rand, strict=True)) >= 20
    with pytest.raises(ValueError, match="composite blob_colours must be one of"):
        CompositeConfig(blob_colours="vivid")


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
    # the single light ignores the ambient occlusion (a presets-light component): the same image, recorded 0
    image, rec = CompositeGenerator(cfg).render(s)
    assert rec["components"]["occlusion"] == 0.0 and cfg.occlusion == 0.8
    same, _ = CompositeGenerator(dataclasses.replace(cfg, occlusion=0.0)).render(s)
    assert np.array_equal(image, same)
    with pytest.raises(ValueError, match="composite skin"):
        CompositeConfig(skin="shiny")
    with pytest.raises(ValueError, match="spectrum_match"):
        CompositeConfig(spectrum_match=2.0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"composite occlusion must be in \[0, 1\]"):
            CompositeConfig(occlusion=bad)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"composite palm_lines must be in \[0, 1\]"):
            CompositeConfig(palm_lines=bad)
        with pytest.raises(ValueError, match=r"composite scatter must be in \[0, 1\]"):
            CompositeConfig(scatter=bad)


def test_composite_spec_options():
    from pipeline.stage_configs import CompositeGeneratorConfig, SpecError

    def parse_spec(spec):
        return CompositeGeneratorConfig.from_spec(spec).model_dump(exclude={"kind"}, exclude_defaults=True)

    assert parse_spec("composite") == {}
    assert parse_spec("composite:shadows=off") == {"shadows": False}
    assert parse_spec("composite:shadows=on") == {}
    assert parse_spec("composite:occlusion=0.8") == {}
    assert parse_spec("composite:occlusion=0") == {"occlusion": 0.0}  # version 7
    assert parse_spec("composite:occlusion=0.5,shadows=off") == {"occlusion": 0.5, "shadows": False}
    assert parse_spec("composite:light=single,occlusion=0.5") == {"light": "single", "occlusion": 0.5}
    assert parse_spec("composite:palm_lines=0") == {"palm_lines": 0.0}
    assert parse_spec("composite:penumbra=off,scatter=0") == {"penumbra": False, "scatter": 0.0}
    assert parse_spec("composite:blob_colours=random") == {"blob_colours": "random"}
    assert CompositeGeneratorConfig.from_spec("composite:occlusion=0").spec() == "composite:occlusion=0.0"
    assert CompositeGeneratorConfig.from_spec("composite:shadows=off").spec() == "composite:shadows=0"
    with pytest.raises(SpecError) as bad:
        parse_spec("composite:shadows=soft")
    assert str(bad.value) == "--generator 'composite:shadows=soft': shadows expects a bool, got 'soft'"
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
        ("composite:shadows=soft", "shadows expects a bool, got 'soft'"),
        ("composite:spectrum_match=2", "spectrum_match must be in [0, 1]"),
        ("composite:occlusion=1.5", "composite occlusion must be in [0, 1], got '1.5'"),
        ("composite:occlusion=nan", "composite occlusion must be in [0, 1]"),
        ("composite:occlusion=dark", "occlusion expects a float, got 'dark'"),
        ("composite:palm_lines=2", "composite palm_lines must be in [0, 1], got '2'"),
        ("composite:scatter=-1", "composite scatter must be in [0, 1], got '-1'"),
        ("composite:penumbra=wide", "penumbra expects a bool, got 'wide'"),
        ("composite:blob_colours=vivid", "composite blob_colours must be one of"),
        ("composite:skin=v2,skin=flat", "given twice"),
    ):
        with pytest.raises(SpecError, match=re.escape(message)):
            parse_spec(spec)


def test_stage_config_and_generator_config_allow_the_same_choices():
    """The stage config (``--generator composite:...``) and the generator's own config list their choices
    separately (the pipeline package does not import generators): both must accept the same values."""
    from typing import get_args

    from pipeline.stage_configs import CompositeGeneratorConfig

    for name in ("skin", "light", "background", "blob_colours"):
        allowed = get_args(CompositeGeneratorConfig.model_fields[name].annotation)
        assert len(allowed) >= 2, name
        for value in allowed:
            assert getattr(CompositeConfig(**{name: value}), name) == value
        with pytest.raises(ValueError, match=f"composite {name} must be one of"):
            CompositeConfig(**{name: "none_of_these"})
        default = CompositeGeneratorConfig.model_fields[name].default
        assert default == getattr(CompositeConfig(), name), name


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


# -- the key light's shadows (generators.shadows) ------------------------------------------------------------
def _plane_mesh(centre, rotation, half, cells):
    """A square grid of triangles ``2 half`` metres wide, normal -z (toward the camera) before rotation."""
    xs = np.linspace(-half, half, cells + 1)
    gx, gy = np.meshgrid(xs, xs)
    v = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=1) @ rotation.T + centre
    i = (np.arange(cells)[:, None] * (cells + 1) + np.arange(cells)[None, :]).ravel()
    f = np.concatenate(
        [np.stack([i, i + 1, i + cells + 2], 1), np.stack([i, i + cells + 2, i + cells + 1], 1)]
    )
    return v, f


def _toward(normal, theta, phi):
    """The unit direction at ``theta`` radians from ``normal``, turned by ``phi`` about it."""
    a = np.cross(normal, [1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(normal, a)
    return np.cos(theta) * normal + np.sin(theta) * (np.cos(phi) * a + np.sin(phi) * b)


def test_shadow_map_plane_has_no_acne_and_casts_the_occluder_exactly():
    """A tilted, tessellated plane never shadows itself, at any angle to the light up to 85 degrees and every
    texel the composite uses (no acne: exactly 0); a square 3 cm above it shadows the receivers whose rays
    toward the light hit it (1) and no others (exactly 0), with a soft edge between, a few texels
    wide (the filter's reach and the normal offset, measured across the light). 4 cm wide, 3 cm above."""
    from generators.shadows import ShadowParams, occlusion

    rng = np.random.default_rng(7)
    c = 0.4
    rot = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(c), -np.sin(c)], [0.0, np.sin(c), np.cos(c)]])
    centre = np.array([0.0, 0.0, 0.5])
    normal = rot @ np.array([0.0, 0.0, -1.0])
    plane = _plane_mesh(centre, rot, 0.1, 40)
    g = np.linspace(-0.08, 0.08, 81)
    gx, gy = np.meshgrid(g, g)
    points = (np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], 1) @ rot.T + centre).T  # (3, N)
    normals = np.repeat(normal[:, None], points.shape[1], axis=1)
    for texel in (0.0012, 0.002, 0.004):
        for _ in range(12):
            light = _toward(normal, rng.uniform(0.0, np.radians(85)), rng.uniform(0, 2 * np.pi))
            for size in (0.0, 0.06, 0.3, 0.7):  # a point-like light, then area lights (``light_size``)
                occ = occlusion(points, normals, [plane], light, texel, light_size=size)
                assert occ.dtype == np.float32 and not occ.any(), (texel, light, size)  # no acne
    square = _plane_mesh(centre + 0.03 * normal, rot, 0.02, 1)  # 4 cm wide, 3 cm toward the light side
    params = ShadowParams()
    seen_soft = False
    for texel in (0.0012, 0.002):
        for theta in (0.0, 0.45, 0.9):
            light = _toward(normal, theta, rng.uniform(0, 2 * np.pi))
            occ = occlusion(points, normals, [plane, square[0:2]], light, texel)
            # where each receiver's ray toward the light crosses the square's plane, in the square's axes
            hit = points.T + (0.03 / (light @ normal)) * light - (centre + 0.03 * normal)
            inside = np.abs(hit @ rot[:, :2]).max(axis=1) - 0.02  # < 0: the ray hits the square
            margin = (2.2 + params.normal_offset) * texel / np.cos(theta) + 1e-3
            assert (occ[inside < -margin] > 0.9999).all() and (inside < -margin).sum() > 20
            assert (occ[inside > margin] == 0.0).all()
            seen_soft |= bool(((occ > 0.05) & (occ < 0.95)).any())
    assert seen_soft  # percentage-closer filtering: soft edges


def _penumbra(size, height, texel=0.002):
    """Across the edge of a square's shadow on a plane facing the light (from straight above): the
    receivers' occlusion along a line, and the width (metres) over which it rises from 0.1 to 0.9. The
    square is 8 cm wide, ``height`` metres above the plane; ``size``: the light's ``light_size``."""
    from generators.shadows import occlusion

    rot = np.eye(3)
    centre = np.array([0.0, 0.0, 0.5])
    normal = np.array([0.0, 0.0, -1.0])
    plane = _plane_mesh(centre, rot, 0.12, 24)
    square = _plane_mesh(centre + height * normal, rot, 0.04, 1)
    x = np.linspace(0.0, 0.08, 401)  # across the square's edge at x = 0.04
    points = np.stack([x, np.zeros_like(x), np.full_like(x, 0.5)])
    normals = np.repeat(normal[:, None], len(x), axis=1)
    occ = occlusion(points, normals, [plane, square], normal, texel, light_size=size)
    assert np.all(np.diff(occ) <= 1e-6)  # darkest under the square, lit beyond
    return occ, x[np.argmax(occ < 0.1)] - x[np.argmax(occ < 0.9)]


def test_area_light_penumbra_widens_with_the_occluder_distance():
    """An area light (``light_size``: the tangent of its angular radius) casts a penumbra 2 x distance x size
    wide, so twice as wide for an occluder twice as far; the umbra stays fully dark and beyond the penumbra
    everything is lit (exactly 0). A point-like light (``light_size`` 0) keeps the 3 x 3 filter's edge of a
    few texels, whatever the distance."""
    x = np.linspace(0.0, 0.08, 401)
    for size, near, far in ((0.3, 0.02, 0.04), (0.7, 0.01, 0.02)):
        occ1, w1 = _penumbra(size, near)
        occ2, w2 = _penumbra(size, far)
        for occ, height in ((occ1, near), (occ2, far)):
            assert occ[0] == 1.0 and occ[-1] == 0.0
            assert (occ[x > 0.04 + height * size + 0.004] == 0.0).all()
        # a disc's 10-90% width across a straight edge is 0.63 of its diameter; measured (texel 2 mm): 0.3:
        # 7.6 and 15.2 mm; 0.7: 9.0 and 17.8 mm
        assert 1.6 < w2 / w1 < 2.4, (size, w1, w2)
        assert 0.5 < w2 / (2 * far * size) < 0.8, (size, w2)
    _, h1 = _penumbra(0.0, 0.01)
    _, h2 = _penumbra(0.0, 0.04)
    assert h1 == h2 and h1 < 0.006, (h1, h2)


def _uv_sphere(radius, centre, n_lat=24, n_lon=48):
    th = np.linspace(0.0, np.pi, n_lat + 1)
    ph = np.linspace(0.0, 2 * np.pi, n_lon, endpoint=False)
    t, p = np.meshgrid(th, ph, indexing="ij")
    v = (
        np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3) * radius
        + centre
    )
    i, j = np.meshgrid(np.arange(n_lat), np.arange(n_lon), indexing="ij")
    a, b = (i * n_lon + j).ravel(), (i * n_lon + (j + 1) % n_lon).ravel()
    f = np.concatenate([np.stack([a, a + n_lon, b + n_lon], 1), np.stack([a, b + n_lon, b], 1)])
    return v, f


def test_shadow_map_convex_surface_shadows_only_its_far_side():
    """On a tessellated sphere (receivers on its faces, with the faces' normals), the side facing the light
    is never in shadow (no acne on a curved surface) and the far side always is, whatever the light."""
    from generators.shadows import occlusion

    centre = np.array([0.02, -0.01, 0.4])
    v, f = _uv_sphere(0.03, centre)
    tri = v[f]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    keep = np.linalg.norm(fn, axis=1) > 1e-12
    points, fn = tri[keep].mean(axis=1), fn[keep]
    fn /= np.linalg.norm(fn, axis=1, keepdims=True)
    fn *= np.sign(((points - centre) * fn).sum(1))[:, None]  # outward
    rng = np.random.default_rng(3)
    for texel in (0.0012, 0.004):
        for _ in range(6):
            light = rng.normal(size=3)
            light /= np.linalg.norm(light)
            occ = occlusion(points.T, fn.T, [(v, f)], light, texel)
            ndl = fn @ light
            assert not occ[ndl > 0.15].any()
            assert (occ[ndl < -0.85] > 0.999).all()


def _ray_hits(origins, direction, tris):
    """(R,) distance along ``direction`` (unit) from each of ``origins`` (R, 3) to the farthest triangle of
    ``tris`` (F, 3, 3) its ray crosses (inf: none): exact ray casting, the reference the shadow map is checked
    against. Seen along the ray, a triangle is crossed when the origin's projection lies inside the
    triangle's, in front of the origin; rays go in chunks near each other, against the triangles near them."""
    b = np.linalg.svd(direction[None])[2]  # rows: direction (up to sign), then two axes across it
    b = np.stack([b[1], b[2], direction])
    o, t = origins @ b.T, tris @ b.T  # (R, 3), (F, 3, 3): across, across, along the ray
    x0, y0, z0 = t[:, 0, 0], t[:, 0, 1], t[:, 0, 2]
    ux, uy, uz = t[:, 1, 0] - x0, t[:, 1, 1] - y0, t[:, 1, 2] - z0
    vx, vy, vz = t[:, 2, 0] - x0, t[:, 2, 1] - y0, t[:, 2, 2] - z0
    d = ux * vy - uy * vx
    ok = np.abs(d) > 1e-14
    lo, hi = t[:, :, :2].min(axis=1), t[:, :, :2].max(axis=1)
    order = np.lexsort((o[:, 1], np.floor(o[:, 0] / 0.01)))
    out = np.full(len(o), np.inf)
    for c in range(0, len(order), 32):
        idx = order[c : c + 32]
        p = o[idx]
        near = ok & (hi >= p[:, :2].min(0)).all(1) & (lo <= p[:, :2].max(0)).all(1)
        px, py = p[:, 0:1] - x0[near], p[:, 1:2] - y0[near]
        l1 = (px * vy[near] - py * vx[near]) / d[near]
        l2 = (ux[near] * py - uy[near] * px) / d[near]
        depth = z0[near] + l1 * uz[near] + l2 * vz[near] - p[:, 2:3]
        hit = (l1 >= 0) & (l2 >= 0) & (l1 + l2 <= 1) & (depth > 0)
        out[idx] = np.where(hit, depth, -np.inf).max(axis=1, initial=-np.inf)
    out[~np.isfinite(out)] = np.inf
    return out


KEY_DIR = np.array([0.45, -0.55, -0.70]) / np.linalg.norm([0.45, -0.55, -0.70])


@pytest.fixture
def fixed_key(monkeypatch):
    """The key light from ``KEY_DIR`` (from the upper right, in front of the hands); every draw as before."""
    from generators import composite

    draw = composite._draw_lights

    def fixed(rng, mode):
        lights = draw(rng, mode)
        _, colour, strength = lights["key"]
        lights["key"] = (KEY_DIR, colour, strength)
        return lights

    monkeypatch.setattr(composite, "_draw_lights", fixed)
    return KEY_DIR


def test_key_light_shadows_match_ray_casting(samples, fixed_key):
    """Hand pixels (facing the key light) whose rays toward it hit the hands' meshes (a finger over the palm,
    the other hand), and do so 8 mm to each side too, are clearly darker with shadows on than off; those whose
    rays clear the meshes, 8 mm to each side too, are exactly as without shadows (no acne, nothing else
    changed). The reference is ray casting against the triangles, not the shadow map. A point-like key light
    and no light kept in shadow (``penumbra=False, scatter=0``: version 5's shadows), so both bounds are
    sharp; the area light has its own test below."""
    from generators.composite import _normals_from_depth
    from pipeline.schema import SIDES

    on = CompositeGenerator(CompositeConfig(camera_effects=False, penumbra=False, scatter=0.0))
    off = CompositeGenerator(CompositeConfig(camera_effects=False, shadows=False))
    e1 = np.cross(fixed_key, [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(fixed_key, e1)
    ratios, clear_same, clear_n = [], 0, 0
    for s in samples:
        a, _ = on.compose(s)
        b, _ = off.compose(s)
        faces = s.hand_faces
        tris = np.concatenate(
            [s.verts[i][faces[side]] for i, side in enumerate(SIDES) if s.hands[side] is not None]
        ).astype(np.float64)
        K = s.camera.K
        n = _normals_from_depth(s.depth, (s.mask > 0).astype(np.uint8), K, smooth=2)
        hand = s.mask > 0  # without its one-pixel rim: depth and normals there are the silhouette's, not the
        # surface's, and the map's filter reaches across the rim (measured: 11 of 12 changed clear pixels)
        inner = ndimage.binary_erosion(hand)
        vv, uu = np.nonzero(inner & (n @ fixed_key > 0.3))  # hand pixels facing the light
        z = s.depth[vv, uu].astype(np.float64)
        P = np.stack([(uu - K[0, 2]) * z / K[0, 0], (vv - K[1, 2]) * z / K[1, 1], z], -1)
        nn = n[vv, uu].astype(np.float64)
        start = P + 0.001 * nn
        hits = [_ray_hits(start + off_, fixed_key, tris) for off_ in (0 * e1, 0.008 * e1, -0.008 * e1)]
        hits += [_ray_hits(start + off_, fixed_key, tris) for off_ in (0.008 * e2, -0.008 * e2)]
        hits = np.stack(hits)
        shadowed = (hits > 0.008).all(0) & np.isfinite(hits).all(0)
        clear = ~np.isfinite(hits).any(0)
        la, lb = a.hand[vv, uu].sum(-1), b.hand[vv, uu].sum(-1)
        ratios += list(la[shadowed] / lb[shadowed])
        clear_same += int((la[clear] == lb[clear]).sum())
        clear_n += int(clear.sum())
        assert a.record["shadow_fraction"] > 0.0 and b.record["shadow_fraction"] == 0.0
    ratios = np.asarray(ratios)
    assert len(ratios) >= 100 and clear_n >= 100, (len(ratios), clear_n)  # measured: 153 and 315
    assert (ratios < 0.95).mean() >= 0.98 and np.median(ratios) < 0.8, np.round(ratios, 3)  # median 0.28
    assert clear_same >= 0.98 * clear_n, (clear_same, clear_n)  # measured: 310 of 315


def test_shadows_off_is_the_version_3_shading(samples, monkeypatch):
    """``shadows=False`` never builds a shadow map and shades as version 3 did: the same image as shadows on
    with nothing in shadow (the only change to the shading is the key light's shadow term), the same record
    fields (``shadow_fraction`` 0.0). A sample without the hand model's triangles gets no shadows either."""
    off = CompositeGenerator(CompositeConfig(shadows=False))
    on = CompositeGenerator()
    seen = []
    real = CompositeGenerator._key_shadow
    monkeypatch.setattr(
        CompositeGenerator, "_key_shadow", staticmethod(lambda *a: seen.append(1) or real(*a))
    )
    lit = {s.key: on.render(s) for s in samples[:3]}
    dark = {s.key: off.render(s) for s in samples[:3]}
    assert len(seen) == 3  # on: once a sample; off: never
    monkeypatch.setattr(
        CompositeGenerator, "_key_shadow", staticmethod(lambda s, u, *_: np.zeros(len(u), "f4"))
    )
    for s in samples[:3]:
        img_off, rec_off = dark[s.key]
        img_none, _ = on.render(s)
        assert np.array_equal(img_off, img_none)
        assert rec_off["components"]["shadows"] is False and rec_off["shadow_fraction"] == 0.0
        assert rec_off["version"] == 8 and set(rec_off) == set(lit[s.key][1])
        assert {k: type(v) for k, v in rec_off.items()} == {k: type(v) for k, v in lit[s.key][1].items()}
    assert any(not np.array_equal(lit[s.key][0], dark[s.key][0]) for s in samples[:3])
    monkeypatch.undo()
    s = samples[1]
    bare = s.with_(posed=dataclasses.replace(s.posed, faces=None))  # e.g. a sample made without a hand model
    img, rec = on.render(bare)
    assert rec["shadow_fraction"] == 0.0 and np.array_equal(img, off.render(s)[0])


def test_shadows_are_deterministic(samples):
    """The same sample gives the same shadows (and image) every time, in any order."""
    gen = CompositeGenerator()
    first = [gen.compose(s)[0] for s in samples[:3]]
    again = [gen.compose(s)[0] for s in reversed(samples[:3])][::-1]
    for x, y in zip(first, again, strict=True):
        assert np.array_equal(x.hand, y.hand) and x.record == y.record


def test_undistort_inverts_distort():
    """The shadows back-project pixels through the camera's distortion (``pipeline.camera``)."""
    from pipeline.camera import distort_normalized, undistort_normalized

    xy = np.random.default_rng(0).uniform(-0.8, 0.8, (500, 2))
    for dist in (
        (0.1, -0.05, 0.01, -0.002),
        (-0.2, 0.05, 0.001, -0.001, -0.01),
        (0.1, 0.0, 0.0, 0.0, 0.0, 0.2, 0, 0),
    ):
        back = undistort_normalized(distort_normalized(xy, np.array(dist)), np.array(dist))
        assert np.abs(back - xy).max() < 1e-6, dist
    assert undistort_normalized(xy, None) is not None and np.array_equal(undistort_normalized(xy, None), xy)


def test_undistort_that_does_not_converge_is_nan_and_stays_lit():
    """Strong barrel distortion far from the centre: the fixed-point iteration diverges. Those points come
    back NaN (never a wrong point), and the shadow test leaves such receivers lit instead of failing the
    sample."""
    from generators.shadows import occlusion
    from pipeline.camera import UNDISTORT_TOLERANCE, distort_normalized, undistort_normalized

    dist = np.array([-0.4, 0.2, 0.0, 0.0, 0.0])
    g = np.linspace(-1.2, 1.2, 25)
    xy = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    out = undistort_normalized(xy, dist)
    bad = np.isnan(out).any(axis=1)
    assert bad.any() and not bad.all()
    assert np.abs(distort_normalized(out[~bad], dist) - xy[~bad]).max() <= UNDISTORT_TOLERANCE
    # one receiver with a NaN coordinate, one with a NaN normal, among finite ones under a floating square
    sq = np.array([[-0.05, -0.05, 0.4], [0.05, -0.05, 0.4], [0.05, 0.05, 0.4], [-0.05, 0.05, 0.4]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    pts = np.array([[0.0, 0.0, 0.5], [np.nan, 0.0, 0.5], [0.0, 0.01, 0.5], [0.2, 0.2, 0.5]]).T
    nrm = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [np.nan, 0.0, -1.0], [0.0, 0.0, -1.0]]).T
    shade = occlusion(pts, nrm, [(sq, faces)], np.array([0.0, 0.0, -1.0]), 0.002)
    assert shade[1] == 0.0 and shade[2] == 0.0  # not points: lit
    assert shade[0] == 1.0 and shade[3] == 0.0  # behind the square / beside it
    finite = occlusion(pts[:, [0, 3]], nrm[:, [0, 3]], [(sq, faces)], np.array([0.0, 0.0, -1.0]), 0.002)
    assert np.array_equal(finite, shade[[0, 3]])


# -- ambient occlusion (generators.shadows.ambient_occlusion) ------------------------------------------------
def _depth_grid(depth: np.ndarray, focal: float) -> np.ndarray:
    """(H, W, 3) camera-space points of a depth map (0: no surface), principal point at the centre."""
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    grid = np.stack([(u - W / 2) * depth / focal, (v - H / 2) * depth / focal, depth], axis=-1)
    return grid.astype(np.float32)


def _grid_normals(grid: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit normals facing the camera, by central differences of the points."""
    n = np.cross(np.gradient(grid, axis=1), np.gradient(grid, axis=0)).astype(np.float64)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-20)
    n[(n * grid).sum(-1) > 0] *= -1
    return n.astype(np.float32)


def test_ambient_occlusion_leaves_planes_open_and_darkens_contacts():
    """Exactly 0 on a plane, facing the camera or tilted 60 degrees (no self-occlusion); a small square
    5 mm in front of a plane darkens the plane around it, the same square 10 cm in front does not (beyond
    3 radii); a V-shaped crease is darker near its fold than on its open faces."""
    from generators.shadows import ambient_occlusion

    focal, H, W = 500.0, 120, 120
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    for tilt in (0.0, 60.0):  # depth of a plane through (0, 0, 0.5) turned about the image's y axis
        t = np.tan(np.radians(tilt))
        depth = 0.5 / (1 - t * (u - W / 2) / focal)
        grid = _depth_grid(depth, focal)
        n = _grid_normals(grid)
        rows, cols = np.mgrid[5 : H - 5, 5 : W - 5].reshape(2, -1)
        ao = ambient_occlusion(grid, rows, cols, n[rows, cols], focal, 0.015)
        assert ao.dtype == np.float32 and ao.shape == rows.shape
        assert np.array_equal(ao, np.zeros_like(ao)), (tilt, ao.max())

    def with_square(gap):
        depth = np.full((H, W), 0.5)
        depth[50:70, 50:70] = 0.5 - gap  # 20 px = 2 cm at 0.5 m
        grid = _depth_grid(depth, focal)
        flat = np.zeros((H, W, 3), np.float32)
        flat[..., 2] = -1.0
        rows, cols = np.nonzero(depth == 0.5)
        return rows, cols, ambient_occlusion(grid, rows, cols, flat[rows, cols], focal, 0.015)

    rows, cols, near = with_square(0.005)
    cheb = np.maximum(np.abs(rows - 59.5), np.abs(cols - 59.5))  # pixels from the square's centre
    ring = (cheb > 10) & (cheb < 13)
    assert near[ring].min() > 0.05 and np.median(near[ring]) > 0.1, (near[ring].min(), np.median(near[ring]))
    # the reach is radius * focal / z = 15 px at 0.5 m (the outer ring's nearest taps, at 30 degrees, reach
    # 13 px sideways): still some occlusion 11 to 13 px from the square's edge beside its middle, none
    # beyond 16 px (26 px from its centre)
    reach = (np.abs(rows - 59.5) < 1) & (np.abs(cols - 59.5) > 20) & (np.abs(cols - 59.5) < 23)
    assert (near[reach] > 0).all() and near[cheb > 26].max() == 0.0, (
        near[reach].min(),
        near[cheb > 26].max(),
    )
    _, _, far = with_square(0.1)
    assert far.max() == 0.0, far.max()

    # a crease: depth falls 1:1 away from the fold at column 60 (faces at 90 degrees, the fold farthest)
    depth = 0.5 - np.abs(u - 60) / focal * 0.5
    grid = _depth_grid(depth, focal)
    n = _grid_normals(grid)
    rows, cols = np.mgrid[20:100, 30:91].reshape(2, -1)
    ao = ambient_occlusion(grid, rows, cols, n[rows, cols], focal, 0.015)
    at = {c: float(ao[cols == c].mean()) for c in (58, 50, 32)}
    assert at[58] > 0.2 and at[58] > at[50] > 0.02 and at[32] == 0.0, at  # open beyond the reach
    assert ambient_occlusion(grid, rows[:0], cols[:0], n[:0, 0], focal, 0.015).shape == (0,)
    with pytest.raises(ValueError, match="even number of samples"):
        ambient_occlusion(grid, rows, cols, n[rows, cols], focal, 0.015, samples=7)


def test_ambient_occlusion_only_darkens_and_off_is_untouched(samples, monkeypatch):
    """``occlusion=0`` (version 7) never computes the ambient occlusion; on (0.8, the default), hand pixels
    are never brighter and some are clearly darker; the mask, the background and the record's other fields
    do not change; the same sample gives the same image every time."""
    on = CompositeGenerator(CompositeConfig(camera_effects=False))
    off = CompositeGenerator(CompositeConfig(camera_effects=False, occlusion=0.0))
    seen = []
    real = CompositeGenerator._occlusion
    monkeypatch.setattr(CompositeGenerator, "_occlusion", staticmethod(lambda *a: seen.append(1) or real(*a)))
    darker = 0
    for s in samples[:4]:
        a, _ = on.compose(s)
        n_on = len(seen)
        b, _ = off.compose(s)
        assert len(seen) == n_on  # off: never called
        assert np.array_equal(a.alpha, b.alpha) and np.array_equal(a.background, b.background)
        sel = s.mask > 0
        la, lb = a.hand[sel].sum(-1), b.hand[sel].sum(-1)
        assert (la <= lb + 1e-6).all()
        darker += int((la < 0.85 * lb).sum())
        assert a.record == b.record
        again, _ = on.compose(s)
        assert np.array_equal(again.hand, a.hand)
    assert len(seen) == 8 and darker >= 50, (len(seen), darker)
    rec = CompositeGenerator(CompositeConfig(occlusion=0.0)).render(samples[0])[1]
    assert rec["components"]["occlusion"] == 0.0 and rec["version"] == 8  # version 7's shading, switched off


def test_palm_lines_only_on_the_palm_and_only_darken(samples, monkeypatch):
    """The palm's creases darken hand pixels only, never brighten one; they fall only on points that lie on
    the palm's side of its mid-plane (``PALM_SIDE``); ``palm_lines=0`` never draws them and leaves the
    record, the mask and the background as they were; the lines are the same every time for a sample."""
    from generators.composite import PALM_SIDE, _back_project, _palm_coords

    on = CompositeGenerator(CompositeConfig(camera_effects=False))
    off = CompositeGenerator(CompositeConfig(camera_effects=False, palm_lines=0.0))
    seen = []
    real = CompositeGenerator._palm_lines
    monkeypatch.setattr(
        CompositeGenerator, "_palm_lines", staticmethod(lambda *a: seen.append(1) or real(*a))
    )
    drawn = darker = 0
    for s in samples:
        v, u = np.nonzero(s.mask > 0)
        ids = s.mask[v, u]
        depth = s.depth[v, u]
        lines = real(s, u.astype(np.float32), v.astype(np.float32), depth, ids)
        assert lines.shape == (len(u),) and lines.min() >= 0.0 and lines.max() <= 1.0
        assert np.array_equal(lines, real(s, u.astype(np.float32), v.astype(np.float32), depth, ids))
        for value, side in ((1, "right"), (2, "left")):
            pick = ids == value
            if s.hands.get(side) is None or not pick.any():
                continue
            origin, _, _, ax_n, _, _ = _palm_coords(s.hands[side].joints_3d, side)
            P = _back_project(s.camera.K, s.camera.dist, u[pick], v[pick], depth[pick]) - origin
            off_palm = (P @ ax_n <= PALM_SIDE[0]) | (P @ ax_n >= PALM_SIDE[1])
            assert not lines[pick][off_palm].any()  # the back of the hand and curled fingers: no line
            drawn += int((lines[pick] > 0.5).sum())
        a, _ = on.compose(s)
        n_on = len(seen)
        b, _ = off.compose(s)
        assert len(seen) == n_on  # off: never drawn
        assert np.array_equal(a.alpha, b.alpha) and np.array_equal(a.background, b.background)
        assert a.record == b.record
        sel = s.mask > 0
        la, lb = a.hand[sel].sum(-1), b.hand[sel].sum(-1)
        assert (la <= lb + 1e-6).all()
        darker += int((la < 0.9 * lb).sum())
    assert drawn >= 5 and darker >= 5, (drawn, darker)
