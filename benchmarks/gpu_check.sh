#!/usr/bin/env bash
# One-shot GPU verification: env, GEMM microbench, cuSPARSELt call-form probe, GPU tests,
# engine benchmark (and again with the bias epilogue), and server benchmarks (hidden-8192 MLP,
# BERT-shaped encoder).
#
#   benchmarks/gpu_check.sh OUTDIR
#
# Every step runs under its own `timeout` and a shared time budget (GPU_CHECK_BUDGET_S, default
# 420 s); a failing step is logged and the next one still runs. Logs, JSON and a final summary
# go to OUTDIR as they are produced, and into OUTDIR/gpu_check_all.tgz at the end. Carried
# wheels in .whl/ (tritonclient and friends) are installed into /tmp/site without touching the
# host's packages.
set -u

OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-420}
START=$(date +%s)
LOG="$OUT/gpu_check.log"
: >"$OUT/steps.txt"

export GPU_CHECK_OUT="$OUT"
export SPARSE_RUNTIME_MODELS=${SPARSE_RUNTIME_MODELS:-/tmp/sparse_runtime_models}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if compgen -G ".whl/*.whl" >/dev/null; then
    # NOTE: one wheel at a time, so a wheel for the wrong Python does not block the others
    for whl in .whl/*.whl; do
        $PY -m pip install -q --no-index --no-deps --target /tmp/site "$whl" >>"$LOG" 2>&1 &&
            echo "installed $whl" | tee -a "$LOG" || echo "FAILED to install $whl" | tee -a "$LOG"
    done
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

elapsed() { echo $(($(date +%s) - START)); }

# step NAME MAX_SECONDS CMD...: runs CMD with timeout min(MAX, budget left), never aborts the script
step() {
    local name=$1 max=$2
    shift 2
    local left=$((BUDGET - $(elapsed)))
    local limit=$((max < left ? max : left))
    if ((limit < 10)); then
        echo "=== [$name] SKIPPED: budget spent ($(elapsed)s)" | tee -a "$LOG"
        echo "$name skipped" >>"$OUT/steps.txt"
        return 0
    fi
    echo "=== [$name] start at $(elapsed)s, timeout ${limit}s" | tee -a "$LOG"
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1 &
    local pid=$!
    wait "$pid"
    local rc=$?
    # NOTE: timeout leads its own process group; whatever the step left running (a server
    # whose parent died before its cleanup) goes with it, and with it its GPU memory
    kill -9 -- "-$pid" 2>/dev/null
    tail -n 40 "$OUT/$name.log"
    echo "=== [$name] rc=$rc at $(elapsed)s" | tee -a "$LOG"
    echo "$name $rc $(elapsed)s" >>"$OUT/steps.txt"
    return 0
}

env_info() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
    nvidia-smi -L
    $PY - <<'EOF'
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "cc", torch.cuda.get_device_capability(0))
try:
    print("cusparselt", torch.backends.cusparselt.is_available(), torch.backends.cusparselt.version())
except Exception as exc:
    print("cusparselt error", exc)
print("has _cslt_sparse_mm_search", hasattr(torch, "_cslt_sparse_mm_search"))
for mod in ("onnx", "onnxruntime", "numpy", "grpc", "google.protobuf", "tritonclient.grpc",
            "grpc_health.v1", "zstandard", "pytest"):
    try:
        m = __import__(mod, fromlist=["_"])
        print(mod, getattr(m, "__version__", "ok"))
    except Exception as exc:
        print(mod, "MISSING", exc)
EOF
}

export -f env_info
export PY
BENCH=(benchmarks/gpu_sparse_bench.py --out "$OUT" --models-dir "$SPARSE_RUNTIME_MODELS")

step env 30 bash -c env_info
step gemm 70 $PY "${BENCH[@]}" gemm --reps 15
step models 90 $PY "${BENCH[@]}" models
step pytest 110 $PY -m pytest -q -m gpu -p no:cacheprovider -rfEs tests/test_gpu_sparse.py
step engine 100 $PY "${BENCH[@]}" engine --secs 0.3
step server_encoder 130 $PY "${BENCH[@]}" server-encoder --secs 0.3 --start-timeout 60 \
    --load-timeout 90
step server 120 $PY "${BENCH[@]}" server --secs 0.3 --start-timeout 60 --load-timeout 90
# NOTE: diagnostics last, so a short budget still gets the figures above. The bias epilogue
# (`cslt_bias_epilogue`) is opt-in until measured; its own process, so a CUDA error in it
# cannot cost another step (off again in it: the side-by-side baseline).
step engine_fused 80 $PY "${BENCH[@]}" engine --secs 0.2 --name engine_fused \
    --modes off,auto,auto_fused,on_fused
step profile 60 $PY "${BENCH[@]}" profile --modes off,auto
step probe 60 $PY benchmarks/gpu_probe_cslt.py "$OUT"
$PY "${BENCH[@]}" summary 2>&1 | tee "$OUT/summary.md"
echo "steps:" && cat "$OUT/steps.txt"
# NOTE: the device tool brings back at most 8 files from OUTDIR (13 were written here and 5
# were lost once), so everything also goes into one archive beside the summary.
(cd "$OUT" && tar czf gpu_check_all.tgz --exclude gpu_check_all.tgz ./*) &&
    find "$OUT" -maxdepth 1 -type f ! -name gpu_check_all.tgz ! -name summary.md \
        ! -name gpu_check.log -delete
echo "gpu_check done in $(elapsed)s; results in $OUT (summary.md, gpu_check.log, gpu_check_all.tgz)"
