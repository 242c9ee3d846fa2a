"""fencelock_chaos: the fault harness behind ``fencelock chaos``.

Runs the demo system (lock server, PostgreSQL, competing consumers) under faults injected for
real, records what every process did, checks it, and draws it:

    history     JSON-lines history of operations and the fault log
    checker     pure functions: the invariants over a history and the database's contents
    proxy       loopback TCP proxy that delays, stalls, blackholes or cuts a link
    servers     throwaway PostgreSQL and ZooKeeper servers
    standin     a minimal consumer / racing writer following the demo's contract
    runner      one scenario run: servers, processes, faults, result, verdict
    scenarios   the fault scenarios, and the seeded long tier
    report      timeline (HTML + SVG) and terminal summary
    cli         ``fencelock chaos``

See docs/chaos.md.
"""
