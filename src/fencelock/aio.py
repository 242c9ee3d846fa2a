"""asyncio API: the same names as ``fencelock``, awaited.

from fencelock import aio

lock = aio.Lock("job:nightly", "redis://localhost:6379", ttl=30, cancel_on_loss=True)
async with lock as lease:
    await do_work(fence=lease.fence)   # cancelled at its next await if the lease is lost
"""

from ._async.lock import AsyncLease as Lease
from ._async.lock import AsyncLock as Lock
from ._async.redis import AsyncRedisBackend as RedisBackend

__all__ = ["Lease", "Lock", "RedisBackend"]
