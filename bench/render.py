"""Renderer throughput, measured side by side in one run.

Prints, at 512x512 with two hands (3076 triangles):
* mesh images/s for the opengl and pytorch3d backends' ``rasterize`` at batch sizes 1 and 16;
* the ratio of the opengl backend's images/s to a bare moderngl draw + readback of the same mesh (the bare
  loop uploads the vertex buffer each draw, as any per-sample renderer must, and reads back RGB only; both
  loops drop each result before the next draw, since keeping megabytes of fresh arrays alive costs page
  faults that are not the renderer's);
* complete render results/s (``render``: global + local image, keypoints, visibility, boxes) for opengl,
  and its ratio to the same with the visibility rule before the enclosed-joint rule
  (``enclosed_tolerance=None``: no surface crossings counted): the median over 10 alternated pairs of 1 s
  runs on the same renderer.

Usage: python bench/render.py [--quick] (quick: fewer repeats, pytorch3d at batch 1 only)
"""

from __future__ import annotations

import argparse
import time

import _benchpath  # noqa: F401 - first: fixes the import path
import numpy as np


def _scene(hand_model, n: int, size: int = 512):
    from pipeline.gestures import gesture_pose
    from renderers.base import RenderItem

    rng = np.random.default_rng(0)
    K = np.array([[600.0, 0, (size - 1) / 2], [0, 600.0, (size - 1) / 2], [0, 0, 1]])
    items = []
    for _ in range(n):
        verts, joints = {}, {}
        for side, x in (("right", 0.06), ("left", -0.06)):
            pose = gesture_pose("open", hand_model.hands_mean[side], side, rng.normal(0, 0.3, 3))
            o = hand_model(side, pose[None], np.zeros((1, 10)), np.array([[x, 0.0, 0.5]]))
            verts[side], joints[side] = o.vertices[0].numpy(), o.joints[0].numpy()
        items.append(RenderItem(verts=verts, joints=joints, K=K, image_size=(size, size)))
    return items


def _rate(fn, count: int, repeats: int, warmup_s: float = 0.5, min_s: float = 0.3) -> float:
    """Best rate over ``repeats`` timed runs of ``fn`` (``count`` units per call).

    llvmpipe compiles shader variants lazily, so each measurement first runs ``fn`` for ``warmup_s``;
    each timed run repeats ``fn`` for at least ``min_s``.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < warmup_s:
        fn()
    best = 0.0
    for _ in range(repeats):
        calls, t = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            dt = time.perf_counter() - t
            if dt >= min_s:
                break
        best = max(best, calls * count / dt)
    return best


def bare_moderngl(job, repeats: int) -> float:
    """Images/s of a minimal moderngl loop: upload positions, clear, draw, read RGB."""
    import moderngl

    ctx = moderngl.create_standalone_context(backend="egl")
    H, W = job.size
    prog = ctx.program(
        vertex_shader="""#version 330
in vec3 in_screen; uniform vec2 size;
void main(){ float z = in_screen.z; gl_Position = vec4(((in_screen.x + 0.5) / size.x * 2.0 - 1.0) * z,
  (1.0 - (in_screen.y + 0.5) / size.y * 2.0) * z, z * 0.98 - 0.02, z); }""",
        fragment_shader="#version 330\nout vec4 c; void main(){ c = vec4(0.8, 0.8, 0.8, 1.0); }",
    )
    prog["size"].value = (float(W), float(H))
    fbo = ctx.framebuffer(ctx.renderbuffer((W, H), components=4), ctx.depth_renderbuffer((W, H)))
    data = np.ascontiguousarray(job.screen, dtype="f4")
    vbo = ctx.buffer(reserve=data.nbytes)
    ibo = ctx.buffer(np.ascontiguousarray(job.faces, dtype="i4").tobytes())
    vao = ctx.vertex_array(prog, [(vbo, "3f", "in_screen")], index_buffer=ibo, index_element_size=4)
    ctx.enable(moderngl.DEPTH_TEST)

    def once():
        fbo.use()
        fbo.clear(0, 0, 0, 0, depth=1.0)
        vbo.write(data.tobytes())
        vao.render(moderngl.TRIANGLES)
        np.frombuffer(fbo.read(components=3), dtype=np.uint8)

    n = 20
    rate = _rate(lambda: [once() for _ in range(n)], n, repeats)
    ctx.release()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeats = 2 if args.quick else 5

    from pipeline.hand_model import HandModel
    from renderers.base import RenderBatch, RenderConfig, make_renderer

    hm = HandModel()
    items = _scene(hm, 16)
    gl = make_renderer("opengl", config=RenderConfig())
    jobs = [gl._job(it, hm.faces, it.K, it.image_size, _normals(hm, it)) for it in items]

    rows = []

    def gl_loop():  # like the bare loop: each result is dropped before the next draw
        for _ in range(20):
            gl.rasterize([jobs[0]])

    gl1 = _rate(gl_loop, 20, repeats)
    bare = bare_moderngl(jobs[0], repeats)
    gl16 = _rate(lambda: gl.rasterize(jobs), 16, repeats)
    rule, depth_only = gl.config, RenderConfig(enclosed_tolerance=None)
    pairs = []
    for _ in range(10):  # alternated, on the same renderer and GL context: this machine is noisy
        gl.config = rule
        a = _rate(lambda: gl.render(RenderBatch(items, hm.faces)), 16, 1, 0.1, 1.0)
        gl.config = depth_only
        pairs.append((a, _rate(lambda: gl.render(RenderBatch(items, hm.faces)), 16, 1, 0.1, 1.0)))
    gl.config = rule
    full, old = max(a for a, _ in pairs), max(b for _, b in pairs)
    rule_cost = float(np.median([a / b for a, b in pairs]))
    rows += [
        ("bare moderngl draw+readback", "1", bare),
        ("opengl rasterize", "1", gl1),
        ("opengl rasterize", "16", gl16),
        ("opengl render (complete results)", "16", full),
        ("opengl render, depth tolerance only", "16", old),
    ]
    p3d = make_renderer("pytorch3d", device="cpu")
    rows.append(("pytorch3d rasterize (cpu)", "1", _rate(lambda: p3d.rasterize([jobs[0]]), 1, 1, 0.0, 0.0)))
    if not args.quick:
        rows.append(("pytorch3d rasterize (cpu)", "16", _rate(lambda: p3d.rasterize(jobs), 16, 1, 0.0, 0.0)))
    print(f"{'what':36s} {'batch':>5s} {'per second':>11s}")
    for what, b, r in rows:
        print(f"{what:36s} {b:>5s} {r:11.1f}")
    print(f"ratio opengl rasterize / bare moderngl (batch 1): {gl1 / bare:.2f}  (goal >= 0.8)")
    print(f"complete render results per second (opengl): {full:.1f}  (goal >= 30)")
    print(
        f"ratio complete results / depth tolerance only: {rule_cost:.3f}  (median of 10 alternated pairs of"
        " 1 s runs: the enclosed-joint rule's cost)"
    )


def _normals(hm, item):
    from renderers.base import vertex_normals

    return {s: vertex_normals(v, hm.faces[s]) for s, v in item.verts.items()}


if __name__ == "__main__":
    main()
