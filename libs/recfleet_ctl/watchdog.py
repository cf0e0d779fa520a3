"""`python -m recfleet_ctl.watchdog RECORD RUNNER_PID [GRACE]`: stops a local fleet whose runner died.

The runner starts it with a pipe on stdin that it never writes to. The pipe reaches end
of file when the runner exits however it exits, SIGKILL included; the watchdog then stops
every process the fleet record still names (the broker too, which has no parent-death
signal) with SIGTERM to its process group and SIGKILL after GRACE seconds, and exits.
After a clean stop the runner has removed the record first, so it just exits. It runs in
a session of its own: Ctrl-C or a SIGTERM to the runner's process group does not reach it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from recfleet_ctl.fleetrecord import read_record, stop_recorded


def main(argv: list[str]) -> int:
    record_path = Path(argv[0])
    runner = int(argv[1])
    grace = float(argv[2]) if len(argv) > 2 else 5.0
    while sys.stdin.buffer.read(4096):
        pass
    record = read_record(record_path)
    if record.get("runner", {}).get("pid") != runner:
        return 0  # stopped cleanly, or a later run has already taken the state directory over

    def say(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} watchdog: {line}", flush=True)

    say("the runner exited without stopping the fleet; stopping it")
    stopped = stop_recorded(record.get("processes", {}).values(), grace, say)
    if read_record(record_path).get("runner", {}).get("pid") == runner:
        record_path.unlink(missing_ok=True)
    say(f"stopped {len(stopped)} processes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
