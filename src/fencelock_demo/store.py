"""Where transactions are persisted: SQLite (default) or PostgreSQL (many hosts).

Tables (created on first use):

- ``demo_transactions``: one row per TransactionId (its primary key). Inserts are
  ``ON CONFLICT DO NOTHING``: a file ingested twice (a consumer died after its commit, before it
  archived the file) adds nothing the second time. Each row keeps the file, line, fence and
  consumer that wrote it, so a duplicate TransactionId can be traced to where it came from.
- ``demo_files``: one row per ingested file (rows, sum of amounts, fence, consumer): the ledger.
- ``fencelock_fences``: the highest fence accepted per file (``fencelock.fencing``).

A file is persisted in ONE transaction: ``begin()``, ``admit()`` (the fence check), a stream of
``add()`` batches, ``finish()`` (how many rows were new), ``record_file()``, ``commit()``. Any failure
before ``commit`` is a ``rollback()``: nothing of the file is left behind. (SQLite runs the fence
check at ``finish()``, first thing in its write transaction: see ``SqliteStore``.)

Both engines stage a file's rows in a temporary table and move them with one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. PostgreSQL: rows are streamed with COPY, several
times faster than row-by-row inserts. SQLite: WAL mode; the stage is filled outside the write lock
(SQLite has one writer for the whole database: others would wait for our parse), then
``BEGIN IMMEDIATE`` (take the write lock at once: no deadlock between two writers that both read
first) runs the fence check and the move; ``synchronous=FULL`` (a commit survives power loss: the
file is archived only after the commit, so a lost commit would lose rows).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fencelock import ConfigurationError, fencing
from fencelock.backends import safe_url
from fencelock.backends.sqlite.pool import switch_to_wal

from .parsing import Row

__all__ = ["Store", "StoreSummary", "check_store_url", "open_store"]

TX_TABLE = "demo_transactions"
FILES_TABLE = "demo_files"
FENCE_TABLE = fencing.DEFAULT_TABLE

_COLUMNS = (
    "transaction_id, owner, account_number, card_number, currency, amount_cents, merchant, tx_date, "
    "line_no, file, fence, consumer"
)

_SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS {TX_TABLE} (
        transaction_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        account_number TEXT NOT NULL,
        card_number TEXT NOT NULL,
        currency TEXT NOT NULL,
        amount_cents BIGINT NOT NULL,
        merchant TEXT NOT NULL,
        tx_date {{date}} NOT NULL,
        line_no INTEGER NOT NULL,
        file TEXT NOT NULL,
        fence BIGINT,
        consumer TEXT NOT NULL
    )""",
    f"""CREATE TABLE IF NOT EXISTS {FILES_TABLE} (
        name TEXT PRIMARY KEY,
        rows INTEGER NOT NULL,
        amount_cents BIGINT NOT NULL,
        fence BIGINT,
        consumer TEXT NOT NULL
    )""",
]


@dataclass
class StoreSummary:
    """What the database holds, for the demo's final check."""

    rows: int
    distinct_ids: int
    per_file: dict[str, tuple[int, int]]  # file -> (rows, sum of amount_cents)


def check_store_url(url: str) -> None:
    """Raise ``ConfigurationError`` (before any I/O) if ``url`` names no database we support."""
    if not url or (("://" in url or url.startswith("sqlite:")) and not url.startswith(
            ("postgresql://", "postgres://", "sqlite:///"))):
        raise ConfigurationError(
            f"unsupported database URL {safe_url(url)!r}: use postgresql://user@host/db, "
            "sqlite:///relative/demo.db, sqlite:////absolute/demo.db or a file path"
        )


def open_store(url: str) -> Store:
    """``postgresql://...`` / ``postgres://...`` for PostgreSQL; ``sqlite:///path``, or a plain path,
    for SQLite."""
    check_store_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite:///") - 1 :] if url.startswith("sqlite:////") else url[len("sqlite:///") :])
    return SqliteStore(url)


class Store:
    """One connection, one file transaction at a time (see the module docstring)."""

    dialect = "base"
    conn: Any
    errors: tuple[type[BaseException], ...] = ()
    """The driver's exceptions: a lost connection or a failed statement (the consumer survives them)."""

    def setup(self) -> None:
        raise NotImplementedError

    def begin(self) -> None:
        raise NotImplementedError

    def admit(self, resource: str, fence: int) -> None:
        """The fence check, first statement of the file's transaction; raises ``StaleFence``."""
        fencing.admit(self.conn, resource, fence, table=FENCE_TABLE)

    def add(self, rows: Sequence[Row], file: str, fence: int | None, consumer: str) -> None:
        raise NotImplementedError

    def finish(self) -> int:
        """End of the file's rows: returns how many of them were new to the database."""
        raise NotImplementedError

    def count_file(self, file: str) -> int:
        """Rows in the database that were written for ``file`` (this transaction included)."""
        mark = self._mark
        row = self.conn.execute(f"SELECT count(*) FROM {TX_TABLE} WHERE file = {mark}", (file,)).fetchone()
        return int(row[0])

    def origins(self, ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """Where each of ``ids`` was persisted from: ``{id: (file, line_no)}``."""
        out: dict[str, tuple[str, int]] = {}
        mark = self._mark
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ", ".join([mark] * len(chunk))
            for tx, file, line in self.conn.execute(
                f"SELECT transaction_id, file, line_no FROM {TX_TABLE} WHERE transaction_id IN ({marks})", chunk
            ).fetchall():
                out[tx] = (file, int(line))
        return out

    def record_file(self, file: str, rows: int, amount_cents: int, fence: int | None, consumer: str) -> None:
        """The ledger row of ``file``: the last committed ingest wins (a re-ingest after a crash
        rewrites it with the newer fence)."""
        m = self._mark
        self.conn.execute(
            f"INSERT INTO {FILES_TABLE} (name, rows, amount_cents, fence, consumer) VALUES ({m}, {m}, {m}, {m}, {m}) "
            "ON CONFLICT (name) DO UPDATE SET rows = excluded.rows, amount_cents = excluded.amount_cents, "
            "fence = excluded.fence, consumer = excluded.consumer",
            (file, rows, amount_cents, fence, consumer),
        )

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.conn.close()

    def reset(self) -> None:
        """Empty the demo's tables (``fencelock demo`` starts from a clean database)."""
        self.setup()
        for t in (TX_TABLE, FILES_TABLE, FENCE_TABLE):
            self.conn.execute(f"DELETE FROM {t}")
        self.commit()

    def summary(self) -> StoreSummary:
        c = self.conn
        rows, distinct = c.execute(f"SELECT count(*), count(DISTINCT transaction_id) FROM {TX_TABLE}").fetchone()
        per_file = {
            str(f): (int(n), int(s))
            for f, n, s in c.execute(
                f"SELECT file, count(*), coalesce(sum(amount_cents), 0) FROM {TX_TABLE} GROUP BY file"
            ).fetchall()
        }
        self.rollback()
        return StoreSummary(int(rows), int(distinct), per_file)

    @property
    def _mark(self) -> str:
        return "?" if self.dialect == "sqlite" else "%s"


def _values(rows: Iterable[Row], file: str, fence: int | None, consumer: str) -> list[tuple[Any, ...]]:
    return [(*r, file, fence, consumer) for r in rows]


class SqliteStore(Store):
    dialect = "sqlite"
    errors = (sqlite3.Error,)

    def __init__(self, path: str, busy_timeout: float = 120.0) -> None:
        self.path = path
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        self.conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        # Many consumers open a new file at once: switching it to WAL must back off, not fail
        # ("database is locked", found by CI in the many-consumers test)
        switch_to_wal(self.conn, busy_timeout)
        self.conn.execute("PRAGMA synchronous=FULL")
        self._inserted = 0
        self._pending_fence: tuple[str, int] | None = None

    def setup(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        for stmt in _SCHEMA:
            self.conn.execute(stmt.format(date="TEXT"))
        fencing.create_table(self.conn, FENCE_TABLE)
        self.conn.execute("COMMIT")
        # The stage lives in this connection's private temp database (a file, not RAM: a huge
        # input file must not grow our memory). Writing it needs no lock on the shared database.
        self.conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS demo_stage AS SELECT * FROM {TX_TABLE} WHERE 0")

    # SQLite has one writer at a time for the whole database. Parsing a file inside the write
    # transaction would make every other consumer wait for our parse, so the rows are staged first
    # (no shared lock held), and the write transaction (BEGIN IMMEDIATE, fence check, one
    # INSERT ... SELECT, ledger, COMMIT) only moves them. The fence check still runs in the same
    # transaction as the rows it guards; it just comes after the parse instead of before it.

    def begin(self) -> None:
        self.rollback()
        self._pending_fence = None
        self._inserted = 0
        self.conn.execute("BEGIN")
        self.conn.execute("DELETE FROM temp.demo_stage")

    def admit(self, resource: str, fence: int) -> None:
        self._pending_fence = (resource, fence)  # checked by finish(), inside the write transaction

    def add(self, rows: Sequence[Row], file: str, fence: int | None, consumer: str) -> None:
        self.conn.executemany(
            f"INSERT INTO temp.demo_stage ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _values(rows, file, fence, consumer),
        )

    def finish(self) -> int:
        c = self.conn
        c.execute("COMMIT")  # the stage only: the shared database was not written
        c.execute("BEGIN IMMEDIATE")
        if self._pending_fence is not None:
            super().admit(*self._pending_fence)
        before = c.total_changes  # rows skipped by DO NOTHING do not count as changes
        c.execute(
            f"INSERT INTO {TX_TABLE} ({_COLUMNS}) SELECT {_COLUMNS} FROM temp.demo_stage WHERE true "
            "ON CONFLICT (transaction_id) DO NOTHING"
        )
        self._inserted = c.total_changes - before
        c.execute("DELETE FROM temp.demo_stage")
        return int(self._inserted)

    def commit(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def summary(self) -> StoreSummary:
        self.conn.execute("BEGIN")
        return super().summary()


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as err:
            raise ConfigurationError(
                "a postgresql:// database needs psycopg 3: pip install 'fencelock[postgres]'"
            ) from err

        self.url = url
        self.errors = (psycopg.Error,)
        # A bounded connect unless the URL sets its own (a down server is an error, not a hang).
        extra: dict[str, Any] = {} if "connect_timeout" in url else {"connect_timeout": 10}
        self.conn = psycopg.connect(url, autocommit=False, **extra)
        self._staged = False

    def setup(self) -> None:
        from psycopg import errors

        c = self.conn
        for stmt in _SCHEMA:
            try:
                c.execute(stmt.format(date="DATE"))
                c.commit()
            except errors.UniqueViolation:  # two consumers creating the same table at once
                c.rollback()
        try:
            fencing.create_table(c, FENCE_TABLE)
            c.commit()
        except errors.UniqueViolation:
            c.rollback()
        c.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS demo_stage (LIKE {TX_TABLE} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        c.commit()

    def begin(self) -> None:
        self.conn.rollback()  # make sure no transaction is left open; psycopg begins on first use
        self._staged = False

    def add(self, rows: Sequence[Row], file: str, fence: int | None, consumer: str) -> None:
        with self.conn.cursor() as cur, cur.copy(f"COPY demo_stage ({_COLUMNS}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row((*r, file, fence, consumer))
        self._staged = True

    def finish(self) -> int:
        if not self._staged:
            return 0
        cur = self.conn.execute(
            f"INSERT INTO {TX_TABLE} ({_COLUMNS}) SELECT {_COLUMNS} FROM demo_stage "
            "ON CONFLICT (transaction_id) DO NOTHING"
        )
        self.conn.execute("TRUNCATE demo_stage")
        return int(max(0, cur.rowcount))

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()
