"""flows.runtime: Prefect in the ``hands`` process keeps the one-line error contract, is quiet, and leaves no
temporary server behind (kill -9, Ctrl-C).

The end-to-end tests run a tiny flow (defined in a script written here, not the real generate flow) in a
subprocess under the runtime helpers, with the same error handling as ``flows.cli.main``. One migrated
server database is made per session (the template that every temporary server then copies).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows import runtime
from pipeline.errors import HandgenError, TransientError

REPO = Path(__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SCRIPT = textwrap.dedent('''
    import os, signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a harness may start us with SIGINT ignored
    from flows import runtime
    runtime.quiet_logging(False)
    from pipeline.errors import HandgenError

    class BadInput(HandgenError):
        """A user error raised inside a task."""

    def main(mode, work):
        try:
            srv = runtime.TemporaryServer(pdeathsig=os.environ.get("T_PDEATHSIG", "1") == "1")
            with runtime.temporary_server(srv):
                with open(os.path.join(work, "server"), "w") as f:
                    f.write(f"{srv.pid} {srv.home}")
                if mode == "serve":
                    time.sleep(120)
                from prefect import flow, task

                @task(retries=2, retry_delay_seconds=0, retry_condition_fn=runtime.no_retry_for_user_errors)
                def step(mode):
                    with open(os.path.join(work, "runs"), "a") as f:
                        f.write("x")
                    if mode == "fail":
                        raise BadInput("model folder not found: /nonexistent/qwen")
                    if mode == "sleep":
                        time.sleep(120)
                    return 42

                @flow(name="tiny")
                def tiny(mode):
                    return step(mode)

                try:
                    print("result", runtime.run_flow(tiny, mode), flush=True)
                except BadInput as exc:  # the original exception instance, not a Prefect wrapper
                    print("caught", type(exc).__name__, flush=True)
                    raise
        except HandgenError as exc:
            print(f"hands: error: {exc.one_line()}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print(f"hands: {runtime.INTERRUPTED}", file=sys.stderr)
            return 130
        return 0

    sys.exit(main(sys.argv[1], sys.argv[2]))
''')


@pytest.fixture(scope="session")
def server_cache(tmp_path_factory):
    """A per-session ``HANDGEN_CACHE`` holding the migrated template database (made once, here)."""
    cache = tmp_path_factory.mktemp("handgen_cache")
    old = os.environ.get("HANDGEN_CACHE")
    os.environ["HANDGEN_CACHE"] = str(cache)
    try:
        with runtime.TemporaryServer(startup_timeout=300) as srv:
            assert srv.template is not None
        assert srv.template.is_file(), "the first start saves a template database"
    finally:
        if old is None:
            os.environ.pop("HANDGEN_CACHE", None)
        else:
            os.environ["HANDGEN_CACHE"] = old
    return cache


@pytest.fixture
def tiny(tmp_path, server_cache):
    """(argv, env, work folder) to run the tiny flow script in a subprocess."""
    script = tmp_path / "tiny_flow.py"
    script.write_text(SCRIPT)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        {
            "HANDGEN_CACHE": str(server_cache),
            "PREFECT_HOME": str(tmp_path / "prefect_home"),
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "HF_HUB_OFFLINE": "1",
        }
    )
    return (lambda mode: [sys.executable, str(script), mode, str(work)]), env, work


def _wait_for(path: Path, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text():
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{path} did not appear in {timeout:.0f} s")


def _gone(pid: int) -> bool:
    """No such process, or a zombie (dead, waiting for its new parent to reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return any(line.split()[1:2] == ["Z"] for line in status.splitlines() if line.startswith("State:"))


def _wait_gone(pid: int, timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while not _gone(pid):
        assert time.monotonic() - t0 < timeout, f"server process {pid} still runs {timeout:.0f} s later"
        time.sleep(0.05)
    return time.monotonic() - t0


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# -- end to end ----------------------------------------------------------------------------------------------


def test_user_error_in_task_is_one_line_and_not_retried(tiny):
    argv, env, work = tiny
    r = subprocess.run(argv("fail"), env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == ["hands: error: model folder not found: /nonexistent/qwen"], r.stderr
    assert "Traceback" not in r.stderr + r.stdout and "httpx" not in r.stderr
    assert "caught BadInput" in r.stdout  # run_flow re-raised the task's own exception
    assert (work / "runs").read_text() == "x", "a HandgenError is not retried"


def test_success_prints_nothing_on_stderr(tiny):
    argv, env, work = tiny
    r = subprocess.run(argv("ok"), env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.splitlines() == ["result 42"]
    pid, home = _wait_for(work / "server").split()
    assert _gone(int(pid)) and not Path(home).exists(), "the server is stopped and its folder removed"


@linux_only
def test_sigint_exits_130_with_one_line_and_stops_the_server(tiny):
    argv, env, work = tiny
    proc = subprocess.Popen(
        argv("sleep"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(work / "runs")  # the task is running
        pid = int(_wait_for(work / "server").split()[0])
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the foreground process group
        out, err = proc.communicate(timeout=30)
    finally:
        _stop(proc)
    assert proc.returncode == 130, err
    assert err.splitlines() == ["hands: interrupted; continue with --resume"], err
    assert "Traceback" not in err
    _wait_gone(pid, timeout=5)


@linux_only
@pytest.mark.parametrize("pdeathsig", [True, False], ids=["pdeathsig", "watchdog"])
def test_kill_9_leaves_no_server(tiny, pdeathsig):
    argv, env, work = tiny
    env = {**env, "T_PDEATHSIG": "1" if pdeathsig else "0"}
    proc = subprocess.Popen(argv("serve"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid, home = _wait_for(work / "server").split()
        assert not _gone(int(pid))
        proc.kill()  # SIGKILL: no atexit, no finally
        proc.wait()
        _wait_gone(int(pid), timeout=10)
    finally:
        _stop(proc)
    if pdeathsig:  # killed outright: its folder is swept by the next start
        assert Path(home).exists()
        runtime._sweep_stale()
    deadline = time.monotonic() + 5
    while Path(home).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(home).exists()


# -- units (no server) ---------------------------------------------------------------------------------------


class _State:
    def __init__(self, exc):
        self.exc = exc

    def result(self, raise_on_failure=True):
        return self.exc


class _UserError(HandgenError):
    pass


class _Flaky(TransientError):
    pass


def test_retry_condition():
    cond = runtime.no_retry_for_user_errors
    assert cond(None, None, _State(_UserError("bad"))) is False
    assert cond(None, None, _State(_Flaky("busy"))) is True
    assert cond(None, None, _State(RuntimeError("crash"))) is True
    unless = runtime.retry_unless(FileNotFoundError)
    assert unless(None, None, _State(FileNotFoundError("x"))) is False
    assert unless(None, None, _State(_UserError("bad"))) is False
    assert unless(None, None, _State(OSError("flaky disk"))) is True


def _record(name: str, level: int, pathname: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, pathname, 1, "message", None, None)


def test_quiet_filter_keeps_ours_drops_library_machinery():
    prefect_dir = importlib.util.find_spec("prefect").submodule_search_locations[0]
    engine = os.path.join(prefect_dir, "task_engine.py")
    flt = runtime.QuietFilter(logging.CRITICAL)
    assert not flt.filter(
        _record("prefect.task_runs", logging.ERROR, engine)
    )  # "Task run failed" + traceback
    assert not flt.filter(_record("httpx", logging.INFO, "/x/site-packages/httpx/_client.py"))
    assert not flt.filter(_record("prefect.server.services.telemetry", logging.ERROR, engine))
    assert flt.filter(_record("prefect.task_runs", logging.CRITICAL, engine))
    assert flt.filter(
        _record("prefect.task_runs", logging.WARNING, str(REPO / "flows" / "generate.py"))
    )  # ours
    assert flt.filter(_record("sinks.preview", logging.WARNING, str(REPO / "sinks" / "preview.py")))
    assert runtime.QuietFilter(logging.NOTSET).filter(_record("prefect.task_runs", logging.INFO, engine))


def test_configured_api_url_is_used_as_is(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with runtime.temporary_server() as url:
        assert url == "http://127.0.0.1:9/api"
