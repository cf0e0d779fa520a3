"""Requests and the batch-equals-unary check the RetrieveBatch tests share."""

from __future__ import annotations

import grpc
from recfleet.candidates.v1 import candidates_pb2
from recfleet.common.v1 import common_pb2

OK = grpc.StatusCode.OK.value[0]


def request(vector, k, exclude=(), version="", packed=False) -> candidates_pb2.RetrieveRequest:
    return candidates_pb2.RetrieveRequest(
        query_vector=list(vector), k=k, exclude_item_ids=list(exclude), model_version=version, packed=packed
    )


async def unary(stub, query: candidates_pb2.RetrieveRequest) -> candidates_pb2.RetrieveResult:
    """What `Retrieve` alone answers, in the shape of a batch entry."""
    try:
        response = await stub.Retrieve(query, timeout=5)
    except grpc.aio.AioRpcError as error:
        return candidates_pb2.RetrieveResult(
            status=common_pb2.CallStatus(code=error.code().value[0], message=error.details())
        )
    return candidates_pb2.RetrieveResult(response=response, status=common_pb2.CallStatus(code=OK))


async def assert_batch_equals_unary(stub, queries) -> candidates_pb2.RetrieveBatchResponse:
    batch = await stub.RetrieveBatch(candidates_pb2.RetrieveBatchRequest(queries=queries), timeout=10)
    assert len(batch.results) == len(queries)
    for position, query in enumerate(queries):
        assert batch.results[position] == await unary(stub, query), f"entry {position}: {query}"
    return batch
