"""The 2D hand detector of the evaluation: MediaPipe Hands (classic ``solutions`` API,
``mediapipe==0.10.14``).

``HandDetector`` builds one MediaPipe graph (palm detector + hand-landmark model, both shipped inside the
wheel, so it runs offline), reuses it for every image and closes it deterministically (``close()`` or a
``with`` block). Input: an RGB uint8 image (H, W, 3). Output: one ``Detection`` per hand found.

Conventions (what MediaPipe returns -> what a ``Detection`` holds):

* **Keypoints.** MediaPipe's normalised landmarks put the image's left/top edge at 0 and its right/bottom
  edge at 1, so the centre of pixel ``u`` is at ``(u + 0.5) / W``. Our labels put the centre of pixel ``u``
  at ``u`` (DESIGN section 3, as OpenCV). So ``u = x * W - 0.5`` and ``v = y * H - 0.5``.
* **Joint order.** MediaPipe's 21 landmarks are wrist, thumb CMC, MCP, IP, TIP, index MCP, PIP, DIP, TIP,
  then middle, ring and pinky the same way. Our order (``pipeline.kinematics.JOINT_NAMES``) is wrist,
  thumb1..4, index1..4, middle1..4, ring1..4, pinky1..4 with joint 4 the tip: the same anatomical sequence,
  so ``MEDIAPIPE_TO_JOINTS`` is the identity permutation (``MEDIAPIPE_LANDMARKS`` lists the names side by
  side). Anatomically the points differ a little: MediaPipe's are image-annotated surface landmarks, ours are
  the hand model's kinematic joint centres (and its tip vertices).
* **Handedness.** MediaPipe labels handedness as if the image were mirrored (a selfie camera). Our images are
  camera views, not mirrored, so MediaPipe's "Left" is our ``right`` and its "Right" is our ``left``.
  ``Detection.handedness`` is already converted; ``handedness_score`` is MediaPipe's score for its label (the
  number Hand1000 averages into "Hand Conf."), so it is unchanged by the conversion.
* **Confidence.** The classic API returns no landmark or presence score. The palm detector's score is read
  from the graph's ``palm_detections`` output and given to the landmark set whose palm it overlaps
  (``palm_score``; NaN when none does). The landmark model's hand-presence score is only a threshold
  (``min_presence_confidence``), not an output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import warnings

import numpy as np

from pipeline.errors import HandgenError

logger = logging.getLogger(__name__)

MEDIAPIPE_LANDMARKS = (
    ("WRIST", "wrist"),
    ("THUMB_CMC", "thumb1"),
    ("THUMB_MCP", "thumb2"),
    ("THUMB_IP", "thumb3"),
    ("THUMB_TIP", "thumb4"),
    ("INDEX_FINGER_MCP", "index1"),
    ("INDEX_FINGER_PIP", "index2"),
    ("INDEX_FINGER_DIP", "index3"),
    ("INDEX_FINGER_TIP", "index4"),
    ("MIDDLE_FINGER_MCP", "middle1"),
    ("MIDDLE_FINGER_PIP", "middle2"),
    ("MIDDLE_FINGER_DIP", "middle3"),
    ("MIDDLE_FINGER_TIP", "middle4"),
    ("RING_FINGER_MCP", "ring1"),
    ("RING_FINGER_PIP", "ring2"),
    ("RING_FINGER_DIP", "ring3"),
    ("RING_FINGER_TIP", "ring4"),
    ("PINKY_MCP", "pinky1"),
    ("PINKY_PIP", "pinky2"),
    ("PINKY_DIP", "pinky3"),
    ("PINKY_TIP", "pinky4"),
)
#: our joint ``j`` is MediaPipe landmark ``MEDIAPIPE_TO_JOINTS[j]`` (the identity: the orders coincide)
MEDIAPIPE_TO_JOINTS = np.arange(21)
#: MediaPipe's handedness label -> our side, for non-mirrored (camera-view) images
MEDIAPIPE_HANDEDNESS = {"Left": "right", "Right": "left"}


class DetectorError(HandgenError, RuntimeError):
    """The detector cannot be used (mediapipe missing, bad settings); one line."""


class UnreadableImageError(HandgenError, ValueError):
    """An image the detector cannot take (not uint8 RGB (H, W, 3), empty, or rejected by MediaPipe)."""


@dataclasses.dataclass(frozen=True)
class Detection:
    """One detected hand. keypoints (21, 2) px in our joint order and pixel convention; depth (21,)
    MediaPipe's relative landmark depth (its z, in image-width units, wrist-relative; smaller is nearer);
    handedness 'right' | 'left' (camera view); handedness_score MediaPipe's score of its label; palm_score the
    palm detector's score (NaN when unknown)."""

    keypoints: np.ndarray
    depth: np.ndarray
    handedness: str
    handedness_score: float
    palm_score: float = math.nan

    @property
    def box(self) -> np.ndarray:
        """[x0, y0, x1, y1] px around the keypoints."""
        k = self.keypoints
        return np.array([k[:, 0].min(), k[:, 1].min(), k[:, 0].max(), k[:, 1].max()])

    def to_json(self) -> dict:
        return {
            "keypoints": np.round(self.keypoints, 2).tolist(),
            "handedness": self.handedness,
            "handedness_score": float(self.handedness_score),
            "palm_score": None if math.isnan(self.palm_score) else float(self.palm_score),
        }


def check_image(image) -> np.ndarray:
    """``image`` as a C-contiguous uint8 (H, W, 3) array; ``UnreadableImageError`` otherwise (a grey (H, W)
    image is expanded to three channels; an alpha channel is dropped)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise UnreadableImageError(f"expected a uint8 image, got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise UnreadableImageError(f"expected an RGB image of shape (H, W, 3), got {a.shape}")
    return np.ascontiguousarray(a[:, :, :3])


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence what MediaPipe's C++ side (absl, TFLite) writes to file descriptor 2 while the graph starts."""
    try:
        fd = os.dup(2)
    except OSError:  # no usable stderr: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(fd, 2)
    finally:
        os.close(fd)


def _import_mediapipe():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mediapipe as mp
            from mediapipe.python.solution_base import SolutionBase
            from mediapipe.python.solutions import hands as mp_hands
    except ImportError as exc:
        raise DetectorError(
            f"the MediaPipe detector needs mediapipe==0.10.14 (pip install mediapipe==0.10.14): {exc}"
        ) from exc
    return mp, SolutionBase, mp_hands


def _unit(name: str, value: float) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise DetectorError(f"{name} must be in [0, 1], got {value!r}")
    return v


class HandDetector:
    """MediaPipe Hands in static-image mode, built once and reused; close it (``close()`` / ``with``).

    min_detection_confidence: the palm detector's score threshold (MediaPipe's default 0.5).
    min_presence_confidence: the landmark model's hand-presence threshold (MediaPipe calls it
        ``min_tracking_confidence``; in static-image mode it is that threshold; default 0.5).
    model_complexity: 1 (full landmark model, MediaPipe's default) or 0 (lite).
    max_num_hands: the most hands reported per image (default 2).
    """

    def __init__(
        self,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        model_complexity: int = 1,
        max_num_hands: int = 2,
    ) -> None:
        self.min_detection_confidence = _unit("min_detection_confidence", min_detection_confidence)
        self.min_presence_confidence = _unit("min_presence_confidence", min_presence_confidence)
        if model_complexity not in (0, 1):
            raise DetectorError(f"model_complexity must be 0 or 1, got {model_complexity!r}")
        if int(max_num_hands) < 1:
            raise DetectorError(f"max_num_hands must be >= 1, got {max_num_hands!r}")
        self.model_complexity = int(model_complexity)
        self.max_num_hands = int(max_num_hands)
        _, SolutionBase, mp_hands = _import_mediapipe()
        with _quiet_native_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._graph = SolutionBase(
                binary_graph_path=mp_hands._BINARYPB_FILE_PATH,
                side_inputs={
                    "model_complexity": self.model_complexity,
                    "num_hands": self.max_num_hands,
                    "use_prev_landmarks": False,  # static-image mode: every image is detected afresh
                },
                calculator_params={
                    "palmdetectioncpu__TensorsToDetectionsCalculator.min_score_thresh": (
                        self.min_detection_confidence
                    ),
                    "handlandmarkcpu__ThresholdingCalculator.threshold": self.min_presence_confidence,
                },
                outputs=["multi_hand_landmarks", "multi_handedness", "palm_detections"],
            )
            self._graph.process({"image": np.zeros((64, 64, 3), np.uint8)})  # start the graph while quiet
        self._closed = False

    @property
    def settings(self) -> dict:
        return {
            "detector": "mediapipe-hands",
            "mediapipe": _mediapipe_version(),
            "min_detection_confidence": self.min_detection_confidence,
            "min_presence_confidence": self.min_presence_confidence,
            "model_complexity": self.model_complexity,
            "max_num_hands": self.max_num_hands,
        }

    def detect(self, image) -> list[Detection]:
        """Hands in an RGB uint8 image (H, W, 3): keypoints in pixels, our joint order (module doc)."""
        if self._closed:
            raise DetectorError("the detector is closed")
        img = check_image(image)
        H, W = img.shape[:2]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = self._graph.process({"image": img})
        except (RuntimeError, ValueError) as exc:
            raise UnreadableImageError(f"MediaPipe cannot process the image: {exc}") from exc
        palms = _palm_boxes(out.palm_detections, W, H)
        dets = []
        for lm, hd in zip(out.multi_hand_landmarks or [], out.multi_handedness or [], strict=False):
            pts = np.array([[p.x, p.y, p.z] for p in lm.landmark], dtype=np.float64)[MEDIAPIPE_TO_JOINTS]
            kp = np.stack([pts[:, 0] * W - 0.5, pts[:, 1] * H - 0.5], axis=1)
            cls = hd.classification[0]
            dets.append(
                Detection(
                    keypoints=kp,
                    depth=pts[:, 2],
                    handedness=MEDIAPIPE_HANDEDNESS.get(cls.label, cls.label.lower()),
                    handedness_score=float(cls.score),
                    palm_score=_palm_score(kp, palms),
                )
            )
        return dets

    def close(self) -> None:
        """Release the MediaPipe graph (idempotent)."""
        if not self._closed:
            self._closed = True
            self._graph.close()

    def __enter__(self) -> HandDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a detector that was never closed still frees its graph
        with contextlib.suppress(Exception):
            self.close()


def _mediapipe_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mediapipe")
    except PackageNotFoundError:
        return "unknown"


def _palm_boxes(detections, W: int, H: int) -> list[tuple[np.ndarray, float]]:
    """(box [x0, y0, x1, y1] px, score) of each palm detection."""
    out = []
    for d in detections or []:
        b = d.location_data.relative_bounding_box
        box = np.array([b.xmin * W, b.ymin * H, (b.xmin + b.width) * W, (b.ymin + b.height) * H]) - 0.5
        out.append((box, float(d.score[0]) if len(d.score) else math.nan))
    return out


_PALM_JOINTS = [0, 1, 5, 9, 13, 17]  # wrist, thumb CMC and the finger MCPs: what the palm detector boxes


def _palm_score(kp: np.ndarray, palms: list[tuple[np.ndarray, float]]) -> float:
    """The score of the palm detection whose box holds the most of this hand's palm joints (NaN if none)."""
    best, best_n = math.nan, 0
    pts = kp[_PALM_JOINTS]
    for box, score in palms:
        inside = int(
            (
                (pts[:, 0] >= box[0]) & (pts[:, 0] <= box[2]) & (pts[:, 1] >= box[1]) & (pts[:, 1] <= box[3])
            ).sum()
        )
        if inside > best_n:
            best, best_n = score, inside
    return best
