"""MANO hand model through smplx, a chumpy-free MANO pickle loader, and the offline stand-in.

Joint order (21, the project's order): wrist, thumb1..4, index1..4, middle1..4, ring1..4, pinky1..4, where
joint 4 of each finger is its tip vertex (MANO vertex ids: thumb 744, index 320, middle 443, ring 554,
pinky 671) and the other 16 are smplx's kinematic MANO joints (``output.joints`` after ``transl``).

smplx returns the 16 kinematic joints as: 0 wrist, 1-3 index, 4-6 middle, 7-9 pinky, 10-12 ring,
13-15 thumb. ``SMPLX_TO_PROJECT`` reorders them (with the tips appended as ids 16-20: thumb, index,
middle, ring, pinky).

InterHand2.6M orders each hand's 21 joints per finger from tip to base, then the wrist: thumb4, thumb3,
thumb2, thumb1, index4..1, middle4..1, ring4..1, pinky4..1, wrist. ``PROJECT_TO_INTERHAND[k]`` is the
InterHand2.6M position of project joint ``k`` (and ``INTERHAND_TO_PROJECT`` the inverse), so
``interhand_joints[PROJECT_TO_INTERHAND] == project_joints``.

Units: metres everywhere. Pose: 48 axis-angle values (global orient first) relative to MANO's mean pose
(``flat_hand_mean=False``), as InterHand2.6M stores them.

The smplx folder convention: ``smplx.create(DIR, 'mano')`` looks for ``DIR/mano/MANO_RIGHT.pkl``.
``HandModel`` accepts either ``DIR`` holding ``MANO_{RIGHT,LEFT}.pkl`` or a parent with a ``mano/``
subfolder; ``write_standin(DIR)`` writes the files into ``DIR`` and adds a ``DIR/mano`` link to ``DIR``
itself so that both conventions load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from pipeline import standin
from pipeline.errors import HandgenError
from pipeline.kinematics import FINGERS, TIP_VERTEX_IDS
from pipeline.schema import SIDES

logger = logging.getLogger(__name__)

#: Index into concat(smplx 16 joints, 5 tips in FINGERS) for each project joint.
SMPLX_TO_PROJECT = np.array([0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20])
#: InterHand2.6M per-hand joint position of each project joint.
PROJECT_TO_INTERHAND = np.array([20, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12, 19, 18, 17, 16])
INTERHAND_TO_PROJECT = np.argsort(PROJECT_TO_INTERHAND)
MANO_KEYS = (
    "v_template",
    "f",
    "J_regressor",
    "weights",
    "kintree_table",
    "shapedirs",
    "posedirs",
    "hands_components",
    "hands_mean",
)


class HandModelError(HandgenError, ValueError):
    """A MANO folder or file that cannot be used; the message names the file and the problem."""


# ----------------------------------------------------------------------------------------------------
# Chumpy-free loading of official MANO pickles
# ----------------------------------------------------------------------------------------------------
class _ChumpyStub:
    """Takes the place of any chumpy object while unpickling; keeps its state only."""

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"state": state}

    def to_array(self, key: str) -> np.ndarray:
        state = getattr(self, "state", {})
        if "x" in state:
            return np.asarray(state["x"])
        raise HandModelError(
            f"MANO field {key!r} is a derived chumpy expression (state keys {sorted(state)}); "
            "only plain chumpy arrays can be converted"
        )


class _SparseStub:
    """Takes the place of a scipy.sparse matrix while unpickling; rebuilt as a dense array."""

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        self.state = state

    def to_array(self, key: str) -> np.ndarray:
        st = self.state
        shape = tuple(st.get("_shape", st.get("shape", ())))
        fmt = getattr(self, "format", None) or st.get("format")
        if len(shape) != 2 or not {"data", "indices", "indptr"} <= set(st):
            raise HandModelError(f"MANO field {key!r}: unsupported sparse matrix state {sorted(st)}")
        data, indices, indptr = (np.asarray(st[k]) for k in ("data", "indices", "indptr"))
        dense = np.zeros(shape, dtype=np.float64)
        major = shape[1] if fmt == "csc" else shape[0]
        for m in range(major):
            sl = slice(indptr[m], indptr[m + 1])
            if fmt == "csc":
                dense[indices[sl], m] = data[sl]
            else:
                dense[m, indices[sl]] = data[sl]
        return dense


def _sparse_class(fmt: str) -> type:
    return type(f"_{fmt}_stub", (_SparseStub,), {"format": fmt})


_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
}


_SAFE_BUILTINS = {"object": object, "set": set, "frozenset": frozenset, "slice": slice, "complex": complex}


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows numpy arrays, plain containers, and maps chumpy / scipy.sparse objects to stubs.

    Any other global (a function or class from another module) is refused, so a hostile pickle
    cannot run code.
    """

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            import copyreg

            return copyreg._reconstructor
        if module in ("__builtin__", "builtins") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyStub
        if module.startswith("scipy.sparse"):
            for fmt in ("csc", "csr"):
                if name.startswith(fmt):
                    return _sparse_class(fmt)
        raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")


def _to_plain(key: str, value):
    if isinstance(value, (_ChumpyStub, _SparseStub)):
        return value.to_array(key)
    return value


def load_mano_pickle(path: str | os.PathLike) -> dict:
    """Load an official (or converted) MANO pickle without chumpy or scipy.

    Returns a dict of plain numpy arrays / strings with the official keys. Raises ``HandModelError``
    naming the file for a missing file, a refused global, or missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise HandModelError(f"MANO file not found: {path}")
    try:
        raw = _RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
        raise HandModelError(f"cannot read MANO pickle {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise HandModelError(f"MANO pickle {path} holds a {type(raw).__name__}, expected a dict")
    data = {k: _to_plain(k, v) for k, v in raw.items()}
    missing = [k for k in MANO_KEYS if k not in data]
    if missing:
        raise HandModelError(f"MANO pickle {path} lacks keys {missing}")
    for k in MANO_KEYS:
        data[k] = np.asarray(data[k])
    return data


def dump_mano_pickle(data: dict, path: str | os.PathLike) -> None:
    """Write a MANO dict as a plain pickle (numpy arrays only) that ``pickle.load`` and smplx read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(_pickle_bytes(data))
    os.replace(tmp, path)


def _pickle_bytes(data: dict) -> bytes:
    plain = {k: (np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v) for k, v in data.items()}
    return pickle.dumps(plain, protocol=4)


def convert_mano_pickle(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy an official MANO pickle to a chumpy-free pickle with the same keys and values."""
    dump_mano_pickle(load_mano_pickle(src), dst)


# ----------------------------------------------------------------------------------------------------
# The stand-in on disk
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2 * len(standin.STANDIN_VERSIONS))
def standin_data(side: str, version: int = standin.STANDIN_VERSION) -> dict:
    """The stand-in model dict for ``side``, geometry ``version`` (built once per process; see
    ``pipeline.standin``)."""
    return standin.build_standin(side, version)


def _model_sha256(blobs: list[bytes]) -> str:
    """The hand model's sha256 as labels record it: the sha256 of the right and left files' sha256s."""
    digest = hashlib.sha256()
    for blob in blobs:
        digest.update(hashlib.sha256(blob).digest())
    return digest.hexdigest()


@functools.lru_cache(maxsize=len(standin.STANDIN_VERSIONS))
def standin_sha256(version: int = standin.STANDIN_VERSION) -> str:
    """The sha256 that ``HandModel(standin_version=version)`` records (``HandModelInfo.sha256``)."""
    return _model_sha256([_pickle_bytes(standin_data(s, version)) for s in SIDES])


def standin_version_of(sha256: str | None) -> int | None:
    """The stand-in version whose hand model has ``sha256`` (newest first), or None (MANO, or a stand-in
    this code does not know)."""
    return next((v for v in reversed(standin.STANDIN_VERSIONS) if standin_sha256(v) == sha256), None)


def write_standin(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``MANO_RIGHT.pkl`` and ``MANO_LEFT.pkl`` (stand-in) into ``out_dir``.

    Also makes ``out_dir/mano`` point at ``out_dir`` (a relative symlink, or a copy where links are not
    possible) so that ``smplx.create(out_dir, 'mano')`` finds the files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for side in SIDES:
        p = out / f"MANO_{side.upper()}.pkl"
        dump_mano_pickle(standin_data(side), p)
        paths.append(p)
    link = out / "mano"
    if not link.exists():
        try:
            link.symlink_to(".", target_is_directory=True)
        except OSError:
            link.mkdir()
            for p in paths:
                (link / p.name).write_bytes(p.read_bytes())
    return paths[0], paths[1]


def find_mano_files(mano_dir: str | os.PathLike) -> dict[str, Path]:
    """Locate ``MANO_{RIGHT,LEFT}.pkl`` in ``mano_dir`` or ``mano_dir/mano`` (smplx's convention)."""
    root = Path(mano_dir)
    if not root.is_dir():
        raise HandModelError(f"MANO folder not found: {root}")
    for cand in (root, root / "mano"):
        files = {s: cand / f"MANO_{s.upper()}.pkl" for s in SIDES}
        if all(p.is_file() for p in files.values()):
            return files
    raise HandModelError(f"no MANO_RIGHT.pkl and MANO_LEFT.pkl in {root} or {root / 'mano'}")


# ----------------------------------------------------------------------------------------------------
# Forward model
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class HandModelInfo:
    """What the label records about the hand model: ``name`` ('mano' | 'standin') and a sha256."""

    name: str
    sha256: str

    def to_json(self) -> dict:
        return {"name": self.name, "sha256": self.sha256}


@dataclasses.dataclass(frozen=True)
class HandOutput:
    """Posed hands. ``vertices`` (B, 778, 3) and ``joints`` (B, 21, 3): float tensors, metres, project joint
    order, in the frame the pose/trans were given in (camera space for labels)."""

    vertices: torch.Tensor
    joints: torch.Tensor


def fix_left_shapedirs(left: dict, right: dict) -> bool:
    """Apply the known fix for the official left MANO model's flipped shapedirs (x, first beta).

    Modifies ``left`` in place and returns True when the fix was needed.
    """
    if np.abs(left["shapedirs"][:, 0, :] - right["shapedirs"][:, 0, :]).sum() < 1:
        left["shapedirs"] = np.array(left["shapedirs"], copy=True)
        left["shapedirs"][:, 0, :] *= -1
        return True
    return False


class HandModel:
    """Right and left MANO layers (smplx, ``flat_hand_mean=False``, full 45-D pose) in one object.

    ``HandModel()`` uses the embedded stand-in (``standin_version``: an older geometry, to re-render labels
    written with it or finish a run begun with it; None: the current one, ``standin.STANDIN_VERSION``);
    ``HandModel(mano_dir)`` the official (or converted) files.

    ``dtype`` (default: float64 on the CPU, float32 on a GPU): on the CPU, float32 skinning gives results that
    depend on the number of torch threads in the last bits (measured: 13 of 200 random hands differ between 1
    and 2 threads, 0 of 200 in float64), and a run's workers use different thread counts; in float64 the
    labels are the same bytes whichever process computes them.
    """

    def __init__(
        self,
        mano_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        standin_version: int | None = None,
    ) -> None:
        import smplx

        if dtype is None:
            dtype = torch.float64 if torch.device(device).type == "cpu" else torch.float32

        if mano_dir is not None and standin_version is not None:
            raise HandModelError("a stand-in version goes with the embedded stand-in, not with a MANO folder")
        if standin_version is None:
            standin_version = standin.STANDIN_VERSION
        if mano_dir is None:
            if standin_version not in standin.STANDIN_VERSIONS:
                raise HandModelError(
                    f"stand-in version must be one of {standin.STANDIN_VERSIONS}, got {standin_version!r}"
                )
            data = {s: dict(standin_data(s, standin_version)) for s in SIDES}
            blobs = [_pickle_bytes(data[s]) for s in SIDES]
            name = "standin"
        else:
            files = find_mano_files(mano_dir)
            blobs = [files[s].read_bytes() for s in SIDES]
            data = {s: load_mano_pickle(files[s]) for s in SIDES}
            # files written by `hands mano standin` are the stand-in, wherever they live
            name = "standin" if all("standin_version" in data[s] for s in SIDES) else "mano"
        if fix_left_shapedirs(data["left"], data["right"]):
            logger.info("applied the left-hand shapedirs fix to %s", mano_dir)
        self.info = HandModelInfo(name=name, sha256=_model_sha256(blobs))
        self.device = torch.device(device)
        self.dtype = dtype
        self.layers = torch.nn.ModuleDict()
        self.faces: dict[str, np.ndarray] = {}
        #: (45,) mean hand pose per side, radians (what a zero hand pose means).
        self.hands_mean: dict[str, np.ndarray] = {}
        for side in SIDES:
            self.hands_mean[side] = np.asarray(data[side]["hands_mean"], dtype=np.float64).reshape(45)
            struct = smplx.utils.Struct(**data[side])
            with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a note about 10 betas
                layer = smplx.MANO(
                    model_path=str(mano_dir or "standin"),
                    data_struct=struct,
                    is_rhand=(side == "right"),
                    use_pca=False,
                    flat_hand_mean=False,
                    num_betas=10,
                    dtype=dtype,
                )
            self.layers[side] = layer.to(self.device).eval()
            self.faces[side] = np.asarray(data[side]["f"], dtype=np.int64)
        #: per side: (J_regressor[0] @ v_template (3,), J_regressor[0] @ shapedirs (3, 10)) for root joints.
        self._root = {
            side: (
                np.asarray(data[side]["J_regressor"][0]) @ np.asarray(data[side]["v_template"]),
                np.einsum(
                    "v,vcb->cb",
                    np.asarray(data[side]["J_regressor"][0]),
                    np.asarray(data[side]["shapedirs"])[..., :10],
                ),
            )
            for side in SIDES
        }
        self._tips = torch.tensor([TIP_VERTEX_IDS[t] for t in FINGERS], device=self.device)
        self._order = torch.as_tensor(SMPLX_TO_PROJECT, device=self.device)

    @torch.no_grad()
    def forward(self, side: str, pose, shape, trans) -> HandOutput:
        """Pose one side's hands.

        Args:
            side: 'right' or 'left'.
            pose: (B, 48) axis-angle radians (global orient first, relative to the mean pose).
            shape: (B, 10) betas.
            trans: (B, 3) metres.
        Returns: ``HandOutput`` with vertices (B, 778, 3) and joints (B, 21, 3) on the model's device.
        """
        if side not in SIDES:
            raise ValueError(f"side must be 'right' or 'left', got {side!r}")
        pose, shape, trans = (
            torch.as_tensor(x, dtype=self.dtype, device=self.device) for x in (pose, shape, trans)
        )
        for nm, x, width in (("pose", pose, 48), ("shape", shape, 10), ("trans", trans, 3)):
            if x.ndim != 2 or x.shape[1] != width:
                raise ValueError(f"{nm} must have shape (B, {width}), got {tuple(x.shape)}")
            if not torch.isfinite(x).all():
                raise ValueError(f"{nm} contains non-finite values")
        out = self.layers[side](betas=shape, global_orient=pose[:, :3], hand_pose=pose[:, 3:], transl=trans)
        verts = out.vertices
        joints = torch.cat([out.joints, verts[:, self._tips]], dim=1)[:, self._order]
        return HandOutput(vertices=verts, joints=joints)

    __call__ = forward

    def root_joint(self, side: str, shape) -> np.ndarray:
        """(3,) root (wrist) joint of the zero-translation hand for ``shape`` (10,), metres; it does not
        depend on the pose (MANO rotates about it)."""
        base, dirs = self._root[side]
        return base + dirs @ np.asarray(shape, dtype=np.float64).reshape(10)
