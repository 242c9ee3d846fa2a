"""Optional OpenTelemetry instruments: a no-op unless ``opentelemetry-api`` is installed.

Only the API package is used (never the SDK): the application decides where metrics go. Every
record carries the lock name and the outcome; never the token.
"""

from __future__ import annotations

from typing import Any

__all__ = ["instruments"]


class _Instruments:
    def __init__(self) -> None:
        self._acquire: Any = None
        self._renew: Any = None
        self._lost: Any = None
        self._stale: Any = None
        try:
            from opentelemetry import metrics
        except ImportError:  # the API package is optional
            return
        meter = metrics.get_meter("fencelock")
        self._acquire = meter.create_histogram(
            "fencelock.acquire.duration", unit="s", description="time from acquire() to outcome"
        )
        self._renew = meter.create_counter("fencelock.renewals", description="lease renewals by outcome")
        self._lost = meter.create_counter("fencelock.leases.lost", description="leases lost while held")
        self._stale = meter.create_counter(
            "fencelock.fencing.rejected", description="writes refused by the storage for a stale fence"
        )

    def acquired(self, name: str, outcome: str, seconds: float) -> None:
        if self._acquire is not None:
            self._acquire.record(seconds, {"lock.name": name, "outcome": outcome})

    def renewed(self, name: str, outcome: str) -> None:
        if self._renew is not None:
            self._renew.add(1, {"lock.name": name, "outcome": outcome})

    def lost(self, name: str, reason: str) -> None:
        if self._lost is not None:
            self._lost.add(1, {"lock.name": name})

    def stale_fence(self, resource: str) -> None:
        if self._stale is not None:
            self._stale.add(1, {"resource": resource})


instruments = _Instruments()
