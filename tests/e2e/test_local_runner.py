"""Issue 11 item 8: `make run` stops everything whatever the signal, and supervises its
services like a kubelet.

Most tests start the real runner (`python -m recfleet_ctl.localfleet run`) as a
subprocess on free ports, against a database and a Redis DB index of their own, with
no batch pipeline and one shard so it starts in seconds. A process belongs to the fleet
under test when its environment names the test's state directory: that finds every
service, the broker and the runner's watchdog, whatever the runner recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import psycopg
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recfleet_runtime.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_DSN = os.environ["RECFLEET_TEST_POSTGRES_ADMIN_DSN"]
REDIS_URL = f"{os.environ['RECFLEET_TEST_REDIS']}/{int(os.environ.get('RECFLEET_TEST_RUNNER_REDIS_DB', '12'))}"
SERVICES = {"feature-store", "candidate-gen-0", "ranking", "event-ingest", "event-sink", "event-realtime", "gateway"}


def start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Runner:
    """One `make run` (or the runner itself) in a session of its own, as a terminal would start it."""

    def __init__(self, env: dict[str, str], tmp_path: Path):
        self.env = env
        self.state_dir = Path(env["RECFLEET_STATE_DIR"])
        self.record_path = self.state_dir / "fleet.json"
        self.output_path = tmp_path / f"runner-{uuid.uuid4().hex[:6]}.out"
        self.popen: subprocess.Popen | None = None

    def start(self, via_make: bool = False) -> Runner:
        command = [sys.executable, "-m", "recfleet_ctl.localfleet", "run"]
        if via_make:
            makefile = self.output_path.with_suffix(".mk")
            makefile.write_text(f"run:\n\t{' '.join(command)}\n")
            command = ["make", "--no-print-directory", "-f", str(makefile), "run"]
        with open(self.output_path, "wb") as out:
            self.popen = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def record(self) -> dict:
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return {}

    def fleet_pids(self) -> dict[int, str]:
        """Every live process whose environment names this runner's state directory."""
        marker = f"RECFLEET_STATE_DIR={self.state_dir}".encode()
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found[int(entry.name)] = (
                        (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    )
            except OSError:
                continue
        return found

    def wait_up(self, timeout: float = 180.0) -> dict:
        """Until every service is recorded and listens on its ports; returns the record.

        The gateway's readiness is not awaited: on a database without a model it may
        answer 503, and what these tests need is every process running and bound.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen.poll() is None, f"the runner exited with {self.popen.returncode}:\n{self.output}"
            processes = self.record().get("processes", {})
            if set(processes) >= SERVICES and all(
                listening(port)
                for name in SERVICES
                for role, port in processes[name]["ports"].items()
                if role in ("grpc", "http")
            ):
                return self.record()
            time.sleep(0.5)
        raise AssertionError(f"the fleet was not up after {timeout:.0f}s; record={self.record()}\n{self.output}")

    def wait_output(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, f"{text!r} not in the runner's output:\n{self.output}"
            time.sleep(0.2)

    def wait_gone(self, timeout: float) -> dict[int, str]:
        """Waits for the runner and every fleet process to exit; returns what is left."""
        deadline = time.monotonic() + timeout
        left = self.fleet_pids()
        while left and time.monotonic() < deadline:
            time.sleep(0.25)
            left = self.fleet_pids()
        return left

    def kill_everything(self) -> None:
        """Test cleanup: whatever the runner left, on a machine others share."""
        for pid in self.fleet_pids():
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


@pytest.fixture(scope="module")
def runner_dsn():
    name = f"recfleet_test_runner_{uuid.uuid4().hex[:8]}"
    yield psycopg.conninfo.make_conninfo(PG_ADMIN_DSN, dbname=name)
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def runner_env(runner_dsn, tmp_path):
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RECFLEET_", "KAFKA_"))}
    env.update(
        RECFLEET_STATE_DIR=str(tmp_path / "state"),
        RECFLEET_POSTGRES_DSN=runner_dsn,
        RECFLEET_REDIS_URL=REDIS_URL,
        RECFLEET_GATEWAY_PORT=str(free_port()),
        RECFLEET_FREE_PORTS="1",
        RECFLEET_PIPELINE="0",
        RECFLEET_SHARDS="1",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    yield env
    client.flushdb()
    client.close()


@pytest.fixture
def runners(tmp_path):
    started: list[Runner] = []

    def make(env: dict[str, str]) -> Runner:
        started.append(Runner(env, tmp_path))
        return started[-1]

    yield make
    for runner in started:
        runner.kill_everything()


def test_sigterm_to_the_process_group_of_make_run_stops_every_process(runner_env, runners):
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    runner = runners(runner_env).start(via_make=True)
    record = runner.wait_up()
    ports = [port for entry in record["processes"].values() for port in entry["ports"].values()]
    assert "recfleet-jobs" not in runner.output, "RECFLEET_PIPELINE=0 runs no batch job"
    with psycopg.connect(runner_env["RECFLEET_POSTGRES_DSN"]) as conn:
        assert conn.execute("SELECT count(*) FROM model_versions").fetchone()[0] == 0

    # A service that exits on its own comes back, and the runner says so.
    sink = record["processes"]["event-sink"]["pid"]
    os.kill(sink, signal.SIGKILL)
    runner.wait_output("event-sink exited")
    deadline = time.monotonic() + 30
    while runner.record()["processes"].get("event-sink", {}).get("pid", sink) == sink:
        assert time.monotonic() < deadline, runner.output
        time.sleep(0.2)
    assert "restart" in runner.output

    # What `timeout`, a CI cancel or a supervisor does: make forwards it, so the runner gets it twice.
    os.killpg(runner.popen.pid, signal.SIGTERM)
    left = runner.wait_gone(30)
    assert not left, f"still running 30 s after SIGTERM: {left}\n{runner.output}"
    assert runner.popen.wait(5) is not None
    assert not [port for port in ports if listening(port)]


def test_two_ctrl_c_stop_every_process_and_a_stale_fleet_is_stopped_first(runner_env, runners):
    # What a fleet whose runner died uncleanly leaves behind: a record naming a process that still runs.
    state_dir = Path(runner_env["RECFLEET_STATE_DIR"])
    state_dir.mkdir(parents=True)
    stale = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], env=runner_env, start_new_session=True
    )
    dead = subprocess.Popen(["true"])
    dead.wait()
    (state_dir / "fleet.json").write_text(
        json.dumps(
            {
                "runner": {
                    "pid": dead.pid,
                    "start_time": 0,
                    "argv": ["python", "-m", "recfleet_ctl.localfleet", "run"],
                },
                "processes": {
                    "ranking": {"pid": stale.pid, "start_time": start_time(stale.pid), "argv": stale.args, "ports": {}}
                },
            }
        )
    )
    try:
        runner = runners(runner_env).start()
        runner.wait_up()
        assert stale.wait(10) is not None, "the stale process was not stopped"
        assert str(stale.pid) in runner.output and "earlier run" in runner.output, runner.output

        os.killpg(runner.popen.pid, signal.SIGINT)
        runner.wait_output("stopping")
        time.sleep(0.3)
        os.killpg(runner.popen.pid, signal.SIGINT)  # a second Ctrl-C while it stops
        left = runner.wait_gone(30)
        assert not left, f"still running 30 s after two Ctrl-C: {left}\n{runner.output}"
        assert "ignored" in runner.output, runner.output
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait()


def test_sigkill_to_the_runner_leaves_no_process_after_10_seconds(runner_env, runners):
    runner = runners(runner_env).start()
    runner.wait_up()
    os.kill(runner.popen.pid, signal.SIGKILL)
    runner.popen.wait()
    left = runner.wait_gone(10)
    assert not left, f"still running 10 s after the runner was killed: {left}"


def test_a_crash_looping_service_stops_the_fleet_and_is_named(runner_env, runners):
    # A setting the feature store cannot parse: it exits at every start.
    env = {**runner_env, "RECFLEET_FEATURES_DRAIN_SECONDS": "not-a-number", "RECFLEET_RESTART_LIMIT": "2"}
    runner = runners(env).start()
    try:
        code = runner.popen.wait(150)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the runner kept going with a crash-looping service:\n{runner.output}")
    assert code != 0
    assert "feature-store" in runner.output and "crash" in runner.output, runner.output
    assert runner.output.count("feature-store exited") >= 3, runner.output
    left = runner.wait_gone(30)
    assert not left, f"still running after the crash loop stopped the fleet: {left}"


def test_a_held_port_is_named_before_anything_starts(runner_env, runners):
    port = int(runner_env["RECFLEET_GATEWAY_PORT"])
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        runner = runners(runner_env).start()
        try:
            code = runner.popen.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the runner started despite a held gateway port:\n{runner.output}")
    assert code != 0
    output = runner.output
    assert str(port) in output and f"pid {os.getpid()}" in output and "gateway" in output, output
    assert not runner.wait_gone(10)


def shard_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_killed_shard_is_restarted_and_serving_within_30_seconds(api, fleet):
    name = "candidate-gen-0"
    killed = fleet.processes[name].popen.pid
    os.kill(killed, signal.SIGKILL)  # a crash, not a stop the fleet asked for
    started = time.monotonic()
    while time.monotonic() - started < 30:
        if fleet.processes[name].popen.pid != killed and shard_serving(fleet.ports[name]):
            break
        time.sleep(0.25)
    else:
        pytest.fail(f"{name} was not back and SERVING within 30 s")
    log = (fleet.log_dir / "fleet.log").read_text()
    assert f"{name} exited" in log and "restart" in log, log
    fleet.wait_ready()  # the gateway sees it again: the next tests get the whole fleet
    reply = api.get("/v1/recommendations", params={"user_id": "1", "limit": 5})
    assert reply.status_code == 200 and not [r for r in reply.json()["degraded"] if "candidate-gen" in r], reply.text
