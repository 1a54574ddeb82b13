"""A local Triton Inference Server from the `nvidia-pytriton` wheel, serving the planner model.

The wheel ships the `tritonserver` binary, its libraries, the Python backend and one backend
stub per Python version. The stub must sit next to the backend library, so the launcher
assembles a backend directory under the state dir (links into the wheel; the environment is
never written to) and runs the binary directly, roughly:

    LD_LIBRARY_PATH=<wheel>/nvidia_pytriton.libs PYTHONPATH=<site-packages> tritonserver \\
        --model-repository workers/triton/model_repository \\
        --backend-directory $KEEL_HOME/triton/backends \\
        --http-address 127.0.0.1 --http-port <free port> --allow-grpc false ...

    with TritonServer(settings.home) as triton:
        model = TritonModel(triton.url)
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from keel._lifeline import bound_to_this_process
from keel._local_server import LocalServer, stop_process
from keel._ports import free_port, port_open
from keel.errors import ServiceStartError

MODEL_REPOSITORY = Path(__file__).resolve().parent / "model_repository"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
# How long Triton lets in-flight requests (and idle keep-alive connections) finish when told
# to stop; the worker stops it only after its plan activities have drained.
EXIT_TIMEOUT_S = 5
PORT_ATTEMPTS = 3  # a free port can be taken between choosing it and Triton binding it


class TritonError(ServiceStartError):
    """Triton could not be found or started; the message says what to do."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the nvidia-pytriton wheel put the server, its libraries and the Python backend."""

    binary: Path
    libs: Path
    backend: Path  # libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub built for this Python version
    site_packages: Path  # where the model's imports (llama_cpp, numpy) come from

    @classmethod
    def find(cls) -> TritonInstall:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise TritonError("nvidia-pytriton is not installed: run `make install`")
        package = Path(next(iter(spec.submodule_search_locations)))
        root, site = package / "tritonserver", package.parent
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        install = cls(
            binary=root / "bin" / "tritonserver",
            libs=site / "nvidia_pytriton.libs",
            backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
            site_packages=site,
        )
        for what, path in (
            ("the tritonserver binary", install.binary),
            ("the Triton Python backend", install.backend / "libtriton_python.so"),
            (f"the Triton Python backend stub for Python {version}", install.stub),
        ):
            if not path.exists():
                raise TritonError(
                    f"{what} is missing ({path}): reinstall nvidia-pytriton (`make install`)"
                )
        return install


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    # Made aside and renamed into place: workers sharing a KEEL_HOME may start together.
    temporary = link.with_name(f".{link.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    temporary.replace(link)


# Triton logs a model that failed to load as: "failed to load 'planner' version 1: Internal:
# ModuleNotFoundError: No module named 'numpy'\n\nAt: ..." (newlines escaped).
_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version \d+: (?:\w+: )?(.*?)(?:\\n|\"|$)")
_PORT_TAKEN = re.compile(r"already in use|address in use", re.IGNORECASE)


def failure_reason(log: str) -> str:
    """The line of a Triton log that says why the server did not come up."""
    found = _LOAD_FAILURE.search(log)
    if found:
        return f"model {found.group(1)!r} did not load: {found.group(2).strip()}"
    errors = [line.strip() for line in log.splitlines() if line.startswith("error:")]
    return errors[-1].removeprefix("error:").strip() if errors else ""


class TritonServer(LocalServer):
    """Start with `start()` (or `with`), stop with `stop()`; `url` is the HTTP endpoint."""

    def __init__(
        self,
        home: Path,
        *,
        model_repository: Path = MODEL_REPOSITORY,
        model_path: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        quiet: bool = False,
    ) -> None:
        self.state_dir = home / "triton"
        self.log_file = self.state_dir / "triton.log"
        self.model_repository, self.model_path = model_repository, model_path
        self.host, self.port, self.quiet = host, port, quiet
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def models(self) -> list[str]:
        return sorted(p.parent.name for p in self.model_repository.glob("*/config.pbtxt"))

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def _backend_dir(self, install: TritonInstall) -> Path:
        """backends/python/ holding the wheel's backend library with this Python's stub."""
        python = self.state_dir / "backends" / "python"
        python.mkdir(parents=True, exist_ok=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            _link(install.backend / name, python / name)
        _link(install.stub, python / install.stub.name)
        return python.parent

    def _environment(self, install: TritonInstall) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        # The model imports llama_cpp and numpy from this environment (model.py adds
        # PYTHONPATH to sys.path itself: the stub's interpreter runs isolated).
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(install.site_packages), env.get("PYTHONPATH", "")) if p
        )
        if self.model_path is not None:
            env["KEEL_LLAMACPP_MODEL_PATH"] = str(self.model_path)
        return env

    def command(self, install: TritonInstall, backends: Path, port: int) -> list[str]:
        command = [
            str(install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--http-port={port}",
            "--allow-grpc=false",
            "--allow-metrics=false",
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        ]
        # If this process dies without stopping Triton (kill -9), the kernel kills Triton too.
        # The signal follows the thread that started the child, so only from the main thread.
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            command = [setpriv, "--pdeathsig", "KILL", *command]
        return command

    def start(self) -> TritonServer:
        if self._process is not None:
            return self
        install = TritonInstall.find()
        if not self.models:
            raise TritonError(f"no model in {self.model_repository} (no */config.pbtxt)")
        if self.port is not None and port_open(self.host, self.port):
            raise TritonError(
                f"port {self.port} is already in use: a Triton server may be running there "
                "(attach to it with KEEL_TRITON_URL) or stop it"
            )
        backends = self._backend_dir(install)
        chosen = self.port
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = chosen or free_port(self.host)
            self._say(
                f"Starting Triton Inference Server on {self.url} "
                f"(models: {', '.join(self.models)}; log: {self.log_file}) ..."
            )
            reason = self._launch(install, backends)
            if reason is None:
                return self
            if chosen is None and attempt < PORT_ATTEMPTS and _PORT_TAKEN.search(reason):
                continue  # someone took the port we picked: pick another
            raise TritonError(f"Triton did not start: {reason}; see {self.log_file}")
        raise AssertionError("unreachable")

    def _launch(self, install: TritonInstall, backends: Path) -> str | None:
        """Run the server and wait until it is ready; None, or why it did not come up."""
        assert self.port is not None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        started = time.monotonic()
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                bound_to_this_process(self.command(install, backends, self.port)),
                env=self._environment(install),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C reaches the worker, which drains its activities
                # and then stops Triton, instead of Triton dying under in-flight plans.
                start_new_session=True,
            )
        atexit.register(self.stop)
        while not self.is_ready():
            code = self._process.poll()
            if code is not None:
                self._process = None
                atexit.unregister(self.stop)
                with self.log_file.open("rb") as log:
                    log.seek(offset)
                    text = log.read().decode(errors="replace")
                return failure_reason(text) or f"tritonserver exited with code {code}"
            if time.monotonic() - started > START_TIMEOUT_S:
                self.stop()
                return f"not ready after {START_TIMEOUT_S:.0f} s"
            time.sleep(0.1)
        self._say(f"Triton ready on {self.url} in {time.monotonic() - started:.1f} s")
        return None

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # SIGTERM: Triton finishes in-flight requests, unloads models, exits; if it does not,
        # the whole group goes: the server and its model stubs
        stop_process(process, STOP_TIMEOUT_S, kill_group=True)
