"""Print the history around one lease or process of a stress run, for reading a violation.

    .venv/bin/python -m stress.explain RUN_DIR TOKEN_PREFIX     (run from tests/, or PYTHONPATH=tests)
    .venv/bin/python -m stress.explain RUN_DIR pid:1234 [FROM [TO]]
"""

from __future__ import annotations

import sys
from pathlib import Path

from .history import load_dir


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    directory = Path(argv[0])
    hist = directory / "history" if (directory / "history").is_dir() else directory
    events = load_dir(hist)
    what = argv[1]
    lo = float(argv[2]) if len(argv) > 2 else float("-inf")
    hi = float(argv[3]) if len(argv) > 3 else float("inf")
    cids: set[tuple[int, str]] = set()
    for e in events:
        if what.startswith("pid:"):
            match = e.get("pid") == int(what[4:]) or e.get("target") == int(what[4:])
        else:
            match = str(e.get("token", "")).startswith(what) or e["ev"] == "fault"
            if match and e["ev"] == "call":
                cids.add((e["pid"], e["cid"]))
            match = match or (e["ev"] == "ret" and (e["pid"], e.get("cid")) in cids)
        if not match or not lo <= e["t"] <= hi:
            continue
        rest = {k: v for k, v in e.items() if k not in ("t", "ev", "pid", "tb")}
        print(f"{e['t']:.3f} {e['pid']} {e['ev']:9} {rest}")
        if e.get("tb"):
            print("    " + str(e["tb"]).replace("\n", "\n    "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
