"""The REST API does what its OpenAPI document says: schemathesis, with every check it
has, generates requests from `GET /openapi.json` (valid ones, and ones that break the
schema in one place each), sends them, and checks each answer: no 5xx, a documented
status, content type, headers and body, schema-valid requests accepted, schema-breaking
ones refused, 405 with an honest `Allow` for methods a path lacks, 401 without a key,
and, in sequences that follow the document's links, resources that exist after they
are created and are gone after they are deleted.

The fleet is this module's own (database, Redis index, broker, ports, admin key): the
run revokes keys, moves canary weights, erases users and starts jobs, which must not
disturb the session fleet the other e2e tests share.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import redis
import schemathesis
from recfleet_ctl.localfleet import FleetConfig, LocalFleet
from recfleet_runtime.ports import free_port
from schemathesis import engine
from schemathesis.engine import events

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

ADMIN_KEY = "contract-admin-key"
REDIS_URL = f"{os.environ['RECFLEET_TEST_REDIS']}/{os.environ.get('RECFLEET_TEST_CONTRACT_REDIS_DB', '13')}"
PG_ADMIN_DSN = os.environ["RECFLEET_TEST_POSTGRES_ADMIN_DSN"]
# Cases per operation and phase: enough to reach every rule, few enough for CI.
MAX_EXAMPLES = 15
SEED = 20261205

# What a schema-valid request may get besides 2xx where the API refuses it for a reason
# no JSON Schema can state (schemathesis counts any other status as a failure).
REFUSED_FOR_A_REASON_BEYOND_THE_SCHEMA = ["2xx", "400", "401", "403", "404", "409", "429"]
EXCLUSIONS: dict[str, tuple[list[str], str]] = {
    # operation: (statuses a schema-valid request may get, why)
    "GET /v1/recommendations": (
        [*REFUSED_FOR_A_REASON_BEYOND_THE_SCHEMA, "410"],
        "`cursor` is an opaque token the API signs: a string of the documented form that this "
        "API did not issue, or issued for other parameters, is refused with 400 (410 once its "
        "pages expired), as documented",
    ),
    "POST /v1/events": (
        REFUSED_FOR_A_REASON_BEYOND_THE_SCHEMA,
        "event-ingest refuses an event by the clock or by state (a timestamp before 1990 or "
        "more than 5 minutes ahead, a user being erased, NUL in a context); a batch with no "
        "event left is 400, as documented",
    ),
    "POST /admin/v1/experiments": (
        REFUSED_FOR_A_REASON_BEYOND_THE_SCHEMA,
        "the variants' names must differ and their shares add up to 1: rules across items",
    ),
    "POST /admin/v1/api-keys": (
        REFUSED_FOR_A_REASON_BEYOND_THE_SCHEMA,
        "`expires_at` must lie in the future: a rule on the clock (the schema states the one-expiry rule)",
    ),
    "POST /admin/v1/api-keys/{key_id}/rotate": (
        REFUSED_FOR_A_REASON_BEYOND_THE_SCHEMA,
        "`expires_at` must lie in the future: a rule on the clock (the schema states the one-expiry rule)",
    ),
    "POST /admin/v1/traffic/{service}/rollout": (
        REFUSED_FOR_A_REASON_BEYOND_THE_SCHEMA,
        "the stages' weights must rise from one stage to the next (a rule across items), and a "
        "rollout needs a canary of the path's service that is not frozen or rolling out (409)",
    ),
    "PUT /admin/v1/traffic/{service}": (
        REFUSED_FOR_A_REASON_BEYOND_THE_SCHEMA,
        "`shadow_percent` must be 0 for event-ingest (mirrored writes would be stored twice): "
        "a rule on the path's service that the body's schema cannot state",
    ),
}
NOT_RUN: dict[str, str] = {
    # operation: why
    "POST /admin/v1/api-keys/bootstrap/disable": (
        "it disables the key this run authenticates with, which would leave every later case "
        "a 401; services/gateway/tests/test_key_lifecycle.py covers it"
    ),
}
# Stateful sequences follow the links schemathesis infers from response schemas, not from
# `Location` headers: a started job's `Location` is its status (GET /admin/v1/jobs/{job},
# a job id) and POST on that template takes a job name, so a POST to the `Location` would
# be counted as a valid request.
INFERENCE = ["dependency-analysis"]


def contract_config() -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {ADMIN_KEY}"},
            # A request that hangs fails the run instead of stalling it.
            "request-timeout": 10,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "phases": {"stateful": {"max-steps": 6, "inference": {"algorithms": INFERENCE}}},
            "operations": [
                *(
                    {"include-name": name, "checks": {"positive_data_acceptance": {"expected-statuses": statuses}}}
                    for name, (statuses, _why) in EXCLUSIONS.items()
                ),
                *({"include-name": name, "enabled": False} for name in NOT_RUN),
            ],
        }
    )


@pytest.fixture(scope="module")
def contract_fleet(tmp_path_factory) -> Iterator[LocalFleet]:
    """The whole fleet with a small model (MovieLens, ALS, no ranker): answers that need an
    index must not be 503 for want of one."""
    database = f"recfleet_contract_{uuid.uuid4().hex[:8]}"
    redis.Redis.from_url(REDIS_URL).flushdb()
    config = FleetConfig(
        state_dir=tmp_path_factory.mktemp("contract-fleet"),
        postgres_dsn=psycopg.conninfo.make_conninfo(PG_ADMIN_DSN, dbname=database),
        redis_url=REDIS_URL,
        kafka_bootstrap=None,
        shard_count=2,
        gateway_port=free_port(),
        admin_key=ADMIN_KEY,
        train_ranker=False,
        free_ports=True,
        extra_env={
            # Jobs started through the admin API succeed at once without running: the run
            # starts them by the dozen, and the job tests run real ones.
            "RECFLEET_GATEWAY_JOBS_COMMAND": '["true"]',
            # The run asks for the same few users hundreds of times; 429 is documented, but
            # would hide the answer behind it.
            "RECFLEET_GATEWAY_RATE_LIMIT_PER_USER": "1000000/minute",
        },
    )
    local = LocalFleet(config)
    try:
        local.start()
        yield local
    finally:
        local.stop()
        redis.Redis.from_url(REDIS_URL).flushdb()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="module")
def api_schema(contract_fleet: LocalFleet) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{contract_fleet.gateway_url}/openapi.json", config=contract_config())


def test_every_exclusion_names_an_operation_of_the_document(api_schema):
    paths = api_schema.raw_schema["paths"]
    operations = {f"{method.upper()} {path}" for path, item in paths.items() for method in item}
    assert set(EXCLUSIONS) | set(NOT_RUN) <= operations


def run_schemathesis(schema: schemathesis.BaseSchema) -> list[str]:
    """Every phase `st run` runs (coverage, fuzzing, stateful sequences), with the
    schema's config; each distinct failure as text, with a request reproducing it."""
    found: dict[tuple[str, str, str], str] = {}
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.FatalError):
            raise event.exception
        if isinstance(event, events.NonFatalError):
            found[(event.label, "error", str(event.value))] = f"{event.label}: {event.value!r}"
        elif isinstance(event, events.ScenarioFinished):
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status is not engine.Status.FAILURE or check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    key = (event.recorder.label, check.name, failure.title)
                    found.setdefault(
                        key,
                        f"{event.recorder.label}: {check.name}: {failure.title}\n{failure.message}\n"
                        f"{check.failure_info.code_sample}",
                    )
    return list(found.values())


def test_every_operation_keeps_its_contract(contract_fleet, api_schema):
    failures = run_schemathesis(api_schema)
    assert not failures, f"{len(failures)} contract failure(s):\n\n" + "\n\n".join(failures)
    # The run kept its credentials to the end, so no check passed on 401s alone.
    reply = httpx.get(
        f"{contract_fleet.gateway_url}/admin/v1/api-keys/bootstrap", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert reply.status_code == 200, reply.text
