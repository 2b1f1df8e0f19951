"""Renderers: conventions, cross-backend agreement, visibility, boxes, crops and batching."""

import numpy as np
import pytest

from pipeline.camera import crop_intrinsics, global_to_local, local_to_global, project_points
from renderers.base import (
    RasterJob,
    RenderBatch,
    RenderConfig,
    RendererError,
    RenderItem,
    make_renderer,
)

SMALL = RenderConfig(local_size=64)


@pytest.fixture(scope="module")
def gl():
    r = make_renderer("opengl", config=SMALL)
    yield r
    r.close()


@pytest.fixture(scope="module")
def p3d():
    return make_renderer("pytorch3d", device="cpu", config=SMALL)


def _hands(hand_model, rng, two_hands: bool, z=0.45):
    verts, joints = {}, {}
    sides = ("right", "left") if two_hands else (("right",) if rng.random() < 0.5 else ("left",))
    for s in sides:
        x = (0.045 if s == "right" else -0.045) if two_hands else rng.normal(0, 0.02)
        pose = np.concatenate([rng.normal(0, 0.8, 3), rng.normal(0, 0.25, 45)])
        o = hand_model(s, pose[None], rng.normal(0, 1, (1, 10)), np.array([[x, rng.normal(0, 0.02), z]]))
        verts[s], joints[s] = o.vertices[0].numpy(), o.joints[0].numpy()
    return verts, joints


def _items(hand_model, n, size=(160, 192), seed=0, dist=None, f=260.0):
    rng = np.random.default_rng(seed)
    H, W = size
    K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1.0]])
    items = []
    for i in range(n):
        v, j = _hands(hand_model, rng, two_hands=(i % 2 == 0))
        items.append(RenderItem(verts=v, joints=j, K=K, image_size=size, dist=dist))
    return items


def _square_job(size, corners_uv, z=0.5):
    (u0, v0), (u1, v1) = corners_uv
    screen = np.array([[u0, v0, z], [u1, v0, z], [u1, v1, z], [u0, v1, z]], dtype=np.float32)
    view = np.concatenate([screen[:, :2] * 0.001, screen[:, 2:]], axis=1).astype(np.float32)
    return RasterJob(
        screen=screen,
        view=view,
        normals=np.tile([[0, 0, -1.0]], (4, 1)).astype(np.float32),
        hand=np.ones(4, dtype=np.uint8),
        faces=np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int32),
        size=size,
        albedo=np.full((3, 3), 0.8, dtype=np.float32),
    )


@pytest.mark.parametrize("backend", ["gl", "p3d"])
def test_pixel_centre_convention_and_aspect(backend, request):
    r = request.getfixturevalue(backend)
    # a square whose edges sit on pixel borders: covers pixel centres 10..20 (x) and 5..12 (y) exactly
    out = r.rasterize([_square_job((24, 40), ((9.5, 4.5), (20.5, 12.5)))])[0]
    assert out.mask.shape == (24, 40) and out.rgb.shape == (24, 40, 3)
    expected = np.zeros((24, 40), dtype=np.uint8)
    expected[5:13, 10:21] = 1
    assert np.array_equal(out.mask, expected)
    assert np.allclose(out.depth[expected == 1], 0.5, atol=1e-6) and (out.depth[expected == 0] == 0).all()
    # lit head-on: albedo * (ambient + diffuse) = 0.8 -> 204
    assert np.abs(out.rgb[expected == 1].astype(int) - 204).max() <= 1


def test_backends_agree(hand_model, gl, p3d):
    items = _items(hand_model, 20, seed=1)
    a = gl.render(RenderBatch(items, hand_model.faces))
    b = p3d.render(RenderBatch(items, hand_model.faces))
    two_hand = 0
    for ra, rb, it in zip(a, b, items, strict=True):
        two_hand += len(it.verts) == 2
        inter = ((ra.mask > 0) & (ra.mask == rb.mask)).sum()
        union = ((ra.mask > 0) | (rb.mask > 0)).sum()
        assert union > 200
        assert inter / union >= 0.99
        both = (ra.mask > 0) & (ra.mask == rb.mask)
        dz = np.abs(ra.depth[both] - rb.depth[both])
        assert np.median(dz) < 1e-4 and np.percentile(dz, 99) < 2e-3
        lboth = (ra.mask_local > 0) | (rb.mask_local > 0)
        assert ((ra.mask_local == rb.mask_local) & lboth).sum() / max(lboth.sum(), 1) >= 0.97
        for s in it.verts:
            assert np.array_equal(ra.joints_2d[s], rb.joints_2d[s])
            assert (ra.joints_visible[s] != rb.joints_visible[s]).sum() <= 1
    assert two_hand >= 10


def _near_mask(mask: np.ndarray, uv: np.ndarray, hand_id: int, radius: float = 1.0) -> bool:
    rows, cols = np.nonzero(mask == hand_id)
    if len(rows) == 0:
        return False
    return bool(np.min(np.hypot(cols - uv[0], rows - uv[1])) <= radius + 1e-9)


def test_visible_fingertips_lie_on_their_mask(hand_model, gl):
    items = _items(hand_model, 24, size=(256, 256), seed=2, f=330.0)
    tips = [4, 8, 12, 16, 20]
    checked = 0
    for res, it in zip(gl.render(RenderBatch(items, hand_model.faces)), items, strict=True):
        for s in it.verts:
            for t in tips:
                if res.joints_visible[s][t]:
                    assert _near_mask(res.mask, res.joints_2d[s][t], {"right": 1, "left": 2}[s]), (s, t)
                    checked += 1
    assert checked > 100


def test_mask_bbox_matches_visible_vertices(hand_model, gl):
    items = _items(hand_model, 16, size=(256, 256), seed=3, f=250.0)
    checked = 0
    for res, it in zip(gl.render(RenderBatch(items, hand_model.faces)), items, strict=True):
        for s, v in it.verts.items():
            hid = {"right": 1, "left": 2}[s]
            uv = project_points(v, it.K)
            if not ((uv >= 1).all() and (uv <= 254).all()):
                continue  # truncated by the image border: the mask's box ends at the border, not at a vertex
            # visible vertex: front-most (within 2 mm) at some pixel of its hand within 1 px of its projection
            vis = np.zeros(len(v), dtype=bool)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    px = np.rint(uv).astype(int) + np.array([dc, dr])
                    near = np.hypot(px[:, 0] - uv[:, 0], px[:, 1] - uv[:, 1]) <= 1.0
                    ok = near & (px >= 0).all(1) & (px[:, 0] < 256) & (px[:, 1] < 256)
                    m = np.zeros(len(v), dtype=bool)
                    m[ok] = (res.mask[px[ok, 1], px[ok, 0]] == hid) & (
                        res.depth[px[ok, 1], px[ok, 0]] >= v[ok, 2] - 2e-3
                    )
                    vis |= m
            rows, cols = np.nonzero(res.mask == hid)
            if vis.sum() < 10 or len(rows) == 0:
                continue
            mask_box = np.array([cols.min(), rows.min(), cols.max(), rows.max()])
            vert_box = np.array([*uv[vis].min(0), *uv[vis].max(0)])
            assert np.abs(mask_box - vert_box).max() <= 1.0 + 1e-6, (mask_box, vert_box)
            checked += 1
    assert checked >= 10


def test_crop_mapping_round_trip_and_local_render(hand_model, gl):
    rng = np.random.default_rng(4)
    box = np.array([-30.5, 12.25, 170.5, 213.25])  # extends past the image's left border
    pts = rng.uniform(-50, 300, (1000, 2))
    assert np.abs(local_to_global(global_to_local(pts, box, 512), box, 512) - pts).max() < 1e-4
    K = np.array([[300.0, 0, 100], [0, 310.0, 90], [0, 0, 1]])
    X = rng.uniform([-0.1, -0.1, 0.3], [0.1, 0.1, 0.8], (200, 3))
    assert np.allclose(
        project_points(X, crop_intrinsics(K, box, 512)), global_to_local(project_points(X, K), box, 512)
    )
    # the local render is the crop: joints mapped into the crop land on the local mask
    items = _items(hand_model, 6, size=(240, 320), seed=5)
    for res, it in zip(gl.render(RenderBatch(items, hand_model.faces)), items, strict=True):
        x0, y0, x1, y1 = res.crop_box
        assert abs((x1 - x0) - (y1 - y0)) < 1e-9
        for s in it.verts:
            for t in (4, 8, 12, 16, 20):
                if res.joints_visible[s][t]:
                    loc = global_to_local(res.joints_2d[s][t], res.crop_box, 64)
                    assert _near_mask(res.mask_local, loc, {"right": 1, "left": 2}[s], radius=1.5)


def test_crop_box_padding_outside_image(hand_model, gl):
    rng = np.random.default_rng(6)
    v, j = _hands(hand_model, rng, two_hands=False)
    side = next(iter(v))
    K = np.array([[260.0, 0, 10.0], [0, 260.0, 80.0], [0, 0, 1]])  # principal point near the left border
    res = gl.render(RenderBatch([RenderItem(v, j, K, (160, 192))], hand_model.faces))[0]
    assert res.crop_box[0] < 0  # the square extends past the left border
    L = 64
    left_cols = int(np.floor(global_to_local(np.array([-0.5, 0.0]), res.crop_box, L)[0]))
    assert (
        left_cols >= 1
        and (res.mesh_local[:, :left_cols] == 0).all()
        and (res.mask_local[:, :left_cols] == 0).all()
    )
    assert res.bbox[side][0] >= 0 and res.bbox[side][2] <= 191


def test_occlusion_by_the_other_hand(hand_model, gl):
    from pipeline.gestures import gesture_pose

    palm_to_cam = np.array([np.pi / 2, 0.0, 0.0])  # palm (-y) turned toward the camera (-z)
    pr = gesture_pose("open", hand_model.hands_mean["right"], "right", palm_to_cam)
    pl = gesture_pose("open", hand_model.hands_mean["left"], "left", palm_to_cam * np.array([1, -1, -1]))
    o_r = hand_model("right", pr[None], np.zeros((1, 10)), np.array([[-0.02, 0.0, 0.5]]))
    o_l = hand_model("left", pl[None], np.zeros((1, 10)), np.array([[0.02, 0.0, 0.35]]))  # in front
    K = np.array([[400.0, 0, 127.5], [0, 400.0, 127.5], [0, 0, 1]])
    vr, jr = o_r.vertices[0].numpy(), o_r.joints[0].numpy()
    vl, jl = o_l.vertices[0].numpy(), o_l.joints[0].numpy()
    alone = gl.render(
        RenderBatch([RenderItem({"right": vr}, {"right": jr}, K, (256, 256))], hand_model.faces)
    )[0]
    both = gl.render(
        RenderBatch(
            [RenderItem({"right": vr, "left": vl}, {"right": jr, "left": jl}, K, (256, 256))],
            hand_model.faces,
        )
    )[0]
    covered = np.array([both.mask[int(round(v)), int(round(u))] == 2 for u, v in both.joints_2d["right"]])
    assert covered.sum() >= 5
    assert alone.joints_visible["right"][covered].sum() >= covered.sum() - 2  # visible alone (palm faces us)
    assert not both.joints_visible["right"][covered].any()  # hidden behind the left hand
    assert (both.mask == 1).sum() < (alone.mask == 1).sum()


def test_fisheye_keypoints_and_mesh_agree(hand_model, gl):
    dist = np.array([0.08, -0.02, 0.004, -0.0005])
    items = _items(hand_model, 8, size=(256, 256), seed=7, dist=dist, f=200.0)
    checked = 0
    for res, it in zip(gl.render(RenderBatch(items, hand_model.faces)), items, strict=True):
        for s in it.verts:
            assert np.allclose(res.joints_2d[s], project_points(it.joints[s], it.K, dist))
            assert not np.allclose(
                res.joints_2d[s], project_points(it.joints[s], it.K)
            )  # distortion is applied
            for t in (4, 8, 12, 16, 20):
                if res.joints_visible[s][t]:
                    assert _near_mask(res.mask, res.joints_2d[s][t], {"right": 1, "left": 2}[s])
                    checked += 1
    assert checked > 20


@pytest.mark.parametrize("backend", ["gl", "p3d"])
def test_batched_equals_single(hand_model, backend, request):
    r = request.getfixturevalue(backend)
    items = _items(hand_model, 3, size=(96, 128), seed=8)
    batched = r.render(RenderBatch(items, hand_model.faces))
    for it, rb in zip(items, batched, strict=True):
        rs = r.render(RenderBatch([it], hand_model.faces))[0]
        for name in ("mesh_image", "mask", "depth", "mesh_local", "mask_local", "crop_box"):
            assert np.array_equal(getattr(rs, name), getattr(rb, name)), name


def test_missing_egl_gives_one_line_with_packages(monkeypatch):
    import moderngl

    def boom(**kwargs):
        raise Exception("libEGL.so.1: cannot open shared object file")

    monkeypatch.setattr(moderngl, "create_standalone_context", boom)
    r = make_renderer("opengl")
    with pytest.raises(RendererError) as exc:
        r.rasterize([_square_job((8, 8), ((1.5, 1.5), (4.5, 4.5)))])
    msg = str(exc.value)
    assert "\n" not in msg and "apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri" in msg


def test_auto_and_bad_names():
    assert make_renderer("auto", device="cpu").name == "opengl"
    with pytest.raises(ValueError, match="unknown renderer"):
        make_renderer("vulkan")
    with pytest.raises(RendererError, match="no CUDA device"):
        make_renderer("pytorch3d", device="cuda") if not __import__("torch").cuda.is_available() else (
            _ for _ in ()
        ).throw(RendererError("no CUDA device (skipped: CUDA present)"))


def test_two_opengl_renderers_interleave(hand_model, gl):
    """Each renderer makes its own EGL context current; closing one leaves the other working."""
    items = _items(hand_model, 2, size=(64, 80), seed=9)
    first = gl.render(RenderBatch(items, hand_model.faces))
    other = make_renderer("opengl", config=SMALL)
    second = other.render(RenderBatch(items, hand_model.faces))
    other.close()
    again = gl.render(RenderBatch(items, hand_model.faces))
    for a, b, c in zip(first, second, again, strict=True):
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.mask, c.mask)
        assert np.array_equal(a.mesh_image, c.mesh_image)
