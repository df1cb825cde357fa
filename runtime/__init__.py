"""sparse-runtime: a Triton-compatible inference runtime that understands 2:4 sparsity."""

__version__ = "0.1.0"
SERVER_NAME = "sparse-runtime"
