"""The embedded graph backend: facts in one SQLite file, no server to run."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from activities.memory.graph import FACTS_LIMIT, fact_id, key, utc
from keel.contracts import Fact, Triple

_SCHEMA = """
CREATE TABLE IF NOT EXISTS facts (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    subject_key TEXT NOT NULL,
    relation TEXT NOT NULL,
    object TEXT NOT NULL,
    object_key TEXT NOT NULL,
    valid_from TEXT NOT NULL,
    valid_to TEXT,
    source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS facts_by_subject ON facts (user_id, subject_key, relation);
CREATE INDEX IF NOT EXISTS facts_by_user ON facts (user_id, valid_from);
"""
_COLUMNS = "id, subject, relation, object, valid_from, valid_to, source"


def _stamp(when: datetime) -> str:
    """ISO-8601 in UTC with fixed precision, so text order is time order."""
    return utc(when).isoformat(timespec="microseconds")


def _fact(row: sqlite3.Row) -> Fact:
    return Fact(
        id=row["id"],
        subject=row["subject"],
        relation=row["relation"],
        object=row["object"],
        valid_from=datetime.fromisoformat(row["valid_from"]),
        valid_to=datetime.fromisoformat(row["valid_to"]) if row["valid_to"] else None,
        source=row["source"],
    )


class SqliteGraphStore:
    backend = "embedded"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()  # one connection, called from worker threads

    def close(self) -> None:
        self._db.close()

    def assert_facts(
        self, user_id: str, triples: Sequence[Triple], at: datetime, source: str
    ) -> list[Fact]:
        stamp = _stamp(at)
        stored: list[Fact] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for triple in triples:
                    stored.append(self._assert(user_id, triple, stamp, source))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return stored

    def _assert(self, user_id: str, triple: Triple, stamp: str, source: str) -> Fact:
        new_id = fact_id(user_id, source, triple)
        row = self._db.execute(f"SELECT {_COLUMNS} FROM facts WHERE id = ?", (new_id,)).fetchone()
        if row is not None:  # a retry of a write that already happened
            return _fact(row)
        current = self._db.execute(
            f"SELECT {_COLUMNS}, object_key FROM facts WHERE user_id = ? AND subject_key = ? "
            "AND relation = ? AND valid_to IS NULL",
            (user_id, key(triple.subject), triple.relation),
        ).fetchall()
        for row in current:
            if row["object_key"] == key(triple.object):
                return _fact(row)
        where = "user_id = ? AND subject_key = ? AND relation = ?"
        scope = (user_id, key(triple.subject), triple.relation)
        # A late fact (learned before a newer one) ends where the next one begins.
        (valid_to,) = self._db.execute(
            f"SELECT MIN(valid_from) FROM facts WHERE {where} AND valid_from > ?", (*scope, stamp)
        ).fetchone()
        # Whatever held at that moment stops holding there.
        self._db.execute(
            f"UPDATE facts SET valid_to = ? WHERE {where} AND valid_from <= ? "
            "AND (valid_to IS NULL OR valid_to > ?)",
            (stamp, *scope, stamp, stamp),
        )
        self._db.execute(
            "INSERT INTO facts (id, user_id, subject, subject_key, relation, object, "
            "object_key, valid_from, valid_to, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                new_id,
                user_id,
                triple.subject,
                key(triple.subject),
                triple.relation,
                triple.object,
                key(triple.object),
                stamp,
                valid_to,
                source,
            ),
        )
        return Fact(
            id=new_id,
            subject=triple.subject,
            relation=triple.relation,
            object=triple.object,
            valid_from=datetime.fromisoformat(stamp),
            valid_to=datetime.fromisoformat(valid_to) if valid_to else None,
            source=source,
        )

    def facts(
        self,
        user_id: str,
        at: datetime | None = None,
        subject: str | None = None,
        limit: int = FACTS_LIMIT,
    ) -> list[Fact]:
        where = ["user_id = ?"]
        params: list[object] = [user_id]
        if at is None:
            where.append("valid_to IS NULL")
        else:
            where.append("valid_from <= ? AND (valid_to IS NULL OR valid_to > ?)")
            params += [_stamp(at), _stamp(at)]
        if subject is not None:
            where.append("subject_key = ?")
            params.append(key(subject))
        params.append(limit)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM facts WHERE {' AND '.join(where)} "
                "ORDER BY valid_from DESC, id LIMIT ?",
                params,
            ).fetchall()
        return [_fact(r) for r in rows]

    def history(self, user_id: str, subject: str, relation: str) -> list[Fact]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM facts WHERE user_id = ? AND subject_key = ? "
                "AND relation = ? ORDER BY valid_from, id",
                (user_id, key(subject), relation),
            ).fetchall()
        return [_fact(r) for r in rows]
