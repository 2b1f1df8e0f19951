"""How ``hands`` runs Prefect flows in its own process: quiet, with a private temporary API server, and with
the same one-line error contract as ``--no-prefect``.

- ``quiet_logging(verbose)``: our loggers at WARNING (INFO/DEBUG with ``-v``); httpx, httpcore and Prefect's
  own machinery (engine, client, server, uvicorn, alembic, aiosqlite, ...) silent unless ``-v``; no logs sent
  to the API (so no ``--- Error logging to API ---``) and no telemetry. Call it before Prefect is imported:
  Prefect reads its logging settings once, at import.
- ``temporary_server()``: a context manager that starts Prefect's API server in a child process (private
  ``PREFECT_HOME`` and sqlite database in a temporary folder, 127.0.0.1, a port bound before the child starts)
  and points the in-process client at it. The child (``python -m flows.runtime serve``) dies with its parent,
  even after ``kill -9``: ``PR_SET_PDEATHSIG`` on Linux, and a watchdog thread that polls the parent pid
  everywhere. It runs in its own session, so a Ctrl-C in the terminal reaches only the ``hands`` process,
  which then stops the server itself. A server named by ``PREFECT_API_URL`` (environment or profile) is used
  as it is.
- ``no_retry_for_user_errors``: a task ``retry_condition_fn``; a ``HandgenError`` is never retried, anything
  else (``TransientError``, crashes) is.
- ``run_flow(flow, ...)``: calls a flow in-process and re-raises the original exception of a failed run (the
  ``HandgenError`` subclass instance raised in the task), ``KeyboardInterrupt`` as it is.

Nothing here imports Prefect at module level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
INTERRUPTED = "interrupted; continue with --resume"

# loggers of libraries whose records are noise for a command-line user unless -v
_THIRD_PARTY = (
    "prefect",
    "httpx",
    "httpcore",
    "uvicorn",
    "fastapi",
    "alembic",
    "aiosqlite",
    "sqlalchemy",
    "docket",
    "websockets",
    "amplitude",
    "opentelemetry",
)
_QUIET_ENV = {
    "DO_NOT_TRACK": "1",  # Prefect's SDK analytics (client side)
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # the server's telemetry heartbeat (sens-o-matic.prefect.io)
    # nobody reads a temporary server's logs; no "Error logging to API"
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",  # prefect.* (engine, flow/task run loggers, client)
    "PREFECT_INTERNAL_LOGGING_LEVEL": "CRITICAL",  # prefect._internal: its own stderr handler, no propagation
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",  # prefect.server, uvicorn, fastapi in this process
}
_VERBOSE_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
}


_ROOTS: tuple[str, ...] | None = None


def _library_roots() -> tuple[str, ...]:
    """Where the ``_THIRD_PARTY`` packages live (found without importing them)."""
    global _ROOTS
    if _ROOTS is None:
        import importlib.util

        roots = []
        for name in _THIRD_PARTY:
            with contextlib.suppress(ImportError, ValueError):
                spec = importlib.util.find_spec(name)
                if spec is not None and spec.submodule_search_locations:
                    roots.extend(str(Path(p)) + os.sep for p in spec.submodule_search_locations)
        _ROOTS = tuple(roots)
    return _ROOTS


def _is_ours(pathname: str) -> bool:
    """Whether a log record was made by user code (this project, a flow in a script), not inside a library:
    our ``get_run_logger()`` records are logged on Prefect's run loggers but come from our files."""
    if "site-packages" in pathname or "dist-packages" in pathname:
        return False
    return not pathname.startswith(_library_roots())


_VERBOSITY: bool | int | None = None  # the last quiet_logging() setting of this process


class QuietFilter(logging.Filter):
    """Drops records of third-party machinery (``_THIRD_PARTY`` loggers, made by code outside this project)
    below ``threshold``. Records that our code logs through Prefect's run loggers (``get_run_logger()``, named
    ``prefect.flow_runs`` / ``prefect.task_runs``) are ours and pass."""

    def __init__(self, threshold: int = logging.CRITICAL):
        super().__init__("handgen-quiet")
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.threshold or record.name.split(".", 1)[0] not in _THIRD_PARTY:
            return True
        return _is_ours(record.pathname)


def _attach_filter_to_library_handlers(flt: logging.Filter) -> None:
    """Add ``flt`` to the handlers that Prefect set on its own non-propagating loggers (once each)."""
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(lg, logging.Logger) or name.split(".", 1)[0] not in _THIRD_PARTY:
            continue
        for h in lg.handlers:
            if not any(isinstance(f, QuietFilter) for f in h.filters):
                h.addFilter(flt)


def quiet_logging(verbose: bool | int = False, stream=None) -> logging.Handler:
    """Configure logging for the command line; returns the root handler it installs.

    ``verbose`` false: our loggers (``hands``, ``flows``, ``pipeline``, ...) at WARNING; third-party machinery
    (Prefect engine/client/server, httpx, uvicorn, ...) only at CRITICAL; Prefect's flow/task run INFO lines
    (``Beginning flow run``, ``Finished in state``, failure tracebacks) are not printed. ``verbose`` 1: INFO
    for everything (HTTP requests included); 2 or more: DEBUG. In every case: no logs are sent to the Prefect
    API and telemetry is off. Call before Prefect is imported; when it already is, the levels and handlers are
    adjusted in place (best effort)."""
    global _VERBOSITY
    _VERBOSITY = verbose
    level = logging.WARNING if not verbose else logging.INFO if int(verbose) == 1 else logging.DEBUG
    env = _VERBOSE_ENV if verbose else _QUIET_ENV
    os.environ.update(env)
    if verbose:
        os.environ["PREFECT_LOGGING_LEVEL"] = logging.getLevelName(level)

    root = logging.getLogger()
    for h in list(root.handlers):  # replace basicConfig's (or an earlier call's) handler
        if getattr(h, "_handgen", False) or type(h) is logging.StreamHandler:
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._handgen = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    flt = QuietFilter(logging.CRITICAL if not verbose else logging.NOTSET)
    handler.addFilter(flt)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("httpx", "httpcore"):  # INFO for every request; with -v they are shown
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    if "prefect" in sys.modules:  # too late for the environment: adjust what Prefect configured at import
        _adjust_imported_prefect(level, verbose, flt)
    return handler


def _adjust_imported_prefect(level: int, verbose: bool | int, flt: logging.Filter) -> None:
    logging.getLogger("prefect").setLevel(level)
    for name in ("prefect._internal", "prefect.server", "uvicorn", "fastapi"):
        logging.getLogger(name).setLevel(level if verbose else logging.CRITICAL)
    if not verbose:
        _attach_filter_to_library_handlers(flt)
    from prefect.logging.handlers import APILogHandler, PrefectConsoleHandler

    root = logging.getLogger()
    for h in list(root.handlers):  # Prefect's own root console handler (Prefect was imported first)
        if isinstance(h, PrefectConsoleHandler):
            root.removeHandler(h)
    for lg in [root, *logging.Logger.manager.loggerDict.values()]:
        if isinstance(lg, logging.Logger):
            for h in list(lg.handlers):
                if isinstance(h, APILogHandler):
                    lg.removeHandler(h)


# -- retries -----------------------------------------------------------------------------------------------


def _exception_of(state) -> BaseException | None:
    try:
        exc = state.result(raise_on_failure=False)
    except BaseException as err:  # a result that cannot be read: treat its error as the exception
        return err
    return exc if isinstance(exc, BaseException) else None


def retry_unless(*permanent: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A Prefect ``retry_condition_fn`` that retries a failed task run unless its exception is a
    ``HandgenError`` or one of ``permanent``; a ``TransientError`` is always retried."""
    from pipeline.errors import HandgenError, TransientError

    never = (HandgenError, *permanent)

    def retry_condition(task, task_run, state) -> bool:
        exc = _exception_of(state)
        if isinstance(exc, TransientError):
            return True
        return not isinstance(exc, never)

    retry_condition.__qualname__ = f"retry_unless({', '.join(t.__name__ for t in permanent)})"
    return retry_condition


def no_retry_for_user_errors(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: False (no retry) when the task failed with a ``HandgenError`` (bad
    input: a retry cannot fix it), True for a ``TransientError`` and for any other failure."""
    from pipeline.errors import HandgenError, TransientError

    exc = _exception_of(state)
    return isinstance(exc, TransientError) or not isinstance(exc, HandgenError)


# -- running a flow in-process -----------------------------------------------------------------------------


def run_flow(flow_fn, /, *args, **kwargs):
    """Call the Prefect flow ``flow_fn`` in this process and return its result. A failed run re-raises the
    exception its body raised (for a task called directly in the flow: the task's own exception instance,
    e.g. a ``HandgenError`` subclass with its message); ``KeyboardInterrupt`` propagates as it is. A run that
    ends neither completed nor with an exception raises ``RuntimeError`` naming its final state."""
    state = flow_fn(*args, return_state=True, **kwargs)
    if state.is_completed():
        return state.result()
    exc = _exception_of(state)
    if isinstance(exc, BaseException):
        raise exc
    raise RuntimeError(f"flow run ended {state.type.value}: {state.message or state.name}")


# -- the temporary API server ------------------------------------------------------------------------------


def configured_api_url() -> str | None:
    """The API URL that Prefect would use without us (``PREFECT_API_URL`` in the environment, the active
    profile, ``prefect.toml``, ...), or None when Prefect would start its own temporary server. Imports
    Prefect."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def _log_tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


def _template_db() -> Path | None:
    """A migrated, empty server database for this Prefect version in the user's cache folder
    (``$HANDGEN_CACHE``, ``$XDG_CACHE_HOME/handgen`` or ``~/.cache/handgen``): a copy of it starts a server
    without running the database migrations, which take most of a cold start."""
    try:
        from importlib.metadata import version

        from pipeline.weights import user_cache_dir

        return user_cache_dir() / "prefect" / f"server-{version('prefect')}.db"
    except Exception:  # no cache folder, no metadata: start from an empty database
        return None


def _save_template(db: Path, template: Path) -> None:
    """Copy the live, just-migrated ``db`` to ``template`` (sqlite's online backup; atomic rename)."""
    import sqlite3

    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        tmp = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        src, dst = sqlite3.connect(f"file:{db}?mode=ro", uri=True), sqlite3.connect(tmp)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file (no -wal/-shm beside it)
        finally:
            src.close()
            dst.close()
        os.replace(tmp, template)
    except (OSError, sqlite3.Error):  # a read-only cache: the next start migrates again
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)


def _valid_template(path: Path) -> bool:
    """Whether ``path`` is a migrated Prefect database (an sqlite file with an alembic version and block
    types); anything else is removed, so the next start makes a new one."""
    import sqlite3

    if not path.is_file():
        return False
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            ok = bool(con.execute("SELECT version_num FROM alembic_version").fetchone())
            ok = ok and con.execute("SELECT count(*) FROM block_type").fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        ok = False
    if not ok:
        with contextlib.suppress(OSError):
            path.unlink()
    return ok


_PREFIX = "handgen-prefect-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a reused pid: is it still our server?
        return b"flows.runtime" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _sweep_stale(max_age_s: float = 600.0) -> None:
    """Remove the folders of temporary servers that are gone (killed with their parent by SIGKILL)."""
    import shutil

    for d in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        try:
            pid_file = d / "server.pid"
            if pid_file.is_file():
                stale = not _alive(int(pid_file.read_text() or 0))
            else:
                stale = time.time() - d.stat().st_mtime > max_age_s
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)


class TemporaryServer:
    """Prefect's API server in a child process that cannot outlive this one (see the module docstring).

    ``start()`` returns at once (the child imports Prefect's server while we go on); ``wait()`` blocks until
    ``/api/health`` answers; ``stop()`` ends it and removes its folder. The database is a copy of a migrated
    template kept in the user's cache folder (made by the first start; ``template=False``: always migrate a
    fresh one). Start it from the main thread: Linux's parent-death signal fires when the *thread* that
    started the child ends (from another thread only the watchdog is used)."""

    def __init__(self, startup_timeout: float = 120.0, template: bool = True, pdeathsig: bool = True):
        self.startup_timeout = startup_timeout
        self.pdeathsig = pdeathsig
        self.template = _template_db() if template else None
        self.home: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self._ready = False
        self._from_template = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> TemporaryServer:
        if self.proc is not None:
            return self
        import shutil

        _sweep_stale()
        self.home = Path(tempfile.mkdtemp(prefix=_PREFIX))
        db = self.home / "prefect.db"
        self._from_template = False
        if self.template is not None and _valid_template(self.template):
            with contextlib.suppress(OSError):
                shutil.copyfile(self.template, db)
                self._from_template = True
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))  # the port is ours before the child starts: no race for a free port
            sock.listen(128)
            sock.set_inheritable(True)
            self.port = sock.getsockname()[1]
            env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
            env.update(
                {
                    "PREFECT_HOME": str(self.home),
                    "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{db}",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "DO_NOT_TRACK": "1",
                    "PREFECT_UI_ENABLED": "false",
                    # as Prefect's own temporary server: no UI, no scheduler services
                    "PREFECT__SERVER_EPHEMERAL": "1",
                    "PREFECT__SERVER_FINAL": "1",
                    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",  # into server.log, never onto our terminal
                    "PREFECT_LOGGING_TO_API_ENABLED": "false",
                    "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
                }
            )
            if self._from_template:  # already migrated, block types registered
                env.update(
                    {
                        "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
                        "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
                    }
                )
            cmd = [
                sys.executable,
                "-m",
                "flows.runtime",
                "serve",
                "--parent-pid",
                str(os.getpid()),
                "--fd",
                str(sock.fileno()),
                "--home",
                str(self.home),
            ]
            if not self.pdeathsig or threading.current_thread() is not threading.main_thread():
                cmd.append("--no-pdeathsig")  # the watchdog alone
            with open(self.home / "server.log", "wb") as log:
                self.proc = subprocess.Popen(
                    cmd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(sock.fileno(),),
                    start_new_session=True,
                    cwd=str(self.home),
                )
        except BaseException:
            self._cleanup()
            raise
        finally:
            sock.close()
        with contextlib.suppress(OSError):
            (self.home / "server.pid").write_text(str(self.proc.pid))
        return self

    def wait(self) -> str:
        """Block until the server answers ``/api/health``; returns the API URL. A server that fails on a
        copied template is restarted once on a fresh database (and the template is dropped)."""
        import urllib.error
        import urllib.request

        if self._ready:
            return self.api_url
        assert self.proc is not None, "start() first"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP proxy
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                code, tail = self.proc.returncode, _log_tail(self.home / "server.log")
                if self._from_template:
                    with contextlib.suppress(OSError):
                        self.template.unlink()
                    self.stop()
                    self.template = None
                    return self.start().wait()
                self.stop()
                raise RuntimeError(
                    f"the temporary Prefect server exited with code {code}"
                    + (f": {tail.splitlines()[-1]}" if tail else "")
                )
            try:
                with opener.open(f"{self.api_url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the temporary Prefect server did not start in {self.startup_timeout:.0f} s"
                )
            time.sleep(0.1)
        self._ready = True
        if self.template is not None and not self._from_template:
            _save_template(self.home / "prefect.db", self.template)
        return self.api_url

    def stop(self) -> None:
        """Kill the child (its whole process group) and remove its folder. Idempotent. Nothing in the
        temporary database is kept, so a clean shutdown (2 s or more) would only make every run slower."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: pgid == pid
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            proc.wait()
        self._ready = False
        self._cleanup()

    def _cleanup(self) -> None:
        import shutil

        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    def __enter__(self) -> TemporaryServer:
        self.start()
        self.wait()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _drain_prefect_services(timeout: float = 5.0) -> None:
    """Let Prefect's background senders (events, logs) finish while the server is still up."""
    if "prefect" not in sys.modules:
        return
    for mod, cls in (("prefect.events.worker", "EventsWorker"), ("prefect.logging.handlers", "APILogWorker")):
        m = sys.modules.get(mod)
        worker = getattr(m, cls, None) if m is not None else None
        if worker is not None:
            with contextlib.suppress(Exception):
                worker.drain_all(timeout=timeout)


@contextlib.contextmanager
def temporary_server(
    server: TemporaryServer | None = None, *, startup_timeout: float = 120.0, use_configured: bool = True
) -> Iterator[str]:
    """Run the body against a private temporary Prefect API server; yields its API URL.

    ``server``: one already ``start()``-ed (to overlap its start-up with other work), else one is started
    here. It is waited for before the body runs; ``PREFECT_API_URL`` points at it for this process (and for
    child processes started in the body). On leaving, Prefect's background senders are drained, then the
    server is stopped (a second Ctrl-C meanwhile is ignored). With ``use_configured`` and an API URL already
    configured (environment or Prefect profile: a real server), that one is used and nothing is started (a
    ``server`` passed in is stopped)."""
    if _VERBOSITY is not None and "prefect" in sys.modules:
        quiet_logging(_VERBOSITY)  # prefect was imported since: quieten the handlers it configured at import
    if use_configured and os.environ.get("PREFECT_API_URL"):
        if server is not None:
            server.stop()
        yield os.environ["PREFECT_API_URL"]
        return
    server = (server or TemporaryServer(startup_timeout)).start()  # a cheap Popen: overlaps Prefect's import
    try:
        url = configured_api_url() if use_configured else None
    except BaseException:
        server.stop()
        raise
    if url:
        server.stop()
        yield url
        return
    previous = os.environ.get("PREFECT_API_URL")
    try:
        url = server.wait()
        os.environ["PREFECT_API_URL"] = url
        with contextlib.ExitStack() as stack:
            if "prefect" in sys.modules:  # settings already loaded: override them for this block too
                from prefect.settings import PREFECT_API_URL, temporary_settings

                stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
            try:
                yield url
            finally:
                with _sigint_ignored():
                    _drain_prefect_services()
    finally:
        with _sigint_ignored():
            server.stop()
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def prefect_runtime(verbose: bool | int = False, startup_timeout: float = 120.0) -> Iterator[str]:
    """``quiet_logging(verbose)`` then ``temporary_server()``: everything the CLI needs around a flow call."""
    if not _quiet_configured():
        quiet_logging(verbose)
    with temporary_server(startup_timeout=startup_timeout) as url:
        yield url


def _quiet_configured() -> bool:
    return any(getattr(h, "_handgen", False) for h in logging.getLogger().handlers)


# -- the server child: python -m flows.runtime serve --parent-pid N --fd FD --home DIR ---------------------


def _remove_home(home: str) -> None:
    """Remove the server's folder while the server may still be writing to it: renamed first, so that sqlite
    cannot create a new file under the old name, then deleted."""
    import shutil

    gone = f"{home}-gone"
    try:
        os.rename(home, gone)
    except OSError:
        gone = home
    shutil.rmtree(gone, ignore_errors=True)


def _set_pdeathsig(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent (thread) dies."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(sig), 0, 0, 0) == 0  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return False


def _serve(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m flows.runtime serve")
    p.add_argument("--parent-pid", type=int, required=True)
    p.add_argument("--fd", type=int, required=True, help="a listening socket inherited from the parent")
    p.add_argument("--home", required=True, help="the temporary folder; removed on exit")
    p.add_argument("--no-pdeathsig", action="store_true")
    args = p.parse_args(argv)

    def _terminate(signum, frame):  # until uvicorn takes over the signals: leave through finally (cleanup)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which then stops us
    if not args.no_pdeathsig:  # immediate and unblockable; the folder it leaves is swept by the next start
        _set_pdeathsig(signal.SIGKILL)
    if os.getppid() != args.parent_pid:  # the parent died before the death signal was armed
        _remove_home(args.home)
        return 0

    def _watchdog():  # works without prctl too: a parent that died leaves us reparented
        while os.getppid() == args.parent_pid:
            time.sleep(0.2)
        # stop as the parent would: SIGTERM (uvicorn's graceful shutdown, or _terminate before it runs); the
        # server then leaves through the finally below, which removes the folder
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=_watchdog, name="parent-watchdog", daemon=True).start()
    try:
        import uvicorn

        config = uvicorn.Config(
            "prefect.server.api.server:create_app",
            factory=True,
            log_level="error",
            lifespan="on",
            timeout_graceful_shutdown=1,
            access_log=False,
        )
        server = uvicorn.Server(config)
        sock = socket.socket(fileno=args.fd)
        server.run(sockets=[sock])
    finally:
        _remove_home(args.home)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        sys.exit(_serve(sys.argv[2:]))
    sys.exit("usage: python -m flows.runtime serve --parent-pid N --fd FD --home DIR")
