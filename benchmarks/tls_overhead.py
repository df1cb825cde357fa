"""CPU cost of TLS: server CPU per request, plaintext vs TLS, perf_analyzer at c=8.

Two servers over the same repository run side by side (one plaintext, one with
--grpc-use-ssl, or mutual TLS with --mutual), for each frontend; with --protocol http the
HTTP/REST endpoint instead (--http-use-ssl / --http-use-ssl-mutual, perf_analyzer -i http
with its --ssl-https-* options; the gRPC frontend plays no part, so one row "http"). They
are driven in
interleaved windows (plain, tls, plain, tls, ...) so both see the same machine load, and
each window's server CPU (from /proc) is divided by the requests the server answered in it
(ModelStatistics). Target (issue 19): TLS adds at most 15% server CPU per request.
Prints a table and writes JSON (benchmarks/results/tls_overhead.json by default).

    python benchmarks/tls_overhead.py [--protocol grpc|http] [--frontends python,native]
        [--rounds 3] [--duration 4] [--concurrency 8] [--model mlp_dense] [--mutual]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from serve_bench import PERF_ANALYZER, process_cpu_s, wait_port_file  # noqa: E402
from tls_certs import Ca, Pair  # noqa: E402

from runtime.samples import build_samples  # noqa: E402

TARGET = 0.15


def start(repo: Path, tmp: Path, frontend: str, tls: list[str], tag: str,
          protocol: str = "grpc") -> tuple:  # fmt: skip
    port_file, log = tmp / f"ports-{tag}.json", tmp / f"server-{tag}.log"
    http = ["--http-port", "0"] if protocol == "http" else ["--http-port", "-1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "--model-repository", str(repo),
         "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1", *http,
         "--port-file", str(port_file), "--grpc-frontend", frontend, *tls],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    ports = wait_port_file(proc, port_file, log)
    # NOTE: the request count is read over plaintext gRPC even when HTTP is measured
    return proc, ports[protocol], ports["grpc"]


def served(url: str, model: str, ca: Path | None, client: Pair | None) -> int:
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(
        url, ssl=ca is not None, root_certificates=str(ca) if ca else None,
        private_key=str(client.key) if client else None,
        certificate_chain=str(client.cert) if client else None,
    )  # fmt: skip
    return int(c.get_inference_statistics(model).model_stats[0].inference_stats.success.count)


def perf(url: str, model: str, c: int, duration: float, tls_args: list[str],
         protocol: str = "grpc") -> None:  # fmt: skip
    """Load for about 2 windows of `duration`; what counts is measured around it (server CPU,
    requests answered), so perf_analyzer's own stability verdict does not matter here."""
    cmd = [str(PERF_ANALYZER), "-i", protocol, "-u", url, "-m", model,
           "--concurrency-range", f"{c}:{c}", "--measurement-interval",
           str(int(duration * 1000)), "--stability-percentage", "100",
           "--max-trials", "2", *tls_args]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration * 6 + 120)
    if done.returncode not in (0, 2):  # NOTE: 2 = "no stable measurement", load still ran
        raise RuntimeError(f"perf_analyzer failed ({done.returncode}): "
                           f"{(done.stdout + done.stderr)[-2000:]}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--frontends", default="python,native",
                        help="gRPC frontends (with --protocol http: python only)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per window")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--model", default="mlp_dense")
    parser.add_argument("--mutual", action="store_true", help="mutual TLS instead of TLS")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/tls_overhead[_http].json")  # fmt: skip
    args = parser.parse_args()
    http = args.protocol == "http"
    if args.out is None:
        args.out = ROOT / f"benchmarks/results/tls_overhead{'_http' if http else ''}.json"
    if http:
        args.frontends = "python"  # NOTE: HTTP is aiohttp on the server's loop either way

    build_samples(ROOT / "model_repo")
    tmp = Path(tempfile.mkdtemp(prefix="tls_overhead-"))
    ca = Ca(tmp / "pki")
    server_pair, client_pair = ca.issue("server"), ca.issue("client", server=False)
    repo = tmp / "repo"
    repo.mkdir()
    (repo / args.model).symlink_to(ROOT / "model_repo" / args.model, target_is_directory=True)
    tls_flags = ["--grpc-server-cert", str(server_pair.cert), "--grpc-server-key",
                 str(server_pair.key), "--grpc-root-cert", str(ca.path),
                 "--grpc-use-ssl-mutual" if args.mutual else "--grpc-use-ssl", "true"]  # fmt: skip
    pa_tls = ["--ssl-grpc-use-ssl", "--ssl-grpc-root-certifications-file", str(ca.path)]
    if args.mutual:
        pa_tls += ["--ssl-grpc-private-key-file", str(client_pair.key),
                   "--ssl-grpc-certificate-chain-file", str(client_pair.cert)]  # fmt: skip
    if http:
        tls_flags = [f.replace("--grpc-", "--http-") for f in tls_flags]
        pa_tls = ["--ssl-https-verify-peer", "1", "--ssl-https-verify-host", "2",
                  "--ssl-https-ca-certificates-file", str(ca.path)]  # fmt: skip
        if args.mutual:
            pa_tls += ["--ssl-https-client-certificate-file", str(client_pair.cert),
                       "--ssl-https-private-key-file", str(client_pair.key)]  # fmt: skip
    rows = []
    for frontend in args.frontends.split(","):
        procs = {}
        try:
            procs["plain"] = start(repo, tmp, frontend, [], f"{frontend}-plain", args.protocol)
            procs["tls"] = start(repo, tmp, frontend, tls_flags, f"{frontend}-tls",
                                 args.protocol)  # fmt: skip
            windows: dict[str, list[dict]] = {"plain": [], "tls": []}
            for _ in range(args.rounds):
                for mode in ("plain", "tls"):
                    proc, port, grpc_port = procs[mode]
                    url = f"127.0.0.1:{port}"
                    secure = mode == "tls"
                    if http:  # NOTE: the count goes over plaintext gRPC on the same server
                        count = lambda g=grpc_port: served(  # noqa: E731
                            f"127.0.0.1:{g}", args.model, None, None)
                        if secure:  # NOTE: curl needs the scheme to speak TLS
                            url = f"https://127.0.0.1:{port}"
                    else:
                        count = lambda u=url, s=secure: served(  # noqa: E731
                            u, args.model, ca.path if s else None,
                            client_pair if (s and args.mutual) else None)  # fmt: skip
                    n0, cpu0, t0 = count(), process_cpu_s(proc.pid), time.perf_counter()
                    perf(url, args.model, args.concurrency, args.duration,
                         pa_tls if secure else [], args.protocol)  # fmt: skip
                    wall = time.perf_counter() - t0
                    n, cpu = count() - n0, process_cpu_s(proc.pid) - cpu0
                    windows[mode].append({"requests": n, "seconds": wall, "throughput": n / wall,
                                          "server_cpu_us_per_req": cpu / n * 1e6})  # fmt: skip
            plain = statistics.median(w["server_cpu_us_per_req"] for w in windows["plain"])
            tls = statistics.median(w["server_cpu_us_per_req"] for w in windows["tls"])
            rows.append({
                "frontend": "http" if http else frontend, "plain_us_per_req": plain,
                "tls_us_per_req": tls,
                "overhead": tls / plain - 1,
                "plain_throughput": statistics.median(w["throughput"] for w in windows["plain"]),
                "tls_throughput": statistics.median(w["throughput"] for w in windows["tls"]),
                "windows": windows,
            })  # fmt: skip
        finally:
            for proc, *_ in procs.values():
                proc.terminate()
                proc.wait(30)
    kind = "mutual TLS" if args.mutual else "TLS"
    print(f"\n{args.protocol}: {args.model}, perf_analyzer c={args.concurrency}, "
          f"{args.rounds} interleaved "
          f"windows of {args.duration:.0f}s each, median server CPU per request")  # fmt: skip
    print(f"{'frontend':<9} {'plain us/req':>13} {kind + ' us/req':>15} {'overhead':>9} "
          f"{'plain req/s':>12} {kind + ' req/s':>14}  target <= {TARGET:.0%}")  # fmt: skip
    for r in rows:
        print(f"{r['frontend']:<9} {r['plain_us_per_req']:>13.0f} {r['tls_us_per_req']:>15.0f} "
              f"{r['overhead']:>+9.1%} {r['plain_throughput']:>12.0f} "
              f"{r['tls_throughput']:>14.0f}  {'met' if r['overhead'] <= TARGET else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "protocol": args.protocol, "model": args.model, "concurrency": args.concurrency,
        "mode": kind,
        "rounds": args.rounds, "duration_s": args.duration, "host": platform.node(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows,
    }, indent=1))  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
