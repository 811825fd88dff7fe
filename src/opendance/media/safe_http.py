"""httpx transports that connect only to public addresses: the one SSRF guard for all egress.

Callbacks and image downloads both go through `SafeTransport` (sync) or `AsyncSafeTransport`.
For each request (and so for each redirect hop, which httpx sends through the transport again)
the transport resolves the host once with an injectable resolver, refuses the request when any
resolved address is internal (`opendance.media.addresses.is_internal_ip`), and then connects to
the checked address itself: the URL's host is replaced by the IP while the `Host` header stays,
and the TLS server name (`sni_hostname`, read by httpcore) keeps the real hostname so the
certificate is verified against it. No second lookup happens, so DNS rebinding cannot swap the
address between check and connect. Keep-alive is off: pooled connections are keyed by the IP, and
reusing one would send a request for host B over a TLS session verified for host A.

Why our own transport: the PyPI package list (pypi.tsv) has `advocate` (requests-based, 2020),
`safehttpx` (GET only, which rules out callbacks, and its pinning overrides a method httpx never
calls), `requests-hardened` (requests), and young unranked httpx wrappers (`drawbridge`,
`egressweave`, `httpx-secure`, `ssrfguard`, `microsoft-antissrf`) whose source we could not review.
None is proven, so this module follows langchain-core's `SSRFSafeTransport` design in ~200 lines.
Defence in depth (an egress proxy, a subnet without internal routes) is still recommended.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from ipaddress import ip_address
from pathlib import Path

import anyio.to_thread
import certifi
import httpx

from opendance.media.addresses import (
    IPAddress,
    is_internal_hostname,
    is_internal_ip,
    parse_host_literal,
)

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int], Iterable[IPAddress | str]]
"""Maps (host, port) to every address of the host (A and AAAA). Called once per request."""

DEFAULT_MAX_REDIRECTS = 3


class UnsafeAddressError(httpx.TransportError):
    """The request was refused because its host is, or resolves to, an internal address.

    A subclass of `httpx.TransportError`, so code that treats transport errors as delivery
    failures keeps working; catch this first where a refusal must not be retried.
    """


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """All A and AAAA addresses of `host`, in the order the system prefers them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canonname, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            addresses.append(ip_address(sockaddr[0]))
    return addresses


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, message: str) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message)


def make_ssl_context(extra_ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A verifying TLS context trusting certifi's CAs, plus `extra_ca_file` when given."""
    context = ssl.create_default_context(cafile=certifi.where())
    if extra_ca_file is not None:
        _warn_once(
            "extra_ca_file",
            f"Outgoing HTTPS also trusts the CA bundle {extra_ca_file}: "
            "meant for tests and local development only.",
        )
        context.load_verify_locations(cafile=str(extra_ca_file))
    return context


class _AddressPolicy:
    """The checks shared by the sync and async transports; it does no I/O itself."""

    def __init__(self, *, allow_loopback: bool, resolver: Resolver | None) -> None:
        if allow_loopback:
            _warn_once(
                "allow_loopback",
                "SSRF guard: loopback addresses (127.0.0.0/8, ::1, localhost) are ALLOWED for "
                "outgoing requests. This is a test setting; never enable it in production.",
            )
        self.allow_loopback = allow_loopback
        self.resolver: Resolver = resolver or system_resolver

    def literal_or_none(self, request: httpx.Request) -> IPAddress | None:
        """The checked address when the URL names an IP; None when the host must be resolved.

        Raises UnsafeAddressError for internal literals and internal names (no lookup needed).
        """
        host = _host_of(request.url)
        literal = parse_host_literal(host)
        if literal is None and is_internal_hostname(host, allow_loopback=self.allow_loopback):
            raise UnsafeAddressError(
                f"refusing to connect to {host}: it is an internal host", request=request
            )
        return literal

    def checked(
        self, request: httpx.Request, resolved: Iterable[IPAddress | str]
    ) -> list[IPAddress]:
        """The resolved addresses, all of them checked; refuses if any one is internal."""
        host = _host_of(request.url)
        addresses: list[IPAddress] = []
        for raw in resolved:
            address = ip_address(raw) if isinstance(raw, str) else raw
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise httpx.ConnectError(f"could not resolve {host}", request=request)
        for address in addresses:
            if is_internal_ip(address, allow_loopback=self.allow_loopback):
                raise UnsafeAddressError(
                    f"refusing to connect to {host}: it resolves to an internal address "
                    f"({address})",
                    request=request,
                )
        return addresses

    def resolve_error(self, request: httpx.Request, exc: OSError) -> httpx.ConnectError:
        host = _host_of(request.url)
        return httpx.ConnectError(f"could not resolve {host}: {exc}", request=request)


def _host_of(url: httpx.URL) -> str:
    """The host as it goes on the wire (IDNA-encoded), which is what gets resolved and checked."""
    return url.raw_host.decode("ascii")


def _port_of(url: httpx.URL) -> int:
    if url.port is not None:
        return url.port
    return 443 if url.scheme == "https" else 80


def _connect_order(addresses: list[IPAddress]) -> list[IPAddress]:
    """The first address, then the first of the other family: one fallback for broken IPv6."""
    first = addresses[0]
    other = next((a for a in addresses if type(a) is not type(first)), None)
    return [first] if other is None else [first, other]


def _pinned(request: httpx.Request, address: IPAddress) -> httpx.Request:
    """The same request sent to `address`, with the original Host header and TLS server name."""
    extensions = dict(request.extensions)
    host = _host_of(request.url)
    if request.url.scheme == "https" and parse_host_literal(host) is None:
        extensions["sni_hostname"] = host.removesuffix(".")
    return httpx.Request(
        request.method,
        request.url.copy_with(host=str(address)),
        headers=request.headers,
        stream=request.stream,
        extensions=extensions,
    )


_CONNECT_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout)


class SafeTransport(httpx.BaseTransport):
    """A sync transport that refuses internal addresses and connects to the address it checked."""

    def __init__(
        self,
        *,
        allow_loopback: bool = False,
        extra_ca_file: str | Path | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._policy = _AddressPolicy(allow_loopback=allow_loopback, resolver=resolver)
        self._inner = httpx.HTTPTransport(
            verify=make_ssl_context(extra_ca_file),
            trust_env=False,
            retries=0,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        *first, last = _connect_order(self._addresses(request))
        for address in first:
            try:
                return self._inner.handle_request(_pinned(request, address))
            except _CONNECT_FAILURES:
                continue
        return self._inner.handle_request(_pinned(request, last))

    def _addresses(self, request: httpx.Request) -> list[IPAddress]:
        literal = self._policy.literal_or_none(request)
        if literal is not None:
            return self._policy.checked(request, [literal])
        try:
            resolved = list(self._policy.resolver(_host_of(request.url), _port_of(request.url)))
        except OSError as exc:
            raise self._policy.resolve_error(request, exc) from exc
        return self._policy.checked(request, resolved)

    def close(self) -> None:
        self._inner.close()


class AsyncSafeTransport(httpx.AsyncBaseTransport):
    """The async twin of `SafeTransport`; the resolver runs in a worker thread."""

    def __init__(
        self,
        *,
        allow_loopback: bool = False,
        extra_ca_file: str | Path | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._policy = _AddressPolicy(allow_loopback=allow_loopback, resolver=resolver)
        self._inner = httpx.AsyncHTTPTransport(
            verify=make_ssl_context(extra_ca_file),
            trust_env=False,
            retries=0,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        *first, last = _connect_order(await self._addresses(request))
        for address in first:
            try:
                return await self._inner.handle_async_request(_pinned(request, address))
            except _CONNECT_FAILURES:
                continue
        return await self._inner.handle_async_request(_pinned(request, last))

    async def _addresses(self, request: httpx.Request) -> list[IPAddress]:
        literal = self._policy.literal_or_none(request)
        if literal is not None:
            return self._policy.checked(request, [literal])
        resolver = self._policy.resolver
        try:
            # Abandoned on cancel, so a caller's deadline also bounds a slow DNS lookup.
            resolved = await anyio.to_thread.run_sync(
                lambda: list(resolver(_host_of(request.url), _port_of(request.url))),
                abandon_on_cancel=True,
            )
        except OSError as exc:
            raise self._policy.resolve_error(request, exc) from exc
        return self._policy.checked(request, resolved)

    async def aclose(self) -> None:
        await self._inner.aclose()


def make_safe_client(
    *,
    timeout: httpx.Timeout | float,
    allow_loopback: bool = False,
    extra_ca_file: str | Path | None = None,
    resolver: Resolver | None = None,
    follow_redirects: bool = False,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
) -> httpx.Client:
    """A client whose every request (and redirect hop) goes through `SafeTransport`.

    Redirects are off by default (callbacks must not follow them); proxies and certificate
    settings from the environment are ignored.
    """
    return httpx.Client(
        transport=SafeTransport(
            allow_loopback=allow_loopback, extra_ca_file=extra_ca_file, resolver=resolver
        ),
        timeout=timeout,
        follow_redirects=follow_redirects,
        max_redirects=max_redirects,
        trust_env=False,
    )


def make_async_safe_client(
    *,
    timeout: httpx.Timeout | float,
    allow_loopback: bool = False,
    extra_ca_file: str | Path | None = None,
    resolver: Resolver | None = None,
    follow_redirects: bool = False,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
) -> httpx.AsyncClient:
    """The async twin of `make_safe_client`."""
    return httpx.AsyncClient(
        transport=AsyncSafeTransport(
            allow_loopback=allow_loopback, extra_ca_file=extra_ca_file, resolver=resolver
        ),
        timeout=timeout,
        follow_redirects=follow_redirects,
        max_redirects=max_redirects,
        trust_env=False,
    )


__all__ = [
    "DEFAULT_MAX_REDIRECTS",
    "AsyncSafeTransport",
    "Resolver",
    "SafeTransport",
    "UnsafeAddressError",
    "make_async_safe_client",
    "make_safe_client",
    "make_ssl_context",
    "system_resolver",
]
