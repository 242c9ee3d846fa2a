"""Metrics, spans and logs, recorded by the OpenTelemetry SDK's in-memory exporters against a real
redis-server. The token must never show up in any of them."""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from redis.backoff import NoBackoff
from redis.retry import Retry

import fencelock
import fencelock.aio
from fencelock.backends.redis import RedisKeys
from fencelock.embedded import EmbeddedRedis
from srv_tls import free_port, private_dir

WAIT = 60.0


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    """A private server: the log test pauses it."""
    directory = private_dir("obs")
    srv = EmbeddedRedis("/usr/bin/redis-server", directory=directory)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def client(server: EmbeddedRedis) -> Iterator[redis.Redis]:
    c = server.client(socket_timeout=5)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    try:
        yield exporter
    finally:
        processor.shutdown()


@pytest.fixture(scope="module")
def metric_reader() -> InMemoryMetricReader:
    reader = InMemoryMetricReader()
    assert not isinstance(metrics.get_meter_provider(), MeterProvider), "a meter provider was set before us"
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return reader


def spans_of(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if (s.attributes or {}).get("lock.name") == name]


def assert_no_token(found: list[ReadableSpan], *tokens: str) -> None:
    for span in found:
        text = (
            repr(dict(span.attributes or {}))
            + span.name
            + repr([(e.name, dict(e.attributes or {})) for e in span.events])
        )
        for token in tokens:
            assert token not in text, span.name


# -- spans ----------------------------------------------------------------------------------------


def test_spans_around_acquire_extend_release(spans: InMemorySpanExporter, client: redis.Redis, name: str) -> None:
    lock = fencelock.Lock(name, client, ttl=10, renew=False)
    lease = lock.acquire()
    lease.extend()
    lease.release()
    busy = fencelock.Lock(name, client, ttl=10, renew=False).acquire()
    with pytest.raises(fencelock.LockTimeout):
        lock.acquire(timeout=0.05)
    busy.release()

    found = spans_of(spans, name)
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in found:
        by_name.setdefault(span.name, []).append(span)
    first_try = by_name["fencelock.redis.try_acquire"][0]
    assert first_try.attributes is not None
    assert first_try.attributes["fencelock.outcome"] == "granted"
    assert first_try.attributes["fencelock.fence"] == lease.fence
    assert first_try.kind == trace.SpanKind.CLIENT
    assert any((s.attributes or {}).get("fencelock.outcome") == "busy" for s in by_name["fencelock.redis.try_acquire"])
    assert [(s.attributes or {})["fencelock.outcome"] for s in by_name["fencelock.redis.extend"]] == ["ok"]
    assert [(s.attributes or {})["fencelock.outcome"] for s in by_name["fencelock.redis.release"]] == ["ok", "ok"]
    outcomes = sorted((s.attributes or {})["fencelock.outcome"] for s in by_name["fencelock.acquire"])
    assert outcomes == ["ok", "ok", "timeout"]
    timed_out = next(s for s in by_name["fencelock.acquire"] if (s.attributes or {})["fencelock.outcome"] == "timeout")
    assert timed_out.end_time is not None and timed_out.start_time is not None
    assert timed_out.end_time - timed_out.start_time >= 0.05 * 1e9 * 0.99, "covers the whole wait"
    assert_no_token(found, lease.token, busy.token)


def test_a_backend_error_is_recorded_on_its_span(spans: InMemorySpanExporter, name: str) -> None:
    lock = fencelock.Lock(name, f"redis://127.0.0.1:{free_port()}", ttl=5)
    try:
        with pytest.raises(fencelock.BackendUnavailable):
            lock.acquire(timeout=0)
    finally:
        lock.close()
    (span,) = [s for s in spans_of(spans, name) if s.name == "fencelock.redis.try_acquire"]
    assert span.status.status_code == StatusCode.ERROR
    assert any(
        e.name == "exception" and "BackendUnavailable" in str((e.attributes or {}).get("exception.type"))
        for e in span.events
    )


async def test_spans_from_the_asyncio_api(spans: InMemorySpanExporter, server: EmbeddedRedis, name: str) -> None:
    client = aioredis.Redis(unix_socket_path=str(server.socket), socket_timeout=5)
    try:
        async with fencelock.aio.Lock(name, client, ttl=10, renew=False) as lease:
            await lease.extend()
    finally:
        await client.aclose()
    names = [s.name for s in spans_of(spans, name)]
    for op in ("try_acquire", "extend", "release"):
        assert f"fencelock.redis.{op}" in names
    try_span = next(s for s in spans_of(spans, name) if s.name == "fencelock.redis.try_acquire")
    assert (try_span.attributes or {})["fencelock.fence"] == lease.fence
    assert_no_token(spans_of(spans, name), lease.token)


# -- metrics --------------------------------------------------------------------------------------


def points(reader: InMemoryMetricReader, metric: str, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    found = []
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == metric:
                    found += [p for p in m.data.data_points if p.attributes.get("lock.name") == name]
    return found


def test_metrics_for_acquire_renew_and_loss(
    metric_reader: InMemoryMetricReader, client: redis.Redis, name: str
) -> None:
    lock = fencelock.Lock(name, client, ttl=0.6)
    lease = lock.acquire()
    with pytest.raises(fencelock.LockTimeout):
        fencelock.Lock(name, client).acquire(timeout=0.01)
    end = time.monotonic() + WAIT
    while not any(p.attributes.get("outcome") == "ok" for p in points(metric_reader, "fencelock.renewals", name)):
        assert time.monotonic() < end, "no renewal recorded"
        time.sleep(0.02)
    client.delete(RedisKeys("fencelock:", name).lock)
    assert lease.wait_lost(WAIT)

    acquired = {p.attributes["outcome"]: p.count for p in points(metric_reader, "fencelock.acquire.duration", name)}
    assert acquired == {"ok": 1, "timeout": 1}
    renewals = {p.attributes["outcome"]: p.value for p in points(metric_reader, "fencelock.renewals", name)}
    assert renewals["ok"] >= 1 and renewals["lost"] == 1
    assert [p.value for p in points(metric_reader, "fencelock.leases.lost", name)] == [1]
    with pytest.raises(fencelock.LeaseLost):
        lease.release()


# -- logs -----------------------------------------------------------------------------------------


def test_log_records_carry_name_and_fence_and_never_the_token(
    server: EmbeddedRedis, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """acquire, renew, a renewal that fails (server paused), a lease lost by TTL, a lease lost by
    a deleted key, release: every record names the lock and its fence; no record shows a token."""
    caplog.set_level(logging.DEBUG, logger="fencelock")
    # No client-side retries, short timeouts: while the server is paused each renewal fails fast.
    client = server.client(socket_timeout=0.05, socket_connect_timeout=0.05, retry=Retry(NoBackoff(), 0))
    tokens: list[str] = []
    fences: list[int] = []
    try:
        lost = threading.Event()
        lock = fencelock.Lock(name, client, ttl=1.0, label="obs-holder", on_lost=lambda lease: lost.set())
        lease = lock.acquire()
        tokens.append(lease.token)
        fences.append(lease.fence)
        first_deadline = lease.deadline
        end = time.monotonic() + WAIT
        while lease.deadline == first_deadline:  # renewed at least once
            assert time.monotonic() < end and not lease.lost
            time.sleep(0.01)

        # Renewals now fail; one is due (every ttl/3) before the lease runs out on the client.
        server.pause()
        try:
            assert lost.wait(WAIT)
        finally:
            server.resume()
        # deletes the key if the server has not expired it yet; with this client's 50 ms socket
        # timeout a loaded machine may not hear back: then the lease's TTL frees it, as designed
        with contextlib.suppress(fencelock.LeaseLost, fencelock.BackendUnavailable):
            lease.release()

        second = fencelock.Lock(name, client, ttl=0.6, label="obs-holder").acquire(timeout=WAIT)
        tokens.append(second.token)
        fences.append(second.fence)
        client.delete(RedisKeys("fencelock:", name).lock)
        assert second.wait_lost(WAIT)

        with fencelock.Lock(name, client, ttl=5, label="obs-holder") as third:
            tokens.append(third.token)
            fences.append(third.fence)
    finally:
        client.close()

    records = [r for r in caplog.records if r.name.startswith("fencelock")]
    messages = [r.getMessage() for r in records]
    assert any("acquired" in m for m in messages)
    assert any("renewing" in m and "failed" in m for m in messages), "the failed renewal was logged"
    assert sum("lost" in m for m in messages) >= 2, "both losses were logged"
    assert any("released" in m for m in messages)
    for record, message in zip(records, messages, strict=True):
        everything = message + repr(record.args) + repr(record.__dict__) + (record.exc_text or "")
        for token in tokens:
            assert token not in everything, f"token leaked in {message!r}"
        assert repr(name) in message, message
        assert any(f"fence={f}" in message for f in fences), message
    assert messages and all("holder=obs-holder" in m for m in messages), "every record names the holder"
