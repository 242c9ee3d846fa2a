"""The file format: every kind of bad line is reported with its number and reason; good lines
become exact rows; the line splitter holds at most one bounded line."""

from __future__ import annotations

import random

import pytest

from fencelock_demo.parsing import MAX_LINE_BYTES, BadLine, Row, format_row, parse_line, parse_lines, split_lines
from fencelock_demo.producer import make_rows

GOOD = b"Kx9T2mQa0Z\tAna Souza\t0012345678\t4539578763621486\tBRL\t123456\tPadaria Real\t20250314"


def _with(field: int, value: bytes) -> bytes:
    parts = GOOD.split(b"\t")
    parts[field] = value
    return b"\t".join(parts)


def test_good_line_is_an_exact_row() -> None:
    row = parse_line(7, GOOD)
    assert row == Row("Kx9T2mQa0Z", "Ana Souza", "0012345678", "4539578763621486", "BRL", 123456,
                      "Padaria Real", "2025-03-14", 7)
    assert isinstance(row, Row) and isinstance(row.amount_cents, int)
    assert format_row(row).encode() == GOOD


def test_negative_amount_and_crlf_are_accepted() -> None:
    row = parse_line(1, _with(5, b"-250") + b"\r")
    assert isinstance(row, Row) and row.amount_cents == -250 and row.date == "2025-03-14"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (GOOD.rsplit(b"\t", 1)[0], "expected 8 tab-separated fields, found 7"),
        (GOOD + b"\textra", "expected 8 tab-separated fields, found 9"),
        (GOOD.replace(b"\t", b",", 1), "expected 8 tab-separated fields, found 7"),
        (_with(5, b"1234.56"), "bad amount '1234.56'"),
        (_with(5, b"12a"), "bad amount '12a'"),
        (_with(5, b""), "bad amount ''"),
        (_with(5, b"1" * 16), "bad amount"),
        (_with(7, b"20251340"), "bad date '20251340'"),
        (_with(7, b"20250230"), "bad date '20250230'"),
        (_with(7, b"2025-03-14"), "bad date '2025-03-14'"),
        (_with(4, b"XYZ"), "bad currency code 'XYZ'"),
        (_with(4, b"brl"), "bad currency code 'brl'"),
        (_with(4, b"BRLL"), "bad currency code 'BRLL'"),
        (_with(0, b"Kx9T2mQa0"), "bad TransactionId 'Kx9T2mQa0'"),
        (_with(0, b"Kx9T2mQa0-"), "bad TransactionId"),
        (_with(1, b""), "bad Owner"),
        (_with(3, b"4539-5787"), "bad CardNumber"),
        (_with(2, b"12"), "bad AccountNumber"),
        (_with(6, b" "), "bad MerchantName"),
        (_with(1, b"Ana \xff Souza"), "not valid UTF-8 (byte 16"),
        (_with(1, b"Ana \x00Souza"), "NUL byte at byte 16"),
        (b"", "empty line"),
        (b"   ", "empty line"),
    ],
)
def test_bad_lines_say_why(raw: bytes, reason: str) -> None:
    result = parse_line(3, raw)
    assert isinstance(result, BadLine)
    assert result.line_no == 3
    assert reason in result.reason


def test_empty_input_is_reported_not_ignored() -> None:
    assert list(parse_lines(split_lines([]))) == [BadLine(0, "empty file: no transactions")]
    assert list(parse_lines(split_lines([b""]))) == [BadLine(0, "empty file: no transactions")]


def test_split_lines_numbers_lines_across_chunks_and_keeps_a_last_line_without_newline() -> None:
    data = b"a\nbb\n\nccc"
    for size in (1, 2, 3, 100):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert list(split_lines(chunks)) == [(1, b"a"), (2, b"bb"), (3, b""), (4, b"ccc")]


def test_overlong_line_is_bad_and_never_buffered_whole() -> None:
    huge = b"x" * (MAX_LINE_BYTES * 50)
    chunks = [GOOD + b"\n", *(huge[i : i + 1000] for i in range(0, len(huge), 1000)), b"\n" + GOOD + b"\n"]
    items = list(parse_lines(split_lines(chunks)))
    assert [type(i) for i in items] == [Row, BadLine, Row]
    assert items[1] == BadLine(2, f"line longer than {MAX_LINE_BYTES} bytes")
    assert items[2].line_no == 3  # type: ignore[union-attr]
    # A file that ends inside an overlong line reports it too.
    assert list(split_lines([b"y" * (MAX_LINE_BYTES + 1)])) == [(1, None)]


def test_parse_is_lazy() -> None:
    """A generator: it pulls input only as rows are consumed (constant memory for any file)."""
    pulled = 0

    def chunks() -> object:
        nonlocal pulled
        while True:
            pulled += 1
            yield GOOD + b"\n"

    stream = parse_lines(split_lines(chunks()))  # type: ignore[arg-type]
    first = [next(stream) for _ in range(3)]
    assert all(isinstance(r, Row) for r in first)
    assert pulled <= 4


def test_producer_rows_round_trip_and_ids_are_unique() -> None:
    rng = random.Random(5)
    rows = make_rows(rng, "abc", 0, 3000) + make_rows(rng, "abc", 3000, 3000)
    assert len({r.transaction_id for r in rows}) == 6000
    lines = [(i + 1, format_row(r).encode()) for i, r in enumerate(rows)]
    parsed = list(parse_lines(lines))
    assert all(isinstance(p, Row) for p in parsed)
    assert [p[:8] for p in parsed] == [r[:8] for r in rows]
