"""Captioning: CLIP-token tagging, label captions, Qwen-VL loading, post-processing."""

import json
import subprocess
import sys

import numpy as np
import pytest

from captioning.labels import LabelCaptioner
from captioning.postprocess import clean_caption
from pipeline.gestures import GESTURES, classify_gesture, gesture_pose, hands_relation, palm_facing
from pipeline.sample import Drawn, HandParams, Posed, Sample
from pipeline.schema import Camera

K = np.array([[500.0, 0, 255.5], [0, 500.0, 255.5], [0, 0, 1]])
PALM_TO_CAMERA = np.array([np.pi / 2, 0.0, 0.0])  # right hand: palm (-y) turned to face the camera (-z)


@pytest.fixture(scope="module")
def tagger():
    from pipeline.tagging import HandTokenTagger

    return HandTokenTagger()


def test_real_clip_vocabulary_known_ids(tagger):
    r = tagger.tag("a photo of a cat")
    assert r.input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's published ids
    assert r.tokens[0] == "<|startoftext|>" and r.tokens[-1] == "<|endoftext|>"


def test_tagging_ignores_padding_left_on_a_shared_tokenizer():
    """The diffusion pipeline pads batches to 77 with the same tokenizer object the tagger uses; that leaves
    padding enabled on the fast backend, and tagging must not pick it up."""
    from pipeline.tagging import HandTokenTagger, clip_tokenizer

    tok = clip_tokenizer()
    tagger = HandTokenTagger(tokenizer=tok)
    before = tagger.tag("a man holding a cup")
    tok(["a cat"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    after = tagger.tag("a man holding a cup")
    assert after == before and len(after.input_ids) == 7 and after.input_ids[-1] == 49407


def test_multi_token_words_map_to_all_their_tokens(tagger):
    r = tagger.tag("A woman gesticulating with her thumbs in a park.")
    assert [r.tokens[i] for i in r.hand_token_indices] == ["ge", "stic", "ul", "ating</w>", "thumbs</w>"]
    assert r.hand_token_indices == [3, 4, 5, 6, 9]  # <sot> is 0, "a" is 1, "woman" is 2
    assert ("gesticulating", "VBG") in r.hand_words


def test_rule_vbg_hand_and_nouns(tagger):
    r = tagger.tag("A chef holding a knife with both hands, fingers curled around the handle.")
    words = [w for w, _ in r.hand_words]
    assert {"holding", "hands", "fingers", "handle"} <= set(
        words
    )  # "handle" contains "hand" (the paper's rule)
    assert "knife" not in words and "chef" not in words
    from pipeline.tagging import HandTokenTagger

    plain = HandTokenTagger(hand_nouns=())
    assert "fingers" not in [w for w, _ in plain.tag("fingers curled").hand_words]


def test_truncation_drops_positions_past_77(tagger):
    # the hand words come after the 77-token cut: none is left, and the end token is kept
    text = "A tall man " + "very " * 80 + "still while holding a cup in his hand."
    r = tagger.tag(text)
    assert len(r.input_ids) == 77 and r.tokens[-1] == "<|endoftext|>"
    assert "holding" in [w for w, _ in r.hand_words] and r.hand_token_indices == []
    # a hand word that ends just before the cut is kept, at its position (75: <sot>, 3 words, 71 x "very")
    text = "A man waving " + "very " * 71 + "hand hand hand"
    r = tagger.tag(text)
    assert len(r.input_ids) == 77 and r.tokens[75] == "hand</w>"
    assert r.hand_token_indices == [3, 75]


def test_numpy_perceptron_equals_nltk(tagger):
    from pipeline.tagging import load_pos_tagger

    stock = load_pos_tagger()  # NLTK's own AveragedPerceptron scoring
    rng = np.random.default_rng(0)
    words = (
        "a man woman holding pointing hand right left with his her the in park kitchen palm facing camera "
        "making fist thumbs up waving grasping cup and near street office showing open sign while resting on "
        "table quickly she runs, . ! 42 Paris"
    ).split()
    for _ in range(200):
        sent = list(rng.choice(words, size=int(rng.integers(1, 18))))
        assert tagger._pos.tag(sent) == stock.tag(sent)


def test_cli_caption_tag():
    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", "caption", "tag", "A boy waving his hand."],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tokens"][0] == "<|startoftext|>"
    assert [out["tokens"][i] for i in out["hand_token_indices"]] == ["waving</w>", "hand</w>"]


def _hand(hand_model, gesture, side, orient=PALM_TO_CAMERA, trans=(0.0, 0.0, 0.5)):
    o = np.asarray(orient, dtype=np.float64)
    if side == "left":
        o = o * np.array([1.0, -1.0, -1.0])
    p = gesture_pose(gesture, hand_model.hands_mean[side], side, o)
    out = hand_model(side, p[None], np.zeros((1, 10)), np.asarray(trans, dtype=np.float64)[None])
    return p, out.joints[0].numpy().astype(np.float64)


EXPECTED = {
    "open": "open_palm",
    "fist": "fist",
    "point": "point",
    "pinch": "pinch",
    "ok": "ok",
    "thumbs_up": "thumbs_up",
    "v_sign": "v_sign",
    "cylinder_grasp": "cylinder_grasp",
    "sphere_grasp": "sphere_grasp",
    "relaxed": "relaxed",
}


@pytest.mark.parametrize("side", ["right", "left"])
def test_gesture_classifier_on_canonical_poses(hand_model, side):
    assert set(EXPECTED) == set(GESTURES)
    rng = np.random.default_rng(1)
    for g, expected in EXPECTED.items():
        for orient in (PALM_TO_CAMERA, rng.normal(0, 1.0, 3)):  # the classifier ignores the global rotation
            _, j = _hand(hand_model, g, side, orient)
            assert classify_gesture(j) == expected, (g, side, orient)


def test_palm_facing(hand_model):
    for side in ("right", "left"):
        _, j = _hand(hand_model, "open", side, PALM_TO_CAMERA)
        assert palm_facing(j, side) == "palm"
        _, j = _hand(hand_model, "open", side, -PALM_TO_CAMERA)
        assert palm_facing(j, side) == "back"
        _, j = _hand(hand_model, "open", side, np.array([0.0, 0.0, 0.0]))  # palm down, camera looks forward
        assert palm_facing(j, side) == "side"


def test_hands_relation(hand_model):
    _, r = _hand(hand_model, "open", "right", trans=(0.15, 0.0, 0.5))
    _, left = _hand(hand_model, "open", "left", trans=(-0.15, 0.0, 0.5))
    assert hands_relation(r, left) == "apart"
    # palms to the camera, fingers pointing at each other (right: -x, left: +x); middle tips 1.5 cm apart
    tips = left + (r[12] - left[12]) + np.array([-0.015, 0.0, 0.0])
    assert hands_relation(r, tips) == "touching"
    interleaved = r + np.array([0.0, 0.0, 0.012])  # the same place, 1.2 cm behind: fingers side by side
    assert hands_relation(r, interleaved) == "clasped"


def _sample(index, seed, hands, source_image=None, photo=None):
    params = {"right": None, "left": None}
    joints = {"right": None, "left": None}
    for side, (p, j) in hands.items():
        params[side], joints[side] = HandParams(p, np.zeros(10), np.zeros(3)), j
    hand_type = "interacting" if len(hands) == 2 else next(iter(hands))
    drawn = Drawn(
        index=index,
        seed=seed,
        key=f"t-{index:010d}",
        image_size=(512, 512),
        camera=Camera(K),
        hand_type=hand_type,
        params=params,
        source={"dataset": "prior"},
        source_image=source_image,
    )
    posed = Posed(np.full((2, 778, 3), np.nan, np.float32), joints, {"name": "standin"}) if hands else None
    return Sample(drawn, posed, photo=photo)


def test_label_captions(hand_model, tagger):
    cap = LabelCaptioner()
    s = _sample(0, 11, {"right": _hand(hand_model, "v_sign", "right")})
    c = cap.caption([s])[0]
    assert c.captioner == "labels" and c.prompt_version == "1"
    assert "right hand in a V sign, palm facing the camera." in c.text
    assert c.meta["facts"]["right"] == {"gesture": "v_sign", "facing": "palm"}
    assert cap.caption([s])[0].text == c.text  # deterministic per seed
    texts = {
        cap.caption([_sample(0, seed, {"right": _hand(hand_model, "v_sign", "right")})])[0].text
        for seed in range(30)
    }
    assert len(texts) > 10  # subjects and scenes vary with the seed
    two = _sample(
        1,
        5,
        {
            "right": _hand(hand_model, "fist", "right", trans=(0.12, 0, 0.5)),
            "left": _hand(hand_model, "point", "left", trans=(-0.12, 0, 0.5)),
        },
    )
    t = cap.caption([two])[0].text
    assert "holding up both hands, the right hand in a fist and the left hand pointing." in t
    r = tagger.tag(t)
    assert len(r.input_ids) <= 77 and len(r.hand_token_indices) >= 3  # "holding", "hands", "hand" ...


def test_label_caption_needs_joints():
    s = _sample(0, 0, {"right": (np.zeros(48), None)}).with_(posed=None)
    with pytest.raises(ValueError, match="joints_3d is not filled in"):
        LabelCaptioner().caption([s])


def test_postprocess():
    count = lambda s: len(s.split()) + 2  # noqa: E731 - words + <sot>/<eot>
    assert (
        clean_caption("In the image, a man is holding a cup. He smiles.", count)
        == "A man is holding a cup. He smiles."
    )
    assert clean_caption("The image shows a woman waving her hand", count) == "A woman waving her hand."
    assert (
        clean_caption("Sure! In this picture, **a child** points at the sky.", count)
        == "A child points at the sky."
    )
    assert (
        clean_caption("", count) == ""
        and clean_caption("   \n ...", count) == ""
        and clean_caption(None, count) == ""
    )
    long = "A man " + "quickly " * 100 + "waves."
    out = clean_caption(long, count)
    assert count(out) <= 77 and out.endswith(".") and out.startswith("A man quickly")
    two = "A man is holding a very long list of things. " + "Then " * 80 + "he leaves."
    assert clean_caption(two, count) == "A man is holding a very long list of things."


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from tests.qwen_tiny import save_tiny_qwen2vl

    return save_tiny_qwen2vl(tmp_path_factory.mktemp("qwen"))


def test_qwen_vl_end_to_end_on_cpu(tiny_qwen, hand_model, tmp_path):
    from PIL import Image

    from captioning.qwen_vl import QwenVLCaptioner

    cap = QwenVLCaptioner(tiny_qwen, max_new_tokens=6, batch_size=2)
    assert cap.device.type == "cpu" and cap.model.dtype.is_floating_point
    rng = np.random.default_rng(0)
    png = tmp_path / "frame.png"
    Image.fromarray((rng.random((70, 90, 3)) * 255).astype(np.uint8)).save(png)
    photo = (rng.random((80, 96, 3)) * 255).astype(np.uint8)  # a letterboxed photo (mode prepare)
    s_arr = _sample(0, 1, {"right": _hand(hand_model, "fist", "right")}, photo=photo)
    s_path = _sample(1, 2, {"right": _hand(hand_model, "open", "right")}, source_image=str(png))
    s_none = _sample(2, 3, {"right": _hand(hand_model, "point", "right")})
    raw = cap.answer([s_arr.source_image, np.asarray(Image.open(png).convert("RGB"))])
    assert len(raw) == 2 and all(isinstance(a, str) for a in raw)
    caps = cap.caption([s_arr, s_path, s_none])
    assert len(caps) == 3
    for c in caps[:2]:  # a random model's bytes either clean into a prompt or fall back, and say which
        assert (c.captioner == "qwen-vl" and c.meta["raw"] is not None and c.text) or c.meta[
            "fallback"
        ] == "empty answer"
    assert caps[2].captioner == "labels" and caps[2].meta["fallback"] == "no source image"
    assert "pointing" in caps[2].text
    assert cap.answer([s_arr.source_image]) == raw[:1]  # greedy: deterministic


def test_qwen_vl_bad_folder(tmp_path):
    from captioning.qwen_vl import QwenVLCaptioner, QwenVLError

    with pytest.raises(QwenVLError, match="config.json missing"):
        QwenVLCaptioner(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(QwenVLError, match="expected qwen2_vl or qwen2_5_vl"):
        QwenVLCaptioner(tmp_path)
