"""Scripted gRPC servers for the gateway's unit tests only.

Each implements one fleet proto with small, deterministic behaviour over a fixed
catalog of 60 items, runs in-process on port 0 with the standard health service, and
can be told to fail (`failing = grpc.StatusCode.X`) or be stopped. The fleet's real
services are tested elsewhere; these exist so the gateway's orchestration, fallbacks
and error mapping can be checked against real gRPC calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from recfleet.candidates.v1 import candidates_pb2, candidates_pb2_grpc
from recfleet.common.v1 import common_pb2
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from recfleet_models.sharding import shard_of
from recfleet_runtime.batching import answer_each

MODEL_VERSION = "als-20261123T000000Z"
RANKER_VERSION = "ranker-20261123T000000Z"
CATEGORIES = ("drama", "comedy", "action")
ITEMS = [f"m{n}" for n in range(1, 61)]


def category_of(item_id: str) -> str:
    return CATEGORIES[int(item_id[1:]) % 3]


def vector_of(item_id: str) -> list[float]:
    digest = hashlib.sha256(item_id.encode()).digest()
    return [(byte - 128) / 128 for byte in digest[:4]]


def dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def popularity(item_id: str) -> float:
    return 1.0 / int(item_id[1:])


class Scripted:
    """Failure switch shared by every scripted servicer."""

    failing: grpc.StatusCode | None = None
    calls: list[str]

    def __init__(self):
        self.calls = []
        self.failing = None
        # Answer batched RPCs with UNIMPLEMENTED, like a server from before batching.
        self.batches_unimplemented = False
        self.failing_batches: grpc.StatusCode | None = None

    async def enter_batch(self, context, method: str) -> None:
        """A batched call: `failing` fails each entry (the unary handler runs per entry);
        `failing_batches` fails the whole call."""
        self.calls.append(method)
        if self.batches_unimplemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
        if self.failing_batches is not None:
            await context.abort(self.failing_batches, f"scripted failure of {method}")

    async def enter(self, context, method: str) -> None:
        self.calls.append(method)
        if self.failing is not None:
            await context.abort(self.failing, f"scripted failure of {method}")


class ScriptedShard(Scripted, candidates_pb2_grpc.CandidateServiceServicer):
    def __init__(self, shard: int, shard_count: int):
        super().__init__()
        self.shard = shard
        self.items = [i for i in ITEMS if shard_of(i, shard_count) == shard]
        # The ALS version this shard serves (`ScriptedFleet.serve_version` moves the fleet).
        self.model_version = MODEL_VERSION
        # Whether it answers a request with history as a version with EASE does: packed
        # answers carry "als" and "ease" source scores (EASE: the count of history items
        # sharing the item's category), sources "als+ease".
        self.ease = False
        self.requests: list[candidates_pb2.RetrieveRequest] = []

    def _top(self, query, k, exclude) -> list[common_pb2.ScoredItem]:
        scored = [(dot(query, vector_of(i)), i) for i in self.items if i not in exclude]
        scored.sort(key=lambda pair: (-pair[0], pair[1]))
        return [common_pb2.ScoredItem(item_id=i, score=s, source="als") for s, i in scored[:k]]

    async def Retrieve(self, request, context):
        await self.enter(context, "Retrieve")
        self.requests.append(request)
        if request.model_version and request.model_version != self.model_version:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "other model version")
        items = self._top(list(request.query_vector), request.k, set(request.exclude_item_ids))
        if request.packed:
            packed = common_pb2.ScoredItemList(
                item_ids=[i.item_id for i in items], scores=[i.score for i in items], sources=[i.source for i in items]
            )
            if self.ease and request.history_item_ids:
                history = [category_of(i) for i in request.history_item_ids]
                packed.sources[:] = ["als+ease"] * len(items)
                packed.source_scores.add(source="als", scores=[i.score for i in items])
                packed.source_scores.add(source="ease", scores=[history.count(category_of(i.item_id)) for i in items])
            return candidates_pb2.RetrieveResponse(
                packed_items=packed, shard=self.shard, model_version=self.model_version
            )
        return candidates_pb2.RetrieveResponse(items=items, shard=self.shard, model_version=self.model_version)

    async def RetrieveBatch(self, request, context):
        await self.enter_batch(context, "RetrieveBatch")
        results = await answer_each(request.queries, self.Retrieve, context, candidates_pb2.RetrieveResult)
        return candidates_pb2.RetrieveBatchResponse(results=results)

    async def SimilarItems(self, request, context):
        await self.enter(context, "SimilarItems")
        exclude = {request.item_id, *request.exclude_item_ids}
        if request.query_vector:
            query, owner = list(request.query_vector), False
        elif request.item_id in self.items:
            query, owner = vector_of(request.item_id), True
        else:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"item {request.item_id} is not in shard {self.shard}")
        items = [
            common_pb2.ScoredItem(item_id=i.item_id, score=i.score, source="similar")
            for i in self._top(query, request.k, exclude)
        ]
        return candidates_pb2.SimilarItemsResponse(
            items=items,
            shard=self.shard,
            model_version=MODEL_VERSION,
            query_vector=query if owner else [],
            owner=owner,
        )

    async def GetShardStatus(self, request, context):
        return candidates_pb2.ShardStatus(shard=self.shard, model_version=MODEL_VERSION, item_count=len(self.items))


class ScriptedFeatureStore(Scripted, features_pb2_grpc.FeatureStoreServicer):
    """Users: `warm-*` have a vector and 10 interactions (seen m1, m2; `warm-old-*` with a
    vector of an older model version); `stale-*` have 10 interactions and vectors of an
    older model version only, so none comes back; others are cold with whatever profile
    was put."""

    def __init__(self):
        super().__init__()
        # The serving ALS version: the version of the vectors `warm-*` users get.
        self.model_version = MODEL_VERSION
        # Seconds GetUserFeatures waits before answering.
        self.user_features_delay = 0.0
        self.profiles: dict[str, features_pb2.UserProfile] = {}
        self.items: dict[str, features_pb2.Item] = {}
        self.erased: list[str] = []

    async def GetUserFeatures(self, request, context):
        await self.enter(context, "GetUserFeatures")
        if self.user_features_delay:
            await asyncio.sleep(self.user_features_delay)
        user_id = request.user_id
        profile = self.profiles.get(user_id, features_pb2.UserProfile(user_id=user_id))
        constraints = common_pb2.UserConstraints(
            blocked_categories=profile.blocked_categories,
            preferred_categories=profile.preferred_categories,
            age=profile.age,
            country=profile.country,
        )
        values = {"liked_items": features_pb2.FeatureValue(strings=features_pb2.StringList(values=profile.liked_items))}
        reply = features_pb2.GetUserFeaturesResponse(constraints=constraints, vector_status="missing")
        if user_id.startswith("warm-"):
            constraints.seen_item_ids.extend(["m1", "m2"])
            values["interaction_count"] = features_pb2.FeatureValue(number=10)
            # `warm-old-*` users carry a vector of a version no shard serves any more.
            version = "als-20261001T000000Z" if user_id.startswith("warm-old-") else self.model_version
            reply.user_vector.CopyFrom(common_pb2.Vector(values=vector_of(user_id), model_version=version))
            reply.vector_status = ""
            reply.interaction_count = 10
        if user_id.startswith("stale-"):
            values["interaction_count"] = features_pb2.FeatureValue(number=10)
            reply.vector_status = "version-mismatch:als-20261001T000000Z"
            reply.interaction_count = 10
        reply.constraints.CopyFrom(constraints)
        reply.features.CopyFrom(features_pb2.FeatureRow(entity_id=user_id, values=values))
        return reply

    async def GetUserFeaturesBatch(self, request, context):
        await self.enter_batch(context, "GetUserFeaturesBatch")
        results = await answer_each(request.requests, self.GetUserFeatures, context, features_pb2.GetUserFeaturesResult)
        return features_pb2.GetUserFeaturesBatchResponse(results=results)

    async def GetItemFeatures(self, request, context):
        await self.enter(context, "GetItemFeatures")
        rows = [
            features_pb2.FeatureRow(
                entity_id=i,
                values={
                    "categories": features_pb2.FeatureValue(strings=features_pb2.StringList(values=[category_of(i)]))
                },
            )
            for i in request.item_ids
            if i in ITEMS
        ]
        return features_pb2.GetItemFeaturesResponse(rows=rows)

    async def GetPopularItems(self, request, context):
        await self.enter(context, f"GetPopularItems:{request.window or 'all'}:{request.category}")
        exclude = set(request.exclude_item_ids)
        found = [i for i in ITEMS if i not in exclude and (not request.category or category_of(i) == request.category)]
        if request.window == "trending":
            found = list(reversed(found))
        items = [
            common_pb2.ScoredItem(item_id=i, score=popularity(i), source="popular")
            for i in found[: request.limit or 20]
        ]
        return features_pb2.GetPopularItemsResponse(items=items)

    async def UpsertItems(self, request, context):
        await self.enter(context, "UpsertItems")
        created = sum(1 for item in request.items if item.item_id not in self.items)
        for item in request.items:
            self.items[item.item_id] = item
        return features_pb2.UpsertItemsResponse(upserted=len(request.items), created=created)

    async def PutUserProfile(self, request, context):
        await self.enter(context, "PutUserProfile")
        self.profiles[request.profile.user_id] = request.profile
        return features_pb2.PutUserProfileResponse(profile=request.profile)

    async def ExportUser(self, request, context):
        await self.enter(context, "ExportUser")
        profile = self.profiles.get(request.user_id)
        document = {"user_id": request.user_id, "profile": None}
        if profile is not None:
            document["profile"] = {"preferred_categories": list(profile.preferred_categories), "age": profile.age}
        return features_pb2.ExportUserResponse(json=json.dumps(document))

    async def EraseUser(self, request, context):
        await self.enter(context, "EraseUser")
        removed = 1 if self.profiles.pop(request.user_id, None) is not None else 0
        self.erased.append(request.user_id)
        return features_pb2.EraseUserResponse(removed={"profile": removed})


class ScriptedRanking(Scripted, ranking_pb2_grpc.RankingServiceServicer):
    """Rules only: drops seen and blocked-category items, orders by candidate score."""

    def __init__(self):
        super().__init__()
        self.requests: list[ranking_pb2.RankRequest] = []
        # Whether each request asked for (and got) the packed answer.
        self.packed: list[bool] = []
        # Each request's candidate source scores: item id -> source -> score.
        self.source_scores: list[dict[str, dict[str, float]]] = []
        self.metadata: list[dict[str, str]] = []
        # When set, answers with no items and these degraded reasons.
        self.empty_with: list[str] | None = None
        # When set, orders the kept candidates at random (a deliberately worse model).
        self.random_order: random.Random | None = None

    async def RankBatch(self, request, context):
        await self.enter_batch(context, "RankBatch")
        results = await answer_each(request.requests, self.Rank, context, ranking_pb2.RankResult)
        return ranking_pb2.RankBatchResponse(results=results)

    async def Rank(self, request, context):
        await self.enter(context, "Rank")
        packed = request.packed
        # Each candidate's source scores, as a ranking that carries them explains them.
        source_scores: dict[str, dict[str, float]] = {}
        for column in request.candidate_list.source_scores:
            for item_id, score in zip(request.candidate_list.item_ids, column.scores, strict=True):
                source_scores.setdefault(item_id, {})[column.source] = score
        self.source_scores.append(source_scores)
        if not request.candidates and request.HasField("candidate_list"):
            # Kept for the tests in the one-message-per-candidate form they inspect.
            listed, original = request.candidate_list, request
            request = ranking_pb2.RankRequest()
            request.CopyFrom(original)
            request.ClearField("candidate_list")
            sources = list(listed.sources) or [""] * len(listed.item_ids)
            request.candidates.extend(
                common_pb2.ScoredItem(item_id=i, score=s, source=src)
                for i, s, src in zip(listed.item_ids, listed.scores, sources, strict=True)
            )
        self.packed.append(packed)
        self.requests.append(request)
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        if self.empty_with is not None:
            return ranking_pb2.RankResponse(served_by="rules", degraded=self.empty_with)
        seen = set(request.constraints.seen_item_ids)
        blocked = set(request.constraints.blocked_categories)
        kept = [
            c
            for c in request.candidates
            if c.item_id not in seen
            and category_of(c.item_id) not in blocked
            and (not request.category or category_of(c.item_id) == request.category)
        ]
        kept.sort(key=lambda c: (-c.score, c.item_id))
        if self.random_order is not None:
            self.random_order.shuffle(kept)
        items = [
            ranking_pb2.RankedItem(
                item_id=c.item_id,
                rank=rank,
                score=c.score,
                source=c.source,
                explanation=ranking_pb2.Explanation(
                    candidate_score=c.score,
                    contributions={"candidate_score": c.score},
                    rules=[],
                    source_scores=source_scores.get(c.item_id, {}),
                )
                if request.explain
                else None,
            )
            for rank, c in enumerate(kept[: request.limit], start=1)
        ]
        if packed:
            return ranking_pb2.RankResponse(
                ranked=common_pb2.ScoredItemList(
                    item_ids=[i.item_id for i in items],
                    scores=[i.score for i in items],
                    sources=[i.source for i in items],
                ),
                explanations=[i.explanation for i in items] if request.explain else [],
                served_by="rules",
                ranker_version="",
            )
        return ranking_pb2.RankResponse(items=items, served_by="rules", ranker_version="")


class ScriptedIngest(Scripted, ingest_pb2_grpc.EventIngestServicer):
    """Refuses events whose item id starts with `unknown-`; keeps the rest in memory."""

    def __init__(self):
        super().__init__()
        self.events: list[ingest_pb2.Event] = []
        self.erased: list[str] = []
        self.ingest_delay = 0.0

    async def Ingest(self, request, context):
        await self.enter(context, "Ingest")
        if self.ingest_delay:
            await asyncio.sleep(self.ingest_delay)
        reply = ingest_pb2.IngestResponse()
        for index, event in enumerate(request.events):
            if event.item_id.startswith("unknown-"):
                reply.rejected.append(ingest_pb2.Rejection(index=index, field="item_id", error="unknown item"))
                continue
            event_id = event.event_id or hashlib.md5(f"{len(self.events)}".encode()).hexdigest()
            self.events.append(event)
            reply.event_ids.append(event_id)
            reply.accepted += 1
        return reply

    async def EraseUser(self, request, context):
        await self.enter(context, "EraseUser")
        before = len(self.events)
        self.events = [e for e in self.events if e.user_id != request.user_id]
        self.erased.append(request.user_id)
        return ingest_pb2.EraseUserResponse(events_removed=before - len(self.events), tombstone_written=True)


class ScriptedServer:
    """One grpc.aio server on 127.0.0.1:0 with the health service."""

    def __init__(self, servicer, add_to_server):
        self.servicer = servicer
        self.server = grpc.aio.server()
        add_to_server(servicer, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.running = False

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.running = True

    async def stop(self) -> None:
        if self.running:
            self.running = False
            await self.server.stop(0)


class ScriptedFleet:
    """Two candidate shards, a feature store, ranking and event ingest."""

    def __init__(self, shard_count: int = 2, ranking_canary: bool = False, canaries: tuple[str, ...] = ()):
        """`canaries` names the services that also get a canary instance ("candidate-gen":
        one per shard); `ranking_canary` is short for ("ranking",)."""
        canaries = (*canaries, "ranking") if ranking_canary else canaries

        def shards() -> list[ScriptedServer]:
            return [
                ScriptedServer(
                    ScriptedShard(i, shard_count), candidates_pb2_grpc.add_CandidateServiceServicer_to_server
                )
                for i in range(shard_count)
            ]

        def features() -> ScriptedServer:
            return ScriptedServer(ScriptedFeatureStore(), features_pb2_grpc.add_FeatureStoreServicer_to_server)

        def ranking() -> ScriptedServer:
            return ScriptedServer(ScriptedRanking(), ranking_pb2_grpc.add_RankingServiceServicer_to_server)

        def ingest() -> ScriptedServer:
            return ScriptedServer(ScriptedIngest(), ingest_pb2_grpc.add_EventIngestServicer_to_server)

        self.shards = shards()
        self.features = features()
        self.ranking = ranking()
        self.ingest = ingest()
        self.shard_canaries = shards() if "candidate-gen" in canaries else []
        self.features_canary = features() if "feature-store" in canaries else None
        self.ranking_canary = ranking() if "ranking" in canaries else None
        self.ingest_canary = ingest() if "event-ingest" in canaries else None

    def servers(self) -> list[ScriptedServer]:
        extra = [s for s in (self.features_canary, self.ranking_canary, self.ingest_canary) if s is not None]
        return [*self.shards, self.features, self.ranking, self.ingest, *self.shard_canaries, *extra]

    def serve_version(self, version: str) -> None:
        """Every shard serves ALS `version`, and `warm-*` users get vectors of it."""
        for server in [*self.shards, *self.shard_canaries, self.features, self.features_canary]:
            if server is not None:
                server.servicer.model_version = version

    async def start(self) -> None:
        for server in self.servers():
            await server.start()

    async def stop(self) -> None:
        for server in self.servers():
            await server.stop()

    def settings_overrides(self) -> dict:
        return {
            "candidate_gen_targets": ",".join(s.target for s in self.shards),
            "feature_store_target": self.features.target,
            "ranking_target": self.ranking.target,
            "event_ingest_target": self.ingest.target,
            "ranking_canary_target": self.ranking_canary.target if self.ranking_canary else "",
            "candidate_gen_canary_targets": ",".join(s.target for s in self.shard_canaries),
            "feature_store_canary_target": self.features_canary.target if self.features_canary else "",
            "event_ingest_canary_target": self.ingest_canary.target if self.ingest_canary else "",
        }
