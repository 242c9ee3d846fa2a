"""Embedded SQLite backend: one lock file, many processes, **one host**, no server (stdlib ``sqlite3``).

URL: ``sqlite:///relative/locks.db`` (relative to the working directory when the backend is made) or
``sqlite:////absolute/locks.db``; ``?busy_timeout=SECONDS`` (default 5) bounds how long one call
waits for another process's write transaction. The file and its directory are created if missing.

Tables (all in the one file; names start with ``fencelock_`` but keep other data out of this file:
a long write transaction of your own would stall every lock call for up to the busy timeout)::

    fencelock_fence(name PK, last)                  last fence issued; never decreases, never deleted
    fencelock_lease(name, token, fence, label,      one row per holder (a mutex has at most one);
                    boot, deadline, ttl, weight,    ``deadline`` is on the host's CLOCK_MONOTONIC of
                    lim, PK (name, token))          boot ``boot``; ``lim`` the name's limit
    fencelock_waiter(name, token, seq, boot,        FIFO queue of live waiters, with what each asks
                     alive, weight, lim)
    fencelock_lock                                  0.1.0's lease table, now a read-only view (below)

Counted leases. A name holds at most ``lim`` permits, each holder ``weight`` of them (a mutex 1 of 1,
a semaphore's permit 1 of N, a read-write lock's reader 1 and writer all of ``RW_LIMIT``). A request
is granted when no live waiter is ahead of it and its weight fits beside the live holders'. Every
holder row carries the limit it was granted under, and every waiter row the limit it asked with, so
the limit binds exactly while the name has live holders or waiters (a request with another raises
``LimitMismatch``, changing nothing) and an idle name keeps no state that would need forgetting.
This backend never hands permits over: after a release, each waiter at the head whose weight fits
finds its next ``try_acquire`` granted, in queue order, and its doorbell is rung (see *Waiting*).
The mutex runs the same statements as before counted leases existed (one indexed range of the
primary key reads a name's holders: zero or one row).

Upgrading a 0.1.0 file. 0.1.0 kept one lease row per name in a table ``fencelock_lock``. The first
process of this version that opens such a file moves the leases into ``fencelock_lease`` (as mutex
holders, deadlines unchanged, so a lease held at that moment stays held until it ends), gives the
waiters their weight and limit columns, and replaces ``fencelock_lock`` with a view of the holders
whose writes abort with a message saying to upgrade: all in one write transaction (``BEGIN
IMMEDIATE``; processes opening the file together take turns, and the others find it done). A 0.1.0
process still running on the file then sees who holds every name but cannot write a lease: it
fails loudly and never grants a name beside the new holders, and it cannot re-create its table (the
view takes the name). Every process sharing a file must be upgraded; one that was not says so.

Transactions. ``try_acquire`` is one ``BEGIN IMMEDIATE`` transaction (it takes SQLite's single write
lock at once, so reading the row and writing the new lease cannot interleave with another process);
``extend`` and ``release`` are one write statement each, on the lease's (name, token) key (an
autocommit write statement takes the write lock when it starts and commits when it ends: one
transaction, no read-then-upgrade race).
``busy_timeout`` bounds every wait for the write lock; when it runs out the call raises
``BackendUnavailable``, never returns False.

Fences. ``max(last + 1, wall-clock microseconds)``, minted and stored in the acquire transaction. The
counter alone is durable against any process crash (see *Durability*); the clock term keeps fences
increasing when the counter is lost anyway: the file deleted, kept on a tmpfs across a reboot, or
its last commits lost in a power failure. **Assumption** (as for Redis): when the counter is lost,
the wall clock reads later than when the last fence was issued.

Deadlines. A lease ends at ``time.monotonic() + ttl`` measured inside the transaction. Every process
of one host reads the same ``CLOCK_MONOTONIC``, which never jumps with NTP or a manual clock change,
so expiry needs no wall clock. Hence **one host only**: never share the file between machines (NFS,
a volume shared by VMs: their monotonic clocks are unrelated, and SQLite's locking is unreliable on
network filesystems anyway). Processes in different Linux *time namespaces* (``unshare --time``)
have offset monotonic clocks and must not share a file either; ordinary containers on one kernel may.
A reboot resets the monotonic clock: every row carries the boot id (``/proc/sys/kernel/random/
boot_id``) and rows of another boot count as expired (their holders died with that boot). Where no
boot id exists, a row whose deadline lies further ahead than its own ``ttl`` cannot come from this
clock and counts as expired too; that bound also holds on Linux.

An unreadable boot id. Some sandboxes hide ``/proc/sys`` from a process of the same boot (systemd's
``ProcSubset=pid``, a chroot without ``/proc``): it records ``unknown``. Two *known* ids that differ
prove a reboot; ``unknown`` on either side proves nothing, so such a row is judged by its deadline
alone, never expired for its boot. Otherwise each side would take the other's live lease for one of
an earlier boot: two holders. The price is liveness only: after a reboot, a lease of an ``unknown``
row (or one read by an ``unknown`` process) lingers until its deadline, at most its ``ttl``, or is
expired at once by the "further ahead than its ttl" bound. No substitute id is derived from the
clocks: ``btime`` in ``/proc/stat`` (hidden by ``ProcSubset=pid`` too) and CLOCK_REALTIME minus
CLOCK_BOOTTIME both move when the wall clock is stepped, so two processes of one boot could compute
different ids, which is the very disagreement to avoid.

Waiting: first come first served; bounded polling, plus a doorbell. A contender that must wait
enqueues its token in ``fencelock_waiter`` (refreshing an ``alive`` stamp at least every ``REFRESH``
seconds); free permits are granted only to the first live waiter, or to anyone when nobody waits, so
newcomers cannot barge in. ``wait()`` looks with cheap reads (WAL readers never block on the writer)
and sleeps between looks with full-jitter exponential backoff, never longer than the holder's
remaining lease or the timeout. The sleep is cut short by a doorbell: on Linux each waiter listens
on an abstract unix datagram socket named after its token (no file; it vanishes with the process),
and ``release``/``abandon`` ring, after their commit, every waiter at the head that the free
permits admit (the first one for a mutex; all the readers queued behind a writer), stopping at the
first that does not fit; a grant from the queue that leaves permits free rings the ones behind it
(a reader that asked before the reader ahead of it was refused, and may now get in). The doorbell
is only a hint, correctness never depends on it: without one (not Linux) the first waiter polls
every ``HEAD_POLL`` seconds; a ring that cannot arrive (waiter in another network namespace) costs
the first waiter at most ``HEAD_CAP``, its longest sleep. A waiter that stops polling (killed,
paused) loses its turn ``REGISTRATION`` seconds after its last poll; until then free permits may
sit idle.

Durability. WAL with ``synchronous=NORMAL``: a commit is appended to the WAL file with ``write()``
and no ``fsync``; the data is in the kernel's page cache the moment the call returns, so a crash of
any or every *process* (SIGKILL included) loses nothing. Only an OS crash or power cut can lose the
last commits; then every holder died too, and the clock seed keeps the fences increasing.
``synchronous=FULL`` would fsync every acquire (milliseconds on a disk) for no gain in that case.
An uncommitted transaction of a killed process is discarded by SQLite and its write lock freed by
the kernel.

Threads and processes: each call checks out a connection of its own from a small idle list and hands
it back (one connection per concurrently calling thread, reused by threads that come and go; the
statement cache makes every statement here a prepared one). A forked child opens its own (SQLite
connections must not cross ``fork()``). Each checkout compares the file at the path with the one the
connections have open (one ``stat``): if it was deleted or replaced, they are dropped and the file at
the path is opened, so nobody keeps locking in a deleted file that the others no longer see.
``AsyncSqliteBackend`` is the blocking backend behind ``fencelock.backends.offload`` (each call in a
worker thread), with a wait of its own that sleeps on the event loop and listens to its doorbell there.

Modules: ``urls`` (sqlite:// URLs), ``boot`` (the boot id), ``schema`` (tables, the 0.1.0 upgrade,
statements),
``pool`` (connections per process and thread, transactions, error translation), ``doorbell`` (wake-ups
between processes), ``backend`` (the primitives).
"""

from __future__ import annotations

from .backend import AsyncSqliteBackend, SqliteBackend, poll_delay
from .boot import UNKNOWN_BOOT, read_boot_id
from .urls import DEFAULT_BUSY_TIMEOUT, parse_sqlite_url

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "UNKNOWN_BOOT",
    "AsyncSqliteBackend",
    "SqliteBackend",
    "parse_sqlite_url",
    "poll_delay",
    "read_boot_id",
]
