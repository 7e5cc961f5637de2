"""Health probes as a command, for container health checks and scripts.

  python -m services.common.healthcheck grpc HOST:PORT [SERVICE]   gRPC health protocol
  python -m services.common.healthcheck http URL                   HTTP 200 (the edge's /health)

Exits 0 when healthy, 1 otherwise (with the reason on stderr). Needs only what every
service image has: grpcio, grpcio-health-checking and the standard library.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def grpc_status(address: str, service: str = "", timeout_s: float = 3.0) -> str:
    """The serving status name (`SERVING`, `NOT_SERVING`, ...) or the gRPC error code name."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def grpc_serving(address: str, service: str = "", timeout_s: float = 3.0) -> bool:
    return grpc_status(address, service, timeout_s) == "SERVING"


def http_ok(url: str, timeout_s: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--timeout", type=float, default=3.0, help="seconds")
    parser = argparse.ArgumentParser(prog="python -m services.common.healthcheck")
    kinds = parser.add_subparsers(dest="kind", required=True)
    grpc_parser = kinds.add_parser("grpc", parents=[common], help="gRPC health protocol Check")
    grpc_parser.add_argument("address", help="HOST:PORT")
    grpc_parser.add_argument("service", nargs="?", default="", help="service name; empty: server")
    http_parser = kinds.add_parser("http", parents=[common], help="GET URL answers 200")
    http_parser.add_argument("url")
    args = parser.parse_args(argv)

    if args.kind == "grpc":
        status = grpc_status(args.address, args.service, args.timeout)
        if status == "SERVING":
            return 0
        print(f"{args.address} {args.service or '(server)'}: {status}", file=sys.stderr)
        return 1
    if http_ok(args.url, args.timeout):
        return 0
    print(f"{args.url}: not healthy", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
