"""One typed client per downstream gRPC service, with a method per RPC the gateway uses.

Each client is a `Downstream` (deadline, circuit breaker, request id and client metrics:
`recfleet_runtime.grpcclient`) on one endpoint, a service's stable or canary track or
one candidate-gen shard. A method sends the generated stub's RPC, so its request and
response types are those of the `_pb2` messages and "go to definition" leads from a
call to the generated stub.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from recfleet.candidates.v1 import candidates_pb2, candidates_pb2_grpc
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from recfleet_runtime.batching import BatchedRpc, BatchResult
from recfleet_runtime.grpcclient import DeadlineSpentError, Downstream, UnaryRpc
from recfleet_runtime.resilience import CircuitOpenError

from .tracks import CANDIDATE_GEN, EVENT_INGEST, FEATURE_STORE, RANKING

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
BatchRequestT = TypeVar("BatchRequestT")
ResultT_co = TypeVar("ResultT_co", covariant=True)

# What a call that got no answer raises: the RPC's own error, an open breaker, or a
# budget spent before the call was sent.
DOWNSTREAM_ERRORS = (grpc.aio.AioRpcError, CircuitOpenError, DeadlineSpentError)


def is_timeout(error: BaseException) -> bool:
    if isinstance(error, DeadlineSpentError):
        return True
    return isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@dataclass(frozen=True)
class Coalescing:
    """How concurrent requests share downstream calls (`recfleet_runtime.batching`): at
    most `max_batch` requests per batched call, at most `max_in_flight` batched calls out
    per endpoint at once (a request waits only while that many are out). `max_batch` 1
    sends every request as its own unary call."""

    max_batch: int = 32
    max_in_flight: int = 2

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1


class BatchedReply(Protocol[ResultT_co]):
    """A batched RPC's response: `results`, one per request."""

    @property
    def results(self) -> Sequence[ResultT_co]: ...


def coalesced(
    downstream: Downstream[Any],
    coalescing: Coalescing,
    unary: UnaryRpc[RequestT, ResponseT],
    batch: UnaryRpc[BatchRequestT, BatchedReply[BatchResult[ResponseT]]],
    wrap: Callable[[list[RequestT]], BatchRequestT],
    method: str,
) -> BatchedRpc[RequestT, ResponseT, BatchRequestT, BatchedReply[BatchResult[ResponseT]]] | None:
    """`method` of `downstream` with concurrent calls sent as its `<method>Batch` RPC, or
    None when coalescing is off (every call then goes out alone)."""
    if not coalescing.enabled:
        return None
    return BatchedRpc(
        downstream,
        unary=unary,
        method=method,
        batch=batch,
        batch_method=f"{method}Batch",
        wrap=wrap,
        results=lambda reply: reply.results,
        max_batch=coalescing.max_batch,
        max_in_flight=coalescing.max_in_flight,
    )


class CandidateClient(Downstream["candidates_pb2_grpc.CandidateServiceAsyncStub"]):
    """One candidate-gen shard (`recfleet.candidates.v1.CandidateService`): the FAISS index
    of the items the shard owns. Concurrent `retrieve` calls share `RetrieveBatch` calls."""

    def __init__(self, shard: int, target: str, track: str, timeout: float, coalescing: Coalescing = Coalescing()):
        super().__init__(
            name=f"{CANDIDATE_GEN}-shard-{shard}",
            target=target,
            stub_class=candidates_pb2_grpc.CandidateServiceStub,
            service="recfleet.candidates.v1.CandidateService",
            timeout=timeout,
            idempotent_methods=("Retrieve", "RetrieveBatch", "SimilarItems", "GetShardStatus"),
            track=track,
        )
        self._retrieve = coalesced(
            self,
            coalescing,
            self.stub.Retrieve,
            self.stub.RetrieveBatch,
            lambda queries: candidates_pb2.RetrieveBatchRequest(queries=queries),
            "Retrieve",
        )

    async def retrieve(self, request: candidates_pb2.RetrieveRequest) -> candidates_pb2.RetrieveResponse:
        if self._retrieve is not None:
            return await self._retrieve(request)
        return await self.call(self.stub.Retrieve, request, method="Retrieve")

    async def similar_items(self, request: candidates_pb2.SimilarItemsRequest) -> candidates_pb2.SimilarItemsResponse:
        return await self.call(self.stub.SimilarItems, request, method="SimilarItems")

    async def get_shard_status(
        self, request: candidates_pb2.GetShardStatusRequest, timeout: float | None = None
    ) -> candidates_pb2.ShardStatus:
        return await self.call(self.stub.GetShardStatus, request, method="GetShardStatus", timeout=timeout)


class RankingClient(Downstream["ranking_pb2_grpc.RankingServiceAsyncStub"]):
    """The ranking service (`recfleet.ranking.v1.RankingService`) on one track.
    Concurrent `rank` calls share `RankBatch` calls."""

    def __init__(self, target: str, track: str, timeout: float, coalescing: Coalescing = Coalescing()):
        super().__init__(
            name=RANKING,
            target=target,
            stub_class=ranking_pb2_grpc.RankingServiceStub,
            service="recfleet.ranking.v1.RankingService",
            timeout=timeout,
            idempotent_methods=("Rank", "RankBatch", "GetModelStatus"),
            track=track,
        )
        self._rank = coalesced(
            self,
            coalescing,
            self.stub.Rank,
            self.stub.RankBatch,
            lambda requests: ranking_pb2.RankBatchRequest(requests=requests),
            "Rank",
        )

    async def rank(self, request: ranking_pb2.RankRequest) -> ranking_pb2.RankResponse:
        if self._rank is not None:
            return await self._rank(request)
        return await self.call(self.stub.Rank, request, method="Rank")


class FeatureStoreClient(Downstream["features_pb2_grpc.FeatureStoreAsyncStub"]):
    """The feature store (`recfleet.features.v1.FeatureStore`) on one track: user and item
    features, popular items, and the catalog and profile writes behind the REST API.
    Concurrent `get_user_features` calls share `GetUserFeaturesBatch` calls."""

    def __init__(self, target: str, track: str, timeout: float, coalescing: Coalescing = Coalescing()):
        super().__init__(
            name=FEATURE_STORE,
            target=target,
            stub_class=features_pb2_grpc.FeatureStoreStub,
            service="recfleet.features.v1.FeatureStore",
            timeout=timeout,
            idempotent_methods=(
                "GetUserFeatures",
                "GetUserFeaturesBatch",
                "GetItemFeatures",
                "GetPopularItems",
                "ListFeatureViews",
                "ExportUser",
            ),
            track=track,
        )
        self._user_features = coalesced(
            self,
            coalescing,
            self.stub.GetUserFeatures,
            self.stub.GetUserFeaturesBatch,
            lambda requests: features_pb2.GetUserFeaturesBatchRequest(requests=requests),
            "GetUserFeatures",
        )

    async def get_user_features(
        self, request: features_pb2.GetUserFeaturesRequest
    ) -> features_pb2.GetUserFeaturesResponse:
        if self._user_features is not None:
            return await self._user_features(request)
        return await self.call(self.stub.GetUserFeatures, request, method="GetUserFeatures")

    async def get_item_features(
        self, request: features_pb2.GetItemFeaturesRequest, timeout: float | None = None
    ) -> features_pb2.GetItemFeaturesResponse:
        return await self.call(self.stub.GetItemFeatures, request, method="GetItemFeatures", timeout=timeout)

    async def get_popular_items(
        self, request: features_pb2.GetPopularItemsRequest, timeout: float | None = None
    ) -> features_pb2.GetPopularItemsResponse:
        return await self.call(self.stub.GetPopularItems, request, method="GetPopularItems", timeout=timeout)

    async def upsert_items(
        self, request: features_pb2.UpsertItemsRequest, timeout: float | None = None
    ) -> features_pb2.UpsertItemsResponse:
        return await self.call(self.stub.UpsertItems, request, method="UpsertItems", timeout=timeout)

    async def put_user_profile(
        self, request: features_pb2.PutUserProfileRequest, timeout: float | None = None
    ) -> features_pb2.PutUserProfileResponse:
        return await self.call(self.stub.PutUserProfile, request, method="PutUserProfile", timeout=timeout)

    async def export_user(
        self, request: features_pb2.ExportUserRequest, timeout: float | None = None
    ) -> features_pb2.ExportUserResponse:
        return await self.call(self.stub.ExportUser, request, method="ExportUser", timeout=timeout)

    async def erase_user(
        self, request: features_pb2.EraseUserRequest, timeout: float | None = None
    ) -> features_pb2.EraseUserResponse:
        return await self.call(self.stub.EraseUser, request, method="EraseUser", timeout=timeout)


class IngestClient(Downstream["ingest_pb2_grpc.EventIngestAsyncStub"]):
    """Event ingest (`recfleet.ingest.v1.EventIngest`) on one track. Its calls are writes:
    never retried by the channel, never mirrored to a canary."""

    def __init__(self, target: str, track: str, timeout: float):
        super().__init__(
            name=EVENT_INGEST,
            target=target,
            stub_class=ingest_pb2_grpc.EventIngestStub,
            service="recfleet.ingest.v1.EventIngest",
            timeout=timeout,
            idempotent_methods=(),
            track=track,
        )

    async def ingest(
        self, request: ingest_pb2.IngestRequest, timeout: float | None = None
    ) -> ingest_pb2.IngestResponse:
        return await self.call(self.stub.Ingest, request, method="Ingest", timeout=timeout)

    async def erase_user(
        self, request: ingest_pb2.EraseUserRequest, timeout: float | None = None
    ) -> ingest_pb2.EraseUserResponse:
        return await self.call(self.stub.EraseUser, request, method="EraseUser", timeout=timeout)
