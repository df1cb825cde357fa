"""`sparse-runtime pack MODEL -o MODEL.sparse`: 2:4 weights as values + 2-bit positions, zstd."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.errors import ModelLoadError
from runtime.sparsity.pack import DEFAULT_LEVEL, PackStats, pack_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register pack's flags."""
    parser.add_argument("model", type=Path, help="ONNX model to pack")
    parser.add_argument("-o", "--output", type=Path, help="output file (default MODEL.sparse)")
    parser.add_argument(
        "--level", type=int, default=DEFAULT_LEVEL, choices=range(1, 23), metavar="{1..22}",
        help=f"zstd level (default {DEFAULT_LEVEL})",
    )  # fmt: skip
    parser.add_argument("--sign", type=Path, metavar="KEY", default=None,
                        help="Ed25519 private key (sparse-runtime keygen): also write OUT.sig")


def format_sizes(stats: PackStats) -> str:
    """The size table pack prints: dense, packed (before zstd) and packed+zstd."""
    lines = [
        f"2:4 tensors packed: {stats.packed_tensors}",
        f"2:4 weights   dense {stats.weights_dense_bytes:>12,d} B   packed "
        f"{stats.weights_packed_bytes:>12,d} B   ({stats.weights_ratio:.2%} of dense)",
        f"model         dense {stats.original_size:>12,d} B   packed "
        f"{stats.payload_size:>12,d} B   packed+zstd {stats.file_size:>12,d} B "
        f"({stats.file_size / stats.original_size:.2%})",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Pack and print the sizes; exit 2 on a bad input."""
    out = args.output or args.model.with_suffix(".sparse")
    from runtime.signing import SigningKeyError, load_private, sign_file

    try:
        if args.sign is not None:
            load_private(args.sign)  # NOTE: a bad key fails before a long pack, not after
        stats = pack_file(args.model, out, level=args.level)
        signed = sign_file(out, args.sign) if args.sign is not None else None
    except (ModelLoadError, OSError, SigningKeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}" + (f" and {signed}" if signed else ""))
    print(format_sizes(stats))
    if out.name != "model.sparse":
        print("note: the server serves a version folder's model.sparse (or the config's "
              "default_model_filename)", file=sys.stderr)  # fmt: skip
    return 0
