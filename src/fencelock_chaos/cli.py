"""``fencelock chaos``: the demo system under injected faults, checked, drawn.

Plugged into the ``fencelock`` command through the ``fencelock.commands`` entry point
(``COMMANDS`` below).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rich.console import Console

    from .runner import Verdict

__all__ = ["COMMANDS", "chaos"]


@click.command(epilog="""\b
Exit status:
  0      every scenario passed: no violation with fencing on, and every fencing-off run showed
         the violation its scenario provokes (or none, where none is expected)
  1      a violation with fencing on, a fencing-off run without its expected violation, or a
         scenario that could not be driven (error)
  3      could not start: PostgreSQL binaries or psycopg missing (the cause is on screen)
  64     bad usage (options, an unknown scenario)
  128+N  stopped by signal N (SIGINT, SIGTERM, SIGHUP): every server and process it started
         is stopped and its temporary folders removed""")
@click.option("--scenario", "names", multiple=True, metavar="NAME",
              help="Run only these (name or number, repeatable). Default: the whole tier.")
@click.option("--tier", type=click.Choice(["short", "long"]), default="short", show_default=True,
              help="short: every scenario once, fencing on and off (CI). long: a seeded random fault mix.")
@click.option("--seed", type=int, default=1, show_default=True, help="Data and (long tier) fault schedule.")
@click.option("--duration", type=click.FloatRange(10, 3600), default=120.0, show_default=True,
              help="Long tier: seconds of faults.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("chaos-out"),
              show_default=True, help="Histories, fault logs, logs, and timeline.html.")
@click.option("--consumer", type=click.Choice(["auto", "demo", "standin"]), default="auto", show_default=True,
              help="Whose consumer to break: the demo's `fencelock consume`, or the harness's stand-in.")
@click.option("--ttl", type=click.FloatRange(0.5, 30), default=1.5, show_default=True, help="Lease length (s).")
@click.option("--only", type=click.Choice(["both", "on", "off"]), default="both", show_default=True,
              help="Run fencing on, off, or both.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the measured table (scenario, violations off / on) as Markdown here.")
def chaos(names: tuple[str, ...], tier: str, seed: int, duration: float, out: Path, consumer: str, ttl: float,
          only: str, markdown: Path | None) -> None:
    """Run the demo system (lock server, PostgreSQL, competing consumers) under injected faults,
    record a history, check it, and draw a timeline.

    \b
    Short tier: every scenario twice: with the storage-side fence check (must pass) and
    without (must show the violation the scenario provokes: proof the checker can see it).
    Lock servers: Redis (1-10), ZooKeeper (11), Redis elections (12), PostgreSQL (13-15:
    the lock in the data's own database, or on a cluster of its own that is restarted).
    Needs: PostgreSQL binaries (/usr/lib/postgresql/<major>/bin) and psycopg
    (pip install 'fencelock[postgres]'), redis-server or an embedded one, Debian's faketime
    (scenario 10), zookeeperd and kazoo (scenario 11; pip install 'fencelock[zookeeper]').
    """
    from fencelock._cli_ops import Terminated, ended_by_signals, say

    console = _console()
    try:
        with ended_by_signals():
            code = _chaos(console, names, tier, seed, duration, out, consumer, ttl, only, markdown)
    except Terminated as stop:
        say(f"fencelock chaos: stopped by {stop.signame}: every server and process it started was stopped")
        sys.exit(stop.exit_code)
    sys.exit(code)


def _console() -> Console:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # CI logs: wide enough for the summary table
        console = Console(width=150)
    return console


def _missing_requirement() -> str | None:
    """Why the harness cannot run here (said in one line before anything starts), or None."""
    from .servers import postgres_bin_dir

    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "fencelock chaos needs psycopg 3 for its PostgreSQL database: pip install 'fencelock[postgres]'"
    try:
        postgres_bin_dir()
    except FileNotFoundError as err:
        return f"fencelock chaos needs the PostgreSQL server binaries: {err}"
    return None


def _chaos(console: Console, names: tuple[str, ...], tier: str, seed: int, duration: float, out: Path,
           consumer: str, ttl: float, only: str, markdown: Path | None) -> int:
    from rich.markup import escape

    from .report import markdown_table, summary_table, write_report
    from .runner import Settings, postgres, run_scenario
    from .scenarios import SCENARIOS, by_name, long_mix

    settings = Settings(ttl=ttl, seed=seed, consumer=consumer)
    if tier == "long":
        picked = [long_mix(duration, seed)]
        settings.run_timeout = duration + 240
        settings.done_bound = 30.0
    else:
        try:
            picked = [by_name(n) for n in names] if names else list(SCENARIOS)
        except KeyError as err:
            raise click.UsageError(str(err).strip("'\"")) from None
    missing = _missing_requirement()
    if missing is not None:
        console.print(f"[red]{escape(missing)}[/]", soft_wrap=True)
        return 3
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[only]
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    verdicts = []
    with postgres() as pg:
        for i, sc in enumerate(picked):
            console.print(f"[bold]{sc.number}. {sc.name}[/]: {sc.title} ...")
            v = run_scenario(sc, settings, pg, out, i, modes)
            for res in (v.on, v.off):
                if res is not None:
                    n = len(res.violations)
                    state = "error: " + res.error if res.error else f"{n} violation{'s' if n != 1 else ''}"
                    console.print(f"   fencing {'on ' if res.fencing else 'off'}: {state} ({res.seconds:.1f}s)")
                    for viol in res.violations[:5]:
                        console.print(f"     [dim]{escape(str(viol))}[/]", highlight=False)
            if v.blocked:
                console.print(f"   [yellow]blocked[/]: {v.blocked}")
            verdicts.append(v)
    summary_table(verdicts, console)
    page = write_report(verdicts, out / "timeline.html")
    if markdown is not None:
        markdown.write_text(markdown_table(verdicts), encoding="utf-8")
    console.print(f"timeline: {page}  ({time.monotonic() - started:.0f}s in all)")
    failed = [v for v in verdicts if not v.blocked and not _passed(v, modes)]
    return 1 if failed else 0


def _passed(v: Verdict, modes: tuple[bool, ...]) -> bool:
    return (v.ok_on or True not in modes) and (v.ok_off or False not in modes)


COMMANDS = [chaos]
