"""Dependencies the chaos suite owns, so it may kill them: a PostgreSQL cluster of its own
(`initdb` + `pg_ctl` in a temporary directory), its own `redis-server`, its own
Kafka-protocol broker, each on a free port, and a TCP proxy that can delay answers.

Each `Dependency` can be killed (SIGKILL to every process of it, as a container runtime
would), frozen (SIGSTOP) and thawed (SIGCONT), and started again on the same port with the
data it kept: Postgres recovers from its WAL, Redis replays its append-only file (fsync
every second, as a production Redis would run), and the broker comes back empty, because
it keeps its data in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from recfleet_runtime.ports import free_port, wait_for_port
from recfleet_store.kafka import LocalBroker


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # The command name may hold spaces and parentheses: the fields follow the last ')'.
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def signal_tree(pid: int, sig: int) -> None:
    """`sig` to a process and everything below it."""
    for target in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, sig)


@dataclass
class Dependency:
    """One dependency process tree, started by `_start` and found again by `pid`."""

    name: str
    port: int
    root: Path
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = self.root / f"{self.name}.log"

    def pid(self) -> int | None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        pid = self.pid()
        if pid is not None:
            signal_tree(pid, signal.SIGKILL)
            self._wait_gone(pid)

    def freeze(self) -> None:
        pid = self.pid()
        if pid is not None:
            signal_tree(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        pid = self.pid()
        if pid is not None:
            signal_tree(pid, signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        self.kill()

    @staticmethod
    def _wait_gone(pid: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)


def _as_postgres_user(command: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: as root, run them as `postgres`."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


class OwnPostgres(Dependency):
    """A PostgreSQL cluster in `root`, trusting local connections, on `port`."""

    def __init__(self, root: Path, port: int | None = None):
        super().__init__("postgres", port or free_port(), root)
        self.data = root / "pgdata"
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        if not self.data.exists():
            subprocess.run(
                _as_postgres_user(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
                check=True,
                capture_output=True,
            )

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/recfleet"

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c max_connections=200"
        subprocess.run(
            _as_postgres_user(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"]),
            check=True,
            capture_output=True,
        )
        wait_for_port("127.0.0.1", self.port)

    def kill(self) -> None:
        super().kill()
        # A killed postmaster leaves its pid file: the next start must find it stale, not ours.
        (self.data / "postmaster.pid").unlink(missing_ok=True)


class OwnRedis(Dependency):
    """A `redis-server` with an append-only file (fsync every second) in `root`."""

    def __init__(self, root: Path, port: int | None = None):
        super().__init__("redis", port or free_port(), root)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root)]
        command += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port("127.0.0.1", self.port)

    def kill(self) -> None:
        super().kill()
        if self.process is not None:
            self.process.wait()


class OwnBroker(Dependency):
    """The local Kafka-protocol broker on a fixed port (memory only: a restart starts empty)."""

    def __init__(self, root: Path, port: int | None = None):
        super().__init__("broker", port or free_port(), root)
        self.broker: LocalBroker | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pid(self) -> int | None:
        process = self.broker.process if self.broker is not None else None
        return process.pid if process is not None and process.poll() is None else None

    def start(self) -> None:
        self.broker = LocalBroker.start(port=self.port, log_path=str(self.log))

    def kill(self) -> None:
        super().kill()
        if self.broker is not None:
            self.broker.process.wait()


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: multiprocessing.Value) -> None:
    """Copy one direction of a connection, each chunk held back by the delay in force when it
    arrived (order kept, so a delay adds latency without limiting throughput)."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            pause = due - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(pump())
    try:
        while chunk := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay.value, chunk))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((0.0, b""))
    with contextlib.suppress(ConnectionError, OSError):
        await sender
    writer.close()


def _serve_proxy(listen: int, target: int, delay: multiprocessing.Value) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            _relay(client_reader, server_writer, delay),
            _relay(server_reader, client_writer, delay),
            return_exceptions=True,
        )

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen)
        async with server:
            await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(main())


class DelayProxy:
    """A TCP proxy in a process of its own; `delay_seconds` holds back every chunk each way
    (so a request/response exchange gets twice the delay on top of its own time)."""

    def __init__(self, target_port: int):
        self.port = free_port()
        self._delay = multiprocessing.get_context("fork").Value("d", 0.0)
        self._process = multiprocessing.get_context("fork").Process(
            target=_serve_proxy, args=(self.port, target_port, self._delay), daemon=True
        )
        self._process.start()
        wait_for_port("127.0.0.1", self.port)

    def set_delay(self, seconds: float) -> None:
        self._delay.value = seconds

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(5)
