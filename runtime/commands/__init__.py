"""CLI commands, one module each (see `runtime/cli.py`)."""

import argparse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch size of 0 would loop forever or divide by 0)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
