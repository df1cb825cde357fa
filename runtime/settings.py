"""Server settings: one frozen object, flags named like tritonserver's.

Every flag can also be set by an environment variable
`SPARSE_RUNTIME_<FLAG_IN_UPPER_SNAKE>` (e.g. SPARSE_RUNTIME_GRPC_PORT=9001);
an explicit flag wins over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

ENV_PREFIX = "SPARSE_RUNTIME_"
CONTROL_MODES = ("none", "poll", "explicit")
GRPC_FRONTENDS = ("auto", "python", "native")


@dataclass(frozen=True)
class Settings:
    """Everything `serve` needs; built once in the CLI or a test fixture."""

    model_repository: Path = field(
        default=Path("model_repo"), metadata={"help": "model repository root directory"}
    )
    host: str = field(default="0.0.0.0", metadata={"help": "address to bind (gRPC and metrics)"})
    grpc_port: int = field(
        default=8001, metadata={"help": "gRPC port (0 picks a free one)", "range": (0, 65535)}
    )
    http_port: int = field(
        default=8000,
        metadata={"help": "HTTP/REST port (0 picks a free one, -1 disables)", "range": (-1, 65535)},
    )
    http_address: str = field(
        default="", metadata={"help": "address the HTTP/REST port binds (empty: --host)"}
    )
    http_max_input_size: int = field(
        default=64 * 2**20,
        metadata={
            "help": "largest HTTP/REST request body in bytes, as tritonserver's flag (a larger "
            "one is answered 400 before it is read whole)",
            "range": (1, 2**40),
        },
    )
    metrics_port: int = field(
        default=8002, metadata={"help": "Prometheus port, -1 disables", "range": (-1, 65535)}
    )
    model_control_mode: str = field(
        default="none", metadata={"help": "none | poll | explicit", "choices": CONTROL_MODES}
    )
    repository_poll_secs: float = field(
        default=15.0, metadata={"help": "rescan interval in poll mode", "range": (0.05, 86400)}
    )
    load_model: tuple[str, ...] = field(
        default=(), metadata={"help": "models to load at start in explicit mode ('*' = all)"}
    )
    log_verbose: int = field(
        default=0, metadata={"help": "0 = info, >=1 debug", "range": (0, 2**31 - 1)}
    )
    intra_op_threads: int = field(
        default=0,
        metadata={
            "help": "onnxruntime intra-op threads per model (0 = onnxruntime's own default, "
            "one per physical core, as Triton's onnxruntime backend leaves it)",
            "range": (0, 4096),
        },
    )
    max_queue_size: int = field(
        default=1024,
        metadata={
            "help": "pending requests per model before RESOURCE_EXHAUSTED (0 = no limit)",
            "range": (0, 2**31 - 1),
        },
    )
    grpc_frontend: str = field(
        default="auto",
        metadata={
            "help": "auto (native where built, else python) | python (grpc.aio) | native "
            "(C++ grpc++ bridge, `make native` builds it)",
            "choices": GRPC_FRONTENDS,
        },
    )
    grpc_max_message_bytes: int = field(
        default=2**31 - 1,
        metadata={
            "help": "max gRPC message size, both directions (gRPC's own cap: 2^31-1)",
            "range": (1, 2**31 - 1),
        },
    )
    shutdown_grace_secs: float = field(
        default=30.0,
        metadata={"help": "how long SIGTERM waits for in-flight requests", "range": (0, 86400)},
    )
    host_buffer_reuse_bytes: int = field(
        default=64 * 2**20,
        metadata={
            "help": "glibc: tensors under this size reuse heap pages instead of fresh mmaps "
            "(0 = malloc defaults; see runtime/hostmem.py)",
            "range": (0, 2**40),
        },
    )
    strict_readiness: bool = field(
        default=True,
        metadata={
            "help": "true: ServerReady (and the health service's overall status) needs every "
            "model ready, as tritonserver's default; false: ready once the server serves, "
            "whatever failed to load"
        },
    )
    grpc_use_ssl: bool = field(
        default=False, metadata={"help": "serve gRPC over TLS (needs the cert and key flags)"}
    )
    grpc_use_ssl_mutual: bool = field(
        default=False,
        metadata={"help": "mutual TLS: clients need a certificate signed by --grpc-root-cert "
                  "(implies --grpc-use-ssl)"},
    )  # fmt: skip
    grpc_server_cert: Path | None = field(
        default=None, metadata={"help": "PEM server certificate (chain) for gRPC TLS"}
    )
    grpc_server_key: Path | None = field(
        default=None, metadata={"help": "PEM private key of --grpc-server-cert"}
    )
    grpc_root_cert: Path | None = field(
        default=None, metadata={"help": "PEM CA certificate(s) that sign client certificates"}
    )
    grpc_restricted_protocol: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "<protocols>:<key>=<value>: those gRPC protocols (health, metadata, "
            "inference, shared-memory, model-config, model-repository, statistics, trace, "
            "logging) need header triton-grpc-protocol-<key>: <value>; may repeat",
            "whole_items": True,
        },
    )
    http_use_ssl: bool | None = field(
        default=None,
        metadata={"help": "serve HTTP/REST over TLS (HTTPS); cert and key: --http-server-cert "
                  "and --http-server-key, else the --grpc-server-* files. Unset: as gRPC "
                  "(--grpc-use-ssl / -mutual); false: plaintext even beside a TLS gRPC",
                  "shown": "as gRPC"},
    )  # fmt: skip
    http_use_ssl_mutual: bool | None = field(
        default=None,
        metadata={"help": "HTTPS with mutual TLS: clients need a certificate signed by "
                  "--http-root-cert (else --grpc-root-cert); implies --http-use-ssl. Unset: "
                  "as --grpc-use-ssl-mutual", "shown": "as gRPC"},
    )  # fmt: skip
    http_server_cert: Path | None = field(
        default=None,
        metadata={"help": "PEM server certificate for HTTPS (unset: --grpc-server-cert)"},
    )
    http_server_key: Path | None = field(
        default=None,
        metadata={"help": "PEM private key of the HTTPS certificate (unset: --grpc-server-key)"},
    )
    http_root_cert: Path | None = field(
        default=None,
        metadata={"help": "PEM CA certificate(s) that sign HTTPS client certificates "
                  "(unset: --grpc-root-cert)"},
    )  # fmt: skip
    http_restricted_api: tuple[str, ...] | None = field(
        default=None,
        metadata={
            "help": "<apis>:<key>=<value>: those HTTP API groups (same names as "
            "--grpc-restricted-protocol) need header <key>: <value>, else 403; may repeat. "
            "Unset: the --grpc-restricted-protocol groups, key and value; 'none': nothing "
            "restricted on HTTP",
            "whole_items": True,
            "shown": "as --grpc-restricted-protocol",
        },
    )
    metrics_ssl_cert: Path | None = field(
        default=None, metadata={"help": "PEM certificate: serve /metrics over HTTPS"}
    )
    metrics_ssl_key: Path | None = field(
        default=None, metadata={"help": "PEM private key of --metrics-ssl-cert"}
    )
    metrics_ssl_root_cert: Path | None = field(
        default=None,
        metadata={"help": "PEM CA: scrapers must present a certificate it signed (mutual TLS)"},
    )
    metrics_basic_auth_file: Path | None = field(
        default=None, metadata={"help": "user:password lines: /metrics needs HTTP basic auth"}
    )
    trusted_keys: Path | None = field(
        default=None,
        metadata={"help": "folder of Ed25519 *.pub keys: serve only models whose .sig one "
                  "of them signed (sparse-runtime sign / pack --sign)"},
    )  # fmt: skip
    port_file: Path | None = field(
        default=None, metadata={"help": "write the bound ports as JSON here (for tests)"}
    )


def http_use_ssl(settings: Settings) -> tuple[bool, bool]:
    """(TLS, mutual) for the HTTP/REST port. Each --http-use-ssl* flag left unset follows its
    gRPC twin, so securing gRPC never leaves the same API open in plaintext on 8000; an
    explicit `--http-use-ssl false` keeps HTTP plaintext (serve logs a warning)."""
    grpc_tls = settings.grpc_use_ssl or settings.grpc_use_ssl_mutual
    on = grpc_tls if settings.http_use_ssl is None else settings.http_use_ssl
    mutual = settings.http_use_ssl_mutual
    if mutual is None:
        mutual = on and settings.grpc_use_ssl_mutual
    return on or mutual, mutual


def http_restricted_api(settings: Settings) -> tuple[tuple[str, ...], str]:
    """(specs, the flag they came from) for the HTTP/REST port: --http-restricted-api when
    given ('none' alone: nothing), else the --grpc-restricted-protocol ones, so a gRPC
    restriction is not bypassed over HTTP (header: the bare key, as tritonserver's HTTP)."""
    if settings.http_restricted_api is None:
        return settings.grpc_restricted_protocol, "--grpc-restricted-protocol"
    specs = tuple(s for s in settings.http_restricted_api if s.strip().lower() != "none")
    return specs, "--http-restricted-api"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_BOOLS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}  # fmt: skip


def _parse(raw: str, annotation: str) -> object:
    """raw text -> the field's type; ValueError says what was expected."""
    if annotation.startswith("tuple"):
        return tuple(p for p in raw.replace(";", ",").split(",") if p)
    if annotation == "int":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected an integer; got {raw!r}") from None
    if annotation == "float":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number; got {raw!r}") from None
    if annotation.startswith("bool"):  # NOTE: `bool | None`: unset (None) is the default
        if raw.strip().lower() not in _BOOLS:
            raise ValueError(f"expected true or false; got {raw!r}")
        return _BOOLS[raw.strip().lower()]
    if annotation.startswith("Path"):
        return Path(raw)
    return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field; defaults come from env at parse time."""
    for f in fields(Settings):
        env = ENV_PREFIX + f.name.upper()
        shown = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        shown = "none" if shown in ("", None) else shown
        shown = f.metadata.get("shown", shown)
        help_text = f"{f.metadata['help']} [default: {shown}; env {env}]"
        kwargs: dict[str, object] = {"dest": f.name, "default": None, "help": help_text}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if str(f.type).startswith("tuple"):
            kwargs["action"] = "append"
        parser.add_argument(_flag(f.name), **kwargs)


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Flag > environment > default."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for f in fields(Settings):
        flag_value = getattr(args, f.name, None)
        annotation = str(f.type)
        env_name = ENV_PREFIX + f.name.upper()
        try:
            if flag_value is not None:
                if annotation.startswith("tuple") and f.metadata.get("whole_items"):
                    values[f.name] = tuple(flag_value)  # NOTE: commas belong to each item
                elif annotation.startswith("tuple"):
                    values[f.name] = tuple(
                        p
                        for item in flag_value
                        for p in _parse(item, annotation)  # type: ignore[union-attr]
                    )
                else:
                    values[f.name] = _parse(str(flag_value), annotation)
            elif env_name in env and f.metadata.get("whole_items"):
                values[f.name] = tuple(p for p in env[env_name].split(";") if p)
            elif env_name in env:
                values[f.name] = _parse(env[env_name], annotation)
        except ValueError as exc:
            source = _flag(f.name) if flag_value is not None else env_name
            raise ValueError(f"{source}: {exc}") from None
    settings = Settings(**values)  # type: ignore[arg-type]
    for f in fields(Settings):
        value = getattr(settings, f.name)
        where = f"{_flag(f.name)} (or {ENV_PREFIX}{f.name.upper()})"
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ValueError(f"{where} must be one of {', '.join(choices)}; got {value!r}")
        lo, hi = f.metadata.get("range", (None, None))
        if lo is not None and not lo <= value <= hi:
            raise ValueError(f"{where} must be in [{lo}, {hi}]; got {value}")
    return settings
