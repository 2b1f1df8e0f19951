"""Re:InterHand (``--source reinterhand:ROOT``): per-capture folders, third-person and egocentric cameras.

Layout read under ``ROOT/<capture>/`` (DESIGN section 7):

* ``frame_list.txt``: the frames to use, one id per line;
* ``mano_fits/params/<frame>_{right,left}.json``: ``{pose: 48, shape: 10, trans: 3}`` (metres, world);
* ``Mugsy_cameras/cam_params.json``: ``{cam: {R: 3x3, t: [3] mm, focal: [fx, fy], princpt: [cx, cy]}}`` with
  ``X_cam = R X_world + t / 1000``; images ``Mugsy_cameras/envmap_per_frame/images/<cam>/<frame:06d>.png``;
* ``Ego_cameras/<cam>/params/<frame:06d>.json``: per-frame egocentric cameras, the same fields plus the
  fisheye coefficients ``D`` (4 values, OpenCV fisheye), kept in the label's ``camera.dist`` so keypoints use
  the fisheye model; images ``Ego_cameras/<cam>/images/<frame:06d>.png``. (The per-frame egocentric file
  layout is this project's reading of the release; adjust ``_ego_params`` if yours differs.)

Image size comes from the image file's header, else a ``size: [W, H]`` entry in the camera parameters. The
truncation filter (``FilterConfig.max_truncation``, default 0.5 here) drops samples whose hands are mostly
outside the image.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline.rotations import move_mano
from pipeline.sample import Drawn
from pipeline.schema import SIDES
from pipeline.seeding import stage_rng
from pipeline.sources.base import FilterConfig, PoseSource, SkipSample, SourceError

logger = logging.getLogger(__name__)


def _read_json(path: Path, reason: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise SkipSample(reason, f"{path} missing") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SkipSample(reason, f"{path}: {exc}") from exc


def _image_size(path: Path, params: dict) -> tuple[int, int] | None:
    if path.is_file():
        from PIL import Image

        try:
            with Image.open(path) as im:  # reads the header only
                return im.height, im.width
        except OSError:
            pass
    size = params.get("size") if isinstance(params, dict) else None
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[1]), int(size[0])
    return None


class ReInterHandSource(PoseSource):
    """Re:InterHand samples in camera space (see module doc)."""

    name = "reinterhand"

    @classmethod
    def from_config(cls, config, hand_model, run_seed=0, run_tag="run", filters=None, **_):
        """The source of a ``ReInterHandSourceConfig`` (``pipeline.sources.SOURCES``)."""
        return cls(
            config.root,
            hand_model,
            run_seed=run_seed,
            run_tag=run_tag,
            filters=filters,
            ego=config.ego,
            stratify=config.stratify,
            dedup=config.dedup,
        )

    def __init__(
        self,
        root: str | Path,
        hand_model,
        run_seed: int = 0,
        run_tag: str = "run",
        filters: FilterConfig | None = None,
        ego: bool = True,
        stratify: bool = False,
        dedup: float = 0.0,
    ) -> None:
        super().__init__(run_seed, run_tag, filters or FilterConfig(max_truncation=0.5))
        self.root, self.hm = Path(root), hand_model
        if not self.root.is_dir():
            raise SourceError(f"Re:InterHand root not found: {self.root}")
        captures = sorted(p for p in self.root.iterdir() if (p / "frame_list.txt").is_file())
        if not captures:
            raise SourceError(f"no Re:InterHand capture (a folder with frame_list.txt) in {self.root}")
        entries = []  # (capture, frame, camera, kind) kind 0 = Mugsy, 1 = ego
        self._mugsy: dict[str, dict] = {}
        for cap in captures:
            frames = [ln.strip() for ln in (cap / "frame_list.txt").read_text().splitlines() if ln.strip()]
            if dedup > 0:
                frames = self._dedup(cap, frames, dedup)
            cam_file = cap / "Mugsy_cameras" / "cam_params.json"
            try:
                cams = json.loads(cam_file.read_text()) if cam_file.is_file() else {}
            except (OSError, json.JSONDecodeError) as exc:
                raise SourceError(f"cannot read {cam_file}: {exc}") from exc
            self._mugsy[cap.name] = cams if isinstance(cams, dict) else {}
            ego_cams = (
                sorted(p.name for p in (cap / "Ego_cameras").iterdir() if p.is_dir())
                if ego and (cap / "Ego_cameras").is_dir()
                else []
            )
            for fr in frames:
                entries += [(cap.name, fr, c, 0) for c in sorted(self._mugsy[cap.name])]
                entries += [(cap.name, fr, c, 1) for c in ego_cams]
        if not entries:
            raise SourceError(f"Re:InterHand root {self.root} lists no (frame, camera) pairs")
        self.entries = entries
        perm = stage_rng(self.run_seed, "reinterhand-order").permutation(len(entries))
        if stratify:  # round robin over third-person / egocentric viewpoints
            kinds = np.array([e[3] for e in entries])[perm]
            self._strata = [perm[kinds == k] for k in (0, 1) if (kinds == k).any()]
        else:
            self._strata = [perm]

    @staticmethod
    def _dedup(cap: Path, frames: list[str], threshold: float) -> list[str]:
        """Drop frames whose two-hand pose is within ``threshold`` (L2 over 96 values) of the last kept
        frame."""
        kept, last = [], None
        for fr in frames:
            pose = np.zeros(96)
            for i, s in enumerate(SIDES):
                p = cap / "mano_fits" / "params" / f"{fr}_{s}.json"
                try:
                    pose[48 * i : 48 * (i + 1)] = np.asarray(
                        json.loads(p.read_text())["pose"], dtype=float
                    ).reshape(48)
                except (OSError, ValueError, KeyError, TypeError):
                    pass  # missing or malformed: compared as zeros; the sample itself reports the problem
            if last is None or np.linalg.norm(pose - last) >= threshold:
                kept.append(fr)
                last = pose
        return kept

    def __len__(self) -> int:
        return len(self.entries)

    def _ego_params(self, cap: str, cam: str, frame: str) -> tuple[dict, Path]:
        base = self.root / cap / "Ego_cameras" / cam
        fid = f"{int(frame):06d}" if frame.isdigit() else frame
        return _read_json(base / "params" / f"{fid}.json", "no_camera"), base / "images" / f"{fid}.png"

    def _draw(self, index: int, seed: int) -> Drawn:
        stratum = self._strata[index % len(self._strata)]
        cap, frame, cam, kind = self.entries[int(stratum[(index // len(self._strata)) % len(stratum)])]
        fid = f"{int(frame):06d}" if frame.isdigit() else frame
        if kind == 0:
            params = self._mugsy[cap].get(cam)
            img = self.root / cap / "Mugsy_cameras" / "envmap_per_frame" / "images" / cam / f"{fid}.png"
            if not isinstance(params, dict):
                raise SkipSample("no_camera", f"{cap} camera {cam}")
        else:
            params, img = self._ego_params(cap, cam, frame)
        try:
            R = np.asarray(params["R"], dtype=np.float64).reshape(3, 3)
            t = np.asarray(params["t"], dtype=np.float64).reshape(3) / 1000.0
            fx, fy = (float(v) for v in params["focal"])
            cx, cy = (float(v) for v in params["princpt"])
            dist = (
                np.asarray(params["D"], dtype=np.float64).reshape(-1)[:4]
                if kind == 1 and "D" in params
                else None
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SkipSample("no_camera", f"{cap} camera {cam}: {exc}") from exc
        if not (np.isfinite(R).all() and np.isfinite(t).all() and fx > 0 and fy > 0):
            raise SkipSample("no_camera", f"{cap} camera {cam}: invalid parameters")
        size = _image_size(img, params)
        if size is None:
            raise SkipSample("no_image_size", f"{img} missing and no size in the camera parameters")
        hands = {}
        for s in SIDES:
            path = self.root / cap / "mano_fits" / "params" / f"{frame}_{s}.json"
            if not path.is_file():
                continue
            d = _read_json(path, "bad_mano_params")
            try:
                pose, shape, trans = (
                    np.asarray(d[k], dtype=np.float64).reshape(-1) for k in ("pose", "shape", "trans")
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise SkipSample("bad_mano_params", f"{path}: {exc}") from exc
            if pose.shape != (48,) or shape.shape != (10,) or trans.shape != (3,):
                raise SkipSample(
                    "bad_mano_params", f"{path}: lengths {pose.size}, {shape.size}, {trans.size}"
                )
            if not (np.isfinite(pose).all() and np.isfinite(shape).all() and np.isfinite(trans).all()):
                raise SkipSample("bad_mano_params", f"{path}: non-finite values")
            cam_pose, cam_trans = move_mano(pose, trans, self.hm.root_joint(s, shape), R, t)
            hands[s] = (cam_pose, shape, cam_trans)
        if not hands:
            raise SkipSample("no_mano", f"{cap} frame {frame}")
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        source = {
            "dataset": "reinterhand",
            "split": None,
            "capture": cap,
            "frame": frame,
            "camera": cam,
            "viewpoint": "ego" if kind == 1 else "third",
        }
        return self._new_sample(
            index, seed, size, K, dist, hands, source, str(img) if img.is_file() else None
        )

    def inspect(self) -> dict:
        frames = {(c, f) for c, f, _, _ in self.entries}
        per_cam: dict[str, int] = {}
        for _, _, c, k in self.entries:
            per_cam[("ego/" if k else "") + c] = per_cam.get(("ego/" if k else "") + c, 0) + 1
        return {
            "source": self.name,
            "captures": len({c for c, _ in frames}),
            "frames": len(frames),
            "samples": len(self.entries),
            "cameras": per_cam,
        }
