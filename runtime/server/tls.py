"""TLS material for the servers: read and check PEM files once, hand each frontend its form.

One place reads the certificate, key and root files named by the flags, so every endpoint
(gRPC on either frontend, the metrics port, HTTP/REST) fails the same way on a
bad file: a message naming the file, and `serve` exits 1. Rotation: the grpc.aio frontend
asks `CertificateReloader` on each new connection, which re-reads the files when their
mtime or size changed and keeps the previous pair when the new one does not check out (a
half-copied file); `ssl_server_context` gives an `ssl.SSLContext` for HTTP servers, and
`RotatingServerContext` one whose certificate follows the files for the HTTP/REST endpoint.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger(__name__)


class TlsConfigError(ValueError):
    """A certificate, key or root file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    """The files one endpoint's TLS is made of, with the flags that named them (for errors)."""

    cert: Path
    key: Path
    root: Path | None = None
    mutual: bool = False
    cert_flag: str = "--grpc-server-cert"
    key_flag: str = "--grpc-server-key"
    root_flag: str = "--grpc-root-cert"


@dataclass(frozen=True)
class TlsMaterial:
    """Checked PEM bytes: the key matches the certificate, the root parses."""

    cert: bytes
    key: bytes
    root: bytes | None


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{flag} '{path}': cannot read: {exc.strerror or exc}") from None
    if not data.strip():
        raise TlsConfigError(f"{flag} '{path}': the file is empty")
    return data


def load(files: TlsFiles) -> TlsMaterial:
    """Read and check the files; TlsConfigError names the file at fault."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    if files.mutual and files.root is None:
        raise TlsConfigError(
            f"mutual TLS needs {files.root_flag}: the CA that signs client certificates"
        )
    cert_pem = _read(files.cert, files.cert_flag)
    key_pem = _read(files.key, files.key_flag)
    root_pem = _read(files.root, files.root_flag) if files.root is not None else None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsConfigError(
            f"{files.cert_flag} '{files.cert}': not a PEM certificate: {exc}"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise TlsConfigError(
            f"{files.key_flag} '{files.key}': not an unencrypted PEM private key: {exc}"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, public) != key.public_key().public_bytes(der, public):
        raise TlsConfigError(
            f"{files.key_flag} '{files.key}' does not match the certificate in "
            f"{files.cert_flag} '{files.cert}'"
        )
    if root_pem is not None:
        try:
            x509.load_pem_x509_certificates(root_pem)
        except ValueError as exc:
            raise TlsConfigError(
                f"{files.root_flag} '{files.root}': not a PEM certificate: {exc}"
            ) from None
    return TlsMaterial(cert_pem, key_pem, root_pem)


def _stamp(files: TlsFiles) -> tuple[object, ...]:
    out: list[object] = []
    for path in (files.cert, files.key, files.root):
        if path is None:
            continue
        try:
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


class CertificateReloader:
    """Current TLS material; `changed()` re-reads it when the files changed on disk."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.material = load(files)  # NOTE: at start-up a bad file is fatal, later it is not
        self._stamp = _stamp(files)
        self._refused: tuple[object, ...] | None = None  # files seen broken: warn once
        self._lock = threading.Lock()

    def changed(self) -> TlsMaterial | None:
        """New checked material when the files changed since the last look, else None."""
        stamp = _stamp(self.files)
        with self._lock:
            if stamp in (self._stamp, self._refused):
                return None
            try:
                material = load(self.files)
            except TlsConfigError as exc:  # NOTE: mid-copy; retried once the files change
                self._refused = stamp
                LOGGER.warning("TLS files changed but cannot be used yet (keeping the old "
                               "ones): %s", exc)  # fmt: skip
                return None
            self._stamp = stamp
            self.material = material
        LOGGER.info("TLS certificate reloaded from %s", self.files.cert)
        return material


def grpc_files(settings: Any) -> TlsFiles | None:
    """The gRPC endpoint's TLS files from the settings (Triton's flags), or None for
    plaintext. --grpc-use-ssl-mutual implies --grpc-use-ssl, as in tritonserver."""
    if not (settings.grpc_use_ssl or settings.grpc_use_ssl_mutual):
        return None
    if settings.grpc_server_cert is None or settings.grpc_server_key is None:
        raise TlsConfigError("--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key")
    return TlsFiles(
        settings.grpc_server_cert, settings.grpc_server_key, settings.grpc_root_cert,
        settings.grpc_use_ssl_mutual,
    )  # fmt: skip


def http_files(settings: Any) -> TlsFiles | None:
    """The HTTP/REST endpoint's TLS files, or None for plaintext. tritonserver has no HTTP
    TLS flags; ours mirror the gRPC ones, and each --http-* file flag left unset takes the
    matching --grpc-* file (one host certificate for both ports is the usual case). Errors
    name the flag whose file was used. --http-use-ssl-mutual implies --http-use-ssl; each
    left unset follows gRPC's (runtime.settings.http_use_ssl)."""
    from runtime.settings import http_use_ssl

    use_ssl, mutual = http_use_ssl(settings)
    if not use_ssl:
        return None

    def pick(name: str) -> tuple[Path | None, str]:
        flag = "-" + name.replace("_", "-")
        own, grpc_file = getattr(settings, "http_" + name), getattr(settings, "grpc_" + name)
        if own is None and grpc_file is not None:
            return grpc_file, "--grpc" + flag
        return own, "--http" + flag

    (cert, cert_flag), (key, key_flag) = pick("server_cert"), pick("server_key")
    root, root_flag = pick("root_cert")
    if cert is None or key is None:
        raise TlsConfigError("--http-use-ssl needs --http-server-cert and --http-server-key "
                             "(or --grpc-server-cert and --grpc-server-key)")  # fmt: skip
    return TlsFiles(cert, key, root, mutual, cert_flag, key_flag, root_flag)


def metrics_context(settings: Any) -> ssl.SSLContext | None:
    """The metrics port's SSLContext from --metrics-ssl-*, or None for plain HTTP."""
    cert, key = settings.metrics_ssl_cert, settings.metrics_ssl_key
    root = settings.metrics_ssl_root_cert
    if cert is None and key is None and root is None:
        return None
    if cert is None or key is None:
        raise TlsConfigError("--metrics-ssl-cert and --metrics-ssl-key go together")
    return ssl_server_context(TlsFiles(
        cert, key, root, mutual=root is not None, cert_flag="--metrics-ssl-cert",
        key_flag="--metrics-ssl-key", root_flag="--metrics-ssl-root-cert",
    ))  # fmt: skip


def grpc_server_credentials(reloader: CertificateReloader) -> Any:
    """grpc.aio credentials that pick up rotated files on the next new connection."""
    import grpc

    def config(material: TlsMaterial) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert)], root_certificates=material.root
        )

    def fetch() -> Any:  # NOTE: grpc calls this for every new connection's handshake
        material = reloader.changed()
        return None if material is None else config(material)

    return grpc.dynamic_ssl_server_credentials(
        config(reloader.material), fetch, require_client_authentication=reloader.files.mutual
    )


def ssl_server_context(files: TlsFiles, check: bool = True) -> ssl.SSLContext:
    """An SSLContext for an HTTP server (metrics, HTTP/REST); files checked first, so a bad
    one fails with its name rather than an OpenSSL code."""
    if check:
        load(files)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # NOTE: no session resumption (tickets in TLS 1.2 and 1.3): a resumed session skips the
    # client certificate check, so a client cut off by rotating the CA could come back
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    context.load_cert_chain(str(files.cert), str(files.key))
    if files.root is not None:
        context.load_verify_locations(cafile=str(files.root))
    if files.mutual:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class RotatingServerContext:
    """The HTTPS endpoint's SSLContext, whose certificate follows the files without a restart.

    `context` is what the server listens with; its `sni_callback` runs in every TLS handshake
    (OpenSSL calls it on each ClientHello, with or without SNI). There `reloader.changed()`
    stats the files (cheap) and, when they changed and check out, builds a fresh SSLContext
    from them; the handshake in progress and every later one are then switched to it
    (`SSLObject.context = ...`, OpenSSL's SSL_set_SSL_CTX: certificate, key and trusted
    client CAs). Open connections keep the certificate they were made with.
    """

    def __init__(self, reloader: CertificateReloader) -> None:
        self.reloader = reloader
        self.context = ssl_server_context(reloader.files, check=False)  # NOTE: loaded already
        self.context.sni_callback = self._on_client_hello
        self._current = self.context
        self._rotated_at = 0.0  # NOTE: time.time() of the last rotation

    def _on_client_hello(self, conn: Any, _server_name: str | None, _ctx: Any) -> int | None:
        if self.reloader.changed() is not None:
            try:
                self._current = ssl_server_context(self.reloader.files, check=False)
                self._rotated_at = time.time()
            except (OSError, ssl.SSLError) as exc:  # NOTE: changed again since it was read
                LOGGER.warning("TLS files changed but cannot be used yet: %s", exc)
        if self._current is not self.context:
            conn.context = self._current
        if conn.session_reused:
            # NOTE: TLS 1.2 resumes from OpenSSL's server session cache, which Python cannot
            # turn off; a session made before the files last changed would skip the check
            # of the client certificate against the new CA, so it is refused
            session = conn.session
            if session is None or session.time <= self._rotated_at:
                return ssl.ALERT_DESCRIPTION_ACCESS_DENIED
        return None


def grpc_channel_credentials(
    root: Path | None, cert: Path | None = None, key: Path | None = None
) -> Any:
    """Client side, for `health` and `compare`: the CA to trust and, under mutual TLS, our
    own certificate and key."""
    import grpc

    if (cert is None) != (key is None):
        raise TlsConfigError("--client-cert and --client-key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(root, "--root-cert") if root is not None else None,
        private_key=_read(key, "--client-key") if key is not None else None,
        certificate_chain=_read(cert, "--client-cert") if cert is not None else None,
    )
