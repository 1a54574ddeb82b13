"""Server processes that Keel starts and stops itself (Triton, Neo4j; PostgreSQL and others in
tests): `with Server(...) as server:` starts one and stops it on the way out, error or not;
`stop_process` is how each of them ends its process."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any, Self


class LocalServer:
    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def stop_process(
    process: subprocess.Popen[Any],
    timeout_s: float,
    ask: signal.Signals = signal.SIGTERM,
    kill_group: bool = False,
) -> None:
    """Ask a server process to stop (`ask`), give it `timeout_s` to finish, then SIGKILL it
    (its whole process group with `kill_group`) and reap it."""
    if process.poll() is None:
        process.send_signal(ask)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        if kill_group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait()
