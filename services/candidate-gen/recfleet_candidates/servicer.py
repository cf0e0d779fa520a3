"""CandidateService: protobuf requests to retrieval on the served shard, and back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Never, TypeVar, cast

import faiss
import grpc
from recfleet.candidates.v1 import candidates_pb2, candidates_pb2_grpc
from recfleet.common.v1 import common_pb2
from recfleet_models.index import LoadedShard
from recfleet_runtime.batching import OK_STATUS, EntryAbortedError, EntryContext, entry_status

from . import metrics
from .metadata_items import MetadataItems
from .retrieval import (
    NO_VECTOR,
    Found,
    InvalidArgument,
    Query,
    as_query,
    check_excluded,
    check_k,
    merged_top_k,
    retrieve_many,
)
from .served_index import ServedIndex

SERVICE_NAME = candidates_pb2.DESCRIPTOR.services_by_name["CandidateService"].full_name
T = TypeVar("T")


class CandidateServicer(candidates_pb2_grpc.CandidateServiceServicer):
    def __init__(
        self,
        index: ServedIndex,
        metadata: MetadataItems,
        resolve_version: Callable[[], Awaitable[str | None]],
        inline_search_max_flat_items: int,
        search_threads: int = 1,
    ):
        self.index = index
        self.metadata = metadata
        self._resolve_version = resolve_version
        self._inline_limit = inline_search_max_flat_items
        self._threads = search_threads
        self._label = str(index.shard)

    async def _served(self, requested_version: str, context: grpc.aio.ServicerContext) -> LoadedShard:
        """The shard that answers: the current one, or the pinned version when still loaded."""
        current = self.index.current
        if current is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"shard {self.index.shard} has no index loaded yet")
        if not requested_version:
            return current
        shard = self.index.for_version(requested_version)
        if shard is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model_version: shard {self.index.shard} serves {current.version}, not {requested_version}",
            )
        return shard

    async def _search(self, shard: LoadedShard, rpc: str, work: Callable[[], T]) -> T:
        """Approximate and small exact searches take well under a millisecond: run them
        inline. Large flat shards go to a worker thread so the event loop keeps serving."""
        started = time.perf_counter()
        if shard.manifest.index_type != "flat" or shard.item_count <= self._inline_limit:
            result = work()
        else:

            def in_thread() -> T:
                faiss.omp_set_num_threads(self._threads)
                return work()

            result = await asyncio.to_thread(in_thread)
        metrics.SEARCH_SECONDS.labels(self._label, rpc).observe(time.perf_counter() - started)
        return result

    @staticmethod
    async def _invalid(context: grpc.aio.ServicerContext, error: InvalidArgument) -> Never:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

    async def _checked(
        self, request: candidates_pb2.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> tuple[LoadedShard, Query]:
        """The shard that answers `request` and the checked query; aborts as `Retrieve` does."""
        shard = await self._served(request.model_version, context)
        try:
            k = check_k(request.k)
            excluded = check_excluded(request.exclude_item_ids)
            history = request.history_item_ids
            excluded |= check_excluded(history, "history_item_ids")
            # No vector but a history: a user the version has no factors for yet, answered
            # by the EASE source alone.
            if history and not request.query_vector:
                query = NO_VECTOR
            else:
                query = as_query(request.query_vector, shard.dimension, shard.version)
        except InvalidArgument as error:
            await self._invalid(context, error)
        return shard, Query(query, k, excluded, list(history))

    def _fill(
        self, response: candidates_pb2.RetrieveResponse, shard: LoadedShard, packed: bool, found: Found
    ) -> candidates_pb2.RetrieveResponse:
        """Writes the answer into `response` in place (a batch's result holds it: no copy)."""
        response.shard = self.index.shard
        response.model_version = shard.version
        if packed:
            # Whole columns at once: no protobuf message, and no Python step, per item.
            items = response.packed_items
            items.item_ids.extend(found.item_ids)
            items.scores.extend(found.scores.tolist())
            items.sources.extend(found.sources)
            for source, scores in found.source_scores.items():
                items.source_scores.add(source=source, scores=scores.tolist())
        else:
            add = response.items.add
            for item, score, source in found.entries():
                add(item_id=item, score=score, source=source)
        return response

    async def Retrieve(
        self, request: candidates_pb2.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> candidates_pb2.RetrieveResponse:
        shard, query = await self._checked(request, context)
        extra = self.metadata.for_version(shard.version)
        found = await self._search(shard, "Retrieve", lambda: retrieve_many(shard, extra, [query]))
        return self._fill(candidates_pb2.RetrieveResponse(), shard, request.packed, found[0])

    async def RetrieveBatch(
        self, request: candidates_pb2.RetrieveBatchRequest, context: grpc.aio.ServicerContext
    ) -> candidates_pb2.RetrieveBatchResponse:
        """Each query answered as `Retrieve` would answer it alone, with its status; the
        queries answered by the same loaded version are searched together (one matrix
        search, see `retrieval.top_k_many`), in a worker thread where `Retrieve` would."""
        batch = candidates_pb2.RetrieveBatchResponse()
        results = [batch.results.add() for _ in request.queries]
        # Keyed by the shard object: a batch can pin the version just swapped out too.
        groups: dict[int, tuple[LoadedShard, list[tuple[int, Query]]]] = {}
        # Its `abort` ends one entry only, so the unary checks run unchanged.
        entry_context = cast(grpc.aio.ServicerContext, EntryContext(context))
        for position, entry in enumerate(request.queries):
            try:
                shard, query = await self._checked(entry, entry_context)
            except EntryAbortedError as refused:
                results[position].status.CopyFrom(entry_status(refused.code, refused.details))
                continue
            groups.setdefault(id(shard), (shard, []))[1].append((position, query))
        for shard, members in groups.values():
            extra = self.metadata.for_version(shard.version)
            queries = [query for _, query in members]
            found = await self._search(shard, "RetrieveBatch", partial(retrieve_many, shard, extra, queries))
            for (position, _), answer in zip(members, found, strict=True):
                self._fill(results[position].response, shard, request.queries[position].packed, answer)
                results[position].status.CopyFrom(OK_STATUS)
        return batch

    async def SimilarItems(
        self, request: candidates_pb2.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> candidates_pb2.SimilarItemsResponse:
        shard = await self._served(request.model_version, context)
        try:
            if not request.item_id:
                raise InvalidArgument("item_id", "is required")
            k = check_k(request.k)
            excluded = check_excluded(request.exclude_item_ids) | {request.item_id}
            extra = self.metadata.for_version(shard.version)
            own = shard.vector_of(request.item_id)
            if own is None and extra is not None:
                # A new item the version has no factors for is placed by its metadata.
                own = extra.vector_of(request.item_id)
            if own is not None:
                query = own.reshape(1, -1)
            elif request.query_vector:
                query = as_query(request.query_vector, shard.dimension, shard.version)
            else:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"item_id: {request.item_id} is not in shard {self.index.shard} of {shard.version} "
                    "and no query_vector was given",
                )
        except InvalidArgument as error:
            await self._invalid(context, error)
        found = await self._search(
            shard, "SimilarItems", lambda: merged_top_k(shard, extra, query, k, excluded, "similar")
        )
        return candidates_pb2.SimilarItemsResponse(
            items=[common_pb2.ScoredItem(item_id=item, score=score, source=source) for item, score, source in found],
            shard=self.index.shard,
            model_version=shard.version,
            query_vector=query[0].tolist() if own is not None else [],
            owner=own is not None,
        )

    def _status(self) -> candidates_pb2.ShardStatus:
        status = self.index.status()
        return candidates_pb2.ShardStatus(
            shard=status.shard,
            shard_count=status.shard_count,
            model_version=status.model_version,
            index_type=status.index_type,
            item_count=status.item_count,
            dimension=status.dimension,
            last_reload=status.last_reload,
            refused_version=status.refused_version,
            metadata_item_count=extra.item_count if (extra := self.metadata.for_version(status.model_version)) else 0,
        )

    async def GetShardStatus(
        self, request: candidates_pb2.GetShardStatusRequest, context: grpc.aio.ServicerContext
    ) -> candidates_pb2.ShardStatus:
        return self._status()

    async def ReloadIndex(
        self, request: candidates_pb2.ReloadIndexRequest, context: grpc.aio.ServicerContext
    ) -> candidates_pb2.ShardStatus:
        version = request.model_version or await self._resolve_version()
        if not version:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no model version is serving in the registry")
        await self.index.reload(version)
        return self._status()
