"""The yardstick: a bare `grpc.aio` server with one unary method that returns its request.

Same Python, same grpc, its own process like a service, and nothing else: no interceptors, no
database, no (de)serialization (the request bytes are the answer). Every benchmark measures it
with the same client in the same run, so its figures can be read as ratios to what this machine
does for an empty call right now. It counts its calls the way the services do
(`grpc_server_handled_total{grpc_code="OK"}` on /metrics), so a load generator that cannot read
gRPC statuses (h2load) is checked the same way against both.

Run: `python -m bench.echo --port 50199 --metrics-port 9199`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from prometheus_client import CollectorRegistry, Counter, start_http_server

SERVICE = "bench.v1.EchoService"
METHOD = "Echo"
PATH = f"/{SERVICE}/{METHOD}"


async def serve(port: int, metrics_port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    registry = CollectorRegistry()
    handled = Counter(
        "grpc_server_handled",
        "RPCs completed on the server, by status code.",
        ("grpc_type", "grpc_service", "grpc_method", "grpc_code"),
        registry=registry,
    ).labels("unary", SERVICE, METHOD, "OK")

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        handled.inc()
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    server.add_insecure_port(f"[::]:{port}")
    if metrics_port >= 0:
        start_http_server(metrics_port, registry=registry)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, default=-1, help="-1: no /metrics")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.metrics_port))


if __name__ == "__main__":
    main()
