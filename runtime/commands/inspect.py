"""`sparse-runtime inspect MODEL`: per-layer sparsity, 2:4 compliance and a model summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx

from runtime.errors import ModelLoadError
from runtime.fileio import read_model
from runtime.sparsity.analysis import ModelProfile, analyze_model, layer_row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register inspect's flags."""
    parser.add_argument("model", type=Path, help="ONNX model or packed .sparse file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--all", action="store_true", help="also list non-GEMM weights")
    parser.add_argument("--parent", type=Path, metavar="DENSE",
                        help="dense model this one was structurally pruned from: show the "
                             "shapes, FFN widths and head counts against it")


def load_model(path: Path) -> onnx.ModelProto:
    """An ONNX model, or a packed .sparse file (detected by magic bytes)."""
    return read_model(path)[1]


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_table(profile: ModelProfile, show_all: bool = False) -> str:
    """Human-readable per-layer table plus summary lines."""
    layers = profile.layers if show_all else profile.gemm_layers
    header = (
        "node", "weight", "op", "shape", "dtype", "K", "sparsity", "2:4", "eligible", "dense",
        "2:4 size",
    )
    rows = [header]
    for layer in layers:
        rows.append((
            layer.name,
            layer.weight_name,
            layer.op or "-",
            "x".join(map(str, layer.shape)),
            layer.dtype,
            str(layer.k) if layer.is_gemm else "-",
            f"{layer.sparsity:.1%}",
            f"{layer.compliance_24:.1%}" if layer.is_gemm else "-",
            "yes" if layer.eligible else f"no ({layer.ineligible_reason})",
            str(layer.dense_bytes),
            str(layer.compressed_bytes) if layer.is_gemm else "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    s = profile
    lines += [
        "",
        f"pattern: {s.pattern}   weight sparsity: {s.sparsity:.1%}   "
        f"GEMM layers: {len(s.gemm_layers)} (eligible {len(s.eligible_layers)}, "
        f"2:4 {len(s.sparse_24_layers)})",
        f"weights: dense {_mib(s.dense_bytes)}, stored {_mib(s.stored_bytes)}, "
        f"2:4-compressed {_mib(s.compressed_24_bytes)}",
        f"share of GEMM FLOPs in eligible 2:4 layers: {s.eligible_24_flops_share:.1%}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the profile; exit 2 on an unreadable model."""
    try:
        _, model, stored_form = read_model(args.model)
        profile = analyze_model(model)
        diff = None
        if args.parent is not None:
            from runtime.sparsity.structure_diff import compare_structure  # NOTE: only with it

            diff = compare_structure(read_model(args.parent)[1], model)
    except (ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # NOTE: "stored" above is the weights as the ONNX file inside holds them; a packed file's
    # own size is what the server reports as weight_bytes_stored
    file_bytes = args.model.stat().st_size
    if args.json:
        out = {
            "model": str(args.model),
            "stored_form": stored_form,
            "file_bytes": file_bytes,
            "summary": profile.summary(),
            "layers": [layer_row(layer) for layer in profile.layers],
        }
        if diff is not None:
            out["parent"] = {"model": str(args.parent), **diff.as_dict()}
        print(json.dumps(out, indent=2))
    else:
        print(format_table(profile, args.all))
        if diff is not None:
            from runtime.sparsity.structure_diff import format_diff

            print(format_diff(diff))
        if stored_form == "packed":
            print(f"packed .sparse file: {_mib(file_bytes)} on disk "
                  "(what the server reports as weight_bytes_stored)")  # fmt: skip
    return 0
