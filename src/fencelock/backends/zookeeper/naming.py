"""Node names: one parent per lock name, one child per contender (see the package docstring).

A contender's child name says everything another client needs to place it in the queue, so one
``get_children`` is a whole view of the name: whose it is (a hash of the token), its limit and
weight (absent for a mutex, whose names keep their original form), and its place (the sequence).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import quote

__all__ = ["Contender", "child_prefix", "contenders", "encode_name", "lock_parent", "queue_order", "token_tag"]

_CHILD = re.compile(r"^c-([0-9a-f]{32})-(?:L([1-9][0-9]{0,9})W([1-9][0-9]{0,9})-)?([0-9]{10})$")


def encode_name(name: str) -> str:
    """One path segment per lock name, injective: ``L`` + percent-encoding, or ``H`` + SHA-256."""
    encoded = "L" + quote(name, safe="")
    if len(encoded) > 200:  # keep paths short; the prefix letter keeps the two forms apart
        encoded = "H" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return encoded


def lock_parent(root: str, name: str) -> str:
    """The parent node of lock ``name`` (its contenders are its children)."""
    return f"{root}/{encode_name(name)}"


def token_tag(token: str) -> str:
    """What a node carries of its token: a hash (anyone who may list the parent sees the names)."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def child_prefix(tag: str, limit: int, weight: int) -> str:
    """The name a contender asks ZooKeeper for; the server appends the 10-digit sequence."""
    if limit == 1:
        return f"c-{tag}-"  # a mutex: the original form, which every fencelock version reads
    return f"c-{tag}-L{limit}W{weight}-"


@dataclass(frozen=True, slots=True)
class Contender:
    """One child of a lock's parent, as its name tells it."""

    name: str
    tag: str
    limit: int
    weight: int
    seq: int


def contenders(children: list[str]) -> list[Contender]:
    """The contender nodes among ``children``, in queue order (lowest sequence first). Children
    that are not ours (another tool's, or a malformed weight) are ignored."""
    found = []
    for child in children:
        m = _CHILD.match(child)
        if m is None:
            continue
        tag, limit, weight, seq = m.groups()
        if limit is None:
            found.append(Contender(child, tag, 1, 1, int(seq)))
        elif int(weight) <= int(limit):
            found.append(Contender(child, tag, int(limit), int(weight), int(seq)))
    found.sort(key=lambda c: c.seq)
    return found


def queue_order(children: list[str]) -> list[str]:
    """The names of our contender nodes in queue order (lowest sequence first)."""
    return [c.name for c in contenders(children)]
