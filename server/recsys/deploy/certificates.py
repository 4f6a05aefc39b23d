"""Certificates for mutual TLS inside a `recsys up` layout (`recsys up --tls`): a private CA,
one server certificate every process serves with, and a client certificate per caller.

    <folder>/ca.crt, ca.key             the layout's own CA (trusted by nothing else)
    <folder>/server.crt, server.key     SAN: DNS localhost, IP 127.0.0.1 and ::1
    <folder>/<caller>.crt, .key         the caller as CN, SAN DNS and SAN URI
                                        (spiffe://recsys.local/<caller>): "recommend" and
                                        "retrieve" (the layout's internal callers), "client"
                                        (for callers of the public Recommend port)

Created on the first start and reused afterwards. A certificate that is missing, unreadable,
not issued by the CA, not matching its key or its names, or within 30 days of expiry is
issued again; a new CA reissues everything. Keys are written 0600 in a 0700 folder.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

INTERNAL_CALLERS = ("recommend", "retrieve")
EXTERNAL_CALLER = "client"
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
# A client certificate names its caller once in each form `auth.certificate_identity` reads.
SPIFFE_PREFIX = "spiffe://recsys.local/"
CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class CertificatePair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class LayoutCertificates:
    folder: Path
    ca: Path
    server: CertificatePair
    clients: dict[str, CertificatePair]

    def client(self, caller: str) -> CertificatePair:
        return self.clients[caller]


def ensure_layout_certificates(
    folder: Path,
    *,
    callers: Sequence[str] = (*INTERNAL_CALLERS, EXTERNAL_CALLER),
    server_names: Sequence[str] = SERVER_NAMES,
) -> LayoutCertificates:
    """The layout's certificates under `folder`, created or renewed where needed."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    now = dt.datetime.now(dt.UTC)
    ca_pair = CertificatePair(folder / "ca.crt", folder / "ca.key")
    ca = _load_valid(ca_pair, now)
    renew_all = ca is None or not _is_ca(ca[0])
    if ca is None or renew_all:
        ca = _issue_ca(now)
        _write(ca_pair, *ca)
    ca_cert, ca_key = ca
    server = CertificatePair(folder / "server.crt", folder / "server.key")
    names = _server_names(server_names)
    server_usage = ExtendedKeyUsageOID.SERVER_AUTH
    if renew_all or not _leaf_is_valid(server, ca_cert, now, names, server_usage):
        _write(server, *_issue_leaf(ca_cert, ca_key, now, "recsys-server", names, server=True))
    clients = {}
    for caller in callers:
        pair = CertificatePair(folder / f"{caller}.crt", folder / f"{caller}.key")
        caller_names: list[x509.GeneralName] = [
            x509.DNSName(caller),
            x509.UniformResourceIdentifier(f"{SPIFFE_PREFIX}{caller}"),
        ]
        if renew_all or not _leaf_is_valid(
            pair, ca_cert, now, caller_names, ExtendedKeyUsageOID.CLIENT_AUTH, common_name=caller
        ):
            _write(pair, *_issue_leaf(ca_cert, ca_key, now, caller, caller_names, server=False))
        clients[caller] = pair
    return LayoutCertificates(folder, ca_pair.cert, server, clients)


def _server_names(names: Sequence[str]) -> list[x509.GeneralName]:
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return general


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _issue_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "recsys up CA")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    common_name: str,
    names: list[x509.GeneralName],
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return certificate, key


def _load_valid(
    pair: CertificatePair, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The pair's certificate and key, if both load, belong together and stay valid for
    RENEW_BEFORE; else None."""
    try:
        certificate = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if _public_bytes(key.public_key()) != _public_bytes(certificate.public_key()):
        return None
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc - RENEW_BEFORE:
        return None
    return certificate, key


def _public_bytes(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _leaf_is_valid(
    pair: CertificatePair,
    ca_cert: x509.Certificate,
    now: dt.datetime,
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    *,
    common_name: str | None = None,
) -> bool:
    loaded = _load_valid(pair, now)
    if loaded is None:
        return False
    certificate = loaded[0]
    try:
        certificate.verify_directly_issued_by(ca_cert)
        present = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except (InvalidSignature, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    if not set(names) <= set(present.value) or usage not in usages.value:
        return False
    if common_name is not None:
        found = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return [attribute.value for attribute in found] == [common_name]
    return True


def _write(
    pair: CertificatePair, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """Key first, each file replaced atomically: a reader never sees half a file."""
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _replace(pair.key, key_bytes, 0o600)
    _replace(pair.cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def _replace(path: Path, data: bytes, mode: int) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
