"""A plumbing-only fleet: the real gateway in front of gRPC servers that do no work.

Each server answers from a canned response built once, through the same runtime
(GrpcService: health, reflection, interceptors, tracing) as the real services. Its
throughput is the ceiling of this architecture on this machine: the real fleet can only
approach it. `bench/e2e_latency.py --plumbing` starts it and loads it like the real one.

    .venv/bin/python bench/plumbing.py --role ranking --port 50071   # one server
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys

from recfleet.candidates.v1 import candidates_pb2, candidates_pb2_grpc
from recfleet.common.v1 import common_pb2
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet.ingest.v1 import ingest_pb2_grpc
from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from recfleet_runtime.grpcserver import GrpcService
from recfleet_runtime.logging import configure_logging
from recfleet_runtime.settings import ServiceSettings
from recfleet_runtime.tracing import configure_tracing

VERSION = "als-plumbing"
DIM = 64


class NoWorkFeatures(features_pb2_grpc.FeatureStoreServicer):
    reply = features_pb2.GetUserFeaturesResponse(
        user_vector=common_pb2.Vector(values=[0.1] * DIM, model_version=VERSION), interaction_count=50
    )
    items = features_pb2.GetItemFeaturesResponse()
    popular = features_pb2.GetPopularItemsResponse(
        items=[common_pb2.ScoredItem(item_id=str(i), score=1.0 / i, source="popular") for i in range(1, 101)]
    )

    async def GetUserFeatures(self, request, context):
        return self.reply

    async def GetItemFeatures(self, request, context):
        return self.items

    async def GetPopularItems(self, request, context):
        return self.popular


class NoWorkShard(candidates_pb2_grpc.CandidateServiceServicer):
    def __init__(self, shard: int):
        self.reply = candidates_pb2.RetrieveResponse(
            items=[
                common_pb2.ScoredItem(item_id=str(shard * 1000 + i), score=1.0 - i / 1000, source="als")
                for i in range(200)
            ],
            shard=shard,
            model_version=VERSION,
        )

    async def Retrieve(self, request, context):
        return self.reply


class NoWorkRanking(ranking_pb2_grpc.RankingServiceServicer):
    async def Rank(self, request, context):
        limit = request.limit or 20
        items = [
            ranking_pb2.RankedItem(item_id=c.item_id, rank=i + 1, score=c.score, source=c.source)
            for i, c in enumerate(request.candidates[:limit])
        ]
        return ranking_pb2.RankResponse(items=items, served_by="rules", ranker_version="")


class NoWorkIngest(ingest_pb2_grpc.EventIngestServicer):
    pass


ROLES = {
    "feature-store": (
        "recfleet.features.v1.FeatureStore",
        features_pb2_grpc.add_FeatureStoreServicer_to_server,
        lambda _: NoWorkFeatures(),
    ),
    "candidate-gen": (
        "recfleet.candidates.v1.CandidateService",
        candidates_pb2_grpc.add_CandidateServiceServicer_to_server,
        NoWorkShard,
    ),
    "ranking": (
        "recfleet.ranking.v1.RankingService",
        ranking_pb2_grpc.add_RankingServiceServicer_to_server,
        lambda _: NoWorkRanking(),
    ),
    "event-ingest": (
        "recfleet.ingest.v1.EventIngest",
        ingest_pb2_grpc.add_EventIngestServicer_to_server,
        lambda _: NoWorkIngest(),
    ),
}


async def serve(role: str, port: int, shard: int) -> None:
    configure_logging(f"plumbing-{role}", level="WARNING")
    configure_tracing(f"plumbing-{role}")
    name, add, make = ROLES[role]
    service = GrpcService(f"plumbing-{role}", ServiceSettings(grpc_port=port, metrics_port=0, drain_seconds=0), [name])
    add(make(shard), service.server)
    await service.start(f"127.0.0.1:{port}")
    await service.health.set_serving(True)
    await service.wait_for_termination()


def start_fleet(ports: dict[str, int], shard_count: int) -> list[subprocess.Popen]:
    """One process per server, as in the real fleet."""
    processes = []
    for role in ("feature-store", "ranking", "event-ingest"):
        processes.append(subprocess.Popen([sys.executable, __file__, "--role", role, "--port", str(ports[role])]))
    for shard in range(shard_count):
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--role",
                    "candidate-gen",
                    "--shard",
                    str(shard),
                    "--port",
                    str(ports[f"candidate-gen-{shard}"]),
                ]
            )
        )
    return processes


def gateway_env(ports: dict[str, int], shard_count: int, gateway_port: int, key: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RECFLEET_GATEWAY_PORT=str(gateway_port),
        RECFLEET_GATEWAY_FEATURE_STORE_TARGET=f"127.0.0.1:{ports['feature-store']}",
        RECFLEET_GATEWAY_RANKING_TARGET=f"127.0.0.1:{ports['ranking']}",
        RECFLEET_GATEWAY_EVENT_INGEST_TARGET=f"127.0.0.1:{ports['event-ingest']}",
        RECFLEET_GATEWAY_CANDIDATE_GEN_TARGETS=",".join(
            f"127.0.0.1:{ports[f'candidate-gen-{s}']}" for s in range(shard_count)
        ),
        RECFLEET_BOOTSTRAP_ADMIN_KEY=key,
        RECFLEET_GATEWAY_LOG_LEVEL="WARNING",
    )
    return env


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=sorted(ROLES), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--shard", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.role, args.port, args.shard))
