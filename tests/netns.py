"""Hosts for the multi-host test: Linux network namespaces on a private bridge, made and removed by the test.

A :class:`Network` is one "switch" namespace holding a bridge, a /24 of
``10.231.0.0/16`` that no interface of this machine uses yet, and a veth from
the test's own (root) namespace, so the test reaches every host as a client
on another machine would. Each :class:`Host` is a namespace with one veth
into the bridge, its own loopback, and its own hostname for the processes it
runs (Celery names its workers after the host). Cutting a host's cable
(:meth:`Host.cut`) takes its port on the bridge down, as pulling a plug does.

Every name starts with ``cqmh<pid>``: :func:`remove_leftovers` deletes what
a crashed earlier run left (namespaces whose run is gone, with whatever
still runs in them, and its temporary folders), and :meth:`Network.remove`
deletes a run's own.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import suppress
from pathlib import Path

PREFIX = "cqmh"
SUBNETS = ipaddress.ip_network("10.231.0.0/16")
_LOCK = Path("/tmp/cqmh-subnets.lock")  # two runs at once must not pick the same /24
_LEFTOVER = re.compile(rf"^{PREFIX}(\d+)-")


class NamespacesUnavailable(RuntimeError):
    """Network namespaces cannot be made here (no CAP_SYS_ADMIN, no ``ip``): the reason, for a skip."""


def ip(*args: str) -> str:
    """Run ``ip args``; raise with its stderr if it fails."""
    try:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise NamespacesUnavailable("the ip command (iproute2) is not installed") from None
    if result.returncode != 0:
        raise NamespacesUnavailable(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def namespace_pids(namespace: str) -> list[int]:
    """Processes whose network namespace is ``namespace``."""
    with suppress(NamespacesUnavailable):
        return [int(pid) for pid in ip("netns", "pids", namespace).split()]
    return []


def kill_namespace(namespace: str) -> None:
    """SIGKILL every process in ``namespace``, until none is left (a dying parent may still fork)."""
    for _ in range(20):
        pids = namespace_pids(namespace)
        if not pids:
            return
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def delete_namespace(namespace: str) -> None:
    """Kill what runs in ``namespace`` and delete it; its veth ends (and their peers) go with it."""
    kill_namespace(namespace)
    with suppress(NamespacesUnavailable):
        ip("netns", "delete", namespace)


def remove_leftovers() -> None:
    """Delete namespaces, links and folders an earlier run left behind (its process is gone)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        owner = _LEFTOVER.match(folder.name)
        if owner and folder.is_dir() and not _alive(int(owner.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
    with suppress(NamespacesUnavailable):
        for line in ip("netns", "list").splitlines():
            name = line.split()[0] if line.split() else ""
            owner = _LEFTOVER.match(name)
            if owner and not _alive(int(owner.group(1))):
                delete_namespace(name)
        for line in ip("-o", "link", "show").splitlines():
            link = re.match(rf"^\d+: ({PREFIX}(\d+))[@:]", line)
            if link and not _alive(int(link.group(2))):
                with suppress(NamespacesUnavailable):
                    ip("link", "delete", link.group(1))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Host:
    """One namespace on the network: an address, a hostname, and the processes it runs."""

    def __init__(self, network: Network, name: str, address: str, port: str):
        self.network = network
        self.name = name
        self.namespace = f"{network.prefix}-{name}"
        self.address = address
        self.port = port  # its veth's end on the bridge, in the switch namespace
        self.processes: list[subprocess.Popen] = []

    def start(self, argv: list[str], env: dict[str, str], log: Path,
              user: str | None = None) -> subprocess.Popen:
        """Run ``argv`` on this host (its network, its hostname), output to ``log``; as ``user`` if given."""
        if user:
            argv = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", *argv]
        # unshare gives the host a hostname of its own without changing the machine's.
        command = ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "--",
                   "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv]
        with open(log, "ab") as output:
            process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes.append(process)
        return process

    def cut(self) -> None:
        """Take this host's port on the bridge down: nothing reaches it, nothing leaves it."""
        ip("-n", self.network.switch, "link", "set", self.port, "down")

    def kill(self) -> None:
        """SIGKILL every process on this host, as a host that loses power."""
        kill_namespace(self.namespace)
        for process in self.processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(10)


class Network:
    """A bridge in a namespace of its own, hosts on it, and the test's own way in."""

    def __init__(self) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.prefix}-switch"
        self.root_link = self.prefix  # the test's end of its veth; link names are 15 characters at most
        self.hosts: list[Host] = []
        self.subnet: ipaddress.IPv4Network | None = None

    def create(self) -> Network:
        """Make the switch and the test's link into it; raise :class:`NamespacesUnavailable` if impossible."""
        remove_leftovers()
        ip("netns", "add", self.switch)
        try:
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            with open(_LOCK, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.subnet = _free_subnet()
                ip("link", "add", self.root_link, "type", "veth",
                   "peer", "name", "root", "netns", self.switch)
                ip("addr", "add", f"{self.address(1)}/24", "dev", self.root_link)
            ip("link", "set", self.root_link, "up")
            self._plug("root")
        except BaseException:
            self.remove()
            raise
        return self

    def address(self, index: int) -> str:
        return str(self.subnet[index])

    def add_host(self, name: str) -> Host:
        """A new namespace ``name`` with an address on the bridge and a loopback of its own."""
        index = len(self.hosts) + 2
        port = f"p{index}"
        host = Host(self, name, self.address(index), port)
        ip("netns", "add", host.namespace)
        self.hosts.append(host)
        ip("-n", host.namespace, "link", "add", "eth0", "type", "veth",
           "peer", "name", port, "netns", self.switch)
        ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.namespace, "link", "set", "eth0", "up")
        ip("-n", host.namespace, "link", "set", "lo", "up")
        self._plug(port)
        return host

    def _plug(self, port: str) -> None:
        ip("-n", self.switch, "link", "set", port, "master", "br0")
        ip("-n", self.switch, "link", "set", port, "up")

    def remove(self) -> None:
        """Kill every host's processes and delete every namespace and link of this network (again: no-op)."""
        while self.hosts:
            host = self.hosts.pop()
            host.kill()
            delete_namespace(host.namespace)
        delete_namespace(self.switch)  # takes the test's veth with it
        with suppress(NamespacesUnavailable):  # already gone
            ip("link", "delete", self.root_link)

    def folder(self, name: str) -> Path:
        """A new folder in the system's temporary folder that :func:`remove_leftovers` removes if this run
        crashes (for what cannot live in pytest's folders, which are root's alone)."""
        return Path(tempfile.mkdtemp(prefix=f"{self.prefix}-{name}-"))


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of ``SUBNETS`` that no address or route of this (root) namespace is in."""
    used = set()
    listed = ip("-4", "-o", "addr", "show") + ip("-4", "route", "show", "table", "all")
    for line in listed.splitlines():
        for word in re.findall(r"\d+\.\d+\.\d+\.\d+(?:/\d+)?", line):
            network = ipaddress.ip_network(word, strict=False)
            if network.overlaps(SUBNETS):
                used.add(network)
    start = os.getpid() % 250  # runs at once start their search at different places
    candidates = list(SUBNETS.subnets(new_prefix=24))[1:255]
    for subnet in candidates[start:] + candidates[:start]:
        if not any(subnet.overlaps(network) for network in used):
            return subnet
    raise NamespacesUnavailable(f"every /24 of {SUBNETS} is in use on this machine")
