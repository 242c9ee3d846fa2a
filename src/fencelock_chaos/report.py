"""What a person reads after a chaos run: a timeline page (self-contained HTML with inline SVG)
and a summary table in the terminal.

Timeline, one picture per run (scenario x fencing on/off), one lane per consumer:

- a coloured bar per **lease** (colour = file), from ``acquire ok`` to where its holder stopped
  believing in it; a dashed tail when the holder kept working after that (a zombie);
- a thin bar per **write** from ``invoke`` to its outcome, ending in a mark: a green check
  (accepted), a red cross (rejected by the fence check), an orange ``?`` (unknown); a write the
  checker caught applying a stale fence gets a red ring and the label ``STALE``;
- a black triangle where the holder **reported the lease lost**;
- **faults** on the lane they hit: grey hatching while a process is stopped, a skull line for a
  SIGKILL, tinted bands for a cut link, a delayed database link or the test hook's pause; faults on
  the lock server are drawn across every lane, labelled at the top.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .checker import Lease, Violation, leases
from .history import FaultWindow, fault_windows
from .runner import RunResult, Verdict

__all__ = ["markdown_table", "render_html", "render_run_svg", "summary_table", "write_report"]

PALETTE = ("#4e79a7", "#59a14f", "#9c755f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#bab0ac")
FAULT_COLOURS = {
    "sigstop": "#7f7f7f", "partition": "#e15759", "db-delay": "#f28e2b", "hook-pause": "#9467bd",
    "clock-jump": "#17becf", "race": "#e15759", "pexpire": "#d62728", "restart-empty": "#d62728",
    "restart-snapshot": "#d62728", "sigkill": "#000000",
}
LANE_H = 46
LEFT = 70
WIDTH = 1180
RIGHT = 110  # room for the labels of the last marks
TOP = 34


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _short_fence(f: int | None) -> str:
    if f is None:
        return "-"
    s = str(f)
    return s if len(s) <= 6 else "…" + s[-5:]


def render_run_svg(res: RunResult) -> str:
    """One run as an SVG string (see the module docstring for the legend)."""
    events = res.events
    windows = fault_windows(res.faults)
    all_leases: list[Lease] = leases(events, res.faults, res.ttl_ns)
    t0 = min([res.start_t] + [e.t for e in events] + [w.start for w in windows])
    t1 = max([res.end_t] + [e.t for e in events])
    span = max(t1 - t0, 1)
    server_faults = [w for w in windows if _server(w)]
    top = TOP + (24 if server_faults else 0)  # room for up to three rows of lock-server labels
    procs = sorted({e.proc for e in events} | {w.target for w in windows if not _server(w)})
    lane = {p: i for i, p in enumerate(procs)}
    height = top + LANE_H * max(1, len(procs)) + 40
    files = sorted(res.produced) or sorted({e.file for e in events if e.file})
    colour = {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(files)}
    plot_w = WIDTH - LEFT - RIGHT

    def x(t: int) -> float:
        return LEFT + (t - t0) / span * plot_w

    def y(proc: str) -> float:
        return top + lane.get(proc, 0) * LANE_H

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" '
        f'font-size="11">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#555" stroke-width="2"/></pattern></defs>',
    ]
    # time axis
    seconds = span / 1e9
    step = 1 if seconds <= 12 else 2 if seconds <= 30 else 5 if seconds <= 80 else 20
    for k in range(int(seconds // step) + 1):
        xx = x(t0 + int(k * step * 1e9))
        out.append(f'<line x1="{xx:.1f}" y1="{top - 6}" x2="{xx:.1f}" y2="{height - 30}" stroke="#eee"/>')
        out.append(f'<text x="{xx:.1f}" y="{height - 16}" text-anchor="middle" fill="#666">{k * step}s</text>')
    for p in procs:
        yy = y(p)
        out.append(f'<line x1="{LEFT}" y1="{yy + LANE_H - 4}" x2="{WIDTH - 10}" y2="{yy + LANE_H - 4}" stroke="#ddd"/>')
        out.append(f'<text x="8" y="{yy + 24}" font-weight="bold" font-size="13">{_esc(p)}</text>')
    # faults on one process
    for w in windows:
        if _server(w):
            continue
        yy = y(w.target)
        end = w.end if w.end is not None else t1
        col = FAULT_COLOURS.get(w.fault, "#999")
        if w.fault == "sigkill":
            out.append(f'<line x1="{x(w.start):.1f}" y1="{yy + 2}" x2="{x(w.start):.1f}" y2="{yy + LANE_H - 6}" '
                       f'stroke="#000" stroke-width="3"><title>{_esc(w.detail)}</title></line>')
            out.append(f'<text x="{x(w.start) + 3:.1f}" y="{yy + 12}" font-weight="bold">☠ SIGKILL</text>')
            continue
        fill = 'url(#hatch)' if w.fault == "sigstop" else col
        op = "0.35" if w.fault == "sigstop" else "0.18"
        out.append(f'<rect x="{x(w.start):.1f}" y="{yy + 1}" width="{max(2.0, x(end) - x(w.start)):.1f}" '
                   f'height="{LANE_H - 6}" fill="{fill}" opacity="{op}"><title>{_esc(w.fault)}: '
                   f'{_esc(w.detail)}</title></rect>')
        out.append(f'<text x="{x(w.start) + 3:.1f}" y="{yy + LANE_H - 8}" fill="{col}" font-weight="bold">'
                   f'{_esc(_fault_label(w))}</text>')
    # leases
    for ls in all_leases:
        if ls.proc not in lane:
            continue
        yy = y(ls.proc) + 8
        col = colour.get(ls.resource, "#888")
        out.append(f'<rect x="{x(ls.start):.1f}" y="{yy}" width="{max(2.0, x(ls.end) - x(ls.start)):.1f}" height="12" '
                   f'rx="3" fill="{col}"><title>{_esc(ls.resource)} fence {ls.fence}: {ls.ended_by}</title></rect>')
        if x(ls.end) - x(ls.start) > 70:  # short leases keep their label in the tooltip
            out.append(f'<text x="{x(ls.start) + 2:.1f}" y="{yy + 10}" fill="#fff" font-size="9">'
                       f'{_esc(ls.resource.removesuffix(".tsv"))} #{_short_fence(ls.fence)}</text>')
        # zombie tail: the holder acted after its lease ended
        last = max((e.t for e in events if e.proc == ls.proc and e.file == ls.resource and e.op == "write"
                    and e.t > ls.end and e.t >= ls.start), default=None)
        if last is not None:
            out.append(f'<line x1="{x(ls.end):.1f}" y1="{yy + 6}" x2="{x(last):.1f}" y2="{yy + 6}" stroke="{col}" '
                       'stroke-width="2" stroke-dasharray="4 3">'
                       '<title>still working after the lease ended</title></line>')
    # writes and losses
    stale = {(v.proc, v.resource) for v in res.violations if v.invariant == "fence-order"}
    invokes: dict[tuple[str, str], int] = {}
    for e in events:
        if e.proc not in lane:
            continue
        yy = y(e.proc)
        if e.op == "write" and e.type == "invoke":
            invokes[(e.proc, e.file)] = e.t
        elif e.op == "write":
            start = invokes.pop((e.proc, e.file), e.t)
            cy = yy + 30
            out.append(f'<line x1="{x(start):.1f}" y1="{cy}" x2="{x(e.t):.1f}" y2="{cy}" '
                       'stroke="#333" stroke-width="1.5"/>')
            tip = f"write {e.file} fence {e.fence}: {e.type} {e.error}"
            if e.type == "ok":
                out.append(f'<text x="{x(e.t):.1f}" y="{cy + 5}" text-anchor="middle" fill="#2ca02c" font-size="16" '
                           f'font-weight="bold"><title>{_esc(tip)}</title>✔</text>')
                if (e.proc, e.file) in stale:
                    out.append(f'<circle cx="{x(e.t):.1f}" cy="{cy}" r="10" fill="none" stroke="#d62728" '
                               'stroke-width="2.5"/>')
                    out.append(f'<text x="{x(e.t) + 12:.1f}" y="{cy + 4}" fill="#d62728" font-weight="bold">STALE'
                               ' accepted</text>')
            elif e.type == "fail":
                label = "rejected" if "StaleFence" in e.error else "failed"
                out.append(f'<text x="{x(e.t):.1f}" y="{cy + 5}" text-anchor="middle" fill="#d62728" font-size="16" '
                           f'font-weight="bold"><title>{_esc(tip)}</title>✘</text>')
                out.append(f'<text x="{x(e.t) + 9:.1f}" y="{cy + 4}" fill="#d62728">{label}</text>')
            else:
                out.append(f'<text x="{x(e.t):.1f}" y="{cy + 5}" text-anchor="middle" fill="#f28e2b" font-size="15" '
                           f'font-weight="bold"><title>{_esc(tip)}</title>?</text>')
        elif e.op == "lease-lost":
            xx = x(e.t)
            out.append(f'<path d="M{xx - 5:.1f},{yy + 4} L{xx + 5:.1f},{yy + 4} L{xx:.1f},{yy + 12} Z" fill="#000">'
                       f'<title>lease on {_esc(e.file)} reported lost: {_esc(e.error)}</title></path>')
    # faults on the lock server: across every lane; labels in up to three rows, never overlapping
    row_ends = [float("-inf")] * 3
    for w in server_faults:
        col = FAULT_COLOURS.get(w.fault, "#d62728")
        end = w.end if w.end is not None else t1
        if end - w.start > span / 400:
            out.append(f'<rect x="{x(w.start):.1f}" y="{top - 8}" width="{x(end) - x(w.start):.1f}" '
                       f'height="{height - top - 22}" fill="{col}" opacity="0.10">'
                       f'<title>{_esc(w.detail)}</title></rect>')
        out.append(f'<line x1="{x(w.start):.1f}" y1="{top - 8}" x2="{x(w.start):.1f}" y2="{height - 30}" '
                   f'stroke="{col}" stroke-width="2" stroke-dasharray="6 3"><title>{_esc(w.detail)}</title></line>')
        label = "⚡ " + ("lock server SIGSTOP" if w.fault == "sigstop" else _fault_label(w))
        free = next((i for i, r_end in enumerate(row_ends) if r_end < x(w.start)), None)
        if free is not None:  # else the label stays in the tooltip
            row_ends[free] = x(w.start) + 3 + 6.5 * len(label)
            out.append(f'<text x="{x(w.start) + 3:.1f}" y="{top - 12 - 12 * free}" fill="{col}" '
                       f'font-weight="bold">{_esc(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _server(w: FaultWindow) -> bool:
    return w.target in ("lock-server", "database")


def _fault_label(w: FaultWindow) -> str:
    return {
        "sigstop": "SIGSTOP", "partition": "cut off from lock server", "db-delay": "DB link delayed",
        "hook-pause": "paused after lease check", "clock-jump": "wall clock +1h", "race": "racing write",
        "pexpire": "PEXPIRE lock key", "restart-empty": "lock server restarted, no data",
        "restart-snapshot": "lock server restarted, old snapshot",
    }.get(w.fault, w.fault)


def _verdict_cell(v: Verdict, on: bool) -> tuple[str, str]:
    """(text, css class) for one mode of one scenario."""
    if v.blocked:
        return ("blocked", "blocked")
    res = v.on if on else v.off
    if res is None:
        return ("not run", "blocked")
    if res.error:
        return (f"error: {res.error}", "bad")
    n = len(res.violations)
    kinds = ", ".join(sorted(res.invariants())) or "none"
    refused = _refused(res)
    if on:
        extra = f"; {refused} stale write{'s' if refused != 1 else ''} refused" if refused else ""
        return (f"pass (0 violations{extra})" if n == 0 else f"FAIL: {n} ({kinds})", "ok" if n == 0 else "bad")
    good = v.ok_off
    if v.off_informational:
        return (f"{n} violation{'s' if n != 1 else ''} ({kinds}); reported, not required", "shown" if n else "ok")
    if v.expect_off:
        return (f"{n} violation{'s' if n != 1 else ''} ({kinds})" + ("" if good else " — expected one!"),
                "shown" if good else "bad")
    return (f"{n} (none expected)" if good else f"{n} ({kinds}) — none expected!", "ok" if good else "bad")


def render_html(verdicts: Sequence[Verdict], title: str = "fencelock chaos") -> str:
    rows = []
    for v in verdicts:
        on_t, on_c = _verdict_cell(v, True)
        off_t, off_c = _verdict_cell(v, False)
        rows.append(f"<tr><td>{_esc(v.number)}</td><td><a href='#{_esc(v.name)}'>{_esc(v.name)}</a><br>"
                    f"<small>{_esc(v.title)}</small></td><td class='{on_c}'>{_esc(on_t)}</td>"
                    f"<td class='{off_c}'>{_esc(off_t)}</td>"
                    f"<td>{_esc(', '.join(sorted(v.expect_off)) or '—')}</td></tr>")
    sections = []
    for v in verdicts:
        parts = [f"<h2 id='{_esc(v.name)}'>{_esc(v.number)}. {_esc(v.title)} <small>({_esc(v.name)})</small></h2>"]
        if v.blocked:
            parts.append(f"<p class='blocked'>blocked: {_esc(v.blocked)}</p>")
        for res in (v.on, v.off):
            if res is None:
                continue
            mode = "fencing ON" if res.fencing else "fencing OFF"
            parts.append(f"<h3>{mode} <small>{res.seconds:.1f} s</small></h3>")
            if res.error:
                parts.append(f"<p class='bad'>error: {_esc(res.error)}</p>")
            parts.append(render_run_svg(res))
            parts.append(_violation_list(res.violations))
            if res.notes:
                parts.append("<p class='notes'>" + "<br>".join(_esc(n) for n in res.notes) + "</p>")
        sections.append("<section>" + "\n".join(parts) + "</section>")
    legend = (
        "<p class='legend'>Lanes are consumer processes. <b>Bars</b>: leases held (colour = file, #fence); "
        "dashed tail: still working after the lease ended. <b>Thin line</b>: a write in flight, ending in "
        "<span style='color:#2ca02c'>✔</span> accepted, <span style='color:#d62728'>✘</span> rejected by the "
        "fence check, <span style='color:#f28e2b'>?</span> outcome unknown; a red ring = a <b>stale write the "
        "storage accepted</b>. ▼ lease reported lost. "
        "Hatched: process stopped (SIGSTOP); ☠: SIGKILL; tinted bands: cut link, delayed DB link, test-hook pause; "
        "dashed vertical lines: faults on the lock server.</p>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + _esc(title) + "</title><style>"
        "body{font-family:sans-serif;margin:24px;color:#222} table{border-collapse:collapse} "
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top} th{background:#f3f3f3} "
        ".ok{background:#e6f4e6} .bad{background:#fbe3e3;font-weight:bold} .shown{background:#fff2d9} "
        ".blocked{background:#eee;color:#666} section{margin-top:28px;border-top:2px solid #ddd} "
        "svg{border:1px solid #eee;background:#fff} .legend{max-width:1100px;color:#444} ul.v{color:#b00} "
        ".notes{color:#555;font-size:90%}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p>generated {_esc(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}</p>"
        "<table><tr><th>#</th><th>scenario</th><th>fencing on (must pass)</th><th>fencing off (must show the "
        "violation)</th><th>expected without fencing</th></tr>" + "".join(rows) + "</table>" + legend
        + "".join(sections) + "</body></html>"
    )


def _violation_list(vs: Sequence[Violation]) -> str:
    if not vs:
        return "<p class='ok'>checker: no violation</p>"
    items = "".join(f"<li>{_esc(v)}</li>" for v in vs[:30])
    more = f"<li>… and {len(vs) - 30} more</li>" if len(vs) > 30 else ""
    return f"<ul class='v'>{items}{more}</ul>"


def write_report(verdicts: Sequence[Verdict], path: Path, title: str = "fencelock chaos") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(verdicts, title), encoding="utf-8")
    return path


def summary_table(verdicts: Sequence[Verdict], console: Console | None = None) -> Table:
    """The terminal summary: one row per scenario, both modes, what the checker found."""
    table = Table(title="fencelock chaos: what fails without fencing", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("scenario")
    table.add_column("fencing on", no_wrap=False)
    table.add_column("fencing off", no_wrap=False)
    table.add_column("verdict")
    table.add_column("time", justify="right")
    for v in verdicts:
        on_t, on_c = _verdict_cell(v, True)
        off_t, off_c = _verdict_cell(v, False)
        style = {"ok": "green", "bad": "bold red", "shown": "yellow", "blocked": "dim"}
        secs = sum(r.seconds for r in (v.on, v.off) if r is not None)
        verdict = "blocked" if v.blocked else ("[green]PASS[/]" if v.passed else "[bold red]FAIL[/]")
        table.add_row(v.number, f"{v.name}\n[dim]{v.title}[/]", f"[{style[on_c]}]{on_t}[/]",
                      f"[{style[off_c]}]{off_t}[/]", verdict, f"{secs:.0f}s")
    if console is not None:
        console.print(table)
    return table



def _refused(res: RunResult) -> int:
    """Writes the storage refused for a stale fence, as their clients reported them."""
    return sum(1 for e in res.events if e.op == "write" and e.type == "fail" and "StaleFence" in e.error)


def _count(res: RunResult | None) -> str:
    if res is None:
        return "not run"
    if res.error:
        return f"error: {res.error}"
    if not res.violations:
        refused = _refused(res)
        return f"0 ({refused} stale write{'s' if refused != 1 else ''} refused)" if refused else "0"
    by: dict[str, int] = {}
    for v in res.violations:
        by[v.invariant] = by.get(v.invariant, 0) + 1
    parts = []
    for k, n in sorted(by.items()):
        if k == "fence-order":
            parts.append(f"{n} stale write{'s' if n != 1 else ''} accepted (fence-order)")
        else:
            parts.append(f"{n} {k}")
    return ", ".join(parts)


def markdown_table(verdicts: Sequence[Verdict]) -> str:
    """The measured table for the README: scenario, violations with fencing off, with fencing on."""
    lines = ["| # | scenario | violations with fencing off | with fencing on |", "|---|---|---|---|"]
    for v in verdicts:
        if v.blocked:
            lines.append(f"| {v.number} | {v.title} | blocked: {v.blocked} | blocked |")
            continue
        lines.append(f"| {v.number} | {v.title} | {_count(v.off)} | {_count(v.on)} |")
    return "\n".join(lines) + "\n"
