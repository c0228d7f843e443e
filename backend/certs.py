"""SSLCert checks: a PEM bundle must hold a certificate chain and the private key of its first cert.

Only ever says *what* is wrong; never echoes the PEM (it holds a private key).
"""

from __future__ import annotations

import hashlib
import re

_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n[A-Za-z0-9+/=\r\n]+-----END \1-----")
_KEY_KINDS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY")


def check_pem_bundle(pem: str) -> str | None:
    """None when `pem` is a usable chain + key, else the reason in words."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if "\x00" in pem:
        return "must be PEM text"
    blocks = [(m.group(1), m.group(0)) for m in _BLOCK.finditer(pem)]
    # Anything outside the PEM blocks (other than blank space) could end up in the balancer's files.
    if _BLOCK.sub("", pem).strip():
        return "must contain only PEM blocks (certificates and one private key)"
    certs = [text for kind, text in blocks if kind == "CERTIFICATE"]
    keys = [text for kind, text in blocks if kind in _KEY_KINDS]
    others = [kind for kind, _ in blocks if kind != "CERTIFICATE" and kind not in _KEY_KINDS]
    if others:
        return f"holds an unexpected PEM block ({others[0]}); give certificates and one private key"
    if not certs:
        return "holds no certificate (-----BEGIN CERTIFICATE-----)"
    if len(keys) != 1:
        return "must hold exactly one private key (unencrypted PEM)" if keys else "holds no private key"
    try:
        leaf = x509.load_pem_x509_certificate(certs[0].encode())
        for extra in certs[1:]:
            x509.load_pem_x509_certificate(extra.encode())
    except ValueError:
        return "holds a certificate that cannot be read"
    try:
        key = serialization.load_pem_private_key(keys[0].encode(), password=None)
    except (ValueError, TypeError):
        return "holds a private key that cannot be read (it must not be encrypted)"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != leaf.public_key().public_bytes(encoding, public):
        return "private key does not match the first certificate"
    return None


def fingerprint(pem: str) -> str:
    """SHA-256 fingerprint of the first certificate (safe to show; holds no key material)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    match = next((m for m in _BLOCK.finditer(pem) if m.group(1) == "CERTIFICATE"), None)
    if match is None:
        return ""
    cert = x509.load_pem_x509_certificate(match.group(0).encode())
    return cert.fingerprint(hashes.SHA256()).hex(":")


def certificate_digest(pem: str) -> str:
    """A short stable digest of the bundle, to tell whether the balancer's copy is current."""
    return hashlib.sha256(pem.encode()).hexdigest()[:16]
