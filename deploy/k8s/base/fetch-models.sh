#!/bin/sh
# Init container of the sparse-runtime pods: prepares /models (an emptyDir the server reads)
# from the node's model store (/model-store, hostPath) and, if MODEL_ARCHIVE_URL is set, a
# .tar.gz fetched from there. Packed 2:4 models (model.sparse) are restored to model.onnx with
# `sparse-runtime unpack` when the image has the sparsity toolkit and UNPACK_SPARSE_MODELS is
# true (the default); otherwise they stay packed (the server loads model.sparse directly, and
# prefers model.onnx when a version folder has both).
set -eu
store="${MODEL_STORE:-/model-store}"
models="${MODELS_DIR:-/models}"
if [ -d "$store" ]; then
    cp -R "$store/." "$models/"
fi
if [ -n "${MODEL_ARCHIVE_URL:-}" ]; then
    echo "fetch-models: fetching $MODEL_ARCHIVE_URL"
    python3 - "$MODEL_ARCHIVE_URL" "$models" <<'PY'
import sys, tarfile, tempfile, urllib.request
url, dest = sys.argv[1], sys.argv[2]
# NOTE: spooled beside the models (the 4Gi emptyDir), not in /tmp (a 64Mi tmpfs)
with tempfile.TemporaryFile(dir=dest) as tmp:
    with urllib.request.urlopen(url, timeout=300) as response:
        while chunk := response.read(1 << 20):
            tmp.write(chunk)
    tmp.seek(0)
    with tarfile.open(fileobj=tmp, mode="r:*") as archive:
        if hasattr(tarfile, "data_filter"):  # refuse absolute paths, links out, devices
            archive.extractall(dest, filter="data")
        else:
            archive.extractall(dest)
PY
fi
if [ "${UNPACK_SPARSE_MODELS:-true}" = true ] && sparse-runtime unpack --help >/dev/null 2>&1; then
    find "$models" -name '*.sparse' | while read -r packed; do
        onnx="${packed%.sparse}.onnx"
        [ -e "$onnx" ] && continue
        echo "fetch-models: unpacking $packed"
        sparse-runtime unpack "$packed" -o "$onnx"
    done
fi
echo "fetch-models: model repository:"
find "$models" -maxdepth 3 | sort
