"""The seccomp filter every sandboxed process runs under, compiled once to BPF for bwrap.

Default allow, with a deny list of the calls a program needs only to attack its host or its
sandbox: debugging other processes, mounting, new namespaces, kernel modules and keyrings,
BPF and perf, io_uring (its own syscall surface), terminal injection, and sockets other than
Unix ones (the sandbox has no network; this closes netlink and packet sockets too). Denied
calls fail with EPERM, so a program sees an ordinary error rather than dying. Other
architectures' syscall numbers (i386 via int 0x80, x32) are killed by libseccomp's default.
"""

from __future__ import annotations

import errno
import tempfile
from functools import lru_cache

import pyseccomp as sc

DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr",
    "unshare", "setns",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd", "fanotify_init",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_by_handle_at", "name_to_handle_at",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "vhangup",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "personality", "uselib", "lookup_dcookie",
)  # fmt: skip
# clone flags that would create namespaces (unshare by another name)
NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
AF_UNIX = 1
TIOCSTI = 0x5412  # push characters into the terminal's input queue


def _filter() -> sc.SyscallFilter:
    f = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in DENIED:
        f.add_rule(sc.ERRNO(errno.EPERM), name)
    for flag in NAMESPACE_FLAGS:
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory, which seccomp cannot read: ENOSYS makes libc fall
    # back to clone, whose flags the rules above do see.
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.NE, AF_UNIX))
    f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socketpair", sc.Arg(0, sc.NE, AF_UNIX))
    f.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
    return f


@lru_cache(maxsize=1)
def bpf_program() -> bytes:
    """The filter as a BPF program, the form `bwrap --seccomp FD` loads."""
    with tempfile.TemporaryFile() as out:
        _filter().export_bpf(out)
        out.seek(0)
        return out.read()
