"""What batching and packing save in candidate-gen: N unary `Retrieve` calls against one
`RetrieveBatch` of N, over gRPC, with packed and unpacked answers.

    .venv/bin/python bench/retrieve_bench.py                   # 5,000 x 64 flat shard, 8 a batch
    .venv/bin/python bench/retrieve_bench.py --items 100000 --index-type hnsw --batch 32

One shard server runs in a child process (the same servicer, gRPC server and
interceptors as `python -m recfleet_candidates`, logging at INFO) on a synthetic shard
(Gaussian factors, ids `i0`, `i1`, ...), so its CPU time is read from /proc apart from
the client's. Each round sends `--batch` queries as a gateway would for that many users:
`--batch` concurrent unary calls, or one batched call. Each query asks for `--k` items
(the gateway's `candidates_per_shard`) and excludes `--exclude` ids of the shard (the
user's seen items). Printed per query: server CPU, client CPU and the round's wall
time divided by the batch (median round), for each mode. Every answer is checked to
hold k items. Nothing passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services" / "candidate-gen"))

from recfleet.candidates.v1 import candidates_pb2, candidates_pb2_grpc

TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class NoMetadataItems:
    """The bench shard has no cold-start items."""

    def for_version(self, version: str) -> None:
        return None


def serve(conn: Connection, items: int, dim: int, index_type: str, seed: int) -> None:
    """Child process: build the shard, start the server, send the port, run until told."""
    import faiss
    from recfleet_candidates.served_index import ServedIndex
    from recfleet_candidates.servicer import SERVICE_NAME, CandidateServicer
    from recfleet_candidates.settings import CandidateSettings
    from recfleet_models.index import DEFAULT_PARAMS, METRIC, LoadedShard, ShardManifest, build_index
    from recfleet_runtime.grpcserver import GrpcService
    from recfleet_runtime.logging import configure_logging

    configure_logging("candidate-gen", "INFO")
    faiss.omp_set_num_threads(1)
    vectors = np.random.default_rng(seed).standard_normal((items, dim)).astype(np.float32)
    index, _ = build_index(vectors, index_type, DEFAULT_PARAMS[index_type])
    ids = [f"i{row}" for row in range(items)]
    manifest = ShardManifest("bench", 1, "rule", index_type, {}, dim, METRIC, [])
    shard = LoadedShard("bench", 0, manifest, index, ids, vectors, {item: row for row, item in enumerate(ids)})

    async def main() -> None:
        settings = CandidateSettings(shard=0, shard_count=1, grpc_port=0, metrics_port=0)
        served = ServedIndex(0, 1, lambda version, number: shard, sanity_sample=20, min_sanity_recall=0.0)
        await served.reload("bench")
        service = GrpcService("candidate-gen", settings, [SERVICE_NAME])
        servicer = CandidateServicer(
            served,
            cast(Any, NoMetadataItems()),
            lambda: asyncio.sleep(0, "bench"),
            settings.inline_search_max_flat_items,
        )
        candidates_pb2_grpc.add_CandidateServiceServicer_to_server(servicer, service.server)
        port = await service.start("127.0.0.1:0")
        conn.send(port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await service.server.stop(0)

    asyncio.run(main())


def queries(rng: np.random.Generator, args: argparse.Namespace, packed: bool) -> list[candidates_pb2.RetrieveRequest]:
    return [
        candidates_pb2.RetrieveRequest(
            query_vector=rng.standard_normal(args.dim).astype(np.float32).tolist(),
            k=args.k,
            exclude_item_ids=[f"i{row}" for row in rng.choice(args.items, args.exclude, replace=False)],
            packed=packed,
        )
        for _ in range(args.batch)
    ]


def answered(response: candidates_pb2.RetrieveResponse, packed: bool) -> int:
    return len(response.packed_items.item_ids) if packed else len(response.items)


async def run_mode(
    stub: candidates_pb2_grpc.CandidateServiceStub, pid: int, args: argparse.Namespace, batched: bool, packed: bool
) -> dict[str, float]:
    rng = np.random.default_rng(args.seed)
    rounds = [queries(rng, args, packed) for _ in range(args.rounds + args.warmup)]
    walls = []
    for number, round_queries in enumerate(rounds):
        if number == args.warmup:
            server_before, client_before = server_cpu_seconds(pid), time.process_time()
        started = time.perf_counter()
        if batched:
            batch = await stub.RetrieveBatch(candidates_pb2.RetrieveBatchRequest(queries=round_queries), timeout=10)
            assert all(result.status.code == 0 for result in batch.results)
            responses = [result.response for result in batch.results]
        else:
            responses = await asyncio.gather(*(stub.Retrieve(query, timeout=10) for query in round_queries))
        if number >= args.warmup:
            walls.append(time.perf_counter() - started)
        assert all(answered(response, packed) == args.k for response in responses)
    count = args.rounds * args.batch
    return {
        "server_us": (server_cpu_seconds(pid) - server_before) / count * 1e6,
        "client_us": (time.process_time() - client_before) / count * 1e6,
        "wall_us": statistics.median(walls) / args.batch * 1e6,
    }


async def measure(port: int, pid: int, args: argparse.Namespace) -> None:
    modes = [
        (f"Retrieve x{args.batch}, unpacked (today)", False, False),
        (f"Retrieve x{args.batch}, packed", False, True),
        (f"RetrieveBatch of {args.batch}, unpacked", True, False),
        (f"RetrieveBatch of {args.batch}, packed", True, True),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = candidates_pb2_grpc.CandidateServiceStub(channel)
        print(
            f"shard: {args.items} x {args.dim} {args.index_type}; k={args.k}, {args.exclude} exclusions, "
            f"{args.rounds} rounds of {args.batch} queries"
        )
        print(f"{'mode':<36} {'server CPU us/query':>20} {'client CPU us/query':>20} {'wall us/query':>14}")
        for name, batched, packed in modes:
            figures = await run_mode(stub, pid, args, batched, packed)
            print(
                f"{name:<36} {figures['server_us']:>20,.0f} {figures['client_us']:>20,.0f} {figures['wall_us']:>14,.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000, help="items in the shard (MovieLens: ~4,900 a shard)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--index-type", choices=("flat", "ivf", "hnsw"), default="flat")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--exclude", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=serve, args=(child, args.items, args.dim, args.index_type, args.seed))
    server.start()
    try:
        port = parent.recv()
        assert server.pid is not None
        asyncio.run(measure(port, server.pid, args))
    finally:
        parent.send("stop")
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()


if __name__ == "__main__":
    main()
