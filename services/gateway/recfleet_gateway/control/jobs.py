"""Batch jobs started from the admin API: `recfleet-jobs <name>` as a subprocess whose
status and output tail are kept in the `jobs` table."""

from __future__ import annotations

import asyncio
import secrets
import sys

from recfleet_runtime.logging import get_logger

from ..adapters.jobs import JobTable

log = get_logger("recfleet.gateway.jobs")
JOB_NAMES = ("train-als", "build-index", "train-ranker", "materialize", "popularity", "evaluate")


class JobAlreadyRunning(Exception):
    def __init__(self, name: str, job_id: str):
        super().__init__(f"{name} is already running as {job_id}")
        self.job_id = job_id


class JobRunner:
    def __init__(self, table: JobTable, command: list[str] | None = None, output_limit: int = 65_536):
        self._table = table
        self._command = list(command) if command else [sys.executable, "-m", "recfleet_jobs"]
        self._output_limit = output_limit
        self._tasks: set[asyncio.Task] = set()
        # name -> job id, for the jobs this process runs now.
        self._running: dict[str, str] = {}

    async def start(self, name: str) -> dict:
        """Queues a job; JobAlreadyRunning when this gateway runs one of that name now."""
        running = self._running.get(name)
        if running is not None:
            raise JobAlreadyRunning(name, running)
        job_id = "job_" + secrets.token_hex(10)
        self._running[name] = job_id
        await self._table.insert_queued(job_id, name)
        task = asyncio.create_task(self._run(job_id, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        job = await self.get(job_id)
        assert job is not None
        return job

    async def get(self, job_id: str) -> dict | None:
        return await self._table.get(job_id)

    async def _run(self, job_id: str, name: str) -> None:
        try:
            await self._execute(job_id, name)
        finally:
            self._running.pop(name, None)

    async def _execute(self, job_id: str, name: str) -> None:
        await self._table.mark_running(job_id)
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command, name, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            output, _ = await process.communicate()
            status = "succeeded" if process.returncode == 0 else "failed"
            # The tail holds the outcome and the error, if any.
            text = output[-self._output_limit :].decode("utf-8", "replace")
            if process.returncode:
                text += f"\nexit status {process.returncode}"
        except OSError as error:
            status, text = "failed", f"could not start the job: {error}"
        await self._table.mark_finished(job_id, status, text)
        log.info("job finished", job_id=job_id, job=name, status=status)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
