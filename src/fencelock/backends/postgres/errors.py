"""psycopg's exceptions translated into fencelock's error tree, in one place."""

from __future__ import annotations

from ..._errors import AuthenticationFailed, BackendError, BackendRejected, BackendUnavailable

__all__ = ["map_errors", "missing_privilege", "translate"]


class map_errors:  # used like a function: ``with map_errors("acquire", schema):``
    """Translate psycopg's exceptions (a class, not ``@contextmanager``: it wraps every call)."""

    __slots__ = ("schema", "what")

    def __init__(self, what: str, schema: str) -> None:
        self.what = what
        self.schema = schema

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, err: BaseException | None, tb: object) -> None:
        if err is None or not isinstance(err, Exception) or isinstance(err, BackendError):
            return
        translated = translate(err, self.what, self.schema)
        if translated is not None:
            raise translated from err


def missing_privilege(msg: str, what: str, schema: str) -> str:
    """What the role lacks, from PostgreSQL's "permission denied for ..." message and what we did."""
    if what == "create schema":
        return (
            f"CREATE on the database to create schema {schema} on first use (or have its owner create it "
            f"once: fencelock creates it on its first call, then GRANT USAGE ON SCHEMA {schema} TO <role>)"
        )
    if "for schema" in msg:
        return f"USAGE on schema {schema} (GRANT USAGE ON SCHEMA {schema} TO <role>)"
    if "force_release" in msg:
        grant = f"GRANT EXECUTE ON FUNCTION {schema}.force_release(text) TO <role>"
        return f"EXECUTE on {schema}.force_release, the operator's override ({grant})"
    if "for function" in msg:
        grant = f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO <role>"
        return f"EXECUTE on the functions of schema {schema} ({grant})"
    if "for database" in msg:
        return "CONNECT on the database (GRANT CONNECT ON DATABASE <db> TO <role>)"
    return f"USAGE on schema {schema} and EXECUTE on its functions (see docs/postgres.md, Privileges)"


def translate(err: Exception, what: str, schema: str) -> BackendError | None:
    """The fencelock error for ``err``, its message on one line (libpq's own messages span lines:
    "... Connection refused\n\tIs the server running on that host ...?")."""
    found = _translate(err, what, schema)
    if found is not None:
        found.args = tuple(" ".join(a.split()) if isinstance(a, str) else a for a in found.args)
    return found


def _translate(err: Exception, what: str, schema: str) -> BackendError | None:
    import psycopg
    from psycopg import errors as pe

    if isinstance(err, pe.InvalidPassword) or isinstance(err, pe.InvalidAuthorizationSpecification):
        return AuthenticationFailed(f"postgresql refused our credentials during {what}: {err}")
    if isinstance(err, pe.InsufficientPrivilege):
        msg = str(err).strip()
        need = missing_privilege(msg, what, schema)
        return BackendRejected(f"postgresql refused {what}: {msg}; the role needs {need}")
    if isinstance(err, pe.ReadOnlySqlTransaction):
        return BackendRejected(
            f"postgresql refused {what}: {str(err).strip()}; this server is a read-only standby (or "
            "default_transaction_read_only is on): point the lock URL at the primary"
        )
    if isinstance(err, (pe.QueryCanceled, pe.LockNotAvailable)):
        return BackendUnavailable(f"postgresql did not answer {what} in time: {str(err).strip()}")
    if isinstance(err, pe.OperationalError) or isinstance(err, psycopg.InterfaceError):
        msg = str(err).strip()
        if "password authentication failed" in msg or "no password supplied" in msg:
            return AuthenticationFailed(f"postgresql refused our credentials during {what}: {msg}")
        if "permission denied" in msg:
            return BackendRejected(f"postgresql refused {what}: {msg}; the role needs CONNECT on the database")
        return BackendUnavailable(f"postgresql unreachable during {what}: {msg}")
    if isinstance(err, OSError):
        return BackendUnavailable(f"postgresql unreachable during {what}: {err}")
    if isinstance(err, psycopg.Error):
        return BackendRejected(f"postgresql refused {what}: {str(err).strip()}")
    return None
