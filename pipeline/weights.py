"""Content identity of model weights: the ``weights_id`` recorded in every label's ``generator`` field.

A model is a set of named components, each a folder (``unet``, ``vae``, ``text_encoder``, ``tokenizer``,
``scheduler``, ``guidance``; the generator decides which folders it actually loads). The id is a hash of the
*content* of every file in those folders, so it does not depend on where the model lives, and any change to
any weight, config or tokenizer file gives a new id.

Definition (``ID_FORMAT`` ``handgen-weights-id/1``)::

    h = sha256(b"handgen-weights-id/1\\n")
    for name in sorted(component names):
        h.update(json.dumps([name]).encode() + b"\\n")
        for rel in sorted(POSIX paths of the files in that component's folder, relative to it):
            h.update(json.dumps([name, rel, sha256_hex(file content)]).encode() + b"\\n")
    weights_id = h.hexdigest()[:16]            # 16 lowercase hex characters (64 bits)

Files are every regular file below the folder, recursively, symbolic links followed (a Hugging Face cache
snapshot is made of links); names starting with ``.`` (``.cache/``, ``.gitattributes``, ...) are left out.

File digests are cached per folder in ``<user cache>/weights/<sha256(absolute folder path)[:32]>.json``
(user cache: ``$HANDGEN_CACHE``, else ``$XDG_CACHE_HOME/handgen``, else ``~/.cache/handgen``), keyed by each
file's (relative path, size in bytes, mtime in ns), so a multi-GB model is read once, not on every start. A
file whose mtime is within ``RACY_WINDOW_NS`` of the moment it was hashed is not cached (it could still
change within the same filesystem timestamp tick). The cache is an optimisation only: a missing, corrupt or
unwritable cache is ignored (logged at debug) and the digests are recomputed. Limitation: a file rewritten
with the same size *and* its old mtime restored (``touch -d``, ``rsync -a`` of a different file) is not
noticed; delete the cache file (named in the debug log) after such surgery.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from pipeline.errors import HandgenError

logger = logging.getLogger(__name__)

ID_FORMAT = "handgen-weights-id/1"
CACHE_FORMAT = "handgen-weights-cache/1"
ID_HEX_CHARS = 16
CHUNK_BYTES = 4 << 20  # read size of the streaming file hash (bytes)
RACY_WINDOW_NS = 5 * 10**9  # files modified this recently (ns) before hashing are not cached
LARGE_BYTES = 256 << 20  # hashing more than this (bytes) in one folder is logged at info


class WeightsError(HandgenError):
    """A weights folder that cannot be identified (missing folder, unreadable file); the message names it."""


def user_cache_dir() -> Path:
    """The user's handgen cache folder: ``$HANDGEN_CACHE``, else ``$XDG_CACHE_HOME/handgen`` (absolute values
    only, as the XDG spec says), else ``~/.cache/handgen``. Not created here."""
    if env := os.environ.get("HANDGEN_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "handgen"
    return Path.home() / ".cache" / "handgen"


def sha256_file(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """sha256 of a file's content as 64 lowercase hex characters, read in ``chunk_bytes`` chunks (constant
    memory for multi-GB safetensors files)."""
    h = hashlib.sha256()
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def cache_file(folder: str | Path) -> Path:
    """Where the digest cache of ``folder`` lives: ``<user cache>/weights/<sha256(absolute path)[:32]>.json``.
    The path is resolved (symbolic links followed) first, so two links to one folder share a cache."""
    key = hashlib.sha256(str(Path(folder).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return user_cache_dir() / "weights" / f"{key}.json"


def _list_files(folder: Path) -> list[tuple[str, int, int]]:
    """Every regular file below ``folder`` as (POSIX path relative to it, size in bytes, mtime in ns), sorted
    by path. Symbolic links are followed (a link cycle is cut at the repeated folder); names starting with
    ``.`` are skipped."""
    out: list[tuple[str, int, int]] = []

    def visit(d: Path, rel: str, ancestors: frozenset) -> None:
        st = d.stat()
        here = (st.st_dev, st.st_ino)
        if here in ancestors:
            logger.debug("weights: symbolic link cycle at %s, not followed", d)
            return
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                visit(Path(e.path), f"{rel}{e.name}/", ancestors | {here})
            elif e.is_file():
                st_f = e.stat()
                out.append((f"{rel}{e.name}", st_f.st_size, st_f.st_mtime_ns))

    visit(folder, "", frozenset())
    out.sort()
    return out


def _read_cache(path: Path, folder: Path) -> dict[str, tuple[int, int, str]]:
    """The cached entries ``{relative path: (size, mtime_ns, sha256 hex)}`` of ``folder``, or ``{}`` when the
    cache file is missing, unreadable, corrupt or belongs to another folder. Malformed entries are dropped."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.debug("weights: ignoring unreadable cache %s (%s)", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("folder") != str(folder):
        logger.debug("weights: ignoring cache %s (other format or folder)", path)
        return {}
    files = data.get("files")
    if not isinstance(files, dict):
        logger.debug("weights: ignoring cache %s (no file table)", path)
        return {}
    out: dict[str, tuple[int, int, str]] = {}
    for rel, entry in files.items():
        if (
            isinstance(entry, list)
            and len(entry) == 3
            and all(type(v) is int for v in entry[:2])
            and isinstance(entry[2], str)
            and len(entry[2]) == 64
            and all(c in "0123456789abcdef" for c in entry[2])
        ):
            out[rel] = (entry[0], entry[1], entry[2])
        else:
            logger.debug("weights: ignoring malformed cache entry %r in %s", rel, path)
    return out


def _write_cache(path: Path, folder: Path, entries: Mapping[str, tuple[int, int, str]]) -> None:
    """Write the cache atomically (a temporary file in the same folder, then ``os.replace``). Failures (a
    read-only or full cache location) are logged at debug and otherwise ignored."""
    payload = {
        "format": CACHE_FORMAT,
        "folder": str(folder),
        "files": {rel: list(entry) for rel, entry in sorted(entries.items())},
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False, encoding="utf-8"
        ) as f:
            tmp = f.name
            json.dump(payload, f, indent=1)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        logger.debug("weights: cannot write cache %s (%s); digests will be recomputed next time", path, exc)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def folder_digests(folder: str | Path) -> dict[str, str]:
    """sha256 (64 lowercase hex characters) of every file below ``folder`` (module doc: which files), keyed by
    POSIX path relative to ``folder``, in sorted order. Files whose (size, mtime_ns) match the folder's cache
    are not read again; the others are hashed and the cache is updated."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise WeightsError(f"weights folder not found: {folder}")
    start_ns = time.time_ns()
    try:
        files = _list_files(folder)
    except OSError as exc:
        raise WeightsError(f"cannot list the weights folder {folder}: {exc}") from exc
    cpath = None
    cached: dict[str, tuple[int, int, str]] = {}
    try:
        cpath = cache_file(folder)
    except (OSError, RuntimeError) as exc:  # Path.home() raises RuntimeError when HOME cannot be found
        logger.debug("weights: no cache location (%s)", exc)
    if cpath is not None:
        cached = _read_cache(cpath, folder)

    digests: dict[str, str] = {}
    keep: dict[str, tuple[int, int, str]] = {}
    todo = []
    for rel, size, mtime_ns in files:
        hit = cached.get(rel)
        if hit is not None and hit[:2] == (size, mtime_ns):
            digests[rel] = hit[2]
            keep[rel] = hit
        else:
            todo.append((rel, size, mtime_ns))
    todo_bytes = sum(size for _, size, _ in todo)
    level = logging.INFO if todo_bytes > LARGE_BYTES else logging.DEBUG
    logger.log(level, "weights: hashing %d files (%.1f MB) in %s", len(todo), todo_bytes / 1e6, folder)
    t0 = time.perf_counter()
    for rel, size, mtime_ns in todo:
        path = folder / rel
        try:
            digests[rel] = sha256_file(path)
            st = path.stat()
        except OSError as exc:
            raise WeightsError(f"cannot read the weights file {path}: {exc}") from exc
        unchanged = (st.st_size, st.st_mtime_ns) == (size, mtime_ns)
        if unchanged and mtime_ns < start_ns - RACY_WINDOW_NS:
            keep[rel] = (size, mtime_ns, digests[rel])
        else:
            logger.debug("weights: %s changed recently; its digest is not cached", path)
    logger.debug(
        "weights: %s: %d files, %d from the cache, %d hashed in %.2f s",
        folder,
        len(files),
        len(files) - len(todo),
        len(todo),
        time.perf_counter() - t0,
    )
    if cpath is not None and keep != cached:
        _write_cache(cpath, folder, keep)
    return dict(sorted(digests.items()))


def weights_id(components: Mapping[str, str | Path]) -> str:
    """The content id (module doc: definition) of a model given as ``{component name: folder}``: 16 lowercase
    hex characters. The order of ``components`` does not matter; the names do."""
    h = hashlib.sha256(ID_FORMAT.encode() + b"\n")
    for name in sorted(components):
        h.update(json.dumps([name]).encode() + b"\n")
        for rel, digest in folder_digests(components[name]).items():
            h.update(json.dumps([name, rel, digest]).encode() + b"\n")
    return h.hexdigest()[:ID_HEX_CHARS]
