"""The `helm test` pod's script, run against real gRPC health servers and an HTTP server."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


@pytest.fixture(scope="module")
def hook_script(rendered):
    pod = next(
        o for o in rendered["default"] if o["kind"] == "Pod" and o["metadata"]["annotations"]["helm.sh/hook"] == "test"
    )
    command = pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "-c"]
    return command[2]


@pytest.fixture
def health_servers():
    servers, servicers, targets = [], [], []
    for _ in range(2):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        servicers.append(servicer)
        targets.append(f"127.0.0.1:{port}")
    yield targets, servicers
    for server in servers:
        server.stop(None)


@pytest.fixture
def gateway():
    state = {"ready": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status = state["ready"] if self.path.startswith("/healthz") else 401
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", state
    server.shutdown()


def run(script, targets, url):
    env = {"GRPC_TARGETS": ",".join(targets), "GATEWAY_URL": url, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_passes_when_every_service_serves_and_the_api_answers(hook_script, health_servers, gateway):
    targets, _ = health_servers
    result = run(hook_script, targets, gateway[0])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{targets[0]}: SERVING" in result.stdout


def test_fails_when_one_service_is_not_serving(hook_script, health_servers, gateway):
    targets, servicers = health_servers
    servicers[1].set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = run(hook_script, targets, gateway[0])
    assert result.returncode == 1
    assert f"{targets[1]}: NOT_SERVING" in result.stdout


def test_fails_when_a_service_is_unreachable_or_the_gateway_not_ready(hook_script, health_servers, gateway):
    targets, _ = health_servers
    assert run(hook_script, [*targets, "127.0.0.1:1"], gateway[0]).returncode == 1
    gateway[1]["ready"] = 503
    assert run(hook_script, targets, gateway[0]).returncode == 1
