"""Print the gRPC health of each target and exit 1 unless all are SERVING.

Usage: python deploy/scripts/health_check.py HOST:PORT [HOST:PORT ...]
Used by the runbooks against a local fleet or through `kubectl port-forward`.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, timeout: float = 3.0) -> str:
    """The target's overall serving status, or the gRPC status code that prevented asking."""
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.RpcError as error:
        return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(targets: list[str]) -> int:
    if not targets:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    statuses = {target: check(target) for target in targets}
    for target, status in statuses.items():
        print(f"{target}\t{status}")
    return 0 if all(status == "SERVING" for status in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
