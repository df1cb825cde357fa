"""Signed models: an Ed25519 signature over a model file's SHA-256, in a file beside it.

`sparse-runtime keygen` makes a key pair, `sign` (or `pack --sign`) writes `<model>.sig`,
and `serve --trusted-keys DIR` loads a model only when its `.sig` names a key whose public
half is in DIR (`*.pub`, PEM) and the signature verifies over the file's current bytes.
What a signature covers: the model file (`model.onnx` / `model.sparse` /
default_model_filename). Not covered: config.pbtxt, label files, ONNX external-data files.

The signed message is a fixed context string plus the 32-byte digest, so a signature made
here cannot be replayed as a signature over anything else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ModelLoadError

SUFFIX = ".sig"
FORMAT = "sparse-runtime-signature/1"
CONTEXT = b"sparse-runtime model signature v1\n"
_CHUNK = 1 << 20


class SignatureError(ModelLoadError):
    """A model refused under --trusted-keys (unsigned, unknown key, bad signature)."""


class SigningKeyError(ValueError):
    """A key file that cannot be used; the message names the file."""


def signature_path(model: Path) -> Path:
    return model.with_name(model.name + SUFFIX)


def digest(path: Path) -> bytes:
    """SHA-256 of the file, read in chunks (packed models can be large)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def key_id(public_key: Any) -> str:
    """Short, stable name of a public key: the first 16 hex digits of its raw bytes' SHA-256."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate(folder: Path, name: str = "signing") -> tuple[Path, Path]:
    """A new key pair: `<name>.key` (private, mode 0600) and `<name>.pub` in `folder`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (private, public):
        if path.exists():
            raise SigningKeyError(f"'{path}' exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return private, public


def load_private(path: Path) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise SigningKeyError(f"key '{path}': cannot read: {exc.strerror or exc}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"key '{path}': not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"key '{path}': not an Ed25519 key (make one with sparse-runtime keygen)"
        )
    return key


def load_trusted(folder: Path) -> dict[str, Any]:
    """key id -> Ed25519 public key, from every `*.pub` in `folder`."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not folder.is_dir():
        raise SigningKeyError(f"--trusted-keys '{folder}' is not a directory")
    keys: dict[str, Any] = {}
    for path in sorted(folder.glob("*.pub")):
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError, UnsupportedAlgorithm) as exc:
            raise SigningKeyError(f"trusted key '{path}': not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError(f"trusted key '{path}': not an Ed25519 public key")
        keys[key_id(key)] = key
    if not keys:
        raise SigningKeyError(f"--trusted-keys '{folder}' holds no *.pub key")
    return keys


@dataclass(frozen=True)
class Signature:
    key_id: str
    sha256: str
    signature: bytes


def sign_file(model: Path, key_path: Path) -> Path:
    """Write `<model>.sig` for the file's current bytes; returns its path."""
    key = load_private(key_path)
    d = digest(model)
    body = {
        "format": FORMAT, "algorithm": "ed25519", "key_id": key_id(key.public_key()),
        "file": model.name, "sha256": d.hex(),
        "signature": base64.b64encode(key.sign(CONTEXT + d)).decode(),
    }  # fmt: skip
    out = signature_path(model)
    out.write_text(json.dumps(body, indent=1) + "\n")
    return out


def _read_signature(path: Path) -> Signature:
    try:
        body = json.loads(path.read_text())
        if body.get("format") != FORMAT or body.get("algorithm") != "ed25519":
            raise ValueError(f"not a {FORMAT} ed25519 signature")
        return Signature(str(body["key_id"]), str(body["sha256"]),
                         base64.b64decode(body["signature"], validate=True))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(f"signature file '{path.name}' cannot be used: {exc}") from None


def verify_file(model: Path, trusted: dict[str, Any]) -> str:
    """The signing key's id when `model` is signed by a trusted key over its current bytes;
    SignatureError with the reason otherwise."""
    from cryptography.exceptions import InvalidSignature

    sig_path = signature_path(model)
    if not sig_path.is_file():
        raise SignatureError(
            f"model file '{model.name}' is not signed (no {sig_path.name}) and the server "
            "runs with --trusted-keys"
        )
    sig = _read_signature(sig_path)
    key = trusted.get(sig.key_id)
    if key is None:
        raise SignatureError(
            f"model file '{model.name}' is signed by key {sig.key_id}, which is not in "
            "--trusted-keys"
        )
    d = digest(model)
    if sig.sha256 != d.hex():
        raise SignatureError(
            f"model file '{model.name}' changed after it was signed (SHA-256 {d.hex()[:16]}..., "
            f"signed {sig.sha256[:16]}...)"
        )
    try:
        key.verify(sig.signature, CONTEXT + d)
    except InvalidSignature:
        raise SignatureError(
            f"signature of model file '{model.name}' does not verify with key {sig.key_id} "
            "(the file changed after it was signed, or the signature was altered)"
        ) from None
    return sig.key_id


def verify_for_serving(model: Path, trusted_folder: Path) -> str:
    """verify_file with the keys read now from `trusted_folder` (a key added there counts
    from the next load on); every failure is a SignatureError, so only this model fails."""
    try:
        trusted = load_trusted(trusted_folder)
    except SigningKeyError as exc:
        raise SignatureError(str(exc)) from None
    return verify_file(model, trusted)
