"""`sparse-runtime prune MODEL -o OUT`: 2:4 or unstructured pruning with a deviation report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

from runtime.commands import positive_int, prune_structured, write_pruned
from runtime.errors import ConfigError, ModelLoadError
from runtime.fileio import output_problem, read_model
from runtime.sparsity.inputs import (
    Feeds,
    generate_inputs,
    load_npz,
    split_holdout,
    tokenize_text,
)
from runtime.sparsity.pack import is_packed
from runtime.sparsity.prune import METHODS, PruneConfig, PruneReport, prune_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register prune's flags."""
    parser.add_argument("model", type=Path, help="dense ONNX model")
    parser.add_argument("-o", "--output", type=Path, required=True, help="pruned ONNX model")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--pattern", choices=["2:4"], help="2:4 along K (default)")
    what.add_argument("--sparsity", type=float, help="unstructured fraction of zeros per layer")
    parser.add_argument("--global", dest="global_threshold", action="store_true",
                        help="with --sparsity: one magnitude threshold across all layers")
    parser.add_argument("--method", choices=METHODS, default="magnitude")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="skip layers whose weight or node name matches (repeatable)")
    parser.add_argument("--include", action="append", default=[], metavar="GLOB",
                        help="only prune layers whose weight or node name matches (repeatable)")
    parser.add_argument("--inputs", type=Path, help=".npz of inputs for the deviation report")
    cal = parser.add_mutually_exclusive_group()
    cal.add_argument("--calibration", type=Path, help=".npz of calibration inputs")
    cal.add_argument("--calibration-text", type=Path, help="text file, one sentence per line")
    parser.add_argument("--tokenizer", type=Path, help="folder with tokenizer.json")
    parser.add_argument("--samples", type=positive_int, help="use at most N calibration samples")
    parser.add_argument("--max-length", type=int, default=128, help="token limit per sentence")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--max-deviation", type=float,
                      help="keep layers dense that push relative L2 output error past this")
    stop.add_argument("--min-cosine", type=float,
                      help="keep layers dense that push mean output cosine below this")
    parser.add_argument("--damp", type=float, default=0.01, help="SparseGPT damping fraction")
    parser.add_argument("--blocksize", type=int, default=128, help="SparseGPT block size")
    parser.add_argument("--mask-selection", choices=["obs", "diag"], default="obs",
                        help="SparseGPT 2:4 pair choice: exact joint OBS error or per-weight")
    parser.add_argument("--seed", type=int, default=0, help="seed for generated inputs")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--no-progress", action="store_true")
    prune_structured.add_arguments(parser)


def _calibration(args: argparse.Namespace, model: onnx.ModelProto) -> Feeds | None:
    if args.calibration is not None:
        feeds = load_npz(args.calibration, model)
        if args.samples:
            feeds = {k: v[: args.samples] for k, v in feeds.items()}
        return feeds
    if args.calibration_text is not None:
        if args.tokenizer is None:
            raise ConfigError("--calibration-text needs --tokenizer DIR")
        return tokenize_text(args.calibration_text, args.tokenizer, model, args.samples,
                             args.max_length)
    return None


def format_report(report: PruneReport) -> str:
    """Per-layer table and the deviation summary."""
    lines = []
    stop = bool(report.stop_metric)
    header = ["node", "weight", "sparsity"]
    if stop:
        header += ["sensitivity", "decision", "deviation after"]
    rows = [header]
    for r in report.layers:
        row = [r.node_name, r.weight_name, f"{r.sparsity:.1%}"]
        if stop:
            row += [f"{r.sensitivity:.5f}", "pruned" if r.pruned else "kept dense",
                    f"{r.deviation_after:.5f}"]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    d = report.deviation
    pruned = sum(r.pruned for r in report.layers)
    lines += [
        "",
        f"method {report.method}, pattern {report.pattern}: {pruned}/{len(report.layers)} "
        f"layers pruned in {report.seconds:.1f} s"
        + (f" (stop condition: {report.stop_metric}, sensitivity = rel. L2 alone)" if stop
           else ""),
        f"output deviation: max abs {d.max_abs:.5g}, relative L2 {d.rel_l2:.5f}, "
        f"cosine mean {d.cosine:.5f} min {d.min_cosine:.5f}",
    ]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Prune, print the report, write the model; exit 2 on bad input."""
    problem = output_problem(args.output, args.json)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    config = PruneConfig(
        pattern=None if args.sparsity is not None else "2:4",
        sparsity=args.sparsity if args.sparsity is not None else 0.5,
        global_threshold=args.global_threshold,
        method=args.method,
        exclude=tuple(args.exclude),
        include=tuple(args.include),
        damp=args.damp,
        blocksize=args.blocksize,
        mask_selection=args.mask_selection,
        batch_size=args.batch_size,
        max_deviation=args.max_deviation,
        min_cosine=args.min_cosine,
        progress=not args.no_progress,
    )
    try:
        if is_packed(args.model):
            model = read_model(args.model)[1]
        else:
            try:  # NOTE: onnx.load, not read_model: it also loads external data files
                model = onnx.load(str(args.model))
            except Exception as exc:  # noqa: BLE001 - protobuf raises several types
                raise ModelLoadError(f"{args.model}: not a valid ONNX model ({exc})") from exc
        calibration = _calibration(args, model)
        if args.structured:
            return prune_structured.run(args, model, calibration)
        holdout = None
        if calibration is not None and (args.max_deviation or args.min_cosine):
            calibration, holdout = split_holdout(calibration)
        if args.inputs is not None:
            evaluation, source = load_npz(args.inputs, model), str(args.inputs)
        elif holdout is not None:
            evaluation, source = holdout, "held-out 20% of the calibration samples"
        elif calibration is not None:
            evaluation, source = calibration, "the calibration samples (in-sample)"
        else:
            evaluation = generate_inputs(model, seed=args.seed)
            source = f"generated random inputs (seed {args.seed}); pass --inputs for real data"
        pruned, report = prune_model(model, config, calibration, evaluation, holdout)
    except (ConfigError, ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return write_pruned(pruned, args.output, format_report(report), source, args.json, {
        "method": report.method,
        "pattern": report.pattern,
        "seconds": report.seconds,
        "deviation": report.deviation.as_dict(),
        "stop_metric": report.stop_metric,
        "layers": [r.__dict__ for r in report.layers],
    })
