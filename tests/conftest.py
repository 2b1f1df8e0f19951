import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _project_data_dir(tmp_path_factory):
    """Tagger and CLIP vocabulary prepared into a per-session folder (tests never write to ~/.cache)."""
    os.environ["HANDGEN_DATA"] = str(tmp_path_factory.mktemp("handgen_data"))
    yield


@pytest.fixture(scope="session")
def hand_model():
    from pipeline.hand_model import HandModel

    return HandModel()


@pytest.fixture(scope="session")
def standin_right():
    from pipeline.standin import build_standin

    return build_standin("right")


@pytest.fixture(scope="session")
def standin_left():
    from pipeline.standin import build_standin

    return build_standin("left")


def pose_batch(rng: np.random.Generator, n: int, scale: float = 0.4) -> np.ndarray:
    return rng.normal(0.0, scale, size=(n, 48))
