"""The sandbox suites share one backend and a host they can check is unchanged afterwards."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.backend import Limits, Run, SandboxResult
from sandbox.bwrap import BwrapBackend
from sandbox.cgroups import running

PYTHON = "/usr/bin/python3"
# a uid range of this test session's own: other sessions' and workers' sandboxes never count
UID_BASE = 100_000 + 1000 * (os.getpid() % 500)
UID_COUNT = 1000
# A line of Python that renames the process (PR_SET_NAME), so a test sees from outside, in
# /proc/<pid>/comm, that a sandboxed program got past a point: see `ready_processes`.
MARK_READY = "import ctypes; ctypes.CDLL(None).prctl(15, b'keel-ready')"
# where an escaped write would most likely land on the host
HOST_DIRS = (Path("/"), Path("/tmp"), Path("/root"), Path("/etc"), Path("/usr"), Path.cwd())


@pytest.fixture(scope="session")
def backend() -> BwrapBackend:
    return BwrapBackend(uid_base=UID_BASE, uid_count=UID_COUNT)


def run_code(
    backend: BwrapBackend, code: str, limits: Limits | None = None, **kw: object
) -> SandboxResult:
    return backend.run(Run([PYTHON, "-c", code], limits=limits or Limits(wall_s=10), **kw))  # type: ignore[arg-type]


def sandbox_processes(uid_base: int = UID_BASE, uid_count: int = UID_COUNT) -> list[int]:
    """Host pids owned by a sandbox uid that can still run code. Zombies and processes
    inside exit do not count: bwrap's intermediate process exits last and is left for the
    host's init to reap."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uid = entry.stat().st_uid
            except FileNotFoundError:
                continue
            if uid_base <= uid < uid_base + uid_count and running(int(entry.name)):
                pids.append(int(entry.name))
    return pids


def ready_processes(uid_base: int = UID_BASE, uid_count: int = UID_COUNT) -> int:
    """How many of the sandbox processes ran MARK_READY."""
    ready = 0
    for pid in sandbox_processes(uid_base, uid_count):
        try:
            ready += Path(f"/proc/{pid}/comm").read_text().strip() == "keel-ready"
        except FileNotFoundError:
            continue
    return ready


@dataclass
class Host:
    """Secrets planted on the host, and a fingerprint of what a sandbox must not change."""

    secret: str
    secret_file: Path
    marker: str  # the file name attacks try to create outside their workdir
    sentinel_dir: Path

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in sorted(self.sentinel_dir.rglob("*")):
            digest.update(str(path).encode())
            if path.is_file():
                digest.update(path.read_bytes())
            digest.update(oct(path.lstat().st_mode).encode())
        return digest.hexdigest()

    def stray_markers(self) -> list[Path]:
        return [d / self.marker for d in HOST_DIRS if (d / self.marker).exists()]


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    secret = f"host-secret-{uuid.uuid4().hex}"
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    secret_file = sentinel / "secret.txt"
    secret_file.write_text(secret)
    (sentinel / "keep.txt").write_text("unchanged")
    monkeypatch.setenv("KEEL_TEST_HOST_SECRET", secret)  # the worker's environment
    state = Host(secret, secret_file, f"escaped-{uuid.uuid4().hex[:8]}", sentinel)
    before = state.fingerprint()
    yield state
    assert state.fingerprint() == before, "a sandboxed run changed the host's files"
    assert state.stray_markers() == [], "a sandboxed run wrote outside its workdir"
    assert sandbox_processes() == [], "a sandboxed process outlived its run"
    assert os.environ["KEEL_TEST_HOST_SECRET"] == secret
