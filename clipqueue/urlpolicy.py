"""Decide whether a source URL may be fetched.

Every URL the service fetches (VOD, playlists, variants, segments, init
segments) goes through :func:`check_url` first, so a caller cannot make the
workers read local files or reach internal networks.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from clipqueue.exceptions import ForbiddenSource

ALLOWED_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class SourcePolicy:
    """What sources a deployment accepts (from ``ALLOW_PRIVATE_SOURCES`` and ``ALLOWED_SOURCE_HOSTS``)."""

    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return _is_public(embedded)
    return address.is_global and not address.is_multicast


def _host_allowed(host: str, allowed_hosts: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == allowed or host.endswith("." + allowed) for allowed in allowed_hosts)


def resolve_host(host: str, port: int) -> list[str]:
    """Return every address ``host`` resolves to (the hook tests replace to fake DNS)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ForbiddenSource(f"source host {host!r} does not resolve: {exc}") from exc
    return sorted({info[4][0] for info in infos})


def check_url(url: str, policy: SourcePolicy) -> list[str]:
    """Raise ``ForbiddenSource`` unless ``url`` may be fetched; return the checked addresses."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise ForbiddenSource(f"forbidden source: scheme {parts.scheme or '(none)'!r} is not http or https")
    host = parts.hostname
    if not host:
        raise ForbiddenSource("forbidden source: URL has no host")
    if policy.allowed_hosts and not _host_allowed(host, policy.allowed_hosts):
        raise ForbiddenSource(f"forbidden source: host {host!r} is not in ALLOWED_SOURCE_HOSTS")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as exc:
        raise ForbiddenSource(f"forbidden source: bad port in {url!r}") from exc
    addresses = resolve_host(host, port)
    if not policy.allow_private:
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if not _is_public(address):
                raise ForbiddenSource(
                    f"forbidden source: {host!r} resolves to non-public address {address}"
                )
    return addresses
