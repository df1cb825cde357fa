"""`sparse-runtime prune MODEL -o OUT --structured`: remove FFN neurons and attention heads.

The flags are registered by `runtime.commands.prune`; this module runs the
structured path and prints its per-block table.
"""

from __future__ import annotations

import argparse
import sys

import onnx

from runtime.commands import write_pruned
from runtime.errors import ConfigError, ModelLoadError
from runtime.sparsity.inputs import Feeds, load_npz, split_holdout
from runtime.sparsity.structured_prune import (
    StructuredConfig,
    StructuredReport,
    prune_structured,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the structured flags on prune's parser."""
    group = parser.add_argument_group("structured pruning (makes CPUs faster)")
    group.add_argument("--structured", action="store_true",
                       help="remove whole FFN neurons and attention heads (needs calibration)")
    group.add_argument("--ffn-sparsity", type=float, default=0.0, metavar="F",
                       help="fraction of FFN neurons to remove per block, e.g. 0.5")
    group.add_argument("--head-sparsity", type=float, default=0.0, metavar="H",
                       help="fraction of attention heads to remove per layer, e.g. 0.333")
    group.add_argument("--refit", action="store_true",
                       help="damped least-squares refit of the output projections (damping "
                            "chosen on held-out calibration rows)")
    group.add_argument("--target-speedup", type=float, metavar="X",
                       help="choose per-layer amounts by measured sensitivity to reach X times "
                            "the dense onnxruntime CPU speed")
    group.add_argument("--speed-threads", type=int, default=1,
                       help="onnxruntime threads for --target-speedup timing (default 1)")


def format_report(report: StructuredReport) -> str:
    """Per-block table and the deviation summary."""
    stop = bool(report.stop_metric)
    header = ["block", "kind", "before", "after", "removed", "calib. error", "damping"]
    if stop:
        header += ["sensitivity", "decision", "deviation after"]
    rows = [header]
    for r in report.rows:
        row = [r.block, r.kind, str(r.before), str(r.after), r.removed, f"{r.error:.4f}",
               "-" if r.damping is None else f"{r.damping:g}"]
        if stop:
            row += [f"{r.sensitivity:.5f}", "pruned" if r.pruned else "kept dense",
                    f"{r.deviation_after:.5f}"]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    d = report.deviation
    lines += [
        "",
        f"structured: {sum(r.pruned for r in report.rows)}/{len(report.rows)} blocks pruned in "
        f"{report.prune_seconds:.1f} s (wall {report.seconds:.1f} s, "
        f"CPU {report.cpu_seconds:.1f} s)"
        + (f"; stop condition: {report.stop_metric}" if stop else ""),
        f"output deviation: max abs {d.max_abs:.5g}, relative L2 {d.rel_l2:.5f}, "
        f"cosine mean {d.cosine:.5f} min {d.min_cosine:.5f}",
        "calib. error: relative L2 error of the block's output on the calibration rows",
    ]
    if report.speed:
        s = report.speed
        lines.append(f"measured onnxruntime CPU speed-up: {s['speedup']:.2f}x "
                     f"(predicted {s['predicted']:.2f}x, target {s['target']:g}x; "
                     f"{s['threads']:g} thread(s), batch "
                     f"{s['batch']:g}, sequence {s['sequence']:g})")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def run(args: argparse.Namespace, model: onnx.ModelProto, calibration: Feeds | None) -> int:
    """Prune structurally, print the report, write the model; exit 2 on bad input."""
    try:
        if args.sparsity is not None or args.method != "magnitude" or args.pattern:
            raise ConfigError("--structured does not combine with --pattern, --sparsity or "
                              "--method (it has its own scoring)")
        if calibration is None:
            raise ConfigError("--structured needs --calibration inputs.npz or "
                              "--calibration-text FILE --tokenizer DIR")
        config = StructuredConfig(
            ffn_sparsity=args.ffn_sparsity, head_sparsity=args.head_sparsity, refit=args.refit,
            batch_size=args.batch_size, max_deviation=args.max_deviation,
            min_cosine=args.min_cosine, progress=not args.no_progress,
        )
        config.validate()
        if args.target_speedup is not None and (config.ffn_sparsity or config.head_sparsity):
            raise ConfigError("--target-speedup chooses each block's amount itself: leave out "
                              "--ffn-sparsity and --head-sparsity")
        if args.target_speedup is None and not (config.ffn_sparsity or config.head_sparsity):
            raise ConfigError("--structured needs --ffn-sparsity, --head-sparsity or "
                              "--target-speedup")
        holdout = None
        if args.max_deviation is not None or args.min_cosine is not None or \
                args.target_speedup is not None:
            calibration, holdout = split_holdout(calibration)
        if args.inputs is not None:
            evaluation, source = load_npz(args.inputs, model), str(args.inputs)
        elif holdout is not None:
            evaluation, source = holdout, "held-out 20% of the calibration samples"
        else:
            evaluation, source = calibration, "the calibration samples (in-sample)"
        if args.target_speedup is not None:
            from runtime.sparsity.speed_target import prune_to_speed  # NOTE: only when asked

            pruned, report = prune_to_speed(model, config, args.target_speedup, calibration,
                                            evaluation, holdout, threads=args.speed_threads)
        else:
            pruned, report = prune_structured(model, config, calibration, evaluation, holdout)
    except (ConfigError, ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return write_pruned(pruned, args.output, format_report(report), source, args.json, {
        "structured": True,
        "seconds": report.seconds,
        "prune_seconds": report.prune_seconds,
        "cpu_seconds": report.cpu_seconds,
        "deviation": report.deviation.as_dict(),
        "stop_metric": report.stop_metric,
        "speed": dict(report.speed) if report.speed else None,
        "blocks": [r.__dict__ for r in report.rows],
    })
