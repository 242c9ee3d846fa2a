"""Storage-side fencing: the check that makes a fencing token worth carrying.

A lease can end while its holder still believes in it: a GC pause, a SIGSTOP, a slow disk or a
network delay longer than the TTL, and meanwhile the lock server has handed the lock to someone
else. The holder cannot see this coming. ``lease.ensure_held()`` right before a write does not
help: the pause can fall *between* the check and the write (check-then-write is a race, just a
narrower one). This is the argument of Martin Kleppmann's "How to do distributed locking" (2016).

The fix is to let the *storage* decide. Every lease carries ``fence``, an integer strictly greater
than every fence handed out before for that lock name. The storage remembers the highest fence it
has accepted per resource and refuses a write that carries a lower one. A paused holder wakes up
with an old fence, and its write bounces, however long it slept.

For that, the comparison and the write must be one atomic step at the storage, in the same
transaction as the data it guards. Reading the current fence, comparing it in Python and then
writing would reopen the race between read and write that fencing exists to close. So:

- SQL (SQLite through ``sqlite3``, PostgreSQL through psycopg 3): ``admit(conn, resource, fence)``
  runs ONE statement in the caller's open transaction, an upsert that only updates when
  ``fence <= excluded.fence``, and looks at what it changed (the row count on SQLite; on PostgreSQL
  the row of ``RETURNING``, which also works in psycopg's pipeline mode, where row counts are not
  known until the pipeline syncs). On PostgreSQL the statement locks the
  fence row until the caller's commit or rollback, so a concurrent writer for the same resource
  waits, then re-evaluates the condition against the committed value (READ COMMITTED). On SQLite
  the statement takes the database's write lock, which serializes writers outright; open the
  transaction with ``BEGIN IMMEDIATE`` (or make ``admit`` its first statement): a transaction that
  read before it may otherwise get ``database is locked`` at once when it upgrades to a writer.
  ``admit`` refuses (``ConfigurationError``) a connection that would commit the fence on its own:
  autocommit mode (``isolation_level=None``, or ``autocommit=True`` on Python 3.12+; psycopg's
  ``autocommit=True``) with no transaction open.

      with conn:                                  # the caller's transaction
          fencing.admit(conn, "file:a.tsv", lease.fence)   # StaleFence if a higher fence was accepted
          conn.executemany("INSERT ...", rows)     # committed together with the new fence, or not at all

- Redis: ``fenced_set(client, key, value, fence)``, a Lua script that compares and sets in one step
  on the server.

A refused write raises ``fencelock.StaleFence(resource, fence, current)`` and changes nothing: the
statement that would have stored the fence updated no row. The caller's transaction stays open:
roll it back (a ``with conn:`` block or ``conn.transaction()`` does that when the exception leaves
it), because whatever the caller wrote in it before ``admit`` must not be committed either. Call
``admit`` first in the transaction: then a stale writer is refused before it does any work.

Equal fences are admitted: a holder may write several times under one lease.

PostgreSQL with the lock in the same database: ``holds(conn, lease)``. When the lock itself is a
``postgresql://`` lock on the database that holds the data, the write transaction can ask the lock
row directly: ``holds`` checks, in the caller's open transaction, that the name's lease row still
carries this lease's token and fence and has not expired on the server's clock, and pins the name
(a shared advisory lock of the transaction) until the transaction ends. A takeover of the expired
lease tries that pin exclusively and, while it is held, counts the lease as still held; renewals
and the holder's own release do not look at it. So every write made in the transaction after
``holds`` returns commits before any later holder's grant:

    with conn.transaction():
        fencing.holds(conn, lease)           # LeaseLost if the lease is not the live holder's any more
        conn.execute("UPDATE accounts ...")   # committed before anyone else can hold the lock

When to use which. ``holds`` needs no fence table and refuses a holder whose lease has merely
*expired* (even if nobody took the lock yet), but it works only with the lock in the same
PostgreSQL database as the data, and it pins the name for the transaction's length (a takeover
waits for it: keep such transactions short; a writer frozen inside one keeps its pin until its
connection ends: ``idle_in_transaction_session_timeout`` on the writer's connection bounds that).
``admit`` works with any lock backend and any SQL store, and refuses only writes that a *higher
fence* already overtook (an expired holder that nobody replaced is still admitted, which is safe:
no one else wrote under a newer fence). Use ``holds`` when lock and data share the database;
``admit`` otherwise (or both, when the data also moves to stores the lock does not live in).
Release the lease after the transaction, not inside it (the name is not pinned against its own
holder: a successor could be granted before your commit).

Isolation: use READ COMMITTED (PostgreSQL's default). Under REPEATABLE READ or SERIALIZABLE, a
writer that waited for a concurrent one gets a serialization failure instead of a clean
``StaleFence``; the data stays correct, but the caller must treat that error as a refusal too.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from typing import Any
from urllib.parse import unquote

from ._errors import ConfigurationError, StaleFence
from ._metrics import instruments

__all__ = [
    "DEFAULT_TABLE",
    "FENCED_SET",
    "admit",
    "aholds",
    "holds",
    "create_table",
    "current_fence",
    "fence_key_for",
    "fenced_set",
]

DEFAULT_TABLE = "fencelock_fences"

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


def _table(name: str) -> str:
    # A table name cannot be a bound parameter: accept only plain identifiers, never quote user text.
    if not _IDENT.match(name):
        raise ConfigurationError(f"fence table name {name!r} must be a plain SQL identifier (schema.table allowed)")
    return name


def _dialect(conn: Any) -> str:
    if isinstance(conn, sqlite3.Connection):
        return "sqlite"
    module = type(conn).__module__
    if module.startswith("psycopg"):
        return "postgresql"
    raise ConfigurationError(
        f"fencing needs a sqlite3.Connection or a psycopg (3) Connection, got {type(conn).__name__}"
    )


def _check_fence(fence: int) -> int:
    if isinstance(fence, bool) or not isinstance(fence, int) or fence < 0:
        raise ConfigurationError(f"a fence is a non-negative int (lease.fence), got {fence!r}")
    return fence


def create_table(conn: Any, table: str = DEFAULT_TABLE) -> None:
    """Create the fence table if it does not exist (one row per resource: the highest fence
    accepted). Runs on ``conn`` as it is; commit afterwards if your connection is not in
    autocommit mode. ``BIGINT``: fences can be large (Redis seeds its counter from the clock)."""
    t = _table(table)
    sql = f"CREATE TABLE IF NOT EXISTS {t} (resource TEXT PRIMARY KEY, fence BIGINT NOT NULL)"
    _dialect(conn)
    conn.execute(sql)


def _sqlite_in_transaction(conn: sqlite3.Connection) -> bool:
    """Will the upsert run inside a transaction the caller commits, together with its data?

    Three modes (``Connection.autocommit``, Python 3.12+): ``False`` always has a transaction open
    (PEP 249); ``True`` never opens one, whatever ``isolation_level`` says (it stays ``''``); and
    the legacy mode (the only one before 3.12) opens one implicitly before an INSERT unless
    ``isolation_level`` is None. Outside the legacy mode only ``in_transaction`` can tell.
    """
    if conn.in_transaction:
        return True
    if sys.version_info >= (3, 12):
        if conn.autocommit != sqlite3.LEGACY_TRANSACTION_CONTROL:
            return False
    return conn.isolation_level is not None


def _require_transaction(conn: Any, dialect: str) -> None:
    # Outside a transaction the fence would be committed on its own, before the data it guards,
    # and a failed write afterwards would leave the fence raised for nothing: refuse instead.
    if dialect == "sqlite":
        if not _sqlite_in_transaction(conn):
            raise ConfigurationError(
                "fencing.admit() must run inside the transaction of the write it guards: "
                "this sqlite3 connection is in autocommit mode and no BEGIN was issued "
                "(issue BEGIN IMMEDIATE first, or connect with autocommit=False)"
            )
    else:
        from psycopg.pq import TransactionStatus

        if conn.autocommit and conn.info.transaction_status != TransactionStatus.INTRANS:
            raise ConfigurationError(
                "fencing.admit() must run inside the transaction of the write it guards: "
                "this psycopg connection is in autocommit mode; use `with conn.transaction():`"
            )


def admit(conn: Any, resource: str, fence: int, *, table: str = DEFAULT_TABLE) -> None:
    """Admit a write to ``resource`` under ``fence``, in the caller's open transaction, or raise
    ``StaleFence``.

    One atomic statement: insert the fence, or raise the stored one to it only if the stored one is
    not higher; what it changed says which. Never a read followed by a write (that would let a newer
    holder commit in between). On refusal nothing was changed by this call, and the caller must
    roll back its transaction (anything it wrote before would otherwise be committed unguarded).
    """
    fence = _check_fence(fence)
    dialect = _dialect(conn)
    t = _table(table)
    _require_transaction(conn, dialect)
    mark = "?" if dialect == "sqlite" else "%s"
    sql = (
        f"INSERT INTO {t} (resource, fence) VALUES ({mark}, {mark}) "
        f"ON CONFLICT (resource) DO UPDATE SET fence = excluded.fence "
        f"WHERE {t}.fence <= excluded.fence"
    )
    if dialect == "sqlite":
        # The row count is known when execute() returns (RETURNING would need SQLite 3.35+).
        if conn.execute(sql, (resource, fence)).rowcount == 1:
            return
    else:
        # RETURNING, not rowcount: in psycopg's pipeline mode execute() only queues the statement
        # and rowcount is unknown (-1) until the pipeline syncs; fetchone() syncs it and waits for
        # this statement's own answer (a row when the fence was stored, none when refused).
        if conn.execute(sql + " RETURNING fence", (resource, fence)).fetchone() is not None:
            return
    # Refused. Reading the stored value now only feeds the error message: the decision was made
    # atomically by the statement above.
    current = current_fence(conn, resource, table=table)
    instruments.stale_fence(resource)
    raise StaleFence(resource, fence, current)


def current_fence(conn: Any, resource: str, *, table: str = DEFAULT_TABLE) -> int | None:
    """The highest fence accepted for ``resource`` (None if none yet), as this transaction sees it.
    For display and tests; never decide a write on it (use ``admit``)."""
    dialect = _dialect(conn)
    mark = "?" if dialect == "sqlite" else "%s"
    row = conn.execute(f"SELECT fence FROM {_table(table)} WHERE resource = {mark}", (resource,)).fetchone()
    return None if row is None else int(row[0])


# -- PostgreSQL: the lock row in the same database ----------------------------------------------


def _holds_query(conn: Any, lease: Any, schema: str, *, asynchronous: bool) -> tuple[str, tuple[str, str, int]]:
    from .backends.postgres.schema import DEFAULT_SCHEMA, check_schema

    if _dialect(conn) != "postgresql":
        raise ConfigurationError("fencing.holds() needs a psycopg connection to the lock's PostgreSQL database")
    import psycopg

    if asynchronous != isinstance(conn, psycopg.AsyncConnection):
        raise ConfigurationError(
            "fencing.aholds() (awaited) takes a psycopg.AsyncConnection, fencing.holds() a blocking "
            f"psycopg.Connection; got a {type(conn).__name__}"
        )
    for attr in ("name", "token", "fence"):
        if not hasattr(lease, attr):
            raise ConfigurationError(f"fencing.holds() needs a fencelock lease, got {type(lease).__name__}")
    schema = check_schema(schema or DEFAULT_SCHEMA)
    _check_fence(lease.fence)
    if conn.autocommit and conn.info.transaction_status != _intrans():
        raise ConfigurationError(
            "fencing.holds() must run inside the transaction of the write it guards (its row lock lasts "
            "until that transaction ends): this psycopg connection is in autocommit mode; use "
            "`with conn.transaction():`"
        )
    # The isolation level comes back with the verdict: only at READ COMMITTED does the check see what
    # was committed before the pin (see _holds_verdict).
    sql = f"SELECT {schema}.holds(%s::text, %s::text, %s::bigint), current_setting('transaction_isolation')"
    return sql, (lease.name, lease.token, lease.fence)


def _intrans() -> Any:
    from psycopg.pq import TransactionStatus

    return TransactionStatus.INTRANS


def _holds_verdict(row: Any, lease: Any, schema: str, err: Exception | None) -> None:
    from ._errors import LeaseLost

    if err is not None:
        from .backends.postgres.errors import translate

        translated = translate(err, "fencing.holds", schema)
        if translated is not None:
            raise translated from err
        raise err
    if row is not None and len(row) > 1 and row[1] != "read committed":
        # Its snapshot was taken by the transaction's first statement, before the pin: a lease
        # replaced in between (force_release, then a new holder) would still look live to it.
        raise ConfigurationError(
            f"fencing.holds() needs a READ COMMITTED transaction (this one is {row[1]}): its check must see "
            "every replacement of the lease committed before it pinned the name, which a snapshot taken "
            "earlier does not; roll back and run the write at read committed"
        )
    if row is None or not row[0]:
        instruments.stale_fence(lease.name)
        raise LeaseLost(
            lease.name, lease.fence,
            "the lock row no longer holds this lease (expired on the server's clock, released, or taken "
            "over): roll this transaction back",
        )  # fmt: skip


def holds(conn: Any, lease: Any, *, schema: str = "fencelock") -> None:
    """In the caller's open transaction on the lock's own PostgreSQL database: check that ``lease``
    is still the live holder's (token, fence, not expired on the server's clock) and lock its row
    against a takeover or release until the transaction ends; else raise ``LeaseLost`` (roll back).
    ``schema``: the lock URL's ``?schema=``. See the module docstring for ``holds`` vs ``admit``."""
    import psycopg

    sql, params = _holds_query(conn, lease, schema, asynchronous=False)
    try:
        row = conn.execute(sql, params).fetchone()
    except psycopg.Error as err:
        _holds_verdict(None, lease, schema, err)
    _holds_verdict(row, lease, schema, None)


async def aholds(conn: Any, lease: Any, *, schema: str = "fencelock") -> None:
    """``holds`` on a ``psycopg.AsyncConnection``."""
    import psycopg

    sql, params = _holds_query(conn, lease, schema, asynchronous=True)
    try:
        cur = await conn.execute(sql, params)
        row = await cur.fetchone()
    except psycopg.Error as err:
        _holds_verdict(None, lease, schema, err)
    _holds_verdict(row, lease, schema, None)


# -- Redis ---------------------------------------------------------------------------------------

# Fenced SET: store a value only if the fence is not lower than the highest accepted for the key.
#
# KEYS[1]  the data key
# KEYS[2]  the fence key: the highest fence accepted for KEYS[1] (a decimal string)
# ARGV[1]  the writer's fence, a non-negative decimal integer without leading zeros
# ARGV[2]  the value to store
# ARGV[3]  expiry of the data key in milliseconds, "0" for none
# Returns  {1, ARGV[1]} when stored (the fence key now holds ARGV[1]),
#          {0, current} when refused (current = the stored fence; nothing was changed).
#
# Fences are compared as decimal strings (length first, then lexically), never as Lua numbers:
# those are doubles, exact only up to 2^53, and a fence seeded from the server clock is large.
FENCED_SET = """
local fence = ARGV[1]
local current = redis.call('GET', KEYS[2])
if current then
  if #fence < #current or (#fence == #current and fence < current) then
    return {0, current}
  end
end
redis.call('SET', KEYS[2], fence)
if ARGV[3] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return {1, fence}
"""


def _hash_tag(key: str) -> str | None:
    """The part of ``key`` that Redis Cluster hashes when it is not the whole key: the text between
    the first ``{`` and the first ``}`` after it, if that is not empty (Redis's own rule)."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end < 0 or end == start + 1:
        return None
    return key[start + 1 : end]


def _escape(text: str) -> str:
    # The lock keys' encoding (backends/redis.py): '%', '{', '}' percent-encoded, nothing else.
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def fence_key_for(key: str) -> str:
    """The default fence key for data key ``key``: the same Redis Cluster slot, and no other data
    key's fence key (one key per data key, so fences of different keys never mix).

    Layout:

    - a key without a hash tag is the tag: ``plain`` -> ``{plain}:fence``;
    - a key ``<pre>{<tag>}<post>`` keeps its tag and records the rest, with ``%``, ``{`` and ``}``
      percent-encoded (as in the lock keys) and ``{}`` marking where the tag was:
      ``{user:1}:balance`` -> ``{user:1}:fence:{}:balance``, ``x{a}`` -> ``{a}:fence:x{}``.

    Why this is one-to-one: the fence key's tag is its text up to the first ``}`` (a tag holds no
    ``}``); after it, ``:fence`` alone means the key was the tag, and ``:fence:`` then the escaped
    ``<pre>``, ``{}`` and the escaped ``<post>`` (escaped text holds no braces, so the one ``{}`` is
    the boundary). So the data key can be read back from its fence key. ``fenced_set`` refuses a
    data key that is some key's fence key (``{a}:fence`` is a's): writing it would replace that fence.

    ``ConfigurationError`` for the empty key and for keys whose braces make no hash tag but contain
    a ``}`` (``a}b``, ``{}x``): Redis Cluster hashes those whole, and no tag holds a ``}``, so no
    fence key can share their slot. Rename the key, or pass ``fence_key=`` to ``fenced_set``.
    """
    tag = _hash_tag(key)
    if tag is not None:
        start = key.index("{")
        pre, post = key[:start], key[start + len(tag) + 2 :]
        return f"{{{tag}}}:fence:{_escape(pre)}{{}}{_escape(post)}"
    if key == "" or "}" in key:
        raise ConfigurationError(
            f"no default fence key for Redis key {key!r}: "
            + ("an empty key has no hash tag to share. " if key == "" else
               "its braces form no hash tag, so Redis Cluster hashes it whole, and no fence key "
               "with a hash tag can land in its slot. ")
            + "Give the key a hash tag ({...}) or no '}', or pass fence_key= (a key of the same slot "
            "used for nothing else)"
        )
    return f"{{{key}}}:fence"


def _fence_key_owner(name: str) -> str | None:
    """The data key whose default fence key is ``name``, or None: ``fence_key_for`` read backwards
    (see its layout), confirmed by mapping the candidate forwards again."""
    if not name.startswith("{"):
        return None
    end = name.find("}", 1)
    if end <= 1:
        return None
    tag, rest = name[1:end], name[end + 1 :]
    if rest == ":fence":
        candidate = tag
    elif rest.startswith(":fence:"):
        pre, boundary, post = rest[len(":fence:") :].partition("{}")
        if not boundary:
            return None
        candidate = f"{unquote(pre)}{{{tag}}}{unquote(post)}"
    else:
        return None
    try:
        return candidate if fence_key_for(candidate) == name else None
    except ConfigurationError:
        return None


def fenced_set(
    client: Any,
    key: str,
    value: str | bytes,
    fence: int,
    *,
    fence_key: str | None = None,
    px: int | None = None,
) -> None:
    """SET ``key`` to ``value`` only if ``fence`` is not lower than the highest fence accepted for
    it, in one server-side step; else raise ``StaleFence`` (nothing changed). ``client`` is a
    redis-py client; ``px`` an optional expiry in milliseconds."""
    fence = _check_fence(fence)
    owner = _fence_key_owner(key)
    if owner is not None:
        raise ConfigurationError(
            f"Redis key {key!r} is the fence key of data key {owner!r}: a fenced write to it would "
            "replace that fence and let stale writers of the other key in; use another key name"
        )
    fkey = fence_key_for(key) if fence_key is None else fence_key
    if fkey == key:
        raise ConfigurationError(f"fence_key {fkey!r} is the data key itself: give the fence a key of its own")
    if px is not None and px <= 0:
        raise ConfigurationError(f"px must be a positive number of milliseconds, got {px!r}")
    script = client.register_script(FENCED_SET)
    ok, current = script(keys=[key, fkey], args=[str(fence), value, str(px or 0)])
    if int(ok) == 1:
        return
    instruments.stale_fence(key)
    raise StaleFence(key, fence, int(current))
