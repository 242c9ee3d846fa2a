"""The producer: drops files of card transactions into the share, each one atomically.

A file is written under a hidden temporary name in ``SHARE/.tmp/``, flushed and fsync'ed, then
renamed into the share (``rename`` is atomic within a filesystem), and the share directory is
fsync'ed so the new name survives a crash too. A consumer therefore sees a file either complete
or not at all: it never parses half a file. Consumers ignore every name starting with a dot.

Data is random but realistic (names, Luhn-valid card numbers with real issuer prefixes, ISO 4217
currencies weighted like real traffic, amounts in integer cents, dates in one year) and repeatable:
the same ``seed`` writes the same files byte for byte. TransactionIds are unique within a run by
construction (a bijective scramble of a counter behind a per-run prefix), so "exactly once" can be
checked by counting.

Each finished file is appended to an optional manifest (JSON lines: file, rows, sum of amounts,
whether it was made bad on purpose), which ``fencelock demo`` compares with the database.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .parsing import Row, format_row

__all__ = ["ProducerConfig", "TMP_DIR", "make_rows", "produce", "write_atomically"]

TMP_DIR = ".tmp"

_FIRST = (
    "Ana Bruno Carla Diego Elena Felipe Gabriela Hugo Isabel João Karin Lucas Maria Nuno Olga Pedro "
    "Rafaela Sofia Tiago Yara Aiko Chen Dmitri Emma Fatima Grace Hannah Ivan Jamal Kenji Leila Mateo "
    "Noah Omar Priya Quentin Rosa Sven Zoë Björn"
).split()
_LAST = (
    "Silva Santos Oliveira Souza Pereira Costa Almeida Ferreira Müller Schmidt García Martínez "
    "Rossi Bianchi Dubois Laurent Smith Johnson Williams Brown Nguyen Tanaka Sato Kim Park Singh "
    "Patel Kowalski Novak Andersson Nielsen O'Brien Murphy Haddad Cohen Ivanova Yilmaz Okafor"
).split()
_MERCHANTS = (
    "Padaria Real|Café Central|SuperMart|Livraria Cultura|Posto Shell 24h|Farmácia São João|"
    "Amazon Marketplace|Uber *Trip|iFood|Netflix.com|Spotify AB|Steam Purchase|Apple.com/bill|"
    "Zara Store 1123|IKEA Lisboa|Lidl Sagt Danke|Carrefour Market|Boulangerie Paul|Starbucks #4512|"
    "Shell Oil 57442|Walmart Supercenter|Target T-1893|Costco Whse 0457|Booking.com|Airbnb * HMQ2|"
    "Ryanair|Deutsche Bahn|7-Eleven 2231|Lawson|Tesco Express|Marks & Spencer|Boots UK|"
    "Mercado Livre|Magazine Luiza|Rappi|Restaurante Tasca do Zé|Hotel Ibis Centro|Decathlon|"
    "Fnac Chiado|El Corte Inglés"
).split("|")
# (code, weight): roughly how card traffic is spread over currencies.
_CURRENCIES = (
    ("USD", 30), ("EUR", 25), ("BRL", 12), ("GBP", 8), ("JPY", 5), ("CAD", 3), ("AUD", 3), ("CHF", 2),
    ("MXN", 2), ("INR", 2), ("CNY", 2), ("SEK", 1), ("PLN", 1), ("ZAR", 1), ("KRW", 1), ("TRY", 1),
    ("NOK", 1),
)
_ISSUERS = (("4", 16), ("51", 16), ("52", 16), ("53", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15))

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SPACE = 62**7
_MUL = 2_654_435_761 % _SPACE | 1  # odd, not a multiple of 31: coprime with 62**7, so bijective
if _MUL % 31 == 0:  # pragma: no cover - guarded by construction
    _MUL += 2


def _b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, d = divmod(n, 62)
        out.append(_B62[d])
    return "".join(reversed(out))


def _luhn_complete(prefix_digits: str) -> str:
    """Append the Luhn check digit (card numbers that pass a real validator)."""
    total = 0
    for i, ch in enumerate(reversed(prefix_digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return prefix_digits + str((10 - total % 10) % 10)


@dataclass
class _Party:
    owner: str
    account: str
    card: str


def make_rows(rng: random.Random, run_prefix: str, first_counter: int, count: int) -> list[Row]:
    """``count`` realistic rows; TransactionIds from counters ``first_counter...`` (unique per run)."""
    codes = [c for c, _ in _CURRENCIES]
    weights = [w for _, w in _CURRENCIES]
    # A few hundred card holders, each with a stable account and card, as in real traffic.
    parties = []
    for _ in range(max(1, min(300, count // 20 + 1))):
        prefix, length = rng.choice(_ISSUERS)
        body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
        parties.append(
            _Party(
                f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
                "".join(rng.choice("0123456789") for _ in range(10)),
                _luhn_complete(body),
            )
        )
    base = 739_252  # 2025-01-01 as a proleptic ordinal; dates stay in 2025 whatever today is
    rows = []
    for i in range(count):
        n = first_counter + i
        tx = run_prefix + _b62((n * _MUL + 12_345) % _SPACE, 7)
        p = rng.choice(parties)
        currency = rng.choices(codes, weights)[0]
        cents = max(1, int(rng.lognormvariate(7.5, 1.3)))  # median ~18.00, long tail
        if currency in ("JPY", "KRW"):  # no minor unit in practice: whole amounts
            cents -= cents % 100
            cents = max(cents, 100)
        if rng.random() < 0.02:
            cents = -cents  # refunds
        day = _iso_date(base + rng.randrange(365))
        rows.append(Row(tx, p.owner, p.account, p.card, currency, cents, rng.choice(_MERCHANTS), day, i + 1))
    return rows


def _iso_date(ordinal: int) -> str:
    import datetime as dt

    return dt.date.fromordinal(ordinal).isoformat()


def write_atomically(share: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``share/name`` so that it appears complete or not at all."""
    tmp_dir = share / TMP_DIR
    tmp_dir.mkdir(exist_ok=True)
    tmp = tmp_dir / f".{name}.{os.getpid()}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        final = share / name
        os.rename(tmp, final)
    except BaseException:  # a full disk, or a signal that ends the producer: no partial file left
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(share, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # the rename itself is durable only once the directory is
    finally:
        os.close(dfd)
    return final


@dataclass
class ProducerConfig:
    share: Path
    files: int = 10
    lines: int = 10_000
    rate: float | None = None
    seed: int | None = None
    bad: int = 0
    manifest: Path | None = None


def _corrupt(rng: random.Random, rows: list[Row]) -> tuple[list[str], int, str]:
    """Lines of ``rows`` with one line broken on purpose (for the demo's quarantine)."""
    lines = [format_row(r) for r in rows]
    k = rng.randrange(len(lines))
    kind = rng.choice(("amount", "date", "currency", "fields"))
    f = lines[k].split("\t")
    if kind == "amount":
        f[5] = f"{int(f[5]) / 100:.2f}"  # a decimal amount: the format wants integer cents
    elif kind == "date":
        f[7] = f[7][:4] + "1340"  # month 13
    elif kind == "currency":
        f[4] = "XYZ"
    else:
        f = f[:7]
    lines[k] = "\t".join(f)
    return lines, k + 1, kind


def produce(
    cfg: ProducerConfig, *, should_stop: Callable[[], bool] = lambda: False, on_file: Callable[[], None] | None = None
) -> int:
    """Write ``cfg.files`` files; returns how many were written (``on_file`` is called after each:
    the count survives an exception that ends the run)."""
    cfg.share.mkdir(parents=True, exist_ok=True)
    rng = random.Random(cfg.seed)
    run_prefix = _b62(rng.randrange(62**3), 3)
    tag = _b62(rng.randrange(62**4), 4)
    bad = set(rng.sample(range(cfg.files), min(cfg.bad, cfg.files))) if cfg.bad else set()
    written = 0
    start = time.monotonic()
    for i in range(cfg.files):
        if should_stop():
            break
        if cfg.rate:
            due = start + i / cfg.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        name = f"tx-{tag}-{i:05d}.tsv"
        rows = make_rows(rng, run_prefix, i * cfg.lines, cfg.lines)
        entry: dict[str, object] = {"file": name, "rows": len(rows), "amount_cents": sum(r.amount_cents for r in rows)}
        if i in bad and rows:
            lines, line_no, kind = _corrupt(rng, rows)
            entry.update(bad=True, bad_line=line_no, bad_kind=kind)
        else:
            lines = [format_row(r) for r in rows]
            entry["bad"] = False
        data = ("\n".join(lines) + "\n").encode() if lines else b""
        write_atomically(cfg.share, name, data)
        written += 1
        if on_file is not None:
            on_file()
        if cfg.manifest is not None:
            with open(cfg.manifest, "a", encoding="utf-8") as m:
                m.write(json.dumps(entry) + "\n")
    return written
