"""`python -m recfleet_ingest.realtime`: the real-time feature updater consumer."""

from recfleet_ingest.realtime import run
from recfleet_ingest.roles import run_role

if __name__ == "__main__":
    run_role("event-realtime", run)
