"""A plumbing-only fleet: the bare shape of a recommendation, with no work on any hop.

A plain FastAPI app (uvicorn on uvloop and httptools, as the real gateway runs) calls four
plain `grpc.aio` servers in the order the real gateway does: the feature store
(`GetUserFeatures`), both candidate-gen shards at once (`Retrieve`), then ranking
(`Rank`, with every shard's candidates), and returns the top `limit` as JSON. The servers
answer from canned replies built once. There is no auth, rate limit, result cache,
experiment, circuit breaker, interceptor, health service, metrics, tracing or logging
on the path: this is the ceiling of the architecture (HTTP in, four gRPC hops, JSON out)
on this machine, which the real fleet can only approach.
`bench/e2e_latency.py --plumbing` starts it and loads it like the real one.

    .venv/bin/python bench/plumbing.py --role ranking --port 50071       # one server
    .venv/bin/python bench/plumbing.py --role gateway --port 8090 \\
        --targets 127.0.0.1:50070,127.0.0.1:50072,127.0.0.1:50073,127.0.0.1:50071
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from contextlib import asynccontextmanager

import grpc
import orjson
from recfleet.candidates.v1 import candidates_pb2, candidates_pb2_grpc
from recfleet.common.v1 import common_pb2
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc

VERSION = "als-plumbing"
DIM = 64
CANDIDATES_PER_SHARD = 100  # the gateway's default `candidates_per_shard`
SNAPSHOT_SIZE = 100  # the gateway's default `snapshot_size`
DEADLINE = 2.0


class NoWorkFeatures(features_pb2_grpc.FeatureStoreServicer):
    reply = features_pb2.GetUserFeaturesResponse(
        user_vector=common_pb2.Vector(values=[0.1] * DIM, model_version=VERSION), interaction_count=50
    )

    async def GetUserFeatures(self, request, context):
        return self.reply


class NoWorkShard(candidates_pb2_grpc.CandidateServiceServicer):
    def __init__(self, shard: int):
        self.reply = candidates_pb2.RetrieveResponse(
            items=[
                common_pb2.ScoredItem(item_id=str(shard * 1000 + i), score=1.0 - i / 1000, source="als")
                for i in range(CANDIDATES_PER_SHARD)
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


ROLES = {
    "feature-store": (features_pb2_grpc.add_FeatureStoreServicer_to_server, lambda _: NoWorkFeatures()),
    "candidate-gen": (candidates_pb2_grpc.add_CandidateServiceServicer_to_server, NoWorkShard),
    "ranking": (ranking_pb2_grpc.add_RankingServiceServicer_to_server, lambda _: NoWorkRanking()),
}


async def serve(role: str, port: int, shard: int) -> None:
    """One bare grpc.aio server: no interceptors, health, reflection or tracing."""
    add, make = ROLES[role]
    server = grpc.aio.server()
    add(make(shard), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def create_app(feature_store: str, shards: list[str], ranking: str):
    """The bare gateway: one route with the real gateway's hop shape, and a readiness probe."""
    from fastapi import FastAPI, Response

    channels: list[grpc.aio.Channel] = []
    stubs: dict = {}

    @asynccontextmanager
    async def lifespan(_app):
        for target in (feature_store, *shards, ranking):
            channels.append(grpc.aio.insecure_channel(target))
        stubs["features"] = features_pb2_grpc.FeatureStoreStub(channels[0])
        stubs["shards"] = [candidates_pb2_grpc.CandidateServiceStub(c) for c in channels[1:-1]]
        stubs["ranking"] = ranking_pb2_grpc.RankingServiceStub(channels[-1])
        yield
        for channel in channels:
            await channel.close()

    app = FastAPI(lifespan=lifespan)

    async def recommend(user_id: str, limit: int) -> dict:
        user = await stubs["features"].GetUserFeatures(
            features_pb2.GetUserFeaturesRequest(user_id=user_id), timeout=DEADLINE
        )
        retrieve = candidates_pb2.RetrieveRequest(
            query_vector=user.user_vector.values, k=CANDIDATES_PER_SHARD, model_version=user.user_vector.model_version
        )
        replies = await asyncio.gather(*(shard.Retrieve(retrieve, timeout=DEADLINE) for shard in stubs["shards"]))
        candidates = [item for reply in replies for item in reply.items]
        ranked = await stubs["ranking"].Rank(
            ranking_pb2.RankRequest(user_id=user_id, candidates=candidates, limit=SNAPSHOT_SIZE), timeout=DEADLINE
        )
        return {
            "user_id": user_id,
            "items": [
                {"item_id": item.item_id, "rank": item.rank, "score": round(item.score, 6), "source": item.source}
                for item in ranked.items[:limit]
            ],
            "served_by": ranked.served_by,
        }

    @app.get("/v1/recommendations")
    async def recommendations(user_id: str, limit: int = 20, surface: str = "") -> Response:
        return Response(orjson.dumps(await recommend(user_id, limit)), media_type="application/json")

    @app.get("/healthz/ready")
    async def ready() -> Response:
        try:
            await recommend("1", 1)
        except grpc.aio.AioRpcError:
            return Response(status_code=503)
        return Response(b'{"status":"ready"}', media_type="application/json")

    return app


def serve_gateway(port: int, targets: list[str]) -> None:
    import uvicorn

    app = create_app(targets[0], targets[1:-1], targets[-1])
    uvicorn.run(
        app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False, log_level="warning"
    )


def start_fleet(ports: dict[str, int], shard_count: int, gateway_port: int) -> list[subprocess.Popen]:
    """One process per server and one for the bare gateway, as in the real fleet."""
    processes = []
    for role in ("feature-store", "ranking"):
        processes.append(subprocess.Popen([sys.executable, __file__, "--role", role, "--port", str(ports[role])]))
    for shard in range(shard_count):
        port = str(ports[f"candidate-gen-{shard}"])
        processes.append(
            subprocess.Popen(
                [sys.executable, __file__, "--role", "candidate-gen", "--shard", str(shard), "--port", port]
            )
        )
    targets = [
        f"127.0.0.1:{ports['feature-store']}",
        *(f"127.0.0.1:{ports[f'candidate-gen-{s}']}" for s in range(shard_count)),
        f"127.0.0.1:{ports['ranking']}",
    ]
    processes.append(
        subprocess.Popen(
            [sys.executable, __file__, "--role", "gateway", "--port", str(gateway_port), "--targets", ",".join(targets)]
        )
    )
    return processes


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=[*sorted(ROLES), "gateway"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--targets", default="", help="gateway: feature store, shards..., ranking (comma-separated)")
    args = parser.parse_args()
    if args.role == "gateway":
        serve_gateway(args.port, args.targets.split(","))
    else:
        asyncio.run(serve(args.role, args.port, args.shard))
