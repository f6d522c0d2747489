"""TLS for `patient-twin dashboard --https`: WebXR needs a secure context away from localhost, so a
headset on the ward network must reach the dashboard over https.

With --cert/--key the given PEM files are used (a certificate from the hospital's CA is best: the
headset trusts it). Without them a self-signed certificate for this host's names and loopback is
generated once (cryptography, EC P-256, 1 year) into DASHBOARD_TLS_DIR and reused; its SHA-256
fingerprint is printed so a user can check it when the browser asks.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from pathlib import Path

from streams.config import Settings
from streams.errors import ConfigError


def _names() -> list[str]:
    names = {"localhost", socket.gethostname(), socket.getfqdn()}
    return sorted(n for n in names if n)


def generate(cert_path: Path, key_path: Path, days: int = 365) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname()),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "patient-twin (self-signed)")])
    alt = [x509.DNSName(n) for n in _names()]
    alt += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def fingerprint(cert_path: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def certificate(settings: Settings, cert: str | None, key: str | None) -> tuple[str, str]:
    """The certificate and key files to serve: the given ones (checked), or the generated
    self-signed pair (created on first use)."""
    if (cert is None) != (key is None):
        raise ConfigError("--cert and --key go together (or give neither for a self-signed one)")
    if cert is not None and key is not None:
        for p in (cert, key):
            if not os.path.isfile(p):
                raise ConfigError(f"no such file: {p}")
        return cert, key
    d = Path(os.path.expanduser(settings.dashboard_tls_dir))
    c, k = d / "dashboard.crt", d / "dashboard.key"
    if not (c.exists() and k.exists()):
        generate(c, k)
    return str(c), str(k)
