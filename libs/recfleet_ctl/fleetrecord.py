"""What a running local fleet leaves on disk, and how to tell whether its processes still run.

`<state dir>/fleet.json` names the runner and every process it started, rewritten
whenever one starts, restarts or stops, and removed once the fleet has stopped:

    {"runner": {"pid": 1200, "start_time": 5512, "argv": ["python", "-m", ...]},
     "watchdog": {...},
     "processes": {"gateway": {"pid": 1300, "start_time": 5530, "argv": [...],
                               "ports": {"http": 8080, "metrics": 9101},
                               "log": ".state/logs/gateway.log", "restarts": 0},
                   "broker": {...}, ...}}

A process is the one recorded only while its pid runs the same command line and started
at the same clock tick, so a pid the kernel has since handed to something else is never
signalled. Linux only (/proc); elsewhere nothing is ever found running.

Only the standard library is imported here: the watchdog (`python -m recfleet_ctl.watchdog`)
uses this module and should start in a blink.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

RECORD_NAME = "fleet.json"
_PR_SET_PDEATHSIG = 1


def start_time(pid: int) -> int | None:
    """Clock ticks since boot at which the process started (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def command_line(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def identity(pid: int) -> dict[str, Any]:
    """What the record keeps to recognise this process later."""
    return {"pid": pid, "start_time": start_time(pid), "argv": command_line(pid)}


def still_running(entry: dict[str, Any]) -> bool:
    """Whether the recorded process runs (a zombie or a reused pid does not count)."""
    pid = entry.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    argv = command_line(pid)
    return bool(argv) and start_time(pid) == entry.get("start_time") and argv == entry.get("argv")


def describe(entry: dict[str, Any]) -> str:
    return f"pid {entry.get('pid')} ({' '.join(entry.get('argv') or [])[:120]})"


def read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Atomic: a reader (the watchdog, a later run) sees the old record or the new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(record, indent=1))
    os.replace(temporary, path)


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group a fleet process leads (each runs in a session of its own),
    so what it started itself goes too; never the caller's own group. Once the leader has
    exited and been reaped, what is left of its group still gets the signal."""
    try:
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            group = pid
        if group == os.getpgrp():
            os.kill(pid, sig)
        else:
            os.killpg(group, sig)
    except OSError:  # gone, or not ours
        pass


def stop_recorded(
    entries: Iterable[dict[str, Any]], grace: float, say: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Stop every recorded process that still runs, as a kubelet stops a container: SIGTERM
    to the process, SIGKILL to its whole group after `grace` seconds (or once it has exited,
    for what it left behind). Returns the entries that were running."""
    running = [entry for entry in entries if still_running(entry)]
    leaders = set()
    for entry in running:
        say(f"SIGTERM to {describe(entry)}")
        try:
            if os.getpgid(entry["pid"]) == entry["pid"]:
                leaders.add(entry["pid"])
            os.kill(entry["pid"], signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(still_running(entry) for entry in running):
        time.sleep(0.1)
    for entry in running:
        if still_running(entry):
            say(f"SIGKILL to {describe(entry)}: still running {grace:.0f}s after SIGTERM")
            signal_group(entry["pid"], signal.SIGKILL)
        elif entry["pid"] in leaders:
            signal_group(entry["pid"], signal.SIGKILL)
    return running


def port_in_use(port: int) -> bool:
    """Whether a server could not bind the port now (a listener holds it; TIME_WAIT does not count)."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                continue
            return True
    return False


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def port_holders(port: int) -> list[dict[str, Any]]:
    """The processes (of this user) that listen on the port, from /proc/net/tcp* and /proc/*/fd."""
    sockets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    holders: list[dict[str, Any]] = []
    if not sockets:
        return holders
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in sockets for fd in (entry / "fd").iterdir()):
                holders.append(identity(int(entry.name)))
        except OSError:
            continue
    return holders


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive `sig` when the thread that started it ends
    (PR_SET_PDEATHSIG, Linux): the runner's death, even by SIGKILL, stops its children.

    The signal follows the *thread*, not the process: start children from a thread that lives
    as long as they should. None where prctl is unavailable.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            # The runner died before prctl took effect, so the signal will never come.
            os.kill(os.getpid(), signal.SIGKILL)

    return set_parent_death_signal
