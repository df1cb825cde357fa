"""Triton-style model repository: config parsing, scanning, lifecycle."""
