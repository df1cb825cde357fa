"""Client side of `make image-test`: from outside the container, run a tritonclient inference
and scrape the metrics endpoint; exit non-zero with a message on any failure.

    python deploy/image/check_image.py --grpc 127.0.0.1:PORT --metrics http://127.0.0.1:PORT/metrics
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", required=True, help="host:port of the container's gRPC port")
    parser.add_argument("--metrics", required=True, help="URL of the container's /metrics")
    parser.add_argument("--model", default="mlp_dense")
    parser.add_argument("--requests", type=int, default=5)
    args = parser.parse_args()

    client = grpcclient.InferenceServerClient(args.grpc)
    if not (client.is_server_live() and client.is_server_ready()):
        print("check: server not live/ready over the Triton protocol", file=sys.stderr)
        return 1
    if not client.is_model_ready(args.model):
        print(f"check: model {args.model} not ready", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(args.requests):
        x = rng.standard_normal((1, 256)).astype(np.float32)
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out = client.infer(args.model, [inp], outputs=[grpcclient.InferRequestedOutput("y")])
        y = out.as_numpy("y")
        if y is None or y.shape != (1, 256) or not np.isfinite(y).all():
            print(f"check: bad output {None if y is None else y.shape}", file=sys.stderr)
            return 1
    elapsed_ms = (time.perf_counter() - started) * 1000 / args.requests
    print(f"check: {args.requests} inferences on {args.model} OK ({elapsed_ms:.2f} ms each)")

    with urllib.request.urlopen(args.metrics, timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(
        r'^nv_inference_request_success\{[^}]*model="'
        + re.escape(args.model)
        + r'"[^}]*\}\s+(\S+)',
        re.MULTILINE,
    )
    match = pattern.search(text)
    if match is None or float(match.group(1)) < args.requests:
        print(
            f"check: nv_inference_request_success for {args.model} missing or below "
            f"{args.requests}: {match.group(0) if match else None}",
            file=sys.stderr,
        )
        return 1
    print(f"check: metrics OK: {match.group(0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
