"""The `jobs` table: batch jobs started from the admin API, their status and output tail."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

JOB_COLUMNS = ("job_id", "name", "status", "output", "created_at", "finished_at")


class JobTable:
    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool

    async def insert_queued(self, job_id: str, name: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("INSERT INTO jobs (job_id, name, status) VALUES (%s, %s, 'queued')", (job_id, name))

    async def get(self, job_id: str) -> dict | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT job_id, name, status, output, created_at, finished_at FROM jobs WHERE job_id = %s", (job_id,)
            )
            row = await cur.fetchone()
        return None if row is None else dict(zip(JOB_COLUMNS, row, strict=True))

    async def mark_running(self, job_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("UPDATE jobs SET status = 'running' WHERE job_id = %s", (job_id,))

    async def mark_finished(self, job_id: str, status: str, output: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE jobs SET status = %s, output = %s, finished_at = now() WHERE job_id = %s",
                (status, output, job_id),
            )
