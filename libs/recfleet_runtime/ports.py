"""Ports for processes started on this machine: local fleets, tests and benchmarks."""

from __future__ import annotations

import errno
import random
import socket
import time
from pathlib import Path

_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((host, port))
        except OSError as exc:
            if family == socket.AF_INET6 and not socket.has_ipv6:
                continue
            if exc.errno == errno.EADDRNOTAVAIL:
                continue
            return False
    return True


def free_port() -> int:
    """A port nothing listens on, for a process started a moment later.

    It is drawn below the kernel's ephemeral range: a port the kernel hands out to outgoing
    connections (to Postgres, Redis, the broker) could otherwise be taken between this choice
    and the child's bind. Ports handed out by this process are never handed out twice.
    """
    low, _ = _ephemeral_range()
    top = max(low - 1, 20000)
    for _ in range(1000):
        port = random.randint(max(top - 12000, 10000), top)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found below the ephemeral range")


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")
