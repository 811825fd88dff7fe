"""Which hosts and addresses an outgoing request may reach (the SSRF policy, as pure functions).

Everything the server fetches or posts to on a user's behalf (image URLs, callback URLs) is
checked here twice: once on the URL as written, at task creation (`check_url`), and once on every
address the host resolves to, right before connecting (`is_internal_ip`, used by
`opendance.media.safe_http`). Internal means: in a block of the IANA special-purpose registries
(the tables in `opendance.media.address_registry`, not the interpreter's `ipaddress` flags, which
differ between patch releases), outside IPv6 global unicast, a cloud metadata address, or an IPv6
form that carries an internal IPv4 address (mapped, compatible, NAT64, 6to4, Teredo).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import Final

import httpx

from opendance.media.address_registry import (
    IPV4_CARRIERS,
    IPV4_SPECIAL,
    IPV6_GLOBAL_UNICAST,
    IPV6_SPECIAL,
    NAT64_WELL_KNOWN,
)

IPAddress = IPv4Address | IPv6Address

# Listed on their own so the intent survives edits to the ranges above; Azure's WireServer is
# a public address that answers only from inside Azure.
CLOUD_METADATA_ADDRESSES: Final[frozenset[IPAddress]] = frozenset(
    {
        IPv4Address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        IPv4Address("169.254.170.2"),  # AWS ECS task metadata
        IPv4Address("100.100.100.200"),  # Alibaba Cloud
        IPv4Address("168.63.129.16"),  # Azure WireServer
        IPv6Address("fd00:ec2::254"),  # AWS IMDS over IPv6
    }
)

_LOOPBACK_V4: Final = IPv4Network("127.0.0.0/8")
_LOOPBACK_V6: Final = IPv6Address("::1")

# Suffixes that name hosts on a private network (RFC 6761, RFC 6762 appendix G, RFC 8375).
_INTERNAL_SUFFIXES: Final[tuple[str, ...]] = (
    "localhost",
    "local",
    "internal",
    "localdomain",
    "home.arpa",
    "intranet",
    "lan",
    "corp",
    "home",
    "private",
)

_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def is_internal_ip(ip: IPAddress, *, allow_loopback: bool = False) -> bool:
    """True when `ip` must not be reached from the server on a user's behalf.

    `allow_loopback` (a test and local-development setting) lets 127.0.0.0/8 and ::1 through,
    and nothing else: not 0.0.0.0, not private ranges, not loopback in an IPv6 disguise.
    """
    if allow_loopback and _is_plain_loopback(ip):
        return False
    return _is_blocked(ip)


def _is_plain_loopback(ip: IPAddress) -> bool:
    if isinstance(ip, IPv4Address):
        return ip in _LOOPBACK_V4
    return ip.scope_id is None and ip == _LOOPBACK_V6


def _is_blocked(ip: IPAddress) -> bool:
    if ip in CLOUD_METADATA_ADDRESSES:
        return True
    if isinstance(ip, IPv4Address):
        return any(ip in block.network for block in IPV4_SPECIAL)
    if ip.scope_id is not None:
        return True  # only link-local and multicast addresses carry a zone
    if any(_is_blocked(inner) for inner in _embedded_ipv4(ip)):
        return True
    if any(ip in carrier for carrier in IPV4_CARRIERS):
        return False  # judged by the IPv4 address it carries, above
    if ip not in IPV6_GLOBAL_UNICAST:
        return True
    return any(ip in block.network for block in IPV6_SPECIAL)


def _embedded_ipv4(ip: IPv6Address) -> list[IPv4Address]:
    """The IPv4 addresses an IPv6 address can lead to (mapped, compatible, NAT64, 6to4, Teredo)."""
    found: list[IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in NAT64_WELL_KNOWN or int(ip) >> 32 == 0:
        found.append(IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def parse_host_literal(host: str) -> IPAddress | None:
    """The address a host string denotes when it is an IP literal, in any spelling a resolver takes.

    Accepts what `inet_aton` accepts (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`), dotted
    quads with a trailing dot, and IPv6 with or without brackets, with a zone id (`%25eth0` or
    `%eth0`, dropped). Returns None for anything that is not a literal (a DNS name, or garbage).
    """
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        return _parse_ipv6(text)
    if text.endswith("."):
        text = text[:-1]
    return _parse_ipv4_like_inet_aton(text)


def _parse_ipv6(text: str) -> IPv6Address | None:
    address, _, _zone = text.partition("%")
    try:
        return IPv6Address(address)
    except ValueError:
        return None


def _parse_ipv4_like_inet_aton(text: str) -> IPv4Address | None:
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        number = _parse_inet_aton_number(part)
        if number is None:
            return None
        numbers.append(number)
    *leading, last = numbers
    if any(n > 0xFF for n in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    value = last
    for index, n in enumerate(leading):
        value |= n << (8 * (3 - index))
    return IPv4Address(value)


def _parse_inet_aton_number(part: str) -> int | None:
    if part.startswith("0x"):
        digits, base = part[2:], 16
    elif len(part) > 1 and part.startswith("0"):
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if not digits or not digits.isascii() or not digits.isalnum():
        return None
    try:
        return int(digits, base)
    except ValueError:
        return None


def is_internal_hostname(host: str, *, allow_loopback: bool = False) -> bool:
    """True when a host, as written in a URL, names something internal without any DNS lookup.

    Internal: IP literals in internal ranges (any spelling), `localhost` and names under it,
    names under private-use suffixes (`.local`, `.internal`, `.localdomain`, `.home.arpa`, ...),
    single-label names (they resolve through the server's search domains), and empty names.
    `allow_loopback` lets loopback literals and the exact name `localhost` through.
    """
    literal = parse_host_literal(host)
    if literal is not None:
        return is_internal_ip(literal, allow_loopback=allow_loopback)
    name = host.strip().lower().removesuffix(".")
    if not name:
        return True
    if allow_loopback and name == "localhost":
        return False
    if "." not in name:
        return True
    return any(name == suffix or name.endswith("." + suffix) for suffix in _INTERNAL_SUFFIXES)


def check_url(
    url: object,
    *,
    schemes: Collection[str],
    field: str = "url",
    max_length: int = 2048,
    allow_loopback: bool = False,
) -> str | None:
    """Why `url` may not be used for an outgoing request, as a message for the user; None if fine.

    This is the creation-time check (scheme, length, shape, literal internal hosts). It cannot
    see where a name resolves; the transport in `opendance.media.safe_http` checks that again on
    every request. `field` names the request field in messages, e.g. "callback_url must use https".
    """
    if not isinstance(url, str) or not url:
        return f"{field} must be a URL"
    if len(url) > max_length:
        return f"{field} must be at most {max_length} characters"
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in url):
        return f"{field} must not contain spaces or control characters"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return f"{field} is not a valid URL"
    if parsed.scheme not in schemes:
        allowed = " or ".join(sorted(schemes))
        return f"{field} must use {allowed}"
    if parsed.userinfo:
        return f"{field} must not contain a user name or password"
    raw_host = parsed.raw_host.decode("ascii")
    if not raw_host:
        return f"{field} must include a host name"
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        return f"{field} has an invalid port (it must be from 1 to 65535)"
    literal = parse_host_literal(raw_host)
    if literal is not None:
        if is_internal_ip(literal, allow_loopback=allow_loopback):
            return f"{field} points to an internal address ({literal})"
        return None
    if not _is_valid_hostname(raw_host):
        return f"{field} has an invalid host name"
    if is_internal_hostname(raw_host, allow_loopback=allow_loopback):
        return f"{field} points to an internal host ({raw_host})"
    return None


def _is_valid_hostname(raw_host: str) -> bool:
    name = raw_host.removesuffix(".")
    if not name or len(name) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))
