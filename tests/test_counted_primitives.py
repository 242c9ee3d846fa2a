"""Counted leases at the primitive level (fencelock.backends.base, "Counted leases"), on every backend
that has them (capability ``counted``): semaphores (``limit`` N, ``weight`` 1) and read-write locks
(``limit`` RW_LIMIT, a writer's ``weight`` RW_LIMIT, a reader's 1), with no handle in between.

Same servers and marks as tests/test_primitives.py. A backend may hand permits over on release (the
waiter's ``wait`` answers the fence) or let the waiter take them at its next ``try_acquire``: the
helpers here accept both, as the contract does.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import fencelock
from fencelock._core.params import new_token
from fencelock.backends import open_async_backend, open_backend
from fencelock.backends.base import RW_LIMIT, AsyncBackend, Backend, LockInfo

pytestmark = pytest.mark.needs("counted")

TTL_MS = 30_000
LABEL = "counted-test"
WAIT = 30.0
"""Generous bound on anything that should happen "soon" (a loaded machine); a guard against hangs."""


@pytest.fixture
def backend(lock_server: Any) -> Iterator[Backend]:
    b, _ = open_backend(lock_server.url)
    try:
        yield b
    finally:
        b.close()


def take(
    backend: Backend, name: str, limit: int, weight: int = 1, label: str = LABEL, ttl_ms: int = TTL_MS
) -> tuple[str, int]:
    """One attempt that must be granted: (token, fence)."""
    token = new_token()
    attempt = backend.try_acquire(name, token, ttl_ms, label, False, limit, weight)
    assert attempt.fence is not None, f"expected a grant of {weight} of {limit}, got {attempt}"
    return token, attempt.fence


def refused(backend: Backend, name: str, limit: int, weight: int = 1, token: str | None = None) -> bool:
    """One attempt without queueing; True when it was not granted (a grant is released again)."""
    token = token or new_token()
    attempt = backend.try_acquire(name, token, TTL_MS, LABEL, False, limit, weight)
    if attempt.fence is not None:
        backend.release(name, token)
        return False
    return True


def queue(backend: Backend, name: str, limit: int, weight: int = 1, label: str = LABEL) -> str:
    """Enqueue a new waiter that is not granted now; its token."""
    token = new_token()
    attempt = backend.try_acquire(name, token, TTL_MS, label, True, limit, weight)
    assert attempt.fence is None, "expected to wait"
    return token


def poll(backend: Backend, name: str, token: str, limit: int, weight: int = 1, wait: float = 0.3) -> int | None:
    """One round of a waiter: a short wait for a handoff, else another attempt. Its fence or None."""
    handed = backend.wait(name, token, wait)
    if handed is not None:
        return handed
    return backend.try_acquire(name, token, TTL_MS, LABEL, True, limit, weight).fence


def obtain(backend: Backend, name: str, token: str, limit: int, weight: int = 1, timeout: float = WAIT) -> int:
    """Poll as a waiter until granted (bounded): the fence."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        fence = poll(backend, name, token, limit, weight)
        if fence is not None:
            return fence
    backend.abandon(name, token)
    raise AssertionError(f"{token[:8]} was not granted {weight} of {limit} within {timeout} s")


def holders(backend: Backend, name: str) -> list[tuple[int, str, int]]:
    info = backend.inspect(name)
    if info is None:
        return []
    return [(h.fence, h.holder, h.weight) for h in info.holders]


# -- the limit --------------------------------------------------------------------------------------


def test_a_semaphore_grants_up_to_its_limit_and_no_more(backend: Backend, name: str) -> None:
    tokens = [take(backend, name, 3)[0] for _ in range(3)]
    assert refused(backend, name, 3), "a fourth permit of three"
    assert backend.release(name, tokens[0]) is True
    fourth, _ = take(backend, name, 3)
    assert refused(backend, name, 3)
    for token in [*tokens[1:], fourth]:
        assert backend.release(name, token) is True
    assert backend.inspect(name) is None


def test_weights_count_against_the_limit(backend: Backend, name: str) -> None:
    heavy, _ = take(backend, name, 5, weight=3)
    light, _ = take(backend, name, 5, weight=2)
    assert refused(backend, name, 5, weight=1), "3 + 2 of 5 are taken"
    assert backend.release(name, light) is True
    assert refused(backend, name, 5, weight=3), "3 + 3 > 5"
    two, _ = take(backend, name, 5, weight=2)
    for token in (heavy, two):
        assert backend.release(name, token) is True


def test_a_writer_excludes_everyone_and_readers_share(backend: Backend, name: str) -> None:
    readers = [take(backend, name, RW_LIMIT, 1)[0] for _ in range(5)]
    assert refused(backend, name, RW_LIMIT, RW_LIMIT), "a writer while readers hold"
    for token in readers:
        assert backend.release(name, token) is True
    writer, _ = take(backend, name, RW_LIMIT, RW_LIMIT)
    assert refused(backend, name, RW_LIMIT, 1), "a reader while the writer holds"
    assert refused(backend, name, RW_LIMIT, RW_LIMIT), "a second writer"
    assert backend.release(name, writer) is True
    reader, _ = take(backend, name, RW_LIMIT, 1)
    assert backend.release(name, reader) is True


def test_asking_again_while_holding_answers_the_same_fence(backend: Backend, name: str) -> None:
    token, fence = take(backend, name, 3)
    other, _ = take(backend, name, 3)
    again = backend.try_acquire(name, token, TTL_MS, LABEL, True, 3, 1)
    assert again.fence == fence, "a repeated request must not mint a second fence or take a second permit"
    assert len(holders(backend, name)) == 2
    take(backend, name, 3)  # the third permit is still free: the repeat took none
    for t in (token, other):
        assert backend.release(name, t) is True


WORKER = r"""
import json, sys, time
from fencelock._core.params import new_token
from fencelock.backends import open_backend
url, name, limit, weight, rounds, hold = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), float(sys.argv[6])
backend, _ = open_backend(url)
backend.inspect(name)  # connected and warm
start_at = float(sys.argv[7])  # all workers start together, whenever each process came up
while time.monotonic() < start_at:
    time.sleep(0.005)
spans = []
end = time.monotonic() + 120
for _ in range(rounds):
    token = new_token()
    fence = None
    while fence is None and time.monotonic() < end:
        fence = backend.try_acquire(name, token, 30000, "worker", True, limit, weight).fence
        if fence is None:
            fence = backend.wait(name, token, 0.2)
    if fence is None:
        backend.abandon(name, token)
        break
    start = time.monotonic()  # after the grant: inside the server's holding interval
    time.sleep(hold)
    stop = time.monotonic()   # before the release is sent: inside it too
    assert backend.release(name, token)
    spans.append([start, stop, weight, fence])
backend.close()
print(json.dumps(spans))
"""


def run_workers(url: str, name: str, limit: int, weights: list[int], rounds: int, hold: float) -> list[list[float]]:
    """One process a weight, each taking the name ``rounds`` times; their holding intervals on
    CLOCK_MONOTONIC (one clock for every process of a host)."""
    start_at = time.monotonic() + 3.0 + 0.5 * len(weights)  # CLOCK_MONOTONIC: one clock for the host
    args = [str(limit), "", str(rounds), str(hold), str(start_at)]
    procs = []
    for w in weights:
        args[1] = str(w)
        command = [sys.executable, "-c", WORKER, url, name, *args]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    spans: list[list[float]] = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, err
        got = json.loads(out)
        assert len(got) == rounds, f"a worker finished {len(got)} of {rounds} rounds: {err}"
        spans.extend(got)
    return spans


def max_load(spans: list[list[float]]) -> int:
    """The largest total weight held at one instant."""
    events = sorted([(s[0], s[2]) for s in spans] + [(s[1], -s[2]) for s in spans], key=lambda e: (e[0], e[1]))
    load = peak = 0
    for _, delta in events:
        load += int(delta)
        peak = max(peak, load)
    return peak


def test_many_processes_never_hold_more_than_the_limit(lock_server: Any, name: str) -> None:
    spans = run_workers(lock_server.url, name, 2, [1, 1, 1, 1, 1], rounds=8, hold=0.02)
    assert max_load(spans) <= 2
    assert max_load(spans) == 2, "with five workers the two permits were used at once at some point"
    fences = [s[3] for s in spans]
    assert len(set(fences)) == len(fences), "every grant has its own fence"


def test_many_processes_writers_alone_readers_together(lock_server: Any, name: str) -> None:
    weights = [RW_LIMIT, RW_LIMIT, 1, 1, 1]
    spans = run_workers(lock_server.url, name, RW_LIMIT, weights, rounds=8, hold=0.02)
    assert max_load(spans) <= RW_LIMIT, "a writer overlapped someone"
    readers = [s for s in spans if s[2] == 1]
    assert max_load(readers) >= 2, "readers shared the lock at some point"


# -- FIFO and handoff -------------------------------------------------------------------------------


def test_a_reader_behind_a_waiting_writer_waits(backend: Backend, name: str) -> None:
    reader, _ = take(backend, name, RW_LIMIT, 1)
    writer = queue(backend, name, RW_LIMIT, RW_LIMIT)
    late = new_token()
    assert backend.try_acquire(name, late, TTL_MS, LABEL, True, RW_LIMIT, 1).fence is None, (
        "a reader arriving after a waiting writer must not overtake it (writers would starve)"
    )
    assert backend.release(name, reader) is True
    writer_fence = obtain(backend, name, writer, RW_LIMIT, RW_LIMIT)
    assert poll(backend, name, late, RW_LIMIT) is None, "the writer holds: the reader still waits"
    assert backend.release(name, writer) is True
    late_fence = obtain(backend, name, late, RW_LIMIT)
    assert late_fence > writer_fence
    assert backend.release(name, late) is True


def test_a_writers_release_admits_every_queued_reader(backend: Backend, name: str) -> None:
    writer, writer_fence = take(backend, name, RW_LIMIT, RW_LIMIT)
    readers = [queue(backend, name, RW_LIMIT, 1, label=f"reader-{i}") for i in range(4)]
    assert backend.release(name, writer) is True
    fences = [obtain(backend, name, r, RW_LIMIT) for r in readers]
    assert len(holders(backend, name)) == 4, "all the readers hold at once"
    assert all(f > writer_fence for f in fences) and len(set(fences)) == 4
    assert fences == sorted(fences), "granted in the order they queued"
    for r in readers:
        assert backend.release(name, r) is True


def test_waiters_are_served_in_order_as_permits_free_up(backend: Backend, name: str) -> None:
    held = [take(backend, name, 2)[0] for _ in range(2)]
    first, second = queue(backend, name, 2), queue(backend, name, 2)
    assert refused(backend, name, 2), "a newcomer does not barge past the waiters"
    assert backend.release(name, held[0]) is True
    first_fence = obtain(backend, name, first, 2)
    assert poll(backend, name, second, 2) is None, "one permit freed: only the first waiter gets in"
    assert backend.release(name, held[1]) is True
    assert obtain(backend, name, second, 2) > first_fence
    for t in (first, second):
        assert backend.release(name, t) is True


def test_a_heavy_head_blocks_lighter_waiters_behind_it(backend: Backend, name: str) -> None:
    # FIFO is strict: a waiter that needs more than is free holds up the queue (no overtaking)
    small, _ = take(backend, name, 4, weight=2)
    heavy = queue(backend, name, 4, weight=4)
    light = new_token()
    assert backend.try_acquire(name, light, TTL_MS, LABEL, True, 4, 1).fence is None
    backend.abandon(name, heavy)  # the head leaves: the light waiter behind it fits now
    assert obtain(backend, name, light, 4) > 0
    for t in (small, light):
        assert backend.release(name, t) is True


# -- the limit binds --------------------------------------------------------------------------------


def test_a_semaphore_where_a_mutex_is_held_is_refused(backend: Backend, name: str) -> None:
    token = new_token()
    fence = backend.try_acquire(name, token, TTL_MS, LABEL, False).fence
    assert fence is not None
    with pytest.raises(fencelock.LimitMismatch) as caught:
        backend.try_acquire(name, new_token(), TTL_MS, LABEL, True, 3, 1)
    assert (caught.value.limit, caught.value.current) == (3, 1)
    assert isinstance(caught.value, fencelock.BackendRejected)
    info = backend.inspect(name)
    assert info is not None and info.fence == fence and info.waiters in (0, None), "nothing changed"
    assert backend.release(name, token) is True


def test_a_mutex_where_a_semaphore_is_held_is_refused(backend: Backend, name: str) -> None:
    token, fence = take(backend, name, 3)
    with pytest.raises(fencelock.LimitMismatch) as caught:
        backend.try_acquire(name, new_token(), TTL_MS, LABEL, True)
    assert (caught.value.limit, caught.value.current) == (1, 3)
    with pytest.raises(fencelock.LimitMismatch):
        backend.try_acquire(name, new_token(), TTL_MS, LABEL, True, RW_LIMIT, 1)
    assert holders(backend, name) == [(fence, LABEL, 1)], "nothing changed"
    assert backend.release(name, token) is True


def test_a_semaphore_of_another_limit_is_refused(backend: Backend, name: str) -> None:
    token, _ = take(backend, name, 3)
    with pytest.raises(fencelock.LimitMismatch) as caught:
        backend.try_acquire(name, new_token(), TTL_MS, LABEL, True, 5, 1)
    assert (caught.value.limit, caught.value.current) == (5, 3)
    assert "3" in str(caught.value) and "5" in str(caught.value)
    take(backend, name, 3)  # the limit is still 3, with one more permit
    assert len(holders(backend, name)) == 2
    assert backend.release(name, token) is True


def test_waiters_bind_the_limit_too(backend: Backend, name: str) -> None:
    # The only holder's lease runs out while a waiter is still queued (and alive): the name is in use
    # by that waiter, so another limit is still refused.
    take(backend, name, 2, weight=2, ttl_ms=300)
    waiter = queue(backend, name, 2)
    time.sleep(0.5)
    with pytest.raises(fencelock.LimitMismatch) as caught:
        backend.try_acquire(name, new_token(), TTL_MS, LABEL, True, 4, 1)
    assert caught.value.current == 2
    with pytest.raises(fencelock.LimitMismatch):
        backend.try_acquire(name, new_token(), TTL_MS, LABEL, True)
    obtain(backend, name, waiter, 2)
    assert backend.release(name, waiter) is True


def test_an_idle_name_takes_the_limit_of_its_next_user(backend: Backend, name: str) -> None:
    tokens = [take(backend, name, 3)[0] for _ in range(3)]
    for token in tokens:
        assert backend.release(name, token) is True
    tokens = [take(backend, name, 5)[0] for _ in range(5)]
    assert refused(backend, name, 5), "five permits now, not six"
    info = backend.inspect(name)
    assert info is not None and info.limit == 5 and len(info.holders) == 5
    with pytest.raises(fencelock.LimitMismatch):
        backend.try_acquire(name, new_token(), TTL_MS, LABEL, False, 3, 1)
    for token in tokens:
        assert backend.release(name, token) is True


def test_mutex_and_counted_uses_may_follow_each_other(backend: Backend, name: str) -> None:
    fences = []
    for limit, weight in [(1, 1), (3, 1), (1, 1), (RW_LIMIT, RW_LIMIT), (RW_LIMIT, 1), (1, 1)]:
        token = new_token()
        attempt = backend.try_acquire(name, token, TTL_MS, LABEL, False, limit, weight)
        assert attempt.fence is not None, f"limit {limit} on an idle name"
        fences.append(attempt.fence)
        assert backend.release(name, token) is True
        assert backend.inspect(name) is None
    assert fences == sorted(set(fences)), "one fence counter for every kind of use"


# -- fences, extend, release, abandon, inspect -----------------------------------------------------


def test_every_grant_mints_a_higher_fence_whatever_its_weight(backend: Backend, name: str) -> None:
    fences = []
    held = []
    for weight in (1, 2, 1):
        token, fence = take(backend, name, 4, weight)
        fences.append(fence)
        held.append(token)
    waiter = queue(backend, name, 4, weight=3)
    for token in held:
        assert backend.release(name, token) is True
    fences.append(obtain(backend, name, waiter, 4, 3))
    assert backend.release(name, waiter) is True
    token, fence = take(backend, name, 4, 4)
    fences.append(fence)
    assert backend.release(name, token) is True
    assert fences == sorted(set(fences)), f"strictly increasing in grant order: {fences}"


def test_extend_and_release_find_a_lease_by_its_token(backend: Backend, name: str) -> None:
    a, _ = take(backend, name, 3, ttl_ms=5_000)
    b, fb = take(backend, name, 3, ttl_ms=5_000)
    stranger = new_token()
    assert backend.extend(name, stranger, TTL_MS) is False
    assert backend.release(name, stranger) is False
    assert backend.extend(name, b, 60_000) is True
    by_fence = {h.fence: h for h in backend.inspect(name).holders}  # type: ignore[union-attr]
    ttl = by_fence[fb].ttl_remaining
    assert ttl is not None and ttl > 30, "extended to 60 s from now"
    assert backend.release(name, a) is True
    assert backend.release(name, a) is False, "a second release finds nothing of ours"
    assert backend.extend(name, a, TTL_MS) is False, "nor does an extend after it"
    assert [h[0] for h in holders(backend, name)] == [fb]
    assert backend.release(name, b) is True
    assert backend.inspect(name) is None


def test_abandon_leaves_the_queue_or_passes_the_permits_on(backend: Backend, name: str) -> None:
    holder, _ = take(backend, name, 2, weight=2)
    waiter = queue(backend, name, 2)
    backend.abandon(name, waiter)
    backend.abandon(name, waiter)  # idempotent
    backend.abandon(name, new_token())  # a stranger's abandon changes nothing
    assert len(holders(backend, name)) == 1
    backend.abandon(name, holder)  # a grant whose answer was never read: passed on
    assert backend.inspect(name) is None
    newcomer, _ = take(backend, name, 2, weight=2)  # the abandoned waiter was not handed anything
    assert backend.release(name, newcomer) is True


def test_inspect_lists_every_holder_oldest_grant_first(backend: Backend, name: str) -> None:
    assert backend.inspect(name) is None
    grants = [take(backend, name, 10, w, label=f"holder-{w}") for w in (3, 1, 2)]
    waiter = queue(backend, name, 10, weight=5)
    info = backend.inspect(name)
    assert isinstance(info, LockInfo)
    assert info.limit == 10
    assert [(h.fence, h.holder, h.weight) for h in info.holders] == [
        (grants[0][1], "holder-3", 3), (grants[1][1], "holder-1", 1), (grants[2][1], "holder-2", 2),
    ]  # fmt: skip
    assert all(h.ttl_remaining is None or 0 < h.ttl_remaining <= TTL_MS / 1000 for h in info.holders)
    assert (info.fence, info.holder) == (grants[2][1], "holder-2"), "the newest grant"
    assert info.waiters in (1, None)
    backend.abandon(name, waiter)
    for token, _ in grants:
        assert backend.release(name, token) is True
    assert backend.inspect(name) is None


def test_a_mutex_inspect_says_limit_one(backend: Backend, name: str) -> None:
    token = new_token()
    fence = backend.try_acquire(name, token, TTL_MS, LABEL, False).fence
    info = backend.inspect(name)
    assert info is not None and info.limit == 1 and info.fence == fence
    assert [h.fence for h in info.holders] in ([], [fence])
    assert backend.release(name, token) is True


def test_bad_limits_and_weights_are_refused_before_any_io(backend: Backend, name: str) -> None:
    for limit, weight in [(0, 1), (3, 0), (3, 4), (1, 2), (RW_LIMIT + 1, 1), (-1, 1)]:
        with pytest.raises(fencelock.ConfigurationError):
            backend.try_acquire(name, new_token(), TTL_MS, LABEL, False, limit, weight)
    assert backend.inspect(name) is None


# -- dead clients -----------------------------------------------------------------------------------

HOLDER = r"""
import sys, time
from fencelock._core.params import new_token
from fencelock.backends import open_backend
url, name, limit, weight, ttl, queue = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
backend, _ = open_backend(url)
attempt = backend.try_acquire(name, new_token(), ttl, "doomed", bool(queue), limit, weight)
print("granted" if attempt.fence is not None else "queued", flush=True)
time.sleep(600)
"""


def start_doomed(url: str, name: str, limit: int, weight: int, ttl_ms: int, queue: bool) -> subprocess.Popen[str]:
    """A process that takes (or queues for) permits and then hangs until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, name, str(limit), str(weight), str(ttl_ms), str(int(queue))],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line in ("granted", "queued"), line
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_a_killed_holders_permits_come_back_after_its_ttl(lock_server: Any, backend: Backend, name: str) -> None:
    doomed = start_doomed(lock_server.url, name, 2, 1, 3000, queue=False)
    try:
        kill(doomed)
        mine, _ = take(backend, name, 2)
        assert refused(backend, name, 2), "the killed holder's permit still counts before its TTL"
        waiter = new_token()
        fence = obtain(backend, name, waiter, 2)
        assert fence > 0
        assert len(holders(backend, name)) == 2, "just us two: the dead holder is gone"
        for t in (mine, waiter):
            assert backend.release(name, t) is True
    finally:
        if doomed.poll() is None:
            kill(doomed)


DEAD_AFTER = 5.0
"""Seconds a waiter stays silent before every backend counts it as gone (Redis: 2 s without a poll)."""


def test_a_dead_waiter_is_skipped(lock_server: Any, backend: Backend, name: str) -> None:
    holder, _ = take(backend, name, 2, weight=2)
    # the dead waiter wants everything for a minute: were it granted, the live one could not get in
    doomed = start_doomed(lock_server.url, name, 2, 2, 60_000, queue=True)
    try:
        kill(doomed)  # queued first, then gone without a word
        live = queue(backend, name, 2)
        end = time.monotonic() + DEAD_AFTER
        while time.monotonic() < end:  # the live waiter goes on polling; the dead one is silent
            assert poll(backend, name, live, 2) is None, "the holder still holds everything"
        assert backend.release(name, holder) is True
        obtain(backend, name, live, 2, timeout=20)
        assert [h[1] for h in holders(backend, name)] == [LABEL], "the dead waiter was never granted"
        assert backend.release(name, live) is True
    finally:
        if doomed.poll() is None:
            kill(doomed)


# -- asyncio ----------------------------------------------------------------------------------------


async def test_the_asyncio_counted_primitives_keep_the_same_promises(lock_server: Any, name: str) -> None:
    b: AsyncBackend
    b, _ = open_async_backend(lock_server.url)
    try:
        w = new_token()
        writer = await b.try_acquire(name, w, TTL_MS, LABEL, False, RW_LIMIT, RW_LIMIT)
        assert writer.fence is not None
        readers = [new_token() for _ in range(3)]
        for r in readers:
            assert (await b.try_acquire(name, r, TTL_MS, LABEL, True, RW_LIMIT, 1)).fence is None
        with pytest.raises(fencelock.LimitMismatch):
            await b.try_acquire(name, new_token(), TTL_MS, LABEL, False)
        assert await b.extend(name, w, TTL_MS) is True
        assert await b.release(name, w) is True
        fences = []
        for r in readers:
            end = time.monotonic() + WAIT
            fence = None
            while fence is None and time.monotonic() < end:
                fence = await b.wait(name, r, 0.3)
                if fence is None:
                    fence = (await b.try_acquire(name, r, TTL_MS, LABEL, True, RW_LIMIT, 1)).fence
            assert fence is not None and fence > writer.fence
            fences.append(fence)
        info = await b.inspect(name)
        assert info is not None and sorted(h.fence for h in info.holders) == sorted(fences)
        waiter = new_token()
        assert (await b.try_acquire(name, waiter, TTL_MS, LABEL, True, RW_LIMIT, RW_LIMIT)).fence is None
        task = asyncio.create_task(b.wait(name, waiter, 5))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await b.abandon(name, waiter)
        for r in readers:
            assert await b.release(name, r) is True
        assert await b.inspect(name) is None
    finally:
        await b.aclose()
