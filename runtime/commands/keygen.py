"""`sparse-runtime keygen --out DIR [--name NAME]`: an Ed25519 key pair for signing models.

NAME.key (private, mode 0600) signs; NAME.pub goes into the folder that
`serve --trusted-keys` reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("."), help="folder (default: here)")
    parser.add_argument("--name", default="signing", help="file stem (default: signing)")


def run(args: argparse.Namespace) -> int:
    from runtime.signing import SigningKeyError, generate, key_id, load_private

    try:
        private, public = generate(args.out, args.name)
    except SigningKeyError as exc:
        print(f"sparse-runtime keygen: {exc}", file=sys.stderr)
        return 2
    kid = key_id(load_private(private).public_key())
    print(f"wrote {private} (keep it secret) and {public} (key {kid}): "
          "put the .pub in serve's --trusted-keys folder")  # fmt: skip
    return 0
