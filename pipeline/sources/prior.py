"""The built-in pose prior (``--source prior``): hands and cameras with no dataset.

Per sample, all drawn from the sample's own streams (``stage_rng(seed, ...)``):

* hand type from a configurable mix (right / left / interacting); optional stratification cycles through the
  types and viewpoints by sample index;
* gesture: one of the named gestures (``pipeline.gestures``), or a blend of two, jittered per joint, then
  clamped to per-joint anatomical limits (flexion and abduction ranges, radians); shape
  betas ~ N(0, shape_std);
* two hands: an interaction (clasped, fingertips touching, one hand over the other, side by side) placed in a
  scene frame; the left hand is pushed away from the right until the surfaces do not cross;
* camera: third-person (any viewing direction, horizontal field of view in ``fov_third``) or egocentric
  (looking forward and down at hands held in front, ``fov_ego``); the hands' box covers a fraction
  ``hand_fraction`` of the image side and its centre lies inside the image, so hands are never fully outside;
  but the hands stay at a distance a real camera sees them from (``distance_third``, ``distance_ego``: the
  depth of their centre, metres), so a wide lens shows them smaller instead of a few centimetres away.

Text control: ``prior:pinch,fist`` restricts gestures, ``prior:clasped`` restricts interactions (and makes
every sample two-handed).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline import geometry, kinematics
from pipeline.camera import project_points
from pipeline.gestures import GESTURES
from pipeline.rotations import aa_to_matrix, matrix_to_aa, move_mano, random_rotation
from pipeline.sample import Drawn
from pipeline.schema import HAND_TYPES, SIDES
from pipeline.seeding import stage_rng
from pipeline.sources.base import FilterConfig, PoseSource, SkipSample

CAMERA_VERSION = 3
"""Bumped when the same seed frames the hands otherwise; the run's source record holds it (with the camera
settings), so a resume across the change is refused: 3, the forward hand orientation (``_FORWARD``) points the
fingers forward and the egocentric camera looks down (both were reversed: egocentric hands pointed back at the
camera, mostly palm first, and their forearms ran away into the scene); 2, the hands kept within
``distance_third`` / ``distance_ego``; 1 (unrecorded), before."""
_CAMERA_FIELDS = ("fov_third", "fov_ego", "hand_fraction", "distance_third", "distance_ego")
INTERACTIONS = ("clasped", "fingertips_touching", "one_over_other", "side_by_side")
# per-joint limits (radians) in flexion / abduction coordinates, MANO hand-joint order (15)
_FLEX_LIMITS = np.array([(-0.35, 1.65), (0.0, 1.9), (0.0, 1.3)] * 4 + [(-0.3, 0.9), (-0.2, 0.9), (-0.3, 1.2)])
_ABD_LIMITS = np.array([(-0.35, 0.35), (0.0, 0.0), (0.0, 0.0)] * 4 + [(-0.2, 0.9), (0.0, 0.0), (0.0, 0.0)])
# scene orientations of a right hand (columns: where the canonical x, y, z axes go). The scene has +y up and
# +z forward; the canonical right hand (MANO's frame, which the stand-in shares) has its fingers along -x,
# its palm facing -y and its thumb toward +z
_FORWARD = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).T  # fingers +z, palm -y, thumb +x
_STEEPLE = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]).T  # fingers +y, palm +x
_MIRROR = np.diag([-1.0, 1.0, 1.0])
_EGO = np.diag([-1.0, -1.0, 1.0])  # scene (up +y, forward +z) -> camera (down +y, forward +z)
EGO_PITCH = 0.5
"""Radians the egocentric camera looks down from the scene's forward direction (then jittered)."""


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """Settings of the pose prior (see module doc). Angles in degrees, fractions of the image side."""

    gestures: tuple = tuple(GESTURES)
    interactions: tuple = INTERACTIONS
    hand_type_probs: tuple = (0.35, 0.35, 0.30)  # right, left, interacting
    ego_prob: float = 0.25
    fov_third: tuple = (35.0, 70.0)
    fov_ego: tuple = (75.0, 110.0)
    hand_fraction: tuple = (0.25, 0.6)
    distance_third: tuple = (0.3, 1.5)
    distance_ego: tuple = (0.3, 0.65)
    image_size: tuple = (512, 512)
    shape_std: float = 1.0
    blend_prob: float = 0.3
    flex_jitter: float = 0.12
    abd_jitter: float = 0.05
    stratify: bool = False

    def __post_init__(self) -> None:
        bad = [g for g in self.gestures if g not in GESTURES]
        if bad or not self.gestures:
            raise ValueError(f"unknown gestures {bad}; known: {sorted(GESTURES)}")
        bad = [i for i in self.interactions if i not in INTERACTIONS]
        if bad:
            raise ValueError(f"unknown interactions {bad}; known: {list(INTERACTIONS)}")
        p = np.asarray(self.hand_type_probs, dtype=float)
        if p.shape != (3,) or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"hand_type_probs must be 3 non-negative weights, got {self.hand_type_probs}")
        if not self.interactions and p[2] > 0:
            raise ValueError("hand_type_probs gives two-hand samples but no interaction is allowed")
        for name in ("distance_third", "distance_ego"):
            lo, hi = getattr(self, name)
            if not 0.15 <= lo <= hi:
                raise ValueError(f"{name} must be (near, far) metres, 0.15 <= near <= far, got ({lo}, {hi})")

    @classmethod
    def from_names(cls, names: list[str], **kw) -> PriorConfig:
        """Text control: a list of gesture and/or interaction names."""
        names = check_names(names)
        gestures = tuple(n for n in names if n in GESTURES)
        interactions = tuple(n for n in names if n in INTERACTIONS)
        if gestures:
            kw["gestures"] = gestures
        if interactions:
            kw["interactions"] = interactions
            if not gestures:
                kw["hand_type_probs"] = (0.0, 0.0, 1.0)
        return cls(**kw)


def check_names(names) -> list[str]:
    """The gesture and interaction ``names`` normalised (lower case, '_' for blanks and '-'); ``ValueError``
    naming the unknown ones."""
    names = [n.strip().lower().replace(" ", "_").replace("-", "_") for n in names if n.strip()]
    unknown = [n for n in names if n not in GESTURES and n not in INTERACTIONS]
    if unknown:
        raise ValueError(
            f"unknown prior names {unknown}; gestures: {sorted(GESTURES)}; interactions: {list(INTERACTIONS)}"
        )
    return names


def _gesture_angles(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(flex (15,), abd (15,)) radians of a named gesture, MANO hand-joint order."""
    g = GESTURES[name]
    flex, abd = np.zeros(15), np.zeros(15)
    for finger, joints in kinematics.FINGER_JOINTS.items():
        flex[[j - 1 for j in joints]] = g[finger]
    for finger, a in zip(kinematics.LONG_FINGERS, g["spread"], strict=True):
        abd[kinematics.FINGER_JOINTS[finger][0] - 1] = a
    abd[kinematics.FINGER_JOINTS["thumb"][0] - 1] = g.get("thumb_abd", 0.0)
    return flex, abd


class PriorSource(PoseSource):
    """Samples from the built-in prior (module doc); needs the hand model to place and check hands."""

    name = "prior"

    @classmethod
    def from_config(cls, config, hand_model, run_seed=0, run_tag="run", image_size=None, filters=None, **_):
        """The source of a ``PriorSourceConfig`` (``pipeline.sources.SOURCES``; cache_dir is not used)."""
        kw = {"image_size": tuple(image_size)} if image_size else {}
        prior = PriorConfig.from_names(list(config.names), **kw) if config.names else PriorConfig(**kw)
        return cls(hand_model, prior, run_seed, run_tag, filters)

    def __init__(
        self,
        hand_model,
        config: PriorConfig | None = None,
        run_seed: int = 0,
        run_tag: str = "run",
        filters: FilterConfig | None = None,
    ) -> None:
        super().__init__(run_seed, run_tag, filters)
        self.hm = hand_model
        self.config = config or PriorConfig()
        self._angles = {g: _gesture_angles(g) for g in self.config.gestures}
        self._flex = {s: kinematics.flexion_axes(s) for s in SIDES}
        self._abd = {s: kinematics.abduction_axes(s) for s in SIDES}

    # -- hands -----------------------------------------------------------------------------------------
    def _hand_pose(self, rng: np.random.Generator, side: str) -> tuple[np.ndarray, str]:
        """(45,) hand pose relative to the model's mean, and the gesture name(s) used."""
        cfg = self.config
        names = list(self._angles)
        g1 = names[int(rng.integers(len(names)))]
        flex, abd = (a.copy() for a in self._angles[g1])
        label = g1
        if len(names) > 1 and rng.random() < cfg.blend_prob:
            g2 = names[int(rng.integers(len(names)))]
            w = rng.uniform(0.2, 0.5)
            f2, a2 = self._angles[g2]
            flex, abd = (1 - w) * flex + w * f2, (1 - w) * abd + w * a2
            label = f"{g1}+{g2}"
        flex += rng.normal(0.0, cfg.flex_jitter, 15)
        abd += rng.normal(0.0, cfg.abd_jitter, 15)
        flex = np.clip(flex, _FLEX_LIMITS[:, 0], _FLEX_LIMITS[:, 1])
        abd = np.clip(abd, _ABD_LIMITS[:, 0], _ABD_LIMITS[:, 1])
        absolute = flex[:, None] * self._flex[side] + abd[:, None] * self._abd[side]
        return absolute.reshape(45) - self.hm.hands_mean[side], label

    def _scene_hand(
        self, side: str, hand_pose: np.ndarray, shape: np.ndarray, R: np.ndarray, pos: np.ndarray
    ):
        """MANO params (pose, trans) and vertices of a hand whose canonical frame is rotated by R, root at
        pos."""
        root = self.hm.root_joint(side, shape)
        pose = np.concatenate([matrix_to_aa(R), hand_pose])
        trans = pos - root
        out = self.hm(side, pose[None], shape[None], trans[None])
        return pose, trans, root, out.vertices[0].cpu().numpy().astype(np.float64)

    def _two_hands(self, rng, interaction: str, poses: dict, shapes: dict):
        """Scene placement of two hands for ``interaction``; the left hand moves apart until nothing
        crosses."""
        jit = lambda s: aa_to_matrix(rng.normal(0.0, s, 3))  # noqa: E731
        if interaction == "side_by_side":
            Rr, Rl = _FORWARD @ jit(0.2), _MIRROR @ _FORWARD @ _MIRROR @ jit(0.2)
            pr, pl = np.array([-0.09, 0.0, 0.0]), np.array([0.09, 0.0, 0.0])
            pl += np.array([rng.uniform(0.0, 0.08), rng.normal(0, 0.02), rng.normal(0, 0.03)])
            step = np.array([0.004, 0.0, 0.0])
        elif interaction == "one_over_other":
            Rr, Rl = _FORWARD @ jit(0.15), _MIRROR @ _FORWARD @ _MIRROR @ jit(0.15)
            pr, pl = (
                np.array([0.0, 0.0, 0.0]),
                np.array([rng.normal(0, 0.015), 0.035, rng.normal(0.01, 0.01)]),
            )
            step = np.array([0.0, 0.004, 0.0])
        else:  # palms facing: steeple (touching fingertips) or clasped (closer, fingers crossing)
            tilt = aa_to_matrix(
                np.array([0.0, 0.0, rng.uniform(0.15, 0.4)])
            )  # fingers lean toward the middle
            Rr = tilt @ _STEEPLE @ jit(0.1)
            Rl = _MIRROR @ tilt @ _STEEPLE @ _MIRROR @ jit(0.1)
            if interaction == "clasped":
                Rl = aa_to_matrix(np.array([0.0, 0.0, np.pi / 2])) @ Rl  # the left hand's fingers cross over
                pr, pl = np.array([-0.02, 0.0, 0.0]), np.array([0.02, 0.03, 0.0])
            else:
                pr, pl = np.array([-0.045, 0.0, 0.0]), np.array([0.045, 0.0, 0.0])
            step = np.array([0.004, 0.0, 0.0])
        right = self._scene_hand("right", poses["right"], shapes["right"], Rr, pr)
        lpose, ltrans, lroot, lverts = self._scene_hand("left", poses["left"], shapes["left"], Rl, pl)
        unit = step / np.linalg.norm(step)
        offset = np.zeros(3)
        if (
            interaction == "fingertips_touching"
        ):  # bring the closest points to ~4 mm apart along the step axis
            d = (right[3][:, None] - lverts[None, ::5]) @ unit  # separations along the axis
            near = np.linalg.norm(right[3][:, None] - lverts[None, ::5], axis=2) < 0.08
            gap = float(-d[near].max()) if near.any() else 0.0
            offset -= unit * max(gap - 0.004, 0.0)
        fr, fl = self.hm.faces["right"], self.hm.faces["left"]

        def crosses(k: float) -> bool:  # the left hand moved rigidly (vertices follow trans) by k steps
            return geometry.meshes_interpenetrate(right[3], fr, lverts + offset + k * step, fl)

        if crosses(0.0):  # bisect the smallest clearing move, to within one step (4 mm)
            lo, hi = 0.0, 1.0
            while crosses(hi):
                lo, hi = hi, hi * 2.0
                if hi > 64:
                    raise SkipSample(
                        "interpenetration", f"{interaction}: hands still cross after moving apart"
                    )
            while hi - lo > 0.5:
                mid = (lo + hi) / 2.0
                lo, hi = (mid, hi) if crosses(mid) else (lo, mid)
            offset = offset + hi * step
        return {"right": right, "left": (lpose, ltrans + offset, lroot, lverts + offset)}

    # -- camera ----------------------------------------------------------------------------------------
    def _camera(self, rng, scene_verts: np.ndarray, ego: bool):
        """(K, R_view, t_view): intrinsics and the scene -> camera move framing the hands."""
        cfg = self.config
        H, W = cfg.image_size
        lo, hi = cfg.fov_ego if ego else cfg.fov_third
        f = (W / 2.0) / np.tan(np.radians(rng.uniform(lo, hi)) / 2.0)
        K = np.array(
            [
                [f, 0.0, (W - 1) / 2 + rng.normal(0, 0.01 * W)],
                [0.0, f, (H - 1) / 2 + rng.normal(0, 0.01 * H)],
                [0.0, 0.0, 1.0],
            ]
        )
        if ego:
            # about the camera's x axis (right), a positive angle turns the forward direction up in the image:
            # the camera looks down at hands held in front of it
            R = aa_to_matrix(rng.normal(0.0, 0.35, 3)) @ aa_to_matrix(np.array([EGO_PITCH, 0.0, 0.0])) @ _EGO
        else:
            R = random_rotation(rng)
        centre = scene_verts.mean(axis=0)
        z0 = 0.5
        t = np.array([0.0, 0.0, z0]) - R @ centre
        uv = project_points(scene_verts @ R.T + t, K)
        side = max(np.ptp(uv[:, 0]) / W, np.ptp(uv[:, 1]) / H)
        target = rng.uniform(*cfg.hand_fraction)
        # apparent size ~ 1 / depth; a real camera is not a few centimetres from the hands
        z = float(np.clip(z0 * side / target, *(cfg.distance_ego if ego else cfg.distance_third)))
        cu = rng.uniform(0.3, 0.7) * W
        cv = rng.uniform(0.3, 0.7) * H if not ego else rng.uniform(0.45, 0.8) * H
        lateral = np.array([(cu - K[0, 2]) / f * z, (cv - K[1, 2]) / f * z, z])
        t = lateral - R @ centre
        nearest = (scene_verts @ R.T + t)[:, 2].min()
        if nearest < 0.12:  # keep every vertex at least 12 cm in front of the camera
            t = t * (
                (t[2] + 0.12 - nearest) / t[2]
            )  # along the viewing ray: the hands stay where they appear
        return K, R, t

    # -- sample ----------------------------------------------------------------------------------------
    def _draw(self, index: int, seed: int) -> Drawn:
        cfg = self.config
        rng = stage_rng(seed, "prior")
        types = HAND_TYPES
        probs = np.asarray(cfg.hand_type_probs, dtype=float) / np.sum(cfg.hand_type_probs)
        if cfg.stratify:
            allowed = [t for t, p in zip(types, probs, strict=True) if p > 0]
            hand_type = allowed[index % len(allowed)]
            ego = (index // len(allowed)) % 2 == 1 if 0 < cfg.ego_prob < 1 else cfg.ego_prob >= 1
        else:
            hand_type = types[int(rng.choice(3, p=probs))]
            ego = rng.random() < cfg.ego_prob
        sides = SIDES if hand_type == "interacting" else (hand_type,)
        poses, shapes, gestures = {}, {}, {}
        for s in sides:
            poses[s], gestures[s] = self._hand_pose(rng, s)
            shapes[s] = np.clip(rng.normal(0.0, cfg.shape_std, 10), -2.5, 2.5)
        interaction = None
        if len(sides) == 2:
            interaction = cfg.interactions[int(rng.integers(len(cfg.interactions)))]
            scene = self._two_hands(rng, interaction, poses, shapes)
        else:
            s = sides[0]
            R0 = _FORWARD @ aa_to_matrix(rng.normal(0.0, 0.5, 3))
            if s == "left":
                R0 = _MIRROR @ R0 @ _MIRROR
            scene = {s: self._scene_hand(s, poses[s], shapes[s], R0, np.zeros(3))}
        all_verts = np.concatenate([scene[s][3] for s in sides])
        K, R, t = self._camera(rng, all_verts, ego)
        hands = {}
        for s in sides:
            pose, trans, root, _ = scene[s]
            cam_pose, cam_trans = move_mano(pose, trans, root, R, t)
            hands[s] = (cam_pose, shapes[s], cam_trans)
        source = {
            "dataset": "prior",
            "split": None,
            "capture": None,
            "frame": None,
            "camera": "ego" if ego else "third",
            "gestures": gestures,
            "interaction": interaction,
        }
        return self._new_sample(index, seed, cfg.image_size, K, None, hands, source)

    def inspect(self) -> dict:
        cfg = self.config
        return {
            "source": "prior",
            "gestures": list(cfg.gestures),
            "interactions": list(cfg.interactions),
            "hand_type_probs": list(cfg.hand_type_probs),
            "ego_prob": cfg.ego_prob,
            "image_size": list(cfg.image_size),
            "camera": {
                "version": CAMERA_VERSION,
                **{k: list(getattr(cfg, k)) for k in _CAMERA_FIELDS},
            },
            "frames": None,
        }
