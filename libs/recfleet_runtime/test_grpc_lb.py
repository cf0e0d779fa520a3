"""Scaling out spreads load: one target, every address behind it, and new pods join.

Several real grpc.aio servers of one service listen on 127.0.0.1, 127.0.0.2 and 127.0.0.3
(same port) and one DNS name resolves to them, as a headless Service's name resolves to its
ready pods. A small DNS server in the test answers that name, and the client reaches it
through the target's authority (`dns://<dns server>/<name>:<port>`), so the calls go
through the same resolver and load-balancing policy as `dns:///name:port` in a cluster.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections import Counter

import pytest
from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc

from recfleet_runtime.grpcclient import Downstream
from recfleet_runtime.grpcserver import GrpcService
from recfleet_runtime.ports import free_port
from recfleet_runtime.settings import ServiceSettings

SERVICE = "recfleet.ranking.v1.RankingService"
NAME = "ranking-headless.recfleet.test"
TYPE_A, CLASS_IN = 1, 1
NXDOMAIN = 3


class NameServer:
    """Answers A queries for the names it holds, from a UDP port on 127.0.0.1.

    Records carry TTL 0 so the resolver asks again on every re-resolution; other record
    types of a known name get an empty answer, unknown names NXDOMAIN."""

    def __init__(self, records: dict[str, list[str]]):
        self.records = records
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                query, client = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            reply = self._answer(query)
            if reply is not None:
                self._sock.sendto(reply, client)

    def _answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        query_id, flags = struct.unpack("!HH", query[:4])
        labels, offset = [], 12
        while offset < len(query) and query[offset]:
            length = query[offset]
            labels.append(query[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
            offset += 1 + length
        offset += 1
        if offset + 4 > len(query):
            return None
        qtype, _ = struct.unpack("!HH", query[offset : offset + 4])
        question = query[12 : offset + 4]
        addresses = self.records.get(".".join(labels).lower())
        answers = []
        if addresses is not None and qtype == TYPE_A:
            # 0xC00C points back at the question's name.
            answers = [struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, 0, 4) + socket.inet_aton(a) for a in addresses]
        # Response, authoritative, recursion desired echoed, recursion available.
        reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | (NXDOMAIN if addresses is None else 0)
        header = struct.pack("!HHHHHH", query_id, reply_flags, 1, len(answers), 0, 0)
        return header + question + b"".join(answers)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()
        self._sock.close()


class Pod(ranking_pb2_grpc.RankingServiceServicer):
    """One replica: counts the calls it answered."""

    def __init__(self) -> None:
        self.calls = 0

    async def GetModelStatus(self, request, context):
        self.calls += 1
        return ranking_pb2.ModelStatus(ranker_version="v1", model_loaded=True)


async def start_pod(address: str, port: int, **settings) -> tuple[GrpcService, Pod]:
    pod = Pod()
    service = GrpcService(
        "ranking", ServiceSettings(metrics_port=0, drain_seconds=0.0, grace_seconds=0.5, **settings), [SERVICE]
    )
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(pod, service.server)
    await service.start(f"{address}:{port}")
    await service.health.set_serving(True)
    return service, pod


def client(dns: NameServer, port: int, **kwargs) -> Downstream:
    return Downstream(
        name="ranking",
        target=f"dns://127.0.0.1:{dns.port}/{NAME}:{port}",
        stub_class=ranking_pb2_grpc.RankingServiceStub,
        service=SERVICE,
        timeout=5.0,
        **kwargs,
    )


async def call_many(downstream: Downstream, count: int) -> None:
    for _ in range(count):
        request = ranking_pb2.GetModelStatusRequest()
        await downstream.call(downstream.stub.GetModelStatus, request, method="GetModelStatus")


@pytest.fixture
def dns():
    server = NameServer({})
    yield server
    server.close()


async def test_calls_spread_over_every_address_of_one_name(dns):
    port = free_port()
    dns.records[NAME] = ["127.0.0.1", "127.0.0.2"]
    started = [await start_pod(address, port) for address in dns.records[NAME]]
    downstream = client(dns, port)
    try:
        await call_many(downstream, 1000)
    finally:
        await downstream.close()
        await asyncio.gather(*(service.stop() for service, _ in started))
    shares = [pod.calls for _, pod in started]
    assert sum(shares) == 1000
    assert min(shares) >= 400, f"calls per server: {shares}"


async def test_a_server_added_later_gets_traffic_after_the_connection_age(dns):
    port = free_port()
    age = {"max_connection_age_seconds": 1.0, "max_connection_age_grace_seconds": 1.0}
    dns.records[NAME] = ["127.0.0.1", "127.0.0.2"]
    started: list[tuple[GrpcService, Pod]] = []
    # Re-resolution is rate-limited; a cluster's default waits longer than a test should.
    downstream = client(dns, port, min_seconds_between_resolutions=0.2)
    try:
        for address in dns.records[NAME]:
            started.append(await start_pod(address, port, **age))
        await call_many(downstream, 200)
        # The HPA adds a pod: its address joins the headless Service's DNS answer. The
        # channel still holds its old connections; it asks DNS again once one is aged out.
        started.append(await start_pod("127.0.0.3", port, **age))
        third = started[-1][1]
        dns.records[NAME] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        deadline = time.monotonic() + 15
        while third.calls == 0 and time.monotonic() < deadline:
            await call_many(downstream, 10)
            await asyncio.sleep(0.01)
        assert third.calls > 0, "the new server got no traffic"
        before = Counter({index: pod.calls for index, (_, pod) in enumerate(started)})
        await call_many(downstream, 900)
        after = Counter({index: pod.calls for index, (_, pod) in enumerate(started)})
    finally:
        await downstream.close()
        await asyncio.gather(*(service.stop() for service, _ in started))
    shares = [after[index] - before[index] for index in range(3)]
    assert sum(shares) == 900
    assert min(shares) >= 200, f"calls per server once the third joined: {shares}"
