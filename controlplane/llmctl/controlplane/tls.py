"""TLS settings for both ends of llmctl's connections, checked once and turned into gRPC/uvicorn/httpx terms.

    ServerTls(cert, key, client_ca)   the control plane: gRPC with grpc.ssl_server_credentials (a client
                                      certificate from client_ca required of every caller when it is set:
                                      mutual TLS), the gateway over HTTPS with the same certificate
    ClientTls(ca, cert, key)          agents and llmctl: which CA to trust and which certificate to present
    open_channel(address, tls)        a gRPC channel, secure when tls is given
    is_loopback(host)                 plaintext is for loopback only; anything else gets a warning

gRPC's Python server cannot ask for a client certificate without requiring one, so with client_ca set the
operator's llmctl presents a certificate too (`llmctl certs client NAME`); the admin token still decides
what it may do. Files are read when credentials are made, so replacing them takes effect on the next
connection (an agent reconnecting, a restarted server).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from llmctl.controlplane.errors import InvalidArgument


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP addresses; a wildcard (0.0.0.0, ::) or any other name is not."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(address: str) -> str:
    """The host part of HOST:PORT (IPv6 brackets removed)."""
    return address.rpartition(":")[0].strip("[]")


@dataclass(frozen=True)
class ServerTls:
    """The control plane's certificate and key, and the CA whose client certificates it requires (if any)."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    """Set: every gRPC caller (agents and llmctl alike) must present a certificate this CA signed."""

    def __post_init__(self) -> None:
        _readable("--tls-cert", self.cert)
        _readable("--tls-key", self.key)
        _check_pair(ssl.PROTOCOL_TLS_SERVER, "--tls-cert", self.cert, "--tls-key", self.key)
        if self.client_ca is not None:
            _readable("--client-ca", self.client_ca)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        roots = _read("--client-ca", self.client_ca) if self.client_ca is not None else None
        pair = (_read("--tls-key", self.key), _read("--tls-cert", self.cert))
        return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=roots is not None)

    def uvicorn_options(self) -> dict[str, Any]:
        """The gateway serves HTTPS with the same certificate; it asks for no client certificate (API keys
        authenticate its callers)."""
        return {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}


@dataclass(frozen=True)
class ClientTls:
    """How an agent or llmctl reaches a TLS control plane."""

    ca: Path | None = None
    """The CA that signed the server's certificate; None: the system's trusted roots."""
    cert: Path | None = None
    """This client's certificate (mutual TLS); with key, or neither."""
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise InvalidArgument("a client certificate needs its key: pass both --cert and --key, or neither")
        for flag, path in (("--ca", self.ca), ("--cert", self.cert), ("--key", self.key)):
            if path is not None:
                _readable(flag, path)
        if self.cert is not None and self.key is not None:
            _check_pair(ssl.PROTOCOL_TLS_CLIENT, "--cert", self.cert, "--key", self.key)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read("--ca", self.ca) if self.ca is not None else None,
            private_key=_read("--key", self.key) if self.key is not None else None,
            certificate_chain=_read("--cert", self.cert) if self.cert is not None else None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """For HTTPS to the gateway (httpx's verify=)."""
        context = ssl.create_default_context(cafile=str(self.ca) if self.ca is not None else None)
        if self.cert is not None and self.key is not None:
            context.load_cert_chain(str(self.cert), str(self.key))
        return context


def open_channel(address: str, tls: ClientTls | None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.channel_credentials(), options=list(options))


def _check_pair(protocol: int, cert_flag: str, cert: Path, key_flag: str, key: Path) -> None:
    """The certificate and key load and belong together (else gRPC and uvicorn fail later, less clearly)."""
    try:
        ssl.SSLContext(protocol).load_cert_chain(str(cert), str(key))
    except ssl.SSLError as e:
        raise InvalidArgument(f"{cert_flag} {cert} and {key_flag} {key} are not a certificate and its key "
                              f"({e.reason or e})") from None


def _readable(flag: str, path: Path) -> None:
    if not Path(path).is_file():
        raise InvalidArgument(f"{flag} {path}: no such file")
    _read(flag, path)


def _read(flag: str, path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgument(f"{flag} {path}: cannot read it ({e.strerror})") from None
    if b"-----BEGIN " not in data:
        raise InvalidArgument(f"{flag} {path} is not a PEM file")
    return data
