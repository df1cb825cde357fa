"""System shared memory (Triton's extension): clients register POSIX shared-memory regions
(/dev/shm/KEY) and name them, with an offset and byte size, in place of tensor bytes.

Why: a co-located client then moves no tensor bytes through the socket. Inputs are copied
out of the region's file with pread at decode time and outputs copied in with pwrite; the
file is never mapped: a client that shrinks its file while a request is in flight would
make any touch of a mapped page past the new end kill the whole server (SIGBUS), whereas
a short pread is an error for that one request. Every offset and size is checked against
the registered range first, so a bad request gets INVALID_ARGUMENT, never a read outside
the region.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    """One registered region: the client's key, the registered window, its open file."""

    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    """Kept open while registered: reads and writes go through it (pread/pwrite), never
    through a mapping, so a file shrunk by its client fails one request, not the server."""
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def _file(self) -> Iterator[int]:
        """A private duplicate of the region's fd for one read or write: an unregister
        racing the request closes only the shared fd, whose number the kernel may hand to
        another file at once; a read through it would read that file."""
        with self._lock:
            if self.closed:
                raise self._truncated()
            fd = os.dup(self.fd)
        try:
            yield fd
        finally:
            os.close(fd)

    def intact(self) -> bool:
        try:
            return not self.closed and os.fstat(self.fd).st_size >= (
                self.offset + self.byte_size
            )
        except OSError:
            return False

    def close(self) -> None:
        with self._lock:  # NOTE: requests reading now keep their own duplicate fd
            if self.closed:
                return
            self.closed = True
        try:
            os.close(self.fd)
        except OSError:
            pass

    def _truncated(self) -> InvalidArgument:
        return InvalidArgument(
            f"shared memory region '{self.name}' is smaller than registered: its file "
            f"'{self.key}' was truncated or closed; register it again"
        )

    def read(self, offset: int, byte_size: int) -> memoryview:
        """A fresh copy of `byte_size` bytes at `offset` within the registered window
        (checked by caller); a short read (file shrunk since) is INVALID_ARGUMENT."""
        # NOTE: np.empty, not bytearray: no zero fill, and heap pages are reused
        # (--host-buffer-reuse-bytes) instead of faulting in fresh ones on every call
        view = memoryview(np.empty(byte_size, np.uint8))
        start, done = self.offset + offset, 0
        with self._file() as fd:
            while done < byte_size:  # NOTE: one pread moves at most ~2 GiB on Linux
                try:
                    got = os.preadv(fd, [view[done:]], start + done)
                except OSError:
                    got = 0
                if got <= 0:
                    raise self._truncated()
                done += got
        return view

    def write(self, offset: int, blob: memoryview) -> None:
        """Copy `blob` to `offset` within the registered window (checked by caller). The
        file's size is checked first: pwrite past its end would grow it, never SIGBUS."""
        start, done = self.offset + offset, 0
        with self._file() as fd:
            if os.fstat(fd).st_size < self.offset + self.byte_size:
                raise self._truncated()
            while done < len(blob):
                try:
                    done += os.pwrite(fd, blob[done:], start + done)
                except OSError as exc:
                    raise InvalidArgument(
                        f"failed to write shared memory region '{self.name}' ({exc.strerror})"
                    ) from None


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
        if key.lstrip("/").startswith("sem."):
            raise InvalidArgument(  # NOTE: POSIX named semaphores (ours or others'), not data
                f"Unable to open shared memory region: '{key}' (a semaphore, not a region)"
            )
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)  # NOTE: no links out of /dev/shm; a FIFO must not block
        except (OSError, ValueError) as exc:  # NOTE: ValueError: a NUL in the key
            raise InvalidArgument(  # NOTE: Triton's wording, then why
                f"Unable to open shared memory region: '{key}' "
                f"({getattr(exc, 'strerror', None) or exc})"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                # NOTE: network clients may name only segments this server's user made,
                # not other processes' files that happen to be readable and writable
                raise InvalidArgument(
                    f"Unable to open shared memory region: '{key}' (not a regular file "
                    "owned by the server's user)"
                )
            size = info.st_size
            if byte_size == 0 or offset + byte_size > size:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': offset {offset} + "
                    f"byte_size {byte_size} must be > 0 and within '{key}' ({size} bytes)"
                )
        except InvalidArgument:
            os.close(fd)
            raise
        region = Region(name, key, offset, byte_size, fd)
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
            raise region._truncated()
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise InvalidArgument(  # NOTE: Triton's wording, then the numbers
                f"Invalid offset + byte size for shared memory region: '{region_name}' "
                f"({what}: offset {offset} + byte size {byte_size} > region size "
                f"{region.byte_size})"
            )
        return region, offset, byte_size

    def input_view(self, parameters: Mapping[str, Any], name: str, model: str) -> memoryview:
        region, offset, byte_size = self._window(parameters, f"input '{name}'")
        return region.read(offset, byte_size)

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
            target.region.write(target.offset, memoryview(blob).cast("B"))
        return list(blobs)
