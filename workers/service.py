"""A server process that Keel starts and stops itself (Triton, Neo4j; PostgreSQL in tests):
`with Server(...) as server:` starts it and stops it on the way out, error or not."""

from __future__ import annotations

from typing import Self


class LocalServer:
    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
