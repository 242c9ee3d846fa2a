"""asyncio API: the same names as ``fencelock``, awaited.

from fencelock import aio

lock = aio.Lock("job:nightly", "redis://localhost:6379", ttl=30, cancel_on_loss=True)
async with lock as lease:
    await do_work(fence=lease.fence)   # cancelled at its next await if the lease is lost
"""

from typing import TYPE_CHECKING

from ._async.lock import AsyncLease as Lease
from ._async.lock import AsyncLock as Lock
from ._async.redis import AsyncRedisBackend as RedisBackend

if TYPE_CHECKING:  # lazily imported at run time, see __getattr__
    from .backends.sqlite import AsyncSqliteBackend as SqliteBackend
    from .backends.zookeeper import AsyncZooKeeperBackend as ZooKeeperBackend

__all__ = ["Lease", "Lock", "RedisBackend", "SqliteBackend", "ZooKeeperBackend"]

_LAZY = {  # imported on first use: ZooKeeper needs kazoo (an optional extra)
    "SqliteBackend": ("fencelock.backends.sqlite", "AsyncSqliteBackend"),
    "ZooKeeperBackend": ("fencelock.backends.zookeeper", "AsyncZooKeeperBackend"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'fencelock.aio' has no attribute {name!r}")
