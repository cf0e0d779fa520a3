"""The local runner's supervision and its fleet record, without starting a fleet (the real
runner is exercised in tests/e2e/test_local_runner.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from recfleet_store.suppression import LOCAL_KEY

from recfleet_ctl import fleetrecord, localfleet
from recfleet_ctl.localfleet import FleetConfig, LocalFleet

# Starts a sleeper with the parent-death signal, prints its pid, and waits.
PARENT_OF_A_SLEEPER = """
import subprocess, sys, time
from recfleet_ctl.fleetrecord import parent_death_signal
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         preexec_fn=parent_death_signal(), start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


class ExitedAtOnce:
    """A Popen stand-in for a process that exits as soon as it starts."""

    next_pid = 10_000_000  # above any pid_max: signals to it find nothing

    def __init__(self, code: int = 1):
        ExitedAtOnce.next_pid += 1
        self.pid = ExitedAtOnce.next_pid
        self.returncode = None
        self.code = code

    def poll(self):
        self.returncode = self.code
        return self.code


class Clock:
    """The runner's `time` module with a monotonic clock the test moves."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(localfleet, "time", fake)
    return fake


@pytest.fixture
def started(tmp_path, monkeypatch):
    """A fleet whose processes exit as soon as they start, and the modules it started."""
    config = FleetConfig(
        state_dir=tmp_path,
        shard_count=1,
        free_ports=True,
        restart_limit=3,
        restart_backoff_seconds=1.0,
        restart_backoff_max_seconds=4.0,
    )
    local = LocalFleet(config)
    local.log_dir.mkdir(parents=True)
    modules: list[str] = []

    def popen(module, env, log_path):
        modules.append(module)
        return ExitedAtOnce()

    monkeypatch.setattr(local, "_popen", popen)
    return local, modules


def run_until_restarted(fleet: LocalFleet, name: str, clock: Clock) -> float:
    """One exit noticed and the restart it schedules carried out; returns the backoff used
    (0 when the supervisor gave up)."""
    fleet.supervise_once()
    process = fleet.processes[name]
    if process.given_up:
        return 0.0
    backoff = process.restart_at - clock.now
    clock.now += backoff
    fleet.supervise_once()
    assert process.restart_at is None
    clock.now += 0.1
    return backoff


def test_a_process_that_exits_is_restarted_with_doubling_backoff_until_the_crash_loop_limit(started, clock):
    fleet, modules = started
    fleet.start_process("ranking", "recfleet_ranking", {})
    backoffs = [run_until_restarted(fleet, "ranking", clock) for _ in range(4)]
    assert backoffs == [1.0, 2.0, 4.0, 0.0]  # the fourth exit within the window is past the limit of 3
    assert fleet.processes["ranking"].restarts == 3
    assert fleet.failure is not None and fleet.failure.startswith("ranking is crash-looping")
    log = (fleet.log_dir / "fleet.log").read_text()
    assert log.count("ranking exited") == 4 and log.count("restarted ranking") == 3
    assert modules == ["recfleet_ranking"] * 4


def test_backoff_is_capped_and_starts_over_after_a_long_uptime(started, clock):
    fleet, _ = started
    fleet.config.restart_limit = 100
    fleet.start_process("ranking", "recfleet_ranking", {})
    backoffs = [run_until_restarted(fleet, "ranking", clock) for _ in range(5)]
    assert backoffs == [1.0, 2.0, 4.0, 4.0, 4.0]
    clock.now += fleet.config.restart_reset_seconds  # it stayed up a while before the next exit
    assert run_until_restarted(fleet, "ranking", clock) == 1.0


def test_a_process_stopped_on_purpose_is_not_restarted(started):
    fleet, modules = started
    fleet.start_process("ranking", "recfleet_ranking", {})
    fleet.stop_process("ranking")
    fleet.supervise_once()
    assert fleet.processes["ranking"].restart_at is None and modules == ["recfleet_ranking"]
    fleet.restart_process("ranking")
    fleet.supervise_once()
    assert fleet.processes["ranking"].restart_at is not None  # supervised again


def test_the_record_recognises_a_process_only_while_the_same_one_runs(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        entry = fleetrecord.identity(child.pid)
        assert fleetrecord.still_running(entry)
        assert not fleetrecord.still_running({**entry, "start_time": entry["start_time"] - 1})  # a reused pid
        assert not fleetrecord.still_running({**entry, "argv": ["something", "else"]})
        stopped = fleetrecord.stop_recorded([entry], grace=5, say=lambda line: None)
        assert stopped == [entry] and child.wait(5) == -signal.SIGTERM
        assert not fleetrecord.still_running(entry)
    finally:
        child.kill()
        child.wait()


def test_a_held_port_names_its_holder():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert fleetrecord.port_in_use(port)
        assert os.getpid() in [h["pid"] for h in fleetrecord.port_holders(port)]
    assert not fleetrecord.port_in_use(port)


def test_the_parent_death_signal_stops_a_child_whose_parent_is_killed():
    if fleetrecord.parent_death_signal() is None:
        pytest.skip("no prctl here")
    parent = subprocess.Popen([sys.executable, "-c", PARENT_OF_A_SLEEPER], stdout=subprocess.PIPE, text=True)
    grandchild = int(parent.stdout.readline())
    entry = fleetrecord.identity(grandchild)
    try:
        parent.kill()
        parent.wait()
        for _ in range(50):
            if not fleetrecord.still_running(entry):
                break
            time.sleep(0.1)
        assert not fleetrecord.still_running(entry)
    finally:
        if fleetrecord.still_running(entry):
            os.kill(grandchild, signal.SIGKILL)


def test_every_process_gets_one_erasure_hash_key_that_survives_a_restart(tmp_path, monkeypatch):
    monkeypatch.delenv("RECFLEET_ERASURE_HASH_KEY", raising=False)
    first = LocalFleet(FleetConfig(state_dir=tmp_path / "state"))
    key = first.service_env("event-ingest")["RECFLEET_ERASURE_HASH_KEY"]
    assert len(key) == 64 and key != LOCAL_KEY
    assert first.base_env()["RECFLEET_ERASURE_HASH_KEY"] == key  # the jobs get the same one
    assert (tmp_path / "state" / "erasure-hash-key").stat().st_mode & 0o077 == 0
    # `make run` again on the same state directory: the same key, so erased users stay erased.
    assert LocalFleet(FleetConfig(state_dir=tmp_path / "state")).base_env()["RECFLEET_ERASURE_HASH_KEY"] == key
    assert LocalFleet(FleetConfig(state_dir=tmp_path / "other")).base_env()["RECFLEET_ERASURE_HASH_KEY"] != key
    monkeypatch.setenv("RECFLEET_ERASURE_HASH_KEY", "a-key-given-by-the-operator")
    assert first.base_env()["RECFLEET_ERASURE_HASH_KEY"] == "a-key-given-by-the-operator"
