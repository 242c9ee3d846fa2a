"""ZooKeeper backend (kazoo): ephemeral sequential nodes, a fence from the ensemble's zxid.

Layout. Each lock name has a parent node ``<root>/<encoded name>`` (``root`` defaults to
``/fencelock``); every contender creates one ephemeral sequential child under it:

    /fencelock/L<percent-encoded name>/c-<sha256(token)[:32]>-<10-digit sequence>   data: holder label
    /fencelock/L<percent-encoded name>/c-<sha256(token)[:32]>-L<limit>W<weight>-<10-digit sequence>

(the first form for a mutex, the second for a counted lease: a semaphore's permit, a read-write
lock's reader or writer). ``<encoded name>`` is ``L`` + the UTF-8 name percent-encoded with only
``A-Za-z0-9_.-~`` left as is (``H`` + its SHA-256 when that would exceed 200 characters), so slashes,
spaces, newlines and non-ASCII characters stay inside one path segment and no name can reach another
lock's parent. The child carries a hash of the token, not the token: any client allowed to list the
parent can read its children's names, and the token is what lets ``release``/``extend`` act on a lease.

Who holds it. Contenders are served in sequence order: a node holds its permits when its weight and
the weights of every live node ahead of it fit in the limit (a mutex: the lowest node holds). So the
holders are always the head of the queue, a reader waits for every writer ahead of it and a writer
for everyone ahead of it, and nobody overtakes a waiter. Each waiter watches only what it needs (no
herd: a release wakes only waiters it may let in): a mutex's or a writer's waiter the node just
before it, a reader the nearest writer ahead of it, a semaphore's first waiter the parent's children,
a later one the grant of the node just before it (see ``grants``). ``wait()`` blocks on that watch,
never polls (except a semaphore's later waiters, every ``GRANT_POLL`` s, in case the node before
them is granted while its owner is paused). A node is ephemeral: when its session dies (process
killed, host gone) ZooKeeper deletes it, which frees its permits or moves the queue.
``try_acquire(queue=True)`` creates the node once per token and keeps it while the caller waits;
``abandon`` deletes it. A name's limit binds while it has nodes: a request whose node finds a live
node of another limit ahead of it deletes its node and raises ``LimitMismatch``.

Fence: the holder's node **creation zxid** (``czxid``). Every write to an ensemble gets a zxid
(epoch << 32 | counter) that grows strictly across the ensemble's whole history and survives
leader changes, so a node created later has a larger czxid, whatever its path. The sequence
suffix would not do: it is the parent's child counter and restarts at 0 when the parent is deleted
and recreated (an operator cleaning up empty parents), which would hand out fences lower than ones
already used. Grants follow the queue's order, which is the order of creation, so fences grow in
the order permits are granted (several granted at once, such as the readers behind a writer, in
queue order). czxids stay below 2**53 (exact in JSON and Lua) for 2**21 leader epochs.

Lease and session. A node lives as long as its session, so a lease cannot be vouched for past
the session timeout: ``max_lease`` is that timeout (the lock shortens longer TTLs to it). The
deadline is measured from before the request that granted or extended it was sent; the server
restarts the session's timer when that request arrives, later, so the session outlives the lease,
and a holder paused past its session timeout finds its lease expired on its own clock before it
can write. Session states map to the lease through
``watch_loss``: SUSPENDED (connection lost, session maybe alive) -> ``"doubt"``; CONNECTED again
with the same session -> ``"held"``; LOST (expired or closed) or reconnected with a new session
-> ``"lost"``. ``extend`` checks that our node still exists and is owned by our live session.

TTL on the server's side. ZooKeeper has no expiry for an ephemeral node while its session lives,
but a lease must free the lock when it runs out unrenewed (renewal off, renewer stopped, lease
dropped). A janitor thread (one per client) deletes the node of a lease whose TTL has passed
(measured from a moment no earlier than the holder's own clock started it, so it always ends after
the holder stopped trusting it), and retries deletions that failed while disconnected.

Sharing. All locks made from the same URL in one process share one ``KazooClient`` (one session,
one janitor), and all locks given the same ``KazooClient`` share its bookkeeping: a lock per file
costs no new session. Tokens keep their nodes apart; the last backend closed (or collected) stops
what fencelock started.

Connection. ``zk://[user:password@]host:port[,host:port...][/chroot][?options]``; user/password
become kazoo digest auth (``auth_data``) and the nodes get a digest ACL for that identity only.
Options: ``session_timeout`` (s, default 10), ``timeout`` (s: longest wait for one request or
for a connection, default 3), ``root`` (default ``/fencelock``), and kazoo's TLS settings passed
through: ``use_ssl``, ``verify_certs``, ``check_hostname`` (true/false), ``ca``, ``certfile``,
``keyfile``, ``keyfile_password``. The chroot must exist (fencelock creates its root inside
it, as every ZooKeeper client does). A user's own ``KazooClient`` is used as is and never stopped
by us (start it yourself). Every request is bounded by ``timeout``; a server that is down or
silent becomes ``BackendUnavailable`` within it, never a hang.

Both APIs. kazoo is blocking, so ``ZooKeeperBackend`` is written once, blocking, and
``AsyncZooKeeperBackend`` is it behind ``offload.Offloaded`` (each call in a worker thread that a
cancellation waits for, so a cancelled acquire's ``abandon`` sees the node it made), with a wait
of its own that awaits the watch on the event loop: no thread is held while a task waits.

Assumptions. The server must grant the session timeout asked for (``minSessionTimeout`` <= it <=
``maxSessionTimeout``; ZooKeeper's defaults are 2 and 20 ticks, 4-40 s with tickTime 2000): kazoo
does not expose the negotiated value, and a shorter one would let a lease outlive its session.
An ensemble that loses acknowledged writes (all data wiped, a restore from an old snapshot)
restarts or rewinds zxids; that is outside ZooKeeper's guarantees and fences can repeat then.
Empty parent nodes stay behind (as with kazoo's own ``Lock``); deleting them is safe at any time.

Modules: ``urls`` (zk:// URLs), ``errors`` (kazoo's errors translated), ``naming`` (node names),
``grants`` (who holds, whom a waiter watches: the queue's rules, no I/O), ``core`` (one client's
session states, loss watches and nodes; bounded requests), ``janitor`` (the server-side end of
leases), ``clients`` (the process-wide registry of cores: sharing, fork, garbage collection),
``backend`` (the primitives, both APIs).
"""

from __future__ import annotations

from .backend import GRANT_POLL, AsyncZooKeeperBackend, ZooKeeperBackend
from .errors import map_errors
from .naming import Contender, contenders, encode_name, lock_parent, queue_order, token_tag
from .urls import DEFAULT_ROOT, DEFAULT_SESSION_TIMEOUT, DEFAULT_TIMEOUT, ZkSettings, parse_zk_url

__all__ = [
    "DEFAULT_ROOT",
    "DEFAULT_SESSION_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "GRANT_POLL",
    "AsyncZooKeeperBackend",
    "Contender",
    "ZkSettings",
    "ZooKeeperBackend",
    "contenders",
    "encode_name",
    "lock_parent",
    "map_errors",
    "parse_zk_url",
    "queue_order",
    "token_tag",
]
