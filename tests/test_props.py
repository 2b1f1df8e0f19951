"""Props (forearms and held objects): the arm attached at the wrist loop, objects in contact with the palm and
never inside a hand, the label record and its checks, the renderer's depth test (a prop is never in the mask,
removes the hand pixels it covers and hides the joints behind it), the composite's shading, and the run
configuration (``--props``)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from pipeline.config import AUTO_PROPS, RunConfig
from pipeline.props import (
    CLEARANCE,
    CONTACT,
    LENGTH_RANGE,
    MUG_ARC,
    MUG_BURY,
    MUG_TUBE,
    OBJECT_TYPES,
    PROP_IDS,
    SECTIONS,
    Forearm,
    PropObject,
    Props,
    PropsError,
    draw_props,
    forearm_mesh,
    object_mesh,
    place_object,
    prop_meshes,
    surface_points,
    wrist_loop,
)
from pipeline.schema import SIDES, SchemaError
from pipeline.seeding import stage_rng


@pytest.fixture(scope="module")
def posed(hand_model):
    """Twelve posed prior samples at 128 px (one or two hands each)."""
    from pipeline.sources import make_source, posed_sample

    src = make_source("prior", hand_model, run_seed=3, image_size=(128, 128))
    return [posed_sample(src, i, hand_model) for i in range(12)]


@pytest.fixture(scope="module")
def renderer():
    from renderers.base import RenderConfig, make_renderer

    gl = make_renderer("opengl", config=RenderConfig(local_size=96))
    yield gl
    gl.close()


def _hands(s):
    """A sample's hands as ``draw_props`` takes them: side -> (vertices, joints) or None."""
    return {
        side: None if s.hands[side] is None else (s.verts[i], s.hands[side].joints_3d)
        for i, side in enumerate(SIDES)
    }


def _with_forearms(samples, hand_model):
    return [
        s.with_(props=draw_props(stage_rng(s.seed, "props"), _hands(s), hand_model.faces)) for s in samples
    ]


def _render(renderer, hand_model, samples):
    from renderers.base import RenderBatch, render_item

    return renderer.render(RenderBatch([render_item(s) for s in samples], hand_model.faces))


# -- geometry ----------------------------------------------------------------------------------------------
def test_wrist_loop_is_the_open_boundary_cycle(hand_model):
    for side in SIDES:
        faces = np.asarray(hand_model.faces[side])
        loop = wrist_loop(faces)
        assert len(loop) == 16 and len(set(loop.tolist())) == 16
        edges = {tuple(sorted(e)) for f in faces.tolist() for e in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))}
        counts = {}
        for f in faces.tolist():
            for e in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
                k = tuple(sorted(e))
                counts[k] = counts.get(k, 0) + 1
        for a, b in zip(loop, np.roll(loop, -1), strict=True):  # consecutive ids share a boundary edge
            k = tuple(sorted((int(a), int(b))))
            assert k in edges and counts[k] == 1


def test_closed_mesh_has_no_wrist_loop():
    tetra = np.array([[0, 1, 2], [0, 3, 1], [1, 3, 2], [2, 3, 0]])
    with pytest.raises(PropsError, match="no open wrist loop"):
        wrist_loop(tetra)


def test_forearm_starts_at_the_wrist_loop_and_points_away(posed, hand_model):
    arm = Forearm(0.35, (1.2, 1.6), (0.1, -0.2))
    for s in posed[:4]:
        for i, side in enumerate(SIDES):
            if s.hands[side] is None:
                continue
            verts = np.asarray(s.verts[i], dtype=np.float64)
            loop = wrist_loop(hand_model.faces[side])
            pts, faces = forearm_mesh(verts, loop, arm)
            n = len(loop)
            assert np.array_equal(pts[:n], verts[loop])  # the seam is the hand's own wrist vertices
            assert pts.shape == ((SECTIONS + 1) * n + 1, 3) and np.isfinite(pts).all()
            assert faces.min() == 0 and faces.max() == len(pts) - 1
            centre = verts[loop].mean(axis=0)
            cap = pts[-1]
            assert abs(np.linalg.norm(cap - centre) - 0.35) < 1e-9
            hand_centre = verts.mean(axis=0)
            assert np.linalg.norm(cap - hand_centre) > np.linalg.norm(centre - hand_centre) + 0.3
            # the middle finger's base lies on the other side of the wrist
            j = np.asarray(s.hands[side].joints_3d)
            assert (cap - centre) @ (j[9] - j[0]) < 0


# -- the record --------------------------------------------------------------------------------------------
def test_props_are_deterministic_per_stream_and_round_trip(posed, hand_model):
    both = next(s for s in posed if s.hand_type == "interacting")
    left = next(s for s in posed if s.hand_type == "left")
    faces = hand_model.faces

    def draw(s, k=7, objects=True):
        return draw_props(stage_rng(k, "props"), _hands(s), faces, objects=objects)

    a, b, c = draw(both), draw(both), draw(both, 8)
    assert a == b and a != c
    one = draw(left)
    assert one.forearms["right"] is None and one.forearms["left"] is not None
    for p in (a, one):
        d = json.loads(json.dumps(p.to_json()))
        assert Props.from_json(d) == p
    right = next(s for s in posed if s.hand_type == "right")
    lengths = [draw(right, k, objects=False).forearms["right"].length for k in range(200)]
    assert LENGTH_RANGE[0] <= min(lengths) and max(lengths) <= LENGTH_RANGE[1]
    assert max(lengths) - min(lengths) > 0.5 * (LENGTH_RANGE[1] - LENGTH_RANGE[0])  # varied
    assert all(len(str(x).split(".")[-1]) <= 5 for x in lengths)  # rounded as the label keeps them


def _one_arm(arm: dict) -> dict:
    return {"forearm": {"right": arm, "left": None}, "objects": []}


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"arm": {}}, "expected"),
        ({"forearm": {"right": None, "left": None}}, "expected"),
        ({"forearm": {"right": None}, "objects": []}, "expected keys"),
        (_one_arm({"length": 0.3}), "expected"),
        ({"forearm": {"right": None, "left": None}, "objects": {}}, "expected"),
        ({"forearm": {"right": None, "left": None}, "objects": [{"type": "cube"}]}, r"objects\[0\]"),
        (
            {
                "forearm": {"right": None, "left": None},
                "objects": [{"type": "cube", "centre": [0, 0, 1], "rotation": [0, 0, 0], "size": [1, 1, 1]}],
            },
            "expected one of",
        ),
        (
            {
                "forearm": {"right": None, "left": None},
                "objects": [{"type": "box", "centre": [0, 0, 1], "rotation": [0, 0, 0], "size": [0, 1, 1]}],
            },
            "out of range",
        ),
        (
            {
                "forearm": {"right": None, "left": None},
                "objects": [
                    {"type": "mug", "centre": [0, 0, 1], "rotation": [0, 0, 0], "size": [0.03, 0.02, 0.04]}
                ],
            },
            r"objects\[0\]: a mug's body is round",
        ),
        (
            {
                "forearm": {"right": {"length": "x", "widen": [1, 1], "bend": [0, 0]}, "left": None},
                "objects": [],
            },
            "not numbers",
        ),
        (
            {
                "forearm": {"right": {"length": math.nan, "widen": [1, 1], "bend": [0, 0]}, "left": None},
                "objects": [],
            },
            "finite",
        ),
        (
            {
                "forearm": {"right": {"length": 0.3, "widen": [1], "bend": [0, 0]}, "left": None},
                "objects": [],
            },
            "2 finite",
        ),
        (
            {
                "forearm": {"right": {"length": 9.0, "widen": [1, 1], "bend": [0, 0]}, "left": None},
                "objects": [],
            },
            "out of range",
        ),
    ],
)
def test_bad_props_are_one_line_errors(bad, match):
    with pytest.raises(PropsError, match=match) as exc:
        Props.from_json(bad)
    assert "\n" not in str(exc.value)


def test_label_carries_props_and_checks_them(hand_model, renderer):
    from pipeline.schema import Label
    from tests.samples import make_samples

    made = make_samples(hand_model, renderer, [0, 2])  # a right hand, and two hands
    right, both = _with_forearms(made, hand_model)
    assert right.hands["left"] is None and both.hands["left"] is not None
    for s in (right, both):
        label = s.to_label()
        assert label.props == s.props.to_json()
        again = Label.from_bytes(label.label_bytes(), label.verts_bytes())
        assert again.props == label.props and Props.from_json(again.props) == s.props
    d = right.to_label().to_json()
    arm = d["props"]["forearm"]["right"]
    with pytest.raises(SchemaError, match="no left hand"):
        Label.from_json({**d, "props": {"forearm": {"right": arm, "left": arm}, "objects": []}}, right.verts)
    with pytest.raises(SchemaError, match="props"):
        Label.from_json({**d, "props": {"forearm": 1}}, right.verts)
    # no props, no field: the labels of a run without props are as before
    assert "props" not in made[0].to_label().to_json()


def test_prop_meshes_need_their_hand(posed, hand_model):
    s = posed[0]
    present = [x for x in SIDES if s.hands[x] is not None]
    missing = [x for x in SIDES if s.hands[x] is None]
    arm = Forearm(0.3, (1.1, 1.5), (0.0, 0.0))
    verts = {x: s.verts[i] for i, x in enumerate(SIDES) if s.hands[x] is not None}
    assert len(
        prop_meshes(Props({x: arm for x in present} | {x: None for x in missing}), verts, hand_model.faces)
    )
    assert prop_meshes(None, verts, hand_model.faces) == []
    if missing:
        with pytest.raises(PropsError, match="no .* hand"):
            prop_meshes(Props({x: arm for x in SIDES}), verts, hand_model.faces)


# -- the renderer's depth test -----------------------------------------------------------------------------
def test_forearms_never_enter_the_mask_and_only_remove_hand_pixels(posed, hand_model, renderer):
    bare = _render(renderer, hand_model, posed)
    armed = _render(renderer, hand_model, _with_forearms(posed, hand_model))
    shown = 0
    for b, a in zip(bare, armed, strict=True):
        if a.prop_mask is None:
            continue
        shown += 1
        assert a.prop_mask.dtype == np.uint8 and a.prop_mask.shape == a.mask.shape
        assert not ((a.prop_mask > 0) & (a.mask > 0)).any()  # disjoint
        assert set(np.unique(a.prop_mask).tolist()) <= {0, 3, 4}
        assert set(np.unique(a.mask).tolist()) <= {0, 1, 2}
        # hand pixels only disappear, and only where the arm is in front
        assert ((a.mask > 0) <= (b.mask > 0)).all()
        lost = (b.mask > 0) & (a.mask == 0)
        assert a.prop_mask[lost].all()
        assert (a.depth[lost] < b.depth[lost]).all()
        # the depth holds the arm's pixels
        assert (a.depth[a.prop_mask > 0] > 0).all()
        # a joint visible with the arm is visible without it; the 2D joints do not move
        for side in SIDES:
            if b.joints_visible[side] is None:
                continue
            assert np.array_equal(a.joints_2d[side], b.joints_2d[side])
            assert (np.asarray(a.joints_visible[side]) <= np.asarray(b.joints_visible[side])).all()
        # the local view splits the same way
        assert not (a.local.prop_mask is not None and ((a.local.prop_mask > 0) & (a.local.mask > 0)).any())
    assert shown >= 8  # an arm shows in most frames


def test_an_arm_in_front_hides_the_joints_behind_it(posed, hand_model, renderer, monkeypatch):
    """A prop placed between the camera and the hand's palm: those pixels leave the mask, and the joints
    under it are not visible (they are visible without it)."""
    import renderers.base as rb

    s = posed[0]
    side = next(x for x in SIDES if s.hands[x] is not None)
    j = np.asarray(s.hands[side].joints_3d)
    bare = _render(renderer, hand_model, [s])[0]
    target = [0, 1, 5, 9, 13, 17]  # wrist and bases: the palm
    assert np.asarray(bare.joints_visible[side])[target].sum() >= 1
    z = float(j[:, 2].min()) - 0.03
    c = j[target].mean(axis=0)
    half = 0.2
    corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
    quad = np.array([[c[0] + dx, c[1] + dy, z] for dx, dy in corners])
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    monkeypatch.setattr(
        rb, "prop_parts", lambda props, verts, faces: [] if props is None else [("object", None, quad, tris)]
    )
    covered = _render(renderer, hand_model, [s.with_(props=Props({x: None for x in SIDES}))])[0]
    assert not (covered.mask > 0).any()  # the board covers the whole hand
    assert covered.prop_mask is not None and (covered.prop_mask[bare.mask > 0] == 4).all()
    assert not np.asarray(covered.joints_visible[side]).any()


@pytest.mark.parametrize(
    "owner,gap,visible", [("own", 0.025, True), ("own", 0.04, False), ("other", 0.025, False)]
)
def test_only_the_hands_own_forearm_leaves_its_wrist_visible(
    posed, hand_model, renderer, monkeypatch, owner, gap, visible
):
    """A small forearm-kind board ``gap`` metres in front of a wrist joint, in front of the hand's own surface
    there: the hand's own arm continues its surface (the wrist's 30 mm tolerance applies), another hand's arm
    hides it."""
    import renderers.base as rb

    bare = _render(renderer, hand_model, posed)
    for s, r in zip(posed, bare, strict=True):  # a wrist whose own surface lies less than ``gap`` in front
        side = next(x for x in SIDES if s.hands[x] is not None)
        u, v = np.rint(r.joints_2d[side][0]).astype(int)
        wrist = np.asarray(s.hands[side].joints_3d)[0]
        z = float(wrist[2]) - gap
        if 0 <= u < 128 and 0 <= v < 128 and r.depth[v, u] > z + 0.002:
            break
    else:
        pytest.fail("no sample shows a wrist close under its surface")
    other = next(x for x in SIDES if x != side)
    c = wrist * (z / float(wrist[2]))  # on the wrist's ray
    half = 0.015
    corners = ((-half, -half), (half, -half), (half, half), (-half, half))
    quad = np.array([[c[0] + dx, c[1] + dy, z] for dx, dy in corners])
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    arm_side = side if owner == "own" else other
    monkeypatch.setattr(
        rb,
        "prop_parts",
        lambda props, verts, faces: [] if props is None else [("forearm", arm_side, quad, tris)],
    )
    r = _render(renderer, hand_model, [s.with_(props=Props({x: None for x in SIDES}))])[0]
    assert r.prop_mask[v, u] == PROP_IDS["forearm"] and abs(float(r.depth[v, u]) - z) < 1e-4
    assert bool(np.asarray(r.joints_visible[side])[0]) == visible


def test_forearms_hide_the_wrist_only_under_the_old_rule(posed, hand_model, renderer):
    """The same frames with forearms under the default rule and the rule before the wrist's tolerance
    (``wrist_tolerance=None``): identical masks, prop masks and depth; the wrist, hidden in almost every hand
    before, is visible in several; a joint other than the wrist changes only where its pixel shows a
    forearm."""
    from renderers.base import RenderConfig, make_renderer

    samples = _with_forearms(posed, hand_model)
    new = _render(renderer, hand_model, samples)
    legacy_gl = make_renderer("opengl", config=RenderConfig(local_size=96, wrist_tolerance=None))
    try:
        old = _render(legacy_gl, hand_model, samples)
    finally:
        legacy_gl.close()
    wrist_new = wrist_old = hands = 0
    for a, b in zip(new, old, strict=True):
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.depth, b.depth)
        assert (a.prop_mask is None) == (b.prop_mask is None)
        if a.prop_mask is not None:
            assert np.array_equal(a.prop_mask, b.prop_mask) and set(np.unique(a.prop_mask)) <= {0, 3, 4}
        for side in SIDES:
            if a.joints_visible[side] is None:
                continue
            hands += 1
            va, vb = np.asarray(a.joints_visible[side]), np.asarray(b.joints_visible[side])
            wrist_new += int(va[0])
            wrist_old += int(vb[0])
            uv = np.rint(a.joints_2d[side]).astype(int)
            for k in np.nonzero(va[1:] != vb[1:])[0] + 1:
                assert a.prop_mask is not None and a.prop_mask[uv[k, 1], uv[k, 0]] == PROP_IDS["forearm"]
    assert hands >= 12
    assert wrist_old <= 1 and wrist_new >= 5, (wrist_old, wrist_new, hands)  # measured: 1 and 6 of 14


# -- the composite -----------------------------------------------------------------------------------------
def test_composite_paints_the_arm_outside_the_alpha(posed, hand_model, renderer):
    from generators.composite import CompositeGenerator

    samples = _with_forearms(posed[:6], hand_model)
    rendered = _render(renderer, hand_model, samples)
    gen = CompositeGenerator()
    sleeves, painted = set(), 0
    for s, r in zip(samples, rendered, strict=True):
        s = s.with_(rendered=r)
        comp, _ = gen.compose(s)
        assert np.array_equal(comp.alpha, s.mask > 0)  # the alpha is the hand mask, never the arm
        assert (comp.hand[~comp.alpha] == 0).all()
        rec = comp.record["forearm"]
        assert set(rec) == {"sleeve", "sleeve_start", "sleeve_rgb", "fold_period"}
        assert set(comp.record["object_material"]) == {"rgb", "gloss", "shininess"}
        sleeves.add(rec["sleeve"])
        if r.prop_mask is not None:
            arm = r.prop_mask > 0
            painted += 1
            # the arm is painted over the background
            assert not np.allclose(comp.image[arm], comp.background[arm])
            assert np.array_equal(comp.image[~arm & ~comp.alpha], comp.background[~arm & ~comp.alpha])
        image, record = gen.render(s)
        assert record["version"] == 8 and record["forearm"] == rec
        again, _ = gen.render(s)
        assert np.array_equal(image, again)
    assert painted >= 4 and sleeves == {True, False}  # arms show, bare and in sleeves


def test_composite_skin_keeps_some_key_light_in_shadow(posed, hand_model, renderer, monkeypatch):
    """``scatter``: with every pixel forced into the key light's shadow, skin (hands, bare forearms) keeps
    ``scatter`` x ``SKIN_SCATTER`` of the key's diffuse light, linear in ``scatter``: per channel at most that
    share of the key's whole term (diffuse and specular; the specular is lost in shadow) and about that share
    where the specular is small; held objects and sleeves keep none (exactly as with ``scatter=0``)."""
    from generators.composite import SKIN_SCATTER, CompositeConfig, CompositeGenerator
    from pipeline.props import PROP_IDS

    samples = [
        s.with_(props=draw_props(stage_rng(s.seed, "props"), _hands(s), hand_model.faces, objects=True))
        for s in posed
    ]
    rendered = _render(renderer, hand_model, samples)

    def image(s, scatter, shadow):
        monkeypatch.setattr(
            CompositeGenerator, "_key_shadow", staticmethod(lambda _s, u, *_: np.full(len(u), shadow, "f4"))
        )
        gen = CompositeGenerator(CompositeConfig(camera_effects=False, scatter=scatter))
        return gen.compose(s)[0]

    ratios, objects, sleeves = [], 0, 0
    for s, r in zip(samples, rendered, strict=True):
        s = s.with_(rendered=r)
        lit, dark, half, full = (image(s, *a) for a in ((0.0, 0.0), (0.0, 1.0), (0.5, 1.0), (1.0, 1.0)))
        gain = full.image - dark.image
        assert np.allclose(gain, 2 * (half.image - dark.image), atol=1e-6) and (gain >= -1e-6).all()
        key = lit.image - dark.image  # the key light's whole term
        hand = s.mask > 0
        bright = hand & (key.sum(-1) > 0.05)
        assert (gain[bright] <= np.asarray(SKIN_SCATTER) * key[bright] + 1e-5).all()
        ratios.append(gain[bright] / key[bright])
        if r.prop_mask is not None:
            obj = r.prop_mask == PROP_IDS["object"]
            assert (gain[obj] == 0).all()
            objects += int(obj.any())
            if full.record["forearm"]["sleeve"]:
                arm = r.prop_mask == PROP_IDS["forearm"]
                sleeves += int((gain[arm].sum(-1) == 0).sum() > 50)  # the sleeve's cloth
    ratios = np.concatenate(ratios)
    assert len(ratios) > 1000 and objects >= 2 and sleeves >= 1, (len(ratios), objects, sleeves)
    assert np.allclose(np.median(ratios, axis=0), SKIN_SCATTER, atol=0.02), np.median(ratios, axis=0)


def test_composite_without_props_records_no_forearm(posed, hand_model, renderer):
    from generators.composite import CompositeGenerator

    r = _render(renderer, hand_model, posed[:1])[0]
    comp, _ = CompositeGenerator().compose(posed[0].with_(rendered=r))
    assert "forearm" not in comp.record and r.prop_mask is None


# -- configuration -----------------------------------------------------------------------------------------
def test_props_resolve_per_generator():
    assert RunConfig(out="/tmp/x").props == AUTO_PROPS == "forearm,objects"  # the composite
    assert RunConfig(out="/tmp/x", props="none").props == "none"
    assert RunConfig(out="/tmp/x", generator="attentionhand:/tmp/m").props == "none"
    assert RunConfig(out="/tmp/x", generator="attentionhand:/tmp/m", props="forearm").props == "forearm"
    assert RunConfig(out="/tmp/x", mode="prepare", source="interhand:/tmp/d").props == "none"
    # a run without props keeps the identity it had before props existed
    assert "props" not in RunConfig(out="/tmp/x", props="none").identity()
    assert RunConfig(out="/tmp/x").identity()["props"] == AUTO_PROPS
    assert RunConfig(out="/tmp/x", props=" Objects,forearm").props == "forearm,objects"  # one spelling
    assert RunConfig(out="/tmp/x", props="objects").prop_kinds == {"objects"}
    assert RunConfig(out="/tmp/x", props="none").prop_kinds == frozenset()
    from pipeline.config import ConfigError, load_config

    for bad in ("bogus", "forearm,forearm", "forearm,", 3):
        with pytest.raises(ConfigError, match="props"):
            load_config(props=bad)


# -- objects -------------------------------------------------------------------------------------------------
def test_unit_meshes_lie_on_their_surface():
    for kind in (k for k in OBJECT_TYPES if k != "mug"):  # the scaled types (the mug: below)
        obj = PropObject(kind, (0.01, -0.02, 0.5), (0.3, -0.2, 0.9), (0.03, 0.02, 0.05))
        verts, faces = object_mesh(obj)
        assert np.allclose(obj.gauge(verts), 1.0, atol=1e-9)  # every vertex on the surface
        assert faces.min() == 0 and faces.max() == len(verts) - 1
        assert obj.gauge(np.array([obj.centre])) < 1e-12  # the centre is inside
        back = PropObject.from_json(json.loads(json.dumps(obj.to_json())), "o")
        assert back == obj


@pytest.mark.parametrize("kind", OBJECT_TYPES)
def test_objects_touch_the_palm_and_never_enter_a_hand(posed, hand_model, kind):
    """Checked against a surface sampled three times finer than the placement's: no point inside, and the
    holding hand within ``CONTACT`` of the object. A mug's handle points away from the palm."""
    placed = 0
    for s in posed:
        present = [x for x in SIDES if s.hands[x] is not None]
        skins = {x: surface_points(s.verts[SIDES.index(x)], hand_model.faces[x]) for x in present}
        fine = np.concatenate(
            [surface_points(s.verts[SIDES.index(x)], hand_model.faces[x], 0.001) for x in present]
        )
        for i, side in enumerate(present):
            joints = np.asarray(s.hands[side].joints_3d)
            obstacles = np.concatenate(list(skins.values()))
            obj = place_object(stage_rng(s.seed, "t", i), kind, joints, side, obstacles, skins[side])
            if obj is None:
                continue
            placed += 1
            g = obj.gauge(fine)
            assert g.min() >= 1.0  # nothing inside
            assert obj.gauge(skins[side], CONTACT).min() < 1.0  # in contact
            if kind != "mug":  # a scaled shape: the gauge is a scale
                assert obj.gauge(skins[side]).min() <= 1.0 + CONTACT / min(obj.size)
            palm = joints[[0, 5, 9, 13, 17]].mean(axis=0)
            n = np.cross(joints[5] - joints[0], joints[17] - joints[0]) * (-1 if side == "left" else 1)
            n /= np.linalg.norm(n)
            assert (np.asarray(obj.centre) - palm) @ n > 0  # on the palm's side
            if kind == "mug":  # the handle (the frame's +x) away from the palm, the body across it
                assert obj.matrix[:, 0] @ n > 0.4 and abs(obj.matrix[:, 2] @ n) < 1e-4
    assert placed >= 8


def test_mugs_clear_hands_and_forearms(posed, hand_model):
    """Mugs placed as ``draw_props`` places them, among the hands and the forearms: no point of either
    surface sampled three times finer than the placement's is inside, body or handle."""
    placed = 0
    for s in posed:
        hands = _hands(s)
        present = [x for x in SIDES if hands[x] is not None]
        verts = {x: hands[x][0] for x in present}
        arms = draw_props(stage_rng(s.seed, "props"), hands, hand_model.faces).forearms
        meshes = [(v, hand_model.faces[x]) for x, v in verts.items()]
        meshes += [(v, f) for _, v, f in prop_meshes(Props(arms), verts, hand_model.faces)]
        obstacles = np.concatenate([surface_points(v, f) for v, f in meshes])
        fine = np.concatenate([surface_points(v, f, 0.001) for v, f in meshes])
        for i, side in enumerate(present):
            skin = surface_points(verts[side], hand_model.faces[side])
            for k in range(2):
                rng = stage_rng(s.seed, f"mug{k}", i)
                obj = place_object(rng, "mug", hands[side][1], side, obstacles, skin)
                if obj is None:
                    continue
                placed += 1
                assert obj.gauge(fine).min() >= 1.0
                assert obj.gauge(skin, CONTACT).min() < 1.0
    assert placed >= 10


class _Top:
    """A stand-in for a random generator that always draws the top of the range (and 0 for a normal)."""

    def uniform(self, lo, hi):
        return hi

    def normal(self, mean, sd):
        return mean


def test_the_handle_takes_part_in_the_slide(monkeypatch):
    """A mug whose handle lies along the palm (turned 90 degrees), and a post of points standing on the palm
    through the handle's tube: the mug slides out until its handle clears the post's top, not the palm, so
    the handle is in contact with the post and the body is far from both."""
    import pipeline.props as props

    monkeypatch.setattr(props, "MUG_TURN", math.pi / 2)  # with _Top: turned by exactly 90 degrees
    z = 0.5
    joints = np.zeros((21, 3))
    joints[[0, 5, 9, 13, 17]] = [
        [0, 0.05, z],
        [-0.03, -0.03, z],
        [0, -0.035, z],
        [0.015, -0.033, z],
        [0.03, -0.03, z],
    ]
    # a left hand in this plane: the palm faces the camera (normal -z), fingers toward -y
    palm = joints[[0, 5, 9, 13, 17]].mean(axis=0)
    n, along = np.array([0.0, 0.0, -1.0]), np.array([0.0, -1.0, 0.0])
    r = props.OBJECT_SIZE["mug"][1]
    h = r * props.MUG_HEIGHT[1]
    tip = r + MUG_ARC * h  # the handle's arc at its farthest from the body's axis
    post = palm + tip * along + np.outer(np.arange(-0.01, 0.06, 0.0005), n)
    grid = np.arange(-0.03, 0.0301, 0.001)
    disc = palm + np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2) @ np.array([[1.0, 0, 0], [0, 1.0, 0]])
    obstacles = np.concatenate([disc, post])
    obj = place_object(_Top(), "mug", joints, "left", obstacles, post)
    assert obj is not None and obj.size == (r, r, round(h, 5))
    assert np.allclose(obj.matrix[:, 0], along, atol=1e-5)  # the handle along the palm
    # the handle cleared the post's top by CLEARANCE (the slide's bisection and rounding: within 0.05 mm)
    assert obj.gauge(obstacles).min() >= 1.0
    assert obj.gauge(post, CLEARANCE + 5e-5).min() < 1.0
    tube = MUG_TUBE * min(r, h)
    assert abs((np.asarray(obj.centre) - palm) @ n - (0.06 - 0.0005 + tube + CLEARANCE)) < 1e-4
    body = PropObject("cylinder", obj.centre, obj.rotation, obj.size)
    assert body.gauge(obstacles, 0.01).min() > 1.0  # the body is more than 1 cm from every point


def _arc_distance(local, size):
    """The distance of points (N, 3) in a mug's frame from its handle's arc, the arc's ends included (the
    documented geometry, ``MUG_ARC``): to the arc's point at the point's own angle about the arc's centre,
    that angle clipped to the arc's. Also the tube's radius."""
    r, _, h = size
    arc, tube = MUG_ARC * h, MUG_TUBE * min(r, h)
    end = math.pi / 2 + math.asin(MUG_BURY * tube / arc)
    angle = np.clip(np.arctan2(local[:, 2], local[:, 0] - r), -end, end)
    core = np.stack([r + arc * np.cos(angle), 0 * angle, arc * np.sin(angle)], axis=1)
    return np.linalg.norm(local - core, axis=1), tube


def _weld(verts, faces):
    """``faces`` with vertices at the same place merged (the sharp edges' separate copies)."""
    _, ids = np.unique(np.round(verts, 12), axis=0, return_inverse=True)
    return ids.ravel()[faces]


@pytest.mark.parametrize(
    "size", [(0.03, 0.03, 0.04), (0.042, 0.042, 0.063), (0.04, 0.04, 0.01), (0.01, 0.01, 0.08)]
)
def test_mug_mesh_lies_on_its_gauge(size):
    """Every vertex of a mug's mesh is on the surface of its body or of its handle and inside neither of the
    other part; the ones the gauge calls inside (< 1) are the handle's ends, hidden in the body. Both parts
    are closed and wound outward, the caps flat (vertices of their own), the handle smooth."""
    obj = PropObject("mug", (0.01, -0.02, 0.5), (0.3, -0.2, 0.9), size)
    verts, faces = object_mesh(obj)
    assert faces.min() == 0 and faces.max() == len(verts) - 1
    g = obj.gauge(verts)
    body = PropObject("cylinder", obj.centre, obj.rotation, size).gauge(verts)
    local = (verts - obj.centre) @ obj.matrix
    dist, tube = _arc_distance(local, size)
    on_body = np.abs(body - 1.0) < 1e-9
    on_handle = np.abs(dist - tube) < 1e-9 * tube
    assert (on_body | on_handle | (body < 1.0)).all()
    assert g.max() <= 1.0 + 1e-9  # no vertex outside the mug
    assert np.allclose(g[on_body & (dist > tube)], 1.0, atol=1e-9)
    assert np.allclose(g[on_handle & (body > 1.0)], 1.0, atol=1e-9)
    hidden = g < 1.0 - 1e-9
    assert (body[hidden] < 1.0).all()  # the handle's buried part and its caps
    assert (on_handle & (body > 1.0 + 0.1)).sum() > 300  # and a handle outside, well away from the wall
    assert obj.gauge(np.array([obj.centre])) < 1e-12
    # closed and outward: once welded, every edge is used twice, in opposite directions; positive volume
    welded = _weld(verts, faces)
    edges = np.concatenate([welded[:, [0, 1]], welded[:, [1, 2]], welded[:, [2, 0]]])
    keys = {tuple(e) for e in edges.tolist()}
    assert len(keys) == len(edges) and all((b, a) in keys for a, b in keys)
    tri = verts[faces] - np.asarray(obj.centre)
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    r, _, h = size
    assert 2 * math.pi * r * r * h * 0.99 < volume < 2 * math.pi * r * r * h * 1.05
    # the body's caps are flat (their vertices all have the cap's normal), the handle's tube is smooth
    from renderers.base import vertex_normals

    normals = vertex_normals(verts, faces) @ obj.matrix
    cap = np.abs(np.abs(local[:, 2]) - h) < 1e-12
    flat = np.abs(np.abs(normals[cap, 2]) - 1.0) < 1e-6
    assert flat.sum() == 2 * 64 + 2 and (~flat).sum() == 2 * 64  # the cap copies, the side's copies
    tube_v = on_handle & (body > 1.0)
    radial = local[tube_v] - np.asarray([r, 0.0, 0.0])
    core = np.c_[radial[:, 0], 0 * radial[:, 0], radial[:, 2]]
    core = np.asarray([r, 0.0, 0.0]) + core / np.linalg.norm(core, axis=1, keepdims=True) * MUG_ARC * h
    outward = (local[tube_v] - core) / tube
    assert (np.einsum("ij,ij->i", normals[tube_v], outward) > 0.99).all()  # the torus's own normal
    back = PropObject.from_json(json.loads(json.dumps(obj.to_json())), "o")
    assert back == obj and object_mesh(back)[0].tobytes() == verts.tobytes()


@pytest.mark.parametrize("pad", [0.0, CLEARANCE, CONTACT])
def test_mug_gauge_is_exact_inside_and_outside(pad):
    """The mug's gauge grown by ``pad`` is < 1 at every point within pad of the mug (body or handle) and >= 1
    at every point farther than pad (away from a thin band about the surface, and in the corner of the
    body's rim, where growing half extents adds more than pad); across the handle's tube the switch is at
    tube + pad from its arc, on the outside, in the hole and beside the tube."""
    size = (0.03, 0.03, 0.04)
    r, _, h = size
    obj = PropObject("mug", (0.0, 0.0, 0.5), (0.0, 0.0, 0.0), size)
    arc, tube = MUG_ARC * h, MUG_TUBE * min(r, h)
    centre = np.asarray(obj.centre)
    body = PropObject("cylinder", obj.centre, obj.rotation, size)
    checked = 0
    for t in (0.0, 0.7, -1.2, 1.5):  # points on the arc, by their angle about its centre from +x
        radius = np.array([math.cos(t), 0.0, math.sin(t)])
        core = centre + np.array([r, 0.0, 0.0]) + arc * radius
        y = np.array([0.0, 1.0, 0.0])
        # across the tube: outward, into the hole, beside it (either side), and obliquely
        for d in (radius, -radius, y, -y, 0.6 * radius + 0.8 * y, -0.6 * radius - 0.8 * y):
            just_in = core + d * (tube + pad) * (1 - 1e-6)
            just_out = core + d * (tube + pad) * (1 + 1e-6)
            if body.gauge(just_out[None], pad)[0] < 1.0:
                continue  # in the (grown) body as well
            checked += 1
            assert obj.gauge(just_in[None], pad)[0] < 1.0 < obj.gauge(just_out[None], pad)[0]
    assert checked >= 15
    # random points against the documented shape: the distances from the body and from the handle's arc
    rng = np.random.default_rng(0)
    local = rng.uniform([-0.04, -0.04, -0.05], [0.07, 0.04, 0.05], size=(20000, 3))
    radial = np.hypot(local[:, 0], local[:, 1])
    to_body = np.hypot(np.maximum(radial - r, 0), np.maximum(np.abs(local[:, 2]) - h, 0))
    inside_body = (radial < r) & (np.abs(local[:, 2]) < h)
    dist, _ = _arc_distance(local, size)
    to_mug = np.where(inside_body, 0.0, np.minimum(to_body, np.maximum(dist - tube, 0.0)))
    g = obj.gauge(local + centre, pad)
    assert (g[to_mug < pad - 1e-6] < 1.0).all()  # conservative: within pad is inside
    rim = (radial > r) & (np.abs(local[:, 2]) > h)  # grown half extents: the rim's corner is square
    far = (to_mug > pad + 1e-6) & ~rim
    assert (g[far] >= 1.0).all() and far.sum() > 5000
    if pad == 0.0:  # exactly the union: outside the body, in the handle's tube
        handle_only = ~inside_body & (dist < tube - 1e-6)
        assert handle_only.sum() > 50 and (g[handle_only] < 1.0).all()


def test_forearm_sections_stay_beyond_the_wrist(posed, hand_model, monkeypatch):
    """However the arm bends, every section after the wrist loop lies beyond the loop's plane (it never goes
    back into the hand), and the in-plane axes do not depend on the SVD's signs."""
    s = next(p for p in posed if p.hands["right"] is not None)
    verts = np.asarray(s.verts[0], dtype=np.float64)
    loop = wrist_loop(hand_model.faces["right"])
    ring = verts[loop]
    centre = ring.mean(axis=0)
    normal = np.linalg.svd(ring - centre)[2][2]
    if normal @ (centre - verts.mean(axis=0)) < 0:
        normal = -normal
    for bend in [(0.35, 0.0), (-0.35, 0.0), (0.0, 0.35), (0.0, -0.35), (0.35, -0.35)]:
        pts, _ = forearm_mesh(verts, loop, Forearm(0.3, (1.3, 1.9), bend))
        beyond = (pts[len(loop) :] - centre) @ normal
        assert beyond.min() >= 0.0029
    arm = Forearm(0.3, (1.2, 1.6), (0.3, -0.2))
    a, _ = forearm_mesh(verts, loop, arm)
    svd = np.linalg.svd

    def flipped(x, *args, **kw):  # another LAPACK may return the singular vectors with other signs
        u, sv, vt = svd(x, *args, **kw)
        return -u, sv, -vt

    monkeypatch.setattr(np.linalg, "svd", flipped)
    b, _ = forearm_mesh(verts, loop, arm)
    assert np.allclose(a, b, atol=1e-12)


def test_draw_props_places_objects_for_grasps_and_keeps_forearms(posed, hand_model):
    with_objects = without = 0
    for s in posed:
        hands = {
            x: None if s.hands[x] is None else (s.verts[i], s.hands[x].joints_3d) for i, x in enumerate(SIDES)
        }
        a = draw_props(stage_rng(s.seed, "props"), hands, hand_model.faces, forearm=True, objects=True)
        b = draw_props(stage_rng(s.seed, "props"), hands, hand_model.faces, forearm=True, objects=False)
        assert a.forearms == b.forearms and b.objects == ()  # objects do not change the arms
        assert Props.from_json(json.loads(json.dumps(a.to_json()))) == a
        with_objects += bool(a.objects)
        without += not a.objects
        for o in a.objects:  # clear of the forearms too
            arms = [
                m[1]
                for m in prop_meshes(
                    Props(a.forearms), {x: h[0] for x, h in hands.items() if h}, hand_model.faces
                )
            ]
            assert obj_clear(o, np.concatenate(arms))
    assert with_objects >= 2 and without >= 2


def obj_clear(o, pts):
    return bool(o.gauge(pts).min() >= 1.0)


def test_objects_are_in_the_depth_test(posed, hand_model, renderer):
    samples = []
    for s in posed:
        hands = {
            x: None if s.hands[x] is None else (s.verts[i], s.hands[x].joints_3d) for i, x in enumerate(SIDES)
        }
        for k in range(8):  # the first stream that places an object for this sample
            p = draw_props(
                stage_rng(s.seed, "props", k), hands, hand_model.faces, forearm=False, objects=True
            )
            if p.objects:
                samples.append(s.with_(props=p))
                break
    assert len(samples) >= 6
    bare = _render(renderer, hand_model, [s.with_(props=None) for s in samples])
    held = _render(renderer, hand_model, samples)
    covering = 0
    for b, a in zip(bare, held, strict=True):
        if a.prop_mask is None:
            continue
        assert set(np.unique(a.prop_mask).tolist()) <= {0, 4}  # object pixels only (no forearms here)
        lost = (b.mask > 0) & (a.mask == 0)
        assert ((a.mask > 0) <= (b.mask > 0)).all() and (a.prop_mask[lost] == 4).all()
        covering += bool(lost.any())
    assert covering >= 2  # objects do cover parts of hands (2 of these 12 draws since prior camera version 3)


def test_a_mug_is_drawn_in_the_depth_test(posed, hand_model, renderer):
    """A mug between the camera and a hand, its handle's plane facing the camera: its pixels are id 4 (never
    in the mask) and remove the hand pixels they cover; the handle's tube is drawn and its hole is not;
    the re-render from the label's record is the same."""
    from pipeline.camera import project_points

    s = next(p for p in posed if p.hand_type != "interacting")
    side = next(x for x in SIDES if s.hands[x] is not None)
    j = np.asarray(s.hands[side].joints_3d)
    size = (0.02, 0.02, 0.025)
    r, _, h = size
    c = j[[0, 5, 9, 13, 17]].mean(axis=0)
    centre = tuple(float(x) for x in (c * (1 - 0.08 / c[2]) - np.array([r + MUG_ARC * h, 0, 0]) / 2))
    mug = PropObject("mug", centre, (-math.pi / 2, 0.0, 0.0), size)  # x right, z (the axis) down the image
    assert np.allclose(mug.matrix, [[1, 0, 0], [0, 0, 1], [0, -1, 0]], atol=1e-12)
    held = s.with_(props=Props({x: None for x in SIDES}, (mug,)))
    bare, drawn = _render(renderer, hand_model, [s, held])
    assert drawn.prop_mask is not None and set(np.unique(drawn.prop_mask).tolist()) == {0, 4}
    assert not ((drawn.prop_mask > 0) & (drawn.mask > 0)).any()
    lost = (bare.mask > 0) & (drawn.mask == 0)
    assert lost.any() and (drawn.prop_mask[lost] == 4).all() and ((drawn.mask > 0) <= (bare.mask > 0)).all()
    assert (drawn.depth[lost] < bare.depth[lost]).all()
    tube = MUG_TUBE * min(r, h)
    arc = MUG_ARC * h
    K, dist = s.camera.K, s.camera.dist
    local = np.array([[r + arc, 0, 0], [r + arc - tube - (arc - tube) / 2, 0, 0], [r + arc - tube / 2, 0, 0]])
    px = np.round(project_points(local @ mug.matrix.T + np.asarray(centre), K, dist)).astype(int)
    (u0, v0), (u1, v1), (u2, v2) = px
    assert drawn.prop_mask[v0, u0] == 4 and drawn.prop_mask[v2, u2] == 4  # the handle's tube
    assert drawn.prop_mask[v1, u1] == 0  # the hole
    again = _render(renderer, hand_model, [held.with_(props=Props.from_json(held.props.to_json()))])[0]
    assert np.array_equal(again.prop_mask, drawn.prop_mask) and np.array_equal(again.mask, drawn.mask)


# -- two forearms: clear of each other and of the other hand ------------------------------------------------
def test_arms_cross_sees_overlapping_arms_and_not_separate_ones(hand_model):
    """One right hand and its mirror-free copy as the "left" hand (same wrist opening, same arm): 3 cm apart
    side by side the two straight forearms (4 to 6 cm wide) overlap, so they cross; 30 cm apart they are
    clear; an arm laid through the other hand crosses it."""
    from pipeline.props import arms_cross, prop_parts

    hm = hand_model
    out = hm.forward("right", np.zeros((1, 48)), np.zeros((1, 10)), np.array([[0.0, 0.0, 0.6]]))
    v = out.vertices[0].detach().cpu().numpy()
    faces = {"right": hm.faces["right"], "left": hm.faces["right"]}  # both are right-hand meshes here
    straight = Forearm(0.35, (1.1, 1.5), (0.0, 0.0))
    arms = {"right": straight, "left": straight}
    for dx, expected in ((0.03, True), (0.3, False)):
        verts = {"right": v, "left": v + np.array([0.0, dx, 0.0])}  # across the arms (they run along x)
        assert arms_cross(arms, verts, faces) is expected, dx
    # only the right arm, and the left hand moved 20 cm up the right arm's axis: the arm goes through it
    verts = {"right": v, "left": v}
    (_, _, av, _), *_ = prop_parts(Props({"right": straight, "left": None}), verts, faces)
    axis = av[-1].copy() - v[wrist_loop(faces["right"])].mean(0)
    axis /= np.linalg.norm(axis)
    moved = {"right": v, "left": v + 0.2 * axis}
    assert arms_cross({"right": straight, "left": None}, moved, faces)
    assert not arms_cross({"right": straight, "left": None}, {"right": v, "left": v + [0.0, 0.3, 0.0]}, faces)


def test_two_hand_forearms_are_drawn_again_while_they_cross(hand_model):
    """Over 60 prior samples (22 with two hands): the first draw of the two forearms crosses in several
    samples; ``draw_props`` draws again (then with the wrist flexed further, ``FLEX_MAX``) and leaves fewer
    crossing (measured: 8 -> 0; 8 -> 2 before the flexed round; at 512 samples 56 -> 3 of 155, 21 before);
    a first draw that is clear is kept as it was (the stream is not touched), and one-hand samples keep
    their single draw."""
    from pipeline.props import arms_cross, draw_forearm
    from pipeline.sources import make_source, posed_sample

    src = make_source("prior", hand_model, run_seed=3, image_size=(128, 128))
    crossed_first, crossed_after, kept, single = 0, 0, 0, 0
    for i in range(60):
        s = posed_sample(src, i, hand_model)
        hands = _hands(s)
        rng = stage_rng(s.seed, "props")
        first = {side: draw_forearm(rng) if hands[side] is not None else None for side in SIDES}
        props = draw_props(stage_rng(s.seed, "props"), hands, hand_model.faces)
        if any(h is None for h in hands.values()):
            assert props.forearms == first
            single += 1
            continue
        verts = {side: hands[side][0] for side in SIDES}
        if arms_cross(first, verts, hand_model.faces):
            crossed_first += 1
            crossed_after += arms_cross(props.forearms, verts, hand_model.faces)
            assert props.forearms != first
        else:
            assert props.forearms == first
            kept += 1
    assert crossed_first >= 5 and crossed_after <= crossed_first // 4, (crossed_first, crossed_after)
    assert kept >= 10 and single >= 20, (kept, single)


def _cap_outside(arm, verts, faces, K, size):
    """Whether ``arm``'s far end (its cap's centre and radius) projects wholly outside the image."""
    from pipeline.props import NEAR, _arm_frame, wrist_loop

    ring, centre, *_, axis = _arm_frame(verts, wrist_loop(faces), arm)
    cap = centre + arm.length * axis
    if cap[2] < NEAR:
        return True
    r = np.max(np.linalg.norm(ring - centre, axis=1)) * max(arm.widen) * K[0, 0] / cap[2]
    u, v = (K @ cap)[:2] / cap[2]
    return u < -r or u > size[1] + r or v < -r or v > size[0] + r


def test_reach_out_draws_an_arm_out_of_the_picture(hand_model):
    """An arm that ends inside the image is drawn out (in whole steps) until its end leaves it; one already
    out, or one pointing straight away from the camera (its vanishing point inside the image), keeps its
    length; the longer arm is the same tube, only longer."""
    from pipeline.props import (
        LENGTH_STEP,
        MAX_LENGTH,
        Forearm,
        _arm_frame,
        forearm_mesh,
        reach_out,
        wrist_loop,
    )

    faces = hand_model.faces["right"]
    loop = wrist_loop(faces)
    rest = hand_model("right", np.zeros((1, 48)), np.zeros((1, 10)), np.zeros((1, 3))).vertices[0].numpy()
    rest = rest.astype(np.float64)
    K = np.array([[150.0, 0.0, 128.0], [0.0, 150.0, 128.0], [0.0, 0.0, 1.0]])
    size = (256, 256)
    arm = Forearm(0.3, (1.1, 1.5), (0.0, 0.0))
    # the canonical hand's arm runs along +x: seen from 0.6 m in front (the hand in the image's centre)
    side_on = rest + [0.0, 0.0, 0.6]
    assert not _cap_outside(arm, side_on, faces, K, size)
    longer = reach_out(arm, side_on, loop, K, size)
    assert longer.length > arm.length and (longer.widen, longer.bend) == (arm.widen, arm.bend)
    assert _cap_outside(longer, side_on, faces, K, size)
    shorter = dataclasses.replace(longer, length=round(longer.length - LENGTH_STEP, 5))
    assert not _cap_outside(shorter, side_on, faces, K, size)  # the first step out, not a longer one
    a, b = forearm_mesh(side_on, loop, arm)[0], forearm_mesh(side_on, loop, longer)[0]
    assert np.allclose(a[: len(loop)], b[: len(loop)])  # the same wrist ring
    # already out: the hand near the image's right edge, its arm pointing out of it
    assert reach_out(arm, rest + [0.2, 0.0, 0.4], loop, K, size) == arm
    # pointing straight away from the camera: no length takes its end out of the picture
    _, centre, *_, axis = _arm_frame(side_on, loop, arm)
    R = _rotation_between(axis, np.array([0.0, 0.0, 1.0]))  # the hand turned so its arm runs along +z
    away = (side_on - centre) @ R.T + [0.0, 0.0, 0.5]
    assert _arm_frame(away, loop, arm)[-1] @ [0.0, 0.0, 1.0] > 0.999
    assert not _cap_outside(arm, away, faces, K, size)
    assert reach_out(arm, away, loop, K, size) == arm
    assert MAX_LENGTH >= 1.0


def _rotation_between(a, b):
    """(3, 3) the rotation that turns unit vector ``a`` onto unit vector ``b`` (Rodrigues)."""
    v, c = np.cross(a, b), float(a @ b)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def test_draw_props_with_the_camera_takes_every_arm_out_of_the_picture_it_can(posed, hand_model):
    """With the sample's camera, every forearm ends outside the image, unless it could not at any length up
    to ``MAX_LENGTH`` (then it keeps its drawn length); without it, the drawn lengths stay in
    ``LENGTH_RANGE``, as before."""
    from pipeline.props import LENGTH_RANGE, MAX_LENGTH, reach_out, wrist_loop

    out = kept = 0
    for s in posed:
        hands = _hands(s)
        camera = (s.camera.K, tuple(s.image_size))
        with_cam = draw_props(stage_rng(s.seed, "props"), hands, hand_model.faces, camera=camera)
        plain = draw_props(stage_rng(s.seed, "props"), hands, hand_model.faces)
        for side, arm in with_cam.forearms.items():
            if arm is None:
                continue
            verts, faces = hands[side][0], hand_model.faces[side]
            assert LENGTH_RANGE[0] <= plain.forearms[side].length <= LENGTH_RANGE[1]
            assert arm.length <= MAX_LENGTH
            if _cap_outside(arm, verts, faces, *camera):
                out += 1
            else:  # in LENGTH_RANGE: drawn, not drawn out, since no length up to MAX_LENGTH leaves
                assert LENGTH_RANGE[0] <= arm.length <= LENGTH_RANGE[1]
                assert reach_out(arm, verts, wrist_loop(faces), *camera) == arm
                kept += 1
    assert out >= 10, (out, kept)
