"""System shared memory through the real server with tritonclient.utils.shared_memory, over
gRPC and HTTP: register / status / unregister, inputs read from and outputs written to
regions, and every bad window answered INVALID_ARGUMENT (HTTP 400), never a crash."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess

ROW_BYTES = 256 * 4


@pytest.fixture(params=["grpc", "http"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def client_for(server: ServerProcess, kind: str) -> Any:
    if kind == "grpc":
        return grpcclient.InferenceServerClient(server.url)
    return httpclient.InferenceServerClient(server.http_url)


def module_for(kind: str) -> Any:
    return grpcclient if kind == "grpc" else httpclient


class Regions:
    """Regions made by one test; destroyed (and unregistered) at its end."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.made: list[tuple[str, Any]] = []

    def make(self, size: int, register: bool = True) -> tuple[str, str, Any]:
        name = f"r{uuid.uuid4().hex[:8]}"
        key = f"/sparse_runtime_test_{name}"
        handle = shm.create_shared_memory_region(name, key, size)
        self.made.append((name, handle))
        if register:
            self.client.register_system_shared_memory(name, key, size)
        return name, key, handle

    def close(self) -> None:
        for name, handle in self.made:
            try:
                self.client.unregister_system_shared_memory(name)
            except InferenceServerException:
                pass
            try:
                shm.destroy_shared_memory_region(handle)
            except (shm.SharedMemoryException, OSError):
                pass  # NOTE: a test unlinked it already


@pytest.fixture()
def regions(server: ServerProcess, kind: str) -> Iterator[Regions]:
    r = Regions(client_for(server, kind))
    yield r
    r.close()


def status_names(client: Any, kind: str) -> set[str]:
    status = client.get_system_shared_memory_status()
    if kind == "grpc":
        return set(status.regions)
    return {r["name"] for r in status}


def infer_with_shm(client: Any, kind: str, rows: int, in_region: str, out_region: str,
                   in_offset: int = 0, out_size: int | None = None,
                   in_size: int | None = None) -> Any:  # fmt: skip
    mod = module_for(kind)
    inp = mod.InferInput("x", [rows, 256], "FP32")
    inp.set_shared_memory(in_region, rows * ROW_BYTES if in_size is None else in_size, in_offset)
    out = mod.InferRequestedOutput("y")
    out.set_shared_memory(out_region, rows * ROW_BYTES if out_size is None else out_size)
    return client.infer("mlp_dense", [inp], outputs=[out])


def expect_invalid(kind: str, call: Any, *fragments: str) -> str:
    with pytest.raises(InferenceServerException) as err:
        call()
    status = err.value.status()
    assert status in (("StatusCode.INVALID_ARGUMENT",) if kind == "grpc" else ("400",)), (
        status, str(err.value),
    )  # fmt: skip
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    return str(err.value)


def test_register_status_unregister(regions: Regions, kind: str) -> None:
    name, key, _ = regions.make(4096)
    client = regions.client
    assert name in status_names(client, kind)
    one = client.get_system_shared_memory_status(name)
    if kind == "grpc":
        region = one.regions[name]
        assert (region.key, region.byte_size) == (key, 4096)
    else:
        assert one == [{"name": name, "key": key, "offset": 0, "byte_size": 4096}]
    client.unregister_system_shared_memory(name)
    assert name not in status_names(client, kind)
    with pytest.raises(InferenceServerException) as err:  # NOTE: Triton's code and wording
        client.get_system_shared_memory_status(name)
    assert err.value.status() in ("StatusCode.NOT_FOUND", "404")
    assert f"Unable to find system shared memory region: '{name}'" in str(err.value)
    client.unregister_system_shared_memory("never-registered")  # NOTE: fine, as in Triton


def test_inputs_and_outputs_through_shared_memory(
    server: ServerProcess, regions: Regions, kind: str
) -> None:
    rows = 4
    x = np.random.default_rng(1).standard_normal((rows, 256)).astype(np.float32)
    in_name, _, in_handle = regions.make(rows * ROW_BYTES)
    out_name, _, out_handle = regions.make(rows * ROW_BYTES)
    shm.set_shared_memory_region(in_handle, [x])
    result = infer_with_shm(regions.client, kind, rows, in_name, out_name)
    y = shm.get_contents_as_numpy(out_handle, np.float32, [rows, 256])
    # NOTE: the response names the output but carries no bytes for it
    response = result.get_response()
    outputs = response.outputs if kind == "grpc" else response["outputs"]
    assert [o.name if kind == "grpc" else o["name"] for o in outputs] == ["y"]
    if kind == "grpc":
        assert response.raw_output_contents == [b""]
    else:
        assert "data" not in outputs[0] and "parameters" not in outputs[0]
    plain = grpcclient.InferenceServerClient(server.url)
    ref_in = grpcclient.InferInput("x", [rows, 256], "FP32")
    ref_in.set_data_from_numpy(x)
    np.testing.assert_allclose(y, plain.infer("mlp_dense", [ref_in]).as_numpy("y"), rtol=1e-5)


def test_input_at_an_offset_and_an_output_region_larger_than_needed(
    regions: Regions, kind: str
) -> None:
    x = np.full((1, 256), 0.5, np.float32)
    in_name, _, in_handle = regions.make(3 * ROW_BYTES)
    out_name, _, out_handle = regions.make(2 * ROW_BYTES)
    shm.set_shared_memory_region(in_handle, [x], offset=2 * ROW_BYTES)
    infer_with_shm(regions.client, kind, 1, in_name, out_name, in_offset=2 * ROW_BYTES,
                   out_size=2 * ROW_BYTES)  # fmt: skip
    assert np.isfinite(shm.get_contents_as_numpy(out_handle, np.float32, [1, 256])).all()


def test_bad_windows_are_invalid_argument(regions: Regions, kind: str) -> None:
    client = regions.client
    in_name, _, _ = regions.make(2 * ROW_BYTES)
    out_name, _, _ = regions.make(2 * ROW_BYTES)
    small_name, _, _ = regions.make(ROW_BYTES // 2)
    # input window past the region's end
    expect_invalid(kind, lambda: infer_with_shm(client, kind, 1, in_name, out_name,
                                                in_offset=2 * ROW_BYTES - 8),
                   "Invalid offset + byte size for shared memory region")  # fmt: skip
    # a region too small for the output
    expect_invalid(kind, lambda: infer_with_shm(client, kind, 1, in_name, small_name,
                                                out_size=ROW_BYTES // 2),
                   "should be at least 1024 bytes to hold the results")  # fmt: skip
    # a window larger than the region registered
    expect_invalid(kind, lambda: infer_with_shm(client, kind, 3, in_name, out_name),
                   "Invalid offset + byte size")  # fmt: skip
    # unregistered region
    expect_invalid(kind, lambda: infer_with_shm(client, kind, 1, "nope", out_name),
                   "Unable to find shared memory region: 'nope'")  # fmt: skip
    # the byte size the window says is not what the shape needs
    expect_invalid(kind, lambda: infer_with_shm(client, kind, 1, in_name, out_name,
                                                in_size=ROW_BYTES - 4),
                   "input byte size mismatch for input 'x'")  # fmt: skip


def test_register_errors(regions: Regions, kind: str) -> None:
    client = regions.client
    name, key, handle = regions.make(1024)
    with pytest.raises(InferenceServerException) as err:  # the same name twice
        client.register_system_shared_memory(name, key, 1024)
    assert "already in manager" in str(err.value)
    expect_invalid(
        kind,
        lambda: client.register_system_shared_memory(
            "missing", "/sparse_runtime_test_no_such_key", 64
        ),
        "Unable to open shared memory region",
    )
    other, other_key, _ = regions.make(1024, register=False)
    expect_invalid(kind, lambda: client.register_system_shared_memory(other, other_key, 4096),
                   "within")  # fmt: skip
    # an unlinked key cannot be registered; a region unlinked after registering still works
    unlinked, unlinked_key, unlinked_handle = regions.make(ROW_BYTES, register=False)
    os.unlink("/dev/shm" + unlinked_key)
    expect_invalid(kind, lambda: client.register_system_shared_memory(
        unlinked, unlinked_key, ROW_BYTES), "Unable to open shared memory region")  # fmt: skip


def test_a_key_that_links_out_of_dev_shm_is_refused(
    regions: Regions, kind: str, tmp_path: Path
) -> None:
    target = tmp_path / "not-shared-memory"
    target.write_bytes(b"\0" * 4096)
    link = Path(f"/dev/shm/sparse_runtime_test_link_{uuid.uuid4().hex[:8]}")
    link.symlink_to(target)
    try:
        expect_invalid(kind, lambda: regions.client.register_system_shared_memory(
            "link", "/" + link.name, 4096), "Unable to open shared memory region")  # fmt: skip
    finally:
        link.unlink()


@pytest.mark.parametrize("what", ["fifo", "other-user", "semaphore", "nul"])
def test_only_regular_files_of_the_servers_user_can_be_registered(
    regions: Regions, kind: str, what: str
) -> None:
    """A network client must not name other processes' /dev/shm files (another user's
    segments, POSIX semaphores, FIFOs) just because the server's user could open them."""
    name = f"sparse_runtime_test_{what}_{uuid.uuid4().hex[:8]}"
    path = Path("/dev/shm") / ("sem." + name if what == "semaphore" else name)
    if what == "fifo":
        os.mkfifo(path)
    elif what != "nul":
        path.write_bytes(b"\0" * 4096)
    if what == "other-user":
        if os.geteuid() != 0:
            path.unlink()
            pytest.skip("needs root to give a file to another user")
        os.chown(path, 65534, 65534)
    key = "/" + path.name + ("\0x" if what == "nul" else "")
    try:
        expect_invalid(kind, lambda: regions.client.register_system_shared_memory(
            "foreign", key, 4096), "Unable to open shared memory region")  # fmt: skip
    finally:
        if path.exists():
            path.unlink()
    assert "foreign" not in status_names(regions.client, kind)


def test_a_region_the_client_shrinks_is_an_error_not_a_crash(
    server: ServerProcess, regions: Regions, kind: str
) -> None:
    in_name, in_key, _ = regions.make(ROW_BYTES)
    out_name, _, _ = regions.make(ROW_BYTES)
    os.truncate("/dev/shm" + in_key, 16)
    expect_invalid(kind, lambda: infer_with_shm(regions.client, kind, 1, in_name, out_name),
                   f"shared memory region '{in_name}' is smaller than registered")  # fmt: skip
    assert grpcclient.InferenceServerClient(server.url).is_server_live()
    assert server.proc.poll() is None


def test_an_output_region_the_client_shrinks_is_an_error_not_a_crash(
    server: ServerProcess, regions: Regions, kind: str
) -> None:
    in_name, _, _ = regions.make(ROW_BYTES)
    out_name, out_key, _ = regions.make(ROW_BYTES)
    os.truncate("/dev/shm" + out_key, 0)
    expect_invalid(kind, lambda: infer_with_shm(regions.client, kind, 1, in_name, out_name),
                   f"shared memory region '{out_name}' is smaller than registered")  # fmt: skip
    assert server.proc.poll() is None


def test_regions_shrunk_while_requests_run_never_kill_the_server(
    server: ServerProcess, regions: Regions, kind: str
) -> None:
    """The reviewer's SIGBUS: a file truncated between the server's size check and its use
    of the bytes. Inputs are read with pread and outputs written with pwrite (no mapping),
    so each request either succeeds or gets INVALID_ARGUMENT, and the server stays up."""
    rows = 8
    in_name, in_key, in_handle = regions.make(rows * ROW_BYTES)
    out_name, out_key, _ = regions.make(rows * ROW_BYTES)
    shm.set_shared_memory_region(in_handle, [np.ones((rows, 256), np.float32)])
    stop = threading.Event()

    def shrink_and_regrow() -> None:
        fds = [os.open("/dev/shm" + key, os.O_RDWR) for key in (in_key, out_key)]
        try:
            while not stop.is_set():
                for fd in fds:
                    os.ftruncate(fd, 0)
                for fd in fds:
                    os.ftruncate(fd, rows * ROW_BYTES)
        finally:
            for fd in fds:
                os.close(fd)

    toggler = threading.Thread(target=shrink_and_regrow, daemon=True)
    toggler.start()
    outcomes = {"ok": 0, "invalid": 0}
    try:
        for _ in range(40):
            try:
                infer_with_shm(regions.client, kind, rows, in_name, out_name)
                outcomes["ok"] += 1
            except InferenceServerException as exc:
                assert exc.status() in ("StatusCode.INVALID_ARGUMENT", "400"), str(exc)
                assert "is smaller than registered" in str(exc), str(exc)
                outcomes["invalid"] += 1
    finally:
        stop.set()
        toggler.join(10)
    assert outcomes["invalid"] > 0, outcomes
    assert server.proc.poll() is None
    assert grpcclient.InferenceServerClient(server.url).is_server_live()


def test_regions_unregistered_while_requests_run_fail_cleanly(
    server: ServerProcess, regions: Regions, kind: str
) -> None:
    """Unregister closes the region's fd while requests may be reading it; each read goes
    through its own duplicate, so a request sees the region or an error, never another
    file that took the fd's number."""
    rows = 8
    in_name, in_key, in_handle = regions.make(rows * ROW_BYTES)
    out_name, _, _ = regions.make(rows * ROW_BYTES)
    shm.set_shared_memory_region(in_handle, [np.ones((rows, 256), np.float32)])
    other = client_for(server, kind)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            other.unregister_system_shared_memory(in_name)
            other.register_system_shared_memory(in_name, in_key, rows * ROW_BYTES)

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    try:
        for _ in range(30):
            try:
                infer_with_shm(regions.client, kind, rows, in_name, out_name)
            except InferenceServerException as exc:
                assert exc.status() in ("StatusCode.INVALID_ARGUMENT", "400"), str(exc)
    finally:
        stop.set()
        churner.join(10)
    assert server.proc.poll() is None


def test_cuda_shared_memory_stays_unimplemented(server: ServerProcess) -> None:
    with pytest.raises(InferenceServerException) as err:
        grpcclient.InferenceServerClient(server.url).get_cuda_shared_memory_status()
    assert err.value.status() == "StatusCode.UNIMPLEMENTED"
    with pytest.raises(InferenceServerException) as err:
        httpclient.InferenceServerClient(server.http_url).get_cuda_shared_memory_status()
    assert err.value.status() == "501"


def test_http_register_body_is_checked(server: ServerProcess) -> None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://{server.http_url}/v2/systemsharedmemory/region/x/register",
        data=json.dumps({"key": 5}).encode(), method="POST",
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 400 and "needs 'key'" in json.loads(err.value.read())["error"]
