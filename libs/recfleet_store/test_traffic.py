import json

import pytest
from redis.asyncio import Redis

from recfleet_store.traffic import TrafficFrozen, TrafficStore, effective, read_routing_file


@pytest.fixture
async def store(redis_url):
    client = Redis.from_url(redis_url)
    yield TrafficStore(client)
    await client.aclose()


async def test_admin_beats_the_routing_file_which_beats_defaults(store, tmp_path):
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps({"services": {"ranking": {"weight": 20}, "feature-store": {"weight": 5}}}))
    await store.set("ranking", 10, 0, "alice")
    merged = effective(
        ["ranking", "feature-store", "candidate-gen"],
        await store.overrides(),
        read_routing_file(str(routing)),
        {"candidate-gen": 1},
    )
    assert (merged["ranking"].weight, merged["ranking"].source) == (10, "admin")
    assert (merged["feature-store"].weight, merged["feature-store"].source) == (5, "routing-file")
    assert (merged["candidate-gen"].weight, merged["candidate-gen"].source) == (1, "default")


async def test_rollback_freezes_until_acknowledged(store):
    await store.set("ranking", 10, 5, "alice")
    state = await store.rollback("ranking", "error rate 5% > 1%", "canary-analysis")
    assert state.weight == 0 and state.frozen and "5%" in state.reason
    with pytest.raises(TrafficFrozen):
        await store.set("ranking", 10, 0, "alice")
    await store.set("ranking", 0, 10, "alice")  # shadow and weight 0 stay allowed
    await store.ack("ranking", "bob")
    assert (await store.set("ranking", 10, 0, "alice")).weight == 10


async def test_weights_are_validated(store):
    with pytest.raises(ValueError):
        await store.set("ranking", 101, 0, "x")
    with pytest.raises(ValueError):
        await store.set("ranking", 10, -1, "x")
