"""Child processes that die with the process that started them, however it ends.

The servers Keel starts (the Temporal dev server, the local model, Triton) are bound to
their parent (Neo4j's launcher has its own tie: it ends when its stdin closes). Linux sends
the child SIGKILL when the parent dies (`PR_SET_PDEATHSIG`), whether the parent exits, is
killed with SIGKILL or crashes with SIGSEGV, so a dead `keel` never leaves a server holding
its port and its data file.

The signal is armed by a tiny Python launcher that then `exec`s the real program (the flag
survives `execve`), so it works for any binary and needs no `preexec_fn` (unsafe in a
threaded parent). The launcher refuses to start when its parent is already gone.

Linux watches the parent *thread*: start bound children from a thread that lives as long as
the process (the main thread; an asyncio loop's own thread is fine, a short-lived worker
thread is not).
"""

from __future__ import annotations

import os
import sys
import threading

PR_SET_PDEATHSIG = 1
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('keel: the process that started this one is gone')\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def bound_to_this_process(command: list[str]) -> list[str]:
    """`command`, run so that it is killed when this process dies."""
    if not sys.platform.startswith("linux"):
        return command
    if threading.current_thread() is not threading.main_thread():
        # Linux would kill the child when this thread ends, not when the process does.
        raise RuntimeError("start a child bound to this process from the main thread")
    return [sys.executable, "-S", "-c", _LAUNCHER, str(os.getpid()), *command]


# --- leaving when asked ---------------------------------------------------------------------

SHUTDOWN_GRACE_S = 15.0  # asked to stop: this long to wind down, then the process just ends
_leaving = False


def leave_within(grace_s: float, code: int) -> None:
    """Call on a stop request (SIGINT, SIGTERM) before unwinding gracefully: should the
    unwinding not have ended the process `grace_s` from now (a Temporal worker waits on its
    long polls, a task on a server call), it ends then with `code`; a second request ends it
    at once. Its bound children die with it either way."""
    global _leaving
    if _leaving:
        _end(code)
    _leaving = True
    timer = threading.Timer(grace_s, _end, args=(code,))
    timer.daemon = True
    timer.start()


def _end(code: int) -> None:
    print("keel: stopped without waiting for the rest to wind down", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
