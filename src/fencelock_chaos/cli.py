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
    from .runner import Verdict

__all__ = ["COMMANDS", "chaos"]


@click.command(epilog="""\b
Exit status:
  0  every scenario passed: no violation with fencing on, and every fencing-off run showed the
     violation its scenario provokes (or none, where none is expected)
  1  a violation with fencing on, a fencing-off run without its expected violation, or a
     scenario that could not be driven (error)
  2  bad command line""")
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
    Short tier: each scenario of issue 5 twice: with the storage-side fence check (must pass) and
    without (must show the violation the scenario provokes: proof the checker can see it).
    Needs: PostgreSQL server binaries (/usr/lib/postgresql/<major>/bin), redis-server or an embedded one,
    Debian's faketime (scenario 10), zookeeperd + kazoo (scenario 11).
    """
    from rich.console import Console
    from rich.markup import escape

    from .report import markdown_table, summary_table, write_report
    from .runner import Settings, postgres, run_scenario
    from .scenarios import SCENARIOS, by_name, long_mix

    console = Console()
    if not console.is_terminal:  # CI logs: wide enough for the summary table
        console = Console(width=150)
    settings = Settings(ttl=ttl, seed=seed, consumer=consumer)
    if tier == "long":
        picked = [long_mix(duration, seed)]
        settings.run_timeout = duration + 240
        settings.done_bound = 30.0
    else:
        try:
            picked = [by_name(n) for n in names] if names else list(SCENARIOS)
        except KeyError as err:
            raise click.UsageError(str(err)) from None
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
                    state = "error: " + res.error if res.error else f"{len(res.violations)} violations"
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
    sys.exit(1 if failed else 0)


def _passed(v: Verdict, modes: tuple[bool, ...]) -> bool:
    return (v.ok_on or True not in modes) and (v.ok_off or False not in modes)


COMMANDS = [chaos]
