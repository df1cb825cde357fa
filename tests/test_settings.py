"""Flags named like tritonserver's, each also settable by environment variable."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from runtime import settings


def parse(argv: list[str], env: dict[str, str]) -> settings.Settings:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return settings.from_args(parser.parse_args(argv), env)


def test_defaults_are_tritons_ports() -> None:
    s = parse([], {})
    assert (s.grpc_port, s.metrics_port, s.model_control_mode) == (8001, 8002, "none")
    assert s.model_repository == Path("model_repo") and s.host == "0.0.0.0"


def test_environment_then_flag_precedence() -> None:
    env = {
        "SPARSE_RUNTIME_GRPC_PORT": "9001",
        "SPARSE_RUNTIME_MODEL_CONTROL_MODE": "poll",
        "SPARSE_RUNTIME_REPOSITORY_POLL_SECS": "2.5",
        "SPARSE_RUNTIME_LOAD_MODEL": "a,b",
    }
    s = parse([], env)
    assert (s.grpc_port, s.model_control_mode, s.repository_poll_secs) == (9001, "poll", 2.5)
    assert s.load_model == ("a", "b")
    s = parse(["--grpc-port", "7001", "--load-model", "c", "--load-model", "d"], env)
    assert s.grpc_port == 7001 and s.load_model == ("c", "d")


def test_bad_values_are_rejected() -> None:
    with pytest.raises(SystemExit):
        parse(["--model-control-mode", "sometimes"], {})
    with pytest.raises(ValueError):
        parse([], {"SPARSE_RUNTIME_MODEL_CONTROL_MODE": "sometimes"})
    with pytest.raises(ValueError):
        parse([], {"SPARSE_RUNTIME_GRPC_PORT": "eighty"})
    with pytest.raises(ValueError, match="--grpc-frontend"):
        parse([], {"SPARSE_RUNTIME_GRPC_FRONTEND": "rust"})
    with pytest.raises(
        ValueError, match=r"--grpc-max-message-bytes .* must be in \[1, 2147483647\]"
    ):
        parse(["--grpc-max-message-bytes", str(2**32)], {})
    with pytest.raises(ValueError, match="--metrics-port"):
        parse(["--metrics-port", "70000"], {})
    assert parse(["--metrics-port", "-1"], {}).metrics_port == -1
    for flag, value in (("--repository-poll-secs", "0"), ("--shutdown-grace-secs", "-5"),
                        ("--max-queue-size", "-1")):  # fmt: skip
        with pytest.raises(ValueError, match=flag):
            parse([flag, value], {})
    assert parse(["--max-queue-size", "0"], {}).max_queue_size == 0  # no limit, as in Triton
