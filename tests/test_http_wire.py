"""KServe v2 HTTP/1.1 on the wire: raw sockets against the real server's HTTP port, pinning
what a client sees (status, body, framing, connection kept or closed) so that any front end
on port 8000 can be checked against today's behaviour."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ServerProcess, copy_repo, start_server

TIMEOUT = 10.0
MAX_INPUT = 65536  # --http-max-input-size of the module's server
INFER = "/v2/models/mlp_dense/infer"
HLEN = "Inference-Header-Content-Length"
POST_INFER = f"POST {INFER} HTTP/1.1\r\nHost: x\r\n".encode()  # more headers follow
Model = Callable[[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def wire_server(sample_repo: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ServerProcess]:  # fmt: skip
    """mlp_dense alone, with a small --http-max-input-size so a body over it is cheap to send.
    NOTE: no "Traceback" check on its log: today aiohttp logs one for an over-long header,
    and a client gone mid-body logs "unhandled error ... ConnectionResetError"."""
    tmp = tmp_path_factory.mktemp("http_wire")
    copy_repo(sample_repo / "mlp_dense", tmp / "repo" / "mlp_dense")
    srv = start_server(tmp / "repo", tmp, ["--http-max-input-size", str(MAX_INPUT)])
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def mlp(sample_repo: Path) -> Model:
    """mlp_dense's expected answer, computed in-process by onnxruntime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(sample_repo / "mlp_dense" / "1" / "model.onnx"))
    return lambda x: session.run(["y"], {"x": x})[0]


@dataclass
class Response:
    version: str
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def error(self) -> str:
        return json.loads(self.body)["error"]

    def infer(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON header, outputs as arrays) of an infer answer, binary or JSON."""
        size = int(self.headers.get(HLEN.lower(), len(self.body)))
        header, offset, arrays = json.loads(self.body[:size]), size, {}
        for out in header["outputs"]:
            n = out.get("parameters", {}).get("binary_data_size")
            if n is None:
                data = np.asarray(out["data"], np.float32)
            else:
                data, offset = np.frombuffer(self.body[offset : offset + n], np.float32), offset + n
            arrays[out["name"]] = data.reshape(out["shape"])
        assert offset == len(self.body)
        return header, arrays


class Wire:
    """One raw client connection: send bytes, read one HTTP/1.1 response at a time."""

    def __init__(self, srv: ServerProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", srv.http_port), timeout=TIMEOUT)
        self.buf = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> Wire:
        self.sock.sendall(data)
        return self

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed; unread {self.buf[:200]!r}")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read(self, head: bool = False) -> Response:
        """One response; `head`: the request was HEAD (no body whatever the headers say)."""
        version, status, *_ = self._line().decode("latin-1").split(" ", 2)
        headers = {}
        while line := self._line():
            name, value = line.decode("latin-1").split(":", 1)
            headers[name.strip().lower()] = value.strip()
        code = int(status)
        if head or code < 200 or code in (204, 304):
            return Response(version, code, headers, b"")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(self._line().split(b";")[0], 16):
                body += self._take(size)
                self._take(2)
            while self._line():  # trailers
                pass
            return Response(version, code, headers, body)
        if "content-length" not in headers:  # delimited by the close
            with contextlib.suppress(EOFError):
                while True:
                    self._fill()
            return Response(version, code, headers, self._take(len(self.buf)))
        return Response(version, code, headers, self._take(int(headers["content-length"])))

    def closed(self) -> bool:
        """Whether the server closed the connection (EOF, or a reset, within TIMEOUT)."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def call(self, data: bytes, head: bool = False) -> Response:
        return self.send(data).read(head)


def request(method: str, path: str, body: bytes | None = None, version: str = "HTTP/1.1",
            **headers: str) -> bytes:  # fmt: skip
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    if body is not None and "Transfer-Encoding" not in headers:
        headers.setdefault("Content-Length", str(len(body)))
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def rows(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 256)).astype(np.float32)


def binary_body(x: np.ndarray, **top: object) -> tuple[bytes, int]:
    """(body, JSON header length) of a binary-tensor infer of `x` on mlp_dense."""
    header = {**top, "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                 "parameters": {"binary_data_size": x.nbytes}}]}  # fmt: skip
    if "outputs" not in top and "parameters" not in top:
        header["outputs"] = [{"name": "y", "parameters": {"binary_data": True}}]
    raw = json.dumps(header).encode()
    return raw + x.tobytes(), len(raw)


def binary_infer(x: np.ndarray, path: str = INFER, **top: object) -> bytes:
    body, size = binary_body(x, **top)
    return request("POST", path, body, **{HLEN: str(size)})


def ready() -> bytes:
    return request("GET", "/v2/health/ready")


def assert_answer(resp: Response, x: np.ndarray, mlp: Model, binary: bool = True) -> dict:
    """`resp` is mlp_dense's correct answer for `x`, binary or JSON as asked; its header."""
    assert resp.status == 200, resp.body[:300]
    assert (HLEN.lower() in resp.headers) == binary, resp.headers
    header, outputs = resp.infer()
    assert header["model_name"] == "mlp_dense" and header["model_version"] == "1"
    assert list(outputs) == ["y"] and outputs["y"].shape == x.shape
    np.testing.assert_allclose(outputs["y"], mlp(x), rtol=1e-4, atol=1e-4)
    return header


# ---- one connection, many requests --------------------------------------------------------
def test_keep_alive_serves_every_kind_of_request_in_order(
    wire_server: ServerProcess, mlp: Model
) -> None:
    x1, x2, x3 = rows(1, 1), rows(3, 2), rows(2, 3)
    with Wire(wire_server) as w:
        assert (r := w.call(ready())).status == 200 and r.body == b""
        assert_answer(w.call(binary_infer(x1)), x1, mlp)
        config = w.call(request("GET", "/v2/models/mlp_dense/config"))
        assert config.status == 200 and json.loads(config.body)["max_batch_size"] == 64
        assert_answer(w.call(binary_infer(x2)), x2, mlp)
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 256],
                            "data": x3.reshape(-1).tolist()}],
                "outputs": [{"name": "y", "parameters": {"binary_data": False}}]}  # fmt: skip
        resp = w.call(request("POST", INFER, json.dumps(body).encode()))
        assert_answer(resp, x3, mlp, binary=False)
        assert resp.headers["content-type"].startswith("application/json")
        bad_body, size = binary_body(x1)
        bad = w.call(request("POST", INFER, bad_body.replace(b"[1, 256]", b"[1, 255]"),
                             **{HLEN: str(size)}))  # fmt: skip
        assert bad.status == 400
        assert "unexpected shape for input 'x' for model 'mlp_dense'. Expected [-1,256], " \
            "got [1,255]" in bad.error()  # fmt: skip
        assert_answer(w.call(binary_infer(x1)), x1, mlp)


def test_pipelined_requests_are_answered_in_order(wire_server: ServerProcess, mlp: Model) -> None:
    x1, x2 = rows(4, 4), rows(1, 5)
    with Wire(wire_server) as w:
        w.send(binary_infer(x1, id="a") + binary_infer(x2, id="b") + ready())
        assert assert_answer(w.read(), x1, mlp)["id"] == "a"
        assert assert_answer(w.read(), x2, mlp)["id"] == "b"
        assert w.read().status == 200
        assert w.call(ready()).status == 200


def test_expect_100_continue(wire_server: ServerProcess, mlp: Model) -> None:
    x = rows(2, 6)
    body, size = binary_body(x)
    head = request("POST", INFER, None, **{"Content-Length": str(len(body)), HLEN: str(size),
                                           "Expect": "100-continue"})  # fmt: skip
    with Wire(wire_server) as w:
        interim = w.call(head)
        assert interim.status == 100 and interim.body == b""
        assert_answer(w.call(body), x, mlp)
        # NOTE: body sent without waiting: today a 100 Continue still comes first
        w.send(head + body)
        resp = w.read()
        while resp.status == 100:
            resp = w.read()
        assert_answer(resp, x, mlp)
        assert w.call(ready()).status == 200


# ---- connection close ------------------------------------------------------------------
def test_connection_close_is_answered_then_closed(wire_server: ServerProcess, mlp: Model) -> None:
    x = rows(1, 7)
    body, size = binary_body(x)
    with Wire(wire_server) as w:
        resp = w.call(request("POST", INFER, body, **{HLEN: str(size), "Connection": "close"}))
        assert_answer(resp, x, mlp)
        assert w.closed()


def test_http_1_0_is_answered_and_closed(wire_server: ServerProcess) -> None:
    with Wire(wire_server) as w:
        resp = w.call(request("GET", "/v2/health/ready", version="HTTP/1.0"))
        assert resp.status == 200 and resp.version.startswith("HTTP/1.")
        assert w.closed()
    with Wire(wire_server) as w:  # NOTE: HTTP/1.0 keep-alive asked for: kept today
        resp = w.call(request("GET", "/v2/health/ready", version="HTTP/1.0",
                              Connection="keep-alive"))  # fmt: skip
        assert resp.status == 200
        assert w.call(ready()).status == 200


# ---- framing -----------------------------------------------------------------------------
def test_chunked_binary_infer_is_served(wire_server: ServerProcess, mlp: Model) -> None:
    x = rows(2, 8)
    body, size = binary_body(x)
    chunks = (body[:100], body[100:1500], body[1500:])
    with Wire(wire_server) as w:
        w.send(request("POST", INFER, None, **{HLEN: str(size), "Transfer-Encoding": "chunked"}))
        for chunk in chunks:
            w.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        assert_answer(w.call(b"0\r\n\r\n"), x, mlp)
        assert w.call(ready()).status == 200


def test_odd_but_valid_requests(wire_server: ServerProcess) -> None:
    """Absolute-form target: served; a POST with neither length nor chunking has an empty
    body (Triton's 500 for it); OPTIONS *: 404. The connection goes on after each."""
    with Wire(wire_server) as w:
        absolute = b"GET http://127.0.0.1/v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
        assert w.call(absolute).status == 200
        resp = w.call(POST_INFER + b"\r\n")
        assert resp.status == 500 and "failed to parse the request JSON buffer" in resp.error()
        assert w.call(request("OPTIONS", "*")).status == 404
        assert w.call(ready()).status == 200


def test_head_is_405_without_a_body(wire_server: ServerProcess) -> None:
    """NOTE: HEAD is not routed: 405 (its headers announce the JSON error's length, no body
    follows), and the next request on the connection is read correctly."""
    with Wire(wire_server) as w:
        assert w.call(request("HEAD", "/v2/health/ready"), head=True).status == 405
        assert (r := w.call(ready())).status == 200 and r.body == b""


MALFORMED = {  # NOTE: the framing ones matter most: a proxy and the server must agree on them
    "garbage": b"NOT HTTP\r\n\r\n",
    "one-70KiB-header": request("GET", "/v2/health/ready", X_Big="a" * 70_000),
    "700-headers": request("GET", "/v2/health/ready", **{f"X-H{i}": "a" * 99 for i in range(700)}),
    "length-and-chunked": POST_INFER
    + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two-lengths": POST_INFER + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "negative-length": POST_INFER + b"Content-Length: -5\r\n\r\n",
    "bad-chunk-size": POST_INFER + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "gzip-encoding": POST_INFER + b"Transfer-Encoding: gzip\r\n\r\n{}",
    "bare-LF": b"GET /v2/health/ready HTTP/1.1\nHost: x\n\n",
    "no-Host": b"GET /v2/health/ready HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_get_400_and_a_close(wire_server: ServerProcess, raw: bytes) -> None:
    with Wire(wire_server) as w:
        assert w.call(raw).status == 400  # NOTE: a text/plain body from the parser, not JSON
        assert w.closed()
    with Wire(wire_server) as w:
        assert w.call(ready()).status == 200


# ---- limits and cut-off clients ------------------------------------------------------------
def test_bodies_over_the_limit_get_400_and_tritons_wording(
    wire_server: ServerProcess, mlp: Model
) -> None:
    big = b"x" * (MAX_INPUT + 10)
    with Wire(wire_server) as w, Wire(wire_server) as other:
        resp = w.call(request("POST", INFER, big, **{HLEN: "100"}))
        assert resp.status == 400 and resp.error() == (
            f"Request size of {len(big)} bytes exceeds the maximum allowed value of {MAX_INPUT} "
            "bytes. Use --http-max-input-size to increase the limit."
        )
        assert w.call(ready()).status == 200  # NOTE: today the same connection goes on
        x = rows(1, 9)
        assert_answer(other.call(binary_infer(x)), x, mlp)


def test_a_client_gone_mid_body_harms_no_one(wire_server: ServerProcess, mlp: Model) -> None:
    x = rows(2, 10)
    raw = binary_infer(x)
    with Wire(wire_server) as w:
        w.send(raw[: len(raw) - 1000])
    x2 = rows(1, 11)
    with Wire(wire_server) as w:
        assert_answer(w.call(binary_infer(x2)), x2, mlp)


# ---- paths and ids ------------------------------------------------------------------------
def test_unknown_model_and_version_are_404_with_tritons_wording(
    wire_server: ServerProcess,
) -> None:
    x = rows(1)
    with Wire(wire_server) as w:
        resp = w.call(binary_infer(x, "/v2/models/nope/infer"))
        assert (resp.status, resp.error()) == (
            404,
            "Request for unknown model: 'nope' is not found",
        )
        resp = w.call(binary_infer(x, "/v2/models/mlp_dense/versions/7/infer"))
        assert (resp.status, resp.error()) == (
            404,
            "Request for unknown model: 'mlp_dense' version 7 is not found",
        )
        assert w.call(ready()).status == 200


@pytest.mark.parametrize("path", [INFER + "?x=1", "/v2/models/mlp%5Fdense/infer",
                                  "/v2/models/mlp_dense/versions/1/infer"])  # fmt: skip
def test_query_strings_and_percent_encoding(wire_server: ServerProcess, mlp: Model,
                                            path: str) -> None:  # fmt: skip
    """NOTE: a query string is ignored and %5F is decoded before routing: both are served."""
    x = rows(1, 12)
    with Wire(wire_server) as w:
        assert_answer(w.call(binary_infer(x, path)), x, mlp)


def test_request_id_with_escapes_and_non_ascii_is_echoed(
    wire_server: ServerProcess, mlp: Model
) -> None:
    x, rid = rows(1, 13), 'r\u00e9q"1\\n\u2603\t'
    with Wire(wire_server) as w:
        assert assert_answer(w.call(binary_infer(x, id=rid)), x, mlp)["id"] == rid


def test_outputs_default_to_binary_or_json_by_binary_data_output(
    wire_server: ServerProcess, mlp: Model
) -> None:
    x = rows(2, 14)
    with Wire(wire_server) as w:
        resp = w.call(binary_infer(x, parameters={"binary_data_output": True}))
        assert_answer(resp, x, mlp)
        resp = w.call(binary_infer(x, parameters={}))
        assert_answer(resp, x, mlp, binary=False)
        assert "data" in json.loads(resp.body)["outputs"][0]


# ---- many clients ---------------------------------------------------------------------------
def test_many_keep_alive_connections_at_once(wire_server: ServerProcess, mlp: Model) -> None:
    from concurrent.futures import ThreadPoolExecutor

    inputs = [[rows(1 + (c + i) % 4, 100 * c + i) for i in range(3)] for c in range(64)]

    def client(xs: list[np.ndarray]) -> list[Response]:
        with Wire(wire_server) as w:
            return [w.call(binary_infer(x)) for x in xs]

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(client, inputs, timeout=60))
    for xs, resps in zip(inputs, answers, strict=True):
        for x, resp in zip(xs, resps, strict=True):
            assert_answer(resp, x, mlp)


# ---- what a front end must not get wrong (found by a review of the native front) -----------
def test_connect_is_read_by_one_parser(wire_server: ServerProcess) -> None:
    """llhttp ignores a CONNECT's Content-Length: whatever follows is the next request. A
    front that framed it by its length would answer later requests out of step."""
    inner = ready()
    raw = request("CONNECT", "/v2/health/ready", inner)
    with Wire(wire_server) as w:
        w.send(raw + request("GET", "/v2/models/mlp_dense/config"))
        answers = [w.read() for _ in range(3)]
    assert [a.status for a in answers] == [404, 200, 200]
    assert answers[1].body == b"" and json.loads(answers[2].body)["name"] == "mlp_dense"


def test_a_tunnelled_connection_never_stalls(wire_server: ServerProcess) -> None:
    """A chunked request hands the connection to the Python frontend whole; pipelined large
    answers and bodies after it must flow both ways at once."""
    import threading

    data = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [10, 256],
                        "data": rows(10, 3).reshape(-1).tolist()}]}  # fmt: skip
    infer = request("POST", INFER, json.dumps(data).encode())  # ~50 KB each way
    index = request("POST", "/v2/repository/index", b" " * (MAX_INPUT - 1))
    chunked = request("POST", "/v2/repository/index", b"2\r\n{}\r\n0\r\n\r\n",
                      **{"Transfer-Encoding": "chunked"})  # fmt: skip
    rounds = 32
    with Wire(wire_server) as w:
        sender = threading.Thread(target=w.send, args=(chunked + (infer + index) * rounds,))
        sender.start()
        statuses = [w.read().status for _ in range(1 + 2 * rounds)]
        sender.join(TIMEOUT)
    assert statuses == [200] * (1 + 2 * rounds)


def test_a_body_larger_than_memory_is_refused_not_fatal(
    sample_repo: Path, tmp_path: Path, mlp: Model
) -> None:
    """Content-Length under --http-max-input-size but past what the host could allocate."""
    copy_repo(sample_repo / "mlp_dense", tmp_path / "repo" / "mlp_dense")
    srv = start_server(tmp_path / "repo", tmp_path, ["--http-max-input-size", str(2**40)])
    try:
        with Wire(srv) as w:
            w.send(POST_INFER + f"Content-Length: {2**40 - 1}\r\n\r\n".encode() + b"{}")
        x = rows(2, 21)
        with Wire(srv) as w:
            assert_answer(w.call(binary_infer(x)), x, mlp)
    finally:
        assert srv.stop() == 0, srv.log_text()
