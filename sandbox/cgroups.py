"""Per-run cgroups where the machine allows them (cgroup v1 memory, pids and cpuacct).

rlimits bind each process; a cgroup binds the run as a whole: total memory including its
tmpfs files, total processes, and it measures the CPU of every process the run had, even
those killed before anyone waited for them. Each run gets its own group under the worker's
own, and joins it before `bwrap` starts (so nothing it forks is outside). The groups are
made by the worker (root) and only their `cgroup.procs` is handed to the run's uid, so the
run can join its group and no other. Where the controllers are missing or read-only (most
containers, cgroup v2 without delegation) runs have rlimits only and report `cgroup: false`.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpuacct")
GROUP = "keel-sandbox"


@dataclass
class RunCgroup:
    dirs: dict[str, Path]

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs.values()]

    def cpu_ms(self) -> float:
        return int(_read(self.dirs["cpuacct"] / "cpuacct.usage") or 0) / 1e6

    def peak_kb(self) -> int:
        return int(_read(self.dirs["memory"] / "memory.max_usage_in_bytes") or 0) // 1024

    def out_of_memory(self) -> bool:
        control = _read(self.dirs["memory"] / "memory.oom_control") or ""
        kills = [line.split()[1] for line in control.splitlines() if line.startswith("oom_kill ")]
        return bool(kills and int(kills[0]) > 0)

    def destroy(self, timeout_s: float = 5.0) -> None:
        """Kill whatever is left in the group, remove the group, and return once every
        process it had is gone (a killed process leaves its cgroup before it has finished
        exiting, and a group can only be removed once it is empty)."""
        deadline = time.monotonic() + timeout_s
        seen: set[int] = set()
        for path in self.dirs.values():
            while path.exists():
                for pid in map(int, (_read(path / "cgroup.procs") or "").split()):
                    seen.add(pid)
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    path.rmdir()
                except FileNotFoundError:
                    break
                except OSError:
                    _pause_until(deadline)
        while any(running(pid) for pid in seen):
            _pause_until(deadline)


class Cgroups:
    def __init__(self, bases: dict[str, Path]) -> None:
        self.bases = bases

    @classmethod
    def detect(cls) -> Cgroups | None:
        """The worker's own v1 groups, if all three controllers are there and writable."""
        try:
            own = dict(
                (fields[1], fields[2])
                for fields in (
                    line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().split()
                )
            )
            bases = {}
            for controller in CONTROLLERS:
                if controller not in own:
                    return None
                base = ROOT / controller / own[controller].lstrip("/") / GROUP
                base.mkdir(exist_ok=True)
                bases[controller] = base
            groups = cls(bases)
            groups.sweep()
            return groups
        except OSError:
            return None

    def sweep(self) -> None:
        """Kill and remove the groups of workers that died mid-run (their pid is in the
        name); a live worker's groups, even just made and still empty, are left alone."""
        for stale in self.bases["pids"].glob("run-*"):
            owner = int(stale.name.split("-")[1])
            if not running(owner):
                with suppress(OSError, TimeoutError):
                    RunCgroup({c: base / stale.name for c, base in self.bases.items()}).destroy()

    def create(self, uid: int, memory_bytes: int, processes: int) -> RunCgroup:
        name = f"run-{os.getpid()}-{uuid.uuid4().hex}"
        dirs = {c: base / name for c, base in self.bases.items()}
        run = RunCgroup(dirs)
        try:
            for path in dirs.values():
                path.mkdir()
                os.chown(path / "cgroup.procs", uid, -1)
            (dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))
            with suppress(OSError):  # no swap accounting on some kernels
                (dirs["memory"] / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            (dirs["pids"] / "pids.max").write_text(str(processes))
        except OSError:
            run.destroy()
            raise
        return run


PF_EXITING = 0x4


def running(pid: int) -> bool:
    """Whether a process can still run code: not gone, not a zombie (done, waiting for its
    parent to reap it) and not inside exit (killed, releasing what it held)."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    if stat is None:
        return False
    fields = stat.rsplit(")", 1)[1].split()  # fields from the 3rd on: state, ppid, ...
    return fields[0] not in ("Z", "X") and not int(fields[6]) & PF_EXITING


def _pause_until(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError("sandbox processes did not exit within 5 s of SIGKILL")
    time.sleep(0.002)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
