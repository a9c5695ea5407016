"""Test hosts on one machine: each in its own network namespace (``ip netns`` + veth on a bridge in a namespace of
its own, on an isolated private subnet with no route out), with its own host name (a UTS namespace), so that
processes on different "hosts" reach each other only over the network and do not share a host name.

    with Network() as net:
        db = net.host("pg", 10)
        process = db.start(["postgres", ...])       # runs inside the host; db.address is its IP
        db.signal(signal.SIGSTOP)                    # every process of the host: frozen
        db.signal(signal.SIGKILL)                    # the host dies

Where network namespaces cannot be made (no root, no CAP_NET_ADMIN), ``Network(fallback=True)`` gives hosts on
distinct loopback addresses (127.0.0.2, 127.0.0.3 ...) in the machine's own namespace instead, and says so in
``mode``. The test process reaches the hosts through a veth of its own on the bridge (``client`` address).
"""
from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

SUBNET = "10.250.77"      # private, on veths that only these namespaces and the test process see
CLIENT_OCTET = 1


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def namespaces_allowed() -> bool:
    probe = f"ssprobe{uuid.uuid4().hex[:6]}"
    if _ip("netns", "add", probe, check=False).returncode != 0:
        return False
    _ip("netns", "del", probe, check=False)
    return True


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (read before signalling: a killed parent's children move away)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


class Host:
    def __init__(self, network: "Network", name: str, octet: int):
        self.network = network
        self.name = name
        self.namespace = f"{network.prefix}-{name}" if network.mode == "netns" else None
        self.address = f"{SUBNET}.{octet}" if network.mode == "netns" else f"127.0.0.{octet}"
        self.processes: list[subprocess.Popen] = []

    def wrap(self) -> list[str]:
        """The command prefix that runs a program on this host (root: it sets the host name, then drops nothing)."""
        if self.namespace is None:
            return []
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', f"{self.network.prefix}-{self.name}"]

    def start(self, argv: list[str], **popen) -> subprocess.Popen:
        process = subprocess.Popen(self.wrap() + argv, start_new_session=True, **popen)
        self.processes.append(process)
        return process

    def pids(self) -> list[int]:
        return [pid for process in self.processes if process.poll() is None for pid in descendants(process.pid)]

    def signal(self, sig: int) -> list[int]:
        """Sends ``sig`` to every process of the host (all at once, as a machine that stops or dies)."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def kill(self) -> None:
        """The host dies: SIGKILL to all its processes; what a machine's death clears (its /dev/shm) goes too."""
        prefixes = set()
        for pid in self.pids():
            try:
                words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--shm-prefix" in words:
                prefixes.add(words[words.index(b"--shm-prefix") + 1].decode())
        self.signal(signal.SIGCONT)  # a frozen host dies too
        self.signal(signal.SIGKILL)
        for process in self.processes:
            process.wait(30)
        for prefix in prefixes:
            for region in Path("/dev/shm").glob(f"{prefix}*"):
                region.unlink(missing_ok=True)


class Network:
    def __init__(self, fallback: bool = True):
        self.prefix = f"ss{uuid.uuid4().hex[:5]}"
        self.mode = "netns" if namespaces_allowed() else "loopback"
        if self.mode == "loopback" and not fallback:
            raise RuntimeError("network namespaces cannot be made here (ip netns add failed)")
        self.hosts: list[Host] = []
        self.client = f"{SUBNET}.{CLIENT_OCTET}" if self.mode == "netns" else "127.0.0.1"
        self._switch = f"{self.prefix}-sw"
        self._client_port = f"{self.prefix}0c"

    def __enter__(self) -> "Network":
        if self.mode == "netns":
            try:
                _ip("netns", "add", self._switch)
                self._run_in(self._switch, "link", "add", "br0", "type", "bridge")
                self._run_in(self._switch, "link", "set", "br0", "up")
                self._plug(None, f"{SUBNET}.{CLIENT_OCTET}")  # the test process's own port on the switch
            except BaseException:
                self.__exit__()
                raise
        return self

    def _run_in(self, namespace: str, *args: str) -> None:
        _ip("-n", namespace, *args)

    def _plug(self, namespace: str | None, address: str) -> None:
        """A veth from ``namespace`` (None: the test process's own) to the switch's bridge."""
        inside = self._client_port if namespace is None else f"{self.prefix}{len(self.hosts) + 1}h"
        outside = inside + "s"
        _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
        _ip("link", "set", outside, "netns", self._switch)
        self._run_in(self._switch, "link", "set", outside, "master", "br0")
        self._run_in(self._switch, "link", "set", outside, "up")
        if namespace is not None:
            _ip("link", "set", inside, "netns", namespace)
            self._run_in(namespace, "addr", "add", f"{address}/24", "dev", inside)
            self._run_in(namespace, "link", "set", inside, "up")
            self._run_in(namespace, "link", "set", "lo", "up")
        else:
            _ip("addr", "add", f"{address}/24", "dev", inside)
            _ip("link", "set", inside, "up")

    def host(self, name: str, octet: int) -> Host:
        host = Host(self, name, octet)
        if self.mode == "netns":
            _ip("netns", "add", host.namespace)
            self._plug(host.namespace, host.address)
        self.hosts.append(host)
        return host

    def __exit__(self, *exc) -> None:
        for host in self.hosts:
            if host.pids():
                host.kill()
        if self.mode == "netns":
            for host in self.hosts:
                _ip("netns", "del", host.namespace, check=False)
            _ip("link", "del", self._client_port, check=False)
            _ip("netns", "del", self._switch, check=False)  # the hosts' veths go with their namespaces
