"""The SSRF policy on literals: hostile spellings refused, public hosts allowed; no I/O."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from opendance.media.addresses import (
    check_url,
    is_internal_hostname,
    is_internal_ip,
    parse_host_literal,
)

INTERNAL_HOSTS = [
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "2130706433",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0X7F.0.0.1",
    "0x7f000001",
    "0x7f.1",
    "017700000001",
    "127.0.0.1.",
    "10.1",
    "0",
    "0.0.0.0",
    "::1",
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[::]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[fe80::1%25eth0]",
    "fe80::1%eth0",
    "[fc00::1]",
    "[fd00:ec2::254]",
    "[fec0::1]",
    "[ff02::1]",
    "[64:ff9b::a9fe:a9fe]",
    "[64:ff9b::7f00:1]",
    "[64:ff9b:1::8.8.8.8]",
    "[2002:7f00:1::]",
    "[2002:a9fe:a9fe::1]",
    "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",
    "[2001:db8::1]",
    "[3fff::1]",
    "[5f00::1]",
    "[100::1]",
    "[2001:1::1]",
    "[2001:2::1]",
    "[4000::1]",
    "[2002:0a00:0001::1]",
    "[2002:c0a8:0101::1]",
    "192.31.196.1",
    "192.0.0.170",
    "169.254.169.254",
    "0xa9fea9fe",
    "169.254.170.2",
    "100.100.100.200",
    "100.64.0.1",
    "168.63.129.16",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "192.0.0.9",
    "192.0.0.192",
    "192.0.2.1",
    "192.88.99.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "localhost",
    "LOCALHOST.",
    "foo.localhost",
    "metadata.google.internal",
    "instance-data.ec2.internal",
    "printer.local",
    "kubernetes.default.svc.cluster.local",
    "db.localdomain",
    "router.home.arpa",
    "intranet",
    "metadata",
    "",
    ".",
]

PUBLIC_HOSTS = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "[2606:4700:4700::1111]",
    "2001:4860:4860::8888",
    "[64:ff9b::808:808]",
    "[2002:808:808::1]",
    "[2002:5db8:d822::1]",
    "[64:ff9b::5db8:d822]",
    "2a00:1450:4001:82a::200e",
    "example.com",
    "hooks.example.com.",
    "cdn.images.example.org",
    "xn--bcher-kva.de",
    "localhost.example.com",
    "internal.example.com",
]


@pytest.mark.parametrize("host", INTERNAL_HOSTS)
def test_internal_hosts_are_refused(host: str) -> None:
    assert is_internal_hostname(host)


@pytest.mark.parametrize("host", PUBLIC_HOSTS)
def test_public_hosts_are_allowed(host: str) -> None:
    assert not is_internal_hostname(host)


@pytest.mark.parametrize("host", INTERNAL_HOSTS)
def test_internal_hosts_are_refused_in_urls(host: str) -> None:
    url = f"https://{host}/hook"
    assert check_url(url, schemes={"https"}) is not None


@pytest.mark.parametrize("host", PUBLIC_HOSTS)
def test_public_hosts_pass_in_urls(host: str) -> None:
    url = f"https://[{host}]/hook" if ":" in host and "[" not in host else f"https://{host}/hook"
    assert check_url(url, schemes={"https"}) is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("[::ffff:7f00:1]", "::ffff:7f00:1"),
        ("[fe80::1%25eth0]", "fe80::1"),
        ("FE80::1%eth0", "fe80::1"),
        ("example.com", None),
        ("08.0.0.1", None),
        ("0x", None),
        ("1..2", None),
        ("256.0.0.1", None),
        ("4294967296", None),
        ("1.2.3.4.5", None),
        ("[::1", None),
        ("", None),
    ],
)
def test_parse_host_literal(host: str, expected: str | None) -> None:
    parsed = parse_host_literal(host)
    assert parsed == (None if expected is None else ip_address(expected))


@pytest.mark.parametrize(
    "text",
    [
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7f.1",
        "127.1",
        "10.1",
        "1.2.65535",
        "1.2.65536",
        "1.16777215",
        "0xffffffff",
        "4294967296",
        "00",
        "08.0.0.1",
        "0x",
        "0x100.0.0.1",
        "1..2",
        "1.2.3.4.5",
        "99999999999",
    ],
)
def test_ipv4_spellings_match_inet_aton(text: str) -> None:
    """Our parser reads numeric hosts exactly as the C library does (no lookup involved)."""
    try:
        expected: IPv4Address | None = IPv4Address(socket.inet_aton(text))
    except OSError:
        expected = None
    assert parse_host_literal(text) == expected


def test_allow_loopback_allows_loopback_only() -> None:
    for host in ["127.0.0.1", "127.1", "127.9.9.9", "::1", "[::1]", "localhost", "LOCALHOST."]:
        assert not is_internal_hostname(host, allow_loopback=True), host
    for host in [
        "0.0.0.0",
        "10.0.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "[::ffff:127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[fe80::1]",
        "foo.localhost",
        "printer.local",
        "intranet",
    ]:
        assert is_internal_hostname(host, allow_loopback=True), host


def test_is_internal_ip_on_address_objects() -> None:
    assert is_internal_ip(IPv6Address("fe80::1%eth0"))
    assert is_internal_ip(IPv6Address("fe80::1%eth0"), allow_loopback=True)
    assert is_internal_ip(IPv4Address("127.0.0.1"))
    assert not is_internal_ip(IPv4Address("127.0.0.1"), allow_loopback=True)
    assert not is_internal_ip(IPv4Address("8.8.4.4"))
    assert not is_internal_ip(IPv6Address("2a00:1450:4001:82a::200e"))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://hooks.example.com/x", "callback_url must use https"),
        ("ftp://hooks.example.com/x", "callback_url must use https"),
        ("https://user:pass@hooks.example.com/", "must not contain a user name or password"),
        ("https://hooks.example.com\\@127.0.0.1/", "must not contain a user name or password"),
        ("https://hooks.example.com:0/", "invalid port"),
        ("https://hooks.example.com:70000/", "invalid port"),
        ("https://hooks.example.com/a b", "must not contain spaces or control characters"),
        ("https://hooks.example.com/\x00", "must not contain spaces or control characters"),
        ("https://hooks.exam\u200bple.com/", "must not contain spaces or control characters"),
        (" https://hooks.example.com/", "must not contain spaces or control characters"),
        ("https:///path", "must include a host name"),
        ("hooks.example.com/path", "must use https"),
        ("", "callback_url must be a URL"),
        ("https://[::1", "is not a valid URL"),
        ("https://a..b/", "invalid host name"),
        ("https://%31%32%37.0.0.1/", "invalid host name"),
        ("https://2130706433/hook", "points to an internal address (127.0.0.1)"),
        ("https://[::ffff:7f00:1]/hook", "points to an internal address (::ffff:"),
        ("https://metadata.google.internal/", "points to an internal host"),
        ("https://localhost:8443/", "points to an internal host (localhost)"),
    ],
)
def test_check_url_says_what_is_wrong(url: str, message: str) -> None:
    problem = check_url(url, schemes={"https"}, field="callback_url")
    assert problem is not None
    assert message in problem
    assert problem.startswith("callback_url")


def test_check_url_length_limit() -> None:
    url = "https://hooks.example.com/" + "a" * 2100
    assert check_url(url, schemes={"https"}, field="callback_url") == (
        "callback_url must be at most 2048 characters"
    )
    assert check_url(url[:2048], schemes={"https"}) is None


def test_check_url_non_string() -> None:
    assert check_url(None, schemes={"https"}, field="callback_url") == "callback_url must be a URL"


def test_check_url_accepts_image_urls() -> None:
    schemes = {"http", "https"}
    assert check_url("http://cdn.example.com:8080/cat.png?size=large", schemes=schemes) is None
    assert check_url("https://bücher.example/cat.webp", schemes=schemes) is None
    assert "must use http or https" in (check_url("file:///etc/passwd", schemes=schemes) or "")
    assert "must use http or https" in (check_url("gopher://x.example/", schemes=schemes) or "")


def test_check_url_allow_loopback() -> None:
    assert check_url("https://127.0.0.1:8443/h", schemes={"https"}, allow_loopback=True) is None
    assert check_url("https://localhost:8443/h", schemes={"https"}, allow_loopback=True) is None
    assert check_url("https://[::1]:8443/h", schemes={"https"}, allow_loopback=True) is None
    assert check_url("https://10.0.0.1/h", schemes={"https"}, allow_loopback=True) is not None
    assert check_url("https://0.0.0.0/h", schemes={"https"}, allow_loopback=True) is not None


def test_policy_does_not_read_the_interpreters_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same answer on every CPython patch release: `ipaddress`'s flags are never consulted."""

    def refuse(_self: object) -> bool:
        raise AssertionError("the policy consulted ipaddress's own tables")

    for cls in (IPv4Address, IPv6Address):
        for flag in ("is_global", "is_private", "is_reserved", "is_loopback", "is_link_local"):
            monkeypatch.setattr(cls, flag, property(refuse))
    for host in INTERNAL_HOSTS:
        assert is_internal_hostname(host), host
    for host in PUBLIC_HOSTS:
        assert not is_internal_hostname(host), host


def test_every_registry_block_is_internal_except_ipv4_carriers() -> None:
    """Each special-purpose block, first and last address, is refused; 6to4 and NAT64 are judged
    by the IPv4 address they carry."""
    from opendance.media.address_registry import IPV4_CARRIERS, IPV4_SPECIAL, IPV6_SPECIAL

    for block in (*IPV4_SPECIAL, *IPV6_SPECIAL):
        if block.network in IPV4_CARRIERS:
            continue
        for ip in (block.network[0], block.network[-1]):
            assert is_internal_ip(ip), (block.name, ip)
