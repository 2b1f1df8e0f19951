"""Conditioning style of mesh images: the official style's hand-pixel statistics match AttentionHand's own
conditioning images, both backends shade alike, the grey style reproduces the earlier pixels exactly, and the
style is recorded with the run so ``hands validate`` re-renders exactly (a run without a style is grey)."""

import hashlib
import json

import numpy as np
import pytest

from evaluation.validate import validate
from flows import stages
from pipeline.config import RunConfig
from pipeline.sources import make_source, posed_sample
from pipeline.sources.base import FilterConfig, SkipSample
from renderers import base as render_base
from renderers.base import LEGACY_STYLE, RenderBatch, RenderConfig, RenderItem, make_renderer, render_item
from sinks.run import RunFolder

# hand pixels of redorangeyellowy/AttentionHand samples/mesh/*.jpg (commit 13e7b03; pixels brighter than 40,
# value = mean of R, G, B): mean 225.7, 10th percentile 195.7, 90th 249.3; R 218.5, G 229.2, B 229.4
OFFICIAL = {"mean": 225.0, "p10": 195.0, "p90": 249.0}


def _prior_items(hand_model, n: int, size: tuple[int, int]) -> list[RenderItem]:
    """The first ``n`` usable samples of the prior source (varied gestures, interactions, cameras)."""
    src = make_source(
        "prior", hand_model, run_seed=0, run_tag="style", image_size=size, filters=FilterConfig()
    )
    items, i = [], 0
    while len(items) < n:
        try:
            s = posed_sample(src, i, hand_model, src.filters)
        except SkipSample:
            continue
        finally:
            i += 1
        items.append(render_item(s))
    return items


def _hand_pixels(images, masks) -> np.ndarray:
    return np.concatenate([im[m > 0].astype(np.float64) for im, m in zip(images, masks, strict=True)])


@pytest.fixture(scope="module")
def official_renders(hand_model):
    gl = make_renderer("opengl", config=RenderConfig())
    yield gl.render(RenderBatch(_prior_items(hand_model, 20, (512, 512)), hand_model.faces))
    gl.close()


@pytest.mark.parametrize("view", ["global", "local"])
def test_official_style_matches_the_official_conditioning_images(official_renders, view):
    if view == "global":
        px = _hand_pixels([r.mesh_image for r in official_renders], [r.mask for r in official_renders])
    else:
        px = _hand_pixels([r.mesh_local for r in official_renders], [r.mask_local for r in official_renders])
    assert len(px) > 100_000
    value = px.mean(axis=1)
    assert abs(value.mean() - OFFICIAL["mean"]) <= 10, value.mean()
    assert abs(np.percentile(value, 10) - OFFICIAL["p10"]) <= 10, np.percentile(value, 10)
    assert abs(np.percentile(value, 90) - OFFICIAL["p90"]) <= 10, np.percentile(value, 90)
    r, g, b = px.mean(axis=0)
    assert 5 <= g - r <= 20 and 5 <= b - r <= 20 and abs(g - b) <= 2, (r, g, b)  # slight cyan, like theirs
    # background stays black
    bg = np.concatenate([x.mesh_image[x.mask == 0] for x in official_renders])
    assert (bg == 0).all()


def test_default_style_is_official_and_unknown_styles_are_refused():
    assert RenderConfig().style == "official" and LEGACY_STYLE == "grey"
    with pytest.raises(ValueError, match="unknown render style 'sepia'"):
        RenderConfig(style="sepia")


@pytest.mark.parametrize("style", ["official", "grey"])
def test_backends_shade_alike(hand_model, style):
    """OpenGL and PyTorch3D give the same pixels where their masks agree (as the masks agree: IoU >= 0.99) and
    they see the same surface (depths within 2 mm: on a hand's own occlusion edge, the two rasterizers may see
    different layers at a pixel; measured: 1 pixel of 8216, 2 cm apart)."""
    items = _prior_items(hand_model, 6, (160, 160))
    for tint in (False, True):
        cfg = RenderConfig(local_size=64, style=style, tint=tint)
        gl = make_renderer("opengl", config=cfg)
        a = gl.render(RenderBatch(items, hand_model.faces))
        gl.close()
        b = make_renderer("pytorch3d", device="cpu", config=cfg).render(RenderBatch(items, hand_model.faces))
        diffs, layers = [], 0
        for ra, rb in zip(a, b, strict=True):
            both = (ra.mask > 0) & (ra.mask == rb.mask)
            same = both & (np.abs(ra.depth - rb.depth) < 0.002)
            layers += int(both.sum() - same.sum())
            diffs.append(np.abs(ra.mesh_image.astype(int) - rb.mesh_image.astype(int))[same].ravel())
        assert layers <= 0.001 * sum(len(x) for x in diffs), layers
        d = np.concatenate(diffs)
        assert (d == 0).mean() >= 0.995 and np.percentile(d, 99.9) <= 1 and d.max() <= 8, (tint, d.max())


def test_tint_keeps_working_in_both_styles(hand_model):
    """Per-hand colours: right warm (R > B), left cool (B > R), with the style's brightness."""
    items = [it for it in _prior_items(hand_model, 12, (192, 192)) if len(it.verts) == 2][:3]
    assert items
    means = {}
    for style in ("official", "grey"):
        gl = make_renderer("opengl", config=RenderConfig(local_size=64, style=style, tint=True))
        res = gl.render(RenderBatch(items, hand_model.faces))
        gl.close()
        for hid, side in ((1, "right"), (2, "left")):
            px = _hand_pixels([r.mesh_image for r in res], [r.mask == hid for r in res])
            means[style, side] = px.mean(axis=0)
        r, lf = means[style, "right"], means[style, "left"]
        assert r[0] > r[2] + 10 and lf[2] > lf[0] + 10, (style, r, lf)
    assert means["official", "right"].mean() > means["grey", "right"].mean() + 40  # bright, like the style


# -- the grey style is the earlier look, pixel for pixel -----------------------------------------------------
def _regression_items(hand_model) -> list[RenderItem]:
    """Six fixed scenes: one and two hands, random poses and shapes, one with fisheye distortion."""
    rng = np.random.default_rng(1234)
    H, W = 120, 144
    K = np.array([[190.0, 0, (W - 1) / 2], [0, 190.0, (H - 1) / 2], [0, 0, 1.0]])
    items = []
    for i in range(6):
        sides = ("right", "left") if i % 2 == 0 else (("right", "left")[i // 2 % 2],)
        verts, joints = {}, {}
        for s in sides:
            x = {"right": 0.045, "left": -0.045}[s] if len(sides) == 2 else rng.normal(0, 0.02)
            pose = np.concatenate([rng.normal(0, 0.8, 3), rng.normal(0, 0.25, 45)])
            o = hand_model(
                s, pose[None], rng.normal(0, 1, (1, 10)), np.array([[x, rng.normal(0, 0.02), 0.4]])
            )
            verts[s], joints[s] = o.vertices[0].numpy(), o.joints[0].numpy()
        dist = np.array([0.08, -0.02, 0.004, -0.0005]) if i == 5 else None
        items.append(RenderItem(verts, joints, K, (H, W), dist))
    return items


def _digest(results) -> str:
    h = hashlib.sha256()
    for r in results:
        h.update(r.mesh_image.tobytes())
        h.update(r.mesh_local.tobytes())
    return h.hexdigest()


# Produced BEFORE conditioning styles existed: the renderer of commit da52efc (the plain Lambert look, albedo
# 0.8, ambient 0.25) rendered the scenes of ``_regression_items`` (hand model in float64, its CPU default)
# with RenderConfig(local_size=64) (and tint=True), hashed by ``_digest``; the scenes were computed by this
# code and handed to that tree's renderer. OpenGL on Mesa llvmpipe (the CPU driver; another GL driver may
# rasterize edges differently), PyTorch3D on CPU. (Regenerated when the hand model moved to float64: float32
# skinning varied with the torch thread count and the CPU, and so did the earlier digests.) The scenes use the
# stand-in's version 1, the hand model of those digests.
GREY_REFERENCE = {
    ("opengl", False): "69335665ad7215ea4de8c2135d828ef59984324cf400825024909c76887af036",
    ("opengl", True): "e2c8b57be7664b347286a8df89e5d2b4af164761b54675ae980c8f1aea469725",
    ("pytorch3d", False): "8373d1e6b37333674ded48f59f0ec164865447ddba136bc42ed2142ab506aae4",
}


@pytest.fixture(scope="module")
def first_standin():
    """The stand-in's version 1, which made the scenes of ``GREY_REFERENCE`` (version 2 has palmar tissue)."""
    from pipeline.hand_model import HandModel

    return HandModel(standin_version=1)


@pytest.mark.parametrize(("backend", "tint"), list(GREY_REFERENCE))
def test_grey_style_reproduces_the_earlier_pixels(first_standin, backend, tint):
    hand_model = first_standin
    r = make_renderer(backend, device="cpu", config=RenderConfig(local_size=64, tint=tint, style="grey"))
    try:
        results = r.render(RenderBatch(_regression_items(hand_model), hand_model.faces))
        if backend == "opengl" and "llvmpipe" not in str(r._ctx.info.get("GL_RENDERER", "")):
            pytest.skip(f"reference made on llvmpipe, this is {r._ctx.info.get('GL_RENDERER')}")
    finally:
        r.close()
    assert _digest(results) == GREY_REFERENCE[backend, tint]


# -- the style travels with the run: hands validate re-renders exactly ---------------------------------------
def _run(out, style: str | None, monkeypatch) -> dict:
    """A 3-sample run as ``hands generate`` writes it, its renderer in ``style`` (None: the default)."""
    if style is not None:
        config_cls = render_base.RenderConfig
        monkeypatch.setattr(render_base, "RenderConfig", lambda **kw: config_cls(**{"style": style, **kw}))
    try:
        cfg = RunConfig(out=str(out), samples=3, shard_size=3, image_size=96, batch_size=3)
        folder = RunFolder(cfg)
        folder.open(resume=True)
        with stages.Session():  # stages of our own, built with the patched config, closed at the end
            stages.run_shards(cfg, [0], folder)
        stages.finalize(cfg, folder)
    finally:
        monkeypatch.undo()
    return json.loads((out / "manifest.json").read_text())


def _drop_style(out) -> None:
    """The manifest as a run written before styles has it: a renderer record without ``style``."""
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["renderer"]["style"]
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def test_validate_round_trip_with_the_recorded_style(tmp_path, monkeypatch):
    out = tmp_path / "official"
    manifest = _run(out, None, monkeypatch)
    assert manifest["renderer"]["style"] == "official"
    report = validate(out)
    assert report.passed, report.errors
    assert report.counts["render"] == [3, 0]
    _drop_style(out)  # read as a grey run now: the re-render differs
    report = validate(out)
    assert report.counts["render"][1] == 3 and "mesh.png differs from the re-render" in report.errors[0]


def test_a_run_without_a_style_validates_as_grey(tmp_path, monkeypatch):
    out = tmp_path / "legacy"
    manifest = _run(out, "grey", monkeypatch)
    assert manifest["renderer"]["style"] == "grey"
    _drop_style(out)
    report = validate(out)
    assert report.passed, report.errors
    assert report.counts["render"] == [3, 0]
