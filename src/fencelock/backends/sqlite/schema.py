"""The tables of a lock file and every statement run on them (see the package docstring)."""

from __future__ import annotations

from .boot import UNKNOWN_BOOT

__all__ = ["EPSILON", "SCHEMA"]

EPSILON = 0.001
"""Float slack in the "deadline at most ttl ahead" check (both sides come from one clock)."""

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS fencelock_fence (
        name TEXT PRIMARY KEY,
        last INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS fencelock_lock (
        name TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        fence INTEGER NOT NULL,
        label TEXT NOT NULL,
        boot TEXT NOT NULL,
        deadline REAL NOT NULL,
        ttl REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS fencelock_waiter (
        name TEXT NOT NULL,
        token TEXT NOT NULL,
        seq INTEGER NOT NULL,
        boot TEXT NOT NULL,
        alive REAL NOT NULL,
        PRIMARY KEY (name, token)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS fencelock_waiter_order ON fencelock_waiter (name, seq)",
)

# A row is of this boot unless both ids are known and differ: "unknown" proves no reboot.
_SAME_BOOT = f"(boot = :boot OR boot = '{UNKNOWN_BOOT}' OR :boot = '{UNKNOWN_BOOT}')"

# A lease row is live when it may come from this boot, has not reached its deadline, and its
# deadline is not further ahead than its own ttl (which only a row written on another clock can be).
_LIVE = f"{_SAME_BOOT} AND deadline > :now AND deadline <= :now + ttl + {EPSILON}"

_SELECT_LOCK = "SELECT token, fence, boot, deadline, ttl, label FROM fencelock_lock WHERE name = ?"
_SELECT_HEAD = "SELECT token, boot, alive FROM fencelock_waiter WHERE name = ? ORDER BY seq LIMIT 1"

# A waiter row is live when it may come from this boot and was polled within :registration seconds
# on this clock (an ``alive`` further ahead than that was written on another clock).
_WAITING = f"{_SAME_BOOT} AND alive > :now AND alive <= :now + :registration + {EPSILON}"
_LIVE_HEAD = f"SELECT token FROM fencelock_waiter WHERE name = :name AND {_WAITING} ORDER BY seq LIMIT 1"
_DROP_DEAD = f"DELETE FROM fencelock_waiter WHERE name = :name AND NOT ({_WAITING})"
_SELECT_FENCE = "SELECT last FROM fencelock_fence WHERE name = ?"
_STORE_FENCE = "INSERT OR REPLACE INTO fencelock_fence (name, last) VALUES (?, ?)"
_STORE_LOCK = (
    "INSERT OR REPLACE INTO fencelock_lock (name, token, fence, label, boot, deadline, ttl) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_ENQUEUE = (
    "INSERT INTO fencelock_waiter (name, token, seq, boot, alive) "
    "VALUES (:name, :token, (SELECT COALESCE(MAX(seq), 0) + 1 FROM fencelock_waiter WHERE name = :name), "
    ":boot, :alive) ON CONFLICT (name, token) DO UPDATE SET alive = excluded.alive, boot = excluded.boot"
)
_DEQUEUE = "DELETE FROM fencelock_waiter WHERE name = ? AND token = ?"
_EXTEND = (
    f"UPDATE fencelock_lock SET deadline = :now + :ttl, ttl = :ttl WHERE name = :name AND token = :token AND {_LIVE}"
)
_RELEASE = f"DELETE FROM fencelock_lock WHERE name = :name AND token = :token AND {_LIVE}"
_DROP_OWN = "DELETE FROM fencelock_lock WHERE name = ? AND token = ?"
_COUNT_WAITERS = f"SELECT COUNT(*) FROM fencelock_waiter WHERE name = :name AND {_SAME_BOOT} AND alive > :now"
