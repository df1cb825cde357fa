"""`sparse-runtime unpack MODEL.sparse -o MODEL.onnx`: restore the bit-identical ONNX file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.fileio import output_problem, write_atomic
from runtime.sparsity.pack import PackedFormatError, load_packed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register unpack's flags."""
    parser.add_argument("packed", type=Path, help=".sparse file")
    parser.add_argument("-o", "--output", type=Path, help="output file (default PACKED.onnx)")


def run(args: argparse.Namespace) -> int:
    """Verify, restore and write the ONNX bytes; exit 2 on a bad file."""
    out = args.output or args.packed.with_suffix(".onnx")
    problem = output_problem(out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        data = load_packed(args.packed)
    except PackedFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_atomic(out, data)
    print(f"wrote {out} ({len(data):,d} B, sha256 verified)")
    return 0
