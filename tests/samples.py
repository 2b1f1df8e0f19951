"""Real samples for sink tests: hand model + OpenGL renderer; the image is the tinted mesh image."""

from __future__ import annotations

import numpy as np

from pipeline.sample import Caption, Drawn, Generation, HandParams, RenderResult, Sample
from pipeline.schema import Camera, make_key
from pipeline.seeding import sample_rng, sample_seed
from pipeline.sources import pose_hands
from renderers.base import RenderBatch, RenderConfig, render_item


def make_samples(hand_model, renderer, indices, run_tag="t", run_seed=0, size=(96, 128), local=64, dist=None):
    """Deterministic samples (same index -> same sample) with every stage's part made."""
    H, W = size
    K = np.array([[140.0, 0, (W - 1) / 2], [0, 140.0, (H - 1) / 2], [0, 0, 1.0]])
    samples = []
    for i in indices:
        seed = sample_seed(run_seed, i)
        rng = sample_rng(seed)
        hand_type = ("right", "left", "interacting")[i % 3]
        sides = ("right", "left") if hand_type == "interacting" else (hand_type,)
        params = {"right": None, "left": None}
        for s in sides:
            x = {"right": 0.04, "left": -0.04}[s] if len(sides) == 2 else 0.0
            pose = np.concatenate([rng.normal(0, 0.5, 3), rng.normal(0, 0.2, 45)])
            shape, trans = rng.normal(0, 0.5, 10), np.array([x, 0.0, 0.45])
            params[s] = HandParams(pose, shape, trans)
        drawn = Drawn(
            index=i,
            seed=seed,
            key=make_key(run_tag, i),
            image_size=size,
            camera=Camera(K, dist),
            hand_type=hand_type,
            params=params,
            source={"dataset": "prior", "split": None, "capture": None, "frame": None, "camera": None},
        )
        caption = Caption(f"a hand number {i}", "test", "1", hand_token_indices=(2,))
        samples.append(Sample(drawn, pose_hands(drawn, hand_model), captioned=caption))
    if renderer.config.local_size != local:
        renderer.config = RenderConfig(local_size=local)
    rendered = renderer.render(RenderBatch([render_item(s) for s in samples], hand_model.faces))
    out = []
    for s, r in zip(samples, rendered, strict=True):
        image = np.clip(r.mesh_image.astype(np.int16) + np.array([20, 0, -20]), 0, 255).astype(np.uint8)
        out.append(s.with_(rendered=r, generated=Generation(image, {"name": "test", "version": 1})))
    return out


def write_run(out, hand_model, n: int, shard_size: int, run_tag: str):
    """A finalised run of ``make_samples`` records 0..n-1 in shards of ``shard_size`` under ``out``
    (a folder), written by the real sink with an OpenGL renderer (local size 64); returns ``out``."""
    from renderers.base import make_renderer
    from sinks.webdataset_sink import ShardedOutput

    gl = make_renderer("opengl", config=RenderConfig(local_size=64))
    output = ShardedOutput(str(out), prefix="hands")
    output.prepare(resume=False)
    shards = list(range((n + shard_size - 1) // shard_size))
    try:
        for k in shards:
            with output.shard(k) as w:
                for s in make_samples(
                    hand_model, gl, range(k * shard_size, min((k + 1) * shard_size, n)), run_tag=run_tag
                ):
                    w.write(s)
    finally:
        gl.close()
    output.finalize(shards, {"samples": n}, "0" * 64, {"renderer": {"name": "opengl", "local_size": 64}})
    return out


def stub_sample(index, seed, size, mesh_image=None, mesh_local=None, caption=None, tagger=None, K=None):
    """A sample with only what a generator reads: its ids, camera, a render with the given mesh images (and
    blank mask and depth) and, with ``caption``, a caption tagged by ``tagger`` (``HandTokenTagger``)."""
    H, W = (size, size) if isinstance(size, int) else size
    K = np.array([[100.0, 0.0, W / 2], [0.0, 100.0, H / 2], [0.0, 0.0, 1.0]]) if K is None else K
    drawn = Drawn(
        index=index,
        seed=seed,
        key=f"t-{index:010d}",
        image_size=(H, W),
        camera=Camera(K),
        hand_type="right",
        params={"right": None, "left": None},
        source={},
    )
    rendered = None
    if mesh_image is not None:
        L = 64 if mesh_local is None else mesh_local.shape[0]
        rendered = RenderResult(
            mesh_image=mesh_image,
            mask=np.zeros((H, W), np.uint8),
            depth=np.zeros((H, W), np.float32),
            joints_2d={},
            joints_visible={},
            bbox={},
            crop_box=np.array([0.0, 0.0, W - 1.0, H - 1.0]),
            mesh_local=mesh_local,
            mask_local=np.zeros((L, L), np.uint8),
        )
    captioned = None
    if caption is not None:
        tokens = () if tagger is None else tuple(tagger.tag(caption).hand_token_indices)
        captioned = Caption(caption, "test", "1", hand_token_indices=tokens)
    return Sample(drawn, rendered=rendered, captioned=captioned)


def generated(generator, samples):
    """``samples`` with the generator's output composed in (what the pipeline does)."""
    return [s.with_(generated=g) for s, g in zip(samples, generator.generate(samples), strict=True)]
