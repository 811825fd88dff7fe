"""What every face needs when it reads a create: checks shared so the faces agree."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import httpx

from opendance.faces.errors import ApiError
from opendance.media.addresses import check_url, parse_host_literal
from opendance.settings import Settings


def _is_loopback_http(url: str) -> bool:
    """A plain `http://` URL to this machine: `localhost`, 127.0.0.0/8 or ::1."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return False
    if parsed.scheme != "http":
        return False
    host = parsed.host.lower().rstrip(".")
    if host == "localhost":
        return True
    address = parse_host_literal(host)
    if isinstance(address, IPv4Address):
        return address.packed[0] == 127
    return isinstance(address, IPv6Address) and address == IPv6Address("::1")


def check_callback_url(url: str | None, settings: Settings) -> str | None:
    """The callback URL, checked (https, no internal address); None if not given.

    With `allow_loopback_for_tests` (local development), plain http to loopback is taken too,
    so a developer can point callbacks at a receiver on their machine without certificates.
    """
    if url is None:
        return None
    schemes = {"https"}
    if settings.allow_loopback_for_tests and _is_loopback_http(url):
        schemes.add("http")
    problem = check_url(
        url,
        schemes=schemes,
        field="callback_url",
        allow_loopback=settings.allow_loopback_for_tests,
    )
    if problem:
        raise ApiError(
            400, "invalid_parameter", f"Invalid 'callback_url': {problem}.", param="callback_url"
        )
    return url
