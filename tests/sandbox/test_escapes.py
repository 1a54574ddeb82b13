"""Escape suite: programs that attack the sandbox and its host, each of which must be contained.

Every attack prints BLOCKED and what stopped it, or ESCAPED; the check asserts the expected
containment (a specific error, a limit, an absence), never just "it did not crash". The
`host` fixture then checks the host: planted files unchanged, no file written outside the
workdir, no sandboxed process left, the worker's environment intact. Host-side listeners
check that nothing arrived over TCP, UDP or Unix sockets.
"""

from __future__ import annotations

import os
import socket
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.backend import Limits, SandboxResult, StopReason
from sandbox.bwrap import BwrapBackend
from tests.sandbox.conftest import Host, run_code

# ctypes preamble for attacks that go straight to the syscall (the stdlib wraps few of them)
SYSCALL = textwrap.dedent(
    """
    import ctypes, errno, os
    libc = ctypes.CDLL(None, use_errno=True)
    def sys(nr, *args):
        rc = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
        return rc, errno.errorcode.get(ctypes.get_errno(), "0")
    def attempt(label, nr, *args):
        rc, err = sys(nr, *args)
        print(("ESCAPED " if rc >= 0 else "BLOCKED ") + label + " " + err)
    """
)


@dataclass
class Listeners:
    tcp_port: int
    udp_port: int
    unix_path: Path
    abstract_name: str
    received: list[str]


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[Listeners]:
    """Host sockets an attack tries to reach; anything they receive is recorded."""
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix_path = tmp_path / "host.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(unix_path))
    unix.listen()
    abstract_name = f"keel-test-{tmp_path.name}"
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0" + abstract_name)
    abstract.listen()
    received: list[str] = []
    for sock in (tcp, udp, unix, abstract):
        sock.settimeout(0)
    yield Listeners(tcp.getsockname()[1], udp.getsockname()[1], unix_path, abstract_name, received)
    for name, sock in (("tcp", tcp), ("unix", unix), ("abstract", abstract)):
        try:
            sock.accept()
            received.append(name)
        except BlockingIOError:
            pass
    try:
        udp.recvfrom(100)
        received.append("udp")
    except BlockingIOError:
        pass
    for sock in (tcp, udp, unix, abstract):
        sock.close()
    assert received == [], f"host sockets were reached from the sandbox: {received}"


def blocked(*tokens: str) -> Callable[[SandboxResult], None]:
    def check(result: SandboxResult) -> None:
        assert "ESCAPED" not in result.stdout, result.stdout
        assert "BLOCKED" in result.stdout, (result.stdout, result.stderr)
        for token in tokens:
            assert token in result.stdout, (token, result.stdout, result.stderr)

    return check


def stopped(reason: StopReason) -> Callable[[SandboxResult], None]:
    def check(result: SandboxResult) -> None:
        assert result.stopped is reason, (result.stopped, result.stderr[-500:])
        assert "ESCAPED" not in result.stdout

    return check


def try_block(action: str, errors: str = "OSError") -> str:
    """Code that runs `action`, printing ESCAPED if it works and BLOCKED <error> if not."""
    body = "\n".join("    " + line for line in action.strip().splitlines())
    return (
        f"try:\n{body}\n    print('ESCAPED')\n"
        f"except ({errors}) as err:\n"
        "    print('BLOCKED', type(err).__name__, getattr(err, 'errno', ''), err)\n"
    )


@dataclass
class Attack:
    id: str
    code: str
    check: Callable[[SandboxResult], None]
    limits: Limits = Limits(wall_s=10)


def attacks(host: Host, net: Listeners) -> list[Attack]:
    marker = host.marker
    return [
        # -- network ---------------------------------------------------------------------
        Attack(
            "tcp_to_host_listener",
            try_block(f"import socket; socket.create_connection(('127.0.0.1', {net.tcp_port}), 2)"),
            blocked("97"),  # EAFNOSUPPORT: seccomp refuses inet sockets
        ),
        Attack(
            "tcp_to_internet",
            try_block("import socket; socket.create_connection(('1.1.1.1', 443), 2)"),
            blocked("97"),
        ),
        Attack(
            "udp_to_host_listener",
            try_block(
                "import socket\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"s.sendto(b'x', ('127.0.0.1', {net.udp_port}))"
            ),
            blocked("97"),
        ),
        Attack(
            "dns_lookup",
            try_block("import socket; socket.getaddrinfo('example.com', 443)", "OSError"),
            blocked(),
        ),
        Attack(
            "unix_socket_of_host_by_path",
            try_block(
                f"import socket; socket.socket(socket.AF_UNIX).connect({str(net.unix_path)!r})"
            ),
            blocked("FileNotFoundError"),
        ),
        Attack(
            "abstract_unix_socket_of_host",
            try_block(
                "import socket; socket.socket(socket.AF_UNIX)"
                f".connect('\\0' + {net.abstract_name!r})"
            ),
            blocked("ConnectionRefusedError"),  # another network namespace's name
        ),
        Attack(
            "netlink_socket",
            try_block("import socket; socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)"),
            blocked("97"),
        ),
        # -- file system -----------------------------------------------------------------
        Attack("etc_shadow", try_block("open('/etc/shadow').read()"), blocked("FileNotFoundError")),
        Attack(
            "host_secret_file",
            try_block(f"print(open({str(host.secret_file)!r}).read())"),
            blocked("FileNotFoundError"),
        ),
        Attack(
            "dotdot_traversal",
            try_block("print(open('../../../../../..' + '/etc/passwd').read())"),
            blocked("FileNotFoundError"),
        ),
        Attack(
            "host_repository_and_home",
            "import os\n"
            "seen = [p for p in ('/root', '/home', '/work/main', '/var', '/opt') if os.path.exists(p)]\n"
            "print('ESCAPED ' + str(seen) if seen else 'BLOCKED nothing of the host is there')",
            blocked("nothing of the host"),
        ),
        Attack(
            "symlink_to_host_file",
            try_block(
                f"import os; os.symlink({str(host.secret_file)!r}, 'link'); "
                "print(open('link').read())"
            ),
            blocked("FileNotFoundError"),
        ),
        Attack(
            "proc_1_environ",
            f"data = open('/proc/1/environ', 'rb').read() if __import__('os').access('/proc/1/environ', 4) else b''\n"
            f"print('ESCAPED' if {host.secret!r}.encode() in data else 'BLOCKED no host environment')",
            blocked("no host environment"),
        ),
        Attack(
            "write_outside_workdir",
            "import os\nhits = []\n"
            f"for d in ('/', '/tmp/..', '/usr', '/etc', '/proc', '/dev', {str(host.sentinel_dir)!r}):\n"
            "    try:\n"
            f"        open(os.path.join(d, {marker!r}), 'w').write('x'); hits.append(d)\n"
            "    except OSError:\n"
            "        pass\n"
            "print('ESCAPED ' + str(hits) if hits else 'BLOCKED read-only outside /work and /tmp')",
            blocked("read-only"),
        ),
        Attack(
            "overwrite_usr_binary",
            try_block("open('/usr/bin/python3', 'ab').write(b'x')"),
            blocked("PermissionError"),  # not its file, and a read-only mount besides
        ),
        Attack(
            "take_over_pid_1_through_proc_mem",
            try_block("open('/proc/1/mem', 'r+b', buffering=0)"),
            blocked("30"),  # EROFS: /proc is read-only, so bwrap's pid 1 cannot be rewritten
        ),
        Attack(
            "host_kernel_command_line",
            "import os\ntry:\n    data = open('/proc/cmdline').read()\nexcept OSError as err:\n"
            "    data = ''\nprint('ESCAPED ' + data if data.strip() else 'BLOCKED no boot arguments')",
            blocked("no boot arguments"),
        ),
        Attack(
            "read_worker_process_memory",
            try_block(f"open('/proc/{os.getpid()}/mem', 'rb').read(1)"),
            blocked("FileNotFoundError"),  # the worker's pid does not exist in the sandbox
        ),
        # -- resources -------------------------------------------------------------------
        Attack(
            "fork_bomb",
            "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            "            __import__('time').sleep(30); os._exit(0)\n        n += 1\n"
            "except OSError as err:\n    print('BLOCKED after', n, 'forks', err.errno)\n",
            blocked("after", "11"),  # EAGAIN: RLIMIT_NPROC / pids.max
            Limits(wall_s=10, processes=32),
        ),
        Attack(
            "memory_bomb",
            "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 * 1024))\n",
            stopped(StopReason.MEMORY),
            Limits(wall_s=10, memory_mb=256),
        ),
        Attack(
            "disk_fill_many_files",
            "import os\nn = 0\ntry:\n    while True:\n"
            "        open(f'f{n}', 'wb').write(b'x' * 1024 * 1024); n += 1\n"
            "except OSError as err:\n    print('BLOCKED after', n, 'MB', err.errno)\n",
            blocked("28"),  # ENOSPC at the workdir's size
            Limits(wall_s=10, disk_mb=16),
        ),
        Attack(
            "disk_fill_one_file",
            "import os\nf = open('big', 'wb')\ntry:\n    while True:\n"
            "        f.write(b'x' * 1024 * 1024); f.flush()\n"
            "except OSError as err:\n    print('BLOCKED at', os.path.getsize('big'), err.errno)\n",
            blocked("27"),  # EFBIG: RLIMIT_FSIZE (Python ignores SIGXFSZ)
            Limits(wall_s=10, disk_mb=64, file_mb=8),
        ),
        Attack(
            "cpu_spin",
            "while True:\n    pass\n",
            stopped(StopReason.CPU_TIME),
            Limits(wall_s=10, cpu_s=1),
        ),
        Attack(
            "sleep_past_wall_with_daemon",
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
            "    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\ntime.sleep(60)\n",
            stopped(StopReason.WALL_TIME),
            Limits(wall_s=1),
        ),
        Attack(
            "endless_output",
            "import sys\nwhile True:\n    sys.stdout.write('A' * 4096)\n",
            stopped(StopReason.OUTPUT_LIMIT),
            Limits(wall_s=10, output_bytes=16 * 1024),
        ),
        Attack(
            "open_files_exhaustion",
            "files = []\ntry:\n    while True:\n        files.append(open('/dev/null'))\n"
            "except OSError as err:\n    print('BLOCKED at', len(files), err.errno)\n",
            blocked("24"),  # EMFILE
            Limits(wall_s=10, open_files=32),
        ),
        # -- privilege -------------------------------------------------------------------
        Attack("ptrace_attach", SYSCALL + "attempt('ptrace', 101, 16, 1, 0, 0)", blocked("EPERM")),
        Attack(
            "unshare_user_namespace",
            SYSCALL + "attempt('unshare', 272, 0x10000000)",
            blocked("EPERM"),
        ),
        Attack(
            "clone_new_namespace",
            SYSCALL + "attempt('clone newuser', 56, 0x10000000 | 17, 0, 0, 0, 0)",
            blocked("EPERM"),
        ),
        Attack(
            "mount_tmpfs",
            SYSCALL
            + "attempt('mount', 165, ctypes.addressof(ctypes.create_string_buffer(b'none')),"
            " ctypes.addressof(ctypes.create_string_buffer(b'/tmp')),"
            " ctypes.addressof(ctypes.create_string_buffer(b'tmpfs')), 0, 0)",
            blocked("EPERM"),
        ),
        Attack("setuid_root", try_block("import os; os.setuid(0)"), blocked("22")),  # unmapped
        Attack(
            "capabilities_and_keyring",
            SYSCALL + "caps = [l for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
            "print('BLOCKED no capabilities' if caps.split()[1] == '0000000000000000' else 'ESCAPED ' + caps)\n"
            "attempt('keyctl', 250, 0, 0, 0, 0)\nattempt('bpf', 321, 0, 0, 0)",
            blocked("no capabilities", "keyctl EPERM", "bpf EPERM"),
        ),
        Attack(
            "terminal_injection",
            SYSCALL + "attempt('TIOCSTI', 16, 0, 0x5412, ctypes.addressof(ctypes.c_char(b'x')))",
            blocked("EPERM"),
        ),
        # -- information -----------------------------------------------------------------
        Attack(
            "environment_variables",
            "import os\n"
            f"leak = [k for k, v in os.environ.items() if {host.secret!r} in v or k.startswith('KEEL')]\n"
            "print('ESCAPED ' + str(leak) if leak else 'BLOCKED clean environment', sorted(os.environ))",
            blocked("clean environment"),
        ),
        Attack(
            "hostname_and_host_pids",
            "import os, socket\n"
            "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
            "ok = socket.gethostname() == 'sandbox' and len(pids) <= 3\n"
            "print('BLOCKED own hostname and pids' if ok else f'ESCAPED {socket.gethostname()} {pids}')",
            blocked("own hostname"),
        ),
    ]


ATTACK_IDS = [
    a.id
    for a in attacks(Host("s", Path("/x"), "m", Path("/x")), Listeners(1, 1, Path("/x"), "a", []))
]


def test_suite_covers_at_least_25_attacks() -> None:
    assert len(ATTACK_IDS) >= 25
    assert len(set(ATTACK_IDS)) == len(ATTACK_IDS)


@pytest.mark.parametrize("attack_id", ATTACK_IDS)
def test_attack_is_contained(
    attack_id: str, backend: BwrapBackend, host: Host, listeners: Listeners
) -> None:
    attack = next(a for a in attacks(host, listeners) if a.id == attack_id)
    result = run_code(backend, attack.code, attack.limits)
    attack.check(result)
    assert host.secret not in result.stdout + result.stderr


def test_other_sandboxes_files_are_invisible(backend: BwrapBackend, host: Host) -> None:
    """A run that leaves secrets in its workdir and /tmp, running at the same time as a run
    that looks for them everywhere it can."""
    writer_code = (
        f"open('/work/{host.marker}', 'w').write({host.secret!r})\n"
        f"open('/tmp/{host.marker}', 'w').write({host.secret!r})\n"
        "import sys, time; print('written', flush=True); time.sleep(3)\n"
    )
    results: dict[str, SandboxResult] = {}
    writer = threading.Thread(
        target=lambda: results.__setitem__("writer", run_code(backend, writer_code))
    )
    writer.start()
    # the reader keeps looking for 1.5 s, while the writer (sleeping 3 s) holds its files
    reader_code = (
        "import os, time\nfound = []\nend = time.monotonic() + 1.5\n"
        "while time.monotonic() < end and not found:\n"
        "    for root in ('/work', '/tmp', '/dev/shm', '/proc'):\n"
        "        for d, _, files in os.walk(root):\n"
        f"            found += [os.path.join(d, f) for f in files if f == {host.marker!r}]\n"
        "print('ESCAPED ' + str(found) if found else 'BLOCKED nothing of the other run')"
    )
    reader = run_code(backend, reader_code)
    writer.join()
    assert results["writer"].stdout.startswith("written")
    blocked("nothing of the other run")(reader)
    assert host.secret not in reader.stdout
