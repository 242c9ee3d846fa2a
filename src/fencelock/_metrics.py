"""Optional OpenTelemetry instruments: a no-op unless ``opentelemetry-api`` is installed.

Only the API package is used (never the SDK): the application decides where metrics go. Every
record carries the lock name and the outcome; never the token.

Metrics (meter ``fencelock``): ``fencelock.acquire.duration`` (histogram, s; ``outcome`` ok/timeout),
``fencelock.renewals`` (``outcome`` ok/lost/error), ``fencelock.leases.lost``,
``fencelock.fencing.rejected`` (``resource``).

Metrics are recorded only once the application has set a meter provider, and spans made only once
it has set a tracer provider: until then the hot path pays two attribute reads, no wrapper, no
call into the API's proxies.

Spans (tracer ``fencelock``):

- ``fencelock.acquire``: the whole acquire, waiting included (``lock.name``, ``fencelock.outcome``
  ok/timeout, ``fencelock.wait_s``);
- ``fencelock.<backend>.<op>``: one round trip of a backend primitive, ``op`` in try_acquire, wait,
  extend, release (``lock.name``, ``fencelock.outcome``, ``fencelock.fence`` when one was granted);
  a backend error is recorded on the span with status ERROR.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["instruments", "span_outcome", "tracing"]


class _Instruments:
    def __init__(self) -> None:
        self._acquire: Any = None
        self._renew: Any = None
        self._lost: Any = None
        self._stale: Any = None
        self._api: Any = None
        try:
            from opentelemetry import metrics
            from opentelemetry.metrics import _internal as api
        except ImportError:  # the API package is optional
            return
        self._api = api
        if os.environ.get("OTEL_PYTHON_METER_PROVIDER"):
            metrics.get_meter_provider()  # the provider named by the environment is loaded lazily
        meter = metrics.get_meter("fencelock")
        self._acquire = meter.create_histogram(
            "fencelock.acquire.duration", unit="s", description="time from acquire() to outcome"
        )
        self._renew = meter.create_counter("fencelock.renewals", description="lease renewals by outcome")
        self._lost = meter.create_counter("fencelock.leases.lost", description="leases lost while held")
        self._stale = meter.create_counter(
            "fencelock.fencing.rejected", description="writes refused by the storage for a stale fence"
        )

    def active(self) -> bool:
        """True once the application set a meter provider (until then records would be dropped).
        Reads the API's global; if a future API renames it, we always record (correct, a bit slower)."""
        return self._api is not None and getattr(self._api, "_METER_PROVIDER", True) is not None

    def acquired(self, name: str, outcome: str, seconds: float) -> None:
        if self._acquire is not None and self.active():
            self._acquire.record(seconds, {"lock.name": name, "outcome": outcome})
        if tracing.active():
            tracing.finished(
                "fencelock.acquire",
                seconds,
                {"lock.name": name, "fencelock.outcome": outcome, "fencelock.wait_s": seconds},
            )

    def renewed(self, name: str, outcome: str) -> None:
        if self._renew is not None:
            self._renew.add(1, {"lock.name": name, "outcome": outcome})

    def lost(self, name: str, reason: str) -> None:
        if self._lost is not None:
            self._lost.add(1, {"lock.name": name})

    def stale_fence(self, resource: str) -> None:
        if self._stale is not None:
            self._stale.add(1, {"resource": resource})


class _Tracing:
    """The ``fencelock`` tracer, or nothing when the API package is absent."""

    def __init__(self) -> None:
        self._trace: Any = None
        self._tracer: Any = None
        self._kind: Any = None
        try:
            from opentelemetry import trace
        except ImportError:  # the API package is optional
            return
        self._trace = trace
        self._tracer = trace.get_tracer("fencelock")
        self._kind = trace.SpanKind.CLIENT
        if os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"):
            trace.get_tracer_provider()  # the provider named by the environment is loaded lazily

    def active(self) -> bool:
        """True once the application set a tracer provider (until then spans would be discarded).
        Reads the API's global; if a future API renames it, we always trace (correct, a bit slower)."""
        return self._trace is not None and getattr(self._trace, "_TRACER_PROVIDER", True) is not None

    def span(self, name: str, attributes: dict[str, Any]) -> Any:
        return self._tracer.start_as_current_span(
            name, kind=self._kind, attributes=attributes, record_exception=True, set_status_on_exception=True
        )

    def finished(self, name: str, seconds: float, attributes: dict[str, Any]) -> None:
        """A span for something that already happened and took ``seconds``."""
        end = time.time_ns()
        span = self._tracer.start_span(name, attributes=attributes, start_time=end - int(seconds * 1e9))
        span.end(end_time=end)


def span_outcome(span: Any, result: Any) -> None:
    """Record what a backend primitive answered on its span (never the token)."""
    fence = getattr(result, "fence", None)
    if hasattr(result, "fence"):  # an Attempt
        span.set_attribute("fencelock.outcome", "granted" if fence is not None else "busy")
    elif isinstance(result, bool):
        span.set_attribute("fencelock.outcome", "ok" if result else "not_ours")
    if isinstance(fence, int):
        span.set_attribute("fencelock.fence", fence)


tracing = _Tracing()
instruments = _Instruments()
