"""A per-task private copy of the allowed files; tool paths resolve inside it only.

Tools never see the host file system: the source folder is copied once per task (workflow
id) and every path is resolved in the copy, refusing `..` and symlinks that lead outside.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from keel.errors import ToolRefusal

_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")
MAX_FILE_BYTES = 256 * 1024


class WorkspaceError(ToolRefusal):
    """A path the task may not use, or a file that is not there."""


# A task's copy unused this long is deleted (a later call of the same task copies the files
# again); looked for at most every SWEEP_EVERY_S, when a task makes its copy.
IDLE_S = 24 * 3600
SWEEP_EVERY_S = 600
_last_sweep: dict[Path, float] = {}


def sweep(workspaces_dir: Path, idle_s: float = IDLE_S, now: float | None = None) -> list[str]:
    """Delete the task copies not used for `idle_s`; returns their names."""
    now = time.time() if now is None else now
    removed = []
    for entry in workspaces_dir.iterdir() if workspaces_dir.is_dir() else ():
        try:
            idle = now - entry.stat().st_mtime
        except FileNotFoundError:  # another worker removed it
            continue
        if entry.is_dir() and not entry.is_symlink() and idle > idle_s:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


class TaskWorkspace:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @staticmethod
    def _root(workspaces_dir: Path, task_id: str) -> Path:
        name = _SAFE_ID.sub("_", task_id)
        if name in ("", ".", ".."):  # would be the workspaces folder or its parent
            raise WorkspaceError(f"task id {task_id!r} cannot name a workspace")
        return workspaces_dir / name

    @classmethod
    def release(cls, workspaces_dir: Path, task_id: str) -> bool:
        """Delete the task's copy (its task has ended); whether there was one here."""
        root = cls._root(workspaces_dir, task_id)
        shutil.rmtree(root.with_name(root.name + ".tmp"), ignore_errors=True)
        if not root.exists():
            return False
        shutil.rmtree(root, ignore_errors=True)
        return True

    @classmethod
    def for_task(cls, workspaces_dir: Path, task_id: str, source: Path) -> TaskWorkspace:
        root = cls._root(workspaces_dir, task_id)
        if root.exists():
            os.utime(root)  # in use: not idle
        else:
            now = time.time()
            if now - _last_sweep.get(workspaces_dir, 0.0) > SWEEP_EVERY_S:
                _last_sweep[workspaces_dir] = now
                sweep(workspaces_dir, now=now)
            staging = root.with_name(root.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            # symlinks are copied as links so that resolve() can refuse the ones escaping.
            shutil.copytree(source, staging, symlinks=True)
            staging.rename(root)  # atomic: a retried activity sees all of the copy or none
        return cls(root)

    def resolve(self, relative: str) -> Path:
        if not relative or relative.startswith("/") or "\x00" in relative:
            raise WorkspaceError(f"path {relative!r} must be relative to the task's files")
        candidate = (self.root / relative).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            raise WorkspaceError(f"path {relative!r} leads outside the task's files")
        return candidate

    def read_text(self, relative: str) -> str:
        path = self.resolve(relative)
        if not path.is_file():
            raise WorkspaceError(
                f"no file {relative!r}; available: {', '.join(self.list_files()) or 'none'}"
            )
        if path.stat().st_size > MAX_FILE_BYTES:
            raise WorkspaceError(f"{relative!r} is larger than {MAX_FILE_BYTES} bytes")
        return path.read_text(encoding="utf-8", errors="replace")

    def list_files(self) -> list[str]:
        return sorted(
            str(p.relative_to(self.root))
            for p in self.root.rglob("*")
            if p.is_file() and not p.is_symlink()
        )
