"""The gRPC floor: a grpc.aio server with the same stubs and no model at all.

serve_bench runs it beside our server so every table shows what the Python gRPC
stack alone reaches on the same machine in the same run. ModelInfer answers
zeros of the request's shape without looking at the data; the other RPCs answer
just what perf_analyzer reads before it sends load. ModelStatistics reports the
ModelInfer count, so the benchmark can divide CPU time by requests.

`write_canned` writes the same answers as serialized bytes for the native (C++) echo in
benchmarks/native_echo/, which has no .proto compiled in.

    python benchmarks/grpc_echo.py --port 0 --port-file ports.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import grpc
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

FEATURES = 256


class EchoServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Just enough of GRPCInferenceService for perf_analyzer; one FP32 model of any name."""

    def __init__(self) -> None:
        self.requests = 0

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:  # noqa: N802
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:  # noqa: N802
        return pb.ServerMetadataResponse(name="grpc-echo", version="0")

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:  # noqa: N802
        out = pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="echo")
        out.inputs.add(name="x", datatype="FP32", shape=[-1, FEATURES])
        out.outputs.add(name="y", datatype="FP32", shape=[-1, FEATURES])
        return out

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:  # noqa: N802
        config = mc.ModelConfig(name=request.name, max_batch_size=64)
        config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[FEATURES])
        config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[FEATURES])
        config.dynamic_batching.SetInParent()
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:  # noqa: N802
        out = pb.ModelStatisticsResponse()
        stats = out.model_stats.add(name=request.name or "echo", version="1")
        stats.inference_count = self.requests
        stats.inference_stats.success.count = self.requests
        return out

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:  # noqa: N802
        self.requests += 1
        out = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        shape = list(request.inputs[0].shape) if request.inputs else [1, FEATURES]
        count = 1
        for d in shape:
            count *= d
        out.outputs.add(name="y", datatype="FP32", shape=shape)
        out.raw_output_contents.append(bytes(4 * count))
        return out


def write_canned(folder: Path) -> None:
    """<Method>.bin per RPC: what the native echo answers (one [1, 256] FP32 output)."""
    servicer = EchoServicer()
    named = pb.ModelMetadataRequest(name="echo")
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="x", datatype="FP32", shape=[1, FEATURES])
    answers = {
        "ServerLive": servicer.ServerLive(None, None),
        "ServerReady": servicer.ServerReady(None, None),
        "ModelReady": servicer.ModelReady(None, None),
        "ServerMetadata": servicer.ServerMetadata(None, None),
        "ModelMetadata": servicer.ModelMetadata(named, None),
        "ModelConfig": servicer.ModelConfig(pb.ModelConfigRequest(name="echo"), None),
        "ModelInfer": servicer.ModelInfer(request, None),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for method, coroutine in answers.items():
        message = asyncio.run(coroutine)
        (folder / f"{method}.bin").write_bytes(message.SerializeToString())


async def serve(port: int, port_file: Path | None) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(EchoServicer(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")  # NOTE: renamed: never seen empty
        tmp.write_text(json.dumps({"grpc": bound}))
        tmp.replace(port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    args = parser.parse_args()
    try:
        import uvloop  # NOTE: the server itself runs on uvloop; compare like with like

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, args.port_file))


if __name__ == "__main__":
    main()
