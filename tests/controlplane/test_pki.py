"""The fleet's own CA (controlplane/pki.py) and `llmctl certs`: what is made, its modes, renewal, refusals."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from llmctl.controlplane import pki
from llmctl.controlplane.cli import app
from llmctl.controlplane.errors import AlreadyExists, InvalidArgument, NotFound


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> set[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in names.get_values_for_type(x509.DNSName)} | {
        str(v) for v in names.get_values_for_type(x509.IPAddress)}


def usage(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_local_pki_makes_a_ca_and_server_agent_and_operator_certificates_with_private_keys(tmp_path: Path):
    made = pki.local_pki(tmp_path / "tls", server_hosts=["cp.example", "10.0.0.5"])
    ca = load(made.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server, agent, admin = load(made.server.cert), load(made.agent.cert), load(made.admin.cert)
    for cert in (server, agent, admin):
        cert.verify_directly_issued_by(ca)
    assert sans(server) == {"cp.example", "10.0.0.5", "localhost", "127.0.0.1", "::1"}
    assert usage(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert usage(agent) == usage(admin) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert agent.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "local"
    for key in (tmp_path / "tls").glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == [
        "admin.crt", "admin.key", "ca.crt", "ca.key", "local.crt", "local.key", "server.crt", "server.key"]


def test_local_pki_reuses_what_is_current_and_reissues_what_is_near_expiry_or_lacks_a_host(tmp_path: Path):
    folder = tmp_path / "tls"
    first = pki.local_pki(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    pki.local_pki(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing re-issued

    pki.issue_client(folder, "local", days=10)  # inside RENEW_BEFORE
    pki.local_pki(folder, server_hosts=["gpu-box"])
    agent = load(first.agent.cert)
    assert agent.not_valid_after_utc - dt.datetime.now(dt.UTC) > pki.RENEW_BEFORE
    assert "gpu-box" in sans(load(first.server.cert))
    assert first.ca.read_bytes() == before["ca.crt"] and first.admin.cert.read_bytes() == before["admin.crt"]


def test_a_certificate_signed_by_another_ca_is_replaced(tmp_path: Path):
    folder, other = tmp_path / "tls", tmp_path / "other"
    pki.local_pki(folder)
    pki.init_ca(other)
    stranger = pki.issue_client(other, "local")
    (folder / "local.crt").write_bytes(stranger.cert.read_bytes())
    (folder / "local.key").write_bytes(stranger.key.read_bytes())
    made = pki.local_pki(folder)
    load(made.agent.cert).verify_directly_issued_by(load(made.ca))


def test_refusals_say_what_to_do(tmp_path: Path):
    with pytest.raises(NotFound, match="llmctl certs init-ca"):
        pki.issue_client(tmp_path, "gpu-1")
    pki.init_ca(tmp_path)
    with pytest.raises(AlreadyExists, match="delete both"):
        pki.init_ca(tmp_path)
    with pytest.raises(InvalidArgument, match="invalid certificate name"):
        pki.issue_client(tmp_path, "../evil")
    with pytest.raises(InvalidArgument, match="names the CA's"):
        pki.issue_client(tmp_path, "ca")
    with pytest.raises(InvalidArgument, match="neither a host name nor an IP"):
        pki.issue_server(tmp_path, ["bad host"])
    with pytest.raises(InvalidArgument, match="1-36500 days"):
        pki.issue_server(tmp_path, days=0)


def test_llmctl_certs_commands_make_the_files_and_refuse_a_second_ca(tmp_path: Path):
    runner, folder = CliRunner(), tmp_path / "fleet"
    done = runner.invoke(app, ["certs", "init-ca", "--dir", str(folder)])
    assert done.exit_code == 0, done.output
    again = runner.invoke(app, ["certs", "init-ca", "--dir", str(folder)])
    assert again.exit_code == 2 and "already exists" in again.output
    done = runner.invoke(app, ["certs", "server", "--dir", str(folder), "--host", "cp.example", "--host", "10.1.2.3"])
    assert done.exit_code == 0 and "--client-ca" in done.output
    server = load(folder / "server.crt")
    assert {"cp.example", "10.1.2.3"} <= sans(server)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.1.2.3") in names.get_values_for_type(x509.IPAddress)  # not a DNS name
    done = runner.invoke(app, ["certs", "client", "gpu-7", "--dir", str(folder), "--days", "30"])
    assert done.exit_code == 0, done.output
    cert = load(folder / "gpu-7.crt")
    assert 29 <= (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days <= 30
    bad = runner.invoke(app, ["certs", "client", "GPU_7", "--dir", str(folder)])
    assert bad.exit_code == 2 and "invalid certificate name" in bad.output
