"""fencelock: a distributed lock with leases and monotonic fencing tokens.

    import fencelock

    lock = fencelock.Lock("file:2024-01.tsv", "redis://localhost:6379", ttl=30)
    with lock as lease:              # waits at most 10 s by default, then LockTimeout
        lease.ensure_held()          # raises LeaseLost if the lease is gone
        store.write(rows, fence=lease.fence)   # storage refuses a lower fence (fencelock.fencing)

asyncio: ``fencelock.aio.Lock`` has the same API with ``await`` / ``async with``.
"""

from typing import TYPE_CHECKING

from ._core.params import DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_TTL
from ._errors import (
    AlreadyHeld,
    AuthenticationFailed,
    BackendError,
    BackendRejected,
    BackendUnavailable,
    ConfigurationError,
    FenceLockError,
    LeaseError,
    LeaseLost,
    LockTimeout,
    NotHeld,
    ReplicationUnconfirmed,
    StaleFence,
)
from ._sync.lock import Lease, Lock
from ._sync.redis import RedisBackend
from .backends.base import Attempt, LockInfo

if TYPE_CHECKING:  # lazily imported at run time, see __getattr__
    from .backends.sqlite import SqliteBackend
    from .backends.zookeeper import ZooKeeperBackend

__version__ = "0.1.0"

_LAZY = {  # imported on first use: ZooKeeper needs kazoo (an optional extra)
    "SqliteBackend": ("fencelock.backends.sqlite", "SqliteBackend"),
    "ZooKeeperBackend": ("fencelock.backends.zookeeper", "ZooKeeperBackend"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'fencelock' has no attribute {name!r}")

__all__ = [
    "DEFAULT_ACQUIRE_TIMEOUT",
    "DEFAULT_TTL",
    "AlreadyHeld",
    "Attempt",
    "AuthenticationFailed",
    "BackendError",
    "BackendRejected",
    "BackendUnavailable",
    "ConfigurationError",
    "FenceLockError",
    "Lease",
    "LeaseError",
    "LeaseLost",
    "Lock",
    "LockInfo",
    "LockTimeout",
    "NotHeld",
    "RedisBackend",
    "SqliteBackend",
    "ZooKeeperBackend",
    "ReplicationUnconfirmed",
    "StaleFence",
    "__version__",
]
