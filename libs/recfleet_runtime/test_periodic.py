import asyncio

from recfleet_runtime.periodic import Periodic


async def test_work_runs_at_start_then_repeats_until_stopped():
    runs = []
    third = asyncio.Event()

    async def work() -> None:
        runs.append(1)
        if len(runs) == 3:
            third.set()

    periodic = Periodic(0.01, work)
    await periodic.start()
    assert runs == [1]  # done before start returns
    await asyncio.wait_for(third.wait(), timeout=5)
    await periodic.stop()
    stopped_at = len(runs)
    await asyncio.sleep(0.05)
    assert len(runs) == stopped_at
