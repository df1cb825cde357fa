"""`sparse-runtime sign MODEL... --key KEY`: write MODEL.sig (Ed25519 over its SHA-256)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", type=Path, nargs="+",
                        help="model files (model.onnx, model.sparse, ...)")
    parser.add_argument("--key", type=Path, required=True,
                        help="Ed25519 private key in PEM (sparse-runtime keygen)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from runtime.signing import SigningKeyError, key_id, load_private, sign_file

    try:
        key = load_private(args.key)
        for model in args.models:
            if not model.is_file():
                print(f"sparse-runtime sign: '{model}' is not a file", file=sys.stderr)
                return 2
            print(f"wrote {sign_file(model, args.key)} (key {key_id(key.public_key())})")
    except SigningKeyError as exc:
        print(f"sparse-runtime sign: {exc}", file=sys.stderr)
        return 2
    return 0
