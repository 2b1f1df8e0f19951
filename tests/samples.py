"""Real samples for sink tests: hand model + OpenGL renderer; the image is the tinted mesh image."""

from __future__ import annotations

import numpy as np

from pipeline.schema import Camera, HandState, Sample, make_key
from pipeline.seeding import sample_rng, sample_seed
from renderers.base import RenderBatch, RenderConfig, RenderItem


def make_samples(hand_model, renderer, indices, run_tag="t", run_seed=0, size=(96, 128), local=64, dist=None):
    """Deterministic samples (same index -> same sample) with every stage's fields filled."""
    H, W = size
    K = np.array([[140.0, 0, (W - 1) / 2], [0, 140.0, (H - 1) / 2], [0, 0, 1.0]])
    samples, items = [], []
    for i in indices:
        seed = sample_seed(run_seed, i)
        rng = sample_rng(seed)
        hand_type = ("right", "left", "interacting")[i % 3]
        sides = ("right", "left") if hand_type == "interacting" else (hand_type,)
        hands, verts, joints = {"right": None, "left": None}, {}, {}
        allv = np.full((2, 778, 3), np.nan, dtype=np.float32)
        for s in sides:
            x = {"right": 0.04, "left": -0.04}[s] if len(sides) == 2 else 0.0
            pose = np.concatenate([rng.normal(0, 0.5, 3), rng.normal(0, 0.2, 45)])
            shape, trans = rng.normal(0, 0.5, 10), np.array([x, 0.0, 0.45])
            o = hand_model(s, pose[None], shape[None], trans[None])
            verts[s], joints[s] = (
                o.vertices[0].numpy().astype(np.float32),
                o.joints[0].numpy(),
            )  # as verts.npy
            allv[("right", "left").index(s)] = verts[s]
            hands[s] = HandState(pose, shape, trans, joints[s].astype(np.float64))
        items.append(RenderItem(verts, joints, K, size, dist))
        samples.append(
            Sample(
                index=i,
                seed=seed,
                key=make_key(run_tag, i),
                image_size=size,
                camera=Camera(K, dist),
                hand_type=hand_type,
                hands=hands,
                verts=allv,
                hand_model=hand_model.info.to_json(),
                source={"dataset": "prior", "split": None, "capture": None, "frame": None, "camera": None},
                caption=f"a hand number {i}",
                hand_token_indices=(2,),
                generator={"name": "test", "version": 1},
            )
        )
    cfg = renderer.config
    if cfg.local_size != local:
        renderer.config = RenderConfig(local_size=local)
    for s, r in zip(samples, renderer.render(RenderBatch(items, hand_model.faces)), strict=True):
        for side in ("right", "left"):
            if s.hands[side] is not None:
                s.hands[side].joints_2d = r.joints_2d[side]
                s.hands[side].joints_visible = r.joints_visible[side]
                s.hands[side].bbox = r.bbox[side]
        s.crop_box, s.mesh_image, s.mesh_local, s.mask, s.depth = (
            r.crop_box,
            r.mesh_image,
            r.mesh_local,
            r.mask,
            r.depth,
        )
        s.image = np.clip(r.mesh_image.astype(np.int16) + np.array([20, 0, -20]), 0, 255).astype(np.uint8)
    return samples


def write_run(out, hand_model, n: int, shard_size: int, run_tag: str):
    """A finalised run of ``make_samples`` records 0..n-1 in shards of ``shard_size`` under ``out`` (a folder),
    written by the real sink with an OpenGL renderer (local size 64); returns ``out``."""
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
