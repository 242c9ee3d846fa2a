"""``fencing.fence_key_for``: one fence key per data key, in the data key's Redis Cluster slot, and
never usable as a data key by ``fenced_set``.

What must hold, for any data keys ``a != b`` that have a default fence key:

- ``fence_key_for(a) != fence_key_for(b)``: no two data keys share a fence (one-to-one);
- ``fence_key_for(a)`` is in the slot of ``a`` (a fenced SET touches both keys in one script);
- ``fenced_set`` refuses ``fence_key_for(a)`` as a data key, so a data key never equals another
  key's fence key in a fenced write (and a data key it accepts is nobody's fence key).

Checked over many generated keys with Hypothesis (the slot by redis-py's ``key_slot``), and the slot
rule once more against a real cluster-enabled redis-server (``CLUSTER KEYSLOT``) for awkward keys.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from fencelock import ConfigurationError, fencing
from fencelock.embedded import EmbeddedRedis

DEBIAN_REDIS = "/usr/bin/redis-server"

# Braces, percent signs and the layout's own ':fence' in short keys, so that collisions are likely
# if they are possible; plus any text at all.
AWKWARD = st.text(alphabet="{}%:fenc7a\u00e9\n", max_size=14)
KEYS = st.one_of(AWKWARD, st.text(max_size=24))
# Names shaped like fence keys, to exercise reading one backwards.
FENCE_SHAPED = st.builds(
    lambda tag, pre, post, form: f"{{{tag}}}:fence" if form else f"{{{tag}}}:fence:{pre}{{}}{post}",
    AWKWARD, AWKWARD, AWKWARD, st.booleans(),
)

# fenced_set refuses a bad key before any I/O: this client is never connected.
NEVER_CONNECTED = redis.Redis(unix_socket_path="/nonexistent/never-used.sock")

SETTINGS = settings(max_examples=600, deadline=None, database=None)


def fence_key(key: str) -> str | None:
    try:
        return fencing.fence_key_for(key)
    except ConfigurationError:
        return None


def has_tag(key: str) -> bool:
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return end > start + 1


@SETTINGS
@given(st.lists(st.one_of(KEYS, FENCE_SHAPED), unique=True, max_size=40))
def test_distinct_data_keys_have_distinct_fence_keys(keys: list[str]) -> None:
    fence_keys = [f for f in map(fence_key, keys) if f is not None]
    assert len(set(fence_keys)) == len(fence_keys)


@SETTINGS
@given(KEYS, KEYS)
def test_a_key_built_from_another_keys_fence_key_gets_a_fence_of_its_own(key: str, extra: str) -> None:
    """The reviewer's shape, generalised: keys made of another key's fence key (with more around it)."""
    own = fence_key(key)
    assume(own is not None)
    for other in (own, f"{{{own}}}", own + extra, extra + own, f"{extra}{{{key}}}"):
        if other != key:
            assert fence_key(other) != own


@SETTINGS
@given(KEYS)
def test_fence_key_is_in_the_data_keys_slot(key: str) -> None:
    fkey = fence_key(key)
    assume(fkey is not None)
    assert key_slot(fkey.encode()) == key_slot(key.encode())


@SETTINGS
@given(KEYS)
def test_only_keys_no_tag_can_share_a_slot_with_are_refused(key: str) -> None:
    """Refused: the empty key, and keys Redis hashes whole that contain a '}' (no tag can hold one)."""
    refused = key == "" or (not has_tag(key) and "}" in key)
    assert (fence_key(key) is None) == refused


@SETTINGS
@given(KEYS)
def test_every_fence_key_is_refused_as_a_data_key(key: str) -> None:
    fkey = fence_key(key)
    assume(fkey is not None)
    assert fencing._fence_key_owner(fkey) == key
    with pytest.raises(ConfigurationError, match="is the fence key of data key"):
        fencing.fenced_set(NEVER_CONNECTED, fkey, "v", 1)


@SETTINGS
@given(st.one_of(KEYS, FENCE_SHAPED))
def test_a_name_taken_for_a_fence_key_is_one(name: str) -> None:
    """The other direction: whatever fenced_set refuses as "the fence key of X" is X's fence key
    (nothing else is reserved), and whatever it accepts is nobody's."""
    owner = fencing._fence_key_owner(name)
    if owner is not None:
        assert fencing.fence_key_for(owner) == name


def test_fence_key_layout_examples() -> None:
    assert fencing.fence_key_for("plain") == "{plain}:fence"
    assert fencing.fence_key_for("{user:1}:balance") == "{user:1}:fence:{}:balance"
    assert fencing.fence_key_for("x{a}") == "{a}:fence:x{}"
    assert fencing.fence_key_for("{a}") == "{a}:fence:{}"
    assert fencing.fence_key_for("50%{a}{b}") == "{a}:fence:50%25{}%7Bb%7D"
    assert fencing.fence_key_for("a{b") == "{a{b}:fence"  # no '}': hashed whole, the whole key is the tag
    for bad in ("", "a}b", "{}x", "}{"):
        with pytest.raises(ConfigurationError, match="fence_key="):
            fencing.fence_key_for(bad)


# -- the slot rule on a real server -------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """One cluster-enabled redis-server (no slots assigned: it stores nothing, but answers
    CLUSTER KEYSLOT, which a standalone server refuses)."""
    directory = Path(tmp_path_factory.mktemp("keyslot"))
    server = EmbeddedRedis(
        DEBIAN_REDIS, directory=directory,
        extra_args=("--cluster-enabled", "yes", "--cluster-config-file", str(directory / "nodes.conf")),
    ).start()
    client = server.client(socket_timeout=10)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def test_fence_keys_share_the_slot_on_a_real_cluster_node(cluster_node: redis.Redis) -> None:
    rng = random.Random(11)
    alphabet = "{}%:ab\u00e9 "
    keys = ["plain", "{user:1}:balance", "x{a}", "{a}", "a{b", "{{a}}", "{a}{b}", "a{b}c{d}", "%7B", "\u00e9{\u00e9}"]
    keys += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))) for _ in range(300)]
    checked = 0
    for key in keys:
        fkey = fence_key(key)
        if fkey is None:
            continue
        slot = cluster_node.execute_command("CLUSTER", "KEYSLOT", key)
        assert cluster_node.execute_command("CLUSTER", "KEYSLOT", fkey) == slot, (key, fkey)
        assert key_slot(key.encode()) == slot, "redis-py's key_slot (used above) agrees with the server"
        checked += 1
    assert checked > 150  # most random keys have a default fence key
