"""A memory worker in its own process for the crash test; with --crash it kills itself with
SIGKILL right after `remember` has written the episode and the facts, before the activity
can report completion: the worst moment for a retried write to duplicate memories.

    python -m tests.memory_crash_worker ADDRESS QUEUE_PREFIX KEEL_HOME [--crash]
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from activities.memory.graph_sqlite import SqliteGraphStore
from keel._queues import Queues
from keel.client import connect
from keel.contracts import Fact, Triple
from keel.settings import Settings
from workers import memory
from workers.components import Components
from workers.process import run_workers, stop_on_signals


class DiesAfterWriting(SqliteGraphStore):
    def assert_facts(
        self, user_id: str, triples: Sequence[Triple], at: datetime, source: str
    ) -> list[Fact]:
        stored = super().assert_facts(user_id, triples, at, source)
        os.kill(os.getpid(), signal.SIGKILL)
        return stored


async def main(address: str, prefix: str, home: Path, crash: bool) -> None:
    settings = Settings(
        home=home, temporal_address=address, planner_model="scripted", reasoner_model="scripted"
    )
    components = Components(settings=settings, queues=Queues(prefix))
    if crash:
        components._graph = DiesAfterWriting(settings.graph_path)
    client = await connect(settings)
    worker = memory.build(client, components)
    print("memory worker ready", flush=True)
    await run_workers([worker], stop_on_signals())
    components.close_memory()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), "--crash" in sys.argv))
