"""Online experiments through the REST API: definitions, deterministic assignment in the
recommendation path, what ranking is asked for, exposures in Postgres, and the readout
over exposures and attributed events."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from gateway_test_support import assert_problem, recfleetctl
from recfleet_store.suppression import user_hash

CONTROL_TREATMENT = [
    {"name": "control", "share": 0.5, "ranker_version": "rules"},
    {"name": "treatment", "share": 0.5, "ranker_version": "ranker-20261123T000000Z"},
]


@pytest.fixture(autouse=True)
def no_experiments(pg_dsn):
    """The session's database is shared: every test starts and ends without experiments."""

    def clear():
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM exposures")
            conn.execute("DELETE FROM experiments")
            conn.execute("DELETE FROM events WHERE context ? 'request_id'")

    clear()
    yield
    clear()


@pytest.fixture
def gateway_settings(gateway_settings):
    return gateway_settings.model_copy(update={"exposure_flush_seconds": 0.1, "experiments_refresh_seconds": 0.2})


async def create(client, name="ranker-vs-rules", variants=CONTROL_TREATMENT, **extra):
    return await client.post("/admin/v1/experiments", json={"name": name, "variants": variants, **extra})


async def exposures_of(pg_dsn, experiment: str, expected: int, timeout: float = 10.0) -> list[tuple]:
    """Exposure rows of an experiment, once the background writer has written `expected`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            cur = await conn.execute(
                "SELECT request_id, variant, user_id, item_ids FROM exposures WHERE experiment = %s"
                " ORDER BY created_at",
                (experiment,),
            )
            rows = await cur.fetchall()
        if len(rows) >= expected or asyncio.get_running_loop().time() > deadline:
            return rows
        await asyncio.sleep(0.1)


async def test_create_list_stop_and_validation(client):
    created = await create(client, salt="s1", surface="home")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "running" and body["surface"] == "home" and body["salt"] == "s1"
    assert [v["name"] for v in body["variants"]] == ["control", "treatment"]
    assert created.headers["Location"] == "/admin/v1/experiments/ranker-vs-rules"

    # One running experiment per surface; one without a surface claims them all.
    assert_problem(await create(client, name="other-home", surface="home"), 409)
    assert_problem(await create(client, name="everywhere"), 409)
    assert (await create(client, name="on-search", surface="search")).status_code == 201
    assert_problem(await create(client, surface="feed"), 409)  # the name is taken

    bad_shares = await create(client, name="bad", variants=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}])
    problem = assert_problem(bad_shares, 400)
    assert problem["errors"] == [{"field": "body.variants", "message": "shares must add up to 1, not 0.9"}]
    duplicate = await create(client, name="dup", variants=[{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}])
    assert assert_problem(duplicate, 400)["errors"][0]["field"] == "body.variants[1].name"
    bad_name = await create(client, name="has space")
    assert assert_problem(bad_name, 400)["errors"][0]["field"] == "body.name"
    single = await create(client, name="single", variants=[{"name": "a", "share": 1.0}])
    assert assert_problem(single, 400)["errors"][0]["field"] == "body.variants"
    assert_problem(await client.post("/admin/v1/experiments", json={"name": "x"}), 400)

    listed = (await client.get("/admin/v1/experiments")).json()["experiments"]
    assert {e["name"] for e in listed} == {"ranker-vs-rules", "on-search"}

    stopped = await client.post("/admin/v1/experiments/ranker-vs-rules/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert stopped.json()["stopped_at"] is not None
    assert (await create(client, name="other-home", surface="home")).status_code == 201
    assert_problem(await client.post("/admin/v1/experiments/nope/stop"), 404)
    assert_problem(await client.get("/admin/v1/experiments/nope/readout"), 404)


async def test_experiments_need_the_admin_scope(anonymous):
    assert_problem(await anonymous.get("/admin/v1/experiments"), 401)


async def test_users_keep_their_variant_ranking_is_told_and_exposures_are_logged(client, fleet, pg_dsn):
    assert (await create(client)).status_code == 201
    served = {}
    for n in range(30):
        user = f"warm-exp-{n}"
        reply = await client.get("/v1/recommendations", params={"user_id": user, "limit": 5})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["experiment"]["name"] == "ranker-vs-rules"
        served[user] = body
        # Ranking was asked for exactly what the variant names.
        request = fleet.ranking.servicer.requests[-1]
        if body["experiment"]["variant"] == "control":
            assert request.force_rules and request.ranker_version == ""
        else:
            assert not request.force_rules and request.ranker_version == "ranker-20261123T000000Z"
    assert {b["experiment"]["variant"] for b in served.values()} == {"control", "treatment"}

    # The same user again: the same variant, answered from the cache under a new request id.
    calls = len(fleet.ranking.servicer.requests)
    again = (await client.get("/v1/recommendations", params={"user_id": "warm-exp-0", "limit": 5})).json()
    assert len(fleet.ranking.servicer.requests) == calls
    assert again["experiment"] == served["warm-exp-0"]["experiment"]
    assert again["items"] == served["warm-exp-0"]["items"]
    assert again["request_id"] != served["warm-exp-0"]["request_id"]

    # The next page is an exposure of its own, still in the same variant.
    first = (await client.get("/v1/recommendations", params={"user_id": "warm-exp-1", "limit": 5})).json()
    page = (
        await client.get(
            "/v1/recommendations", params={"user_id": "warm-exp-1", "limit": 5, "cursor": first["next_cursor"]}
        )
    ).json()
    assert page["experiment"] == served["warm-exp-1"]["experiment"]

    responses = [*served.values(), again, first, page]
    rows = await exposures_of(pg_dsn, "ranker-vs-rules", len(responses))
    assert sorted(r[0] for r in rows) == sorted(b["request_id"] for b in responses)
    by_request = {r[0]: r for r in rows}
    for body in responses:
        _, variant, user_id, item_ids = by_request[body["request_id"]]
        assert (variant, user_id) == (body["experiment"]["variant"], body["user_id"])
        assert item_ids == [item["item_id"] for item in body["items"]]

    # Stopped: responses leave the experiment, and ranking gets no experiment fields.
    await client.post("/admin/v1/experiments/ranker-vs-rules/stop")
    after = (await client.get("/v1/recommendations", params={"user_id": "warm-exp-0", "limit": 5})).json()
    assert after["experiment"] is None
    request = fleet.ranking.servicer.requests[-1]
    assert not request.force_rules and request.ranker_version == ""


async def test_surface_experiments_only_take_their_surface(client):
    assert (await create(client, surface="home")).status_code == 201
    home = (await client.get("/v1/recommendations", params={"user_id": "warm-s", "surface": "home"})).json()
    search = (await client.get("/v1/recommendations", params={"user_id": "warm-s", "surface": "search"})).json()
    assert home["experiment"]["name"] == "ranker-vs-rules"
    assert search["experiment"] is None


async def test_split_over_2000_users_follows_the_shares(client, app):
    variants = [
        {"name": "control", "share": 0.2, "ranker_version": "serving"},
        {"name": "b", "share": 0.3, "ranker_version": "rules"},
        {"name": "c", "share": 0.5, "ranker_version": "ranker-x"},
    ]
    assert (await create(client, name="three-way", variants=variants, salt="split-test")).status_code == 201
    book = app.state.gateway.experiments
    counts = {"control": 0, "b": 0, "c": 0}
    for n in range(2000):
        first = book.assign(f"user-{n}", "")
        assert book.assign(f"user-{n}", "") == first
        counts[first.variant] += 1
    for variant in variants:
        assert abs(counts[variant["name"]] / 2000 - variant["share"]) <= 0.03, counts
    # The HTTP path agrees with the assignment.
    for n in range(5):
        body = (await client.get("/v1/recommendations", params={"user_id": f"user-{n}", "limit": 3})).json()
        assert body["experiment"] == {"name": "three-way", "variant": book.assign(f"user-{n}", "").variant}


def insert_exposures(conn, experiment: str, variant: str, count: int, clicked: int, prefix: str) -> None:
    """`count` exposures of two items each; the first `clicked` get a click on one of
    their items (some twice), the others only a view or a click on an item not shown."""
    now = datetime.now(UTC)
    with conn.cursor() as cur:
        with cur.copy("COPY exposures (request_id, experiment, variant, user_id, item_ids) FROM STDIN") as copy:
            for n in range(count):
                copy.write_row((f"{prefix}-{n}", experiment, variant, f"{prefix}-user-{n}", ["m1", "m2"]))
        with cur.copy("COPY events (event_id, user_id, item_id, type, ts, context) FROM STDIN") as copy:
            for n in range(count):
                context = psycopg.types.json.Jsonb({"request_id": f"{prefix}-{n}"})
                user = f"{prefix}-user-{n}"
                if n < clicked:
                    copy.write_row((uuid.uuid4(), user, "m2", "click" if n % 2 else "purchase", now, context))
                    if n % 3 == 0:
                        copy.write_row((uuid.uuid4(), user, "m1", "like", now, context))
                elif n % 2:
                    copy.write_row((uuid.uuid4(), user, "m1", "view", now, context))
                else:
                    copy.write_row((uuid.uuid4(), user, "m9", "click", now, context))


async def test_readout_reports_a_known_lift_within_its_interval(client, pg_dsn):
    assert (await create(client)).status_code == 201
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        insert_exposures(conn, "ranker-vs-rules", "control", 4000, 400, "ctl")
        insert_exposures(conn, "ranker-vs-rules", "treatment", 4000, 520, "trt")
    reply = await client.get("/admin/v1/experiments/ranker-vs-rules/readout")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    control, treatment = body["variants"]
    assert (control["variant"], control["exposures"], control["clicks"]) == ("control", 4000, 400)
    assert control["ctr"] == pytest.approx(0.10) and control["lift"] is None and control["p_value"] is None
    assert (treatment["exposures"], treatment["clicks"]) == (4000, 520)
    assert treatment["lift"] == pytest.approx(0.03)
    assert treatment["relative_lift"] == pytest.approx(0.3)
    low, high = treatment["ci95"]
    assert low < 0.03 < high and low > 0
    assert treatment["p_value"] < 0.001
    assert body["srm"]["mismatch"] is False


async def test_readout_flags_a_skewed_split(client, pg_dsn):
    assert (await create(client)).status_code == 201
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        insert_exposures(conn, "ranker-vs-rules", "control", 3000, 300, "ctl")
        insert_exposures(conn, "ranker-vs-rules", "treatment", 2000, 200, "trt")
    body = (await client.get("/admin/v1/experiments/ranker-vs-rules/readout")).json()
    assert body["srm"]["mismatch"] is True and body["srm"]["p_value"] < 0.001
    # Equal CTRs: no lift to speak of.
    assert body["variants"][1]["lift"] == pytest.approx(0.0)
    assert body["variants"][1]["p_value"] > 0.5


async def test_recfleetctl_experiments(served, pg_dsn):
    code, out = await recfleetctl(
        served,
        "experiments",
        "create",
        "cli-exp",
        "--variant",
        "control=0.5:rules",
        "--variant",
        "treatment=0.5:serving",
        "--surface",
        "home",
    )
    assert code == 0, out
    code, out = await recfleetctl(served, "experiments", "list")
    assert code == 0 and "cli-exp" in out and "control=0.5:rules" in out and "running" in out
    code, out = await recfleetctl(served, "experiments", "create", "bad", "--variant", "control=half")
    assert code != 0 and "NAME=SHARE" in out
    code, out = await recfleetctl(served, "experiments", "create", "other", "--variant", "a=0.5", "--variant", "b=0.5")
    assert code == 1 and "409" in out and "cli-exp" in out

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        insert_exposures(conn, "cli-exp", "control", 3000, 300, "ctl")
        insert_exposures(conn, "cli-exp", "treatment", 2000, 260, "trt")
    code, out = await recfleetctl(served, "experiments", "readout", "cli-exp", "--json")
    assert code == 0, out
    readout = json.loads(out)
    assert [v["clicks"] for v in readout["variants"]] == [300, 260] and readout["srm"]["mismatch"] is True
    code, out = await recfleetctl(served, "experiments", "readout", "cli-exp")
    assert code == 0 and "sample ratio mismatch" in out and "+30.0%" in out
    code, out = await recfleetctl(served, "experiments", "stop", "cli-exp")
    assert code == 0 and '"stopped"' in out


async def test_erasure_removes_exposures_and_erased_users_are_not_written(client, app, pg_dsn):
    assert (await create(client)).status_code == 201
    await client.get("/v1/recommendations", params={"user_id": "erase-me"})
    assert len(await exposures_of(pg_dsn, "ranker-vs-rules", 1)) == 1
    receipt = (await client.delete("/v1/users/erase-me")).json()
    deadline = asyncio.get_running_loop().time() + 10
    while receipt["status"] == "pending" and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        receipt = (await client.get(f"/v1/erasures/{receipt['receipt_id']}")).json()
    assert receipt["stores"]["gateway"]["exposures_removed"] == 1
    assert await exposures_of(pg_dsn, "ranker-vs-rules", 0) == []

    # A user erased elsewhere (another replica, event-ingest) while an exposure waits in
    # this replica's buffer: the flush leaves it out.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO erased_users (user_hash, receipt_id) VALUES (%s, 'er_x')",
            (user_hash(app.state.gateway.settings.erasure_hash_key.get_secret_value(), "erased-elsewhere"),),
        )
    try:
        await client.get("/v1/recommendations", params={"user_id": "erased-elsewhere"})
        await client.get("/v1/recommendations", params={"user_id": "still-here"})
        await app.state.gateway.experiments.exposures.flush()
        rows = await exposures_of(pg_dsn, "ranker-vs-rules", 1)
        assert [r[2] for r in rows] == ["still-here"]
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM erased_users WHERE receipt_id = 'er_x'")
