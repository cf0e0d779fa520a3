"""The gateway as it runs in a pod: `python -m recfleet_gateway` with two workers, in
front of the scripted fleet. Metrics come from a port of their own and add up over the
workers; SIGTERM drains before it stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from gateway_test_support import ADMIN_KEY
from recfleet_runtime.ports import free_port

DRAIN_SECONDS = 3.0


def gateway_env(fleet, pg_dsn: str, redis_url: str, port: int, metrics_port: int, metrics_dir: str) -> dict[str, str]:
    targets = fleet.settings_overrides()
    env = dict(os.environ)
    env.update(
        {
            "RECFLEET_POSTGRES_DSN": pg_dsn,
            "RECFLEET_REDIS_URL": redis_url,
            "RECFLEET_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
            "RECFLEET_GATEWAY_RATE_LIMIT_PER_USER": "100000/minute",
            "RECFLEET_GATEWAY_PORT": str(port),
            "RECFLEET_GATEWAY_METRICS_PORT": str(metrics_port),
            "RECFLEET_GATEWAY_WORKERS": "2",
            "RECFLEET_GATEWAY_DRAIN_SECONDS": str(DRAIN_SECONDS),
            "RECFLEET_GATEWAY_GRACE_SECONDS": "5",
            "RECFLEET_GATEWAY_REQUEST_TIMEOUT": "10",
            "RECFLEET_GATEWAY_FEATURE_STORE_TIMEOUT": "2",
            "RECFLEET_GATEWAY_CANDIDATE_GEN_TIMEOUT": "2",
            "RECFLEET_GATEWAY_RANKING_TIMEOUT": "2",
            "RECFLEET_GATEWAY_MAX_IN_FLIGHT": "0",
            "RECFLEET_GATEWAY_BODY_TIMEOUT_SECONDS": "1",
            "RECFLEET_GATEWAY_HEADER_TIMEOUT_SECONDS": "1.5",
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        }
    )
    for name, value in targets.items():
        env[f"RECFLEET_GATEWAY_{name.upper()}"] = value
    return env


def spawn(env: dict[str, str], log_path) -> subprocess.Popen:
    with open(log_path, "wb") as log:  # the child keeps its own copy
        # A session of its own: teardown stops the parent and its workers together.
        return subprocess.Popen(
            [sys.executable, "-m", "recfleet_gateway"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture
async def gateway_process(fleet, pg_dsn, redis_url, tmp_path):
    port, metrics_port = free_port(), free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = gateway_env(fleet, pg_dsn, redis_url, port, metrics_port, str(metrics_dir))
    process = await asyncio.to_thread(spawn, env, tmp_path / "gateway.log")
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the gateway did not become ready"
                try:
                    if (await http.get(f"{url}/healthz/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        yield process, url, f"http://127.0.0.1:{metrics_port}/metrics", metrics_dir
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def counted(text: str, route: str) -> float:
    pattern = re.compile(r"^recfleet_gateway_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE)
    return sum(float(m["value"]) for m in pattern.finditer(text) if f'route="{route}"' in m["labels"])


async def test_every_scrape_counts_the_requests_of_every_worker(gateway_process):
    _, url, metrics_url, metrics_dir = gateway_process
    requests = 300
    # A connection per request, so the kernel spreads them over both workers.
    async with httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        for _ in range(requests):
            assert (await http.get(f"{url}/healthz/live")).status_code == 200
        assert (await http.get(f"{url}/metrics")).status_code == 404, "metrics must not be on the public port"
        scrapes = [counted((await http.get(metrics_url)).text, "/healthz/live") for _ in range(5)]
    assert scrapes == [requests] * 5
    writers = {re.sub(r"\D", "", name) for name in os.listdir(metrics_dir) if name.startswith("counter_")}
    assert len(writers) >= 2, f"only {writers} wrote samples: both workers should have served"


async def test_sigterm_drains_under_load_without_failing_a_request(gateway_process):
    process, url, _, _ = gateway_process
    results: list[tuple[float, bool]] = []
    stop = asyncio.Event()

    async def client(user: int) -> None:
        async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    reply = await http.get(f"{url}/v1/recommendations", params={"user_id": f"warm-{user}", "limit": 5})
                    ok = reply.status_code == 200
                except httpx.HTTPError:
                    ok = False
                results.append((started, ok))
                await asyncio.sleep(0.01)

    clients = [asyncio.create_task(client(n % 3 + 1)) for n in range(6)]
    await asyncio.sleep(1.5)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    # Readiness turns 503 (the parent passes the signal on within 0.5 s) so balancers stop
    # sending, while requests still succeed.
    async with httpx.AsyncClient(timeout=2) as http:
        while (ready := await http.get(f"{url}/healthz/ready")).status_code == 200:
            assert time.monotonic() - signalled < 1.5, "readiness stayed 200 after SIGTERM"
            await asyncio.sleep(0.05)
    assert ready.status_code == 503 and "draining" in ready.json()["detail"]
    await asyncio.sleep(DRAIN_SECONDS - 1.0)
    stop.set()
    await asyncio.gather(*clients)
    exit_code = await asyncio.to_thread(process.wait, DRAIN_SECONDS + 10)
    before = [ok for started, ok in results if started < signalled]
    during = [ok for started, ok in results if signalled <= started < signalled + DRAIN_SECONDS - 1.0]
    assert len(before) > 10 and all(before), f"{before.count(False)} of {len(before)} failed before the signal"
    assert len(during) > 10 and all(during), f"{during.count(False)} of {len(during)} failed while draining"
    assert exit_code == 0


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def trickle(writer: asyncio.StreamWriter, data: bytes, pause: float) -> None:
    """Sends `data` a byte at a time, `pause` seconds apart, as a slowloris client does."""
    with contextlib.suppress(ConnectionError):  # the gateway may hang up first
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(pause)


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response of a keep-alive connection: its head and its body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    length = int(re.findall(rb"(?im)^content-length: *(\d+)", head)[0])
    return head, await asyncio.wait_for(reader.readexactly(length), 20)


def slow_clients(metrics: str, phase: str) -> float:
    pattern = re.compile(rf'^recfleet_gateway_slow_clients_total\{{phase="{phase}"\}} (\S+)$', re.MULTILINE)
    return sum(float(value) for value in pattern.findall(metrics))


async def post_raw(url: str, head: bytes, body_parts: list[bytes]) -> tuple[bytes, asyncio.StreamWriter]:
    """Sends a request's head and body parts over a raw connection, as a slow or endless
    client would; returns what the gateway answered and the connection."""
    reader, writer = await connect(url)
    writer.write(head)
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # it may answer and close first
        for part in body_parts:
            writer.write(part)
            await writer.drain()
    answer_head, answer_body = await read_response(reader)
    return answer_head + answer_body, writer


def events_head(extra: str) -> bytes:
    return (
        "POST /v1/events HTTP/1.1\r\nHost: gateway\r\n"
        f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\n{extra}\r\n"
    ).encode()


async def test_a_body_that_never_finishes_is_answered_408_and_holds_nothing(gateway_process):
    _, url, metrics_url, _ = gateway_process
    slow = asyncio.create_task(post_raw(url, events_head("Content-Length: 1000\r\n"), [b'{"events": [']))
    # While that client sits on its body, the gateway serves everyone else.
    async with httpx.AsyncClient(timeout=5, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        assert (await http.get(f"{url}/v1/popular")).status_code == 200
        answer, writer = await slow
        writer.close()
        assert slow_clients((await http.get(metrics_url)).text, "body") == 1
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"application/problem+json" in answer and b"did not arrive within 1 s" in answer


async def test_an_endless_chunked_body_is_cut_at_the_size_limit(gateway_process):
    _, url, _, _ = gateway_process
    chunk = b"x" * 65536
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 24  # 1.5 MiB, past the 1 MiB limit, and no end
    answer, writer = await post_raw(url, events_head("Transfer-Encoding: chunked\r\n"), parts)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"application/problem+json" in answer


async def test_headers_sent_a_byte_a_second_are_answered_408_and_the_gateway_serves_on(gateway_process):
    _, url, metrics_url, _ = gateway_process
    reader, writer = await connect(url)
    # Sixty bytes at one a second would take a minute; the gateway allows 1.5 s.
    partial_head = b"GET /v1/popular HTTP/1.1\r\nHost: gateway\r\nX-Pad: " + b"x" * 30
    sender = asyncio.create_task(trickle(writer, partial_head, 1))
    try:
        answer = await asyncio.wait_for(reader.read(), 20)  # to the end: answered, then closed
    finally:
        sender.cancel()
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout"), answer[:300]
    assert b"connection: close" in head.lower() and b"application/problem+json" in head
    problem = json.loads(body)
    assert problem["detail"] == "the request headers did not arrive within 1.5 s"
    assert problem["title"] == "Request Timeout" and problem["request_id"]
    async with httpx.AsyncClient(timeout=5, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        assert (await http.get(f"{url}/v1/popular")).status_code == 200
        assert slow_clients((await http.get(metrics_url)).text, "headers") == 1


async def test_headers_sent_slowly_but_within_the_timeout_are_served(gateway_process):
    _, url, _, _ = gateway_process
    reader, writer = await connect(url)
    head = b"GET /healthz/live HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
    for start in range(0, len(head), 16):  # four parts, a fifth of a second apart
        writer.write(head[start : start + 16])
        await writer.drain()
        await asyncio.sleep(0.2)
    answer = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


async def test_an_idle_keep_alive_connection_is_closed_without_a_408(gateway_process):
    _, url, _, _ = gateway_process
    reader, writer = await connect(url)
    writer.write(b"GET /healthz/live HTTP/1.1\r\nHost: gateway\r\n\r\n")
    head, _ = await read_response(reader)
    assert head.startswith(b"HTTP/1.1 200"), head
    # Idle past the header timeout: uvicorn's keep-alive timeout (5 s) closes it, unanswered.
    rest = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    assert rest == b""


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(gateway_process):
    _, url, _, _ = gateway_process
    reader, writer = await connect(url)
    rest = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    assert rest == b""
