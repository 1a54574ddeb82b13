"""A local Neo4j server (community edition, embedded in a small JVM launcher) speaking Bolt.

The jars come from Maven Central once (`workers/neo4j/pom.xml`, into $KEEL_HOME/neo4j/lib);
`Launcher.java` is compiled once into $KEEL_HOME/neo4j/classes. Each start runs, roughly:

    java -Xmx512m ... -cp "$KEEL_HOME/neo4j/classes:$KEEL_HOME/neo4j/lib/*" \\
        Launcher <free port> <fresh temp data dir>

and waits for its `READY bolt://127.0.0.1:<port>` line.

    with Neo4jServer(settings.home) as neo4j:
        driver = GraphDatabase.driver(neo4j.uri, auth=neo4j.auth)
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from keel._local_server import LocalServer, stop_process
from keel._ports import free_port, port_open
from keel.errors import ServiceStartError

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LAUNCHER = HERE / "Launcher.java"
HOST = "127.0.0.1"  # the launcher binds Bolt to loopback only
USER = "neo4j"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
FETCH_TIMEOUT_S = 900.0
PORT_ATTEMPTS = 3  # a free port can be taken between choosing it and Neo4j binding it
JVM_OPTIONS = (
    "-Xms128m",  # set explicitly, or Neo4j warns at every start
    "-Xmx512m",
    "-XX:+UseSerialGC",  # the smallest footprint for a small heap
    "-XX:+ExitOnOutOfMemoryError",
    # Neo4j's page cache and transaction logs reach into NIO internals; without these it
    # falls back to slower paths and logs warnings on Java 17.
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dlog4j2.disable.jmx=true",
)
INSTALL_JAVA = "apt-get install openjdk-17-jdk-headless, or set JAVA_HOME"
_PORT_TAKEN = re.compile(r"already in use", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Maven 3.8 colours even in batch mode
_FAILED = "neo4j did not start: "  # the launcher's last stderr line when startup fails


class Neo4jError(ServiceStartError):
    """Neo4j could not be fetched or started; the message says what to do."""


@dataclass(frozen=True)
class Java:
    java: Path
    javac: Path


def find_java() -> Java:
    """java 17+ from $JAVA_HOME or the PATH, with the javac of the same JDK."""
    java_home = os.environ.get("JAVA_HOME")
    on_path = shutil.which("java")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        java = Path(java_home) / "bin" / "java"
    elif on_path:
        java = Path(on_path)
    else:
        raise Neo4jError(f"java not found: Neo4j needs Java 17 ({INSTALL_JAVA})")
    bin_dir = java.resolve().parent
    # The JDK's `release` file says its version without starting a JVM.
    release = bin_dir.parent / "release"
    found = re.search(r'JAVA_VERSION="(\d+)', release.read_text()) if release.exists() else None
    if found and int(found.group(1)) < 17:
        raise Neo4jError(f"{java} is Java {found.group(1)}; Neo4j 5 needs 17+ ({INSTALL_JAVA})")
    javac = bin_dir / "javac"
    if not javac.exists():
        raise Neo4jError(f"javac not found next to {java}: install the JDK ({INSTALL_JAVA})")
    return Java(java, javac)


def neo4j_version() -> str:
    pom = ElementTree.parse(POM).getroot()
    version = pom.findtext(
        "m:dependencies/m:dependency/m:version",
        namespaces={"m": "http://maven.apache.org/POM/4.0.0"},
    )
    assert version, f"no dependency version in {POM}"
    return version


def _stamp(*paths: Path) -> str:
    return hashlib.sha256(b"".join(path.read_bytes() for path in paths)).hexdigest()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Held while fetching or compiling: test workers sharing a KEEL_HOME may start together."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _replace_dir(built: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    built.rename(target)


def ensure_jars(home: Path) -> Path:
    """$KEEL_HOME/neo4j/lib holding the jars pom.xml names; fetched with Maven if missing."""
    lib = home / "neo4j" / "lib"
    marker, stamp = lib / ".complete", _stamp(POM)  # a changed pom fetches again
    if marker.exists() and marker.read_text() == stamp:
        return lib
    with _locked(lib.parent):
        if marker.exists() and marker.read_text() == stamp:
            return lib  # fetched by another process while we waited
        mvn = shutil.which("mvn")
        if mvn is None:
            raise Neo4jError(
                "mvn not found: the Neo4j jars come from Maven (apt-get install maven)"
            )
        series = ".".join(neo4j_version().split(".")[:2])
        print(
            f"Fetching Neo4j {series} jars from Maven Central (first time only) ...",
            file=sys.stderr,
            flush=True,
        )
        partial = lib.with_name("lib.partial")
        shutil.rmtree(partial, ignore_errors=True)
        command = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
        ]
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise Neo4jError(
                f"fetching the Neo4j jars took over {FETCH_TIMEOUT_S:.0f} s: "
                f"check access to Maven Central, then retry ({' '.join(command)})"
            ) from e
        if run.returncode != 0:
            output = _ANSI.sub("", run.stdout + run.stderr)
            errors = re.findall(r"^\[ERROR\] (\S.*)$", output, re.MULTILINE)
            reason = errors[0] if errors else output.strip() or f"exit code {run.returncode}"
            raise Neo4jError(f"mvn could not fetch the Neo4j jars: {reason}")
        (partial / ".complete").write_text(stamp)
        _replace_dir(partial, lib)
    return lib


def ensure_launcher(home: Path, java: Java, lib: Path) -> Path:
    """$KEEL_HOME/neo4j/classes holding Launcher.class, compiled once: each start is about a
    second faster and 40 MiB smaller than running Launcher.java in source-file mode."""
    classes = home / "neo4j" / "classes"
    marker, stamp = classes / ".complete", _stamp(LAUNCHER, lib / ".complete")
    if marker.exists() and marker.read_text() == stamp:
        return classes
    with _locked(classes.parent):
        if marker.exists() and marker.read_text() == stamp:
            return classes
        partial = classes.with_name("classes.partial")
        shutil.rmtree(partial, ignore_errors=True)
        run = subprocess.run(
            [java.javac, "-cp", f"{lib}/*", "-d", partial, LAUNCHER],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            reason = (run.stderr or run.stdout).strip().splitlines()
            raise Neo4jError(f"could not compile {LAUNCHER}: {reason[0] if reason else run}")
        (partial / ".complete").write_text(stamp)
        _replace_dir(partial, classes)
    return classes


class Neo4jServer(LocalServer):
    """Start with `start()` (or `with`), stop with `stop()`; `uri` is the Bolt address.

    Each start gets a fresh, empty database in a temp dir removed at stop, unless `data_dir`
    is given (then it is kept). Auth is off unless `password` is given (user `neo4j`; Neo4j
    wants at least 8 characters)."""

    def __init__(
        self,
        home: Path,
        *,
        data_dir: Path | None = None,
        password: str | None = None,
        port: int | None = None,
        quiet: bool = False,
    ) -> None:
        self.home = home
        self.state_dir = home / "neo4j"
        self.log_file = self.state_dir / "neo4j.log"  # the launcher's stderr
        self.data_dir, self.password, self.port, self.quiet = data_dir, password, port, quiet
        self._temp_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"bolt://{HOST}:{self.port}"

    @property
    def auth(self) -> tuple[str, str] | None:
        """What the `neo4j` driver takes as `auth=`."""
        return (USER, self.password) if self.password is not None else None

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def command(self, java: Java, classpath: str, port: int, data_dir: Path) -> list[str]:
        command = [
            str(java.java),
            *JVM_OPTIONS,
            *("-cp", classpath, "Launcher", str(port), str(data_dir)),
        ]
        # If this process dies without stopping Neo4j (kill -9), the kernel sends it SIGTERM;
        # stdin closing does the same, but only once the JVM is up. The signal follows the
        # thread that started the child, so only from the main thread.
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            command = [setpriv, "--pdeathsig", "TERM", *command]
        return command

    def start(self) -> Neo4jServer:
        if self._process is not None:
            return self
        java = find_java()
        lib = ensure_jars(self.home)
        classpath = f"{ensure_launcher(self.home, java, lib)}{os.pathsep}{lib}/*"
        if self.port is not None and port_open(HOST, self.port):
            raise Neo4jError(f"port {self.port} is already in use: stop what listens there")
        chosen = self.port
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = chosen or free_port(HOST)
            data_dir = self.data_dir or self._fresh_data_dir()
            self._say(f"Starting Neo4j on {self.uri} (data: {data_dir}; log: {self.log_file}) ...")
            reason = self._launch(self.command(java, classpath, self.port, data_dir))
            if reason is None:
                return self
            if chosen is None and attempt < PORT_ATTEMPTS and _PORT_TAKEN.search(reason):
                continue  # someone took the port we picked: pick another
            raise Neo4jError(f"Neo4j did not start: {reason}; see {self.log_file}")
        raise AssertionError("unreachable")

    def _fresh_data_dir(self) -> Path:
        self._temp_dir = Path(tempfile.mkdtemp(prefix="keel-neo4j-"))
        return self._temp_dir

    def _remove_temp_dir(self) -> None:
        temp_dir, self._temp_dir = self._temp_dir, None
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)

    def _launch(self, command: list[str]) -> str | None:
        """Run the launcher and wait for its READY line; None, or why it did not come up."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        started = time.monotonic()
        env = {k: v for k, v in os.environ.items() if k != "NEO4J_LAUNCHER_PASSWORD"}
        if self.password is not None:
            env["NEO4J_LAUNCHER_PASSWORD"] = self.password  # not in argv, where `ps` shows it
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                command,
                env=env,
                # Held open and never written: the launcher exits when it closes.
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                # Its own session: Ctrl-C reaches this process, which then stops Neo4j.
                start_new_session=True,
            )
        self._process = process
        atexit.register(self.stop)
        if self._wait_ready(process, started + START_TIMEOUT_S):
            self._say(f"Neo4j ready on {self.uri} in {time.monotonic() - started:.1f} s")
            return None
        timed_out = time.monotonic() - started >= START_TIMEOUT_S
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0 if timed_out else STOP_TIMEOUT_S)  # stdout closed: exiting
        code = process.poll()
        self.stop()
        if code is None:
            return f"not ready after {START_TIMEOUT_S:.0f} s"
        with self.log_file.open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        failed = [line.removeprefix(_FAILED) for line in lines if line.startswith(_FAILED)]
        return failed[-1] if failed else f"java exited with code {code}"

    @staticmethod
    def _wait_ready(process: subprocess.Popen[bytes], deadline: float) -> bool:
        """Whether the READY line came before the deadline; False when it exits first."""
        assert process.stdout is not None
        fd, pending = process.stdout.fileno(), b""
        while (remaining := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], remaining)[0]:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return False  # stdout closed: the JVM exited
            *lines, pending = (pending + chunk).split(b"\n")
            if any(line.startswith(b"READY ") for line in lines):
                # Nothing else is read from it; closed, so stray prints cannot fill the pipe.
                process.stdout.close()
                return True
        return False

    def stop(self) -> None:
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()  # the launcher shuts Neo4j down on EOF, as on SIGTERM
            stop_process(process, STOP_TIMEOUT_S)
            if process.stdout is not None:
                process.stdout.close()
        self._remove_temp_dir()


def main() -> None:
    """A Neo4j for development, data kept under $KEEL_HOME/neo4j/data, until Ctrl-C."""
    from keel.settings import get_settings

    settings = get_settings()
    server = Neo4jServer(
        settings.home,
        data_dir=settings.home / "neo4j" / "data",
        password=settings.neo4j_password,
        port=7687 if not port_open(HOST, 7687) else None,
    )
    try:
        server.start()
    except Neo4jError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"Neo4j is up: export KEEL_NEO4J_URL={server.uri}   (Ctrl-C stops it)", flush=True)
    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        signal.sigwait(stop)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
