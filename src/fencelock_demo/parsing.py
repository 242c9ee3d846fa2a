"""The transaction file format, parsed without I/O and in constant memory.

One transaction a line, no header, 8 tab-separated fields (the format of the original sample):

    TransactionId  Owner  AccountNumber  CardNumber  Currency  Amount  MerchantName  Date
    Kx9T2mQa0Z     Ana Souza  0012345678  4539578763621486  BRL  123456  Padaria Real  20250314

- TransactionId: exactly 10 ASCII letters or digits; the row's identity (idempotent writes).
- Amount: an integer number of cents (``123456`` is 1234.56), optionally negative (a refund).
  Kept as ``int`` from end to end: money is never a float here, and never divided.
- Currency: an ISO 4217 alphabetic code from the list below.
- Date: ``yyyyMMdd``, a real calendar date.
- UTF-8, no NUL bytes; a trailing ``\\r`` (a file written on Windows) is accepted and removed.

``parse_lines`` is a generator over ``(line_number, raw_bytes)``: it holds one line at a time, so a
file of any size is parsed in constant memory. It yields a ``Row`` for a good line and a ``BadLine``
(line number + reason) for a bad one: the caller decides what a bad line means (here: the whole
file is quarantined), but none is ever dropped silently. ``split_lines`` turns a stream of byte
chunks into such lines, with a cap on the line length so that a file without newlines cannot make
us hold it whole.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

__all__ = [
    "CURRENCIES",
    "FIELDS",
    "MAX_LINE_BYTES",
    "BadLine",
    "Row",
    "format_row",
    "parse_line",
    "parse_lines",
    "split_lines",
]

FIELDS = (
    "transaction_id",
    "owner",
    "account_number",
    "card_number",
    "currency",
    "amount_cents",
    "merchant",
    "date",
)

MAX_LINE_BYTES = 4096
"""Longer lines are reported as bad (and never buffered whole): a real line is under 200 bytes."""

# ISO 4217 active alphabetic codes (2024), without the fund/precious-metal/testing codes (X..).
CURRENCIES = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN
    BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS
    GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW
    KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD
    NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD
    SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VED
    VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL
    """.split()
)

_TX_ID = re.compile(r"[A-Za-z0-9]{10}")
_ACCOUNT = re.compile(r"[A-Za-z0-9]{4,34}")
_CARD = re.compile(r"[0-9]{12,19}")
_AMOUNT = re.compile(r"-?[0-9]{1,15}")
_DATE = re.compile(r"[0-9]{8}")
_MAX_TEXT = 200


class Row(NamedTuple):
    """One transaction. ``date`` is ISO ``YYYY-MM-DD``; ``amount_cents`` an exact integer."""

    transaction_id: str
    owner: str
    account_number: str
    card_number: str
    currency: str
    amount_cents: int
    merchant: str
    date: str
    line_no: int


class BadLine(NamedTuple):
    """A line that is not a valid transaction; ``line_no`` counts from 1 (0: the file as a whole)."""

    line_no: int
    reason: str


def split_lines(chunks: Iterable[bytes], max_len: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """Yield ``(line_number, line)`` from a stream of byte chunks, without the ``\\n``.

    ``line`` is None for a line longer than ``max_len`` bytes: its bytes are skipped up to the next
    newline instead of being collected. A final line without a newline is yielded as well. Memory
    is bounded by one chunk plus ``max_len``.
    """
    buf = b""
    overlong = False
    n = 0
    for chunk in chunks:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                rest = chunk[start:]
                if not overlong:
                    buf += rest
                    if len(buf) > max_len:
                        overlong, buf = True, b""
                break
            n += 1
            if overlong:
                yield n, None
            else:
                line = buf + chunk[start:nl]
                yield n, (line if len(line) <= max_len else None)
            buf, overlong = b"", False
            start = nl + 1
    if overlong:
        yield n + 1, None
    elif buf:
        yield n + 1, buf


def parse_line(line_no: int, raw: bytes | None) -> Row | BadLine:
    """Parse one line (bytes without the newline) into a ``Row``, or say why it is bad."""
    if raw is None:
        return BadLine(line_no, f"line longer than {MAX_LINE_BYTES} bytes")
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    nul = raw.find(b"\x00")
    if nul >= 0:
        return BadLine(line_no, f"NUL byte at byte {nul + 1}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadLine(line_no, f"not valid UTF-8 (byte {err.start + 1}: {raw[err.start:err.start + 1]!r})")
    if not text.strip():
        return BadLine(line_no, "empty line")
    f = text.split("\t")
    if len(f) != 8:
        return BadLine(line_no, f"expected 8 tab-separated fields, found {len(f)}")
    tx, owner, account, card, currency, amount, merchant, date = f
    if not _TX_ID.fullmatch(tx):
        return BadLine(line_no, f"bad TransactionId {tx!r}: expected 10 letters or digits")
    for label, value in (("Owner", owner), ("MerchantName", merchant)):
        if not value.strip() or len(value) > _MAX_TEXT or value != value.strip():
            return BadLine(line_no, f"bad {label} {value[:40]!r}: expected 1-{_MAX_TEXT} characters, no outer spaces")
    if not _ACCOUNT.fullmatch(account):
        return BadLine(line_no, f"bad AccountNumber {account[:40]!r}: expected 4-34 letters or digits")
    if not _CARD.fullmatch(card):
        return BadLine(line_no, f"bad CardNumber {card[:40]!r}: expected 12-19 digits")
    if currency not in CURRENCIES:
        return BadLine(line_no, f"bad currency code {currency[:40]!r}: not an ISO 4217 code")
    if not _AMOUNT.fullmatch(amount):
        return BadLine(line_no, f"bad amount {amount[:40]!r}: expected an integer number of cents")
    if not _DATE.fullmatch(date):
        return BadLine(line_no, f"bad date {date[:40]!r}: expected yyyyMMdd")
    try:
        day = _dt.date(int(date[:4]), int(date[4:6]), int(date[6:]))
    except ValueError as err:
        return BadLine(line_no, f"bad date {date!r}: {err}")
    return Row(tx, owner, account, card, currency, int(amount), merchant, day.isoformat(), line_no)


def parse_lines(lines: Iterable[tuple[int, bytes | None]]) -> Iterator[Row | BadLine]:
    """Parse a stream of numbered lines (see ``split_lines``) lazily. An input without any line
    yields one ``BadLine(0, "empty file ...")``: an empty file is reported, not ignored."""
    empty = True
    for line_no, raw in lines:
        empty = False
        yield parse_line(line_no, raw)
    if empty:
        yield BadLine(0, "empty file: no transactions")


def format_row(row: Row) -> str:
    """The line for ``row`` (without newline): what the producer writes, and ``parse_line`` reads."""
    return "\t".join(
        (
            row.transaction_id,
            row.owner,
            row.account_number,
            row.card_number,
            row.currency,
            str(row.amount_cents),
            row.merchant,
            row.date.replace("-", ""),
        )
    )
