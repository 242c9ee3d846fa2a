"""Files that must not be ingested, and the producer's promise never to show half a file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

from fencelock.embedded import EmbeddedRedis
from fencelock_demo.consumer import Consumer, ConsumerConfig
from fencelock_demo.parsing import Row, format_row, parse_lines, split_lines
from fencelock_demo.producer import ProducerConfig, produce
from test_demo_e2e import fencelock_cmd, finish, history, per_file, start_consumer


def _line(i: int, tx: str | None = None, **changes: str) -> str:
    row = Row(tx or f"T{i:09d}", "Ana Souza", "0012345678", "4539578763621486", "EUR", 1000 + i,
              "Café Central", "2025-03-14", i)
    fields = format_row(row).split("\t")
    names = ["tx", "owner", "account", "card", "currency", "amount", "merchant", "date"]
    for key, value in changes.items():
        fields[names.index(key)] = value
    return "\t".join(fields)


def _file(lines: list[str | bytes]) -> bytes:
    return b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)


# name -> (content, [(line number, words the reason must contain)])
CORPUS: dict[str, tuple[bytes, list[tuple[int, str]]]] = {
    "fields.tsv": (_file([_line(1), "\t".join(_line(2).split("\t")[:7]), _line(3)]),
                   [(2, "expected 8 tab-separated fields, found 7")]),
    "amount.tsv": (_file([_line(1), _line(2), _line(3, amount="12.50")]), [(3, "bad amount '12.50'")]),
    "date.tsv": (_file([_line(1, date="20251340"), _line(2)]), [(1, "bad date '20251340'")]),
    "currency.tsv": (_file([_line(1), _line(2, currency="XYZ")]), [(2, "bad currency code 'XYZ'")]),
    "utf8.tsv": (_file([_line(1), _line(2).encode().replace(b"Ana", b"An\xe9")]), [(2, "not valid UTF-8")]),
    "nul.tsv": (_file([_line(1).encode().replace(b"Ana", b"A\x00a"), _line(2)]), [(1, "NUL byte")]),
    "empty.tsv": (b"", [(0, "empty file")]),
    "several.tsv": (
        _file([_line(1), _line(2, amount="1,00"), _line(3), _line(4), _line(5, date="2025")]),
        [(2, "bad amount '1,00'"), (5, "bad date '2025'")],
    ),
    "dup-in-file.tsv": (_file([_line(1, tx="D000000001"), _line(2, tx="D000000002"), _line(3, tx="D000000001")]),
                        [(3, "TransactionId D000000001 repeats line 1 of this file")]),
}


def test_bad_file_corpus_goes_to_quarantine_with_reasons_and_writes_nothing(
    tmp_path: Path, valkey: EmbeddedRedis
) -> None:
    share, hist, dbfile = tmp_path / "share", tmp_path / "h.jsonl", tmp_path / "q.db"
    share.mkdir()
    for name, (content, _) in CORPUS.items():
        (share / name).write_bytes(content)
    good = _file([_line(i, tx=f"G{i:09d}") for i in range(1, 6)])
    (share / "good.tsv").write_bytes(good)
    # Never read through links or special files: a symlink to a good file outside the share, a FIFO.
    outside = tmp_path / "outside.tsv"
    outside.write_bytes(_file([_line(i, tx=f"O{i:09d}") for i in range(1, 4)]))
    (share / "link.tsv").symlink_to(outside)
    os.mkfifo(share / "pipe.tsv")
    code, out = finish(start_consumer(share, valkey.url, f"sqlite:///{dbfile}", "q", hist, "--idle-exit", "1"))
    assert code == 0, out

    q = share / "quarantine"
    for name, (content, expected) in CORPUS.items():
        assert (q / name).read_bytes() == content, name
        reason = (q / f"{name}.reason.txt").read_text()
        assert "no row of it was written" in reason
        for line_no, words in expected:
            where = "file" if line_no == 0 else f"line {line_no}"
            assert any(r.startswith(f"{where}: ") and words in r for r in reason.splitlines()), (name, reason)
        assert reason.count("\n") == 1 + len(expected), (name, reason)  # each bad line named, nothing else
    # Only the good file reached the database, and the bad ones left no trace (not even a fence).
    assert per_file(f"sqlite:///{dbfile}") == {"good.tsv": (5, sum(1000 + i for i in range(1, 6)))}
    db = sqlite3.connect(dbfile)
    try:
        assert [r[0] for r in db.execute("SELECT resource FROM fencelock_fences")] == ["file:good.tsv"]
        assert [r[0] for r in db.execute("SELECT name FROM demo_files")] == ["good.tsv"]
    finally:
        db.close()
    assert (share / "done" / "good.tsv").exists()
    # The link and the FIFO were left where they were, with a logged reason, and never read.
    assert (share / "link.tsv").is_symlink() and outside.exists()
    assert (share / "pipe.tsv").exists()
    assert "skipping link.tsv: a symbolic link" in out
    assert "skipping pipe.tsv: not a regular file" in out
    writes = [e for e in history(hist) if e["op"] == "write"]
    assert {e["file"] for e in writes} == {*CORPUS, "good.tsv"}
    assert all(e["error"].startswith("quarantined") for e in writes if e["type"] == "fail")


def test_transaction_id_already_persisted_from_another_file_is_refused(tmp_path: Path, valkey: EmbeddedRedis) -> None:
    """ON CONFLICT DO NOTHING must not swallow a row silently: a TransactionId that another file
    already brought is a bad line, named with where the first one came from."""
    share, hist, db = tmp_path / "share", tmp_path / "h.jsonl", f"sqlite:///{tmp_path / 'd.db'}"
    share.mkdir()
    (share / "first.tsv").write_bytes(_file([_line(1, tx="X000000001"), _line(2, tx="X000000002")]))
    code, out = finish(start_consumer(share, valkey.url, db, "a", hist, "--idle-exit", "0.5"))
    assert code == 0, out
    (share / "second.tsv").write_bytes(_file([_line(1, tx="Y000000001"), _line(2, tx="X000000002")]))
    code, out = finish(start_consumer(share, valkey.url, db, "b", hist, "--idle-exit", "0.5"))
    assert code == 0, out
    reason = (share / "quarantine" / "second.tsv.reason.txt").read_text()
    assert "line 2: TransactionId X000000002 already persisted from first.tsv line 2" in reason
    assert per_file(db) == {"first.tsv": (2, 2003)}


def test_a_file_that_vanished_is_skipped(tmp_path: Path, valkey: EmbeddedRedis) -> None:
    cfg = ConsumerConfig(share=str(tmp_path / "share"), lock=valkey.url, db=f"sqlite:///{tmp_path / 'v.db'}",
                         id="v", history=str(tmp_path / "h.jsonl"))
    consumer = Consumer(cfg, lambda: False)
    try:
        assert consumer.try_file("gone.tsv") == "vanished"
    finally:
        consumer.close()
    ops = [(e["op"], e["type"]) for e in history(tmp_path / "h.jsonl")]
    assert ops == [("acquire", "invoke"), ("acquire", "ok"), ("release", "invoke"), ("release", "ok")]


def test_producer_never_exposes_a_partial_file(tmp_path: Path) -> None:
    """A reader polls the share while the producer writes: every file it can see is complete
    (all lines, each one valid), from the first moment it is visible."""
    share, lines = tmp_path / "share", 3000
    share.mkdir()
    proc = subprocess.Popen(fencelock_cmd("produce", "--share", str(share), "--files", "25", "--lines", str(lines),
                                          "--seed", "9"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    seen: set[str] = set()
    checks = 0
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            running = proc.poll() is None
            for entry in os.scandir(share):
                if entry.name.startswith(".") or not entry.is_file() or entry.name in seen:
                    continue
                data = (share / entry.name).read_bytes()
                items = list(parse_lines(split_lines([data])))
                assert data.endswith(b"\n") and len(items) == lines, (entry.name, len(items))
                assert all(isinstance(i, Row) for i in items)
                seen.add(entry.name)
                checks += 1
            if not running:
                break
            time.sleep(0.005)
    finally:
        code, out = finish(proc)
    assert code == 0, out
    assert len(seen) == 25 and checks == 25
    assert list((share / ".tmp").iterdir()) == []


def test_producer_is_repeatable_with_a_seed(tmp_path: Path) -> None:
    for d in ("a", "b"):
        produce(ProducerConfig(tmp_path / d, files=2, lines=50, seed=42))
    names = sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_file())
    assert len(names) == 2
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
