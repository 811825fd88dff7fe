"""The IANA special-purpose address registries, kept here as explicit tables.

Why not `ipaddress.is_global` / `is_private`: CPython's tables change between patch releases
(3.11.2 calls the public 6to4 address `2002:808:808::1` private, 3.11.7 does not; 3.12.4 fixed
CVE-2024-4032), so the same server would allow a URL on one interpreter and refuse it on
another. These tables are the registries as published, with the date read, so the policy in
`opendance.media.addresses` is the same on every supported Python.

Sources (read 2026-11):
- https://www.iana.org/assignments/iana-ipv4-special-registry/
- https://www.iana.org/assignments/iana-ipv6-special-registry/
- https://www.iana.org/assignments/ipv4-address-space/ (multicast, reserved)
- https://www.iana.org/assignments/ipv6-address-space/ (2000::/3 is the only global unicast)

Each entry says whether the registry marks the block globally reachable. The policy blocks every
entry here whatever that flag says (a "globally reachable" anycast block such as 192.0.0.9/32 or
2001:1::1/128 is no place a user's image or webhook lives), except the forms that carry an IPv4
address (6to4, NAT64), which are judged by the address they carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Final


@dataclass(frozen=True, slots=True)
class SpecialBlock:
    """One row of a special-purpose registry."""

    network: IPv4Network | IPv6Network
    name: str
    globally_reachable: bool


def _v4(cidr: str, name: str, reachable: bool = False) -> SpecialBlock:
    return SpecialBlock(IPv4Network(cidr), name, reachable)


def _v6(cidr: str, name: str, reachable: bool = False) -> SpecialBlock:
    return SpecialBlock(IPv6Network(cidr), name, reachable)


IPV4_SPECIAL: Final[tuple[SpecialBlock, ...]] = (
    _v4("0.0.0.0/8", '"This network" (0.0.0.0 reaches the local host on Linux)'),
    _v4("10.0.0.0/8", "Private-Use"),
    _v4("100.64.0.0/10", "Shared Address Space (carrier-grade NAT)"),
    _v4("127.0.0.0/8", "Loopback"),
    _v4("169.254.0.0/16", "Link Local (most cloud metadata services)"),
    _v4("172.16.0.0/12", "Private-Use"),
    _v4("192.0.0.0/24", "IETF Protocol Assignments"),
    _v4("192.0.0.9/32", "Port Control Protocol Anycast", True),
    _v4("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", True),
    _v4("192.0.2.0/24", "Documentation (TEST-NET-1)"),
    _v4("192.31.196.0/24", "AS112-v4", True),
    _v4("192.52.193.0/24", "AMT", True),
    _v4("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)"),
    _v4("192.168.0.0/16", "Private-Use"),
    _v4("192.175.48.0/24", "Direct Delegation AS112 Service", True),
    _v4("198.18.0.0/15", "Benchmarking"),
    _v4("198.51.100.0/24", "Documentation (TEST-NET-2)"),
    _v4("203.0.113.0/24", "Documentation (TEST-NET-3)"),
    _v4("224.0.0.0/4", "Multicast (IPv4 address space registry)"),
    _v4("240.0.0.0/4", "Reserved"),
    _v4("255.255.255.255/32", "Limited Broadcast"),
)

IPV6_SPECIAL: Final[tuple[SpecialBlock, ...]] = (
    _v6("::1/128", "Loopback Address"),
    _v6("::/128", "Unspecified Address"),
    _v6("::/96", "Deprecated IPv4-compatible addresses"),
    _v6("::ffff:0:0/96", "IPv4-mapped Address"),
    _v6("::ffff:0:0:0/96", "IPv4-translated Address (SIIT)"),
    _v6("64:ff9b::/96", "IPv4-IPv6 Translation (NAT64 well-known prefix)", True),
    _v6("64:ff9b:1::/48", "IPv4-IPv6 Translation (local use)"),
    _v6("100::/64", "Discard-Only Address Block"),
    _v6("100:0:0:1::/64", "Dummy IPv6 Prefix"),
    _v6("2001::/23", "IETF Protocol Assignments"),
    _v6("2001::/32", "TEREDO"),
    _v6("2001:1::1/128", "Port Control Protocol Anycast", True),
    _v6("2001:1::2/128", "Traversal Using Relays around NAT Anycast", True),
    _v6("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", True),
    _v6("2001:2::/48", "Benchmarking"),
    _v6("2001:3::/32", "AMT", True),
    _v6("2001:4:112::/48", "AS112-v6", True),
    _v6("2001:20::/28", "ORCHIDv2", True),
    _v6("2001:30::/28", "Drone Remote ID Protocol Entity Tags", True),
    _v6("2001:db8::/32", "Documentation"),
    _v6("2002::/16", "6to4", True),
    _v6("2620:4f:8000::/48", "Direct Delegation AS112 Service", True),
    _v6("3fff::/20", "Documentation"),
    _v6("5f00::/16", "Segment Routing (SRv6) SIDs"),
    _v6("fc00::/7", "Unique-Local"),
    _v6("fe80::/10", "Link-Local Unicast"),
    _v6("fec0::/10", "Deprecated site-local (IPv6 address space registry)"),
    _v6("ff00::/8", "Multicast (IPv6 address space registry)"),
)

# Forms whose meaning is the IPv4 address inside them; the policy unwraps and judges that.
NAT64_WELL_KNOWN: Final = IPv6Network("64:ff9b::/96")
SIX_TO_FOUR: Final = IPv6Network("2002::/16")
IPV4_CARRIERS: Final[frozenset[IPv6Network]] = frozenset({NAT64_WELL_KNOWN, SIX_TO_FOUR})

# The IPv6 address space registry allocates global unicast from 2000::/3 only.
IPV6_GLOBAL_UNICAST: Final = IPv6Network("2000::/3")
