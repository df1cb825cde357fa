"""CLI commands, one module each (see `runtime/cli.py`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import onnx

from runtime.fileio import write_atomic


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch size of 0 would loop forever or divide by 0)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def write_pruned(
    model: onnx.ModelProto, output: Path, report: str, source: str, json_path: Path | None,
    summary: dict[str, Any],
) -> int:
    """What the prune commands end with: the model written, the report and where its deviation
    was measured printed, and `summary` as JSON when asked for."""
    write_atomic(output, model.SerializeToString())
    print(report)
    print(f"deviation measured on {source}")
    print(f"wrote {output}")
    if json_path:
        write_atomic(json_path, json.dumps(summary, indent=2).encode())
    return 0
