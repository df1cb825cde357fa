"""Error hierarchy: each class declares the gRPC status it maps to.

The servicer catches `RuntimeServerError` once and aborts with `err.code`, so no
code path needs an isinstance ladder to pick a status. `failure_reason` is the `reason` label
Triton puts on `nv_inference_request_failure`: REJECTED, CANCELED, BACKEND or OTHER.
"""

from __future__ import annotations

import grpc


class RuntimeServerError(Exception):
    """Base class for errors that reach a client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    failure_reason: str = "OTHER"


class InvalidArgument(RuntimeServerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(RuntimeServerError):
    code = grpc.StatusCode.NOT_FOUND


class ModelNotReady(RuntimeServerError):
    code = grpc.StatusCode.UNAVAILABLE


class QueueFull(RuntimeServerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    failure_reason = "REJECTED"


class QueueTimeout(RuntimeServerError):
    """Queued longer than the model's queue policy allows (Triton's wording and status)."""

    code = grpc.StatusCode.UNAVAILABLE
    failure_reason = "REJECTED"


class ResponseTooLarge(RuntimeServerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ServerShuttingDown(RuntimeServerError):
    code = grpc.StatusCode.UNAVAILABLE


class ControlModeRefused(RuntimeServerError):
    """Model load/unload outside explicit mode: UNAVAILABLE, as tritonserver answers it."""

    code = grpc.StatusCode.UNAVAILABLE


class Unsupported(RuntimeServerError):
    code = grpc.StatusCode.UNIMPLEMENTED


class ModelLoadError(RuntimeServerError):
    """A model could not be loaded (bad config, bad file, engine unavailable); Triton answers
    RepositoryModelLoad's failures INVALID_ARGUMENT."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ConfigError(ModelLoadError):
    """config.pbtxt is malformed or inconsistent with the model file."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class EngineUnavailable(ModelLoadError):
    """An engine's optional dependency or hardware is missing."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class InferenceFailed(RuntimeServerError):
    code = grpc.StatusCode.INTERNAL
    failure_reason = "BACKEND"


def unknown_model_message(name: str, version: str = "") -> str:
    """Triton's exact wording, which clients match on."""
    if version:
        return f"Request for unknown model: '{name}' version {version} is not found"
    return f"Request for unknown model: '{name}' is not found"
