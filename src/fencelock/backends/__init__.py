"""Backends: one contract (``base``), one small module each. ``open_backend`` turns what the user
passed (a URL, their own client, or a backend) into a backend.

URL schemes: ``redis://``, ``rediss://``, ``unix://`` (Redis); ``zk://`` / ``zookeeper://``
(ZooKeeper); ``sqlite:///path`` (embedded SQLite file).
"""

from __future__ import annotations

import re
from typing import Any

from .._errors import ConfigurationError
from .base import AsyncBackend, Backend

__all__ = ["open_async_backend", "open_backend", "safe_url"]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_ZK_SCHEMES = ("zk://", "zookeeper://")
_SQLITE_SCHEMES = ("sqlite://",)


_SECRET_OPTION = re.compile(r"(^|&)([^=&]*pass[^=&]*)=[^&]*", re.IGNORECASE)


def safe_url(url: str) -> str:
    """``url`` as it may be shown to a user or written to a log: scheme, user, host, port, path and
    options kept, every password replaced by ``***`` (``mysql://admin:***@db/locks``): in the
    userinfo, and in options such as ``?password=`` or ``ssl_password=``.

    Works on the raw text rather than through ``urlsplit``, so that it also masks URLs that do not
    parse (a bad port, a password with a ``/`` in it): when in doubt it hides more, never less.
    The userinfo is everything up to the last ``@`` before the options."""
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    scheme, sep, rest = url.partition("://")
    if not sep:  # a plain path (the demo's --db accepts one)
        return url
    before_query, qmark, query = rest.partition("?")
    if "@" in before_query:
        userinfo, _, hostpart = before_query.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        before_query = f"{user}:***@{hostpart}" if colon else f"{userinfo}@{hostpart}"
    if qmark:
        query = _SECRET_OPTION.sub(lambda m: f"{m.group(1)}{m.group(2)}=***", query)
    return f"{scheme}://{before_query}{qmark}{query}"


def _scheme_error(spec: str) -> ConfigurationError:
    return ConfigurationError(
        f"unsupported lock URL {safe_url(spec)!r}: use redis://host:port, rediss://host:port (TLS), "
        "unix:///path/to/redis.sock, zk://host:port[,host:port]/chroot or sqlite:///path/to/locks.db"
    )


def open_backend(spec: Any) -> tuple[Backend, bool]:
    """Blocking backend for ``spec``; the bool says whether fencelock owns (and closes) it."""
    if isinstance(spec, str):
        if spec.startswith(_REDIS_SCHEMES):
            from .._sync.redis import RedisBackend

            return RedisBackend.from_url(spec), True
        if spec.startswith(_ZK_SCHEMES):
            from .zookeeper import ZooKeeperBackend

            return ZooKeeperBackend.from_url(spec), True
        if spec.startswith(_SQLITE_SCHEMES):
            from .sqlite import SqliteBackend

            return SqliteBackend.from_url(spec), True
        raise _scheme_error(spec)
    if _is_async_redis(spec):
        raise ConfigurationError(
            "this is an asyncio Redis client; use fencelock.aio.Lock with it, or pass a redis.Redis to fencelock.Lock"
        )
    if _is_redis(spec):
        from .._sync.redis import RedisBackend

        return RedisBackend(spec), False
    if _is_kazoo(spec):
        from .zookeeper import ZooKeeperBackend

        return ZooKeeperBackend(spec), False
    if isinstance(spec, Backend):
        return spec, False
    raise ConfigurationError(
        f"cannot use {type(spec).__name__} as a lock backend: pass a URL, a redis.Redis / RedisCluster, "
        "a KazooClient, or a fencelock backend"
    )


def open_async_backend(spec: Any) -> tuple[AsyncBackend, bool]:
    """asyncio backend for ``spec``; the bool says whether fencelock owns (and closes) it."""
    if isinstance(spec, str):
        if spec.startswith(_REDIS_SCHEMES):
            from .._async.redis import AsyncRedisBackend

            return AsyncRedisBackend.from_url(spec), True
        if spec.startswith(_ZK_SCHEMES):
            from .zookeeper import AsyncZooKeeperBackend

            return AsyncZooKeeperBackend.from_url(spec), True
        if spec.startswith(_SQLITE_SCHEMES):
            from .sqlite import AsyncSqliteBackend

            return AsyncSqliteBackend.from_url(spec), True
        raise _scheme_error(spec)
    if _is_async_redis(spec):
        from .._async.redis import AsyncRedisBackend

        return AsyncRedisBackend(spec), False
    if _is_redis(spec):
        raise ConfigurationError(
            "this is a blocking redis.Redis client; use fencelock.Lock with it, or pass a redis.asyncio.Redis"
        )
    if _is_kazoo(spec):
        from .zookeeper import AsyncZooKeeperBackend

        return AsyncZooKeeperBackend(spec), False
    if isinstance(spec, AsyncBackend):
        return spec, False
    raise ConfigurationError(
        f"cannot use {type(spec).__name__} as an asyncio lock backend: pass a URL, a redis.asyncio.Redis / "
        "RedisCluster, a KazooClient, or a fencelock asyncio backend"
    )


def _is_redis(obj: Any) -> bool:
    try:
        import redis
        from redis.cluster import RedisCluster
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(obj, (redis.Redis, RedisCluster))


def _is_async_redis(obj: Any) -> bool:
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.cluster import RedisCluster
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, (aioredis.Redis, RedisCluster))


def _is_kazoo(obj: Any) -> bool:
    try:
        from kazoo.client import KazooClient
    except ImportError:
        return False
    return isinstance(obj, KazooClient)
