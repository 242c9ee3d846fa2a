"""Redis backend (redis-py; standalone, Sentinel, Cluster): the protocol, one module a job.

    scripts.py   the protocol itself: Lua scripts (KEYS/ARGV/return above each), minted fences
    keys.py      key naming: one hash tag per lock name, injective percent-encoding
    urls.py      redis:// URLs and options, validated before any I/O
    errors.py    redis-py's exceptions translated into fencelock's tree, in one place
    _async.py    the I/O: ``AsyncRedisBackend`` runs the scripts (source of truth)
    _sync.py     ``RedisBackend``, GENERATED from ``_async.py`` by scripts/unasync.py

Keys of one lock (all share one hash tag, so Redis Cluster puts them in one slot):

    {prefix}{<name>}:lock          STRING "<token>:<fence>:<label>", with PX = the lease
    {prefix}{<name>}:fence         STRING the last fence issued; kept FENCE_KEEP_MS past its lease
    {prefix}{<name>}:queue         ZSET   waiting tokens, scored by arrival (server microseconds)
    {prefix}{<name>}:lock:reg:<t>  STRING waiter <t>'s registration "<ttl ms>|<label>"; PX = REGISTRATION_MS
                                          from its last poll: it is alive while this key exists
    {prefix}{<name>}:lock:wake:<t> LIST   handoff notice for waiter <t> (it BLPOPs on it)

and, for counted leases (a semaphore's permits, a read-write lock's readers and writer):

    {prefix}{<name>}:permits       HASH   limit -> the name's limit; used -> weight of the holders listed
    {prefix}{<name>}:holders       ZSET   holding tokens, scored by their lease's end (server ms)
    {prefix}{<name>}:leases        HASH   holding token -> "<lease end ms>|<fence>|<weight>|<label>"
    {prefix}{<name>}:cqueue        ZSET   waiting tokens, as queue (the mutex's waiters stay apart)
    {prefix}{<name>}:calive        HASH   waiting token -> "<alive until>|<ttl ms>|<weight>|<label>"

The wake lists are shared: a waiter BLPOPs the same list whatever it waits for.

``<name>`` is the lock name with ``%``, ``{`` and ``}`` percent-encoded, so any name (spaces,
newlines, braces, non-ASCII) maps to its own hash tag and cannot reach another lock's keys. The
name travels only as key data, never into a script's source.

Fences. Each fence is ``max(last + 1, TIME in microseconds)`` where ``last`` is the counter key. The
counter alone would restart at 1 after Redis loses its data (restart without persistence, failover
to a replica that missed the write, restore of an older snapshot); the clock term restarts it above
every fence issued before. **Assumption**: when the counter is lost or rolled back, the server's
clock (``TIME``) reads later than it did when the last fence was issued; i.e. the clock did not step
backwards by more than the time elapsed since then. NTP slewing never does that; a manual clock
reset across a data loss could. While the counter survives, the clock may do anything: fences still
grow by at least one. Fences are integers below 2**53 (exact in Lua's doubles) until the year 2255.

An idle name's memory. After a release nothing of the name stays in Redis but its fence counter,
and that only for ``FENCE_KEEP_MS`` (24 hours) past the TTL of the last lease minted from it (each
mint sets its expiry): about 90 bytes a name (``MEMORY USAGE``), then nothing. A counter that
expired is a lost counter, so the assumption above covers it: the next fence is the clock, above
every fence issued before unless the server's clock stepped back by more than the name's idle time
(at least 24 hours). The queue expires ``REGISTRATION_MS`` after its last waiter's poll, as each
waiter's registration (``reg``) does after its own; a handoff notice (``wake``) with the lease it
announced. (The ``alive`` key of earlier versions is no longer written; it is still passed to the
scripts, so their key lists, hence ACL key patterns, stay the same.)

Waiting (first come, first served). A contender that must wait enqueues its token in ``queue``. A
free lock is granted only to the first *live* waiter (or anyone when the queue is empty), so newcomers
cannot barge past waiters. ``release`` hands the lock straight to the first live waiter: it mints
that waiter's fence, sets the lock to its token for the waiter's own TTL, and pushes the fence to its
``wake`` list; the waiter's BLPOP returns and it holds the lock with no further round trip (its lease
is measured from before its previous poll, which is before the grant). A waiter refreshes its
registration (``reg``, one ``SET ... PX``) each time it polls (at least every ``BLOCK_CAP`` seconds); one that stopped
refreshing for ``REGISTRATION_MS`` (crashed) is skipped and dropped. Dropping is bounded work (at
most 256 dead entries a call, so a crowd of crashed waiters cannot stall the server); when a call runs
out of that budget the head is *unknown*, which is never taken for "empty": ACQUIRE then grants
nobody and answers ``QUEUE_UNSETTLED`` so the waiter polls again at once, and RELEASE frees the lock
for the live waiters' next polls. A grant always removes the grantee's own entry, so a finished holder
can never be handed the lock again. How strict: FIFO among live waiters by arrival at the server. A
waiter that dies within ``REGISTRATION_MS`` of being handed the lock holds it, like any crashed
holder, until its TTL runs out.

Counted leases. ``try_acquire(..., limit, weight)`` with a limit above 1 uses the counted keys (a
limit of 1 is the mutex, whatever the handle: a one-permit semaphore and an election share the
mutex's keys and speed). A request is granted when no live waiter is ahead of it and ``used +
weight <= limit``. A release (or abandon, or a poll that finds leases run out) hands the free
permits to the live waiters at the head of ``cqueue``, in order, as many as fit: each gets its own
fence and its wake list; the first that does not fit stops the handoff, so nobody overtakes it (a
reader behind a waiting writer waits: writers do not starve). Lease ends are server time, like the
mutex's ``PX``. The same bounded-work rule holds: at most 256 dead waiters and 256 expired holders
are dropped a call, and at most ``GRANT_BUDGET`` grants handed over; what a call could not settle
is never taken for "nothing there" (QUEUE_UNSETTLED: poll again at once). ``used`` counts expired
holders until they are dropped, so it can only overstate: too little is granted, never too much.
The holders', leases' and permits' keys live as long as their longest lease (permits also as long
as a waiter's registration), so a name whose users all vanished goes idle by itself.

The limit binds while a name has a live holder or a live waiter: a request with another limit (a
mutex where a semaphore runs, a semaphore of 3 where others use 5) gets ``LimitMismatch`` and
changes nothing; an idle name takes the limit of its next user. The mutex's ACQUIRE checks this with
the EXISTS it already makes on the free path (one call on ``queue`` and ``permits``), so the common
case costs no extra call. EXTEND, RELEASE and ABANDON look for a token's lease in the mutex's
``lock`` first and the counted ``leases`` second: no layout hint is needed. The mutex's ACQUIRE,
RELEASE and EXTEND take only the ``lock`` key and derive the others from it (``fence``, ``queue``, the
counted keys; same hash tag, so same slot), as they derive the wake lists and registrations: every
key or argument an EVALSHA carries costs the client about 1.5 us to encode on every call. ABANDON,
off the hot path, takes the mutex's four keys.
"""

from __future__ import annotations

from typing import Any

from ..._errors import ReplicationUnconfirmed
from .keys import RedisKeys, check_prefix
from .scripts import BLOCK_CAP, DEFAULT_PREFIX, GRANT_BUDGET, QUEUE_UNSETTLED, REGISTRATION_MS

__all__ = [
    "BLOCK_CAP",
    "DEFAULT_PREFIX",
    "GRANT_BUDGET",
    "QUEUE_UNSETTLED",
    "REGISTRATION_MS",
    "AsyncRedisBackend",
    "RedisBackend",
    "RedisKeys",
    "ReplicationUnconfirmed",
    "check_prefix",
]


def __getattr__(name: str) -> Any:
    # The I/O classes import redis-py's blocking or asyncio client: load only the one asked for.
    if name == "RedisBackend":
        from ._sync import RedisBackend

        return RedisBackend
    if name == "AsyncRedisBackend":
        from ._async import AsyncRedisBackend

        return AsyncRedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
