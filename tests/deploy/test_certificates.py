"""The certificates of `recsys up --tls` (`recsys.deploy.certificates`) and how the supervisor
hands them to its children."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from recsys.cli import app
from recsys.deploy import certificates as layout_certificates
from recsys.deploy.certificates import ensure_layout_certificates
from recsys.deploy.supervisor import plan
from recsys.settings import load_settings
from tests.conftest import make_settings


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_the_layout_gets_a_ca_a_server_and_a_certificate_per_caller(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    made = ensure_layout_certificates(folder)
    ca = load(made.ca)
    server = load(made.server.cert)
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert sorted(made.clients) == ["client", "recommend", "retrieve"]
    for caller, pair in made.clients.items():
        certificate = load(pair.cert)
        certificate.verify_directly_issued_by(ca)
        (common_name,) = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert common_name.value == caller
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        # One name in each form auth.certificate_identity can read.
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [caller]
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://recsys.local/{caller}"
        ]
    assert folder.stat().st_mode & 0o777 == 0o700
    for key in folder.glob("*.key"):
        assert key.stat().st_mode & 0o777 == 0o600, key


def test_later_starts_reuse_them_and_renew_only_what_needs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "tls"
    first = ensure_layout_certificates(folder)
    before = contents(folder)
    ensure_layout_certificates(folder)
    assert contents(folder) == before

    first.client("retrieve").cert.unlink()  # a lost certificate is issued again, alone
    ensure_layout_certificates(folder)
    after = contents(folder)
    assert {name for name in before if after[name] != before[name]} == {
        "retrieve.crt",
        "retrieve.key",
    }

    # Certificates near their expiry are renewed by the same CA.
    monkeypatch.setattr(layout_certificates, "RENEW_BEFORE", layout_certificates.RENEW_BEFORE * 20)
    ensure_layout_certificates(folder)
    renewed = contents(folder)
    assert renewed["ca.crt"] == before["ca.crt"]
    assert renewed["server.crt"] != after["server.crt"]
    monkeypatch.undo()

    # A CA that does not load: a new CA, and every certificate issued by it.
    first.ca.write_text("garbage")
    ensure_layout_certificates(folder)
    fresh = contents(folder)
    assert all(fresh[name] != renewed[name] for name in fresh)
    load(first.server.cert).verify_directly_issued_by(load(first.ca))


def test_the_plan_gives_every_child_mutual_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = ensure_layout_certificates(tmp_path / "tls")
    monkeypatch.setenv("RECSYS_INDEX__NUM_SHARDS", "2")
    settings = make_settings(tmp_path)
    children = {
        child.name: child
        for child in plan(
            settings, base_port=40_000, config_file=None, log_dir=tmp_path, certificates=made
        )
    }
    identities = {"shard-0": None, "shard-1": None, "retrieve": "retrieve", "rank": None,
                  "recommend": "recommend"}  # fmt: skip
    assert sorted(children) == sorted(identities)
    for name, caller in identities.items():
        with monkeypatch.context() as patch:
            for key, value in children[name].environment.items():
                if key.startswith("RECSYS_"):
                    patch.setenv(key, value)
            child = load_settings()
        assert child.server.tls.cert_file == made.server.cert
        assert child.server.tls.client_ca_file == made.ca
        assert child.server.tls.require_client_auth
        assert child.outbound.tls.enabled is (caller is not None)
        if caller is not None:
            assert child.outbound.tls.ca_file == made.ca
            assert child.outbound.tls.cert_file == made.client(caller).cert
        assert not child.outbound.model_server_tls.enabled  # another PKI: left to the settings
        assert not child.auth.enabled  # mTLS alone; caller authorisation stays as configured


def test_up_tls_refuses_tls_settings_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = ensure_layout_certificates(tmp_path / "tls")
    monkeypatch.setenv("RECSYS_OUTBOUND__TLS__ENABLED", "true")
    monkeypatch.setenv("RECSYS_OUTBOUND__TLS__CA_FILE", str(made.ca))
    result = CliRunner().invoke(app, ["up", "--tls", "--tls-dir", str(tmp_path / "tls")])
    assert result.exit_code == 2
    assert "--tls sets server.tls and outbound.tls" in result.output
