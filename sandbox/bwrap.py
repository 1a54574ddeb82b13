"""The bubblewrap backend: Linux namespaces, seccomp and rlimits around one process tree.

Each run:
- starts as a dedicated non-root host uid (one of `uid_count` from `uid_base`, locked for
  the run machine-wide), because RLIMIT_NPROC does not bind root and a uid of its own keeps
  one run's processes from counting against another's;
- gets rlimits (CPU, address space, file size, open files, processes; no core dumps) from
  `prlimit` before `bwrap` starts, so every process of the run inherits them, and its own
  cgroup where the machine allows (sandbox/cgroups.py);
- unshares every namespace (user, mount, PID, network, IPC, UTS, cgroup) and may not create
  new user namespaces; drops every capability; loads the seccomp filter (sandbox/seccomp.py);
- sees a read-only root that holds only /usr (and the lib/bin links into it), a fresh
  read-only /proc and a minimal read-only /dev; writes go to a size-capped tmpfs workdir
  (/work, also HOME) and /tmp, which vanish with the run;
- has a clean environment; its input files and stdin are copied in from memory;
- is killed with its whole PID namespace at the wall-clock limit, when its output passes the
  cap, when its CPU passes the limit or when the caller cancels it (the `cancel` event, polled
  every POLL_S); at the end of every run its pid 1 (which bwrap reports on --info-fd) is
  killed from outside, so nothing of it outlives `run()`.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import selectors
import shlex
import shutil
import signal
import subprocess
import threading
import time
from contextlib import suppress
from pathlib import Path, PurePosixPath

from sandbox.backend import Limits, Run, SandboxError, SandboxResult, StopReason
from sandbox.cgroups import Cgroups, RunCgroup
from sandbox.seccomp import bpf_program

WORKDIR = "/work"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
_MB = 1024 * 1024
UID_LOCKS = Path("/run/keel-sandbox")  # one lock file per uid in use
_READ_CHUNK = 65536


class UidPool:
    """Host uids for runs, never two runs on one uid at a time, across every worker process
    of the machine: a run holds an exclusive lock on its uid's lock file."""

    def __init__(self, base: int, count: int, lock_dir: Path = UID_LOCKS) -> None:
        self.base, self.count, self.lock_dir = base, count, lock_dir
        self._held: dict[int, int] = {}  # uid -> the locked file's descriptor
        self._lock = threading.Lock()

    def take(self) -> int:
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        first = random.randrange(self.count)  # workers start their search apart
        with self._lock:
            for i in range(self.count):
                uid = self.base + (first + i) % self.count
                fd = os.open(self.lock_dir / f"uid-{uid}.lock", os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._held[uid] = fd
                return uid
        raise SandboxError(f"all {self.count} sandbox uids from {self.base} are in use")

    def give_back(self, uid: int) -> None:
        with self._lock:
            fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)  # releases the lock


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

    def run(self, run: Run, cancel: threading.Event | None = None) -> SandboxResult:
        uid = self.uids.take() if os.geteuid() == 0 else os.geteuid()
        if uid == 0:
            raise SandboxError("sandboxed code must not run as root")
        fds: list[int] = []  # passed to bwrap, closed here afterwards
        group: RunCgroup | None = None
        info_read, info_write = os.pipe()  # bwrap's --info-fd: the host pid of its pid 1
        stdin = _memfd("stdin", run.stdin)  # a file, not a pipe: nothing to feed, no writer
        try:
            seccomp = _memfd("seccomp", bpf_program())
            fds += [info_write, seccomp]  # info_write first: _supervise closes it early
            file_args = self._file_args(run.files, fds)
            argv = [
                *self._prlimit_args(run.limits),
                *self._bwrap_args(run, seccomp, info_write, file_args),
                "--",
                *run.argv,
            ]
            if self.cgroups is not None:
                group = self.cgroups.create(uid, _total_memory(run.limits), run.limits.processes)
                argv = _joining(group, argv)
            return self._supervise(argv, run, uid, stdin, fds, info_read, group, cancel)
        finally:
            for fd in (*fds, info_read, stdin):
                os.close(fd)
            try:
                if group is not None:
                    group.destroy()
            finally:
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

    def _bwrap_args(
        self, run: Run, seccomp_fd: int, info_fd: int, file_args: list[str]
    ) -> list[str]:
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
            "--info-fd", str(info_fd),
            "--proc", "/proc",
            "--ro-bind", "/dev/null", "/proc/cmdline",  # the host's boot arguments
            "--dev", "/dev",
            "--size", disk, "--tmpfs", "/dev/shm",
            "--size", disk, "--tmpfs", "/tmp",
            "--size", disk, "--tmpfs", WORKDIR,
        ]  # fmt: skip
        for path in self.read_only:
            args += ["--ro-bind", str(path), str(path)]
        args += file_args
        # read-only root, /dev (its device nodes still work) and /proc (no writing to
        # /proc/1/mem, which would let a run take over bwrap's pid 1): only the tmpfs are
        # writable
        args += ["--remount-ro", "/dev", "--remount-ro", "/proc", "--remount-ro", "/"]
        args += ["--chdir", WORKDIR, "--clearenv"]
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
        self,
        argv: list[str],
        run: Run,
        uid: int,
        stdin: int,
        fds: list[int],
        info_read: int,
        group: RunCgroup | None,
        cancel: threading.Event | None,
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
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={},
                cwd="/",
                pass_fds=fds,
                start_new_session=True,
            )
        except OSError as err:
            raise SandboxError(f"could not start bwrap: {err}") from err
        # our copy of the info pipe's write end (taken off the list, never closed twice: its
        # number may belong to another run's descriptor a moment later)
        os.close(fds.pop(0))
        watch = _Watch(proc, info_read, limits, group, started + limits.wall_s, cancel)
        try:
            stopped = watch.pump()
            if stopped is None:  # it closed its outputs: it may still be running
                stopped = watch.wait_exit()
        except BaseException as err:
            _kill_group(proc.pid)
            watch.kill_sandbox()
            os.wait4(proc.pid, 0)
            proc.returncode = -1
            _close(proc)
            if isinstance(err, Exception):
                raise SandboxError(f"the sandbox supervisor failed: {err!r}") from err
            raise
        if stopped is not None:
            _kill_group(proc.pid)
        watch.kill_sandbox()  # whatever happened inside, its PID namespace ends here
        # wait4: the exit status and the resource use of the run's waited-for processes
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0  # reaped here; keeps Popen from waiting again
        _close(proc)
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
            stopped = _reason(sig, exit_code, watch.err.text(), cpu_ms / 1000, limits, oom)
        return SandboxResult(
            stdout=watch.out.text(),
            stderr=watch.err.text(),
            exit_code=exit_code,
            stopped=stopped,
            signal=sig,
            wall_ms=wall_ms,
            cpu_ms=cpu_ms,
            max_rss_kb=group.peak_kb() if group else usage.ru_maxrss,
            cgroup=group is not None,
            stdout_truncated=watch.out.truncated,
            stderr_truncated=watch.err.truncated,
            backend=self.name,
        )


POLL_S = 0.1  # how often the run's CPU (where a cgroup counts it) and `cancel` are checked


class _Watch:
    """One run seen from outside: its output, its pid 1, its CPU, its deadline, whether its
    caller cancelled it."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        info_read: int,
        limits: Limits,
        group: RunCgroup | None,
        deadline: float,
        cancel: threading.Event | None = None,
    ) -> None:
        assert proc.stdout and proc.stderr
        self.proc, self.limits, self.group, self.deadline = proc, limits, group, deadline
        self.cancel = cancel
        # without a cgroup to read or a cancel to notice, waiting blocks until the deadline
        self.poll_s = POLL_S if group is not None or cancel is not None else None
        self.out, self.err = _Capture(limits.output_bytes), _Capture(limits.output_bytes)
        self.info_read, self.info = info_read, b""
        self.pid1: int | None = None  # a pidfd of the sandbox's pid 1

    def pump(self) -> StopReason | None:
        """Collect output until both outputs close (the run ended), the deadline passes, the
        output cap is hit, the run's CPU (all its processes, where a cgroup counts them)
        passes its limit or the run is cancelled; the reason it had to stop, if any."""
        assert self.proc.stdout and self.proc.stderr
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ, self.out)
            sel.register(self.proc.stderr, selectors.EVENT_READ, self.err)
            sel.register(self.info_read, selectors.EVENT_READ, None)
            while sel.get_map():
                stop = self._stop()
                if stop is not None:
                    return stop
                for key, _ in sel.select(timeout=self._timeout()):
                    chunk = os.read(key.fd, _READ_CHUNK)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        if key.data is None:
                            self._learn_pid1()
                    elif key.data is None:
                        self.info += chunk
                    elif not key.data.add(chunk):
                        return StopReason.OUTPUT_LIMIT
                if self.group and self.group.cpu_ms() > self.limits.cpu_s * 1000:
                    return StopReason.CPU_TIME  # several processes, each under RLIMIT_CPU
        return None

    def wait_exit(self) -> StopReason | None:
        """After both outputs closed: None once bwrap exits (it is not reaped here), or the
        reason to stop a run that closed its outputs but kept running."""
        fd = os.pidfd_open(self.proc.pid)
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                while not sel.select(timeout=self._timeout()):
                    stop = self._stop()
                    if stop is not None:
                        return stop
                return None
        finally:
            os.close(fd)

    def _stop(self) -> StopReason | None:
        """Why the run must stop now, if it must: cancelled, or past its deadline."""
        if self.cancel is not None and self.cancel.is_set():
            return StopReason.CANCELLED
        return StopReason.WALL_TIME if time.monotonic() >= self.deadline else None

    def _timeout(self) -> float:
        """How long to wait for the run before looking again."""
        left = max(0.0, self.deadline - time.monotonic())
        return left if self.poll_s is None else min(left, self.poll_s)

    def _learn_pid1(self) -> None:
        try:
            pid = int(json.loads(self.info)["child-pid"])
            self.pid1 = os.pidfd_open(pid)  # bwrap is still running: the pid is the run's
        except (ValueError, KeyError, OSError):
            pass  # bwrap failed before starting the sandbox: nothing to kill

    def kill_sandbox(self) -> None:
        """SIGKILL the sandbox's pid 1 from outside, which ends its whole PID namespace."""
        if self.pid1 is not None:
            with suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pid1, signal.SIGKILL)
            os.close(self.pid1)
            self.pid1 = None


def _close(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdout, proc.stderr):
        if stream and not stream.closed:
            stream.close()


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
