"""The Neo4j graph backend: entities are nodes, facts are `FACT` relationships between them.

Parameterised Cypher only (never a query built from user text). Uniqueness constraints make
an entity unique per (user, name) and a fact unique by id; writes are `MERGE` upserts in one
transaction per batch, so a retried `remember` leaves the graph as one write would.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from neo4j import GraphDatabase, ManagedTransaction, Record
from neo4j.exceptions import AuthError, ServiceUnavailable

from activities.memory.graph import FACTS_LIMIT, fact_id, key, utc
from keel.contracts import Fact, Triple
from keel.errors import ServiceStartError

_CONSTRAINTS = (
    "CREATE CONSTRAINT keel_entity IF NOT EXISTS "
    "FOR (e:Entity) REQUIRE (e.user_id, e.key) IS UNIQUE",
    "CREATE CONSTRAINT keel_fact IF NOT EXISTS FOR ()-[f:FACT]-() REQUIRE f.id IS UNIQUE",
    "CREATE INDEX keel_fact_relation IF NOT EXISTS FOR ()-[f:FACT]-() ON (f.relation)",
)
_RETURN = (
    "RETURN f.id AS id, s.name AS subject, f.relation AS relation, o.name AS object, "
    "f.valid_from AS valid_from, f.valid_to AS valid_to, f.source AS source"
)
_BY_ID = f"MATCH (s:Entity)-[f:FACT {{id: $id}}]->(o:Entity) {_RETURN}"
# Writing to the subject takes its write lock, so concurrent assertions about one subject
# queue up instead of both finding no current fact.
_LOCK_SUBJECT = (
    "MERGE (s:Entity {user_id: $user_id, key: $subject_key}) ON CREATE SET s.name = $subject "
    "SET s.locked = true REMOVE s.locked"
)
_CURRENT = (
    "MATCH (s:Entity {user_id: $user_id, key: $subject_key})-[f:FACT]->(o:Entity) "
    f"WHERE f.relation = $relation AND f.valid_to IS NULL {_RETURN}, o.key AS object_key"
)
_NEXT_START = (
    "MATCH (:Entity {user_id: $user_id, key: $subject_key})-[f:FACT]->() "
    "WHERE f.relation = $relation AND f.valid_from > $at RETURN min(f.valid_from) AS next"
)
_CLOSE = (
    "MATCH (:Entity {user_id: $user_id, key: $subject_key})-[f:FACT]->() "
    "WHERE f.relation = $relation AND f.valid_from <= $at "
    "AND (f.valid_to IS NULL OR f.valid_to > $at) SET f.valid_to = $at"
)
_MERGE = (
    "MERGE (s:Entity {user_id: $user_id, key: $subject_key}) ON CREATE SET s.name = $subject "
    "MERGE (o:Entity {user_id: $user_id, key: $object_key}) ON CREATE SET o.name = $object "
    "MERGE (s)-[f:FACT {id: $id}]->(o) ON CREATE SET "
    "f.relation = $relation, f.valid_from = $at, f.valid_to = $valid_to, f.source = $source "
    f"{_RETURN}"
)
_FACTS = (
    "MATCH (s:Entity {user_id: $user_id})-[f:FACT]->(o:Entity) "
    "WHERE ($subject_key IS NULL OR s.key = $subject_key) AND CASE WHEN $at IS NULL "
    "THEN f.valid_to IS NULL ELSE f.valid_from <= $at AND (f.valid_to IS NULL OR "
    f"f.valid_to > $at) END {_RETURN} ORDER BY valid_from DESC, id LIMIT $limit"
)
_HISTORY = (
    "MATCH (s:Entity {user_id: $user_id, key: $subject_key})-[f:FACT]->(o:Entity) "
    f"WHERE f.relation = $relation {_RETURN} ORDER BY valid_from, id"
)


def _fact(record: Record) -> Fact:
    valid_to = record["valid_to"]
    return Fact(
        id=record["id"],
        subject=record["subject"],
        relation=record["relation"],
        object=record["object"],
        valid_from=record["valid_from"].to_native(),
        valid_to=valid_to.to_native() if valid_to is not None else None,
        source=record["source"],
    )


class Neo4jGraphStore:
    backend = "neo4j"

    def __init__(
        self, uri: str, user: str = "neo4j", password: str | None = None, database: str = "neo4j"
    ) -> None:
        auth = (user, password) if password else None
        self._driver = GraphDatabase.driver(uri, auth=auth)
        self._database = database
        try:
            for statement in _CONSTRAINTS:
                self._driver.execute_query(statement, database_=database)
        except (ServiceUnavailable, AuthError, OSError) as err:
            self._driver.close()
            raise ServiceStartError(
                f"cannot use Neo4j at {uri}: {err}; check KEEL_NEO4J_URL, KEEL_NEO4J_USER and "
                "KEEL_NEO4J_PASSWORD, or unset KEEL_NEO4J_URL for the embedded graph"
            ) from err

    def close(self) -> None:
        self._driver.close()

    def assert_facts(
        self, user_id: str, triples: Sequence[Triple], at: datetime, source: str
    ) -> list[Fact]:
        with self._driver.session(database=self._database) as session:
            return session.execute_write(self._assert_all, user_id, list(triples), utc(at), source)

    @staticmethod
    def _assert_all(
        tx: ManagedTransaction, user_id: str, triples: list[Triple], at: datetime, source: str
    ) -> list[Fact]:
        stored = []
        for triple in triples:
            params: dict[str, Any] = {
                "id": fact_id(user_id, source, triple),
                "user_id": user_id,
                "subject": triple.subject,
                "subject_key": key(triple.subject),
                "relation": triple.relation,
                "object": triple.object,
                "object_key": key(triple.object),
                "at": at,
                "source": source,
            }
            done = tx.run(_BY_ID, id=params["id"]).single()
            if done is not None:  # a retry of a write that already happened
                stored.append(_fact(done))
                continue
            tx.run(_LOCK_SUBJECT, params).consume()
            current = list(tx.run(_CURRENT, params))
            same = [r for r in current if r["object_key"] == params["object_key"]]
            if same:
                stored.append(_fact(same[0]))
                continue
            # A late fact (learned before a newer one) ends where the next one begins, and
            # whatever held at that moment stops holding there.
            following = tx.run(_NEXT_START, params).single(strict=True)["next"]
            params["valid_to"] = following
            tx.run(_CLOSE, params).consume()
            record = tx.run(_MERGE, params).single(strict=True)
            stored.append(_fact(record))
        return stored

    def facts(
        self,
        user_id: str,
        at: datetime | None = None,
        subject: str | None = None,
        limit: int = FACTS_LIMIT,
    ) -> list[Fact]:
        records, _, _ = self._driver.execute_query(
            _FACTS,
            user_id=user_id,
            at=utc(at) if at is not None else None,
            subject_key=key(subject) if subject is not None else None,
            limit=limit,
            database_=self._database,
        )
        return [_fact(r) for r in records]

    def history(self, user_id: str, subject: str, relation: str) -> list[Fact]:
        records, _, _ = self._driver.execute_query(
            _HISTORY,
            user_id=user_id,
            subject_key=key(subject),
            relation=relation,
            database_=self._database,
        )
        return [_fact(r) for r in records]
