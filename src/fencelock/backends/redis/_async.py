"""Redis backend I/O. Source: ``_async.py``; ``_sync.py`` is generated from it (scripts/unasync.py).

The protocol lives in ``scripts.py`` (the Lua scripts); this class only runs them, with
``EVALSHA`` through ``execute_command`` (``Lua.sha`` is computed once, at import). A server that
does not have a script (restarted, flushed) answers ``NOSCRIPT``; the script is then loaded
(``SCRIPT LOAD``) and the call sent once more. redis-py's ``Script`` objects would do the same but
cost about 10 us of client time per call (and six SHA-1s per backend made).
"""

from __future__ import annotations

import weakref
from typing import Any

import redis.asyncio as redis_api
from redis.exceptions import NoScriptError

from ..._errors import ConfigurationError, LimitMismatch, ReplicationUnconfirmed
from ..base import Attempt, HolderInfo, LockInfo, check_counted
from . import shared
from .errors import map_errors, raise_translated, text
from .keys import RedisKeys, check_prefix
from .scripts import (
    ABANDON,
    ACQUIRE,
    ACQUIRE_COUNTED,
    BLOCK_CAP,
    DEFAULT_PREFIX,
    EXTEND,
    FORCE_COUNTED,
    INSPECT,
    LIMIT_MISMATCH,
    QUEUE_UNSETTLED,
    REGISTRATION_MS,
    RELEASE,
    Lua,
)
from .urls import DEFAULT_WAIT_TIMEOUT, check_wait_replicas, client_from_url, parse_redis_url

__all__ = ["AsyncRedisBackend"]

_ACQUIRE = Lua(ACQUIRE)
_ACQUIRE_COUNTED = Lua(ACQUIRE_COUNTED)
_EXTEND = Lua(EXTEND)
_RELEASE = Lua(RELEASE)
_ABANDON = Lua(ABANDON)
_INSPECT = Lua(INSPECT)
_FORCE_COUNTED = Lua(FORCE_COUNTED)
_IS_ASYNCIO = redis_api.__name__.endswith(".asyncio")  # False in the blocking twin (it imports plain redis)
_by_client: weakref.WeakKeyDictionary[Any, weakref.ref[AsyncRedisBackend]] = weakref.WeakKeyDictionary()
"""A user's client -> its backend, both held weakly (the backend holds the client: a strong value
would keep every client ever given to a lock alive)."""

CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 2.0
"""Seconds a URL-made client waits for one reply (connect: CONNECT_TIMEOUT). It bounds every call:
an acquire returns within its timeout plus this (plus the cleanup grace) even when the server stops
answering. BLPOP polls stay well below it (see ``BLOCK_CAP``)."""


SHARED_MAX_CONNECTIONS = 2**31
"""Connection limit of a URL's shared pool (redis-py 8 defaults to 100). Every lock of the URL in
the process draws on this one pool, and a waiter holds a connection through each BLPOP: 300
threads waiting would otherwise fail with "Too many connections", where a pool per lock used to
serve them. The pool only opens what is used at once; set ``?max_connections=`` to cap it."""


class AsyncRedisBackend:
    """fencelock on one Redis (standalone, a Sentinel-managed master, or a Cluster).

    Pass your own client (``Redis``, ``RedisCluster``, ``sentinel.master_for(...)``): it is used as
    is and never closed by us. Or use ``from_url``: then fencelock owns and closes the client, and
    sets bounded connect/socket timeouts so that a down server is an error within seconds.

    ``wait_replicas=N`` (with ``wait_timeout`` seconds) makes every grant wait until ``N`` replicas
    acknowledged it (``WAIT``, on the connection that wrote it), so a failover to one of them keeps
    the lock. When fewer acknowledge in time, the acquire fails with ``ReplicationUnconfirmed`` (a
    ``BackendRejected``) and the lock handle gives the lock up again. Not for Redis Cluster clients.
    """

    name = "redis"

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = DEFAULT_PREFIX,
        owns_client: bool = False,
        wait_replicas: int = 0,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> None:
        if not hasattr(client, "execute_command"):
            raise ConfigurationError(f"expected a redis-py client, got {type(client).__name__}")
        self.client = client
        self.prefix = prefix if prefix == DEFAULT_PREFIX else check_prefix(prefix)
        if wait_replicas == 0 and wait_timeout == DEFAULT_WAIT_TIMEOUT:
            self.wait_replicas, self._wait_ms = 0, int(DEFAULT_WAIT_TIMEOUT * 1000)
        else:
            self.wait_replicas, self._wait_ms = check_wait_replicas(client, wait_replicas, wait_timeout)
        self._owns_client = owns_client
        self._shared: shared.SharedClient | None = None
        self._keys: dict[str, RedisKeys] = {}
        self._block_cap = _block_cap(client)

    @classmethod
    def for_client(cls, client: Any) -> AsyncRedisBackend:
        """The backend for a user's own client, made once per client and shared by every lock given
        that client: it holds no per-lock state (its key-name cache is bounded), and making one per
        lock cost most of a lock's construction time."""
        try:
            ref = _by_client.get(client)
        except TypeError:  # a client that cannot be weakly referenced: one backend per lock
            return cls(client)
        backend = ref() if ref is not None else None
        if backend is None:
            backend = cls(client)
            _by_client[client] = weakref.ref(backend)
        return backend

    @classmethod
    def from_url(cls, url: str, **client_kwargs: Any) -> AsyncRedisBackend:
        """``redis://[user:pass@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock``;
        ``?prefix=app:`` sets the key prefix. Other query options go to redis-py.

        Backends made from the same URL (and keyword arguments) in one process share one client,
        so one connection pool (see ``shared``): the URL is parsed once, and the client is closed
        when the last of them is closed or collected."""

        def make() -> tuple[Any, dict[str, Any]]:
            plain, ours = parse_redis_url(url)
            kwargs = dict(client_kwargs)
            kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
            kwargs.setdefault("socket_timeout", SOCKET_TIMEOUT)
            kwargs.setdefault("max_connections", SHARED_MAX_CONNECTIONS)  # a URL's ?max_connections= wins
            client = client_from_url(redis_api, url, plain, kwargs)
            replicas = int(ours.get("wait_replicas", "0") or 0)
            timeout = float(ours.get("wait_timeout", DEFAULT_WAIT_TIMEOUT) or DEFAULT_WAIT_TIMEOUT)
            prefix = ours.get("prefix", DEFAULT_PREFIX)
            template = cls(client, prefix=prefix, owns_client=True, wait_replicas=replicas, wait_timeout=timeout)
            return client, dict(vars(template))  # every backend of this URL starts as a copy

        entry = shared.attach(url, client_kwargs, _IS_ASYNCIO, make)
        backend = cls.__new__(cls)
        vars(backend).update(entry.parsed)  # the key-name cache is shared too: it is bounded
        backend._shared = entry
        return backend

    def keys(self, name: str) -> RedisKeys:
        keys = self._keys.get(name)
        if keys is None:
            if len(self._keys) > 4096:
                self._keys.clear()
            keys = self._keys[name] = RedisKeys(self.prefix, name)
        return keys

    async def try_acquire(
        self, key: str, token: str, ttl_ms: int, label: str, queue: bool, limit: int = 1, weight: int = 1
    ) -> Attempt:
        if limit != 1 or weight != 1:
            return await self._try_counted(key, token, ttl_ms, label, queue, limit, weight)
        k = self._keys.get(key) or self.keys(key)
        # one key: the script derives the others from the lock key (see ACQUIRE in scripts.py)
        if self.wait_replicas:
            args = [token, ttl_ms, label, "1" if queue else "0"]
            granted, value = await self._replicated(key, "acquire", _ACQUIRE, [k.lock], args)
        else:
            try:
                granted, value = await self.client.execute_command(
                    "EVALSHA", _ACQUIRE.sha, 1, k.lock, token, ttl_ms, label, "1" if queue else "0"
                )
            except Exception as err:
                granted, value = await self._retry(
                    err, "acquire", _ACQUIRE, [k.lock], [token, ttl_ms, label, "1" if queue else "0"]
                )
        if int(granted) == 1:  # the common case first: one comparison, no call
            return Attempt(fence=int(value))
        return _attempt(key, 1, int(granted), int(value))

    async def _try_counted(
        self, key: str, token: str, ttl_ms: int, label: str, queue: bool, limit: int, weight: int
    ) -> Attempt:
        """``try_acquire`` of ``weight`` of ``limit`` permits: the counted layout (ACQUIRE_COUNTED)."""
        check_counted(limit, weight)
        k = self.keys(key)
        args = [token, ttl_ms, label, "1" if queue else "0", REGISTRATION_MS, limit, weight]
        if self.wait_replicas:
            granted, value = await self._replicated(key, "acquire", _ACQUIRE_COUNTED, k.all9(), args)
        else:
            granted, value = await self._eval("acquire", _ACQUIRE_COUNTED, k.all9(), args)
        return _attempt(key, limit, int(granted), int(value))

    async def wait(self, key: str, token: str, timeout: float) -> int | None:
        """BLPOP on our wake list; a pop means RELEASE already made the lock ours (the fence)."""
        block = max(0.01, min(timeout, self._block_cap))
        if self.wait_replicas:
            return await self._wait_replicated(key, token, block)
        with map_errors("wait"):
            got = await self.client.blpop([self.keys(key).wake(token)], timeout=block)
        return None if got is None else int(got[1])

    async def _eval(self, what: str, script: Lua, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` by its SHA-1 (EVALSHA); see ``_retry`` for a server that lacks it."""
        try:
            return await self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except Exception as err:
            return await self._retry(err, what, script, keys, args)

    async def _retry(self, err: Exception, what: str, script: Lua, keys: list[str], args: list[Any]) -> Any:
        """After an EVALSHA raised ``err``: a server without the script (restarted, flushed, a new
        Cluster node) gets it with SCRIPT LOAD, and the EVALSHA is sent again (not EVAL: the
        minimal ACL in the README grants EVALSHA and SCRIPT LOAD only); any other error is
        translated into fencelock's tree."""
        if not isinstance(err, NoScriptError):
            raise_translated(err, what)
        with map_errors(what):
            await self.client.script_load(script.source)  # a Cluster client loads it on every primary
            return await self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _replicated(self, key: str, what: str, script: Lua, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` then ``WAIT`` in one pipeline: WAIT counts only the writes sent on its own
        connection, so both must travel on the same one. Raises ``ReplicationUnconfirmed`` when a
        grant (a reply carrying a fence) was acknowledged by too few replicas."""
        with map_errors(what):
            for attempt in (1, 2):
                # EVALSHA queued by hand: a Script given a pipeline would add a SCRIPT EXISTS round
                # trip (and ACL permission) to every grant. A server without the script (restart,
                # flush) answers NOSCRIPT: load it once and send again.
                pipe = self.client.pipeline(transaction=False)
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                pipe.wait(self.wait_replicas, self._wait_ms)
                try:
                    reply, acked = await pipe.execute()
                    break
                except NoScriptError:
                    if attempt == 2:
                        raise
                    await self.client.script_load(script.source)
        granted = reply is not None and (not isinstance(reply, list) or int(reply[0]) == 1)
        if granted and int(acked) < self.wait_replicas:
            raise ReplicationUnconfirmed(key, int(acked), self.wait_replicas, self._wait_ms / 1000)
        return reply

    async def _wait_replicated(self, key: str, token: str, block: float) -> int | None:
        """``wait`` with ``wait_replicas``: BLPOP then WAIT on one connection. The pop is a write that
        the replication stream carries after the releaser's handoff, so its acknowledgement covers
        the handoff too."""
        with map_errors("wait"):
            pipe = self.client.pipeline(transaction=False)
            pipe.blpop([self.keys(key).wake(token)], timeout=block)
            pipe.wait(self.wait_replicas, self._wait_ms)
            got, acked = await pipe.execute()
        if got is None:
            return None
        if int(acked) < self.wait_replicas:
            raise ReplicationUnconfirmed(key, int(acked), self.wait_replicas, self._wait_ms / 1000)
        return int(got[1])

    async def abandon(self, key: str, token: str) -> None:
        await self._eval("abandon", _ABANDON, self.keys(key).all4(), [token])

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        k = self._keys.get(key) or self.keys(key)
        try:
            done = await self.client.execute_command("EVALSHA", _EXTEND.sha, 1, k.lock, token, ttl_ms)
        except Exception as err:
            done = await self._retry(err, "extend", _EXTEND, [k.lock], [token, ttl_ms])
        return int(done) == 1

    async def release(self, key: str, token: str) -> bool:
        k = self._keys.get(key) or self.keys(key)
        try:
            done = await self.client.execute_command("EVALSHA", _RELEASE.sha, 1, k.lock, token)
        except Exception as err:
            done = await self._retry(err, "release", _RELEASE, [k.lock], [token])
        return int(done) != 0

    async def inspect(self, key: str) -> LockInfo | None:
        k = self.keys(key)
        keys = [k.lock, k.fence, k.queue, k.permits, k.holders, k.leases, k.cqueue]
        reply = await self._eval("inspect", _INSPECT, keys, [])
        value, pttl, waiters, _last, limit, now_ms, leases = reply
        if value:
            token_fence_label = text(value).split(":", 2)
            fence = int(token_fence_label[1]) if len(token_fence_label) > 1 else 0
            label = token_fence_label[2] if len(token_fence_label) > 2 else ""
            pttl = int(pttl)
            ttl = pttl / 1000 if pttl >= 0 else None
            return LockInfo(key, fence, label, ttl, int(waiters), (HolderInfo(fence, label, ttl),), 1)
        if not leases:
            return None
        now = int(now_ms)
        holders = []
        for lease in leases:
            end, fence_text, weight, label = text(lease).split("|", 3)
            holders.append(HolderInfo(int(fence_text), label, max(0, int(end) - now) / 1000, int(weight)))
        holders.sort(key=lambda h: h.fence)  # oldest grant first
        newest = holders[-1]
        return LockInfo(
            key, newest.fence, newest.holder, newest.ttl_remaining, int(waiters), tuple(holders),
            int(limit) if limit else 0,
        )  # fmt: skip

    async def force_release(self, key: str) -> str | None:
        """Operator's override: drop the lock whatever its token (a counted name: every holder; its
        waiters stay and get in at their next poll). Returns what was removed (a mutex's stored
        value; a counted name's holder labels), None when nothing was held."""
        k = self.keys(key)
        with map_errors("force release"):
            value = await self.client.get(k.lock)
            if value is not None:
                await self.client.delete(k.lock)
                return text(value)
        removed = await self._eval("force release", _FORCE_COUNTED, [k.permits, k.holders, k.leases], [])
        if not removed:
            return None
        return ", ".join(text(lease).split("|", 3)[3] for lease in removed)

    async def last_fence(self, key: str) -> int:
        """The last fence issued for ``key`` (0 when none): for tests and monitoring."""
        with map_errors("read fence"):
            value = await self.client.get(self.keys(key).fence)
        return 0 if value is None else int(value)

    async def aclose(self) -> None:
        """Close what fencelock opened: a URL's shared client once its last backend is closed (a
        user's own client is never closed here)."""
        if not self._owns_client:
            return
        self._owns_client = False  # once: a second close must not count as another user leaving
        entry, self._shared = self._shared, None
        client = shared.detach(entry) if entry is not None else self.client
        if client is not None:
            await client.aclose()

    def __del__(self) -> None:
        # A backend collected without close(): one user of its shared client fewer; the client
        # stays registered for the next lock from the URL (see ``shared``).
        entry = getattr(self, "_shared", None)
        if entry is not None and getattr(self, "_owns_client", False):
            self._owns_client = False
            shared.detach(entry, close=False)


def _attempt(key: str, limit: int, granted: int, value: int) -> Attempt:
    """An ACQUIRE reply ``{granted, value}`` as an ``Attempt`` (see the scripts' comments)."""
    if granted == 1:
        return Attempt(fence=value)
    if granted == LIMIT_MISMATCH:
        raise LimitMismatch(key, limit, value)
    if value > 0:
        return Attempt(fence=None, retry_after=value / 1000)
    # -3: free, but crashed waiters (or expired holders) were left to clear first; -2: others wait first
    return Attempt(fence=None, retry_after=0.0 if value == QUEUE_UNSETTLED else None)


def _block_cap(client: Any) -> float:
    """Keep each BLPOP well under the client's socket timeout, or redis-py would resend it."""
    kwargs: dict[str, Any] = {}
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        kwargs = getattr(pool, "connection_kwargs", {}) or {}
    timeout = kwargs.get("socket_timeout")
    if timeout:
        return max(0.05, min(BLOCK_CAP, float(timeout) / 2))
    return BLOCK_CAP
