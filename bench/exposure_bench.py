"""What experiment exposures cost: the request path's share, the background writer's
throughput, and the readout's attribution query.

    .venv/bin/python bench/exposure_bench.py
    .venv/bin/python bench/exposure_bench.py --exposures 200000 --batch 5000

Uses a scratch Postgres database (created and dropped). Prints:

- record: microseconds per `ExposureLog.record` (what a recommendation response pays;
  the write itself happens in the background), median of --exposures calls;
- flush: exposures per second written by `ExposureLog.flush` (COPY) in batches of --batch;
- readout: seconds for the attribution query over --exposures exposures and 10% as many
  click events (each pointing at an exposure's request id).

Figures only: nothing passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import psycopg
from psycopg_pool import AsyncConnectionPool
from recfleet_gateway.adapters.experiments import ExperimentStore
from recfleet_gateway.adapters.exposures import ExposureLog
from recfleet_store.postgres import migrate

SERVER = "postgresql://postgres@127.0.0.1:5432"


async def run(exposures: int, batch: int) -> None:
    name = f"recfleet_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{SERVER}/{name}"
    try:
        migrate(dsn)
        pool = AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False)
        await pool.open()
        log = ExposureLog(pool, flush_seconds=1.0, buffer_limit=exposures + 1)
        items = [f"m{n}" for n in range(20)]
        costs = []
        written = 0
        flush_seconds = 0.0
        for n in range(exposures):
            started = time.perf_counter_ns()
            log.record(f"req-{n}", "bench", "control" if n % 2 else "treatment", f"user-{n % 5000}", items)
            costs.append(time.perf_counter_ns() - started)
            if log.pending >= batch:
                started = time.perf_counter()
                written += await log.flush()
                flush_seconds += time.perf_counter() - started
        started = time.perf_counter()
        written += await log.flush()
        flush_seconds += time.perf_counter() - started
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO experiments (name, salt, variants, status) VALUES ('bench', 'bench', "
                """'[{"name": "control", "share": 0.5}, {"name": "treatment", "share": 0.5}]', 'running')"""
            )
            conn.execute(
                "INSERT INTO events (event_id, user_id, item_id, type, ts, context)"
                " SELECT gen_random_uuid(), 'user-' || (n %% 5000), 'm3', 'click', now(),"
                " jsonb_build_object('request_id', 'req-' || n) FROM generate_series(0, %s, 10) AS n",
                (exposures - 1,),
            )
            conn.execute("ANALYZE exposures")
            conn.execute("ANALYZE events")
        store = ExperimentStore(pool)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            counts = await store.counts("bench")
            timings.append(time.perf_counter() - started)
        await pool.close()
        print(f"record: {statistics.median(costs) / 1000:.2f} us per exposure (median of {exposures})")
        print(f"flush: {written / flush_seconds:,.0f} exposures/s written with COPY (batches of {batch})")
        print(f"readout: {statistics.median(timings):.3f} s over {exposures:,} exposures ({counts})")
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2_000)
    args = parser.parse_args()
    asyncio.run(run(args.exposures, args.batch))


if __name__ == "__main__":
    main()
