"""Small value types shared by the asyncio and the blocking API (defined once: the generated twins
must return the same classes)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Leader"]


@dataclass(frozen=True, slots=True)
class Leader:
    """Who leads an election: the leader's ``value`` and its ``term`` (the fence of its lease)."""

    value: str
    term: int
