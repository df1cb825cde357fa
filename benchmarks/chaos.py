"""Chaos benchmark: the server under stop signals, model swaps, overload, vanishing clients,
a soak and hostile model files; every request is accounted for.

Loopback only, bounded in count and time. Each scenario starts its own server
(`python -m runtime serve`), drives it with asyncio gRPC clients (raw
GRPCInferenceService stubs from tritonclient) and sorts every request it sent into:
answered OK, answered with a server status (by code and message), not connected (the
server was not listening: never accepted), cancelled by the client on purpose, and LOST:
accepted but ended with no status from the server (connection dropped under it, or the
client's deadline passed). Lost must be 0 everywhere. Prints a table and writes JSON
(benchmarks/results/chaos.json by default).

    python benchmarks/chaos.py [--only sigterm,poll_swap,...] [--soak-secs 600]
        [--seconds 4] [--out FILE]

Scenarios: sigterm (SIGTERM under load at c=16), poll_swap (version 2 dropped in during poll
mode under load), explicit_cycle (unload + load under load, explicit mode), overload (queue
overloaded 10x: only RESOURCE_EXHAUSTED refusals, RSS bounded), drop (clients cancelling
mid-request and mid-stream, and client processes killed mid-load), soak (c=8, RSS slope),
hostile (truncated, corrupted and hostile ONNX and packed files dropped into a polled
repository under load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc  # noqa: E402

from runtime.samples import build_samples  # noqa: E402

MODEL = "mlp_dense"
DEADLINE_S = 20.0  # a request with no answer in this long counts as lost
# transport failures after the request went out: no status from the server
LOST_MARKERS = ("Socket closed", "Connection reset", "Broken pipe", "Stream removed",
                "RST_STREAM", "Received RST", "GOAWAY", "Connection aborted", "EOF")  # fmt: skip
NOT_CONNECTED_MARKERS = ("failed to connect", "Connection refused", "connections to all backends",
                         "No connection", "Failed to connect")  # fmt: skip


@dataclass
class Tally:
    """Every request of a scenario, sorted by how it ended."""

    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    not_connected: int = 0
    cancelled: int = 0
    lost: Counter[str] = field(default_factory=Counter)

    def record(self, err: BaseException | None, cancelled: bool = False) -> None:
        if err is None:
            self.ok += 1
            return
        if cancelled or isinstance(err, asyncio.CancelledError):
            self.cancelled += 1
            return
        if not isinstance(err, grpc.RpcError):
            self.lost[f"client error {type(err).__name__}: {err}"[:80]] += 1
            return
        code, details = err.code(), err.details() or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self.lost["no answer before the deadline"] += 1
        elif code == grpc.StatusCode.UNAVAILABLE and any(
            m in details for m in NOT_CONNECTED_MARKERS
        ):
            self.not_connected += 1
        elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                      grpc.StatusCode.UNKNOWN) and any(m in details for m in LOST_MARKERS):
            self.lost[f"{code.name}: {details[:60]}"] += 1
        else:
            self.errors[f"{code.name}: {details[:70]}"] += 1

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "ok": self.ok, "errors": dict(self.errors),
                "not_connected": self.not_connected, "cancelled_by_client": self.cancelled,
                "lost": sum(self.lost.values()), "lost_kinds": dict(self.lost)}  # fmt: skip


# ---- server --------------------------------------------------------------------------------


class Server:
    """One `python -m runtime serve` subprocess on free loopback ports."""

    def __init__(self, repo: Path, tmp: Path, *flags: str) -> None:
        self.port_file = tmp / f"ports-{time.monotonic_ns()}.json"
        self.log = tmp / f"server-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "runtime", "serve", "--model-repository", str(repo),
               "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0",
               "--port-file", str(self.port_file), *flags]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 90
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        ports = json.loads(self.port_file.read_text())
        self.url = f"127.0.0.1:{ports['grpc']}"
        self.metrics_port = ports["metrics"]

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def scrape(self, name: str) -> float:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))  # fmt: skip

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def infer_request(model: str = MODEL, rows: int = 1) -> pb.ModelInferRequest:
    x = np.random.default_rng(0).standard_normal((rows, 256)).astype(np.float32)
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="x", datatype="FP32", shape=[rows, 256])
    req.raw_input_contents.append(x.tobytes())
    return req


# ---- load --------------------------------------------------------------------------------------


async def closed_loop(url: str, tally: Tally, stop: asyncio.Event, concurrency: int,
                      model: str = MODEL, deadline: float = DEADLINE_S) -> None:  # fmt: skip
    """`concurrency` callers, each sending its next request once the last one ended."""
    request = infer_request(model)
    options = [("grpc.max_receive_message_length", 2**30)]
    async with grpc.aio.insecure_channel(url, options=options) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def caller() -> None:
            while not stop.is_set():
                tally.sent += 1
                try:
                    await stub.ModelInfer(request, timeout=deadline)
                except grpc.RpcError as err:
                    tally.record(err)
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        await asyncio.sleep(0.01)  # NOTE: no busy loop while it is down
                else:
                    tally.record(None)

        await asyncio.gather(*(caller() for _ in range(concurrency)))


async def with_load(url: str, concurrency: int, during: Callable[[], Coroutine[Any, Any, Any]],
                    model: str = MODEL) -> tuple[Tally, Any]:  # fmt: skip
    """Run `during()` while closed-loop load runs; stop the load when it returns."""
    tally, stop = Tally(), asyncio.Event()
    load = asyncio.create_task(closed_loop(url, tally, stop, concurrency, model))
    try:
        result = await during()
    finally:
        stop.set()
        await load
    return tally, result


def copy_model(src: Path, dst: Path, name: str | None = None) -> None:
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    if name is not None:
        config = dst / "config.pbtxt"
        config.write_text(config.read_text().replace(f'"{src.name}"', f'"{name}"'))


def repository_index(url: str) -> dict[str, tuple[str, str]]:
    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    return {f"{m.name}/{m.version}": (m.state, m.reason) for m in reply.models}


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return True
        await asyncio.sleep(0.2)
    return False


# ---- scenarios ---------------------------------------------------------------------------------


async def sigterm(ctx: Context) -> dict[str, Any]:
    """SIGTERM under steady load at c=16: every accepted request answered or refused."""
    srv = ctx.server(ctx.repo_with(MODEL))

    async def during() -> dict[str, Any]:
        await asyncio.sleep(ctx.seconds)
        srv.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = await asyncio.to_thread(srv.proc.wait, 60)
        stopped_s = time.monotonic() - t0
        await asyncio.sleep(0.5)  # load keeps knocking on the closed port
        return {"exit_code": code, "stop_seconds": round(stopped_s, 2)}

    tally, notes = await with_load(srv.url, 16, during)
    return {"tally": tally, "notes": notes, "pass": notes["exit_code"] == 0}


async def poll_swap(ctx: Context) -> dict[str, Any]:
    """Version 2 copied in (as an operator would) while poll mode serves version 1 under load."""
    repo = ctx.repo_with(MODEL)
    srv = ctx.server(repo, "--model-control-mode", "poll", "--repository-poll-secs", "0.2")

    async def during() -> dict[str, Any]:
        await asyncio.sleep(ctx.seconds / 2)
        v2 = repo / MODEL / "2"
        v2.mkdir()
        shutil.copyfile(repo / MODEL / "1" / "model.onnx", v2 / "model.onnx")
        t0 = time.monotonic()
        swapped = await wait_until(
            lambda: repository_index(srv.url).get(f"{MODEL}/2", ("",))[0] == "READY"
            and f"{MODEL}/1" not in {k for k, v in repository_index(srv.url).items()
                                      if v[0] == "READY"}, 60)  # fmt: skip
        took = time.monotonic() - t0
        await asyncio.sleep(ctx.seconds / 2)
        return {"version_2_ready_and_1_retired": swapped, "swap_seconds": round(took, 2)}

    tally, notes = await with_load(srv.url, 8, during)
    srv.stop()
    return {"tally": tally, "notes": notes,
            "pass": notes["version_2_ready_and_1_retired"] and not tally.errors}  # fmt: skip


async def explicit_cycle(ctx: Context) -> dict[str, Any]:
    """Unload then load again under load in explicit mode. Requests while the model is
    unloaded fail as on Triton (model not ready/unknown); none may be lost."""
    srv = ctx.server(ctx.repo_with(MODEL), "--model-control-mode", "explicit",
                     "--load-model", MODEL)  # fmt: skip

    async def during() -> dict[str, Any]:
        async with grpc.aio.insecure_channel(srv.url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            await asyncio.sleep(ctx.seconds / 3)
            t0 = time.monotonic()
            await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL))
            await asyncio.sleep(0.3)
            await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL))
            down = time.monotonic() - t0
            await asyncio.sleep(ctx.seconds / 3)
        return {"unloaded_seconds": round(down, 2)}

    tally, notes = await with_load(srv.url, 8, during)
    srv.stop()
    expected = all(k.startswith(("UNAVAILABLE", "NOT_FOUND")) for k in tally.errors)
    return {"tally": tally, "notes": notes, "pass": expected}


async def overload(ctx: Context) -> dict[str, Any]:
    """c = 10x the queue limit: only RESOURCE_EXHAUSTED refusals, RSS bounded."""
    queue = 16
    srv = ctx.server(ctx.repo_with(MODEL), "--max-queue-size", str(queue))
    rss0 = srv.rss_mb()
    peak = [rss0]

    async def during() -> None:
        end = time.monotonic() + ctx.seconds * 2
        while time.monotonic() < end:
            peak.append(srv.rss_mb())
            await asyncio.sleep(0.2)

    tally, _ = await with_load(srv.url, queue * 10, during)
    rss1 = srv.rss_mb()
    srv.stop()
    only_exhausted = all(k.startswith("RESOURCE_EXHAUSTED") for k in tally.errors)
    notes = {"max_queue_size": queue, "concurrency": queue * 10, "rss_start_mb": round(rss0),
             "rss_peak_mb": round(max(peak)), "rss_end_mb": round(rss1)}  # fmt: skip
    return {"tally": tally, "notes": notes,
            "pass": only_exhausted and max(peak) < rss0 + 256}  # fmt: skip


_KILLED_CLIENT = """
import asyncio, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
import chaos
async def main():
    tally, stop = chaos.Tally(), asyncio.Event()
    await asyncio.gather(chaos.closed_loop({url!r}, tally, stop, 8),
                         chaos.streams({url!r}, tally, stop, 4))
asyncio.run(main())
"""


async def streams(url: str, tally: Tally, stop: asyncio.Event, count: int,
                  cancel_after: int | None = None) -> None:  # fmt: skip
    """`count` ModelStreamInfer streams sending requests until stopped, or cancelled by the
    client after `cancel_after` answers."""
    request = infer_request()

    async def one() -> None:
        async with grpc.aio.insecure_channel(url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                queue: asyncio.Queue[pb.ModelInferRequest | None] = asyncio.Queue()

                async def requests(q: asyncio.Queue = queue) -> Any:
                    while (item := await q.get()) is not None:
                        yield item

                call = stub.ModelStreamInfer(requests(), timeout=DEADLINE_S)
                answers = 0
                try:
                    for _ in range(4):
                        tally.sent += 1
                        queue.put_nowait(request)
                    async for reply in call:
                        tally.record(None) if not reply.error_message else tally.errors.update(
                            [f"stream: {reply.error_message[:60]}"])  # fmt: skip
                        answers += 1
                        if cancel_after is not None and answers >= cancel_after:
                            call.cancel()
                            tally.cancelled += 4 - answers
                            break
                        if answers == 4:
                            queue.put_nowait(None)
                except grpc.RpcError as err:
                    for _ in range(4 - answers):
                        tally.record(err)

    await asyncio.gather(*(one() for _ in range(count)))


async def drop(ctx: Context) -> dict[str, Any]:
    """Clients that leave: unary calls cancelled at random moments, streams cancelled after
    their first answer, and client processes SIGKILLed mid-load. Then the server must answer
    a probe load in full, with nothing left pending and RSS where it was."""
    srv = ctx.server(ctx.repo_with(MODEL))
    rss0 = srv.rss_mb()
    tally = Tally()
    request = infer_request()
    async with grpc.aio.insecure_channel(srv.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        rng = random.Random(0)
        for _ in range(ctx.count):
            calls = [stub.ModelInfer(request, timeout=DEADLINE_S) for _ in range(16)]
            tally.sent += len(calls)
            await asyncio.sleep(rng.uniform(0, 0.003))
            for call in calls[::2]:
                call.cancel()
            for call in calls:
                try:
                    await call
                    tally.record(None)
                except asyncio.CancelledError:
                    tally.cancelled += 1
                except grpc.RpcError as err:
                    tally.record(err, cancelled=err.code() == grpc.StatusCode.CANCELLED)
    stop = asyncio.Event()
    stream_task = asyncio.create_task(streams(srv.url, tally, stop, 4, cancel_after=1))
    await asyncio.sleep(ctx.seconds / 2)
    stop.set()
    await stream_task
    kills = 0
    for _ in range(3):
        script = _KILLED_CLIENT.format(root=str(ROOT), bench=str(ROOT / "benchmarks"),
                                       url=srv.url)  # fmt: skip
        child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        await asyncio.sleep(1.5)
        child.kill()
        child.wait(10)
        kills += 1
    await asyncio.sleep(1.0)
    probe, _ = await with_load(srv.url, 8, lambda: asyncio.sleep(ctx.seconds / 2))
    pending = await asyncio.to_thread(srv.scrape, "nv_inference_pending_request_count")
    rss1 = srv.rss_mb()
    srv.stop()
    notes = {"cancel_rounds": ctx.count, "client_processes_killed": kills,
             "probe_after": probe.as_dict(), "pending_after": pending,
             "rss_start_mb": round(rss0), "rss_end_mb": round(rss1)}  # fmt: skip
    ok = probe.ok == probe.sent and not sum(probe.lost.values()) and pending == 0
    return {"tally": tally, "notes": notes, "pass": ok}


async def soak(ctx: Context) -> dict[str, Any]:
    """c=8 for --soak-secs; RSS sampled each second, slope fitted after the first 10%."""
    srv = ctx.server(ctx.repo_with(MODEL))
    samples: list[tuple[float, float]] = []

    async def during() -> None:
        t0 = time.monotonic()
        while (t := time.monotonic() - t0) < ctx.soak_secs:
            samples.append((t, srv.rss_mb()))
            await asyncio.sleep(1.0)

    tally, _ = await with_load(srv.url, 8, during)
    srv.stop()
    steady = [(t, r) for t, r in samples if t >= ctx.soak_secs * 0.1] or samples
    ts, rs = np.array([t for t, _ in steady]), np.array([r for _, r in steady])
    slope = float(np.polyfit(ts, rs, 1)[0]) * 60 if len(ts) > 2 else float("nan")
    notes = {"soak_seconds": ctx.soak_secs, "rss_first_mb": round(samples[0][1], 1),
             "rss_last_mb": round(samples[-1][1], 1), "rss_max_mb": round(max(rs), 1),
             "rss_slope_mb_per_min": round(slope, 3), "samples": len(samples)}  # fmt: skip
    return {"tally": tally, "notes": notes, "pass": not tally.errors}


def _hostile_files(good_onnx: Path, good_sparse: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (model file name, bytes): what must fail to load, each alone."""
    from onnx import TensorProto, helper

    onnx_bytes, sparse_bytes = good_onnx.read_bytes(), good_sparse.read_bytes()
    rng = random.Random(1)

    def flipped(data: bytes, count: int) -> bytes:
        """Bytes flipped in the first 1 KiB (structure: headers, graph, names). Flips in the
        weights would load fine: only --trusted-keys (signatures) catches those."""
        out = bytearray(data)
        for _ in range(count):
            out[rng.randrange(0, min(1024, len(out)))] ^= 0xFF
        return bytes(out)

    # external data that points outside the model folder (path traversal)
    weights = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[256],
                          data_location=TensorProto.EXTERNAL)  # fmt: skip
    weights.external_data.add(key="location", value="../../../../../../etc/passwd")
    weights.external_data.add(key="length", value="1024")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "escape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 256])], [weights])
    escape = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # a tensor that claims 2^40 floats but carries none
    huge = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20],
                       raw_data=b"\0" * 16)  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 256])], [huge])
    liar = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return {
        "onnx_truncated": ("model.onnx", onnx_bytes[: len(onnx_bytes) // 2]),
        "onnx_corrupted": ("model.onnx", flipped(onnx_bytes, 64)),
        "onnx_random": ("model.onnx", rng.randbytes(64 * 1024)),
        "onnx_empty": ("model.onnx", b""),
        "onnx_external_escape": ("model.onnx", escape.SerializeToString()),
        "onnx_size_liar": ("model.onnx", liar.SerializeToString()),
        "sparse_truncated": ("model.sparse", sparse_bytes[: len(sparse_bytes) // 2]),
        "sparse_corrupted": ("model.sparse", flipped(sparse_bytes, 64)),
        "sparse_header_only": ("model.sparse", sparse_bytes[:16]),
        "sparse_random": ("model.sparse", rng.randbytes(64 * 1024)),
    }


async def hostile(ctx: Context) -> dict[str, Any]:
    """Broken and hostile model files dropped into a polled repository while a good model
    serves under load: each fails to load with a reason; the good one never fails."""
    from runtime.sparsity.pack import pack_file

    repo = ctx.repo_with(MODEL)
    srv = ctx.server(repo, "--model-control-mode", "poll", "--repository-poll-secs", "0.2",
                     "--strict-readiness", "false")  # fmt: skip
    packed = ctx.tmp / "good.sparse"
    pack_file(ctx.samples / "mlp_sparse24" / "1" / "model.onnx", packed)
    files = _hostile_files(repo / MODEL / "1" / "model.onnx", packed)
    config = (ctx.samples / "mlp_sparse24" / "config.pbtxt").read_text()

    async def during() -> dict[str, Any]:
        for name, (filename, data) in files.items():
            folder = repo / name / "1"
            folder.mkdir(parents=True)
            (folder / filename).write_bytes(data)
            (repo / name / "config.pbtxt").write_text(config.replace('"mlp_sparse24"', f'"{name}"'))

        def states() -> dict[str, tuple[str, str]]:
            out: dict[str, tuple[str, str]] = {}
            for key, value in repository_index(srv.url).items():
                out.setdefault(key.split("/")[0], value)
            return out

        def settled() -> bool:  # NOTE: "unloaded" = seen on disk, not tried yet
            now = states()
            return all(now.get(n, ("", ""))[0] == "READY" or (
                now.get(n, ("", ""))[0] == "UNAVAILABLE" and now[n][1] != "unloaded")
                for n in files)  # fmt: skip

        await wait_until(settled, 120)
        await asyncio.sleep(ctx.seconds / 2)
        now = states()
        return {n: {"state": now.get(n, ("absent", ""))[0],
                    "reason": now.get(n, ("", ""))[1][:160]} for n in files}  # fmt: skip

    tally, results = await with_load(srv.url, 4, during)
    alive = srv.proc.poll() is None
    srv.stop()
    refused = all(r["state"] == "UNAVAILABLE" and r["reason"] for r in results.values())
    return {"tally": tally, "notes": {"server_alive": alive, "models": results},
            "pass": alive and refused and not tally.errors}


SCENARIOS = {f.__name__: f for f in (sigterm, poll_swap, explicit_cycle, overload, drop, soak,
                                     hostile)}  # fmt: skip


@dataclass
class Context:
    tmp: Path
    samples: Path
    seconds: float
    soak_secs: float
    count: int
    frontend: str = "python"
    servers: list[Server] = field(default_factory=list)

    def repo_with(self, *models: str) -> Path:
        repo = Path(tempfile.mkdtemp(dir=self.tmp, prefix="repo-"))
        for m in models:
            copy_model(self.samples / m, repo / m)
        return repo

    def server(self, repo: Path, *flags: str) -> Server:
        srv = Server(repo, self.tmp, "--grpc-frontend", self.frontend, *flags)
        self.servers.append(srv)
        return srv


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    parser.add_argument("--soak-secs", type=float, default=600.0)
    parser.add_argument("--seconds", type=float, default=4.0, help="load per scenario phase")
    parser.add_argument("--count", type=int, default=50, help="cancel rounds in `drop`")
    parser.add_argument("--frontend", choices=("python", "native"), default="python",
                        help="the server's --grpc-frontend")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/chaos.json")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    samples = ROOT / "model_repo"
    build_samples(samples)
    tmp = Path(tempfile.mkdtemp(prefix="chaos-"))
    ctx = Context(tmp, samples, args.seconds, args.soak_secs, args.count, args.frontend)
    results: dict[str, Any] = {}
    try:
        for name in chosen:
            print(f"-- {name}", flush=True)
            t0 = time.monotonic()
            try:
                out = asyncio.run(SCENARIOS[name](ctx))
            except Exception as exc:  # noqa: BLE001 - reported in the table
                out = {"tally": Tally(), "notes": {"crashed": repr(exc)}, "pass": False}
            out["tally"] = out["tally"].as_dict()
            out["seconds"] = round(time.monotonic() - t0, 1)
            results[name] = out
            for srv in ctx.servers:
                srv.stop()
            ctx.servers.clear()
    finally:
        for srv in ctx.servers:
            srv.stop()
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "host": platform.node(), "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"seconds": args.seconds, "soak_secs": args.soak_secs, "count": args.count,
                     "frontend": args.frontend},
        "scenarios": results}, indent=1, default=str))  # fmt: skip
    print(f"wrote {args.out}; server logs in {tmp}")
    lost = sum(r["tally"]["lost"] for r in results.values())
    return 0 if lost == 0 and all(r["pass"] for r in results.values()) else 1


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{'scenario':<15} {'sent':>7} {'ok':>7} {'refused/err':>11} {'not conn':>8} "
          f"{'cancelled':>9} {'LOST':>5}  pass  errors by status")  # fmt: skip
    for name, r in results.items():
        t = r["tally"]
        errors = "; ".join(f"{k} x{v}" for k, v in t["errors"].items()) or "-"
        print(f"{name:<15} {t['sent']:>7} {t['ok']:>7} {sum(t['errors'].values()):>11} "
              f"{t['not_connected']:>8} {t['cancelled_by_client']:>9} {t['lost']:>5}  "
              f"{'yes ' if r['pass'] else 'NO  '}  {errors}")
    print()
    for name, r in results.items():
        notes = {k: v for k, v in r["notes"].items() if k != "models"}
        print(f"{name}: {json.dumps(notes, default=str)}")
        for model, m in r["notes"].get("models", {}).items():
            print(f"   {model:<22} {m['state']:<12} {m['reason'][:110]}")
        if r["tally"]["lost_kinds"]:
            print(f"   LOST: {r['tally']['lost_kinds']}")


if __name__ == "__main__":
    raise SystemExit(main())
