"""`sql_query`: read-only SQL against PostgreSQL, guarded so that an agent's query can neither
change the database nor hang it ("you give the agent a database tool, it writes a 10-table
JOIN and hangs production").

Every call, in order:

1. The text is tokenized (string literals, quoted identifiers, dollar quotes and comments
   are skipped): it must be exactly one statement, starting with SELECT, WITH, VALUES or
   TABLE, with no data-changing or DDL keyword anywhere outside literals (a data-modifying
   CTE, SELECT INTO, FOR UPDATE ...).
2. A fresh connection opens a READ ONLY transaction with SET LOCAL statement_timeout,
   lock_timeout and idle_in_transaction_session_timeout; one time budget
   (KEEL_SQL_TIMEOUT_MS) covers the whole call. The transaction is never committed.
3. EXPLAIN (FORMAT JSON) prices the plan; above KEEL_SQL_MAX_COST the query is refused
   before it runs.
4. The query runs through a server-side cursor and at most KEEL_SQL_ROW_LIMIT + 1 rows are
   fetched, so a huge result never leaves the server.

The database role in KEEL_SQL_URL should be allowed SELECT and nothing else: the keyword
filter is a first line, the read-only transaction and the role's rights are what the
database itself enforces (a function that writes, `nextval`, server files ...).

Refusals (the query's fault) raise ToolRefusal, which the tool activity turns into a
non-retryable error the planner can act on; an unreachable database raises SqlUnavailable,
retried by Temporal. The URL's password never appears in an error or output.

A cancelled call (its activity cancelled with its task) stops its statement on the server, not
only here: psycopg (3.2 and later) answers the cancellation of a task waiting on a statement
with a cancel request to the server and waits for the statement to end; the connection is
then closed. Merely closing it would leave the query running until it next wrote to the
client. tests/test_tool_cancel.py checks that no query of the reader stays active.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import errors as pg_errors
from pydantic import BaseModel, Field

from activities.tools.registry import ToolContext, ToolFn
from keel.errors import KeelError, ToolRefusal
from keel.settings import Settings, SettingsError

MAX_QUERY_CHARS = 10_000
MAX_CELL_CHARS = 1_000  # longer values are cut (a row of huge values would flood the plan)
MAX_OUTPUT_CHARS = 256 * 1024  # rows past this are left out, as past the row limit
TEXT_ROWS = 20  # rows rendered in `text`
TEXT_CELL_CHARS = 60
CONNECT_TIMEOUT_S = 5
CURSOR_NAME = "keel_sql_query"
ALLOWED_FIRST = ("SELECT", "WITH", "VALUES", "TABLE")
# Words that change data, the schema, the session or the transaction. Most can only start
# a statement (which step 1 refuses anyway); INSERT/UPDATE/DELETE/MERGE can hide in a CTE,
# INTO makes SELECT create a table, UPDATE/SHARE after FOR lock rows.
FORBIDDEN = frozenset(
    {
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "TRUNCATE",
        "COPY",
        "INTO",
        "CREATE",
        "ALTER",
        "DROP",
        "COMMENT",
        "GRANT",
        "REVOKE",
        "REASSIGN",
        "SECURITY",
        "IMPORT",
        "REFRESH",
        "REINDEX",
        "CLUSTER",
        "VACUUM",
        "ANALYZE",
        "CHECKPOINT",
        "LOAD",
        "CALL",
        "DO",
        "SET",
        "RESET",
        "LOCK",
        "LISTEN",
        "NOTIFY",
        "UNLISTEN",
        "PREPARE",
        "EXECUTE",
        "DEALLOCATE",
        "DISCARD",
        "DECLARE",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "ABORT",
    }
)
# SQLSTATE classes that mean "this query is wrong or not allowed": retrying cannot help, the
# planner should write another. Anything else (connection loss, server shutdown, out of
# resources, lock timeout, serialization failure) is retried.
_REFUSED_CLASSES = frozenset(
    {"0A", "21", "22", "25", "2F", "38", "39", "3F", "42", "44", "54", "P0", "0L", "0P"}
)


def description(settings: Settings) -> str:
    """What the planner reads about the tool, with this deployment's limits."""
    return (
        "Run one read-only SQL query (PostgreSQL: SELECT, WITH, VALUES or TABLE) against the "
        "database and get its rows. Writes, DDL and SET are refused. A query the database "
        "estimates as expensive (e.g. many joins without filters) is refused before it runs, "
        f"and one running over {settings.sql_timeout_ms} ms is stopped: filter with WHERE, "
        "join on keys, aggregate in SQL, add a LIMIT. At most "
        f"{settings.sql_row_limit} rows are returned (`truncated` says when there were more). "
        "To see the tables: SELECT table_name, column_name, data_type FROM "
        "information_schema.columns WHERE table_schema = 'public'."
    )


class SqlQueryInput(BaseModel):
    query: str = Field(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="one PostgreSQL SELECT (or WITH / VALUES / TABLE) statement, e.g. "
        "SELECT city, count(*) FROM customers GROUP BY city ORDER BY 2 DESC LIMIT 10",
    )


class SqlQueryOutput(BaseModel):
    columns: list[str]
    rows: list[list[Any]] = Field(
        description="JSON values: numbers, strings (dates ISO 8601, bytes as \\x hex), "
        "booleans, null, lists and objects"
    )
    row_count: int = Field(description="rows returned (after the row limit)")
    truncated: bool = Field(description="the query had more rows than were returned")
    estimated_cost: float = Field(description="the planner's estimate (EXPLAIN total cost)")
    text: str


class SqlUnavailable(KeelError, RuntimeError):
    """The database could not be reached or failed for a reason other than the query."""


def activity_timeout_s(settings: Settings) -> float:
    """The activity's timeout: connecting, then the query's whole time budget, plus slack."""
    return CONNECT_TIMEOUT_S + settings.sql_timeout_ms / 1000 + 5


def sql_query_tool(settings: Settings) -> ToolFn:
    """The tool function bound to the deployment's database and limits."""
    if not settings.sql_url:
        raise SettingsError("sql_query needs a database: set KEEL_SQL_URL")
    try:
        pg_conninfo.conninfo_to_dict(settings.sql_url)
    except psycopg.Error:  # not echoed: the text may hold a password
        raise SettingsError(
            "KEEL_SQL_URL is not a valid PostgreSQL URL "
            "(postgresql://user:password@host:port/dbname)"
        ) from None
    database = _Database(settings.sql_url)
    limits = _Limits(settings.sql_timeout_ms, settings.sql_row_limit, settings.sql_max_cost)

    async def sql_query(args: SqlQueryInput, ctx: ToolContext) -> SqlQueryOutput:
        statement = check_read_only(args.query)
        return await database.run(statement, limits)

    return sql_query


# -- step 1: the text ------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # word, string, ident, semi, punct
    text: str
    start: int
    end: int


_SIMPLE = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n\r]*)  # PostgreSQL ends a line comment at CR too
  | (?P<estring>[eE]'(?:[^'\\]|\\.|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<ident>"(?:[^"]|"")*")
  | (?P<dollar>\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$)
  | (?P<word>[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*)
  | (?P<semi>;)
  | (?P<block>/\*)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def tokenize(query: str) -> Iterator[Token]:
    """PostgreSQL's lexical structure, as far as telling code from literals needs:
    '...' (standard conforming), E'...', "...", $tag$...$tag$, -- and nested /* */ comments.
    Whitespace and comments are dropped."""
    pos = 0
    while pos < len(query):
        match = _SIMPLE.match(query, pos)
        assert match is not None  # `punct` matches any character
        kind, end = match.lastgroup or "punct", match.end()
        if kind == "block":
            end = _block_comment_end(query, pos)
        elif kind == "dollar":
            close = query.find(match.group(), end)
            if close < 0:
                raise ToolRefusal("the query has an unterminated dollar-quoted string")
            end = close + len(match.group())
            kind = "string"
        elif kind == "estring":
            kind = "string"
        elif kind == "punct" and match.group() in "'\"":
            what = "string literal" if match.group() == "'" else "quoted identifier"
            raise ToolRefusal(f"the query has an unterminated {what}")
        if kind not in ("space", "comment", "block"):
            yield Token(kind, query[pos:end], pos, end)
        pos = end


def _block_comment_end(query: str, pos: int) -> int:
    depth = 0
    while pos < len(query):
        if query.startswith("/*", pos):
            depth, pos = depth + 1, pos + 2
        elif query.startswith("*/", pos):
            depth, pos = depth - 1, pos + 2
            if depth == 0:
                return pos
        else:
            pos += 1
    raise ToolRefusal("the query has an unterminated /* comment */")


def check_read_only(query: str) -> str:
    """The one statement of `query` (without a trailing semicolon) if it is a read-only
    query; otherwise ToolRefusal saying why not."""
    tokens = list(tokenize(query))
    statements: list[list[Token]] = [[]]
    for token in tokens:
        if token.kind == "semi":
            statements.append([])
        else:
            statements[-1].append(token)
    statements = [s for s in statements if s]
    if not statements:
        raise ToolRefusal("the query is empty")
    if len(statements) > 1:
        raise ToolRefusal(
            f"the query has {len(statements)} statements; send exactly one (no `;` between "
            "statements)"
        )
    statement = statements[0]
    first = next((t for t in statement if t.text != "("), None)
    if first is None or first.kind != "word" or first.text.upper() not in ALLOWED_FIRST:
        shown = first.text[:30] if first is not None else "("
        raise ToolRefusal(
            f"only read-only queries run here: a statement starting with "
            f"{', '.join(ALLOWED_FIRST)}, not {shown!r}"
        )
    for i, token in enumerate(statement):
        if token.kind != "word":
            continue
        word = token.text.upper()
        before = statement[i - 1] if i > 0 else None
        after = statement[i + 1] if i + 1 < len(statement) else None
        if (before is not None and before.text == ".") or (after is not None and after.text == "."):
            continue  # part of a qualified name (o.comment): an identifier
        if before is not None and before.kind == "word" and before.text.upper() == "AS":
            continue  # an alias
        locks = word == "SHARE" and before is not None and before.text.upper() in ("FOR", "KEY")
        if word in FORBIDDEN or locks:
            raise ToolRefusal(
                f"{word} is not allowed: only read-only queries run here (no writes, DDL, "
                "row locks, SELECT INTO or SET). If it is a column name, write it in double "
                f'quotes: "{token.text.lower()}"'
            )
    return query[statement[0].start : statement[-1].end]


# -- steps 2 to 4: the database ---------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    timeout_ms: int
    row_limit: int
    max_cost: float


class _Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self._secrets = _passwords(url)
        self.where = _describe(url)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(
                self.url,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="keel sql_query",
                client_encoding="utf8",
            )
        except psycopg.Error as err:
            reason = " ".join(str(err).split())[:300]
            raise SqlUnavailable(
                self.redact(f"cannot connect to the database {self.where} (KEEL_SQL_URL): {reason}")
            ) from None

    async def run(self, statement: str, limits: _Limits) -> SqlQueryOutput:
        deadline = time.monotonic() + limits.timeout_ms / 1000
        conn = await self._connect()
        try:
            await conn.set_read_only(True)  # BEGIN READ ONLY
            async with conn.cursor() as cur:
                # SET LOCAL, as parameters: this transaction only, gone at its end.
                await cur.execute(
                    "SELECT set_config('lock_timeout', %s, true), "
                    "set_config('idle_in_transaction_session_timeout', %s, true), "
                    "set_config('standard_conforming_strings', 'on', true), "
                    # a cursor plans as a plain query would: what runs is what was priced
                    "set_config('cursor_tuple_fraction', '1', true)",
                    (str(limits.timeout_ms), str(limits.timeout_ms + 5000)),
                )
                await _arm(cur, deadline, limits)
                # binary: the extended protocol, which runs one statement at most, whatever
                # the text check missed (the simple protocol would run `...; COMMIT; ...`)
                await cur.execute(b"EXPLAIN (FORMAT JSON) " + statement.encode(), binary=True)
                explained = await cur.fetchone()
                assert explained is not None
                cost = float(explained[0][0]["Plan"]["Total Cost"])
                if cost > limits.max_cost:
                    raise ToolRefusal(
                        f"refused before running: the database estimates this query at "
                        f"{_number(cost)} cost units, over the limit of "
                        f"{_number(limits.max_cost)} (KEEL_SQL_MAX_COST). Add WHERE filters "
                        "or a LIMIT, join fewer tables (on their keys), or aggregate in SQL"
                    )
                await _arm(cur, deadline, limits)
                named = conn.cursor(name=CURSOR_NAME)
                await named.execute(statement.encode())  # DECLARE: plans, runs nothing yet
                columns = [column.name for column in named.description or []]
                await _arm(cur, deadline, limits)
                fetched = await named.fetchmany(limits.row_limit + 1)
            return _output(columns, fetched, cost, limits)
        except psycopg.Error as err:
            raise self._failure(err, limits) from None
        finally:
            await conn.close()  # never committed: nothing this call did can persist

    def _failure(self, err: psycopg.Error, limits: _Limits) -> Exception:
        sqlstate = err.sqlstate or ""
        primary = err.diag.message_primary or " ".join(str(err).split())
        if isinstance(err, pg_errors.QueryCanceled) and "statement timeout" in primary:
            return _timed_out(limits)
        if sqlstate[:2] in _REFUSED_CLASSES:
            hint = f" ({err.diag.message_hint})" if err.diag.message_hint else ""
            return ToolRefusal(self.redact(f"the database refused the query: {primary}{hint}"))
        return SqlUnavailable(
            self.redact(f"database error {sqlstate or '(no SQLSTATE)'} {self.where}: {primary}")
        )


async def _arm(cur: psycopg.AsyncCursor[Any], deadline: float, limits: _Limits) -> None:
    """statement_timeout for the next statement: what is left of the call's budget."""
    left_ms = math.floor((deadline - time.monotonic()) * 1000)
    if left_ms < 1:
        raise _timed_out(limits)
    await cur.execute("SELECT set_config('statement_timeout', %s, true)", (str(left_ms),))


def _timed_out(limits: _Limits) -> ToolRefusal:
    return ToolRefusal(
        f"the query ran longer than {limits.timeout_ms} ms (KEEL_SQL_TIMEOUT_MS) and was "
        "stopped; filter with WHERE, join on keys, aggregate in SQL or add a LIMIT"
    )


def _passwords(url: str) -> set[str]:
    """The password as written in the URL and as decoded, to scrub from messages."""
    found: set[str] = set()
    try:
        password = pg_conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    if password:
        found.add(str(password))
    if "://" in url:
        raw = urllib.parse.urlsplit(url).netloc.rpartition("@")[0].partition(":")[2]
        if raw:
            found.add(raw)
    return {s for s in found if s}


def _describe(url: str) -> str:
    """Where the URL points, without its password: `at host:port/db as user`."""
    params = pg_conninfo.conninfo_to_dict(url)  # valid: checked by sql_query_tool
    host = params.get("host") or params.get("hostaddr") or "localhost"
    where = f"at {host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"
    return f"{where} as {params['user']}" if params.get("user") else where


def _number(value: float) -> str:
    return f"{value:,.0f}" if value < 1e9 else f"{value:.2e}"


# -- the output -------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """A database value as JSON: numbers stay numbers where that loses nothing."""
    if value is None or isinstance(value, bool | int | str):
        return _cut(value) if isinstance(value, str) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        as_float = float(value)
        # 19.99 stays a number; a value a float would round becomes its exact text
        return as_float if Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _cut("\\x" + bytes(value).hex())
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    return _cut(str(value))  # ranges, network addresses, intervals ...


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS] + "…"


def _output(columns: list[str], fetched: list[Any], cost: float, limits: _Limits) -> SqlQueryOutput:
    rows: list[list[Any]] = []
    size = 0
    truncated = len(fetched) > limits.row_limit
    for record in fetched[: limits.row_limit]:
        row = [json_safe(v) for v in record]
        size += len(json.dumps(row, ensure_ascii=False))
        if size > MAX_OUTPUT_CHARS:  # the rows so far are what a tool output can carry
            truncated = True
            break
        rows.append(row)
    return SqlQueryOutput(
        columns=columns,
        rows=rows,
        row_count=len(rows),
        truncated=truncated,
        estimated_cost=cost,
        text=_render(columns, rows, truncated, limits),
    )


def _render(columns: list[str], rows: list[list[Any]], truncated: bool, limits: _Limits) -> str:
    def cell(value: Any) -> str:
        text = "null" if value is None else value if isinstance(value, str) else json.dumps(value)
        text = " ".join(text.split())
        return text if len(text) <= TEXT_CELL_CHARS else text[: TEXT_CELL_CHARS - 1] + "…"

    noun = "row" if len(rows) == 1 else "rows"
    lines = [f"{len(rows)} {noun}; columns: {', '.join(columns)}"]
    lines += [" | ".join(cell(v) for v in row) for row in rows[:TEXT_ROWS]]
    if len(rows) > TEXT_ROWS:
        lines.append(f"... {len(rows) - TEXT_ROWS} more rows in `rows`")
    if truncated:
        lines.append(
            f"(truncated: the query had more rows; at most {limits.row_limit} "
            f"(KEEL_SQL_ROW_LIMIT) or {MAX_OUTPUT_CHARS // 1024} KiB are returned: "
            "aggregate, filter or add a LIMIT)"
        )
    return "\n".join(lines)
