"""`sparse-runtime build-samples`: write the sample models into a repository if missing."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from runtime.samples import build_samples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", type=Path, default=Path("model_repo"))
    parser.add_argument("--force", action="store_true", help="rebuild even if present")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.model_repository.exists() and not args.model_repository.is_dir():
        print(f"error: {args.model_repository} is not a directory", file=sys.stderr)
        return 2
    written = build_samples(args.model_repository, force=args.force)
    if written:
        print(f"sample models written: {', '.join(p.parent.parent.name for p in written)}")
    else:
        print("sample models: all already present (--force rebuilds them)")
    return 0
