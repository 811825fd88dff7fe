"""The SSRF guard end to end: a real HTTPS server on 127.0.0.1 reached through injected resolvers.

Names like `hooks.example.test` are mapped to loopback by resolvers the tests control; addresses
that must be refused are refused before any connection, and the loopback guard fails the test if
anything tries to connect outside loopback anyway.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from opendance.media import safe_http
from opendance.media.addresses import IPAddress
from opendance.media.safe_http import (
    SafeTransport,
    UnsafeAddressError,
    make_async_safe_client,
    make_safe_client,
    system_resolver,
)

HOOK_HOST = "hooks.example.test"

pytestmark = pytest.mark.usefixtures("only_loopback_connections")


@dataclass
class Seen:
    method: str
    path: str
    host: str | None
    body: bytes


@dataclass
class HookServer:
    port: int
    seen: list[Seen] = field(default_factory=list)
    redirect_to: str = ""

    def url(self, path: str = "/hook", host: str = HOOK_HOST) -> str:
        return f"https://{host}:{self.port}{path}"


class _HookHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TLSServer

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        state = self.server.state
        state.seen.append(Seen(self.command, self.path, self.headers.get("Host"), body))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", state.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    state: HookServer


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def hook_server(ca: trustme.CA) -> Iterator[HookServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOOK_HOST, "localhost", "127.0.0.1").configure_cert(context)
    server = _TLSServer(("127.0.0.1", 0), _HookHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.state = HookServer(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class FakeResolver:
    """Answers from a table and counts lookups; raises for names it does not know."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ip_address(a) for a in self.table[host]]


def loopback_client(
    ca_file: Path, resolver: Callable[[str, int], list[IPAddress]], **kwargs: Any
) -> httpx.Client:
    return make_safe_client(
        timeout=5, allow_loopback=True, extra_ca_file=ca_file, resolver=resolver, **kwargs
    )


def test_request_goes_to_checked_ip_with_host_header_and_verified_tls(
    hook_server: HookServer, ca_file: Path
) -> None:
    resolver = FakeResolver({HOOK_HOST: ["127.0.0.1"]})
    with loopback_client(ca_file, resolver) as client:
        response = client.post(hook_server.url(), json={"status": "completed"})
    assert response.status_code == 200
    assert response.text == "ok"
    assert response.url == httpx.URL(hook_server.url())
    assert resolver.calls == [HOOK_HOST]
    [seen] = hook_server.seen
    assert (seen.method, seen.path) == ("POST", "/hook")
    assert seen.host == f"{HOOK_HOST}:{hook_server.port}"
    assert seen.body == b'{"status":"completed"}'


def test_async_client_does_the_same(hook_server: HookServer, ca_file: Path) -> None:
    resolver = FakeResolver({HOOK_HOST: ["127.0.0.1"]})

    async def post() -> httpx.Response:
        async with make_async_safe_client(
            timeout=5, allow_loopback=True, extra_ca_file=ca_file, resolver=resolver
        ) as client:
            return await client.post(hook_server.url(), content=b"hello")

    response = asyncio.run(post())
    assert response.status_code == 200
    assert resolver.calls == [HOOK_HOST]
    [seen] = hook_server.seen
    assert seen.host == f"{HOOK_HOST}:{hook_server.port}"
    assert seen.body == b"hello"


def test_async_client_refuses_internal_addresses(ca_file: Path) -> None:
    resolver = FakeResolver({HOOK_HOST: ["93.184.216.34", "10.0.0.7"]})

    async def post() -> None:
        async with make_async_safe_client(timeout=5, resolver=resolver) as client:
            await client.post(f"https://{HOOK_HOST}/hook", content=b"x")

    with pytest.raises(UnsafeAddressError, match=r"internal address \(10\.0\.0\.7\)"):
        asyncio.run(post())


def test_certificate_is_checked_against_the_real_hostname(
    hook_server: HookServer, ca_file: Path
) -> None:
    resolver = FakeResolver({"other.example.test": ["127.0.0.1"]})
    with (
        loopback_client(ca_file, resolver) as client,
        pytest.raises(httpx.ConnectError, match="certificate"),
    ):
        client.get(hook_server.url(host="other.example.test"))
    assert hook_server.seen == []


def test_test_ca_is_not_trusted_without_extra_ca_file(hook_server: HookServer) -> None:
    resolver = FakeResolver({HOOK_HOST: ["127.0.0.1"]})
    with (
        make_safe_client(timeout=5, allow_loopback=True, resolver=resolver) as client,
        pytest.raises(httpx.ConnectError, match="certificate"),
    ):
        client.get(hook_server.url())


def test_connection_for_one_hostname_is_not_reused_for_another(
    hook_server: HookServer, ca_file: Path
) -> None:
    """Both names pin to 127.0.0.1; the second must get its own, failing, TLS handshake."""
    resolver = FakeResolver({HOOK_HOST: ["127.0.0.1"], "other.example.test": ["127.0.0.1"]})
    with loopback_client(ca_file, resolver) as client:
        assert client.get(hook_server.url()).status_code == 200
        with pytest.raises(httpx.ConnectError, match="certificate"):
            client.get(hook_server.url(host="other.example.test"))
    assert len(hook_server.seen) == 1


@pytest.mark.parametrize(
    "addresses",
    [
        ["93.184.216.34", "10.0.0.7"],
        ["10.0.0.7", "93.184.216.34"],
        ["2606:4700::6810:84e5", "fd00::1"],
        ["93.184.216.34", "::ffff:127.0.0.1"],
        ["169.254.169.254"],
    ],
)
def test_refused_when_any_resolved_address_is_internal(
    hook_server: HookServer, ca_file: Path, addresses: list[str]
) -> None:
    resolver = FakeResolver({HOOK_HOST: addresses})
    with loopback_client(ca_file, resolver) as client, pytest.raises(UnsafeAddressError):
        client.post(hook_server.url(), content=b"{}")
    assert resolver.calls == [HOOK_HOST]
    assert hook_server.seen == []


def test_rebinding_resolver_is_asked_once_per_request(
    hook_server: HookServer, ca_file: Path
) -> None:
    """A second lookup (by httpcore or anyone) would get the private answer and fail."""
    answers = iter([["127.0.0.1"], ["10.0.0.1"], ["10.0.0.1"]])
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        return [ip_address(a) for a in next(answers)]

    with loopback_client(ca_file, rebinding) as client:
        assert client.post(hook_server.url(), content=b"{}").status_code == 200
        assert calls == [HOOK_HOST]
        with pytest.raises(UnsafeAddressError):
            client.post(hook_server.url(), content=b"{}")
    assert calls == [HOOK_HOST, HOOK_HOST]
    assert len(hook_server.seen) == 1


def test_literal_addresses_are_not_resolved(hook_server: HookServer, ca_file: Path) -> None:
    def no_lookups(host: str, port: int) -> list[IPAddress]:
        raise AssertionError(f"resolver called for {host}")

    with loopback_client(ca_file, no_lookups) as client:
        response = client.get(f"https://127.0.0.1:{hook_server.port}/hook")
    assert response.status_code == 200
    assert hook_server.seen[0].host == f"127.0.0.1:{hook_server.port}"


@pytest.mark.parametrize(
    "url",
    [
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://localhost/hook",
        "https://2130706433/hook",
        "https://0x7f.1/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://169.254.169.254/latest/meta-data/",
        "http://printer.local/",
    ],
)
def test_internal_hosts_refused_without_lookup(url: str) -> None:
    resolver = FakeResolver({})
    with (
        make_safe_client(timeout=5, resolver=resolver) as client,
        pytest.raises(UnsafeAddressError),
    ):
        client.get(url)
    assert resolver.calls == []


def test_allow_loopback_still_refuses_other_internal_addresses(ca_file: Path) -> None:
    resolver = FakeResolver({HOOK_HOST: ["192.168.1.10"]})
    with loopback_client(ca_file, resolver) as client, pytest.raises(UnsafeAddressError):
        client.get(f"https://{HOOK_HOST}/hook")


def test_redirects_are_not_followed_by_default(hook_server: HookServer, ca_file: Path) -> None:
    hook_server.redirect_to = hook_server.url("/hook")
    resolver = FakeResolver({HOOK_HOST: ["127.0.0.1"]})
    with loopback_client(ca_file, resolver) as client:
        response = client.post(hook_server.url("/redirect"), content=b"{}")
    assert response.status_code == 302
    assert [s.path for s in hook_server.seen] == ["/redirect"]


def test_followed_redirects_are_checked_on_every_hop(
    hook_server: HookServer, ca_file: Path
) -> None:
    resolver = FakeResolver({HOOK_HOST: ["127.0.0.1"], "internal.example.test": ["10.9.8.7"]})
    with loopback_client(ca_file, resolver, follow_redirects=True) as client:
        hook_server.redirect_to = hook_server.url("/hook")
        assert client.get(hook_server.url("/redirect")).status_code == 200
        hook_server.redirect_to = "https://internal.example.test/secret"
        with pytest.raises(UnsafeAddressError, match="internal.example.test"):
            client.get(hook_server.url("/redirect"))
    assert [s.path for s in hook_server.seen] == ["/redirect", "/hook", "/redirect"]
    assert resolver.calls == [HOOK_HOST, HOOK_HOST, HOOK_HOST, "internal.example.test"]


class _ProxyRecorder(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    connections = 0


class _CountAndClose(socketserver.BaseRequestHandler):
    server: _ProxyRecorder

    def handle(self) -> None:
        self.server.connections += 1


def test_proxies_from_the_environment_are_ignored(
    hook_server: HookServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _ProxyRecorder(("127.0.0.1", 0), _CountAndClose) as proxy:
        thread = threading.Thread(target=proxy.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
            for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "all_proxy"):
                monkeypatch.setenv(name, proxy_url)
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            resolver = FakeResolver({HOOK_HOST: ["127.0.0.1"]})
            with loopback_client(ca_file, resolver) as client:
                assert client.trust_env is False  # no proxies, netrc or SSL_CERT_FILE from env
                assert client.get(hook_server.url()).status_code == 200
        finally:
            proxy.shutdown()
            thread.join(timeout=5)
    assert proxy.connections == 0
    assert len(hook_server.seen) == 1


def test_resolution_failure_is_a_connect_error() -> None:
    resolver = FakeResolver({})
    with (
        make_safe_client(timeout=5, resolver=resolver) as client,
        pytest.raises(httpx.ConnectError, match="could not resolve"),
    ):
        client.get(f"https://{HOOK_HOST}/hook")


def test_falls_back_to_the_other_address_family(hook_server: HookServer, ca_file: Path) -> None:
    """The server listens on 127.0.0.1 only, so the first (IPv6) address fails to connect."""
    resolver = FakeResolver({HOOK_HOST: ["::1", "127.0.0.1"]})
    with loopback_client(ca_file, resolver) as client:
        assert client.get(hook_server.url()).status_code == 200
    assert resolver.calls == [HOOK_HOST]


def test_system_resolver_reaches_localhost_when_loopback_is_allowed(
    hook_server: HookServer, ca_file: Path
) -> None:
    with make_safe_client(timeout=5, allow_loopback=True, extra_ca_file=ca_file) as client:
        response = client.get(f"https://localhost:{hook_server.port}/hook")
    assert response.status_code == 200
    assert ip_address("127.0.0.1") in system_resolver("127.0.0.1", 443)


def test_test_settings_warn_once(
    ca_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(safe_http, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="opendance.media.safe_http"):
        SafeTransport(allow_loopback=True, extra_ca_file=ca_file).close()
        SafeTransport(allow_loopback=True, extra_ca_file=ca_file).close()
        SafeTransport().close()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2
    assert any("never enable it in production" in m for m in messages)
    assert any(str(ca_file) in m for m in messages)


def test_international_names_are_resolved_in_their_wire_form() -> None:
    resolver = FakeResolver({"xn--bcher-kva.example": ["10.1.1.1"]})
    with (
        make_safe_client(timeout=5, resolver=resolver) as client,
        pytest.raises(UnsafeAddressError),
    ):
        client.get("https://bücher.example/hook")
    assert resolver.calls == ["xn--bcher-kva.example"]
