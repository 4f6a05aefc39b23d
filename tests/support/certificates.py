"""A throwaway certificate authority for TLS and mTLS tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Pair:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pair(cert_path, key_path)


class CertificateAuthority:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "recsys test CA")])
        now = dt.datetime.now(dt.UTC)
        self._name = name
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.pair = _write(folder, "ca", self.certificate, self._key)

    def issue(self, common_name: str, *, server: bool = False) -> Pair:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return _write(self.folder, common_name, builder.sign(self._key, hashes.SHA256()), key)

    def issue_client(
        self,
        stem: str,
        *,
        common_names: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        dns_names: tuple[str, ...] = (),
    ) -> Pair:
        """A client certificate with exactly these names (none, one, or several of a kind):
        subject common names, and SAN URIs and DNS names."""
        key = _key()
        now = dt.datetime.now(dt.UTC)
        # Unvalidated, so that a test can issue the empty common name some CAs let through.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            subject = x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False)
                    for cn in common_names
                ]
            )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        alternative: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        alternative += [x509.DNSName(name) for name in dns_names]
        if alternative:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alternative), critical=False
            )
        return _write(self.folder, stem, builder.sign(self._key, hashes.SHA256()), key)
