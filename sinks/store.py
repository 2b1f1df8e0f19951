"""Where outputs go: a local folder, S3 (``s3://``) or any other fsspec URL (``memory://``, ``gs://``, ...).

A file never shows up partially under its final name; a crash leaves either the previous state or the new,
complete file:

* local folders: written under a temporary name, flushed, fsynced, renamed into place (``os.replace``) and
  the folder fsynced;
* S3: uploaded straight to the final key. An S3 PUT, and a multipart upload (files over one 50 MB block),
  is atomic: the object is not visible until the upload completes, and an upload that fails or is
  abandoned is aborted and never becomes visible. The temporary name is not used there: "write a temporary
  object, then move it" would be a server-side copy (for a multi-GB shard: seconds to minutes, and a
  second copy billed meanwhile) followed by a delete, with a window in which both names exist and a crash
  that leaves the temporary object behind; it gives nothing more. Shard writers rely on "a complete shard
  exists <=> its ``.tar`` exists, and the ``.meta.json`` report is written before the ``.tar``": on S3 the
  report's PUT completes before the shard's upload is completed. A process killed mid-upload leaves an
  incomplete multipart upload, invisible to listings but billed until aborted; give buckets a lifecycle
  rule "AbortIncompleteMultipartUpload" (e.g. after 1 day);
* other fsspec filesystems: written under the temporary name, then moved (``fs.mv``).

``create_exclusive`` creates a file only if it does not exist, atomically (``O_EXCL``-like; see there), for
claims and locks. Listings and existence checks always ask the store (fsspec's listing cache is dropped
first), so they see what other processes wrote.

The S3 endpoint and credentials come from the usual AWS settings (environment, ``~/.aws``): for an
S3-compatible server set ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``), honoured by botocore >= 1.31.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
import uuid
from pathlib import Path

from pipeline.errors import HandgenError

logger = logging.getLogger(__name__)

_ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a"})
"""fsspec protocols whose files are uploaded straight to the final name (see module doc)."""

_LINK_UNSUPPORTED = frozenset(
    getattr(errno, n)
    for n in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EMLINK", "EXDEV")
    if hasattr(errno, n)
)
"""``os.link`` errors meaning "this filesystem has no hard links": ``create_exclusive`` falls back to
O_EXCL."""

_CONFLICT_CODES = frozenset({"ConditionalRequestConflict", "OperationAborted", "409"})
"""S3 error codes for "a concurrent conditional write on this key is in progress": try again."""

_UNSUPPORTED_CODES = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest", "501"})
"""S3 error codes by which a server refuses the ``If-None-Match`` header it does not implement."""

# serialises the check-then-write fallback of create_exclusive within a process
_exclusive_lock = threading.Lock()
_conditional_put: dict[tuple, bool] = {}  # (fs class, endpoint, bucket) -> server honours If-None-Match: *
_warned: set[str] = set()


class StoreError(HandgenError, OSError):
    """An output location that cannot be used (unwritable, full disk, ...); the message is one line."""


def describe_os_error(exc: OSError, path: str) -> str:
    """One line saying what went wrong writing ``path`` (full disk, size limit, permissions, ...)."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on device while writing {path}"
    if exc.errno == errno.EFBIG:
        return f"file size limit exceeded while writing {path}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: {os.strerror(exc.errno)}"
    return f"cannot write {path}: {_first_line(exc.strerror or exc)}"


def _first_line(obj: object) -> str:
    text = str(obj).strip()
    return text.splitlines()[0] if text else type(obj).__name__


def _client_errors() -> tuple[type[BaseException], ...]:
    """Exceptions of the object-store clients that are not ``OSError``s (botocore's connection and credential
    errors, which s3fs passes through untranslated)."""
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return ()
    return (BotoCoreError,)


def _s3_code(exc: BaseException) -> str | None:
    """The S3 error code (``PreconditionFailed``, ``NoSuchBucket``, ...) behind an s3fs exception, if any."""
    for e in (exc, exc.__cause__, exc.__context__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            err = response.get("Error") or {}
            code = (
                err.get("Code") or str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")) or None
            )
            return str(code) if code is not None else None
    return None


def _warn_once(key: str, msg: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg, *args)


class Store:
    """Minimal file API over a root: a local folder or an fsspec URL ("s3://bucket/x", "memory://x", ...).

    Names are file names directly under the root. ``read_bytes`` raises ``FileNotFoundError`` for a missing
    file; failures to write raise ``StoreError`` with a one-line message.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        root = str(root)
        self.is_local = "://" not in root or root.startswith("file://")
        if self.is_local:
            self.root = Path(root.removeprefix("file://"))
            self.fs = None
            self.protocol = "file"
        else:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(root)
            proto = self.fs.protocol
            self.protocol = proto if isinstance(proto, str) else proto[0]
        self.url = root
        self.is_s3 = self.protocol in _ATOMIC_PUT_PROTOCOLS

    def path(self, name: str) -> str:
        """Where ``name`` is: a local path, or a full URL (``s3://bucket/run/name``) that names it for
        messages and for other tools (``Store``, ``open_shards``, ``save_image``) as well as for
        ``self.fs``."""
        if self.is_local:
            return str(self.root / name)
        return self.fs.unstrip_protocol(f"{self.root.rstrip('/')}/{name}")

    # -- folder ----------------------------------------------------------------------------------------------
    def makedirs(self) -> None:
        """Make sure the root exists and can be written: create the folder (local, fsspec), then write and
        remove a probe file. On S3 a "folder" needs no creating, but the bucket must exist (it is not created:
        buckets carry region, policy and billing settings that are the owner's choice)."""
        probe = f".write-probe-{uuid.uuid4().hex[:12]}"
        try:
            if self.is_local:
                self.root.mkdir(parents=True, exist_ok=True)
                (self.root / probe).write_bytes(b"")
                (self.root / probe).unlink()
                return
            if not self.is_s3:
                self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(self.path(probe), b"")
            self.fs.rm_file(self.path(probe))
        except (OSError, *_client_errors()) as exc:
            raise self._write_error(exc, self.url) from exc

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists now (asks the store, not a cached listing)."""
        p = self.path(name)
        if self.is_local:
            return os.path.exists(p)
        self.fs.invalidate_cache(p)
        with self._client_errors_as_store_error(name, "check"):
            return self.fs.exists(p)

    def listdir(self) -> list[str]:
        """Sorted names directly under the root (empty when it does not exist); never a cached listing, so
        files written by other processes show."""
        if self.is_local:
            return sorted(p.name for p in self.root.iterdir()) if self.root.is_dir() else []
        self.fs.invalidate_cache(self.root)
        with self._client_errors_as_store_error("", "list"):
            try:
                entries = self.fs.ls(self.root, detail=False)
            except FileNotFoundError:
                return []
        root = self.fs._strip_protocol(self.root).rstrip("/")
        names = (os.path.basename(p.rstrip("/")) for p in entries if p.rstrip("/") != root)
        return sorted(n for n in names if n)

    # -- reading ---------------------------------------------------------------------------------------------
    def read_bytes(self, name: str) -> bytes:
        """The content of ``name``; ``FileNotFoundError`` when it does not exist."""
        p = self.path(name)
        if self.is_local:
            return Path(p).read_bytes()
        # cat_file fetches the object in one request; fs.open would trust a cached (possibly stale) size
        with self._client_errors_as_store_error(name, "read"):
            return self.fs.cat_file(p)

    def read_text(self, name: str) -> str:
        """The content of ``name`` decoded as UTF-8."""
        return self.read_bytes(name).decode("utf-8")

    def modified(self, name: str) -> float | None:
        """Last modification of ``name`` as Unix time (the store's clock on object stores; S3 has 1 s
        resolution), or None when it does not exist or the filesystem does not say."""
        p = self.path(name)
        if self.is_local:
            try:
                return os.stat(p).st_mtime
            except FileNotFoundError:
                return None
        self.fs.invalidate_cache(p)
        with self._client_errors_as_store_error(name, "check"):
            try:
                return self.fs.modified(p).timestamp()
            except FileNotFoundError:
                return None
            except (NotImplementedError, IsADirectoryError, AttributeError, TypeError):
                pass
            try:
                info = self.fs.info(p)
            except FileNotFoundError:
                return None
        for key in ("mtime", "LastModified", "last_modified", "updated", "modified"):
            v = info.get(key)
            if isinstance(v, (int, float)):
                return float(v)
            if hasattr(v, "timestamp"):
                return v.timestamp()
        return None

    # -- writing ---------------------------------------------------------------------------------------------
    def remove(self, name: str) -> None:
        """Remove ``name``; a missing file is not an error."""
        p = self.path(name)
        with contextlib.suppress(FileNotFoundError):
            if self.is_local:
                os.unlink(p)
            else:
                with self._client_errors_as_store_error(name, "remove"):
                    self.fs.rm_file(p)
                self.fs.invalidate_cache(p)

    @contextlib.contextmanager
    def open_write(self, name: str, tmp_name: str | None = None):
        """A binary file that becomes ``name`` only when the block ends without an exception (module doc).

        Local and generic fsspec: written as ``tmp_name`` (default ``name + '.tmp'``), then flushed, fsynced
        and renamed to ``name``; concurrent writers of one name pass distinct ``tmp_name``s. S3: uploaded
        straight to ``name`` (``tmp_name`` is not used); on an exception the upload is aborted and nothing
        becomes visible. Either way a failure leaves the previous ``name``, if any, untouched.
        """
        if self.is_s3:
            with self._open_write_direct(name) as f:
                yield f
            return
        tmp = tmp_name or name + ".tmp"
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
                self._fsync_dir()
            else:
                self.fs.mv(p_tmp, p_final)
        except (OSError, *_client_errors()) as exc:
            self._drop(f, tmp)
            raise self._write_error(exc, self.path(name)) from exc
        except BaseException:
            self._drop(f, tmp)
            raise

    @contextlib.contextmanager
    def _open_write_direct(self, name: str):
        """An upload straight to ``name`` that completes on success and is aborted otherwise (S3)."""
        p = self.path(name)
        f = None
        try:
            f = self.fs.open(p, "wb")
            yield f
            f.flush()
            f.close()  # completes the PUT / multipart upload: the object appears whole, now
            f = None
        except (OSError, *_client_errors()) as exc:
            self._abort_upload(f)
            raise self._write_error(exc, self.path(name)) from exc
        except BaseException:
            self._abort_upload(f)
            raise
        finally:
            self.fs.invalidate_cache(p)

    @staticmethod
    def _abort_upload(f) -> None:
        """Abort an unfinished upload; it must not be closed, which would complete it with partial data."""
        if f is None:
            return
        with contextlib.suppress(Exception):
            f.discard()  # s3fs: aborts the multipart upload, drops the buffer
        f.closed = True  # so that neither close() nor garbage collection commits the partial object

    def _drop(self, f, tmp: str) -> None:
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
        with contextlib.suppress(OSError, *_client_errors()):
            self.remove(tmp)

    def _fsync_dir(self) -> None:
        dfd = os.open(str(self.root), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def write_bytes(self, name: str, data: bytes, tmp_name: str | None = None) -> None:
        """Atomically write ``data`` to ``name`` (through ``tmp_name``, see ``open_write``)."""
        with self.open_write(name, tmp_name) as f:
            f.write(data)

    # -- exclusive create ------------------------------------------------------------------------------------
    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Create ``name`` holding ``data`` only if it does not exist: True if this call created it, False if
        it already existed. Of any number of concurrent callers (threads, processes, hosts) exactly one gets
        True, and every reader sees either no file or the whole of ``data``.

        * Local: ``data`` goes to a private temporary file (``.<name>.<random>.tmp``, fsynced), which is then
          hard-linked to ``name``; ``link`` fails when ``name`` exists, atomically (also on NFS). Where the
          filesystem has no hard links: ``O_CREAT | O_EXCL``, write, fsync (a reader may then briefly see an
          empty file). The folder is fsynced.
        * S3: a conditional PUT (``If-None-Match: *``): the server refuses it with 412 when the key exists;
          a 409 (another conditional write of the key in flight) is retried. Whether the server honours the
          header is checked once per bucket (AWS S3 does since 2024-08, as do moto and recent MinIO); where it
          does not, a warning is logged and the check-then-write fallback below is used. If a PUT succeeds but
          its response is lost and the client's retry then gets 412, this returns False although the file is
          the caller's: put something unique to the caller (an owner id) in ``data`` to recognise that case.
        * Other fsspec filesystems: ``fs.pipe_file(..., mode="create")``, under a process-wide lock. That is
          atomic within this process (all of ``memory://``) and across processes only where the filesystem
          implements it as a conditional write (recent gcsfs and adlfs do); a warning says so once.
        """
        p = self.path(name)
        if self.is_local:
            return self._create_exclusive_local(name, data)
        if self.is_s3 and self._honours_if_none_match():
            return self._create_exclusive_s3(name, data)
        if self.protocol != "memory":
            _warn_once(
                f"excl:{self.protocol}",
                "create_exclusive on %s:// is atomic across processes only if %s implements a conditional "
                "create; claims there are best-effort",
                self.protocol,
                type(self.fs).__name__,
            )
        with _exclusive_lock, self._client_errors_as_store_error(name, "write"):
            self.fs.invalidate_cache(p)
            try:
                self.fs.pipe_file(p, data, mode="create")
            except FileExistsError:
                return False
            except OSError as exc:
                raise self._write_error(exc, self.path(name)) from exc
            finally:
                self.fs.invalidate_cache(p)
            return True

    def _create_exclusive_local(self, name: str, data: bytes) -> bool:
        p = self.path(name)
        for _ in range(3):
            tmp = str(self.root / f".{name}.{uuid.uuid4().hex[:12]}.tmp")
            try:
                with open(tmp, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, p)
                except FileExistsError:
                    return False
                except FileNotFoundError:
                    if not self.root.is_dir():
                        raise
                    continue  # our temporary file was removed under us by a cleaner: try again
                except OSError as exc:
                    if exc.errno not in _LINK_UNSUPPORTED:
                        raise
                    return self._create_exclusive_o_excl(p, data)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                self._fsync_dir()
                return True
            except OSError as exc:
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(describe_os_error(exc, p)) from exc
        raise StoreError(
            f"cannot write {p}: its temporary file kept disappearing (another process removes *.tmp)"
        )

    def _create_exclusive_o_excl(self, p: str, data: bytes) -> bool:
        try:
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._fsync_dir()
        return True

    def _create_exclusive_s3(self, name: str, data: bytes) -> bool:
        p = self.path(name)
        delay = 0.05
        try:
            for attempt in range(8):
                try:
                    self.fs.pipe_file(p, data, mode="create")
                    return True
                except FileExistsError:
                    return False
                except OSError as exc:
                    if _s3_code(exc) not in _CONFLICT_CODES:
                        raise
                    logger.debug("conditional PUT of %s conflicted (attempt %d); retrying", p, attempt + 1)
                    time.sleep(delay * (1 + uuid.uuid4().int % 100 / 100))
                    delay = min(delay * 2, 2.0)
            if self.exists(name):  # still conflicting: someone else's conditional write is winning
                return False
            raise StoreError(
                f"cannot create {self.path(name)}: concurrent conditional writes kept conflicting"
            )
        except StoreError:
            raise
        except (OSError, *_client_errors()) as exc:
            raise self._write_error(exc, self.path(name)) from exc
        finally:
            self.fs.invalidate_cache(p)

    def _honours_if_none_match(self) -> bool:
        """Whether this S3 server refuses a conditional PUT of an existing key (checked once per bucket with a
        probe object: create, create again, which must fail, remove)."""
        bucket = self.root.split("/", 1)[0]
        client_kwargs = getattr(self.fs, "client_kwargs", {}) or {}
        endpoint = (
            getattr(self.fs, "endpoint_url", None)
            or client_kwargs.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        key = (type(self.fs).__name__, endpoint, bucket)
        if key in _conditional_put:
            return _conditional_put[key]
        probe = self.path(f".create-probe-{uuid.uuid4().hex[:12]}")
        supported = True
        try:
            self.fs.pipe_file(probe, b"", mode="create")
            try:
                self.fs.pipe_file(probe, b"", mode="create")
                supported = False  # the second create went through: the header was ignored
            except FileExistsError:
                pass
        except OSError as exc:
            if _s3_code(exc) not in _UNSUPPORTED_CODES:
                raise self._write_error(exc, self.url) from exc
            supported = False
        except _client_errors() as exc:
            raise self._write_error(exc, self.url) from exc
        finally:
            with contextlib.suppress(Exception):
                self.fs.rm_file(probe)
        if not supported:
            _warn_once(
                f"ifnonematch:{endpoint}:{bucket}",
                "the S3 server at %s does not honour conditional PUTs (If-None-Match); exclusive creates in "
                "bucket %s are best-effort",
                endpoint or "AWS",
                bucket,
            )
        _conditional_put[key] = supported
        return supported

    def _write_error(self, exc: BaseException, where: str) -> StoreError:
        """A one-line ``StoreError`` for a failed write of ``where``: a missing bucket, full disk, no
        permission, no connection to the object store, ..."""
        if self.is_s3 and _s3_code(exc) == "NoSuchBucket":
            bucket = self.root.split("/", 1)[0]
            return StoreError(f"cannot write {where}: bucket '{bucket}' does not exist (create it first)")
        if isinstance(exc, OSError):
            return StoreError(describe_os_error(exc, where))
        return StoreError(f"cannot write {where}: {_first_line(exc)}")

    @contextlib.contextmanager
    def _client_errors_as_store_error(self, name: str, verb: str):
        """Turn object-store client errors that are not ``OSError``s (no connection, no credentials) into a
        one-line ``StoreError``; ``OSError``s (``FileNotFoundError``, ...) pass through."""
        try:
            yield
        except _client_errors() as exc:
            raise StoreError(f"cannot {verb} {self.path(name)}: {_first_line(exc)}") from exc
