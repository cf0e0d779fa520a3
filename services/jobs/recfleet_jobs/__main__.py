"""`recfleet-jobs`: the batch jobs (also run as CronJobs and by POST /admin/v1/jobs/{name}).

Each job module defines `register(app)`, adding its typer commands.
"""

from __future__ import annotations

import importlib

import typer

JOB_MODULES = (
    "recfleet_jobs.bootstrap",
    "recfleet_jobs.als",
    "recfleet_jobs.index",
    "recfleet_jobs.popularity",
    "recfleet_jobs.materialize",
    "recfleet_jobs.ranker",
    "recfleet_jobs.evaluate",
    "recfleet_jobs.registry",
    "recfleet_jobs.partitions",
    "recfleet_jobs.topics",
    "recfleet_jobs.erasure",
)

app = typer.Typer(help="recfleet batch jobs", no_args_is_help=True, add_completion=False)


def _load() -> None:
    for name in JOB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name == name:
                continue
            raise
        module.register(app)


def main() -> None:
    _load()
    app()


if __name__ == "__main__":
    main()
