"""Counted leases (semaphores, read-write locks) at the primitive level, on every backend that has them.

What ``fencelock.backends.base`` promises for ``try_acquire(..., limit, weight)`` and the primitives
that find a lease by its token, checked with no handle in between (as test_primitives.py does for
the mutex). Each test runs on every backend whose test server has the capability ``counted``.
Where a test needs several clients at once it uses processes (a killed process is the one way to
make a holder or a waiter die the same way on every backend), and intervals on ``time.monotonic``,
which all processes of one host share.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

import fencelock
from fencelock._core.params import new_token
from fencelock.backends import open_async_backend, open_backend
from fencelock.backends.base import RW_LIMIT, AsyncBackend, Backend, HolderInfo

CTX = mp.get_context("spawn")
TTL_MS = 30_000
LABEL = "counted-test"
READ, WRITE = 1, RW_LIMIT  # a read-write lock's weights
BOUND = 20.0
"""Generous bound for whatever waits on a death to be noticed (a session timeout, a waiter's
registration): against hangs, not a performance threshold."""


@pytest.fixture
def backend(lock_server: Any) -> Iterator[Backend]:
    b, _ = open_backend(lock_server.url)
    try:
        yield b
    finally:
        b.close()


def take(backend: Backend, name: str, limit: int, weight: int = 1, label: str = LABEL) -> tuple[str, int]:
    """A grant that must succeed now (no queueing)."""
    token = new_token()
    attempt = backend.try_acquire(name, token, TTL_MS, label, False, limit, weight)
    assert attempt.fence is not None, f"{label}: {weight} of {limit} permits must be free"
    return token, attempt.fence


def refused(backend: Backend, name: str, limit: int, weight: int = 1) -> bool:
    """True when one attempt without queueing is refused (and it leaves nothing behind)."""
    token = new_token()
    attempt = backend.try_acquire(name, token, TTL_MS, LABEL, False, limit, weight)
    if attempt.fence is not None:
        backend.release(name, token)
        return False
    return True


def enqueue(backend: Backend, name: str, limit: int, weight: int = 1, label: str = LABEL) -> str:
    """A queued request that must not be granted now."""
    token = new_token()
    attempt = backend.try_acquire(name, token, TTL_MS, label, True, limit, weight)
    assert attempt.fence is None, f"{label}: {weight} of {limit} permits must not be free now"
    return token


def acquire(
    backend: Backend, name: str, token: str, limit: int, weight: int, timeout: float, label: str = LABEL
) -> int | None:
    """The lock handle's loop, by hand: ask, wait, ask again until granted or ``timeout``; abandon
    on the way out when not granted."""
    end = time.monotonic() + timeout
    for _ in range(100_000):  # bounded by the clock below
        attempt = backend.try_acquire(name, token, TTL_MS, label, True, limit, weight)
        if attempt.fence is not None:
            return attempt.fence
        left = end - time.monotonic()
        if left <= 0:
            break
        pause = left if attempt.retry_after is None else min(left, max(attempt.retry_after, 0.001))
        handed = backend.wait(name, token, pause)
        if handed is not None:
            return handed
    backend.abandon(name, token)
    return None


def granted_soon(backend: Backend, name: str, token: str, limit: int, weight: int = 1) -> int:
    """A queued ``token`` that was just let in: ``wait`` hands it over or the next ask grants it."""
    fence = acquire(backend, name, token, limit, weight, 5.0)
    assert fence is not None, "a waiter that fits must be let in"
    return fence


def holder_labels(backend: Backend, name: str) -> list[str]:
    info = backend.inspect(name)
    return [] if info is None else [h.holder for h in info.holders]


# -- the limit, weights -------------------------------------------------------------------------


@pytest.mark.needs("counted")
def test_a_semaphore_grants_up_to_its_limit_and_a_release_frees_one(backend: Backend, name: str) -> None:
    tokens = [take(backend, name, 3, label=f"p{i}")[0] for i in range(3)]
    assert refused(backend, name, 3), "a fourth permit of three"
    assert backend.release(name, tokens[1]) is True
    token, _ = take(backend, name, 3, label="p3")
    assert refused(backend, name, 3)
    for t in (tokens[0], tokens[2], token):
        assert backend.release(name, t) is True
    assert backend.inspect(name) is None


@pytest.mark.needs("counted")
def test_a_writer_excludes_everyone_and_readers_share(backend: Backend, name: str) -> None:
    writer, _ = take(backend, name, RW_LIMIT, WRITE, "writer")
    assert refused(backend, name, RW_LIMIT, READ), "a reader beside a writer"
    assert refused(backend, name, RW_LIMIT, WRITE), "a second writer"
    assert backend.release(name, writer) is True
    readers = [take(backend, name, RW_LIMIT, READ, f"r{i}")[0] for i in range(3)]
    assert refused(backend, name, RW_LIMIT, WRITE), "a writer beside readers"
    assert holder_labels(backend, name) == ["r0", "r1", "r2"]
    for r in readers:
        assert backend.release(name, r) is True
    writer, _ = take(backend, name, RW_LIMIT, WRITE, "writer again")
    assert backend.release(name, writer) is True


def _interval_worker(url: str, name: str, limit: int, weight: int, rounds: int, start: Any, out: Any) -> None:
    backend, _ = open_backend(url)
    records = []
    try:
        start.wait(60)
        for _ in range(rounds):
            token = new_token()
            fence = acquire(backend, name, token, limit, weight, 60.0)
            assert fence is not None
            begin = time.monotonic()
            time.sleep(0.01)
            end = time.monotonic()
            records.append((begin, end, weight, fence))
            assert backend.release(name, token) is True
    finally:
        out.put(records)
        backend.close()


def _max_overlap(records: list[tuple[float, float, int, int]]) -> int:
    """The largest sum of weights held at one moment (an end at the same instant as a start counts
    first: the release was sent before the next grant came back)."""
    events = sorted([(b, 1, w) for b, _, w, _ in records] + [(e, 0, -w) for _, e, w, _ in records])
    held = peak = 0
    for _, _, delta in events:
        held += delta
        peak = max(peak, held)
    return peak


def _run_workers(url: str, name: str, kinds: list[tuple[int, int]], rounds: int) -> list[tuple[float, float, int, int]]:
    start, out = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_interval_worker, args=(url, name, lim, w, rounds, start, out)) for lim, w in kinds]
    for p in procs:
        p.start()
    records: list[tuple[float, float, int, int]] = []
    try:
        start.set()
        for _ in procs:
            records.extend(out.get(timeout=180))
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
    assert len(records) == len(kinds) * rounds, "every worker finished its rounds"
    return records


@pytest.mark.needs("counted")
def test_the_limit_is_never_exceeded_across_processes(lock_server: Any, name: str) -> None:
    limit = 2
    records = _run_workers(lock_server.url, name, [(limit, 1)] * 4, rounds=8)
    assert _max_overlap(records) <= limit, "more permits held at once than the limit"
    assert _max_overlap(records) == limit, "the permits were never used together: a semaphore is not a mutex"
    fences = [f for *_, f in records]
    assert len(set(fences)) == len(fences), "every grant has its own fence"


@pytest.mark.needs("counted")
def test_writers_hold_alone_and_readers_together_across_processes(lock_server: Any, name: str) -> None:
    kinds = [(RW_LIMIT, READ)] * 3 + [(RW_LIMIT, WRITE)] * 2
    records = _run_workers(lock_server.url, name, kinds, rounds=6)
    assert _max_overlap(records) <= RW_LIMIT, "a writer held beside someone"
    readers = [r for r in records if r[2] == READ]
    assert _max_overlap(readers) > 1, "readers never shared the lock"


# -- first come, first served ---------------------------------------------------------------------


@pytest.mark.needs("counted")
def test_a_reader_behind_a_waiting_writer_waits_and_the_writers_release_admits_every_reader(
    backend: Backend, name: str
) -> None:
    r0, f0 = take(backend, name, RW_LIMIT, READ, "r0")
    writer = enqueue(backend, name, RW_LIMIT, WRITE, "writer")
    r1 = enqueue(backend, name, RW_LIMIT, READ, "r1")  # only readers hold, but a writer waits first
    assert holder_labels(backend, name) == ["r0"]
    assert backend.release(name, r0) is True
    fw = granted_soon(backend, name, writer, RW_LIMIT, WRITE)
    assert holder_labels(backend, name) == ["writer"]
    r2 = enqueue(backend, name, RW_LIMIT, READ, "r2")
    r3 = enqueue(backend, name, RW_LIMIT, READ, "r3")
    assert backend.release(name, writer) is True
    # no other release in between: the writer's alone lets all three readers in
    fences = [granted_soon(backend, name, r, RW_LIMIT, READ) for r in (r1, r2, r3)]
    assert holder_labels(backend, name) == ["r1", "r2", "r3"]
    assert f0 < fw < fences[0] < fences[1] < fences[2], "fences grow in grant order, queue order among the readers"
    for r in (r1, r2, r3):
        assert backend.release(name, r) is True


@pytest.mark.needs("counted")
def test_semaphore_waiters_are_served_in_arrival_order(backend: Backend, name: str) -> None:
    holders = [take(backend, name, 2, label=f"h{i}")[0] for i in range(2)]
    waiters = [enqueue(backend, name, 2, label=f"w{i}") for i in range(3)]
    assert backend.release(name, holders[0]) is True
    granted_soon(backend, name, waiters[0], 2)
    assert backend.try_acquire(name, waiters[1], TTL_MS, "w1", True, 2, 1).fence is None, "w1 got in before a release"
    assert backend.try_acquire(name, waiters[2], TTL_MS, "w2", True, 2, 1).fence is None
    assert backend.release(name, holders[1]) is True
    granted_soon(backend, name, waiters[1], 2)
    assert backend.try_acquire(name, waiters[2], TTL_MS, "w2", True, 2, 1).fence is None, "w2 overtook w1"
    assert holder_labels(backend, name) == ["w0", "w1"]
    for t in waiters[:2]:
        assert backend.release(name, t) is True
    granted_soon(backend, name, waiters[2], 2)
    assert backend.release(name, waiters[2]) is True


@pytest.mark.needs("counted")
def test_a_light_request_never_overtakes_a_heavier_waiter(backend: Backend, name: str) -> None:
    holder, _ = take(backend, name, 3, label="holder")
    heavy = enqueue(backend, name, 3, 3, "heavy")  # needs all three permits: waits for the holder
    assert refused(backend, name, 3, 1), "one free permit, but a waiter came first"
    light = enqueue(backend, name, 3, 1, "light")
    assert backend.release(name, holder) is True
    granted_soon(backend, name, heavy, 3, 3)
    assert backend.try_acquire(name, light, TTL_MS, "light", True, 3, 1).fence is None, "beside all three permits"
    assert backend.release(name, heavy) is True
    granted_soon(backend, name, light, 3, 1)
    assert backend.release(name, light) is True


# -- the limit binds while the name is in use ------------------------------------------------------


@pytest.mark.needs("counted")
def test_limit_mismatch_both_ways_changes_nothing(backend: Backend, name: str) -> None:
    sem, fence = take(backend, name, 3, label="sem")
    for limit, weight in ((1, 1), (5, 1), (RW_LIMIT, READ)):
        for queue in (False, True):
            with pytest.raises(fencelock.LimitMismatch) as err:
                backend.try_acquire(name, new_token(), TTL_MS, LABEL, queue, limit, weight)
            assert (err.value.limit, err.value.current) == (limit, 3)
            assert isinstance(err.value, fencelock.BackendRejected)
    info = backend.inspect(name)
    assert info is not None and info.limit == 3 and [h.fence for h in info.holders] == [fence]
    assert not info.waiters, "a refused request is not left waiting"
    other, _ = take(backend, name, 3, label="same limit")  # the right limit still works
    assert backend.release(name, other) is True
    assert backend.release(name, sem) is True
    assert backend.inspect(name) is None, "nothing of the refused requests stayed behind"

    mutex, _ = take(backend, name, 1, label="mutex")
    with pytest.raises(fencelock.LimitMismatch) as err:
        backend.try_acquire(name, new_token(), TTL_MS, LABEL, True, 3, 1)
    assert (err.value.limit, err.value.current) == (3, 1)
    assert backend.release(name, mutex) is True


@pytest.mark.needs("counted")
def test_an_idle_name_takes_the_limit_of_its_next_user(backend: Backend, name: str) -> None:
    t3, _ = take(backend, name, 3)
    assert backend.release(name, t3) is True
    tokens = [take(backend, name, 5)[0] for _ in range(5)]
    info = backend.inspect(name)
    assert info is not None and info.limit == 5 and len(info.holders) == 5
    for t in tokens:
        assert backend.release(name, t) is True
    mutex, _ = take(backend, name, 1)
    info = backend.inspect(name)
    assert info is not None and info.limit == 1
    assert backend.release(name, mutex) is True


# -- fences ---------------------------------------------------------------------------------------


@pytest.mark.needs("counted")
def test_fences_are_unique_and_grow_in_grant_order(backend: Backend, name: str) -> None:
    fences = []
    held = []
    for step in range(9):  # permits taken and given back in a shuffled order
        token, fence = take(backend, name, 3, label=f"g{step}")
        fences.append(fence)
        held.append(token)
        if len(held) == 3:
            assert backend.release(name, held.pop(step % 3)) is True
    for token in held:
        assert backend.release(name, token) is True
    assert fences == sorted(set(fences)), fences


@pytest.mark.needs("counted")
def test_a_repeated_request_of_a_holder_answers_its_fence(backend: Backend, name: str) -> None:
    token, fence = take(backend, name, 2)
    again = backend.try_acquire(name, token, TTL_MS, LABEL, True, 2, 1)
    assert again.fence == fence
    info = backend.inspect(name)
    assert info is not None and len(info.holders) == 1, "no second permit for the same token"
    assert backend.release(name, token) is True


# -- extend, release, abandon by token --------------------------------------------------------------


@pytest.mark.needs("counted")
def test_extend_release_and_abandon_find_the_lease_by_token(backend: Backend, name: str) -> None:
    a, fa = take(backend, name, 2, label="a")
    b, fb = take(backend, name, 2, label="b")
    stranger = new_token()
    assert backend.extend(name, a, 60_000) is True
    assert backend.extend(name, stranger, 60_000) is False
    assert backend.release(name, stranger) is False
    assert holder_labels(backend, name) == ["a", "b"], "a stranger changed nothing"
    assert backend.release(name, a) is True
    assert backend.release(name, a) is False, "a second release finds nothing of ours"
    assert backend.extend(name, a, 60_000) is False
    waiter = enqueue(backend, name, 2, 2, "heavy")  # two permits: waits for b
    backend.abandon(name, waiter)
    backend.abandon(name, waiter)
    assert backend.release(name, b) is True
    assert backend.inspect(name) is None, "the abandoned waiter was not let in"
    c, _ = take(backend, name, 2, label="c")
    backend.abandon(name, c)  # a grant whose answer the caller never read
    assert backend.inspect(name) is None, "abandon passes on a grant of its token"
    assert fa < fb


# -- inspect ----------------------------------------------------------------------------------------


@pytest.mark.needs("counted")
def test_inspect_lists_every_holder_oldest_first(backend: Backend, name: str) -> None:
    grants = [take(backend, name, 3, label=label) for label in ("a", "b", "c")]
    waiter = enqueue(backend, name, 3, label="d")
    info = backend.inspect(name)
    assert info is not None
    assert info.limit == 3
    assert [(h.holder, h.fence, h.weight) for h in info.holders] == [
        (label, fence, 1) for label, (_, fence) in zip("abc", grants, strict=True)
    ]
    assert all(isinstance(h, HolderInfo) for h in info.holders)
    assert (info.fence, info.holder) == (grants[-1][1], "c"), "the newest grant"
    assert info.waiters in (None, 1)
    assert all(h.ttl_remaining is None or 0 < h.ttl_remaining <= TTL_MS / 1000 for h in info.holders)
    backend.abandon(name, waiter)
    for token, _ in grants:
        assert backend.release(name, token) is True

    writer, fence = take(backend, name, RW_LIMIT, WRITE, "writer")
    info = backend.inspect(name)
    assert info is not None and info.limit == RW_LIMIT
    assert [(h.holder, h.fence, h.weight) for h in info.holders] == [("writer", fence, WRITE)]
    assert backend.release(name, writer) is True


# -- deaths -----------------------------------------------------------------------------------------


def _dying_client(url: str, name: str, limit: int, ttl_ms: int, hold: bool, out: Any) -> None:
    """Take a permit (``hold``) or queue for one, report, then sleep until killed."""
    backend, _ = open_backend(url)
    attempt = backend.try_acquire(name, new_token(), ttl_ms, "doomed", not hold, limit, 1)
    out.put(attempt.fence)
    time.sleep(120)  # killed long before


def _start_dying(url: str, name: str, limit: int, ttl_ms: int, hold: bool) -> tuple[mp.process.BaseProcess, Any]:
    out = CTX.Queue()
    proc = CTX.Process(target=_dying_client, args=(url, name, limit, ttl_ms, hold, out), daemon=True)
    proc.start()
    return proc, out


def _kill(proc: mp.process.BaseProcess) -> None:
    if proc.pid is not None and proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)


@pytest.mark.needs("counted")
def test_a_killed_holders_permit_is_freed_after_its_ttl(lock_server: Any, backend: Backend, name: str) -> None:
    mine, _ = take(backend, name, 2, label="survivor")
    proc, out = _start_dying(lock_server.url, name, 2, 2_000, hold=True)
    try:
        theirs = out.get(timeout=60)
        assert theirs is not None, "the doomed client got the second permit"
    finally:
        _kill(proc)
    assert refused(backend, name, 2), "its permit is still held right after the kill (its TTL runs)"
    token = new_token()
    fence = acquire(backend, name, token, 2, 1, 2.0 + BOUND)
    assert fence is not None and fence > theirs, "the killed holder's permit comes back"
    assert backend.release(name, token) is True
    assert backend.release(name, mine) is True


@pytest.mark.needs("counted")
def test_dead_waiters_are_skipped(lock_server: Any, backend: Backend, name: str) -> None:
    holders = [take(backend, name, 2, label=f"h{i}")[0] for i in range(2)]
    dying = [_start_dying(lock_server.url, name, 2, TTL_MS, hold=False) for _ in range(3)]
    try:
        for _, out in dying:
            assert out.get(timeout=60) is None, "the doomed clients queued"
    finally:
        for proc, _ in dying:
            _kill(proc)
    live = enqueue(backend, name, 2, label="live")
    assert backend.release(name, holders[0]) is True
    fence = acquire(backend, name, live, 2, 1, BOUND)
    assert fence is not None, "the live waiter behind dead ones must get the freed permit"
    assert "doomed" not in holder_labels(backend, name)
    assert backend.release(name, live) is True
    assert backend.release(name, holders[1]) is True


# -- asyncio ----------------------------------------------------------------------------------------


async def _async_granted(b: AsyncBackend, name: str, token: str, limit: int, weight: int, timeout: float) -> int:
    end = time.monotonic() + timeout
    for _ in range(100_000):
        attempt = await b.try_acquire(name, token, TTL_MS, LABEL, True, limit, weight)
        if attempt.fence is not None:
            return attempt.fence
        left = end - time.monotonic()
        assert left > 0, "not let in"
        pause = left if attempt.retry_after is None else min(left, max(attempt.retry_after, 0.001))
        handed = await b.wait(name, token, pause)
        if handed is not None:
            return handed
    raise AssertionError("not let in")


@pytest.mark.needs("counted")
async def test_the_asyncio_primitives_keep_the_counted_promises(lock_server: Any, name: str) -> None:
    b: AsyncBackend
    b, _ = open_async_backend(lock_server.url)
    try:
        writer = new_token()
        fw = (await b.try_acquire(name, writer, TTL_MS, LABEL, False, RW_LIMIT, WRITE)).fence
        assert fw is not None
        readers = [new_token() for _ in range(3)]
        for r in readers:
            assert (await b.try_acquire(name, r, TTL_MS, LABEL, True, RW_LIMIT, READ)).fence is None
        with pytest.raises(fencelock.LimitMismatch):
            await b.try_acquire(name, new_token(), TTL_MS, LABEL, True, 2, 1)
        # a cancelled wait leaves its waiter queued, and its abandon leaves nothing behind
        task = asyncio.create_task(b.wait(name, readers[2], 5))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await b.abandon(name, readers[2])
        waits = [asyncio.create_task(_async_granted(b, name, r, RW_LIMIT, READ, 10)) for r in readers[:2]]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waits)
        assert await b.release(name, writer) is True
        fences = await asyncio.wait_for(asyncio.gather(*waits), 20)
        assert fw < fences[0] < fences[1]
        info = await b.inspect(name)
        assert info is not None and len(info.holders) == 2 and info.limit == RW_LIMIT
        for r in readers[:2]:
            assert await b.extend(name, r, TTL_MS) is True
            assert await b.release(name, r) is True
        assert await b.inspect(name) is None
    finally:
        await b.aclose()
