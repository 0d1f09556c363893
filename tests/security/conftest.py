"""Security tests send traffic to loopback only: a guard fails any other connection attempt."""

from __future__ import annotations

import ipaddress
import socket

import pytest

import clipqueue.urlpolicy as urlpolicy


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):
        return True  # AF_UNIX paths
    try:
        ip = ipaddress.ip_address(address[0].split("%", 1)[0])
    except ValueError:
        return False  # a name: tests connect to addresses only
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Refuse (and record) any connection to an address outside 127.0.0.0/8 and ::1."""
    attempts: list = []
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def guarded(method):
        def connect(self, address):
            if not _is_loopback(address):
                attempts.append(address)
                raise ConnectionRefusedError(f"security tests connect to loopback only, not {address!r}")
            return method(self, address)
        return connect

    monkeypatch.setattr(socket.socket, "connect", guarded(original_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(original_connect_ex))
    yield attempts
    assert attempts == [], f"tried to connect outside loopback: {attempts}"


@pytest.fixture
def fake_dns(monkeypatch):
    """``fake_dns({"vod.example": ["127.0.0.1"]})`` answers those names; others do not resolve.

    Returns the list of lookups made, to show how often a name was resolved.
    """
    lookups: list[str] = []

    def install(table: dict[str, list[str] | callable]):
        def resolve(host: str, port: int) -> list[str]:
            lookups.append(host)
            answer = table.get(host)
            if answer is None:
                raise urlpolicy.ForbiddenSource(f"forbidden source: host {host!r} does not resolve (test DNS)")
            return list(answer()) if callable(answer) else list(answer)

        monkeypatch.setattr(urlpolicy, "resolve_host", resolve)
        return lookups

    return install
