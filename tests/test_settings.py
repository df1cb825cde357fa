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
    # a value that does not parse names where it came from (it used to be int()'s bare message)
    with pytest.raises(ValueError, match="SPARSE_RUNTIME_GRPC_PORT: expected an integer"):
        parse([], {"SPARSE_RUNTIME_GRPC_PORT": "eighty"})
    with pytest.raises(ValueError, match="--log-verbose: expected an integer; got 'yes'"):
        parse(["--log-verbose", "yes"], {})
    with pytest.raises(ValueError, match="--shutdown-grace-secs: expected a number"):
        parse(["--shutdown-grace-secs", "soon"], {})
    with pytest.raises(ValueError, match="--strict-readiness: expected true or false"):
        parse(["--strict-readiness", "maybe"], {})
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
                        ("--max-queue-size", "-1"), ("--host-buffer-reuse-bytes", "-1"),
                        ("--intra-op-threads", "-2"), ("--log-verbose", "-1")):  # fmt: skip
        with pytest.raises(ValueError, match=flag):
            parse([flag, value], {})
    assert parse(["--max-queue-size", "0"], {}).max_queue_size == 0  # no limit, as in Triton


def test_intra_op_threads_default_is_the_librarys_as_in_triton() -> None:
    """0 = onnxruntime's own thread count (Triton's onnxruntime backend sets none);
    an explicit flag or variable still wins."""
    assert parse([], {}).intra_op_threads == 0
    assert parse(["--intra-op-threads", "1"], {}).intra_op_threads == 1
    assert parse([], {"SPARSE_RUNTIME_INTRA_OP_THREADS": "3"}).intra_op_threads == 3


def test_strict_readiness_is_tritons_default_and_can_be_turned_off() -> None:
    assert parse([], {}).strict_readiness is True
    assert parse(["--strict-readiness", "false"], {}).strict_readiness is False
    assert parse([], {"SPARSE_RUNTIME_STRICT_READINESS": "0"}).strict_readiness is False


def test_help_shows_each_default_and_environment_variable() -> None:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "[default: 8001; env SPARSE_RUNTIME_GRPC_PORT]" in text
    assert "env SPARSE_RUNTIME_STRICT_READINESS" in text
