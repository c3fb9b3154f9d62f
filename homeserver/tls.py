from __future__ import annotations

from pathlib import Path

from twisted.internet import ssl

from homeserver.config import ConfigError


def server_context_factory(cert_path: Path, key_path: Path) -> ssl.CertificateOptions:
    """TLS options for a listener from PEM files, with a clear error if they are unusable."""
    try:
        cert_pem = cert_path.read_bytes()
        key_pem = key_path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read TLS file {e.filename}: {e.strerror}") from None
    try:
        cert = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception:
        raise ConfigError(f"TLS certificate {cert_path} or key {key_path} is not valid PEM") from None
    return cert.options()
