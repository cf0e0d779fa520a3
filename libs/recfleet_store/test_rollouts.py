import pytest
from recfleet_runtime.rollout import ABORTED, Rollout, Schedule
from redis.asyncio import Redis

from recfleet_store.rollouts import RolloutStore


@pytest.fixture
async def store(redis_url):
    client = Redis.from_url(redis_url)
    yield RolloutStore(client)
    await client.aclose()


async def test_a_rollout_is_written_only_over_the_record_its_writer_read(store):
    first = Rollout.start("ranking", Schedule((1, 10, 100), 60), 1000.0, "alice")
    assert await store.replace(None, first)
    assert not await store.replace(None, first)  # one was started meanwhile
    assert await store.get("ranking") == first

    # Two replicas judge the same stage: one advances it, the other's write is refused.
    advanced = first.advanced(1060.0, "passed")
    assert await store.replace(first, advanced)
    assert not await store.replace(first, first.advanced(1061.0, "passed"))
    # An operator's abort goes over the stage it read.
    assert await store.replace(advanced, advanced.ended(ABORTED, "stopped"))
    assert (await store.get("ranking")).status == ABORTED


async def test_every_service_rollout_comes_back_in_one_read(store):
    ranking = Rollout.start("ranking", Schedule((5, 100), 0), 1000.0, "alice")
    await store.replace(None, ranking)
    assert await store.all(["ranking", "feature-store"]) == {"ranking": ranking}
