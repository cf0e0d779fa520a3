"""`recfleet-jobs create-partitions`: monthly partitions of `events`, ahead of time.

Events land in `events_default` when no monthly partition covers their timestamp.
Postgres refuses to create a partition whose range the default partition already holds
rows of, so for such a month the job builds the partition as a plain table, moves the
rows over from the default partition and attaches it, all in one transaction with the
default partition locked (writers wait a moment; nothing is lost or seen twice).
"""

from __future__ import annotations

import json
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import typer
from psycopg import sql

from .settings import JobSettings

PARENT = "events"
DEFAULT = "events_default"


@dataclass(frozen=True)
class Month:
    """One calendar month in UTC: [start, end)."""

    year: int
    month: int

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.next().start

    @property
    def partition(self) -> str:
        return f"{PARENT}_p{self.year:04d}_{self.month:02d}"

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    @classmethod
    def of(cls, moment: datetime) -> Month:
        moment = moment.astimezone(UTC)
        return cls(moment.year, moment.month)


def months_to_cover(
    now: datetime, months_ahead: int, months_with_rows: AbstractSet[Month] = frozenset()
) -> list[Month]:
    """The current month, `months_ahead` after it, and every month the default partition holds rows of."""
    wanted = set(months_with_rows)
    month = Month.of(now)
    for _ in range(months_ahead + 1):
        wanted.add(month)
        month = month.next()
    return sorted(wanted, key=lambda m: (m.year, m.month))


def existing_partitions(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        (PARENT,),
    )
    return {row[0] for row in rows}


def months_in_default(conn: psycopg.Connection) -> set[Month]:
    rows = conn.execute(
        sql.SQL("SELECT DISTINCT date_trunc('month', ts AT TIME ZONE 'UTC') FROM {}").format(sql.Identifier(DEFAULT))
    )
    return {Month(row[0].year, row[0].month) for row in rows}


def create_partition(conn: psycopg.Connection, month: Month) -> int:
    """Create `month`'s partition, moving its rows out of the default partition; returns rows moved."""
    name = sql.Identifier(month.partition)
    default = sql.Identifier(DEFAULT)
    bounds = (month.start, month.end)
    with conn.transaction():
        # Writers into the default partition wait until the move is done.
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(default))
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
                name, sql.Identifier(PARENT)
            )
        )
        # The check lets ATTACH skip scanning the new table.
        # DDL takes no bind parameters: the bounds are rendered as literals.
        start, end = sql.Literal(month.start), sql.Literal(month.end)
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK (ts >= {} AND ts < {})").format(
                name, sql.Identifier(f"{month.partition}_range"), start, end
            )
        )
        moved = conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {} WHERE ts >= %s AND ts < %s RETURNING *) "
                "INSERT INTO {} SELECT * FROM moved"
            ).format(default, name),
            bounds,
        ).rowcount
        conn.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(PARENT), name, start, end
            )
        )
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(name, sql.Identifier(f"{month.partition}_range"))
        )
    return moved


def create_partitions(dsn: str, months_ahead: int, now: datetime | None = None) -> dict:
    """The whole job: returns the partitions created and the rows moved out of the default."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        have = existing_partitions(conn)
        wanted = months_to_cover(now or datetime.now(UTC), months_ahead, months_in_default(conn))
        created, moved = [], 0
        for month in wanted:
            if month.partition in have:
                continue
            moved += create_partition(conn, month)
            created.append(month.partition)
    return {"created": created, "moved_rows": moved}


def create_partitions_command(
    months_ahead: int = typer.Option(3, min=0, max=120, help="months after the current one to create"),
) -> None:
    """Create monthly partitions of `events` ahead of time (and for rows in the default partition)."""
    settings = JobSettings()
    started = time.perf_counter()
    result = create_partitions(settings.postgres_dsn, months_ahead)
    typer.echo(json.dumps({**result, "seconds": round(time.perf_counter() - started, 2)}))


def register(app: typer.Typer) -> None:
    app.command("create-partitions")(create_partitions_command)
