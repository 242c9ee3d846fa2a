"""The tables of a lock file, their setup (and the upgrade of a 0.1.0 file), and every statement run
on them (see the package docstring)."""

from __future__ import annotations

import contextlib
import sqlite3

from ..._errors import BackendRejected
from .boot import UNKNOWN_BOOT

__all__ = ["EPSILON", "OLD_PROCESS_REFUSED", "ensure_layout"]

EPSILON = 0.001
"""Float slack in the "deadline at most ttl ahead" check (both sides come from one clock)."""

OLD_PROCESS_REFUSED = (
    "this fencelock lock file has the counted-lease layout (table fencelock_lease) of a newer fencelock; "
    "this process runs fencelock 0.1, which cannot use it: upgrade fencelock here (every process that "
    "shares a lock file must run a version that knows its layout)"
)
"""What a 0.1.0 process reads when it tries to write a lease in an upgraded file."""

# fencelock_lock was 0.1.0's lease table (one row per name). In the current layout it is a read-only
# view of fencelock_lease whose writes abort with OLD_PROCESS_REFUSED: a 0.1.0 process still running
# on an upgraded file sees the holders (so it never takes a held name for free), cannot write a lease
# (it fails loudly, never grants a second holder beside the new ones), and never re-creates its table:
# its setup finds every name it expects, and CREATE TABLE IF NOT EXISTS is a no-op where a view of
# that name exists. A later layout can retire fencelock_lease the same way.
_TOMBSTONE = (
    """CREATE VIEW IF NOT EXISTS fencelock_lock AS
        SELECT name, token, fence, label, boot, deadline, ttl FROM fencelock_lease""",
    *(
        f"""CREATE TRIGGER IF NOT EXISTS fencelock_lock_{op.lower()} INSTEAD OF {op} ON fencelock_lock
            BEGIN SELECT RAISE(ABORT, '{OLD_PROCESS_REFUSED}'); END"""
        for op in ("INSERT", "UPDATE", "DELETE")
    ),
)

_TABLES = (
    """CREATE TABLE IF NOT EXISTS fencelock_fence (
        name TEXT PRIMARY KEY,
        last INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # One row per holder. ``lim`` is the name's limit the grant was made under: every live holder of a
    # name carries the same one, so the limit binds exactly while live holders (or waiters) exist and
    # an idle name needs no state to forget.
    """CREATE TABLE IF NOT EXISTS fencelock_lease (
        name TEXT NOT NULL,
        token TEXT NOT NULL,
        fence INTEGER NOT NULL,
        label TEXT NOT NULL,
        boot TEXT NOT NULL,
        deadline REAL NOT NULL,
        ttl REAL NOT NULL,
        weight INTEGER NOT NULL,
        lim INTEGER NOT NULL,
        PRIMARY KEY (name, token)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS fencelock_waiter (
        name TEXT NOT NULL,
        token TEXT NOT NULL,
        seq INTEGER NOT NULL,
        boot TEXT NOT NULL,
        alive REAL NOT NULL,
        weight INTEGER NOT NULL DEFAULT 1,
        lim INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (name, token)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS fencelock_waiter_order ON fencelock_waiter (name, seq)",
)

_LAYOUT = {
    "fencelock_fence": "table",
    "fencelock_lease": "table",
    "fencelock_waiter": "table",
    "fencelock_waiter_order": "index",
    "fencelock_lock": "view",
    "fencelock_lock_insert": "trigger",
    "fencelock_lock_update": "trigger",
    "fencelock_lock_delete": "trigger",
}
_OBJECTS = "SELECT name, type FROM sqlite_master WHERE name IN ({})".format(", ".join(f"'{n}'" for n in _LAYOUT))


def ensure_layout(conn: sqlite3.Connection) -> None:
    """Make the file's tables the current layout: nothing to do (one read) when they are; else create
    them, upgrading a 0.1.0 file on the way, in one write transaction. Many processes may open the file
    at once: ``BEGIN IMMEDIATE`` lets one of them at a time in, and each looks again inside."""
    if dict(conn.execute(_OBJECTS).fetchall()) == _LAYOUT:
        return  # the common case; a read-only file that is set up never needs the write lock
    conn.execute("BEGIN IMMEDIATE")
    try:
        objects = dict(conn.execute(_OBJECTS).fetchall())
        if objects.get("fencelock_lease") == "view":
            raise BackendRejected(
                "this lock file has the layout of a newer fencelock (fencelock_lease is retired): "
                "upgrade fencelock in this process (every process that shares a lock file must run a "
                "version that knows its layout)"
            )
        if objects.get("fencelock_lock") == "table":
            _upgrade_0_1(conn)
        for statement in (*_TABLES, *_TOMBSTONE):
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _upgrade_0_1(conn: sqlite3.Connection) -> None:
    """0.1.0's layout -> the current one, inside the caller's write transaction (all or nothing).

    Its leases move to fencelock_lease as mutex holders (weight 1 of limit 1), deadlines and boot ids
    unchanged, so a lease held right now stays held until its deadline; fencelock_lock becomes the
    tombstone view; waiters get the weight and limit columns (0.1.0 waiters are mutex waiters, which
    the defaults say). A 0.1.0 holder that is still running can no longer renew or release (its
    writes abort with OLD_PROCESS_REFUSED): its lease ends at its deadline, and no one else gets the
    name before that."""
    conn.execute(_TABLES[1])  # fencelock_lease
    conn.execute(
        "INSERT INTO fencelock_lease (name, token, fence, label, boot, deadline, ttl, weight, lim) "
        "SELECT name, token, fence, label, boot, deadline, ttl, 1, 1 FROM fencelock_lock"
    )
    conn.execute("DROP TABLE fencelock_lock")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(fencelock_waiter)")}
    if columns and "weight" not in columns:
        conn.execute("ALTER TABLE fencelock_waiter ADD COLUMN weight INTEGER NOT NULL DEFAULT 1")
    if columns and "lim" not in columns:
        conn.execute("ALTER TABLE fencelock_waiter ADD COLUMN lim INTEGER NOT NULL DEFAULT 1")


# A row is of this boot unless both ids are known and differ: "unknown" proves no reboot.
_SAME_BOOT = f"(boot = :boot OR boot = '{UNKNOWN_BOOT}' OR :boot = '{UNKNOWN_BOOT}')"

# A lease row is live when it may come from this boot, has not reached its deadline, and its
# deadline is not further ahead than its own ttl (which only a row written on another clock can be).
_LIVE = f"{_SAME_BOOT} AND deadline > :now AND deadline <= :now + ttl + {EPSILON}"

# Every holder row of a name, live or not (the caller judges them: one indexed range of the primary
# key, usually zero or one row). Column order is what backend._live reads.
_SELECT_HOLDERS = "SELECT token, fence, boot, deadline, ttl, label, weight, lim FROM fencelock_lease WHERE name = ?"
_SELECT_HEAD = "SELECT token, boot, alive, weight, lim FROM fencelock_waiter WHERE name = ? ORDER BY seq LIMIT 1"

# A waiter row is live when it may come from this boot and was polled within :registration seconds
# on this clock (an ``alive`` further ahead than that was written on another clock).
_WAITING = f"{_SAME_BOOT} AND alive > :now AND alive <= :now + :registration + {EPSILON}"
_LIVE_HEAD = f"SELECT token, weight, lim FROM fencelock_waiter WHERE name = :name AND {_WAITING} ORDER BY seq LIMIT 1"
_LIVE_QUEUE = f"SELECT token, weight, lim FROM fencelock_waiter WHERE name = :name AND {_WAITING} ORDER BY seq LIMIT :n"
_DROP_DEAD = f"DELETE FROM fencelock_waiter WHERE name = :name AND NOT ({_WAITING})"
_SELECT_FENCE = "SELECT last FROM fencelock_fence WHERE name = ?"
_STORE_FENCE = "INSERT OR REPLACE INTO fencelock_fence (name, last) VALUES (?, ?)"
_STORE_LEASE = (
    "INSERT OR REPLACE INTO fencelock_lease (name, token, fence, label, boot, deadline, ttl, weight, lim) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_REFRESH = "UPDATE fencelock_lease SET label = ?, boot = ?, deadline = ?, ttl = ? WHERE name = ? AND token = ?"
_DROP_EXPIRED = f"DELETE FROM fencelock_lease WHERE name = :name AND NOT ({_LIVE})"
_ENQUEUE = (
    "INSERT INTO fencelock_waiter (name, token, seq, boot, alive, weight, lim) "
    "VALUES (:name, :token, (SELECT COALESCE(MAX(seq), 0) + 1 FROM fencelock_waiter WHERE name = :name), "
    ":boot, :alive, :weight, :lim) "
    "ON CONFLICT (name, token) DO UPDATE SET alive = excluded.alive, boot = excluded.boot"
)
_DEQUEUE = "DELETE FROM fencelock_waiter WHERE name = ? AND token = ?"
_EXTEND = (
    f"UPDATE fencelock_lease SET deadline = :now + :ttl, ttl = :ttl WHERE name = :name AND token = :token AND {_LIVE}"
)
_RELEASE = f"DELETE FROM fencelock_lease WHERE name = :name AND token = :token AND {_LIVE}"
_DROP_OWN = "DELETE FROM fencelock_lease WHERE name = ? AND token = ?"
_DROP_NAME = "DELETE FROM fencelock_lease WHERE name = ?"
_COUNT_WAITERS = f"SELECT COUNT(*) FROM fencelock_waiter WHERE name = :name AND {_SAME_BOOT} AND alive > :now"
