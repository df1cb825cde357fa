"""System shared memory (Triton's extension): clients register POSIX shared-memory regions
(/dev/shm/KEY) and name them, with an offset and byte size, in place of tensor bytes.

Why: a co-located client then moves no tensor bytes through the socket; inputs are read
straight from the mapped region and outputs written into it. Every offset and size is
checked against the registered range before anything is read or written, so a bad request
gets INVALID_ARGUMENT, never a read outside the region.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from runtime.errors import InvalidArgument, RuntimeServerError
from runtime.server import codec

SHM_DIR = "/dev/shm"


class RegionNotFound(RuntimeServerError):
    """Triton answers a status request for an unknown region NOT_FOUND."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RuntimeServerError):
    """Triton answers a second registration under a taken name ALREADY_EXISTS."""

    code = grpc.StatusCode.ALREADY_EXISTS


@dataclass
class Region:
    """One registered region: the client's key, the registered window, its mapping."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap
    fd: int
    """Kept open to check the file's size before each use: touching pages of a file the
    client shrank since would kill the server (SIGBUS)."""

    def intact(self) -> bool:
        try:
            return not self.mapping.closed and os.fstat(self.fd).st_size >= (
                self.offset + self.byte_size
            )
        except OSError:
            return False

    def close(self) -> None:
        try:
            self.mapping.close()
        except BufferError:
            pass  # NOTE: a request still reads it; unmapped when its views are gone
        try:
            os.close(self.fd)
        except OSError:
            pass

    def view(self, offset: int, byte_size: int) -> memoryview:
        """`byte_size` bytes at `offset` within the registered window (checked by caller)."""
        start = self.offset + offset
        return memoryview(self.mapping)[start : start + byte_size]


@dataclass(frozen=True)
class OutputTarget:
    region: Region
    offset: int
    byte_size: int


def _param(parameters: Mapping[str, Any], key: str) -> Any:
    """An InferParameter's value (whichever kind it holds), or None when absent."""
    if key not in parameters:
        return None
    param = parameters[key]
    which = param.WhichOneof("parameter_choice")
    return getattr(param, which) if which else None


class SystemSharedMemory:
    """The registered regions of one server, shared by its gRPC and HTTP frontends."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()  # NOTE: register may run in a worker thread

    # ---- registry -----------------------------------------------------------------
    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if name in self._regions:
            raise AlreadyExists(  # NOTE: Triton's wording
                f"shared memory region '{name}' already in manager"
            )
        if offset < 0 or byte_size < 0:
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': offset and byte_size "
                "must be >= 0"
            )
        path = os.path.join(SHM_DIR, key.lstrip("/"))
        if "/" in key.lstrip("/") or not key.strip("/"):
            raise InvalidArgument(f"Unable to open shared memory region: '{key}'")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)  # NOTE: no links out of /dev/shm
        except OSError as exc:
            raise InvalidArgument(  # NOTE: Triton's wording, then why
                f"Unable to open shared memory region: '{key}' ({exc.strerror})"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if byte_size == 0 or offset + byte_size > size:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': offset {offset} + "
                    f"byte_size {byte_size} must be > 0 and within '{key}' ({size} bytes)"
                )
            mapping = mmap.mmap(fd, offset + byte_size)
        except OSError as exc:
            os.close(fd)
            raise InvalidArgument(
                f"Unable to map shared memory region: '{key}' ({exc.strerror})"
            ) from None
        except InvalidArgument:
            os.close(fd)
            raise
        region = Region(name, key, offset, byte_size, mapping, fd)
        with self._lock:
            if name in self._regions:
                region.close()
                raise AlreadyExists(f"shared memory region '{name}' already in manager")
            self._regions[name] = region

    def unregister(self, name: str = "") -> None:
        """One region, or every region when `name` is empty (unknown names are fine)."""
        with self._lock:
            names = [name] if name else list(self._regions)
            regions = [self._regions.pop(n) for n in names if n in self._regions]
        for region in regions:
            region.close()

    def status(self, name: str = "") -> list[Region]:
        if name and name not in self._regions:
            raise RegionNotFound(  # NOTE: Triton's code and wording
                f"Unable to find system shared memory region: '{name}'"
            )
        return [self._regions[name]] if name else list(self._regions.values())

    def close(self) -> None:
        self.unregister()

    # ---- tensors --------------------------------------------------------------------
    def _window(self, parameters: Mapping[str, Any], what: str) -> tuple[Region, int, int]:
        region_name = _param(parameters, "shared_memory_region")
        byte_size = _param(parameters, "shared_memory_byte_size")
        offset = _param(parameters, "shared_memory_offset") or 0
        if not isinstance(region_name, str) or not region_name:
            raise InvalidArgument(  # NOTE: Triton's wording
                f"'shared_memory_region' is missing or not a string for {what}"
            )
        if isinstance(byte_size, bool) or not isinstance(byte_size, int):
            raise InvalidArgument(  # NOTE: Triton's wording
                f"'shared_memory_byte_size' is missing or not an integer for {what}"
            )
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise InvalidArgument(f"'shared_memory_offset' is not an integer for {what}")
        region = self._regions.get(region_name)
        if region is None:
            # NOTE: Triton's wording; its code is NOT_FOUND, INVALID_ARGUMENT here as every
            # other bad shared-memory window (issue 18 asks for it)
            raise InvalidArgument(f"Unable to find shared memory region: '{region_name}'")
        if not region.intact():
            raise InvalidArgument(
                f"shared memory region '{region_name}' is smaller than registered: its file "
                f"'{region.key}' was truncated or closed; register it again"
            )
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise InvalidArgument(  # NOTE: Triton's wording, then the numbers
                f"Invalid offset + byte size for shared memory region: '{region_name}' "
                f"({what}: offset {offset} + byte size {byte_size} > region size "
                f"{region.byte_size})"
            )
        return region, offset, byte_size

    def input_view(self, parameters: Mapping[str, Any], name: str, model: str) -> memoryview:
        region, offset, byte_size = self._window(parameters, f"input '{name}'")
        return region.view(offset, byte_size)

    def output_targets(self, request: Any) -> dict[str, OutputTarget]:
        """Requested outputs placed in shared memory, checked before the model runs."""
        targets = {}
        for out in request.outputs:
            if out.parameters and any(k in out.parameters for k in codec.SHM_KEYS):
                region, offset, size = self._window(out.parameters, f"output '{out.name}'")
                targets[out.name] = OutputTarget(region, offset, size)
        return targets

    def write_outputs(
        self, targets: Mapping[str, OutputTarget], outputs: Mapping[str, np.ndarray]
    ) -> Sequence[str]:
        """Copy each targeted output into its window; the names written."""
        blobs = {}
        for name, target in targets.items():
            array = outputs[name]
            if array.dtype == object:
                blob: Any = codec.serialize_bytes(array)
            else:
                if array.dtype.byteorder == ">":
                    array = array.astype(array.dtype.newbyteorder("<"))
                blob = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            if len(blob) > target.byte_size:
                raise InvalidArgument(  # NOTE: Triton's wording
                    f"shared memory size specified with the request for output '{name}' "
                    f"({target.byte_size} bytes) should be at least {len(blob)} bytes to hold "
                    "the results"
                )
            blobs[name] = blob
        for name, blob in blobs.items():
            target = targets[name]
            if not target.region.intact():
                raise InvalidArgument(
                    f"shared memory region '{target.region.name}' is smaller than registered: "
                    f"its file '{target.region.key}' was truncated or closed; register it again"
                )
            target.region.view(target.offset, len(blob))[:] = memoryview(blob).cast("B")
        return list(blobs)
