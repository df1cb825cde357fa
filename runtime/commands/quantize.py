"""`sparse-runtime quantize MODEL -o OUT --mode dynamic|static`: int8 with a deviation report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime.commands import positive_int
from runtime.commands.inspect import load_model
from runtime.errors import ConfigError, ModelLoadError
from runtime.fileio import output_problem, write_atomic
from runtime.quantize import (
    CALIBRATION_METHODS,
    MODES,
    QuantizeConfig,
    QuantizeError,
    format_report,
    quantize_model,
)
from runtime.sparsity.inputs import Feeds, generate_inputs, load_npz, tokenize_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register quantize's flags."""
    parser.add_argument("model", type=Path, help="fp32 ONNX model (or packed .sparse), "
                        "e.g. the output of `prune`")
    parser.add_argument("-o", "--output", type=Path, required=True, help="int8 ONNX model")
    parser.add_argument("--mode", choices=MODES, default="dynamic",
                        help="dynamic: int8 weights, activations per call (no calibration); "
                             "static: QDQ with calibrated activation ranges")
    cal = parser.add_mutually_exclusive_group()
    cal.add_argument("--calibration", type=Path, help=".npz of calibration inputs (static)")
    cal.add_argument("--calibration-text", type=Path,
                     help="text file, one sentence per line (static; needs --tokenizer)")
    parser.add_argument("--tokenizer", type=Path, help="folder with tokenizer.json")
    parser.add_argument("--samples", type=positive_int, help="use at most N calibration samples")
    parser.add_argument("--max-length", type=int, default=128, help="token limit per sentence")
    parser.add_argument("--inputs", type=Path, help=".npz of inputs for the deviation report")
    parser.add_argument("--calibrate-method", choices=CALIBRATION_METHODS, default="minmax")
    parser.add_argument("--per-tensor", action="store_true",
                        help="one scale per weight instead of one per output channel")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="keep GEMM nodes whose name matches in fp32 (repeatable)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="seed for generated inputs")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--no-progress", action="store_true")


def _calibration(args: argparse.Namespace, model) -> tuple[Feeds | None, str]:
    """(calibration feeds, note) for static mode; generated inputs when none are given."""
    if args.mode == "dynamic":
        if args.calibration or args.calibration_text:
            raise ConfigError("--calibration applies to --mode static only")
        return None, ""
    if args.calibration is not None:
        feeds = load_npz(args.calibration, model)
    elif args.calibration_text is not None:
        if args.tokenizer is None:
            raise ConfigError("--calibration-text needs --tokenizer DIR")
        feeds = tokenize_text(args.calibration_text, args.tokenizer, model, args.samples,
                              args.max_length)
    else:
        return generate_inputs(model, samples=64, seed=args.seed + 1), (
            "calibrated on generated random inputs; pass --calibration for real data"
        )
    if args.samples:
        feeds = {k: v[: args.samples] for k, v in feeds.items()}
    return feeds, ""


def run(args: argparse.Namespace) -> int:
    """Quantize, print the report, write the model; exit 2 on bad input."""
    problem = output_problem(args.output, args.json)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    config = QuantizeConfig(
        mode=args.mode,
        per_channel=not args.per_tensor,
        calibrate_method=args.calibrate_method,
        exclude=tuple(args.exclude),
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    try:
        model = load_model(args.model)
        calibration, note = _calibration(args, model)
        if args.inputs is not None:
            evaluation = load_npz(args.inputs, model)
        elif calibration is not None and not note:
            evaluation = calibration  # NOTE: real data beats random ids for text models
            note = "deviation measured on the calibration inputs; pass --inputs for held-out data"
        else:
            evaluation = generate_inputs(model, seed=args.seed)
        quantized, report = quantize_model(model, config, calibration, evaluation)
    except (QuantizeError, ConfigError, ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_atomic(args.output, quantized.SerializeToString())
    print(format_report(report))
    if note:
        print(f"note: {note}")
    print(f"wrote {args.output}")
    if args.json:
        write_atomic(args.json, json.dumps(report.as_dict(), indent=2).encode())
    return 0
