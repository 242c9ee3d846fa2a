"""Key names of one lock: all share one hash tag (Redis Cluster keeps them in one slot), and the
lock name is percent-encoded into it so that any name maps to its own keys and no other's."""

from __future__ import annotations

from ..._errors import ConfigurationError

__all__ = ["RedisKeys", "check_prefix"]


def _tag(name: str) -> str:
    # Percent-encode only what could break the hash tag or the encoding itself: injective, readable.
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class RedisKeys:
    """Key names of one lock (see the module docstring)."""

    __slots__ = ("alive", "fence", "lock", "queue")

    def __init__(self, prefix: str, name: str) -> None:
        base = f"{prefix}{{{_tag(name)}}}:"
        self.lock = base + "lock"
        self.fence = base + "fence"
        self.queue = base + "queue"
        self.alive = base + "alive"

    def all4(self) -> list[str]:
        return [self.lock, self.fence, self.queue, self.alive]

    def wake(self, token: str) -> str:
        return f"{self.lock}:wake:{token}"


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
        raise ConfigurationError(
            f"key prefix must be a string without braces (they would change the hash tag), got {prefix!r}"
        )
    return prefix
