"""One contract for every GraphStore backend: the embedded SQLite store and a real Neo4j."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from neo4j import GraphDatabase
from neo4j.exceptions import ConstraintError

from activities.memory.graph import GraphStore
from activities.memory.graph_neo4j import Neo4jGraphStore
from activities.memory.graph_sqlite import SqliteGraphStore
from keel.contracts import Triple
from keel.errors import ServiceStartError
from tests.conftest import Neo4jAccess

DAY1 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)


@pytest.fixture(params=["embedded", "neo4j"], scope="module")
def graph(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GraphStore]:
    store: GraphStore
    if request.param == "embedded":
        store = SqliteGraphStore(tmp_path_factory.mktemp("graph") / "graph.sqlite")
    else:
        neo4j = request.getfixturevalue("neo4j")
        store = Neo4jGraphStore(neo4j.uri, neo4j.user, neo4j.password)
    yield store
    store.close()


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def t(subject: str, relation: str, obj: str) -> Triple:
    return Triple(subject=subject, relation=relation, object=obj)


def test_asserted_facts_are_current(graph: GraphStore) -> None:
    u = user()
    stored = graph.assert_facts(
        u,
        [t("user", "preferred_language", "Python"), t("user", "lives_in", "Lisbon")],
        DAY1,
        "wf-1",
    )
    assert [(f.relation, f.object, f.valid_from, f.valid_to) for f in stored] == [
        ("preferred_language", "Python", DAY1, None),
        ("lives_in", "Lisbon", DAY1, None),
    ]
    current = {(f.subject, f.relation, f.object) for f in graph.facts(u)}
    assert current == {("user", "preferred_language", "Python"), ("user", "lives_in", "Lisbon")}


def test_contradiction_invalidates_and_history_is_kept(graph: GraphStore) -> None:
    u = user()
    graph.assert_facts(u, [t("user", "preferred_language", "Python")], DAY1, "wf-1")
    graph.assert_facts(u, [t("user", "preferred_language", "Go")], DAY2, "wf-2")

    assert [f.object for f in graph.facts(u)] == ["Go"]
    history = graph.history(u, "user", "preferred_language")
    assert [(f.object, f.valid_from, f.valid_to) for f in history] == [
        ("Python", DAY1, DAY2),
        ("Go", DAY2, None),
    ]
    # what did we know on each date?
    assert [f.object for f in graph.facts(u, at=DAY1 + timedelta(hours=1))] == ["Python"]
    assert [f.object for f in graph.facts(u, at=DAY3)] == ["Go"]
    assert graph.facts(u, at=DAY1 - timedelta(seconds=1)) == []


def test_restating_a_current_fact_changes_nothing(graph: GraphStore) -> None:
    u = user()
    first = graph.assert_facts(u, [t("user", "preferred_language", "Python")], DAY1, "wf-1")
    again = graph.assert_facts(u, [t("User", "preferred_language", "  python ")], DAY2, "wf-2")
    assert again[0].id == first[0].id and again[0].valid_from == DAY1
    assert len(graph.history(u, "user", "preferred_language")) == 1


def test_a_retried_write_is_not_duplicated(graph: GraphStore) -> None:
    u = user()
    triples = [t("user", "preferred_language", "Python"), t("project", "deadline", "Friday")]
    first = graph.assert_facts(u, triples, DAY1, "wf-1/remember")
    # the contradicting fact arrives, then the first write is retried (same source)
    graph.assert_facts(u, [t("user", "preferred_language", "Go")], DAY2, "wf-2/remember")
    retried = graph.assert_facts(u, triples, DAY1, "wf-1/remember")
    assert [f.id for f in retried] == [f.id for f in first]
    assert [f.object for f in graph.history(u, "user", "preferred_language")] == ["Python", "Go"]
    assert len(graph.facts(u)) == 2


def test_a_late_fact_goes_into_history_without_replacing_the_newer_one(
    graph: GraphStore,
) -> None:
    u = user()
    graph.assert_facts(u, [t("user", "lives_in", "Oslo")], DAY1, "wf-1")
    graph.assert_facts(u, [t("user", "lives_in", "Rome")], DAY3, "wf-3")
    [late] = graph.assert_facts(u, [t("user", "lives_in", "Paris")], DAY2, "wf-2")

    assert (late.valid_from, late.valid_to) == (DAY2, DAY3)
    assert [f.object for f in graph.facts(u)] == ["Rome"]
    assert [(f.object, f.valid_from, f.valid_to) for f in graph.history(u, "user", "lives_in")] == [
        ("Oslo", DAY1, DAY2),
        ("Paris", DAY2, DAY3),
        ("Rome", DAY3, None),
    ]
    assert [f.object for f in graph.facts(u, at=DAY2 + timedelta(hours=1))] == ["Paris"]


def test_users_never_see_each_others_facts(graph: GraphStore) -> None:
    alice, bob = user(), user()
    graph.assert_facts(alice, [t("user", "preferred_language", "Rust")], DAY1, "wf-a")
    graph.assert_facts(bob, [t("user", "preferred_language", "Java")], DAY2, "wf-b")
    assert [f.object for f in graph.facts(alice)] == ["Rust"]
    assert [f.object for f in graph.facts(bob)] == ["Java"]
    assert [f.object for f in graph.history(alice, "user", "preferred_language")] == ["Rust"]


def test_facts_filter_by_subject_and_limit(graph: GraphStore) -> None:
    u = user()
    graph.assert_facts(
        u,
        [t("user", "lives_in", "Oslo"), t("team", "size", "5"), t("team", "lead", "Ana")],
        DAY1,
        "wf-1",
    )
    assert {f.relation for f in graph.facts(u, subject="TEAM")} == {"size", "lead"}
    assert len(graph.facts(u, limit=2)) == 2


def test_hostile_text_is_data_not_query(graph: GraphStore) -> None:
    u = user()
    hostile = "x'}) MATCH (n) DETACH DELETE n; DROP TABLE facts; --"
    graph.assert_facts(u, [t(hostile, "note", hostile)], DAY1, "wf-1")
    assert [(f.subject, f.object) for f in graph.facts(u, subject=hostile)] == [(hostile, hostile)]
    assert graph.facts(u, subject="nobody") == []


def test_times_must_carry_a_zone(graph: GraphStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        graph.assert_facts(user(), [t("user", "x", "y")], datetime(2026, 1, 1), "wf-1")


def test_neo4j_store_refuses_a_wrong_password_in_one_line(neo4j: Neo4jAccess) -> None:
    with pytest.raises(
        ServiceStartError, match=r"cannot use Neo4j at bolt://.*KEEL_NEO4J_PASSWORD"
    ):
        Neo4jGraphStore(neo4j.uri, neo4j.user, "not-the-password")


def test_neo4j_store_declares_and_enforces_its_uniqueness(neo4j: Neo4jAccess) -> None:
    """The constraints are what make MERGE an upsert under concurrency, not a convention."""
    store = Neo4jGraphStore(neo4j.uri, neo4j.user, neo4j.password)
    u = user()
    [fact] = store.assert_facts(u, [t("user", "editor", "Helix")], DAY1, "wf-1")
    with GraphDatabase.driver(neo4j.uri, auth=(neo4j.user, neo4j.password)) as driver:
        records, _, _ = driver.execute_query("SHOW CONSTRAINTS YIELD name RETURN name")
        assert {"keel_entity", "keel_fact"} <= {r["name"] for r in records}
        with pytest.raises(ConstraintError):  # a second entity with the same user and name
            driver.execute_query("CREATE (:Entity {user_id: $u, key: 'user'})", u=u)
        with pytest.raises(ConstraintError):  # a second fact with the same id
            driver.execute_query(
                "MATCH (s:Entity {user_id: $u, key: 'user'}) CREATE (s)-[:FACT {id: $id}]->(s)",
                u=u,
                id=fact.id,
            )
    store.close()
