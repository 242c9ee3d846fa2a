"""Why checking the lease is not enough, shown with the real consumer.

Consumer A takes the file's lock (TTL 0.5 s, no renewal), passes ``lease.ensure_held()``, and
"pauses" before its write (``--pause-before-write``: a GC pause, a swapped-out process...). Its
lease runs out; consumer B takes the lock with a higher fence, ingests the file and archives it.
Then A wakes up and writes, with its old fence:

- with fencing, the database refuses A's write (StaleFence): the ledger still names B;
- without fencing, A's stale write is applied: the ledger now says fence A ingested the file after
  fence B did. (The rows survive only because inserts are idempotent by TransactionId; any
  non-idempotent write, an update or a counter, would be corrupted.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fencelock.embedded import EmbeddedRedis
from fencelock_demo.producer import ProducerConfig, produce
from test_demo_e2e import finish, history, ledger, manifest, per_file, start_consumer, wait_history

pytestmark = pytest.mark.slow  # real processes and servers: seconds each


def _paused_holder(tmp_path: Path, lock: str, fencing: bool) -> tuple[list[dict[str, object]], str, str, str]:
    share, hist, db = tmp_path / "share", tmp_path / "h.jsonl", f"sqlite:///{tmp_path / 'f.db'}"
    produce(ProducerConfig(share, files=1, lines=300, seed=5, manifest=tmp_path / "m.jsonl"))
    flag = "--fencing" if fencing else "--no-fencing"
    a = start_consumer(share, lock, db, "A", hist, flag, "--ttl", "0.5", "--no-renew", "--pause-before-write", "6",
                       "--max-files", "1")
    try:
        wait_history(hist, lambda e: e["proc"] == "A" and e["op"] == "acquire" and e["type"] == "ok", "A's lock")
        b = start_consumer(share, lock, db, "B", hist, flag, "--idle-exit", "0.5")
        code_b, out_b = finish(b)
    finally:
        code_a, out_a = finish(a)
    assert code_b == 0, out_b
    assert code_a == 0, out_a
    events = history(hist)
    name = manifest(tmp_path / "m.jsonl")[0]["file"]
    return events, name, db, out_a


def _write(events: list[dict[str, object]], proc: str, kind: str) -> dict[str, object]:
    found = [e for e in events if e["proc"] == proc and e["op"] == "write" and e["type"] == kind]
    assert len(found) == 1, (proc, kind, events)
    return found[0]


def test_paused_holder_is_refused_by_the_fence(tmp_path: Path, valkey: EmbeddedRedis) -> None:
    events, name, db, out_a = _paused_holder(tmp_path, valkey.url, fencing=True)
    b_ok = _write(events, "B", "ok")
    a_fail = _write(events, "A", "fail")
    assert isinstance(a_fail["fence"], int) and isinstance(b_ok["fence"], int)
    assert a_fail["fence"] < b_ok["fence"]
    assert int(str(a_fail["t"])) > int(str(b_ok["t"]))  # A wrote after B had committed
    assert str(a_fail["error"]).startswith("StaleFence")
    assert any(e["proc"] == "A" and e["op"] == "lease-lost" for e in events)  # A was told, too late
    led = ledger(db, name)
    assert led is not None and led[1] == b_ok["fence"] and led[2] == "B"
    assert list(per_file(db)) == [name]
    assert "1 stale-fence refusal," in out_a


def test_without_fencing_the_paused_holders_stale_write_is_applied(tmp_path: Path, valkey: EmbeddedRedis) -> None:
    events, name, db, _ = _paused_holder(tmp_path, valkey.url, fencing=False)
    b_ok = _write(events, "B", "ok")
    a_ok = _write(events, "A", "ok")
    assert isinstance(a_ok["fence"], int) and isinstance(b_ok["fence"], int)
    assert a_ok["fence"] < b_ok["fence"] and int(str(a_ok["t"])) > int(str(b_ok["t"]))
    led = ledger(db, name)
    assert led is not None and led[1] == a_ok["fence"] and led[2] == "A"  # the older holder overwrote


def test_renewal_keeps_a_slow_holder_and_each_renewal_is_in_the_history(tmp_path: Path, valkey: EmbeddedRedis) -> None:
    """The same pause with renewal on: the lease is extended meanwhile (renew invoke/ok lines with the
    lease's fence), so the write is admitted and nothing is lost."""
    share, hist, db = tmp_path / "share", tmp_path / "h.jsonl", f"sqlite:///{tmp_path / 'r.db'}"
    produce(ProducerConfig(share, files=1, lines=200, seed=6, manifest=tmp_path / "m.jsonl"))
    code, out = finish(start_consumer(share, valkey.url, db, "slow", hist, "--ttl", "0.6", "--renew",
                                      "--pause-before-write", "1.5", "--max-files", "1"))
    assert code == 0, out
    events = history(hist)
    fence = next(e["fence"] for e in events if e["op"] == "acquire" and e["type"] == "ok")
    renewals = [e for e in events if e["op"] == "renew" and e["type"] == "ok"]
    assert renewals and all(e["fence"] == fence for e in renewals)
    assert not [e for e in events if e["op"] == "lease-lost"]
    assert _write(events, "slow", "ok")["rows"] == 200
    assert list(per_file(db).values()) == [(200, manifest(tmp_path / "m.jsonl")[0]["amount_cents"])]


def _open_store(path: str, go: object, results: object) -> None:
    from fencelock_demo.store import SqliteStore

    go.wait()  # type: ignore[attr-defined]
    try:
        store = SqliteStore(path)
        store.setup()
        store.close()
        results.put("ok")  # type: ignore[attr-defined]
    except Exception as err:  # reported to the parent, which asserts
        results.put(f"{type(err).__name__}: {err}")  # type: ignore[attr-defined]


def test_many_consumers_opening_a_new_sqlite_store_at_once_all_start(tmp_path: Path) -> None:
    """Found by CI (test_many_consumers_sqlite_valkey): consumers starting together on a new file
    raced to switch it to WAL, and SQLite failed one of them at once with "database is locked"
    (its busy handler is not used for that). Rounds of 4 processes opening a fresh file from one
    start signal; before the fix 2 runs of 3 with 40 rounds failed (about one round in 40)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # the 4 start closer together than spawned ones
    failures = []
    for round_ in range(150):
        path = str(tmp_path / f"demo{round_}.db")
        go, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open_store, args=(path, go, results)) for _ in range(4)]
        for p in procs:
            p.start()
        go.set()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        failures += [o for o in outcomes if o != "ok"]
    assert failures == []
