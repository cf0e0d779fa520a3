"""`recfleet-jobs create-topics`: the fleet's Kafka topics as the cluster needs them.

Run before the services of a release start (the chart's pre-install/pre-upgrade hook Job;
`make run` does the same locally): services never create topics, they wait for them.
Partitions, replication factor and min.insync.replicas come from TopicSettings
(RECFLEET_KAFKA_TOPIC_PARTITIONS, RECFLEET_KAFKA_REPLICATION_FACTOR,
RECFLEET_KAFKA_MIN_INSYNC_REPLICAS). Existing topics are left as they are; one with fewer
partitions or replicas than configured is reported, since growing partitions moves keys
(and so a user's order) to other partitions and is an operator's decision.
"""

from __future__ import annotations

import json
import time

import typer
from recfleet_store.kafka import configured_topics, create_topics

from .settings import JobSettings


def create_fleet_topics(settings: JobSettings, timeout: float = 60.0) -> dict:
    """The whole job: what was created, what was found, each topic's layout, and warnings."""
    wanted = configured_topics(settings, settings)
    result = create_topics(settings.kafka_bootstrap_servers, wanted, timeout=timeout)
    topics, warnings = {}, []
    for name, spec in wanted.items():
        layout = result.layout.get(name)
        if layout is None:
            warnings.append(f"{name}: not visible in the cluster's metadata after creation")
            continue
        topics[name] = {
            "partitions": layout.partitions,
            "replication_factor": layout.replication_factor,
            "config": spec["config"],
        }
        if layout.partitions < spec["partitions"]:
            warnings.append(
                f"{name}: has {layout.partitions} partitions, {spec['partitions']} configured; "
                "consumer replicas beyond the partition count get no work"
            )
        if layout.replication_factor < spec["replication"]:
            warnings.append(f"{name}: replication factor {layout.replication_factor}, {spec['replication']} configured")
    return {"created": result.created, "found": result.found, "topics": topics, "warnings": warnings}


def create_topics_command(
    timeout: float = typer.Option(60.0, min=1.0, help="seconds to wait for the broker"),
) -> None:
    """Create the fleet's Kafka topics that do not exist yet (idempotent)."""
    settings = JobSettings()
    started = time.perf_counter()
    result = create_fleet_topics(settings, timeout)
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(json.dumps({**result, "seconds": round(time.perf_counter() - started, 2)}))


def register(app: typer.Typer) -> None:
    app.command("create-topics")(create_topics_command)
