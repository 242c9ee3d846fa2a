"""``zk://`` URLs: kazoo's arguments plus fencelock's own options (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..._errors import ConfigurationError

__all__ = ["DEFAULT_ROOT", "DEFAULT_SESSION_TIMEOUT", "DEFAULT_TIMEOUT", "ZkSettings", "check_root", "parse_zk_url"]

DEFAULT_ROOT = "/fencelock"
DEFAULT_SESSION_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 3.0

_TLS_BOOL = ("use_ssl", "verify_certs", "check_hostname")
_TLS_STR = ("ca", "certfile", "keyfile", "keyfile_password")


@dataclass(frozen=True)
class ZkSettings:
    """What ``from_url`` parsed: kazoo's arguments plus fencelock's own options."""

    hosts: str
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT
    root: str = DEFAULT_ROOT
    auth: tuple[str, str] | None = None
    tls: dict[str, Any] = field(default_factory=dict)


def _positive(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0 or number == float("inf"):
        raise ConfigurationError(f"zk:// option {name} must be a positive number of seconds, got {value!r}")
    return number


def check_root(root: str) -> str:
    """``root`` if it is an absolute node path (``/fencelock``), else ``ConfigurationError``."""
    if (
        not root.startswith("/")
        or root.endswith("/")
        or "//" in root
        or any(part in (".", "..") for part in root.split("/")[1:])
    ):
        raise ConfigurationError(f"zk:// option root must be an absolute node path like /fencelock, got {root!r}")
    return root


def parse_zk_url(url: str) -> ZkSettings:
    """Parse ``zk://[user:pass@]host:port[,host:port][/chroot][?options]`` (see the package docstring)."""
    if not isinstance(url, str) or not url.startswith(("zk://", "zookeeper://")):
        raise ConfigurationError(f"not a ZooKeeper URL: use zk://host:port[,host:port]/chroot, got {url!r}")
    parts = urlsplit(url)
    netloc = parts.netloc
    auth = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, sep, password = userinfo.partition(":")
        if not sep or not user:
            raise ConfigurationError("zk:// credentials must be user:password@ (digest auth)")
        auth = (unquote(user), unquote(password))
    if not netloc:
        raise ConfigurationError("zk:// URL names no server: use zk://host:port[,host:port]")
    for host_port in netloc.split(","):
        host, sep, port = host_port.rpartition(":")
        if not host_port or (sep and not port.isdigit()) or (sep and not host):
            raise ConfigurationError(f"zk:// URL has a bad host:port {host_port!r}")
        if sep and not 1 <= int(port) <= 65535:
            raise ConfigurationError(f"zk:// URL has a bad port in {host_port!r}: it must be from 1 to 65535")
    chroot = parts.path.rstrip("/")
    if chroot and (not chroot.startswith("/") or "//" in chroot):
        raise ConfigurationError(f"zk:// chroot must be a node path like /apps/locks, got {parts.path!r}")
    settings: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        value = values[-1]
        if key in ("session_timeout", "timeout"):
            settings[key] = _positive(key, value)
        elif key == "root":
            settings["root"] = check_root(value)
        elif key in _TLS_BOOL:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigurationError(f"zk:// option {key} must be true or false, got {value!r}")
            tls[key] = value.lower() in ("true", "1", "yes")
        elif key in _TLS_STR:
            tls[key] = value
        else:
            raise ConfigurationError(
                f"unknown zk:// option {key!r}: use session_timeout, timeout, root, "
                "use_ssl, verify_certs, check_hostname, ca, certfile, keyfile, keyfile_password"
            )
    return ZkSettings(hosts=netloc + chroot, auth=auth, tls=tls, **settings)
