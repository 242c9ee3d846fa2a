"""Key names of one lock: all share one hash tag (Redis Cluster keeps them in one slot), and the
lock name is percent-encoded into it so that any name maps to its own keys and no other's."""

from __future__ import annotations

from ..._errors import ConfigurationError

__all__ = ["RedisKeys", "check_prefix"]


def _tag(name: str) -> str:
    # Percent-encode only what could break the hash tag or the encoding itself: injective, readable.
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class RedisKeys:
    """Key names of one lock (see the package docstring for what each holds).

    The mutex's hot scripts (ACQUIRE, RELEASE, EXTEND) receive only ``lock`` and ABANDON ``all4()``;
    they derive the other keys from the lock key by the same suffixes (``counted_keys`` in
    scripts.py): a shorter EVALSHA keeps the mutex's client time down, and a derived key has the
    same hash tag, so the same slot."""

    __slots__ = ("alive", "calive", "cqueue", "fence", "holders", "leases", "lock", "permits", "queue")

    def __init__(self, prefix: str, name: str) -> None:
        base = f"{prefix}{{{_tag(name)}}}:"
        self.lock = base + "lock"
        self.fence = base + "fence"
        self.queue = base + "queue"
        self.alive = base + "alive"
        # counted leases (semaphores, read-write locks): the suffixes are also spelled in scripts.py
        self.permits = base + "permits"
        self.holders = base + "holders"
        self.leases = base + "leases"
        self.cqueue = base + "cqueue"
        self.calive = base + "calive"

    def all4(self) -> list[str]:
        """The mutex's keys, in the order its scripts take them."""
        return [self.lock, self.fence, self.queue, self.alive]

    def all9(self) -> list[str]:
        """Every key of the name except the wake lists, in the order the counted scripts take them."""
        return [
            self.lock, self.fence, self.queue, self.alive,
            self.permits, self.holders, self.leases, self.cqueue, self.calive,
        ]  # fmt: skip

    def wake(self, token: str) -> str:
        return f"{self.lock}:wake:{token}"


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
        raise ConfigurationError(
            f"key prefix must be a string without braces (they would change the hash tag), got {prefix!r}"
        )
    return prefix
