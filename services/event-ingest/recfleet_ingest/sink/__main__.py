"""`python -m recfleet_ingest.sink`: the Postgres sink consumer."""

from recfleet_ingest.roles import run_role
from recfleet_ingest.sink import run

if __name__ == "__main__":
    run_role("event-sink", run)
