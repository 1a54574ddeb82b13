"""A real, throwaway PostgreSQL server for the `sql_query` tests (Debian's `postgresql`).

`PostgresServer` runs `initdb` into a fresh temp dir, starts `postgres` on a free port of
127.0.0.1 (its unix socket in the same temp dir), creates the database `shop`, seeds it and
creates `keel_reader`, a login role (password auth over TCP) that may only SELECT:

    with PostgresServer() as pg:
        pg.url           # postgresql://keel_reader:<password>@127.0.0.1:<port>/shop
        pg.admin()       # a psycopg connection as the superuser, over the unix socket

Seeded data:
- `customers` (20 rows) and `orders` (200 rows): small tables for ordinary queries, with
  numeric, timestamptz, date, bytea and jsonb columns;
- `t1` .. `t10`: 3,000 rows each with a low-cardinality `grp` column, so that joining all
  ten (with or without `grp` conditions) has an astronomical estimated cost;
- `secrets`: a table keel_reader has no rights on;
- `bump_visits(id)`: a SECURITY DEFINER function that UPDATEs `customers` (it runs with its
  owner's rights, so only a read-only transaction stops a reader calling it).

Postgres refuses to run as root: when the tests run as root, initdb and postgres run as the
`postgres` OS user. If this process dies without stopping the server (kill -9), the kernel
sends the postmaster SIGINT (a fast shutdown), so no server is left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from keel._local_server import LocalServer, stop_process
from keel._ports import free_port

HOST = "127.0.0.1"
DATABASE = "shop"
READER = "keel_reader"
SUPERUSER = "postgres"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
PORT_ATTEMPTS = 3  # a free port can be taken between choosing it and postgres binding it
WIDE_TABLES = 10
WIDE_ROWS = 3000


class PostgresError(RuntimeError):
    """PostgreSQL could not be found or started; the message says why."""


def find_bindir() -> Path:
    """The directory holding `initdb` and `postgres`: Debian's newest, or the PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise PostgresError(
        "initdb not found: the sql_query tests need PostgreSQL (`make system-deps`, or "
        "apt-get install postgresql)"
    )


def _major(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


def _seed_sql(reader_password: str) -> list[str]:
    wide = [
        f"CREATE TABLE t{i} AS SELECT g AS id, g % 10 AS grp, md5(g::text) AS val "
        f"FROM generate_series(1, {WIDE_ROWS}) AS g"
        for i in range(1, WIDE_TABLES + 1)
    ]
    tables = ", ".join(["customers", "orders", *(f"t{i}" for i in range(1, WIDE_TABLES + 1))])
    return [
        """CREATE TABLE customers (
            id serial PRIMARY KEY,
            name text NOT NULL,
            city text NOT NULL,
            visits int NOT NULL DEFAULT 0,
            since date NOT NULL)""",
        """INSERT INTO customers (name, city, since)
           SELECT 'customer ' || g, (ARRAY['Lisbon', 'Oslo', 'Turin', 'Quito'])[g % 4 + 1],
                  date '2024-01-01' + g
           FROM generate_series(1, 20) AS g""",
        """CREATE TABLE orders (
            id serial PRIMARY KEY,
            customer_id int NOT NULL REFERENCES customers (id),
            amount numeric(10, 2) NOT NULL,
            placed_at timestamptz NOT NULL,
            receipt bytea,
            meta jsonb)""",
        """INSERT INTO orders (customer_id, amount, placed_at, receipt, meta)
           SELECT g % 20 + 1, (g * 7 % 1000) / 4.0, timestamptz '2025-01-01 00:00+00'
                  + g * interval '1 hour', '\\x6b65656c'::bytea, jsonb_build_object('n', g)
           FROM generate_series(1, 200) AS g""",
        *wide,
        "CREATE TABLE secrets (token text NOT NULL)",
        "INSERT INTO secrets VALUES ('do-not-read')",
        """CREATE FUNCTION bump_visits(customer int) RETURNS int
           LANGUAGE sql SECURITY DEFINER SET search_path = public AS
           $$ UPDATE customers SET visits = visits + 1 WHERE id = customer
              RETURNING visits $$""",
        "ANALYZE",
        # least privilege: log in, see the schema, SELECT the listed tables, nothing else
        f"CREATE ROLE {READER} LOGIN PASSWORD '{reader_password}'",
        f"REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {DATABASE} TO {READER}",
        f"GRANT USAGE ON SCHEMA public TO {READER}",
        f"GRANT SELECT ON {tables} TO {READER}",
    ]


class PostgresServer(LocalServer):
    """Start with `start()` (or `with`), stop with `stop()`; each start is a fresh cluster in
    a temp dir removed at stop."""

    def __init__(self) -> None:
        self.port = 0
        self.reader_password = secrets.token_urlsafe(12)
        self.dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._bindir = find_bindir()
        as_root = os.geteuid() == 0
        self._account = pwd.getpwnam(SUPERUSER) if as_root else None

    @property
    def url(self) -> str:
        """keel_reader over TCP with its password: what KEEL_SQL_URL would be."""
        return f"postgresql://{READER}:{self.reader_password}@{HOST}:{self.port}/{DATABASE}"

    @property
    def log_file(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / "postgres.log"

    def admin(self, dbname: str = DATABASE) -> psycopg.Connection[Any]:
        """The superuser over the unix socket (trust auth), in autocommit mode."""
        assert self.dir is not None, "not started"
        return psycopg.connect(
            host=str(self.dir),
            port=self.port,
            user=SUPERUSER,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    # -- start ----------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        if self._process is not None:
            return self
        self.dir = Path(tempfile.mkdtemp(prefix="keel-pg-"))
        atexit.register(self.stop)
        try:
            self._chown(self.dir)
            self._initdb()
            for attempt in range(1, PORT_ATTEMPTS + 1):
                self.port = free_port()
                reason = self._launch()
                if reason is None:
                    break
                if attempt == PORT_ATTEMPTS or "already in use" not in reason:
                    raise PostgresError(f"postgres did not start: {reason}")
            self._seed()
        except BaseException:
            self.stop()
            raise
        return self

    def _chown(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def _as_owner(self) -> dict[str, Any]:
        """subprocess arguments that run a command as the `postgres` OS user (when root)."""
        if self._account is None:
            return {}
        env = {**os.environ, "HOME": self._account.pw_dir, "USER": SUPERUSER}
        env.pop("PGPASSWORD", None)
        return {"user": SUPERUSER, "group": SUPERUSER, "extra_groups": [], "env": env}

    def _initdb(self) -> None:
        assert self.dir is not None
        command = [
            str(self._bindir / "initdb"),
            "--pgdata",
            str(self.dir / "data"),
            "--username",
            SUPERUSER,
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--auth-local",
            "trust",
            "--auth-host",
            "scram-sha-256",
            "--no-sync",
        ]
        run = subprocess.run(
            command, cwd=self.dir, capture_output=True, text=True, **self._as_owner()
        )
        if run.returncode != 0:
            raise PostgresError(f"initdb failed ({run.returncode}):\n{run.stderr[-3000:]}")
        # The superuser only over the unix socket; keel_reader only over 127.0.0.1 with its
        # password; nobody else, from nowhere else.
        (self.dir / "data" / "pg_hba.conf").write_text(
            f"local all {SUPERUSER} trust\nhost {DATABASE} {READER} 127.0.0.1/32 scram-sha-256\n"
        )

    def _launch(self) -> str | None:
        """Start the postmaster and wait until it accepts connections; None, or why not."""
        assert self.dir is not None
        command = [
            str(self._bindir / "postgres"),
            "-D",
            str(self.dir / "data"),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            f"port={self.port}",
            "-c",
            f"unix_socket_directories={self.dir}",
            "-c",
            "max_connections=30",
            "-c",
            "shared_buffers=32MB",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "autovacuum=off",  # the tests read table statistics; nothing else may touch them
            "-c",
            "logging_collector=off",
        ]
        # Linux sends the postmaster SIGINT (fast shutdown) when the thread that started it
        # dies; only from the main thread, whose death is the process's.
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            command = [setpriv, "--pdeathsig", "INT", *command]
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches pytest, which then stops it
                **self._as_owner(),
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code, self._process = self._process.returncode, None
                return f"postgres exited with code {code}:\n{self._log_tail(offset)}"
            try:
                with self.admin("postgres"):
                    return None
            except psycopg.OperationalError:
                time.sleep(0.05)  # poll interval while it starts
        self._terminate()
        return f"not ready after {START_TIMEOUT_S:.0f} s:\n{self._log_tail(offset)}"

    def _log_tail(self, offset: int = 0) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def _seed(self) -> None:
        with self.admin("postgres") as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        with self.admin() as conn:
            for statement in _seed_sql(self.reader_password):
                conn.execute(statement)

    # -- stop -----------------------------------------------------------------------------

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        # SIGINT: fast shutdown, which ends sessions, then exits
        stop_process(process, STOP_TIMEOUT_S, ask=signal.SIGINT)

    def stop(self) -> None:
        atexit.unregister(self.stop)
        self._terminate()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def main() -> None:
    """Start one and print its URL until Enter (for trying sql_query by hand)."""
    with PostgresServer() as server:
        print(f"export KEEL_SQL_URL={server.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt, EOFError):
            input("Enter stops it ... ")


if __name__ == "__main__":
    main()
