"""Empty unary round trip: a bare grpc.aio server vs a recsys GrpcApplication (full interceptor
chain: request id, metrics, access log, error mapping, deadline), each in its own process, called
over loopback from this process. This is the per-call overhead every recsys RPC pays.

Besides latency, the server process's CPU time per call (user + system, from /proc): on a busy
machine latency moves with whatever else runs, the CPU a call costs much less."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from typing import Any

import grpc
from google.protobuf import wrappers_pb2

from bench.common import latency_summary

SERVICE = "bench.Echo"
CALLS = int(os.environ.get("BENCH_ROUND_TRIP_CALLS", "3000"))
CONCURRENCY = 32
ROUNDS = 3


async def _echo(request: wrappers_pb2.StringValue, context: object) -> wrappers_pb2.StringValue:
    return request


def _handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                _echo,
                request_deserializer=wrappers_pb2.StringValue.FromString,
                response_serializer=wrappers_pb2.StringValue.SerializeToString,
            )
        },
    )


def _serve(mode: str, ports: Any) -> None:
    # Access-log lines go to a discarded stream: we measure formatting, not the terminal.
    discard = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process

    async def main() -> None:
        if mode == "bare":
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((_handler(),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
        else:
            from recsys.grpc_server.app import GrpcApplication
            from recsys.observability.logging import configure_logging
            from recsys.settings import load_settings

            access_log = mode == "recsys+access-log"
            settings = load_settings(
                server={"port": 0}, metrics={"enabled": False}, logging={"access_log": access_log}
            )
            configure_logging("INFO", "json")
            logging.getLogger().handlers[0].setStream(discard)  # type: ignore[attr-defined]
            application = GrpcApplication(settings, [], generic_handlers=[_handler()])
            port = await application.start()
        ports.put(port)
        await asyncio.Event().wait()

    asyncio.run(main())


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # Fields after the command name (which may hold spaces, inside parentheses).
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(port: int, pid: int | None = None) -> dict[str, Any]:
    """Latency and throughput of the server on `port`; given its process id, its CPU time per
    call too."""
    cpu_before = None if pid is None else _cpu_seconds(pid)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary(
            f"/{SERVICE}/Echo",
            request_serializer=wrappers_pb2.StringValue.SerializeToString,
            response_deserializer=wrappers_pb2.StringValue.FromString,
        )
        request = wrappers_pb2.StringValue(value="x")
        for _ in range(200):  # warm-up
            await echo(request, timeout=5)
        samples = []
        for _ in range(CALLS):
            started = time.perf_counter()
            await echo(request, timeout=5)
            samples.append(time.perf_counter() - started)

        async def worker(count: int) -> None:
            for _ in range(count):
                await echo(request, timeout=5)

        started = time.perf_counter()
        await asyncio.gather(*(worker(CALLS // CONCURRENCY) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        throughput = (CALLS // CONCURRENCY) * CONCURRENCY / elapsed
    cpu_after = None if pid is None else _cpu_seconds(pid)
    calls = 200 + CALLS + (CALLS // CONCURRENCY) * CONCURRENCY
    measured: dict[str, Any] = {**latency_summary(samples), "throughput_rps": round(throughput)}
    if pid is not None:
        measured["server_cpu_us_per_call"] = (
            None
            if cpu_before is None or cpu_after is None
            else round((cpu_after - cpu_before) / calls * 1e6, 1)
        )
    return measured


def run() -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    modes = ("bare", "recsys", "recsys+access-log")
    measured: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    # Three interleaved rounds, median by p50: one noisy moment on a shared machine moves one
    # round, not the result.
    for _ in range(ROUNDS):
        for mode in modes:
            ports = context.Queue()
            process = context.Process(target=_serve, args=(mode, ports), daemon=True)
            process.start()
            try:
                port = ports.get(timeout=30)
                assert process.pid is not None
                measured[mode].append(asyncio.run(_measure(port, process.pid)))
            finally:
                process.terminate()
                process.join(timeout=10)
    rows = []
    for mode in modes:
        ordered = sorted(measured[mode], key=lambda result: result["p50_ms"])
        rows.append({"server": mode, **ordered[len(ordered) // 2]})
    bare = rows[0]["p50_ms"]
    for row in rows:
        row["p50_vs_bare"] = f"{row['p50_ms'] / bare:.2f}x"
    overhead = rows[1]["p50_ms"] - bare
    conclusion = (
        f"The recsys interceptor chain adds {overhead:.3f} ms at p50 to an empty call; "
        f"the JSON access log adds {rows[2]['p50_ms'] - rows[1]['p50_ms']:.3f} ms more."
    )
    cpu = [row["server_cpu_us_per_call"] for row in rows]
    if None not in cpu:
        conclusion += (
            f" Server CPU per call: {cpu[0]:.0f} us bare, {cpu[1]:.0f} us recsys, "
            f"{cpu[2]:.0f} us with the access log."
        )
    return {
        "conclusion": conclusion,
        "title": "Empty gRPC round trip (loopback, separate server process)",
        "description": (
            f"{CALLS} sequential calls for latency, then {CONCURRENCY} concurrent callers for "
            f"throughput, in {ROUNDS} interleaved rounds (median round by p50 shown); "
            "client: grpc.aio in the benchmark process. `bare` is a plain "
            "grpc.aio server with the same handler; `recsys` is GrpcApplication with its full "
            "interceptor chain (access log off); `recsys+access-log` writes one JSON log line "
            "per call. `server_cpu_us_per_call`: the server process's CPU time (user + system) "
            "over all the round's calls, warm-up included, per call."
        ),
        "rows": rows,
    }
