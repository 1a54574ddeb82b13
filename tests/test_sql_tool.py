"""`sql_query` against a real PostgreSQL (tests/postgres_server.py), called through the tool
activity as a worker runs it, and once end to end in an AgentTask workflow.

The reader role is `keel_reader`: password auth over TCP, SELECT on the seeded tables only.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.tools.activity import ToolActivities
from activities.tools.builtin import builtin_tools, default_registry
from activities.tools.registry import ToolRegistry
from activities.tools.sql import SqlUnavailable, _Database, _Limits, check_read_only
from keel import durable
from keel._ports import free_port
from keel._queues import TOOLS, Queues
from keel.client import start_task
from keel.contracts import SideEffects, StepStatus, TaskRequest, TaskStatus, ToolCall
from keel.durable import TOOL_ERROR
from keel.errors import ToolRefusal
from keel.settings import Settings, SettingsError
from keel.testing import scripted_plan
from tests.conftest import scripted_workers, unique
from tests.postgres_server import READER, PostgresServer

# What an agent writes when asked "how do all these relate?": ten tables joined on a
# low-cardinality column. Each table has 3,000 rows and 10 groups: about 6e25 result rows.
TEN_TABLE_JOIN = "SELECT count(*) FROM t1 " + " ".join(
    f"JOIN t{i} ON t{i}.grp = t{i - 1}.grp" for i in range(2, 11)
)
WAIT_S = 30.0  # deadline for the server to reach a state it is polled for


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def sql_settings(pg: PostgresServer, **overrides: Any) -> Settings:
    return Settings(sql_url=pg.url, **overrides)


async def run_sql(settings: Settings, query: str) -> dict[str, Any]:
    """One call through the tool activity (input validation, refusals, output validation),
    in an activity context as a worker gives it; the tool's JSON output."""
    registry = ToolRegistry(t for t in builtin_tools(settings) if t.spec.name == "sql_query")
    (activity_fn,) = ToolActivities(registry, settings).for_queue(TOOLS)
    call = ToolCall(
        workflow_id="wf-sql", step_id="s1", tool="sql_query", args={"query": query}, max_usd=0.0
    )
    result = await ActivityEnvironment().run(activity_fn, call)
    assert result.cost_usd == 0
    return dict(result.output)


async def refused(settings: Settings, query: str) -> str:
    """The refusal's message; refusals are non-retryable tool errors."""
    with pytest.raises(ApplicationError) as info:
        await run_sql(settings, query)
    assert info.value.type == TOOL_ERROR
    assert info.value.non_retryable
    return info.value.message


def snapshot(pg: PostgresServer) -> dict[str, Any]:
    """Everything a write could have changed, read as the superuser."""
    with pg.admin() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM customers), (SELECT sum(visits) FROM customers), "
            "(SELECT count(*) FROM orders), (SELECT sum(amount) FROM orders), "
            "(SELECT last_value FROM orders_id_seq), "
            "(SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables "
            " WHERE schemaname = 'public')"
        ).fetchone()
    assert row is not None
    keys = ("customers", "visits", "orders", "amount", "orders_seq", "tables")
    return dict(zip(keys, row, strict=True))


def reader_backends(pg: PostgresServer, state: str | None = None) -> int:
    with pg.admin() as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
        params: tuple[str, ...] = (READER,)
        if state is not None:
            query, params = query + " AND state = %s", (READER, state)
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def wait_reader_gone(pg: PostgresServer) -> None:
    """Until no keel_reader session is left: a backend flushes its table statistics before
    it leaves pg_stat_activity, so after this the counters include its work."""
    deadline = time.monotonic() + WAIT_S
    while reader_backends(pg):
        assert time.monotonic() < deadline, "keel_reader sessions did not end"
        time.sleep(0.01)  # poll interval


def table_scans(pg: PostgresServer) -> dict[str, int]:
    with pg.admin() as conn:
        rows = conn.execute(
            "SELECT relname, seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
            "WHERE relname ~ '^t[0-9]+$'"
        ).fetchall()
    return {name: int(scans) for name, scans in rows}


def test_registered_only_with_a_database_and_with_honest_metadata() -> None:
    assert "sql_query" not in {s.name for s in default_registry(Settings()).specs()}

    settings = Settings(sql_url="postgresql://reader@db.invalid/shop", sql_timeout_ms=4000)
    (spec,) = [s for s in default_registry(settings).specs() if s.name == "sql_query"]
    assert spec.side_effects == SideEffects.READ
    assert spec.idempotent and not spec.requires_approval
    assert spec.cost_per_call_usd == 0
    assert spec.timeout_s > 4  # the activity outlives the query's own time budget
    assert spec.input_schema["properties"]["query"]["maxLength"] > 0
    assert "4000 ms" in spec.description and "200 rows" in spec.description

    # a malformed URL stops the worker at start, without echoing what may be a password
    with pytest.raises(SettingsError, match="KEEL_SQL_URL is not a valid") as info:
        default_registry(Settings(sql_url="reader s3cret-pw@db/shop"))
    assert "s3cret" not in str(info.value)


async def test_select_returns_json_rows(pg: PostgresServer) -> None:
    out = await run_sql(
        sql_settings(pg),
        "SELECT o.id, o.amount, o.placed_at, o.receipt, o.meta, c.since "
        "FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id <= 3 ORDER BY o.id",
    )
    assert out["columns"] == ["id", "amount", "placed_at", "receipt", "meta", "since"]
    assert out["row_count"] == 3 and not out["truncated"]
    first = out["rows"][0]
    assert first[0] == 1
    assert first[1] == 1.75  # numeric(10,2) as a JSON number
    placed = dt.datetime.fromisoformat(first[2])
    assert placed == dt.datetime(2025, 1, 1, 1, tzinfo=dt.UTC)
    assert first[3] == "\\x6b65656c"  # bytea as PostgreSQL's hex text
    assert first[4] == {"n": 1}  # jsonb as JSON
    assert first[5] == "2024-01-03"  # customer 2's date
    assert 0 < out["estimated_cost"] < Settings().sql_max_cost
    assert out["text"].startswith("3 rows; columns: id, amount")
    assert "1 | 1.75 |" in out["text"]

    grouped = await run_sql(
        sql_settings(pg),
        "SELECT city, count(*) FROM customers GROUP BY city ORDER BY city",
    )
    assert grouped["rows"] == [["Lisbon", 5], ["Oslo", 5], ["Quito", 5], ["Turin", 5]]


async def test_row_limit_truncates(pg: PostgresServer) -> None:
    settings = sql_settings(pg, sql_row_limit=50)
    out = await run_sql(settings, "SELECT id FROM t1 ORDER BY id")
    assert out["rows"] == [[i] for i in range(1, 51)]
    assert out["row_count"] == 50 and out["truncated"]
    assert "truncated" in out["text"] and "KEEL_SQL_ROW_LIMIT" in out["text"]

    exactly = await run_sql(settings, "SELECT id FROM t1 WHERE id <= 50")
    assert exactly["row_count"] == 50 and not exactly["truncated"]


async def test_keywords_inside_literals_and_quotes_are_data(pg: PostgresServer) -> None:
    query = (
        "SELECT 'DROP TABLE orders; DELETE' AS \"update\", $t$INSERT; $t$ AS x, "
        "E'it\\'s; SET' AS y /* DELETE FROM orders; */ -- ; UPDATE\n;"
    )
    out = await run_sql(sql_settings(pg), query)
    assert out["columns"] == ["update", "x", "y"]
    assert out["rows"] == [["DROP TABLE orders; DELETE", "INSERT; ", "it's; SET"]]


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("INSERT INTO customers (name, city, since) VALUES ('x', 'y', now())", "not 'INSERT'"),
        ("UPDATE customers SET visits = 99", "not 'UPDATE'"),
        ("DELETE FROM orders", "not 'DELETE'"),
        ("DROP TABLE orders", "not 'DROP'"),
        ("CREATE TABLE stolen AS SELECT * FROM customers", "not 'CREATE'"),
        ("TRUNCATE orders", "not 'TRUNCATE'"),
        ("COPY customers TO '/tmp/keel-stolen.csv'", "not 'COPY'"),
        ("SET statement_timeout = 0", "not 'SET'"),
        ("EXPLAIN ANALYZE DELETE FROM orders", "not 'EXPLAIN'"),
        ("WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone", "DELETE is"),
        ("WITH x AS (UPDATE customers SET visits = 1 RETURNING 1) SELECT * FROM x", "UPDATE is"),
        ("SELECT * INTO stolen FROM customers", "INTO is"),
        ("SELECT * FROM customers FOR UPDATE", "UPDATE is"),
        ("SELECT * FROM customers FOR KEY SHARE", "SHARE is"),
        ("SELECT 1; DROP TABLE orders", "2 statements"),
        ("SELECT 'a'';'; DELETE FROM orders; --'", "2 statements"),
        ("SELECT $q$ $q$; DROP TABLE orders", "2 statements"),
        ("SELECT 1 /* /* nested */ still a comment; */; DROP TABLE orders", "2 statements"),
        ("SELECT 'unterminated; DROP TABLE orders", "unterminated string"),
        ("   ;  -- nothing", "empty"),
        # PostgreSQL ends a line comment at a carriage return: what follows is SQL
        ("SELECT 1 --\r; COMMIT; SELECT bump_visits(1); SELECT 1\nAS x", "send exactly one"),
    ],
)
async def test_writes_and_ddl_are_refused(pg: PostgresServer, query: str, why: str) -> None:
    before = snapshot(pg)
    message = await refused(sql_settings(pg), query)
    assert why in message
    assert message.startswith("sql_query: ")
    assert snapshot(pg) == before  # the tables, their rows and the sequence are intact


@pytest.mark.parametrize(
    ("query", "why"),
    [
        # a SECURITY DEFINER function writes with its owner's rights: only the read-only
        # transaction stops it
        ("SELECT bump_visits(1)", "cannot execute UPDATE in a read-only transaction"),
        ("SELECT set_config('transaction_read_only', 'off', true)", "transaction read-write"),
        ("SELECT nextval('orders_id_seq')", "permission denied for sequence"),
        ("SELECT pg_read_file('postgresql.conf')", "permission denied for function"),
        ("SELECT * FROM secrets", "permission denied for table secrets"),
    ],
)
async def test_the_database_refuses_what_the_keyword_filter_lets_through(
    pg: PostgresServer, query: str, why: str
) -> None:
    assert check_read_only(query) == query  # the text alone looks like a harmless SELECT
    before = snapshot(pg)
    message = await refused(sql_settings(pg), query)
    assert f"the database refused the query: {why}" in message
    assert snapshot(pg) == before


async def test_the_database_runs_one_statement_per_call_whatever_the_text_check_says(
    pg: PostgresServer,
) -> None:
    """Defence in depth under the text check: the statements go over the extended protocol,
    which runs one statement at most, so a `COMMIT` smuggled past the check cannot end the
    read-only transaction and let a write through."""
    limits = _Limits(timeout_ms=2000, row_limit=10, max_cost=1e9)
    before = snapshot(pg)
    with pytest.raises(ToolRefusal, match="cannot insert multiple commands"):
        await _Database(pg.url).run("SELECT 1; COMMIT; SELECT bump_visits(1)", limits)
    assert snapshot(pg) == before


def test_bump_visits_does_write_outside_a_read_only_transaction(pg: PostgresServer) -> None:
    """The control for the test above: the same reader, in an ordinary transaction, can
    write through the function, so it is the tool's READ ONLY that stopped it there."""
    with psycopg.connect(pg.url) as conn:
        row = conn.execute("SELECT bump_visits(1)").fetchone()
        assert row is not None and row[0] == 1  # one more visit than the seeded 0
        conn.rollback()
    assert snapshot(pg)["visits"] == 0


async def test_statement_timeout_stops_a_slow_query(pg: PostgresServer) -> None:
    started = time.monotonic()
    message = await refused(sql_settings(pg, sql_timeout_ms=300), "SELECT pg_sleep(10)")
    assert time.monotonic() - started >= 0.3  # it ran until its budget was spent
    assert "ran longer than 300 ms (KEEL_SQL_TIMEOUT_MS)" in message
    assert reader_backends(pg, state="active") == 0  # cancelled on the server, not left running


async def test_pathological_join_is_refused_before_running(pg: PostgresServer) -> None:
    # A minute to run: were the query not refused, this test would fail on a timeout
    # message instead of the cost gate's.
    settings = sql_settings(pg, sql_timeout_ms=60_000)
    wait_reader_gone(pg)
    scans_before = table_scans(pg)

    message = await refused(settings, TEN_TABLE_JOIN)
    assert "refused before running" in message
    assert "over the limit of 100,000 (KEEL_SQL_MAX_COST)" in message
    assert "e+" in message  # an astronomical estimate, written as such

    # The database is responsive and nothing of the reader's is running ...
    assert (await run_sql(settings, "SELECT 1"))["rows"] == [[1]]
    assert reader_backends(pg, state="active") == 0
    # ... and the join never touched its tables: no scan was counted.
    wait_reader_gone(pg)
    assert table_scans(pg) == scans_before

    # The control: a query that does run is counted (so the check above can fail).
    out = await run_sql(settings, "SELECT count(*) FROM t1 WHERE grp = 3")
    assert out["rows"] == [[300]]
    wait_reader_gone(pg)
    assert table_scans(pg)["t1"] > scans_before["t1"]

    # With filters and a LIMIT, the same ten tables are cheap enough to run.
    cheap = TEN_TABLE_JOIN.replace("count(*)", "t1.id, t10.id") + " WHERE t1.id = 1 LIMIT 5"
    assert (await run_sql(settings, cheap))["row_count"] == 5


async def test_database_errors_are_refusals_with_the_reason(pg: PostgresServer) -> None:
    message = await refused(sql_settings(pg), "SELECT nosuch FROM customers")
    assert 'column "nosuch" does not exist' in message
    assert pg.reader_password not in message


async def test_connection_failure_is_retryable_and_never_shows_the_password(
    pg: PostgresServer,
) -> None:
    wrong = "wrong-Pa55word-xyz"
    bad_password = sql_settings(pg).model_copy(
        update={"sql_url": pg.url.replace(pg.reader_password, wrong)}
    )
    with pytest.raises(ApplicationError) as info:  # not a refusal: Temporal retries it
        await run_sql(bad_password, "SELECT 1")
    assert info.value.type == durable.TOOL_FAILED and not info.value.non_retryable
    assert isinstance(info.value.__cause__, SqlUnavailable)
    message = info.value.message
    assert message.startswith("sql_query failed: SqlUnavailable: cannot connect")
    assert "KEEL_SQL_URL" in message and "password authentication failed" in message
    assert wrong not in message and pg.reader_password not in message

    closed_port = free_port()  # bound and released: nothing listens there
    nowhere = Settings(sql_url=f"postgresql://{READER}:{wrong}@127.0.0.1:{closed_port}/shop")
    with pytest.raises(ApplicationError) as info:
        await run_sql(nowhere, "SELECT 1")
    assert info.value.type == durable.TOOL_FAILED and not info.value.non_retryable
    assert "KEEL_SQL_URL" in info.value.message and wrong not in info.value.message


async def test_sql_query_in_an_agent_task(
    temporal_env: WorkflowEnvironment, pg: PostgresServer, tmp_path: Path
) -> None:
    """A plan whose second step is the ten-table join: the step fails once, with the cost
    gate's reason, without retries; the replanned query runs and the task completes."""
    settings = Settings(
        home=tmp_path, planner_model="scripted", reasoner_model="scripted", sql_url=pg.url
    )
    queues = Queues(f"sql-{uuid.uuid4().hex[:6]}-")  # the session's workers have no sql_query
    task = unique("How many customers per city, and how do the t tables relate?")
    by_city = "SELECT city, count(*) AS n FROM customers GROUP BY city ORDER BY city"
    async with scripted_workers(temporal_env.client, settings, queues) as (_, model):
        model.script(
            task,
            "plan",
            scripted_plan(
                {"id": "s1", "tool": "sql_query", "args": {"query": by_city}},
                {"id": "s2", "tool": "sql_query", "args": {"query": TEN_TABLE_JOIN}},
            ),
            scripted_plan(
                {"id": "s3", "tool": "sql_query", "args": {"query": "SELECT count(*) FROM t1"}}
            ),
        )
        handle = await start_task(temporal_env.client, TaskRequest(task=task), queues=queues)
        result = await handle.result()

    assert result.status == TaskStatus.COMPLETED
    assert result.replans == 1
    steps = {s.step_id: s for s in result.steps}
    assert steps["s1"].status == StepStatus.SUCCEEDED
    assert (steps["s1"].output or {})["rows"] == [
        ["Lisbon", 5],
        ["Oslo", 5],
        ["Quito", 5],
        ["Turin", 5],
    ]
    assert steps["s2"].status == StepStatus.FAILED
    assert "refused before running" in (steps["s2"].error or "")
    assert steps["s3"].status == StepStatus.SUCCEEDED
    assert (steps["s3"].output or {})["rows"] == [[3000]]
    assert all(s.cost_usd == 0 for s in result.steps)

    history = await handle.fetch_history()
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    }
    sql_attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
        and scheduled[e.activity_task_started_event_attributes.scheduled_event_id]
        == "tool.sql_query"
    ]
    assert sql_attempts == [1, 1, 1]  # three calls, the refused one not retried
