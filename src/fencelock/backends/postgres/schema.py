"""The lock's tables and SQL functions in one schema (see the package docstring), created on first use.

Every primitive is one call of a ``SECURITY DEFINER`` function owned by the role that created the
schema: a user of the locks needs ``USAGE`` on the schema and nothing else (``EXECUTE`` on new
functions is granted to ``PUBLIC`` by PostgreSQL's default), and cannot read or write the tables
(the tokens in them) directly. Each function pins ``search_path`` to ``pg_catalog, pg_temp`` and
names every table with its schema, so no object of the caller's can stand in for ours.

Serialization: the name's ``fence`` row is the lock of the lock. The common mutex acquire (free,
nobody queued) and release are one ``UPDATE`` of that row, whose row lock (and PostgreSQL's re-check
of the ``WHERE`` after waiting for it) is the mutual exclusion; every other path locks the row
``FOR UPDATE`` first, so the calls on one name take turns and never deadlock (one lock, always taken
first). ``extend`` updates only its own row (the fence row, or a counted lease row).

Durability: unless the backend was made with ``durable=True`` every call that writes commits with
``synchronous_commit = off``, set for its own transaction only by the same statement
(``SELECT ..., set_config('synchronous_commit', 'off', true)``: no session state; a function's own
``SET`` clause would undo it at the function's exit, before the commit). A crash of the *server* may lose the
last grants, renewals or releases (at most ``3 * wal_writer_delay``, 0.6 s by default), never
corrupts anything, and the fence stays increasing through the clock term. See the package docstring.
"""

from __future__ import annotations

import hashlib
import re

from ..._errors import ConfigurationError

__all__ = [
    "DEFAULT_SCHEMA",
    "LAYOUT_VERSION",
    "MISMATCH_BASE",
    "PIN_CLASS",
    "REFRESH_MS",
    "REGISTRATION_MS",
    "channel",
    "check_schema",
    "ddl",
    "stamp",
]

DEFAULT_SCHEMA = "fencelock"
LAYOUT_VERSION = 1
REGISTRATION_MS = 2000
"""How long a waiter counts as alive after its last poll (a waiter polls at least every REFRESH_MS)."""
REFRESH_MS = 500
"""Longest ``retry_after`` told to a waiter: it polls (and so refreshes its registration) this often."""
MISMATCH_BASE = -1001
"""An acquire's answer at or below this refuses the request for its limit: the name's limit is
``-1000 - answer``."""

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


def check_schema(schema: str) -> str:
    """A schema name we create and name in SQL: lower-case letters, digits and ``_`` (at most 41, so
    the notification channel fits PostgreSQL's 63-byte identifiers). Anything else is refused, never
    quoted user text."""
    if not isinstance(schema, str) or not _IDENT.match(schema) or schema.startswith("pg_"):
        raise ConfigurationError(
            f"schema {schema!r} must be a plain lower-case SQL identifier (letters, digits, _; at most 41; "
            "not pg_...), e.g. ?schema=fencelock"
        )
    return schema


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema's locks."""
    return f"fencelock_{schema}"


# Every function body below is formatted with s = the schema (checked by check_schema) and ch = the
# channel; names are data (parameters), never SQL text.
_DDL = r"""
CREATE SCHEMA IF NOT EXISTS {s};

-- One row per name, never deleted: the last fence issued, and the mutex's holder (limit 1) if any.
CREATE TABLE IF NOT EXISTS {s}.fence (
    name text PRIMARY KEY,
    last bigint NOT NULL,
    token text,
    hfence bigint,
    label text,
    expires timestamptz
);

-- The holders of counted names (limit > 1: semaphores, read-write locks), one row each.
CREATE TABLE IF NOT EXISTS {s}.lease (
    name text NOT NULL,
    token text NOT NULL,
    fence bigint NOT NULL,
    label text NOT NULL,
    expires timestamptz NOT NULL,
    weight integer NOT NULL,
    lim integer NOT NULL,
    PRIMARY KEY (name, token)
);

-- The FIFO queue of every name, with what each waiter asks for.
CREATE TABLE IF NOT EXISTS {s}.waiter (
    name text NOT NULL,
    token text NOT NULL,
    since timestamptz NOT NULL,
    alive timestamptz NOT NULL,
    ttl_ms bigint NOT NULL,
    label text NOT NULL,
    weight integer NOT NULL,
    lim integer NOT NULL,
    PRIMARY KEY (name, token)
);
CREATE INDEX IF NOT EXISTS waiter_order ON {s}.waiter (name, since, token);

-- Lock the name's fence row (creating it on first use): the slow paths start here. Returns the row.
CREATE OR REPLACE FUNCTION {s}.lock_name(p_name text, OUT last bigint, OUT token text, OUT hfence bigint,
                                         OUT expires timestamptz)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    SELECT f.last, f.token, f.hfence, f.expires INTO last, token, hfence, expires
    FROM {s}.fence f WHERE f.name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO {s}.fence (name, last) VALUES (p_name, 0) ON CONFLICT (name) DO NOTHING;
        SELECT f.last, f.token, f.hfence, f.expires INTO last, token, hfence, expires
        FROM {s}.fence f WHERE f.name = p_name FOR UPDATE;
    END IF;
END
$f$;

-- Clear what expired and is not pinned by an open fencing.holds() transaction (a shared advisory
-- lock of that transaction; ours is tried, never waited for). Caller holds the fence row lock.
-- Returns false when something expired could not be cleared (it still counts as held).
CREATE OR REPLACE FUNCTION {s}.clear_expired(p_name text, p_now timestamptz) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {s}.fence WHERE name = p_name AND token IS NOT NULL AND expires <= p_now)
       AND NOT EXISTS (SELECT 1 FROM {s}.lease WHERE name = p_name AND expires <= p_now) THEN
        RETURN true;
    END IF;
    IF NOT pg_try_advisory_xact_lock({pin}, hashtext('{s}:' || p_name)) THEN
        RETURN false;
    END IF;
    UPDATE {s}.fence SET token = NULL, hfence = NULL, label = NULL, expires = NULL
    WHERE name = p_name AND token IS NOT NULL AND expires <= p_now;
    DELETE FROM {s}.lease WHERE name = p_name AND expires <= p_now;
    RETURN true;
END
$f$;

-- Hand free permits to the live waiters at the head of the queue, in order, as many as fit; stop at
-- the first that does not (nobody overtakes it). Each grantee gets its own fence, a lease of its own
-- TTL from now, and a notification "<md5(token)> <fence>". Caller holds the fence row lock and has
-- cleared what it could; whatever holder is left counts (expired but pinned ones too).
CREATE OR REPLACE FUNCTION {s}.hand_over(p_name text, p_now timestamptz) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    v_used bigint;
    v_lim integer;
    v_last bigint;
    v_n integer := 0;
    w record;
BEGIN
    SELECT f.last, CASE WHEN f.token IS NULL THEN 0 ELSE 1 END INTO v_last, v_used
    FROM {s}.fence f WHERE f.name = p_name;
    IF v_used > 0 THEN
        v_lim := 1;
    ELSE
        SELECT coalesce(sum(weight), 0), max(lim) INTO v_used, v_lim FROM {s}.lease WHERE name = p_name;
    END IF;
    FOR w IN SELECT token, ttl_ms, label, weight, lim FROM {s}.waiter
             WHERE name = p_name AND alive > p_now ORDER BY since, token LIMIT 256 LOOP
        IF v_lim IS NOT NULL AND w.lim <> v_lim THEN EXIT; END IF;  -- another limit: it will be told
        IF v_used + w.weight > w.lim THEN EXIT; END IF;
        v_last := greatest(v_last + 1, (date_part('epoch', p_now) * 1000000)::bigint);
        IF w.lim = 1 THEN
            UPDATE {s}.fence SET last = v_last, token = w.token, hfence = v_last, label = w.label,
                expires = p_now + w.ttl_ms * interval '1 millisecond'
            WHERE name = p_name;
        ELSE
            UPDATE {s}.fence SET last = v_last WHERE name = p_name;
            INSERT INTO {s}.lease (name, token, fence, label, expires, weight, lim)
            VALUES (p_name, w.token, v_last, w.label, p_now + w.ttl_ms * interval '1 millisecond', w.weight, w.lim);
        END IF;
        DELETE FROM {s}.waiter WHERE name = p_name AND token = w.token;
        PERFORM pg_notify('{ch}', md5(w.token) || ' ' || v_last);
        v_used := v_used + w.weight;
        v_lim := w.lim;
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END
$f$;

-- One attempt. Returns one bigint (a scalar: no row to build and read back):
--   > 0             granted: the fence
--   0               busy, no hint when to ask again
--   -1 .. -1000     busy: ask again in (-result - 1) ms
--   <= -1001        refused: the name is in use with limit (-result - 1000) (LimitMismatch)
CREATE OR REPLACE FUNCTION {s}.acquire(
    p_name text, p_token text, p_ttl_ms bigint, p_label text, p_queue boolean, p_lim integer,
    p_weight integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    v_now timestamptz;
    v_row record;
    v_used bigint := 0;
    v_cur integer := 0;
    v_soonest timestamptz;
    v_since timestamptz;
    v_ahead boolean;
    v_head_lim integer;
    val bigint;
    r record;
BEGIN
    IF p_lim = 1 THEN
        -- The common case in one statement: a free mutex, no waiter row, no counted holders (two
        -- index probes that find nothing). The row lock the UPDATE takes (and its re-check of
        -- "token IS NULL" on the newest row) is the mutual exclusion.
        v_now := clock_timestamp();
        UPDATE {s}.fence f
        SET last = greatest(f.last + 1, (date_part('epoch', v_now) * 1000000)::bigint),
            hfence = greatest(f.last + 1, (date_part('epoch', v_now) * 1000000)::bigint),
            token = p_token, label = p_label, expires = v_now + p_ttl_ms * interval '1 millisecond'
        WHERE f.name = p_name AND f.token IS NULL
          AND NOT EXISTS (SELECT 1 FROM {s}.waiter w WHERE w.name = p_name)
          AND NOT EXISTS (SELECT 1 FROM {s}.lease l WHERE l.name = p_name)
        RETURNING f.last INTO val;
        IF FOUND THEN RETURN val; END IF;
    END IF;
    -- Everything else with the name's row locked: calls on one name take turns from here.
    SELECT * INTO v_row FROM {s}.lock_name(p_name);
    v_now := clock_timestamp();  -- after the lock wait: expiry judged on the server's clock, now
    IF v_row.token = p_token AND v_row.expires > v_now THEN  -- ours already (repeated, or handed over)
        IF p_lim <> 1 THEN RETURN -1001; END IF;
        UPDATE {s}.fence SET expires = v_now + p_ttl_ms * interval '1 millisecond', label = p_label
        WHERE name = p_name;
        DELETE FROM {s}.waiter WHERE name = p_name AND token = p_token;
        RETURN v_row.hfence;
    END IF;
    PERFORM {s}.clear_expired(p_name, v_now);
    DELETE FROM {s}.waiter WHERE name = p_name AND alive <= v_now;  -- crashed waiters (the fast path
    -- above takes any waiter row for a queue, so none may linger)
    SELECT f.last, f.token, f.expires INTO v_row FROM {s}.fence f WHERE f.name = p_name;
    IF v_row.token IS NOT NULL THEN  -- the mutex is held (or expired but pinned)
        v_used := 1;
        v_cur := 1;
        v_soonest := greatest(v_row.expires, v_now + interval '10 milliseconds');
    END IF;
    FOR r IN SELECT token, fence, expires, weight, lim FROM {s}.lease WHERE name = p_name LOOP
        IF r.token = p_token AND r.expires > v_now THEN  -- ours already: refresh and answer again
            IF r.lim <> p_lim THEN RETURN -1000 - r.lim; END IF;
            UPDATE {s}.lease SET expires = v_now + p_ttl_ms * interval '1 millisecond', label = p_label
            WHERE name = p_name AND token = p_token;
            DELETE FROM {s}.waiter WHERE name = p_name AND token = p_token;
            RETURN r.fence;
        END IF;
        v_used := v_used + r.weight;
        v_cur := r.lim;
        v_soonest := least(v_soonest, greatest(r.expires, v_now + interval '10 milliseconds'));
    END LOOP;
    IF v_cur <> 0 AND v_cur <> p_lim THEN RETURN -1000 - v_cur; END IF;
    SELECT since INTO v_since FROM {s}.waiter WHERE name = p_name AND token = p_token;
    IF v_cur = 0 THEN  -- nobody holds: the queue binds the limit
        SELECT lim INTO v_head_lim FROM {s}.waiter WHERE name = p_name AND alive > v_now AND token <> p_token
        ORDER BY since, token LIMIT 1;
        IF v_head_lim IS NOT NULL AND v_head_lim <> p_lim THEN RETURN -1000 - v_head_lim; END IF;
    END IF;
    SELECT EXISTS (SELECT 1 FROM {s}.waiter WHERE name = p_name AND alive > v_now AND token <> p_token
                   AND (v_since IS NULL OR (since, token) < (v_since, p_token))) INTO v_ahead;
    IF v_used + p_weight <= p_lim AND NOT v_ahead THEN
        val := greatest(v_row.last + 1, (date_part('epoch', v_now) * 1000000)::bigint);
        IF p_lim = 1 THEN
            UPDATE {s}.fence SET last = val, token = p_token, hfence = val, label = p_label,
                expires = v_now + p_ttl_ms * interval '1 millisecond'
            WHERE name = p_name;
        ELSE
            UPDATE {s}.fence SET last = val WHERE name = p_name;
            INSERT INTO {s}.lease (name, token, fence, label, expires, weight, lim)
            VALUES (p_name, p_token, val, p_label, v_now + p_ttl_ms * interval '1 millisecond', p_weight, p_lim);
        END IF;
        IF v_since IS NOT NULL THEN
            DELETE FROM {s}.waiter WHERE name = p_name AND token = p_token;
            IF v_used + p_weight < p_lim THEN PERFORM {s}.hand_over(p_name, v_now); END IF;
        END IF;
        RETURN val;
    END IF;
    IF v_ahead AND v_used + p_weight <= p_lim THEN
        -- Room, but live waiters came first: let them in now (their wait ends), then queue behind them.
        DELETE FROM {s}.waiter WHERE name = p_name AND alive <= v_now;
        PERFORM {s}.hand_over(p_name, v_now);
    END IF;
    IF p_queue THEN
        INSERT INTO {s}.waiter (name, token, since, alive, ttl_ms, label, weight, lim)
        VALUES (p_name, p_token, v_now, v_now + interval '{registration} milliseconds', p_ttl_ms, p_label,
                p_weight, p_lim)
        ON CONFLICT (name, token) DO UPDATE SET alive = excluded.alive, ttl_ms = excluded.ttl_ms,
            label = excluded.label, weight = excluded.weight, lim = excluded.lim;
    END IF;
    IF v_soonest IS NULL THEN
        RETURN 0;
    END IF;
    RETURN -1 - least({refresh}, greatest(0, ceil(extract(epoch FROM v_soonest - v_now) * 1000)))::bigint;
END
$f$;

-- true if the token held a live lease and now lasts p_ttl_ms from now; false (nothing changed) else.
CREATE OR REPLACE FUNCTION {s}.extend(p_name text, p_token text, p_ttl_ms bigint)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    UPDATE {s}.fence SET expires = clock_timestamp() + p_ttl_ms * interval '1 millisecond'
    WHERE name = p_name AND token = p_token AND expires > clock_timestamp();
    IF FOUND THEN RETURN true; END IF;
    UPDATE {s}.lease SET expires = clock_timestamp() + p_ttl_ms * interval '1 millisecond'
    WHERE name = p_name AND token = p_token AND expires > clock_timestamp();
    RETURN FOUND;
END
$f$;

-- true if the token held a live lease, now released (and its permits handed to the waiters that fit).
CREATE OR REPLACE FUNCTION {s}.release(p_name text, p_token text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    v_now timestamptz;
    v_queued boolean;
BEGIN
    v_now := clock_timestamp();
    -- The mutex: one UPDATE of its row (which it keeps locked for the handoff below), which also
    -- says whether anyone is queued.
    UPDATE {s}.fence SET token = NULL, hfence = NULL, label = NULL, expires = NULL
    WHERE name = p_name AND token = p_token AND expires > v_now
    RETURNING EXISTS (SELECT 1 FROM {s}.waiter WHERE name = p_name) INTO v_queued;
    IF NOT FOUND THEN
        PERFORM {s}.lock_name(p_name);
        v_now := clock_timestamp();
        DELETE FROM {s}.lease WHERE name = p_name AND token = p_token AND expires > v_now;
        IF NOT FOUND THEN RETURN false; END IF;
        v_queued := EXISTS (SELECT 1 FROM {s}.waiter WHERE name = p_name);
    END IF;
    IF v_queued THEN
        PERFORM {s}.clear_expired(p_name, v_now);
        DELETE FROM {s}.waiter WHERE name = p_name AND alive <= v_now;
        PERFORM {s}.hand_over(p_name, v_now);
    END IF;
    RETURN true;
END
$f$;

-- Leave the queue; drop our lease if one was granted or handed over unseen; pass the permits on.
CREATE OR REPLACE FUNCTION {s}.abandon(p_name text, p_token text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    v_now timestamptz;
    v_changed boolean := false;
BEGIN
    PERFORM {s}.lock_name(p_name);
    v_now := clock_timestamp();
    DELETE FROM {s}.waiter WHERE name = p_name AND token = p_token;
    v_changed := FOUND;
    UPDATE {s}.fence SET token = NULL, hfence = NULL, label = NULL, expires = NULL
    WHERE name = p_name AND token = p_token;
    v_changed := v_changed OR FOUND;
    DELETE FROM {s}.lease WHERE name = p_name AND token = p_token;
    v_changed := v_changed OR FOUND;
    IF v_changed AND EXISTS (SELECT 1 FROM {s}.waiter WHERE name = p_name) THEN
        PERFORM {s}.clear_expired(p_name, v_now);
        DELETE FROM {s}.waiter WHERE name = p_name AND alive <= v_now;
        PERFORM {s}.hand_over(p_name, v_now);
    END IF;
END
$f$;

-- The fence of the token's live lease (handed over while it waited), or null.
CREATE OR REPLACE FUNCTION {s}.granted(p_name text, p_token text) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
    SELECT coalesce(
        (SELECT hfence FROM {s}.fence WHERE name = p_name AND token = p_token AND expires > clock_timestamp()),
        (SELECT fence FROM {s}.lease WHERE name = p_name AND token = p_token AND expires > clock_timestamp()))
$f$;

-- Live holders, oldest grant first: fence, label, ms left, weight, limit, live waiters.
CREATE OR REPLACE FUNCTION {s}.inspect(p_name text)
RETURNS TABLE (fence bigint, label text, left_ms bigint, weight integer, lim integer, waiters bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
    WITH holders AS (
        SELECT f.hfence AS fence, f.label, f.expires, 1 AS weight, 1 AS lim FROM {s}.fence f
        WHERE f.name = p_name AND f.token IS NOT NULL AND f.expires > clock_timestamp()
        UNION ALL
        SELECT l.fence, l.label, l.expires, l.weight, l.lim FROM {s}.lease l
        WHERE l.name = p_name AND l.expires > clock_timestamp()
    )
    SELECT h.fence, h.label, greatest(0, ceil(extract(epoch FROM h.expires - clock_timestamp()) * 1000))::bigint,
           h.weight, h.lim,
           (SELECT count(*) FROM {s}.waiter w WHERE w.name = p_name AND w.alive > clock_timestamp())
    FROM holders h ORDER BY h.fence
$f$;

CREATE OR REPLACE FUNCTION {s}.last_fence(p_name text) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
    SELECT coalesce((SELECT last FROM {s}.fence WHERE name = p_name), 0)
$f$;

-- Operator's override: drop every lease of the name; returns the live holders' labels or null.
-- It first waits for the fencing.holds() transactions in flight on the name (their pin, taken
-- exclusively; before the row lock, so nothing else queues behind it meanwhile): their writes
-- commit before anyone else can be granted the name, as holds() promised them.
CREATE OR REPLACE FUNCTION {s}.force_release(p_name text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    v_labels text;
BEGIN
    PERFORM pg_advisory_xact_lock({pin}, hashtext('{s}:' || p_name));
    PERFORM {s}.lock_name(p_name);
    SELECT string_agg(label, ', ' ORDER BY fence) INTO v_labels FROM {s}.inspect(p_name);
    UPDATE {s}.fence SET token = NULL, hfence = NULL, label = NULL, expires = NULL WHERE name = p_name;
    DELETE FROM {s}.lease WHERE name = p_name;
    PERFORM {s}.hand_over(p_name, clock_timestamp());
    RETURN v_labels;
END
$f$;

-- fencing.holds(): inside the caller's write transaction, is this lease still the live holder's?
-- Pins the name until that transaction ends: a shared advisory lock, transaction-scoped (nothing is
-- left when it ends), which a takeover of an expired lease tries to take exclusively and, failing,
-- treats the lease as held. Renewals and the holder's release do not look at it. The check runs in
-- its own statement, after the pin: its snapshot sees every takeover committed before the pin.
CREATE OR REPLACE FUNCTION {s}.holds(p_name text, p_token text, p_fence bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({pin}, hashtext('{s}:' || p_name));
    RETURN EXISTS (SELECT 1 FROM {s}.fence WHERE name = p_name AND token = p_token AND hfence = p_fence
                   AND expires > clock_timestamp())
        OR EXISTS (SELECT 1 FROM {s}.lease WHERE name = p_name AND token = p_token AND fence = p_fence
                   AND expires > clock_timestamp());
END
$f$;

CREATE OR REPLACE FUNCTION {s}.layout() RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $f$ SELECT {version} $f$;

-- The stamp of these exact function bodies (see stamp() in schema.py): every call names it, so a
-- client of another fencelock version finds it missing and brings the functions up to date first.
-- Other versions' stamps go: the bodies are ours now, and their clients will reinstall theirs.
DO $d$
DECLARE f record;
BEGIN
    FOR f IN SELECT p.proname FROM pg_catalog.pg_proc p
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = '{s}' AND p.proname LIKE 'layout\_%' AND p.proname <> '{stamp}' LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION %I.%I()', '{s}', f.proname);
    END LOOP;
END
$d$;
CREATE OR REPLACE FUNCTION {s}.{stamp}() RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $f$ SELECT true $f$;

-- Internal helpers: only the SECURITY DEFINER functions (running as the owner) call them. The
-- operator's override is the owner's to grant (GRANT EXECUTE ON FUNCTION {s}.force_release(text)).
REVOKE ALL ON FUNCTION {s}.lock_name(text), {s}.clear_expired(text, timestamptz),
    {s}.hand_over(text, timestamptz), {s}.force_release(text) FROM PUBLIC;
"""

PIN_CLASS = 0x666C6B70
"""First key of the transaction-scoped advisory locks ``holds`` pins a name with ("flkp"); the second
is ``hashtext('<schema>:<name>')``. Two names that share a hash only delay each other's takeovers."""


def _format(s: str, stamp: str) -> str:
    return _DDL.format(
        s=s,
        ch=channel(s),
        registration=REGISTRATION_MS,
        refresh=REFRESH_MS,
        version=LAYOUT_VERSION,
        pin=PIN_CLASS,
        stamp=stamp,
    )


_STAMP = "layout_" + hashlib.sha1(_format("{s}", "{stamp}").encode()).hexdigest()[:16]
"""The name of a function that exists in a schema exactly when its function bodies are this
version's: a digest of the DDL, so any change to a body changes it."""


def stamp(schema: str) -> str:
    """A condition every call adds (``... WHERE <stamp>``): PostgreSQL resolves the function when it
    parses the statement, so in a schema whose functions another fencelock version wrote (or none
    yet) the call fails before anything runs, and the backend recreates the functions (``CREATE OR
    REPLACE``) and asks again. No extra round trip; without it a library upgrade kept the old bodies
    for ever, since the functions were created only when one was missing."""
    return f"{check_schema(schema)}.{_STAMP}()"


def ddl(schema: str) -> str:
    """The statements that create (or bring up to date) the layout in ``schema``."""
    return _format(check_schema(schema), _STAMP)
