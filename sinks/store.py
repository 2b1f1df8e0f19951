"""Where outputs go: a local folder (fsync + atomic rename) or any fsspec URL (write, then move).

Every file is written under a temporary name and moved into place only when complete, so a crash leaves
either the previous state or the new complete file, never a partial file under its final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


class StoreError(OSError):
    """An output location that cannot be used (unwritable, full disk, ...); the message is one line."""


def describe_os_error(exc: OSError, path: str) -> str:
    """One line saying what went wrong writing ``path`` (full disk, size limit, permissions, ...)."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on device while writing {path}"
    if exc.errno == errno.EFBIG:
        return f"file size limit exceeded while writing {path}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: {os.strerror(exc.errno)}"
    return f"cannot write {path}: {exc.strerror or exc}"


class Store:
    """Minimal file API over a root: local paths or an fsspec URL ("memory://x", "s3://bucket/x", ...)."""

    def __init__(self, root: str | os.PathLike) -> None:
        root = str(root)
        self.is_local = "://" not in root or root.startswith("file://")
        if self.is_local:
            self.root = Path(root.removeprefix("file://"))
            self.fs = None
        else:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(root)
        self.url = root

    def path(self, name: str) -> str:
        return str(self.root / name) if self.is_local else f"{self.root.rstrip('/')}/{name}"

    def makedirs(self) -> None:
        try:
            if self.is_local:
                self.root.mkdir(parents=True, exist_ok=True)
                probe = self.root / ".write-probe"
                probe.write_bytes(b"")
                probe.unlink()
            else:
                self.fs.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise StoreError(describe_os_error(exc, str(self.root))) from exc

    def exists(self, name: str) -> bool:
        p = self.path(name)
        return os.path.exists(p) if self.is_local else self.fs.exists(p)

    def listdir(self) -> list[str]:
        if self.is_local:
            return sorted(p.name for p in self.root.iterdir()) if self.root.is_dir() else []
        if not self.fs.exists(self.root):
            return []
        return sorted(os.path.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False))

    def read_bytes(self, name: str) -> bytes:
        p = self.path(name)
        if self.is_local:
            return Path(p).read_bytes()
        with self.fs.open(p, "rb") as f:
            return f.read()

    def remove(self, name: str) -> None:
        p = self.path(name)
        with contextlib.suppress(FileNotFoundError):
            if self.is_local:
                os.unlink(p)
            else:
                self.fs.rm(p)

    @contextlib.contextmanager
    def open_write(self, name: str):
        """Open ``name + '.tmp'`` for writing; on success flush, fsync and move it to ``name``."""
        tmp = name + ".tmp"
        p_tmp, p_final = self.path(tmp), self.path(name)
        f = None
        try:
            f = open(p_tmp, "wb") if self.is_local else self.fs.open(p_tmp, "wb")  # noqa: SIM115
            yield f
            f.flush()
            if self.is_local:
                os.fsync(f.fileno())
            f.close()
            f = None
            if self.is_local:
                os.replace(p_tmp, p_final)
                dfd = os.open(str(self.root), os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            else:
                self.fs.mv(p_tmp, p_final)
        except OSError as exc:
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
            with contextlib.suppress(OSError):
                self.remove(tmp)
            raise StoreError(describe_os_error(exc, p_final)) from exc
        except BaseException:
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
            with contextlib.suppress(OSError):
                self.remove(tmp)
            raise

    def write_bytes(self, name: str, data: bytes) -> None:
        """Atomically write ``data`` to ``name``."""
        with self.open_write(name) as f:
            f.write(data)
