"""The bubblewrap backend: Linux namespaces, seccomp and rlimits around one process tree.

Each run:
- starts as a dedicated non-root host uid (one of `uid_count` from `uid_base`, a different
  one for each concurrent run), because RLIMIT_NPROC does not bind root and a uid of its own
  keeps one run's processes from counting against another's;
- gets rlimits (CPU, address space, file size, open files, processes; no core dumps) from
  `prlimit` before `bwrap` starts, so every process of the run inherits them;
- unshares every namespace (user, mount, PID, network, IPC, UTS, cgroup) and may not create
  new user namespaces; drops every capability; loads the seccomp filter (sandbox/seccomp.py);
- sees a read-only root that holds only /usr (and the lib/bin links into it), a fresh /proc
  and a minimal /dev; writes go to a size-capped tmpfs workdir (/work, also HOME) and /tmp,
  which vanish with the run;
- has a clean environment; input files are copied into the workdir from memory;
- is killed with its whole PID namespace at the wall-clock limit or when its output passes
  the cap (bwrap dies with its parent, and the namespace's init takes every process along).
"""

from __future__ import annotations

import os
import random
import selectors
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path, PurePosixPath
from typing import IO

from sandbox.backend import Limits, Run, SandboxError, SandboxResult, StopReason
from sandbox.cgroups import Cgroups, RunCgroup
from sandbox.seccomp import bpf_program

WORKDIR = "/work"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
_MB = 1024 * 1024
_READ_CHUNK = 65536


class UidPool:
    """Host uids for concurrent runs in this process, never two runs on one uid."""

    def __init__(self, base: int, count: int) -> None:
        self.base, self.count = base, count
        self._busy: set[int] = set()
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            if len(self._busy) >= self.count:
                raise SandboxError(f"all {self.count} sandbox uids are in use")
            uid = self.base + random.randrange(self.count)  # other processes pick elsewhere
            while uid in self._busy:
                uid = self.base + (uid - self.base + 1) % self.count
            self._busy.add(uid)
            return uid

    def give_back(self, uid: int) -> None:
        with self._lock:
            self._busy.discard(uid)


class BwrapBackend:
    name = "bwrap"

    def __init__(
        self,
        uid_base: int = 61000,
        uid_count: int = 1000,
        read_only: tuple[Path, ...] = (),
        use_cgroups: bool = True,
    ) -> None:
        self.bwrap = shutil.which("bwrap")
        self.prlimit = shutil.which("prlimit")
        self.setpriv = shutil.which("setpriv")
        if self.bwrap is None:
            raise SandboxError(
                "bwrap (Debian package bubblewrap) is not installed; run `make system-deps`"
            )
        if self.prlimit is None or self.setpriv is None:
            raise SandboxError("prlimit and setpriv (Debian package util-linux) are missing")
        self.uids = UidPool(uid_base, uid_count)
        self.read_only = read_only  # host paths shown read-only at the same place
        self.cgroups = Cgroups.detect() if use_cgroups and os.geteuid() == 0 else None

    def run(self, run: Run) -> SandboxResult:
        uid = self.uids.take() if os.geteuid() == 0 else os.geteuid()
        if uid == 0:
            raise SandboxError("sandboxed code must not run as root")
        fds: list[int] = []
        group: RunCgroup | None = None
        try:
            seccomp_fd = _memfd("seccomp", bpf_program())
            fds.append(seccomp_fd)
            file_args = self._file_args(run.files, fds)
            argv = [
                *self._prlimit_args(run.limits),
                *self._bwrap_args(run, seccomp_fd, file_args),
                "--",
                *run.argv,
            ]
            if self.cgroups is not None:
                group = self.cgroups.create(
                    f"run-{uuid.uuid4().hex}", uid, _total_memory(run.limits), run.limits.processes
                )
                argv = _joining(group, argv)
            return self._supervise(argv, run, uid, fds, group)
        finally:
            for fd in fds:
                os.close(fd)
            if group is not None:
                group.destroy()
            if os.geteuid() == 0:
                self.uids.give_back(uid)

    def _prlimit_args(self, limits: Limits) -> list[str]:
        return [
            str(self.prlimit),
            f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
            f"--as={limits.memory_mb * _MB}",
            f"--fsize={limits.file_mb * _MB}",
            f"--nofile={limits.open_files}",
            f"--nproc={limits.processes}",
            "--core=0",
        ]

    def _bwrap_args(self, run: Run, seccomp_fd: int, file_args: list[str]) -> list[str]:
        disk = str(run.limits.disk_mb * _MB)
        args = [
            str(self.bwrap),
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--cap-drop", "ALL",
            "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin",
            "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64",
            "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
            "--ro-bind-try", "/etc/alternatives", "/etc/alternatives",
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", disk, "--tmpfs", "/dev/shm",
            "--size", disk, "--tmpfs", "/tmp",
            "--size", disk, "--tmpfs", WORKDIR,
        ]  # fmt: skip
        for path in self.read_only:
            args += ["--ro-bind", str(path), str(path)]
        args += file_args
        # read-only root and /dev (device nodes still work); only the tmpfs are writable
        args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORKDIR, "--clearenv"]
        env = {
            "PATH": SANDBOX_PATH,
            "HOME": WORKDIR,
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            **run.env,
        }
        for key, value in env.items():
            args += ["--setenv", key, value]
        args += ["--seccomp", str(seccomp_fd)]
        return args

    def _file_args(self, files: dict[str, bytes], fds: list[int]) -> list[str]:
        args: list[str] = []
        made: set[str] = set()
        for relative, content in files.items():
            path = PurePosixPath(relative)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise ValueError(f"sandbox file {relative!r} must be a plain relative path")
            for parent in reversed(path.parents[:-1]):  # directories, outermost first
                if str(parent) not in made:
                    made.add(str(parent))
                    args += ["--dir", f"{WORKDIR}/{parent}"]
            fd = _memfd("file", content)
            fds.append(fd)
            args += ["--perms", "0644", "--file", str(fd), f"{WORKDIR}/{path}"]
        return args

    def _supervise(
        self, argv: list[str], run: Run, uid: int, fds: list[int], group: RunCgroup | None
    ) -> SandboxResult:
        limits = run.limits
        started = time.monotonic()
        # setpriv switches to the run's uid, then asks for SIGKILL should this worker thread
        # die: a killed worker takes its runs along (bwrap dies with its parent in turn).
        switch = (
            [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid != os.geteuid() else []
        )
        argv = [str(self.setpriv), *switch, "--pdeathsig=KILL", "--", *argv]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={},
                pass_fds=fds,
                start_new_session=True,
            )
        except OSError as err:
            raise SandboxError(f"could not start bwrap: {err}") from err
        out, err_out = _Capture(limits.output_bytes), _Capture(limits.output_bytes)
        assert proc.stdin and proc.stdout and proc.stderr
        deadline = started + limits.wall_s
        stopped = self._pump(proc, run.stdin, out, err_out, deadline)
        if stopped is None and not _exits_by(proc.pid, deadline):
            stopped = StopReason.WALL_TIME  # it closed its outputs but kept running
        if stopped is not None:
            _kill_group(proc.pid)
        # wait4: the exit status and the resource use of the run's waited-for processes
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0  # reaped here; keeps Popen from waiting again
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream and not stream.closed:
                stream.close()
        wall_ms = (time.monotonic() - started) * 1000
        exit_code: int | None = None
        sig: int | None = None
        cpu_ms = group.cpu_ms() if group else (usage.ru_utime + usage.ru_stime) * 1000
        if stopped is None:
            code = os.waitstatus_to_exitcode(status)
            if code < 0:  # bwrap itself died of a signal
                sig = -code
            elif code > 128 and code - 128 < signal.NSIG:  # bwrap reports 128 + signal
                sig = code - 128
            else:
                exit_code = code
            oom = group is not None and group.out_of_memory()
            stopped = _reason(sig, exit_code, err_out.text(), cpu_ms / 1000, limits, oom)
        return SandboxResult(
            stdout=out.text(),
            stderr=err_out.text(),
            exit_code=exit_code,
            stopped=stopped,
            signal=sig,
            wall_ms=wall_ms,
            cpu_ms=cpu_ms,
            max_rss_kb=group.peak_kb() if group else usage.ru_maxrss,
            cgroup=group is not None,
            stdout_truncated=out.truncated,
            stderr_truncated=err_out.truncated,
            backend=self.name,
        )

    @staticmethod
    def _pump(
        proc: subprocess.Popen[bytes],
        stdin: bytes,
        out: _Capture,
        err: _Capture,
        deadline: float,
    ) -> StopReason | None:
        """Feed stdin and collect output until both outputs close (the run ended), the
        deadline passes or the output cap is hit; the reason it had to stop, if any."""
        assert proc.stdin and proc.stdout and proc.stderr
        readers: dict[IO[bytes], _Capture] = {proc.stdout: out, proc.stderr: err}
        pending = memoryview(stdin)
        with selectors.DefaultSelector() as sel:
            for stream, capture in readers.items():
                sel.register(stream, selectors.EVENT_READ, capture)
            if pending:
                os.set_blocking(proc.stdin.fileno(), False)
                sel.register(proc.stdin, selectors.EVENT_WRITE, None)
            else:
                proc.stdin.close()
            open_readers = len(readers)
            while open_readers:
                left = deadline - time.monotonic()
                if left <= 0:
                    return StopReason.WALL_TIME
                for key, _ in sel.select(timeout=left):
                    if key.data is None:
                        pending = _write_some(key.fd, pending)
                        if not pending:
                            sel.unregister(key.fileobj)
                            proc.stdin.close()
                        continue
                    chunk = os.read(key.fd, _READ_CHUNK)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        open_readers -= 1
                    elif not key.data.add(chunk):
                        return StopReason.OUTPUT_LIMIT
        return None


def _reason(
    sig: int | None, exit_code: int | None, stderr: str, cpu_s: float, limits: Limits, oom: bool
) -> StopReason:
    if oom:  # the cgroup's own count: certain, where the other reasons are inferred
        return StopReason.MEMORY
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= limits.cpu_s):
        return StopReason.CPU_TIME
    if sig is not None:
        return StopReason.SIGNAL
    # Python reports an address-space limit as MemoryError and exits with code 1.
    if exit_code and "MemoryError" in stderr[-2000:]:
        return StopReason.MEMORY
    return StopReason.EXITED


class _Capture:
    def __init__(self, cap: int) -> None:
        self.cap, self.size, self.truncated = cap, 0, False
        self.parts: list[bytes] = []

    def add(self, chunk: bytes) -> bool:
        """Keep up to the cap; False once the output went past it."""
        room = self.cap - self.size
        if len(chunk) > room:
            self.parts.append(chunk[:room])
            self.size, self.truncated = self.cap, True
            return False
        self.parts.append(chunk)
        self.size += len(chunk)
        return True

    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8", errors="replace")


def _total_memory(limits: Limits) -> int:
    """The run's whole memory: its processes' budget plus its three tmpfs (files in tmpfs
    are memory)."""
    return (limits.memory_mb + 3 * limits.disk_mb) * _MB


def _joining(group: RunCgroup, argv: list[str]) -> list[str]:
    """argv, started by a shell that first moves itself into the run's cgroups."""
    joins = " && ".join(f"echo $$ > {shlex.quote(str(f))}" for f in group.procs_files)
    return ["/bin/sh", "-c", f'{joins} && exec "$@"', "keel-sandbox", *argv]


def _exits_by(pid: int, deadline: float) -> bool:
    """Whether the process exits before the deadline (it is not reaped here)."""
    fd = os.pidfd_open(pid)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            return bool(sel.select(timeout=max(0.0, deadline - time.monotonic())))
    finally:
        os.close(fd)


def _write_some(fd: int, pending: memoryview) -> memoryview:
    try:
        return pending[os.write(fd, pending[:_READ_CHUNK]) :]
    except BrokenPipeError:  # the program stopped reading its input
        return memoryview(b"")


def _memfd(name: str, content: bytes) -> int:
    fd = os.memfd_create(f"keel-{name}", 0)  # no CLOEXEC: bwrap reads it by number
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _kill_group(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # setpriv, sh and prlimit exec'd bwrap: one group
