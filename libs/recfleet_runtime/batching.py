"""Batched RPCs: many requests in one call, each answered as if it had been sent alone.

A batched RPC (`RetrieveBatch`, `RankBatch`, `GetUserFeaturesBatch`) carries a list of the
unary RPC's requests and answers a list of results, each holding the unary response or
the status the unary call would have ended with (`recfleet.common.v1.CallStatus`). One
entry that fails never fails its neighbours.

Server side, `answer_each` runs the unary handler once per entry with a context whose
`abort` ends that entry only. Client side, `Coalescer` joins concurrent calls: a call
leaves at once when fewer than `max_in_flight` batches are out, otherwise it joins the
next batch, which leaves as soon as one returns. No window is waited for, so a lone
request is sent as soon as it arrives; under load each call carries the requests that
arrived while the previous one was out, and its per-call cost (HTTP/2 frames, the
completion queue, protobuf framing, the interceptors) is shared between them.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, NoReturn, Protocol, TypeVar

import grpc
from prometheus_client import Histogram
from recfleet.common.v1 import common_pb2

from .context import deadline_var, remaining
from .grpcclient import Downstream, UnaryRpc

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
ResponseT_co = TypeVar("ResponseT_co", covariant=True)

BATCH_SIZE = Histogram(
    "recfleet_grpc_client_batch_size",
    "Requests carried by each batched call a client sent (coalesced concurrent requests).",
    ["downstream", "track", "grpc_method"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128),
)

OK_STATUS = common_pb2.CallStatus(code=grpc.StatusCode.OK.value[0])
_CODES = {code.value[0]: code for code in grpc.StatusCode}


# -- server side ----------------------------------------------------------------------


class EntryAbortedError(Exception):
    """An entry of a batch was aborted by its handler (the unary call would have ended
    with this status)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code
        self.details = details


class EntryContext:
    """Stands in for the call's `ServicerContext` while one entry is answered: `abort`
    ends this entry only; everything else is the batch call's own context."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]):
        self._context = context

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: object = ()) -> NoReturn:
        raise EntryAbortedError(code, details)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class BatchResult(Protocol[ResponseT_co]):
    """A `*Result` message: `response` and `status`."""

    @property
    def response(self) -> ResponseT_co: ...

    @property
    def status(self) -> common_pb2.CallStatus: ...


def entry_status(code: grpc.StatusCode, details: str = "") -> common_pb2.CallStatus:
    return common_pb2.CallStatus(code=code.value[0], message=details)


async def answer_each(
    requests: Iterable[RequestT],
    handler: Callable[[RequestT, Any], Awaitable[ResponseT]],
    context: grpc.aio.ServicerContext[Any, Any],
    result: Callable[..., Any],
) -> list[Any]:
    """`result(response=..., status=...)` for each request, answered by the unary
    `handler(request, context)`; an entry the handler aborts gets that status."""
    entry_context = EntryContext(context)
    results = []
    for request in requests:
        try:
            response = await handler(request, entry_context)
        except EntryAbortedError as aborted:
            results.append(result(status=entry_status(aborted.code, aborted.details)))
        else:
            results.append(result(response=response, status=OK_STATUS))
    return results


# -- client side ----------------------------------------------------------------------


def entry_error(status: common_pb2.CallStatus) -> grpc.aio.AioRpcError:
    """The error a unary call would have raised for an entry's non-OK status, so callers
    handle a batched call's failure exactly like a unary one's."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), status.message)


def unpack(results: Sequence[BatchResult[ResponseT]], expected: int) -> list[ResponseT | BaseException]:
    """Each entry's response, or the error its status stands for."""
    if len(results) != expected:
        error = grpc.aio.AioRpcError(
            grpc.StatusCode.INTERNAL,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            f"batch answered {len(results)} results for {expected} requests",
        )
        return [error] * expected
    return [entry.response if entry.status.code == 0 else entry_error(entry.status) for entry in results]


SendBatch = Callable[[list[RequestT]], Awaitable[Sequence["ResponseT | BaseException"]]]


class Coalescer(Generic[RequestT, ResponseT]):
    """Joins concurrent `submit` calls into batches sent by `send`.

    `send(requests)` returns one response or exception per request, in order; if it
    raises, every request of the batch gets that error. A request waits only while
    `max_in_flight` batches are already out. `on_batch(size)` is told each batch's size.
    """

    def __init__(
        self,
        send: SendBatch[RequestT, ResponseT],
        *,
        max_batch: int = 64,
        max_in_flight: int = 1,
        on_batch: Callable[[int], None] = lambda size: None,
    ):
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._send = send
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._on_batch = on_batch
        self._pending: list[tuple[RequestT, asyncio.Future[ResponseT], contextvars.Context]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: RequestT) -> ResponseT:
        future: asyncio.Future[ResponseT] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future, contextvars.copy_context()))
        if self._in_flight < self._max_in_flight:
            self._launch()
        return await future

    def _launch(self) -> None:
        # The batch is sent in the context of the request that opens it (its request id,
        # trace and deadline), not that of whichever task happened to launch it.
        self._in_flight += 1
        task = asyncio.create_task(self._run(), context=self._pending[0][2].copy())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        try:
            # The batch is taken when the task starts, so calls made in the same turn of
            # the event loop as the one that launched it travel with it.
            while self._pending:
                batch = [
                    (request, future) for request, future, _ in self._pending[: self._max_batch] if not future.done()
                ]
                self._pending = self._pending[self._max_batch :]
                if batch:
                    await self._send_one(batch)
                    return
        finally:
            self._in_flight -= 1
            while self._pending and self._in_flight < self._max_in_flight:
                self._launch()

    async def _send_one(self, batch: list[tuple[RequestT, asyncio.Future[ResponseT]]]) -> None:
        self._on_batch(len(batch))
        try:
            answers = await self._send([request for request, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:
            answers = [error] * len(batch)
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


BatchRequestT = TypeVar("BatchRequestT")
BatchResponseT = TypeVar("BatchResponseT")

# After a server answers UNIMPLEMENTED to a batched RPC (a pod from before batching, during
# a rolling upgrade), its unary RPC is used for this long before batching is tried again.
UNIMPLEMENTED_BACKOFF_SECONDS = 60.0


class BatchedRpc(Generic[RequestT, ResponseT, BatchRequestT, BatchResponseT]):
    """One unary RPC of a downstream, with concurrent calls coalesced into its batched RPC.

    `await rpc(request)` answers like the unary call: its response, or the `AioRpcError`
    the unary call would raise (an entry's status, or the batch call's own failure, which
    every entry of that batch shares). Each entry keeps its own deadline; the batch is sent
    with the latest deadline among its entries, through `Downstream.call` (breaker,
    metrics, request id of the request that opened the batch). Each entry is also recorded
    as a unary call of `method` (`Downstream.record_entries`): the client metrics, the
    canary analysis and the breaker see requests, whatever batches carried them.
    """

    def __init__(
        self,
        downstream: Downstream[Any],
        *,
        unary: UnaryRpc[RequestT, ResponseT],
        method: str,
        batch: UnaryRpc[BatchRequestT, BatchResponseT],
        batch_method: str,
        wrap: Callable[[list[RequestT]], BatchRequestT],
        results: Callable[[BatchResponseT], Sequence[BatchResult[ResponseT]]],
        max_batch: int,
        max_in_flight: int,
    ):
        self._downstream = downstream
        self._unary = unary
        self._method = method
        self._batch = batch
        self._batch_method = batch_method
        self._wrap = wrap
        self._results = results
        self._unbatched_until = float("-inf")
        size = BATCH_SIZE.labels(downstream.name, downstream.track, batch_method)
        self._coalescer: Coalescer[tuple[RequestT, float], ResponseT] = Coalescer(
            self._send, max_batch=max_batch, max_in_flight=max_in_flight, on_batch=size.observe
        )

    async def __call__(self, request: RequestT) -> ResponseT:
        budget = remaining(self._downstream.timeout)
        if budget <= 0:
            # Downstream.call records and raises the spent budget the usual way.
            return await self._downstream.call(self._unary, request, method=self._method)
        try:
            async with asyncio.timeout(budget):
                return await self._coalescer.submit((request, time.monotonic() + budget))
        except TimeoutError:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                f"{self._downstream.name}: no answer within {budget:.3f} s",
            ) from None

    async def _send(self, entries: list[tuple[RequestT, float]]) -> Sequence[ResponseT | BaseException]:
        requests = [request for request, _ in entries]
        deadline_var.set(max(deadline for _, deadline in entries))
        if time.monotonic() < self._unbatched_until:
            return await self._each(requests)
        started = time.perf_counter()
        try:
            reply = await self._downstream.call(
                self._batch, self._wrap(requests), method=self._batch_method, observed=False
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                codes = [error.code()] * len(requests)
                self._downstream.record_entries(self._method, codes, time.perf_counter() - started, False)
                raise
            self._unbatched_until = time.monotonic() + UNIMPLEMENTED_BACKOFF_SECONDS
            return await self._each(requests)
        answers = unpack(self._results(reply), len(requests))
        codes = [
            answer.code() if isinstance(answer, grpc.aio.AioRpcError) else grpc.StatusCode.OK for answer in answers
        ]
        self._downstream.record_entries(self._method, codes, time.perf_counter() - started)
        return answers

    async def _each(self, requests: list[RequestT]) -> Sequence[ResponseT | BaseException]:
        calls = (self._downstream.call(self._unary, request, method=self._method) for request in requests)
        return await asyncio.gather(*calls, return_exceptions=True)

    async def close(self) -> None:
        await self._coalescer.close()
