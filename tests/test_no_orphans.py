"""Nothing Keel starts outlives it: `keel run` killed with SIGKILL leaves no Temporal dev
server and no model process behind, and a dev server that something else left on Keel's data
file is reported in one line instead of used."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from activities.models.llama_server import how_it_ended
from keel._lifeline import SHUTDOWN_GRACE_S, bound_to_this_process
from keel._local_server import stop_process
from keel._ports import free_port, port_open
from keel.settings import settings_from_env
from temporal.devserver import leftover_dev_server, listener_pid, temporal_cli
from tests.conftest import REPO

KEEL_RUN_TIMEOUT_S = 300


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped by whoever adopted it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> dict[int, str]:
    """The live child processes of `pid`: pid -> command line."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if parent == pid and _alive(int(proc.name)):
            found[int(proc.name)] = argv
    return found


def _wait_until(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def _dev_port() -> int:
    """A KEEL_DEV_PORT for an embedded dev server: free, and its Web UI's (1000 above) too."""
    while True:
        port = free_port()
        if port + 1000 < 65536 and not port_open("127.0.0.1", port + 1000):
            return port


def _keel_env(home: Path, dev_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    return env | {"KEEL_HOME": str(home), "KEEL_DEV_PORT": str(dev_port), **extra}


def test_a_bound_child_dies_with_its_parent_however_the_parent_ends() -> None:
    parent = subprocess.Popen(
        [
            sys.executable, "-c",
            "import subprocess, sys, time\n"
            "from keel._lifeline import bound_to_this_process\n"
            "child = subprocess.Popen(bound_to_this_process(['sleep', '300']))\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(300)\n",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    _wait_until(lambda: Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sleep"), "exec")
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    _wait_until(lambda: not _alive(child), "the child to die with its parent", timeout_s=10)


def test_a_bound_child_is_refused_from_a_thread_that_may_end_before_the_process() -> None:
    import threading

    errors: list[Exception] = []

    def start() -> None:
        try:
            bound_to_this_process(["true"])
        except RuntimeError as err:
            errors.append(err)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    assert [str(e) for e in errors] == ["start a child bound to this process from the main thread"]


def test_how_a_process_ended_reads_as_words() -> None:
    assert how_it_ended(-11) == "was killed by SIGSEGV"
    assert how_it_ended(-9) == "was killed by SIGKILL"
    assert how_it_ended(1) == "exited with code 1"


def test_the_embedded_dev_server_port_is_a_setting() -> None:
    default = settings_from_env({})
    assert (default.temporal_address, default.temporal_ui_url) == (
        "127.0.0.1:7233",
        "http://127.0.0.1:8233",
    )
    moved = settings_from_env({"KEEL_DEV_PORT": "17233"})
    assert (moved.temporal_address, moved.temporal_ui_url) == (
        "127.0.0.1:17233",
        "http://127.0.0.1:18233",
    )
    assert moved.uses_embedded_temporal
    cluster = settings_from_env({"KEEL_DEV_PORT": "17233", "KEEL_TEMPORAL_ADDRESS": "t:7233"})
    assert cluster.temporal_address == "t:7233" and not cluster.uses_embedded_temporal


def _keel_run_planning(env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[int, str]]:
    """`keel run` on the real local model and an embedded dev server, once both run."""
    keel = subprocess.Popen(
        [sys.executable, "-m", "keel.cli", "run", "What is 6*7?"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def both_started() -> bool:
        argv = " ".join(_children(keel.pid).values())
        return "server start-dev" in argv and "llama_cpp.server" in argv

    try:
        _wait_until(both_started, "keel run to start its dev server and model", timeout_s=120)
    except AssertionError:
        keel.kill()
        raise
    return keel, _children(keel.pid)


def _all_gone(children: dict[int, str], port: int) -> None:
    for pid, argv in children.items():
        _wait_until(lambda pid=pid: not _alive(pid), f"{argv[:60]} to die with keel", 10)
    # A killed process's threads may still be tearing down once its leader shows as a
    # zombie; its sockets close with the last of them.
    _wait_until(lambda: not port_open("127.0.0.1", port), "the dev server's port to close", 10)


def test_sigkill_of_keel_run_leaves_no_temporal_or_model_process(tmp_path: Path) -> None:
    """SIGKILL of `keel` mid-plan takes its dev server and model along, frees the port, and
    the next run works."""
    port = _dev_port()
    env = _keel_env(tmp_path, port)
    keel, children = _keel_run_planning(env)
    keel.send_signal(signal.SIGKILL)
    keel.wait()
    _all_gone(children, port)

    # A second run right after: nothing is left in its way (scripted here, for speed).
    again = subprocess.run(
        [sys.executable, "-m", "keel.cli", "run", "What is 6*7?", "--json"],
        cwd=REPO,
        env=env | {"KEEL_PLANNER_MODEL": "scripted", "KEEL_REASONER_MODEL": "scripted"},
        capture_output=True,
        text=True,
        timeout=KEEL_RUN_TIMEOUT_S,
    )
    assert again.returncode == 0, again.stderr
    assert '"status": "completed"' in again.stdout


def test_sigterm_of_keel_run_stops_it_and_what_it_started_without_delay(
    tmp_path: Path,
) -> None:
    """SIGTERM (what `make run` sends when make itself is killed) unwinds `keel run`: its
    workers stop, then its servers; well within the grace period after which it would
    simply end."""
    port = _dev_port()
    keel, children = _keel_run_planning(_keel_env(tmp_path, port))
    keel.send_signal(signal.SIGTERM)
    began = time.monotonic()
    _, err = keel.communicate(timeout=SHUTDOWN_GRACE_S + 10)
    took = time.monotonic() - began
    assert (keel.returncode, err) == (143, "keel: stopped by SIGTERM\n"), (took, err)
    assert took < SHUTDOWN_GRACE_S, f"it unwound only when the grace ran out ({took:.1f} s)"
    _all_gone(children, port)


@pytest.fixture
def stray_dev_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A dev server on a Keel data file that no `keel` started (this test's own process is
    its parent), as an older, crashed `keel` would have left it."""
    port = free_port()
    db = tmp_path / "temporal.db"
    process = subprocess.Popen(
        bound_to_this_process(
            [
                str(temporal_cli()), "server", "start-dev", "--db-filename", str(db),
                "--ip", "127.0.0.1", "--port", str(port),
                "--headless", "--log-level", "error",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_until(lambda: port_open("127.0.0.1", port), "the stray dev server")
        yield process.pid, port, db
    finally:
        stop_process(process, 10)


def test_a_stray_dev_server_on_keels_data_file_is_reported_with_what_to_do(
    stray_dev_server: tuple[int, int, Path], tmp_path: Path
) -> None:
    pid, port, db = stray_dev_server
    assert listener_pid(port) == pid
    assert leftover_dev_server(port, tmp_path / "elsewhere.db") is None  # not Keel's file
    assert leftover_dev_server(port, db) == (
        f"a Temporal dev server that no running keel started (pid {pid}, data {db}) holds "
        f"port {port}: stop it with `kill {pid}` and run again"
    )
    code, err = _keel_run_refused(tmp_path, port)
    assert (code, err) == (2, f"keel: error: {leftover_dev_server(port, db)}\n")

    db.unlink()  # its data file is gone: whatever it stores now is lost on its exit
    assert leftover_dev_server(port, tmp_path / "elsewhere.db") == (
        f"the Temporal dev server on port {port} (pid {pid}) serves {db}, which no longer "
        f"exists: stop it with `kill {pid}` and run again"
    )


def _keel_run_refused(home: Path, port: int) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "keel.cli", "run", "What is 6*7?"],
        cwd=REPO,
        env=_keel_env(home, port),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stderr
