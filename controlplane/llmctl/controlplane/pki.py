"""A small certificate authority for one llmctl fleet: the CA, the server's certificate, client certificates.

    init_ca(folder)                       folder/ca.crt + ca.key (refuses to overwrite an existing CA)
    issue_server(folder, hosts)           folder/server.crt + server.key, signed by folder's CA; SANs: the
                                          given hosts plus localhost, 127.0.0.1 and ::1
    issue_client(folder, name)            folder/<name>.crt + <name>.key: an agent's (name = its node) or
                                          an operator's llmctl certificate, for mutual TLS on gRPC
    local_pki(folder, ...)                what `llmctl up --tls` needs, created on first use, renewed when
                                          a certificate is within RENEW_BEFORE of expiring

Keys are ECDSA P-256 (fast to make, accepted by gRPC's BoringSSL and Python's OpenSSL), written mode 0600;
certificates 0644. Files are replaced atomically, so a reader never sees half a key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from llmctl.controlplane.errors import AlreadyExists, InvalidArgument, NotFound

CA_NAME = "ca"
SERVER_NAME = "server"
CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
"""`local_pki` re-issues a certificate that expires sooner than this."""
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# A client certificate's name becomes a file name and its common name: a DNS label, like a node name.
CLIENT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its private key on disk (PEM)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class LocalPki:
    """The files `llmctl up --tls` runs with: the CA that signs everything, the server's pair, the local
    agent's pair and the operator's (llmctl's) pair."""

    ca: Path
    server: CertFiles
    agent: CertFiles
    admin: CertFiles


def files(folder: Path, name: str) -> CertFiles:
    return CertFiles(Path(folder) / f"{name}.crt", Path(folder) / f"{name}.key")


def init_ca(folder: Path, *, common_name: str = "llmctl CA", days: int = CA_DAYS) -> CertFiles:
    """A new self-signed CA in folder/ca.crt and ca.key; AlreadyExists when one is there."""
    out = files(folder, CA_NAME)
    if out.cert.exists() or out.key.exists():
        raise AlreadyExists(f"a CA already exists in {folder} ({out.cert.name}, {out.key.name}); "
                            "delete both to start a new one (every certificate it signed stops working)")
    _check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(out, cert, key)
    return out


def issue_server(folder: Path, hosts: list[str] | tuple[str, ...] = (), *, name: str = SERVER_NAME,
                 days: int = LEAF_DAYS) -> CertFiles:
    """folder/<name>.crt + .key for the control plane (gRPC and the gateway), signed by folder's CA. Clients
    check the address they dial against the SANs: the given hosts (names or IP addresses) and loopback."""
    names = list(dict.fromkeys([*(h.strip() for h in hosts if h.strip()), *LOOPBACK_NAMES]))
    for host in names:
        if not _is_ip(host) and not re.fullmatch(r"[A-Za-z0-9*]([-A-Za-z0-9.]*[A-Za-z0-9])?", host):
            raise InvalidArgument(f"{host!r} is neither a host name nor an IP address")
    sans = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in names]
    return _issue(folder, name, common_name=names[0], sans=sans, usage=ExtendedKeyUsageOID.SERVER_AUTH, days=days)


def issue_client(folder: Path, name: str, *, days: int = LEAF_DAYS) -> CertFiles:
    """folder/<name>.crt + .key: a client certificate (common name `name`) for an agent or an operator."""
    if CLIENT_NAME.fullmatch(name) is None:
        raise InvalidArgument(f"invalid certificate name {name!r}: use 1-63 lowercase letters, digits and '-' "
                              "(for an agent, its node name)")
    if name in (CA_NAME, SERVER_NAME):
        raise InvalidArgument(f"{name!r} names the CA's or the server's files; pick another name")
    return _issue(folder, name, common_name=name, sans=[x509.DNSName(name)], usage=ExtendedKeyUsageOID.CLIENT_AUTH,
                  days=days)


def local_pki(folder: Path, *, server_hosts: list[str] | tuple[str, ...] = (), agent: str = "local",
              admin: str = "admin") -> LocalPki:
    """The CA, server, agent and operator certificates under `folder`, created the first time and re-issued
    when missing, expiring within RENEW_BEFORE, not signed by this CA, or (the server's) missing a host."""
    ca = files(folder, CA_NAME)
    if not (ca.cert.exists() and ca.key.exists()):
        init_ca(folder)
    wanted = list(dict.fromkeys([*server_hosts, *LOOPBACK_NAMES]))
    server = files(folder, SERVER_NAME)
    if not _current(server, ca.cert, hosts=wanted):
        issue_server(folder, wanted)
    pairs = {}
    for name in (agent, admin):
        pairs[name] = files(folder, name)
        if not _current(pairs[name], ca.cert):
            issue_client(folder, name)
    return LocalPki(ca=ca.cert, server=server, agent=pairs[agent], admin=pairs[admin])


def _issue(folder: Path, name: str, *, common_name: str, sans: list[x509.GeneralName],
           usage: x509.ObjectIdentifier, days: int) -> CertFiles:
    _check_days(days)
    ca_files = files(folder, CA_NAME)
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_files.cert.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_files.key.read_bytes(), password=None)
    except FileNotFoundError:
        raise NotFound(f"no CA in {folder}: run `llmctl certs init-ca` first") from None
    except ValueError as e:
        raise InvalidArgument(f"the CA in {folder} cannot be read: {e}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument(f"{ca_files.key} is not an ECDSA key (this CA was not made by llmctl)")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = files(folder, name)
    _write(out, cert, key)
    return out


def _current(pair: CertFiles, ca_path: Path, hosts: list[str] | None = None) -> bool:
    """The pair exists, is signed by the CA at ca_path, is not close to expiry, and covers `hosts`."""
    try:
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return False
    if hosts:
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        have = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
        have |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
        if not all((str(ipaddress.ip_address(h)) if _is_ip(h) else h) in have for h in hosts):
            return False
    return True


def _write(out: CertFiles, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    out.cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _replace(out.key, key_pem, 0o600)
    _replace(out.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _replace(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(temporary, mode)  # O_CREAT's mode is ignored for a stale temporary file, and umask narrows it
    os.replace(temporary, path)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 36500:
        raise InvalidArgument(f"validity must be 1-36500 days, got {days!r}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
