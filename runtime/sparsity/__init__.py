"""Sparsity math and model tooling; pure numpy (plus onnx for graph I/O)."""
