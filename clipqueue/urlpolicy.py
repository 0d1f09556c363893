"""Decide whether a source URL may be fetched.

Every URL the service fetches (VOD, playlists, variants, segments, init
segments, keys, and each redirect hop) is vetted by :func:`check_url`: the
scheme must be http or https, the host is parsed the way browsers and
``inet_aton`` parse it (so ``2130706433``, ``0x7f.1`` and ``127.1`` are all
127.0.0.1), names are resolved, and every address must be public unless the
policy relaxes that. :func:`clipqueue.media.http.open_checked` then connects
to the very address that was checked (no second DNS lookup, so no
DNS-rebinding gap) and vets each redirect hop here again.

Entries inside playlists get :func:`check_playlist_uri` (or
:func:`check_playlist_text` for the whole text), which refuses every scheme
but http(s) — ``file:``, ``concat:``, ``data:``, ``subfile,...:`` and friends —
even when private sources are allowed.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from clipqueue.exceptions import ForbiddenSource, SourceUnavailable

ALLOWED_SCHEMES = ("http", "https")
MAX_PLAYLIST_HOSTS = 32
# Lookups bounded by a ``dns_timeout`` run here: a hung resolver holds a thread of this pool, not its caller.
_BOUNDED_LOOKUPS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dns")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SourcePolicy:
    """What sources a deployment accepts.

    ``allow_private`` (``ALLOW_PRIVATE_SOURCES``) admits loopback, private
    (RFC 1918, unique local) and CGNAT addresses; link-local (cloud metadata),
    unspecified, multicast and reserved addresses stay refused.
    ``allowed_hosts`` (``ALLOWED_SOURCE_HOSTS``) narrows sources to those
    hosts and their subdomains. ``allowed_networks``
    (``ALLOWED_PRIVATE_NETWORKS``) admits exactly those networks, e.g. one
    internal origin, without opening the rest of private address space.
    """

    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)
    allowed_networks: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_settings(cls, settings: Any) -> SourcePolicy:
        """The policy a :class:`clipqueue.config.Settings` describes."""
        return cls(
            allow_private=settings.allow_private_sources,
            allowed_hosts=tuple(settings.allowed_source_hosts),
            allowed_networks=tuple(getattr(settings, "allowed_private_networks", ())),
        )


@dataclass(frozen=True)
class CheckedURL:
    """A URL the policy accepted: where to connect, and what to call the host on the wire."""

    url: str
    scheme: str
    host: str  # canonical: lower-case ASCII name, or the address in its standard spelling
    port: int
    addresses: tuple[str, ...]  # every one checked; connections go to these only

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


# --- addresses -------------------------------------------------------------

# Ranges refused unless the policy admits them, with the reason given in errors.
# ALLOW_PRIVATE_SOURCES admits the "relaxable" ones only.
_RELAXABLE = {"loopback", "private", "shared (CGNAT)", "unique local", "site-local"}
_V4_RANGES = [
    (ipaddress.ip_network(net), reason) for net, reason in [
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    ]
]
_V6_RANGES = [
    (ipaddress.ip_network(net), reason) for net, reason in [
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("100::/64", "discard-only"),
        ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
        ("2001::/32", "Teredo"),
        ("2001:10::/28", "ORCHID"),
        ("2001:20::/28", "ORCHIDv2"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ]
]
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, translated, NAT64, 6to4), if any."""
    if address in _MAPPED or address in _TRANSLATED or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _6TO4:
        return address.sixtofour
    return None


def non_public_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address (``None`` if it is one)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "scoped (zone index)"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = non_public_reason(embedded)
            return None if reason is None else f"{reason}, IPv4 {embedded} inside IPv6"
        ranges = _V6_RANGES
    else:
        ranges = _V4_RANGES
    for network, reason in ranges:
        if address in network:
            return reason
    if address.is_multicast:
        return "multicast"
    if not address.is_global:
        return "not globally reachable"
    return None


def address_refusal(address: IPAddress, policy: SourcePolicy) -> str | None:
    """Why ``policy`` refuses ``address`` (``None`` if it may be contacted)."""
    if any(address in ipaddress.ip_network(net, strict=False) for net in policy.allowed_networks
           if ipaddress.ip_network(net, strict=False).version == address.version):
        return None
    reason = non_public_reason(address)
    if reason is None:
        return None
    base = reason.split(",", 1)[0]
    if policy.allow_private and (base in _RELAXABLE or base == "not globally reachable"):
        return None
    return reason


# --- hosts -----------------------------------------------------------------

_NAME_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_DECIMAL = re.compile(r"^[0-9]+$")
_HEX = re.compile(r"^0[xX][0-9a-fA-F]*$")


def _ends_in_number(labels: list[str]) -> bool:
    last = labels[-1]
    return bool(_DECIMAL.match(last) or _HEX.match(last))


def _ipv4_part(part: str) -> int:
    if _HEX.match(part):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        if not re.match(r"^[0-7]+$", part):
            raise ValueError(part)
        return int(part, 8)
    if not _DECIMAL.match(part):
        raise ValueError(part)
    return int(part)


def _loose_ipv4(labels: list[str]) -> ipaddress.IPv4Address:
    """Parse an IPv4 host the way browsers and ``inet_aton`` do: 1-4 parts, decimal, octal or hex."""
    if not 1 <= len(labels) <= 4:
        raise ValueError("too many parts")
    numbers = [_ipv4_part(part) for part in labels]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise ValueError("part out of range")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def canonical_host(host: str) -> tuple[str, IPAddress | None]:
    """Return ``(host, address)``: the host's one spelling, and its address if it is an IP literal.

    Raises ``ForbiddenSource`` for hosts that are neither a plain DNS name nor an
    address (percent signs, zone indexes, odd characters), so no later parser can
    read them differently.
    """
    if not host:
        raise ForbiddenSource("forbidden source: URL has no host")
    if "%" in host:
        raise ForbiddenSource(f"forbidden source: host {host!r} has a percent sign or zone index")
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ForbiddenSource(f"forbidden source: {host!r} is not a valid IPv6 address") from exc
        return address.compressed, address
    try:
        host = host.encode("idna").decode("ascii").lower() if not host.isascii() else host.lower()
    except UnicodeError as exc:
        raise ForbiddenSource(f"forbidden source: host {host!r} is not a valid name") from exc
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # one trailing dot: the root
    if _ends_in_number(labels):
        try:
            address = _loose_ipv4(labels)
        except ValueError as exc:
            raise ForbiddenSource(f"forbidden source: {host!r} is not a valid IPv4 address") from exc
        return str(address), address
    if len(host) > 253 or not all(_NAME_LABEL.match(label) for label in labels):
        raise ForbiddenSource(f"forbidden source: host {host!r} is not a valid name")
    return ".".join(labels), None


def host_allowed(host: str, policy: SourcePolicy) -> bool:
    """True if ``ALLOWED_SOURCE_HOSTS`` admits ``host`` (always, when it is empty)."""
    host = host.lower()
    return not policy.allowed_hosts or any(host == allowed or host.endswith("." + allowed)
                                           for allowed in policy.allowed_hosts)


def _is_localhost_name(host: str) -> bool:
    # RFC 6761: these always mean this machine, whatever a resolver says.
    return host == "localhost" or host.endswith(".localhost")


def resolve_host(host: str, port: int) -> list[str]:
    """Return every address ``host`` resolves to, in the resolver's order.

    This is the one DNS lookup of a fetch; tests replace it to fake DNS.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            # The resolver is failing for now: worth a retry, not a failed clip.
            raise SourceUnavailable(f"DNS lookup of {host!r} failed for now: {exc}") from exc
        raise ForbiddenSource(f"forbidden source: host {host!r} does not resolve: {exc}") from exc
    except UnicodeError as exc:
        raise ForbiddenSource(f"forbidden source: host {host!r} does not resolve: {exc}") from exc
    return list(dict.fromkeys(info[4][0] for info in infos))


def _resolve(host: str, port: int, timeout: float | None) -> list[str]:
    """:func:`resolve_host`, given up after ``timeout`` seconds (``SourceUnavailable``) when one is given."""
    if timeout is None:
        return resolve_host(host, port)
    lookup = _BOUNDED_LOOKUPS.submit(resolve_host, host, port)
    try:
        return lookup.result(timeout=timeout)
    except FutureTimeout as exc:
        lookup.cancel()  # a lookup still queued behind hung ones never starts
        raise SourceUnavailable(f"DNS lookup of {host!r} took longer than {timeout:g}s") from exc


# --- URLs ------------------------------------------------------------------

def _split(url: str):
    if not isinstance(url, str) or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 or ch == "\\" for ch in url):
        raise ForbiddenSource("forbidden source: URL has spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ForbiddenSource(f"forbidden source: malformed URL {url[:200]!r}") from exc
    return parts, port


def vet_url(url: str, policy: SourcePolicy, dns_timeout: float | None = None) -> CheckedURL:
    """Check ``url`` against ``policy`` and return where it may be fetched from.

    Raises ``ForbiddenSource`` (the message starts with "forbidden source")
    when it may not be fetched; nothing has been sent anywhere then. With
    ``dns_timeout``, a name lookup slower than that raises ``SourceUnavailable``
    (undecided, not refused).
    """
    parts, port = _split(url)
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise ForbiddenSource(f"forbidden source: scheme {parts.scheme or '(none)'!r} is not http or https")
    if "@" in parts.netloc:
        raise ForbiddenSource("forbidden source: URLs with user names or passwords are not accepted")
    host, literal = canonical_host(parts.hostname or "")
    if port == 0:
        raise ForbiddenSource("forbidden source: port 0")
    port = port or (443 if scheme == "https" else 80)
    if not host_allowed(host, policy):
        raise ForbiddenSource(f"forbidden source: host {host!r} is not in ALLOWED_SOURCE_HOSTS")
    if literal is not None:
        addresses = [literal]
    else:
        if _is_localhost_name(host) and not policy.allow_private:
            raise ForbiddenSource(f"forbidden source: {host!r} is this machine (loopback)")
        addresses = []
        for text in _resolve(host, port, dns_timeout):
            try:
                addresses.append(ipaddress.ip_address(text))
            except ValueError as exc:
                raise ForbiddenSource(f"forbidden source: {host!r} resolved to {text!r}") from exc
        if not addresses:
            raise ForbiddenSource(f"forbidden source: host {host!r} has no address")
    for address in addresses:
        reason = address_refusal(address, policy)
        if reason is not None:
            shown = "" if literal is not None else f"{host!r} resolves to "
            raise ForbiddenSource(f"forbidden source: {shown}{address} is {reason}")
    return CheckedURL(url, scheme, host, port, tuple(str(a) for a in addresses))


def check_url(url: str, policy: SourcePolicy, dns_timeout: float | None = None) -> list[str]:
    """Raise ``ForbiddenSource`` unless ``url`` may be fetched; return the checked addresses.

    ``dns_timeout`` as for :func:`vet_url`.
    """
    return list(vet_url(url, policy, dns_timeout).addresses)


# --- playlists -------------------------------------------------------------

# Anything that looks like "<scheme>:" to ffmpeg or to a URL parser, including
# ffmpeg's "subfile,,start,0,end,0,,:" option syntax.
_SCHEME_PREFIX = re.compile(r"^([A-Za-z0-9+.,\-]+):")
_URI_ATTRIBUTE = re.compile(r"""\bURI\s*=\s*(?:"([^"]*)"|'([^']*)'|([^,\s]+))""", re.IGNORECASE)


def check_playlist_uri(uri: str, base_url: str, policy: SourcePolicy) -> str:
    """Return the absolute URL of a playlist entry, or raise ``ForbiddenSource``.

    Entries with any scheme but http(s) — ``file:``, ``concat:``, ``data:``,
    ``subfile,...:``, ``crypto:``, ``pipe:``, ``ftp:`` — are refused even when
    private sources are allowed; the resulting URL then gets :func:`check_url`.
    """
    uri = uri.strip()
    if not uri:
        raise ForbiddenSource("forbidden source: empty playlist entry")
    prefix = _SCHEME_PREFIX.match(uri)
    if prefix and prefix.group(1).lower() not in ALLOWED_SCHEMES:
        raise ForbiddenSource(f"forbidden source: playlist entry with scheme {prefix.group(1)[:40]!r}")
    _split(uri)
    absolute = urljoin(base_url, uri)
    check_url(absolute, policy)
    return absolute


def playlist_uris(text: str) -> list[str]:
    """Every URI an M3U8 text refers to: URI lines and every ``URI=`` attribute of every tag.

    Read from the raw text rather than a parser's model, so tags a parser
    ignores (``#EXT-X-MEDIA``, ``#EXT-X-I-FRAME-STREAM-INF``, ``#EXT-X-PART``,
    ``#EXT-X-PRELOAD-HINT``, ``#EXT-X-SESSION-DATA``...) are covered too.
    Lines are split at every line break Python knows, a superset of what
    playlist parsers and ffmpeg split at.
    """
    uris = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            for match in _URI_ATTRIBUTE.finditer(line):
                uris.append(next(group for group in match.groups() if group is not None))
        else:
            uris.append(line)
    return uris


def check_playlist_text(text: str, base_url: str, policy: SourcePolicy) -> None:
    """Raise ``ForbiddenSource`` if any entry of the playlist ``text`` (read from ``base_url``) is forbidden.

    Each distinct origin is resolved once.
    """
    origins: set[tuple[str, str]] = set()
    for uri in playlist_uris(text):
        uri = uri.strip()
        prefix = _SCHEME_PREFIX.match(uri)
        if prefix and prefix.group(1).lower() not in ALLOWED_SCHEMES:
            raise ForbiddenSource(f"forbidden source: playlist entry with scheme {prefix.group(1)[:40]!r}")
        _split(uri)
        absolute = urljoin(base_url, uri)
        parts = urlsplit(absolute)
        origin = (parts.scheme.lower(), parts.netloc.lower())
        if origin in origins:
            continue
        if len(origins) >= MAX_PLAYLIST_HOSTS:
            raise ForbiddenSource(f"forbidden source: playlist refers to more than {MAX_PLAYLIST_HOSTS} hosts")
        check_url(absolute, policy)
        origins.add(origin)
