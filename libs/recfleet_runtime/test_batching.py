"""The coalescer: concurrent calls share batches, a lone call waits for nothing, and each
call gets its own answer or error."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from recfleet.common.v1 import common_pb2

from .batching import Coalescer, answer_each, entry_status, unpack


class Recorder:
    def __init__(self, delay: float = 0.01):
        self.batches: list[list[int]] = []
        self.delay = delay

    async def send(self, requests: list[int]) -> list[int | BaseException]:
        self.batches.append(list(requests))
        await asyncio.sleep(self.delay)
        return [ValueError(f"odd {r}") if r % 2 else r * 10 for r in requests]


async def test_a_lone_call_is_sent_at_once_in_a_batch_of_one():
    recorder = Recorder(delay=0)
    coalescer = Coalescer(recorder.send)
    assert await asyncio.wait_for(coalescer.submit(4), 1) == 40
    assert recorder.batches == [[4]]


async def test_calls_made_while_a_batch_is_out_share_the_next_one():
    recorder = Recorder()
    sizes: list[int] = []
    coalescer = Coalescer(recorder.send, max_batch=8, max_in_flight=1, on_batch=sizes.append)
    results = await asyncio.gather(*(coalescer.submit(n) for n in range(0, 40, 2)))
    assert results == [n * 10 for n in range(0, 40, 2)]
    # The first turn of the loop sends all it has (up to max_batch); the rest follow in
    # batches of at most 8, one at a time.
    assert sum(sizes) == 20
    assert max(sizes) == 8
    assert len(recorder.batches) == 3


async def test_each_call_gets_its_own_error_and_neighbours_their_answers():
    coalescer = Coalescer(Recorder().send, max_batch=4)
    results = await asyncio.gather(*(coalescer.submit(n) for n in range(4)), return_exceptions=True)
    assert results[0] == 0 and results[2] == 20
    assert isinstance(results[1], ValueError) and str(results[1]) == "odd 1"
    assert isinstance(results[3], ValueError)


async def test_a_failed_batch_fails_each_of_its_calls_and_the_next_batch_still_goes():
    attempts: list[list[int]] = []

    async def flaky(requests: list[int]) -> list[int | BaseException]:
        attempts.append(requests)
        if len(attempts) == 1:
            await asyncio.sleep(0.01)
            raise ConnectionError("down")
        return list(requests)

    coalescer = Coalescer(flaky, max_in_flight=1)
    first = asyncio.gather(coalescer.submit(1), coalescer.submit(2), return_exceptions=True)
    await asyncio.sleep(0)
    later = asyncio.gather(coalescer.submit(3), coalescer.submit(4))
    assert [type(r) for r in await first] == [ConnectionError, ConnectionError]
    assert await later == [3, 4]
    assert attempts == [[1, 2], [3, 4]]


async def test_a_call_given_up_before_its_batch_leaves_is_not_sent():
    recorder = Recorder()
    coalescer = Coalescer(recorder.send, max_in_flight=1)
    first = asyncio.ensure_future(coalescer.submit(2))
    await asyncio.sleep(0)
    abandoned = asyncio.ensure_future(coalescer.submit(4))
    kept = asyncio.ensure_future(coalescer.submit(6))
    await asyncio.sleep(0)
    abandoned.cancel()
    assert await first == 20 and await kept == 60
    assert recorder.batches == [[2], [6]]


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        Coalescer(Recorder().send, max_batch=0)


async def test_answer_each_turns_an_abort_into_that_entry_status():
    async def handler(request: int, context) -> common_pb2.ScoredItem:
        if request < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"negative: {request}")
        return common_pb2.ScoredItem(item_id=str(request))

    class BatchResult:
        def __init__(self, response=None, status=None):
            self.response, self.status = response, status

    results = await answer_each([1, -2, 3], handler, context=None, result=BatchResult)
    assert [r.status.code for r in results] == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0], 0]
    answers = unpack(results, 3)
    assert answers[0].item_id == "1" and answers[2].item_id == "3"
    assert isinstance(answers[1], grpc.aio.AioRpcError)
    assert answers[1].code() == grpc.StatusCode.INVALID_ARGUMENT and answers[1].details() == "negative: -2"
    wrong_count = unpack(results, 4)
    assert all(isinstance(a, grpc.aio.AioRpcError) and a.code() == grpc.StatusCode.INTERNAL for a in wrong_count)
    assert entry_status(grpc.StatusCode.NOT_FOUND, "x").code == 5


async def test_each_batch_is_sent_in_the_context_of_the_request_that_opens_it():
    import contextvars

    who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")
    seen: list[tuple[str, list[int]]] = []

    async def send(requests: list[int]) -> list[int]:
        seen.append((who.get(), list(requests)))
        await asyncio.sleep(0.01)
        return requests

    coalescer = Coalescer(send, max_in_flight=1)

    async def call(n: int) -> int:
        who.set(f"request-{n}")
        return await coalescer.submit(n)

    first = asyncio.ensure_future(call(1))
    await asyncio.sleep(0)
    assert await asyncio.gather(first, call(2), call(3)) == [1, 2, 3]
    # The second batch was launched when the first returned, yet carries request 2's context.
    assert seen == [("request-1", [1]), ("request-2", [2, 3])]
