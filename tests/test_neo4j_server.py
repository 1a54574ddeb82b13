"""The real Neo4j 5.26 (community) server that `Neo4jServer` starts from Maven Central jars
speaks Cypher over Bolt: parameters, uniqueness constraints, MERGE."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from neo4j import Driver, GraphDatabase
from neo4j.exceptions import ConstraintError

from tests.conftest import Neo4jAccess


@pytest.fixture(scope="module")
def neo4j_driver(neo4j: Neo4jAccess) -> Iterator[Driver]:
    with GraphDatabase.driver(neo4j.uri, auth=(neo4j.user, neo4j.password)) as driver:
        yield driver


def test_cypher_over_bolt(neo4j_driver: Driver) -> None:
    records, _, _ = neo4j_driver.execute_query("RETURN 1 AS one")
    assert records[0]["one"] == 1

    neo4j_driver.execute_query(
        "CREATE CONSTRAINT probe_id IF NOT EXISTS FOR (p:Probe) REQUIRE p.id IS UNIQUE"
    )
    merge = "MERGE (p:Probe {id: $id}) ON CREATE SET p.name = $name RETURN p.name AS name"
    for _ in range(2):  # the second MERGE finds the node the first one made
        records, _, _ = neo4j_driver.execute_query(merge, id="e-1", name="Ada")
        assert [r["name"] for r in records] == ["Ada"]
    records, _, _ = neo4j_driver.execute_query("MATCH (p:Probe) RETURN count(p) AS n")
    assert records[0]["n"] == 1

    constraints, _, _ = neo4j_driver.execute_query("SHOW CONSTRAINTS YIELD name, type")
    assert {"name": "probe_id", "type": "UNIQUENESS"} in [r.data() for r in constraints]
    with pytest.raises(ConstraintError):
        neo4j_driver.execute_query("CREATE (:Probe {id: $id})", id="e-1")
