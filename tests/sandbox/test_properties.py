"""Property tests: generated programs never write outside their workdir and never outlive
their wall limit, whatever mix of writes, links, processes and waiting they do."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.backend import Limits, StopReason
from sandbox.bwrap import BwrapBackend
from tests.sandbox.conftest import Host, run_code, sandbox_processes

WALL_S = 1.0
# generous: the limit is enforced by the supervisor, this only catches a run it lost track of
KILL_SLACK_S = 3.0

# places a program may try to write; only /work and /tmp are writable inside
TARGETS = st.sampled_from(
    [
        "out.txt",
        "sub/dir/out.txt",
        "../{marker}",
        "../../../{marker}",
        "/{marker}",
        "/tmp/{marker}",
        "/tmp/../{marker}",
        "/usr/{marker}",
        "/etc/{marker}",
        "/root/{marker}",
        "/dev/{marker}",
        "/proc/{marker}",
        "{sentinel}/{marker}",
        "{sentinel}/keep.txt",
    ]
)

STEP = st.one_of(
    st.tuples(st.just("write"), TARGETS, st.integers(0, 4096)),
    st.tuples(st.just("symlink"), TARGETS, TARGETS),
    st.tuples(st.just("spawn"), st.floats(0, 3)),  # a child that sleeps, maybe past the wall
    st.tuples(st.just("daemon"), st.floats(0, 3)),  # a detached grandchild in its own session
    st.tuples(st.just("sleep"), st.floats(0, 0.3)),
    st.tuples(st.just("spin"), st.integers(0, 200_000)),
)


def render(steps: list[tuple], host: Host) -> str:
    def path(template: str) -> str:
        return template.format(marker=host.marker, sentinel=host.sentinel_dir)

    lines = [
        "import os, subprocess, sys, time",
        "def guard(f):",
        "    try: f()",
        "    except OSError: pass",
    ]
    for step in steps:
        kind = step[0]
        if kind == "write":
            target = path(step[1])
            lines.append(
                f"guard(lambda: os.makedirs(os.path.dirname({target!r}) or '.', exist_ok=True))"
            )
            lines.append(f"guard(lambda: open({target!r}, 'w').write('x' * {step[2]}))")
        elif kind == "symlink":
            lines.append(f"guard(lambda: os.symlink({path(step[1])!r}, {path(step[2])!r}))")
            lines.append(f"guard(lambda: open({path(step[2])!r}, 'w').write('via link'))")
        elif kind == "spawn":
            lines.append(
                f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep({step[1]})'])"
            )
        elif kind == "daemon":
            lines.append(
                "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                f"        time.sleep({step[1]})\n    os._exit(0)"
            )
        elif kind == "sleep":
            lines.append(f"time.sleep({step[1]})")
        else:
            lines.append(f"for _ in range({step[1]}): pass")
    return "\n".join(lines) + "\n"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(STEP, min_size=1, max_size=6))
def test_generated_programs_stay_inside_and_die_at_the_wall(
    steps: list[tuple], backend: BwrapBackend, host: Host
) -> None:
    before = host.fingerprint()
    started = time.monotonic()
    result = run_code(backend, render(steps, host), Limits(wall_s=WALL_S, processes=32))
    elapsed = time.monotonic() - started
    assert host.fingerprint() == before
    assert host.stray_markers() == []
    assert sandbox_processes() == [], "a process of the run is still alive after it returned"
    assert elapsed < WALL_S + KILL_SLACK_S
    assert result.stopped in (StopReason.EXITED, StopReason.WALL_TIME), result.stderr[-500:]
    assert result.exit_code == 0 or result.stopped is StopReason.WALL_TIME, result.stderr[-500:]
