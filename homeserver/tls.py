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


def generate_self_signed_certificate(cert_path: Path, key_path: Path, server_name: str) -> None:
    """Write a self-signed certificate (10 years) and its private key (mode 0600) as PEM, valid
    for the host part of `server_name`: a DNS name, or an IP address for an IP literal. Other
    servers only accept it with TLS verification off; it lets a new server run at once."""
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    host = server_name
    if host.startswith("["):
        host = host[1:host.index("]")]
    elif ":" in host:
        host = host.rsplit(":", 1)[0]
    san: x509.GeneralName
    try:
        san = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host.lower())

    key = ec.generate_private_key(ec.SECP256R1())
    # A common name is at most 64 characters; the subjectAltName is what clients check.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
