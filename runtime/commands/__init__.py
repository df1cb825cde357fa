"""CLI commands, one module each (see `runtime/cli.py`)."""
