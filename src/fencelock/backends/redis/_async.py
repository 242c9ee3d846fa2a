"""Redis backend I/O. Source: ``_async.py``; ``_sync.py`` is generated from it (scripts/unasync.py).

The protocol lives in ``scripts.py`` (the Lua scripts); this class only runs them.
redis-py's ``Script`` objects send EVALSHA and reload the script on ``NOSCRIPT`` by themselves, so
a restarted (or flushed) server needs nothing from us.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis_api

from ..._errors import ConfigurationError, LimitMismatch, ReplicationUnconfirmed
from ..._metrics import traced
from ..base import Attempt, HolderInfo, LockInfo, check_counted
from .errors import map_errors, text
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
)
from .urls import DEFAULT_WAIT_TIMEOUT, check_wait_replicas, parse_redis_url

__all__ = ["AsyncRedisBackend"]

CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 2.0
"""Seconds a URL-made client waits for one reply (connect: CONNECT_TIMEOUT). It bounds every call:
an acquire returns within its timeout plus this (plus the cleanup grace) even when the server stops
answering. BLPOP polls stay well below it (see ``BLOCK_CAP``)."""


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
        if not hasattr(client, "register_script"):
            raise ConfigurationError(f"expected a redis-py client, got {type(client).__name__}")
        self.client = client
        self.prefix = check_prefix(prefix)
        self.wait_replicas, self._wait_ms = check_wait_replicas(client, wait_replicas, wait_timeout)
        self._owns_client = owns_client
        self._acquire = client.register_script(ACQUIRE)
        self._acquire_counted = client.register_script(ACQUIRE_COUNTED)
        self._extend = client.register_script(EXTEND)
        self._release = client.register_script(RELEASE)
        self._abandon = client.register_script(ABANDON)
        self._inspect = client.register_script(INSPECT)
        self._force_counted = client.register_script(FORCE_COUNTED)
        self._keys: dict[str, RedisKeys] = {}
        self._block_cap = _block_cap(client)

    @classmethod
    def from_url(cls, url: str, **client_kwargs: Any) -> AsyncRedisBackend:
        """``redis://[user:pass@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock``;
        ``?prefix=app:`` sets the key prefix. Other query options go to redis-py."""
        plain, ours = parse_redis_url(url)
        client_kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
        client_kwargs.setdefault("socket_timeout", SOCKET_TIMEOUT)
        client = redis_api.Redis.from_url(plain, **client_kwargs)
        replicas = int(ours.get("wait_replicas", "0") or 0)
        timeout = float(ours.get("wait_timeout", DEFAULT_WAIT_TIMEOUT) or DEFAULT_WAIT_TIMEOUT)
        return cls(
            client,
            prefix=ours.get("prefix", DEFAULT_PREFIX),
            owns_client=True,
            wait_replicas=replicas,
            wait_timeout=timeout,
        )

    def keys(self, name: str) -> RedisKeys:
        keys = self._keys.get(name)
        if keys is None:
            if len(self._keys) > 4096:
                self._keys.clear()
            keys = self._keys[name] = RedisKeys(self.prefix, name)
        return keys

    @traced("try_acquire")
    async def try_acquire(
        self, key: str, token: str, ttl_ms: int, label: str, queue: bool, limit: int = 1, weight: int = 1
    ) -> Attempt:
        if limit != 1 or weight != 1:
            return await self._try_counted(key, token, ttl_ms, label, queue, limit, weight)
        k = self.keys(key)
        args = [token, ttl_ms, label, "1" if queue else "0", REGISTRATION_MS]
        if self.wait_replicas:
            granted, value = await self._replicated(key, "acquire", self._acquire, k.all4(), args)
        else:
            with map_errors("acquire"):
                granted, value = await self._acquire(keys=k.all4(), args=args)
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
            granted, value = await self._replicated(key, "acquire", self._acquire_counted, k.all9(), args)
        else:
            with map_errors("acquire"):
                granted, value = await self._acquire_counted(keys=k.all9(), args=args)
        return _attempt(key, limit, int(granted), int(value))

    @traced("wait")
    async def wait(self, key: str, token: str, timeout: float) -> int | None:
        """BLPOP on our wake list; a pop means RELEASE already made the lock ours (the fence)."""
        block = max(0.01, min(timeout, self._block_cap))
        if self.wait_replicas:
            return await self._wait_replicated(key, token, block)
        with map_errors("wait"):
            got = await self.client.blpop([self.keys(key).wake(token)], timeout=block)
        return None if got is None else int(got[1])

    async def _replicated(self, key: str, what: str, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` then ``WAIT`` in one pipeline: WAIT counts only the writes sent on its own
        connection, so both must travel on the same one. Raises ``ReplicationUnconfirmed`` when a
        grant (a reply carrying a fence) was acknowledged by too few replicas."""
        from redis.exceptions import NoScriptError

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
                    await self.client.script_load(script.script)
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
        with map_errors("abandon"):
            await self._abandon(keys=self.keys(key).all4(), args=[token])

    @traced("extend")
    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        with map_errors("extend"):
            return int(await self._extend(keys=[self.keys(key).lock], args=[token, ttl_ms])) == 1

    @traced("release")
    async def release(self, key: str, token: str) -> bool:
        with map_errors("release"):
            return int(await self._release(keys=self.keys(key).all4(), args=[token])) != 0

    async def inspect(self, key: str) -> LockInfo | None:
        k = self.keys(key)
        with map_errors("inspect"):
            reply = await self._inspect(keys=[k.lock, k.fence, k.queue, k.permits, k.holders, k.leases, k.cqueue])
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
            removed = await self._force_counted(keys=[k.permits, k.holders, k.leases])
        if not removed:
            return None
        return ", ".join(text(lease).split("|", 3)[3] for lease in removed)

    async def last_fence(self, key: str) -> int:
        """The last fence issued for ``key`` (0 when none): for tests and monitoring."""
        with map_errors("read fence"):
            value = await self.client.get(self.keys(key).fence)
        return 0 if value is None else int(value)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()


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
