"""Who holds a name and whom a waiter waits for, from one listing of its contenders; no I/O.

Granted. Contenders are served in queue order: a node holds permits when the weights of the live
nodes ahead of it plus its own fit in the limit. The granted nodes are therefore always a prefix of
the queue (if a node fits, every node ahead of it fits, weights being positive), and a granted node
stays granted (nodes ahead of it can only leave; newcomers queue behind). So a reader waits for
every writer ahead of it (a writer weighs the whole limit), a writer for everyone ahead of it, a
mutex for the one node ahead of it, and nobody overtakes a waiter.

Fences. A node's fence is its czxid. Within one parent the sequence order and the czxid order are
both the order of the creates, grants go in sequence order, and several nodes granted by the same
change (the readers behind a writer) are ordered among themselves by sequence: so fences strictly
increase in grant order, whatever the weights.

Limit. Every node of a name carries its limit. A request is refused (``LimitMismatch``) when, right
after its node was created, a live node ahead of it carries another limit. Nodes ahead of a node are
exactly those created before it and still alive, so that check sees every one of them: two nodes
that both passed it never disagree (the later one would have seen the earlier), and a node that
passed it has only nodes of its own limit ahead of it, for as long as it lives.

Waiting (one watch a waiter, no herd). Only a deletion ahead, or the grant of a node ahead, can
grant a waiter. Which one it needs:

1. A node ahead that alone does not fit beside it (``weight > limit - own weight``: for a writer or a
   mutex every node ahead, for a reader every writer) must leave first: it watches the nearest such
   node (the last to go, in queue order), and only its deletion wakes it.
2. Otherwise, when every node ahead holds (the first waiter of a semaphore): any holder leaving may
   let it in, so it watches the parent's children (a holder's deletion wakes this one waiter).
3. Otherwise (behind another waiter of a semaphore): it cannot be granted before the node just
   ahead of it is; it watches that node, which marks its own grant by rewriting its data (its data
   version goes from 0 to 1) when the waiter behind it may be of this kind (``must_signal``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..base import RW_LIMIT
from .naming import Contender

__all__ = ["CHILDREN", "GONE", "GRANT", "Target", "foreign_limit", "granted", "must_signal", "waits_on"]

GONE = "gone"
"""Wait for the node's deletion."""
GRANT = "grant"
"""Wait for the node's deletion or its grant mark (data version >= 1)."""
CHILDREN = "children"
"""Wait for any change among the parent's children."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a waiter watches: ``kind`` and, for ``GONE``/``GRANT``, the child's name."""

    kind: str
    child: str = ""


def granted(order: Sequence[Contender], at: int) -> bool:
    """Does ``order[at]`` hold its permits: do it and every node ahead of it fit in its limit?"""
    total = 0
    for c in order[: at + 1]:
        total += c.weight
    return total <= order[at].limit


def foreign_limit(order: Sequence[Contender], at: int) -> int | None:
    """The limit of the first live node ahead of ``order[at]`` that carries another limit, if any."""
    mine = order[at].limit
    for c in order[:at]:
        if c.limit != mine:
            return c.limit
    return None


def waits_on(order: Sequence[Contender], at: int) -> Target:
    """What ``order[at]``, not granted, watches (see the module docstring)."""
    me = order[at]
    room = me.limit - me.weight
    nearest: Contender | None = None
    ahead = 0
    for c in order[:at]:
        if c.weight > room:
            nearest = c
        ahead += c.weight
    if nearest is not None:
        return Target(GONE, nearest.name)
    if ahead <= me.limit:  # everyone ahead holds: a holder's departure is what we wait for
        return Target(CHILDREN)
    return Target(GRANT, order[at - 1].name)


def must_signal(order: Sequence[Contender], at: int) -> bool:
    """Must ``order[at]``, just found granted, mark it for the waiter behind it (case 3)?

    Only a waiter with no node ahead that could keep it out on its own waits for a grant; if the one
    behind us has such a node ahead now, it had it when it chose what to watch too (nodes ahead only
    leave), so it does not watch for our grant. Never for a mutex (every node ahead is such a node),
    nor for a read-write lock: a reader is kept out only by writers (the readers ahead of it would
    need 2**30 nodes to fill the limit, far more than one parent can list), a writer by anyone."""
    me = order[at]
    if me.limit in (1, RW_LIMIT) or at + 1 >= len(order):
        return False
    behind = order[at + 1]
    room = behind.limit - behind.weight
    return all(c.weight <= room for c in order[: at + 1])
