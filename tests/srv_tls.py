"""Test servers for the security tests: a certificate authority made with the ``openssl`` CLI, and
Debian's redis-server with TLS on a free loopback port (plus its private unix socket for the admin).

    pki = make_pki(tmp_dir)             # ca, a second unrelated ca, server and client certificates
    server = TlsRedis(pki, directory)   # --tls-port on 127.0.0.1, --port 0, client certs required
    server.url                          # rediss://127.0.0.1:PORT (add the CA and client cert options)
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fencelock.embedded import EmbeddedRedis
from servers import free_port

DEBIAN_REDIS = "/usr/bin/redis-server"

T = TypeVar("T")


def private_dir(tag: str) -> Path:
    """A short, fresh directory name (unix socket paths are limited to ~107 bytes)."""
    return Path(f"/tmp/fl-{tag}-{os.getpid()}-{time.monotonic_ns() % 1000000}")


def start_with_retries(start: Callable[[], T], attempts: int = 3) -> T:
    """Start servers on ports picked free a moment earlier; another process on this shared machine
    may take one in between, so try again (with new ports) a few times."""
    for attempt in range(attempts):
        try:
            return start()
        except Exception:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", str(path), cwd=path.parent
    )


def _ca(directory: Path, stem: str, cn: str) -> tuple[Path, Path]:
    key, cert = directory / f"{stem}.key", directory / f"{stem}.crt"
    _key(key)
    # Key usage and key identifiers: Python 3.13 verifies with VERIFY_X509_STRICT, which refuses a CA
    # without keyUsage and a leaf without authorityKeyIdentifier (as strict verifiers elsewhere do).
    _openssl("req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=directory)  # fmt: skip
    return cert, key


def _signed(directory: Path, stem: str, cn: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{stem}.key", directory / f"{stem}.csr", directory / f"{stem}.crt"
    _key(key)
    _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={cn}", cwd=directory)
    extfile = directory / f"{stem}.ext"
    extfile.write_text(
        ext + "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n"
        "keyUsage=critical,digitalSignature,keyAgreement\n"  # EC keys: ECDHE signs, ECDH agrees
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(extfile), cwd=directory,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    """A test CA, a server certificate for 127.0.0.1, a client certificate, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca", "fencelock test CA")
    other, _ = _ca(directory, "other-ca", "some other CA")
    server = _signed(
        directory, "server", "127.0.0.1", ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )  # fmt: skip
    client = _signed(directory, "client", "fencelock-client", ca, "extendedKeyUsage=clientAuth\n")
    return Pki(ca[0], other, server[0], server[1], client[0], client[1])


class TlsRedis:
    """redis-server with TLS only on 127.0.0.1 (``--port 0``: no plain TCP), client certs required."""

    def __init__(self, pki: Pki, directory: Path) -> None:
        self.port = free_port()
        self.pki = pki
        self.server = EmbeddedRedis(
            DEBIAN_REDIS,
            directory=directory,
            extra_args=(
                "--bind", "127.0.0.1",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(pki.server_cert),
                "--tls-key-file", str(pki.server_key),
                "--tls-ca-cert-file", str(pki.ca),
                "--tls-auth-clients", "yes",
            ),
        )  # fmt: skip
        self.server.start()

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}"

    def url_with(self, ca: Path | None = None, cert: bool = True) -> str:
        """The rediss:// URL with redis-py's TLS options in the query string."""
        query = [f"ssl_ca_certs={ca or self.pki.ca}"]
        if cert:
            query += [f"ssl_certfile={self.pki.client_cert}", f"ssl_keyfile={self.pki.client_key}"]
        return self.url + "?" + "&".join(query)

    def stop(self) -> None:
        self.server.stop()
