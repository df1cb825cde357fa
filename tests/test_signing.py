"""Signed models: keygen, sign, pack --sign, and serve --trusted-keys refusing unsigned,
unknown-key and tampered models one by one while the others serve (real server)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import ROOT, copy_repo, start_server

from runtime import signing


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_trusted_keys_refuse_bad_models_alone(sample_repo: Path, tmp_path: Path) -> None:
    keys, trusted = tmp_path / "keys", tmp_path / "trusted"
    assert cli("keygen", "--out", str(keys), "--name", "site").returncode == 0
    assert cli("keygen", "--out", str(keys), "--name", "rogue").returncode == 0
    again = cli("keygen", "--out", str(keys), "--name", "site")
    assert again.returncode == 2 and "not overwriting" in again.stderr
    trusted.mkdir()
    shutil.copy(keys / "site.pub", trusted)
    site_key = str(keys / "site.key")

    repo = tmp_path / "repo"
    for name in ("mlp_dense", "mlp_int8", "mlp_sparse24_int8"):
        copy_repo(sample_repo / name, repo / name)
    done = cli("sign", str(repo / "mlp_dense" / "1" / "model.onnx"), "--key", site_key)
    assert done.returncode == 0, done.stderr
    packed = repo / "packed"
    (packed / "1").mkdir(parents=True)
    config = (sample_repo / "mlp_sparse24" / "config.pbtxt").read_text()
    (packed / "config.pbtxt").write_text(config.replace("mlp_sparse24", "packed"))
    done = cli("pack", str(sample_repo / "mlp_sparse24" / "1" / "model.onnx"), "-o",
               str(packed / "1" / "model.sparse"), "--sign", site_key)  # fmt: skip
    assert done.returncode == 0 and "model.sparse.sig" in done.stdout, done.stderr
    rogue = repo / "mlp_sparse24_int8" / "1" / "model.onnx"
    assert cli("sign", str(rogue), "--key", str(keys / "rogue.key")).returncode == 0
    # tampered: signed, then one byte of a fresh copy (not the hard-linked sample) changed
    tampered = repo / "tampered"
    shutil.copytree(repo / "mlp_dense", tampered, copy_function=shutil.copyfile)
    (tampered / "config.pbtxt").write_text(
        (tampered / "config.pbtxt").read_text().replace("mlp_dense", "tampered"))
    body = bytearray((tampered / "1" / "model.onnx").read_bytes())
    body[-1] ^= 1
    (tampered / "1" / "model.onnx").unlink()
    (tampered / "1" / "model.onnx").write_bytes(bytes(body))
    # forged: the right digest, a signature altered
    forged = repo / "forged"
    shutil.copytree(repo / "mlp_dense", forged, copy_function=shutil.copyfile)
    (forged / "config.pbtxt").write_text(
        (forged / "config.pbtxt").read_text().replace("mlp_dense", "forged"))
    sig = json.loads((forged / "1" / "model.onnx.sig").read_text())
    raw = bytearray(base64.b64decode(sig["signature"]))
    raw[0] ^= 1
    sig["signature"] = base64.b64encode(bytes(raw)).decode()
    (forged / "1" / "model.onnx.sig").write_text(json.dumps(sig))

    srv = start_server(repo, tmp_path, ["--trusted-keys", str(trusted)])
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["mlp_dense"].state == "READY" and index["packed"].state == "READY"
        assert "is not signed" in index["mlp_int8"].reason
        assert "not in --trusted-keys" in index["mlp_sparse24_int8"].reason
        assert "changed after it was signed" in index["tampered"].reason
        assert "does not verify" in index["forged"].reason
        for name in ("mlp_int8", "mlp_sparse24_int8", "tampered", "forged"):
            assert index[name].state == "UNAVAILABLE"
            assert index[name].reason in srv.log_text()
        x = np.ones((1, 256), np.float32)
        inp = grpcclient.InferInput("x", [1, 256], "FP32")
        inp.set_data_from_numpy(x)
        assert client.infer("packed", [inp]).as_numpy("y").shape == (1, 256)
        assert "signed by trusted key" in srv.log_text()
    finally:
        srv.stop()


def test_trusted_keys_folder_without_keys_is_refused_at_start(tmp_path: Path) -> None:
    done = cli("serve", "--model-repository", str(tmp_path), "--trusted-keys",
               str(tmp_path))  # fmt: skip
    assert done.returncode == 2 and "holds no *.pub key" in done.stderr


def test_sign_refuses_a_non_ed25519_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    done = cli("sign", str(model), "--key", str(path))
    assert done.returncode == 2 and "not an Ed25519 key" in done.stderr
    with pytest.raises(signing.SignatureError, match="is not signed"):
        signing.verify_file(model, {})
