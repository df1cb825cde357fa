"""The native HTTP front (runtime/server/native/http_front.h): binary-tensor infers parsed and
answered in C++ on a native lane, everything else forwarded to the aiohttp app.

One server per --grpc-frontend, the same raw HTTP requests to both: every answer must be the
same status, Content-Type, Inference-Header-Content-Length and body bytes, whether the native
front took the request (well-formed binary infers) or left it to Python (anything unusual).
The native server's exit log counts the HTTP infers per path; the last test checks the count.
Skipped with the reason when the bridge is not built (`make native`).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests import conftest
from tests.conftest import (
    ServerProcess,
    native_bridge_missing,
    one_server_per_frontend,
    start_server,
)
from tests.test_http_wire import HLEN, INFER, Response, Wire, binary_body, request, rows

NOT_BUILT = native_bridge_missing()

pytestmark = pytest.mark.skipif(bool(NOT_BUILT), reason=NOT_BUILT)
ARGS = ("--model-control-mode", "explicit", "--load-model", "mlp_dense")
# HTTP infers sent to the native server, by the path expected
SENT = {"native": 0, "python": 0}


@pytest.fixture(scope="module")
def servers(
    sample_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("http_front")
    with one_server_per_frontend(sample_repo, tmp, ARGS) as started:
        yield started


def _infer(header: dict | str, data: bytes, path: str = INFER, **headers: str) -> bytes:
    """A binary infer request: `header` (a dict, or JSON text as sent) then `data`."""
    text = (json.dumps(header) if isinstance(header, dict) else header).encode()
    headers.setdefault(HLEN, str(len(text)))
    return request("POST", path, text + data, **headers)


def _header(x: np.ndarray, **top: object) -> dict:
    body, size = binary_body(x, **top)
    return json.loads(body[:size])


def _key(resp: Response) -> tuple:
    return (resp.status, resp.headers.get("content-type"), resp.headers.get(HLEN.lower()),
            resp.body)  # fmt: skip


def _ask(srv: ServerProcess, raw: bytes) -> Response:
    with Wire(srv) as w:
        return w.call(raw)


def _same(servers: dict[str, ServerProcess], raw: bytes, path: str) -> Response:
    """`raw` to both servers: the same answer; the native one expected to take `path`."""
    native, python = _ask(servers["native"], raw), _ask(servers["python"], raw)
    SENT[path] += 1
    assert native.body == python.body, (native.body[:300], python.body[:300])
    assert _key(native)[:3] == _key(python)[:3], (native.headers, python.headers)
    return native


X1, X3, X17 = rows(1, 1), rows(3, 2), rows(17, 3)
UNICODE_ID = 'r\u00e9q"1\\n☃\t😀'


def _native_cases() -> list[bytes]:
    spaced = json.dumps(_header(X3, id="ws"), indent=3).replace(":", " \t:\r\n ")
    return [
        _infer(_header(X1), X1.tobytes()), _infer(_header(X3), X3.tobytes()),
        _infer(_header(X17), X17.tobytes()),
        _infer(_header(X3, outputs=[{"name": "y", "parameters": {"binary_data": True}}]),
               X3.tobytes()),
        _infer(_header(X3, parameters={"binary_data_output": True}), X3.tobytes()),
        _infer(_header(X1), X1.tobytes(), "/v2/models/mlp_dense/versions/1/infer"),
        _infer(_header(X1, id="req-1"), X1.tobytes()),
        _infer(_header(X1, id=UNICODE_ID), X1.tobytes()),  # \u escapes, surrogate pair
        _infer(json.dumps(_header(X1, id=UNICODE_ID), ensure_ascii=False), X1.tobytes()),
        _infer(" \n" + spaced + "\n\t ", X3.tobytes()),
        _infer(_header(X1, id="a\u0000b\u001f\u007f\u2028/"), X1.tobytes()),
        _infer(json.dumps(_header(X1)).replace('{"inputs"', '{"id": "a\\/b", "inputs"'),
               X1.tobytes()),
        _infer(_header(X1, id=""), X1.tobytes()), _infer(_header(X1, id="i" * 70000), X1.tobytes()),
        _infer(_header(X1, outputs=[], parameters={"binary_data_output": True}), X1.tobytes()),
        _infer(_header(X1, outputs=[{"name": "y"}], parameters={"binary_data_output": True}),
               X1.tobytes()),
        _infer(_header(X1), X1.tobytes(), **{HLEN: f"0{binary_body(X1)[1]}"}),
        # the header twice: the first counts, as in aiohttp
        _infer(_header(X1), X1.tobytes(), **{HLEN.lower(): str(binary_body(X1)[1]), HLEN: "5"}),
    ]  # fmt: skip


def _python_cases() -> list[bytes]:
    h1, data = _header(X1), X1.tobytes()
    inp = h1["inputs"][0]
    plain = json.dumps(h1)
    as_json = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256],
                           "data": X1.reshape(-1).tolist()}]}  # fmt: skip
    json_out = {**as_json, "outputs": [{"name": "y", "parameters": {"binary_data": False}}]}
    x65 = np.zeros((65, 256), np.float32)

    def edit(**fields: object) -> dict:
        return {**h1, "inputs": [{**inp, **fields}]}

    return [
        request("POST", INFER, json.dumps(as_json).encode()),
        request("POST", INFER, json.dumps(json_out).encode()),
        _infer({**h1, "outputs": [{"name": "y", "parameters": {"binary_data": False}}]}, data),
        _infer({"inputs": h1["inputs"]}, data),  # no outputs, no binary_data_output: JSON
        _infer({**h1, "outputs": [{"name": "z", "parameters": {"binary_data": True}}]}, data),
        _infer({**h1, "outputs": h1["outputs"] * 2}, data),  # the same output twice
        _infer(h1, data, "/v2/models/mlp_dense/versions/7/infer"),
        _infer(h1, data, "/v2/models/nope/infer"),
        _infer(edit(shape=[2, 128]), data),
        _infer(_header(x65), x65.tobytes()),  # over max_batch_size 64
        _infer(h1, data + b"\0\0\0\0"),  # bytes after the last input
        _infer(edit(parameters={"binary_data_size": X1.nbytes + 4}), data),
        request("POST", INFER, plain.encode() + data),  # no Inference-Header-Content-Length
        _infer(h1, data, **{HLEN: "12ab"}),
        _infer(h1, data, **{HLEN: str(len(plain) + X1.nbytes + 1)}),
        _infer(h1, data, **{HLEN: "9" * 30}),
        _infer({**h1, "parameters": {"priority": 1}}, data),
        _infer({**h1, "parameters": {"timeout": 5_000_000}}, data),
        _infer(edit(parameters={"binary_data_size": X1.nbytes, "shared_memory_region": "r"}),
               data),
        _infer(edit(datatype="FP64"), data),
        _infer(plain.replace('{"inputs"', '{"id": "a", "id": "b", "inputs"'), data),
        _infer({**h1, "id": 12}, data),
        _infer(plain[:-1], data),  # invalid JSON
        _infer(plain.replace("[1, 256]", "[1, NaN]"), data),
        _infer({**h1, "inputs": inp}, data),  # inputs not a list
        _infer(plain.replace('{"inputs"', '{"id": "a\\ud800b", "inputs"'), data),
        _infer(plain.replace('{"inputs"', '{"id": "a\tb", "inputs"'), data),  # raw tab
        _infer(plain.replace("[1, 256]", "[1.0, 256]"), data),
        _infer(plain.replace(f": {X1.nbytes}", f": {X1.nbytes}.0"), data),
        _infer(h1, data, **{HLEN: f"+{len(plain)}"}),
        _infer("\ufeff" + plain, data),  # a byte order mark
        _infer(h1, data, "/v2/models/mlp_dense/versions/01/infer"),
        _infer({**h1, "id": None}, data), _infer({**h1, "id": 1e300}, data),
        request("POST", INFER, b'{"id": "\xff", ' + plain[1:].encode() + data,
                **{HLEN: str(len(plain) + 12)}),  # not UTF-8
        _infer(plain.replace('{"inputs"', '{"zz": ' + "[" * 5000 + "]" * 5000 + ', "inputs"'),
               data),
    ]  # fmt: skip


def test_well_formed_binary_infers_answer_as_python(servers: dict[str, ServerProcess]) -> None:
    for i, raw in enumerate(_native_cases()):
        resp = _same(servers, raw, "native")
        assert resp.status == 200 and HLEN.lower() in resp.headers, (i, resp.body[:300])
    header, outputs = _ask(servers["native"], _native_cases()[7]).infer()
    assert header["id"] == UNICODE_ID
    SENT["native"] += 1
    np.testing.assert_allclose(outputs["y"], _session(servers["native"]).run(None, {"x": X1})[0],
                               atol=1e-5)  # fmt: skip


def _session(srv: ServerProcess) -> ort.InferenceSession:
    path = srv.repo / "mlp_dense" / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_unusual_requests_get_the_python_paths_answers(
    servers: dict[str, ServerProcess],
) -> None:
    statuses = [_same(servers, raw, "python").status for raw in _python_cases()]
    assert statuses[:4] == [200] * 4 and statuses.count(200) < len(statuses), statuses
    coded = _infer(_header(X1), X1.tobytes(), **{"Content-Encoding": "identity"})
    assert _same(servers, coded, "python").status == 200


def _counters(srv: ServerProcess) -> list[float]:
    m = _stats(srv)
    stats = [m["inference_count"], m["execution_count"]]
    stats += [m["inference_stats"][k]["count"] for k in ("success", "fail", "queue")]
    samples = conftest.parse_metrics(srv.scrape())
    return stats + [conftest.metric(samples, name, model="mlp_dense") for name in METRICS]


METRICS = ("nv_inference_request_success", "nv_inference_request_failure",
           "nv_inference_count", "nv_inference_exec_count")  # fmt: skip


def test_one_keep_alive_connection_mixing_both_paths(servers: dict[str, ServerProcess]) -> None:
    """Native and forwarded requests alternating on one connection: answers in order, each
    the python server's, and the same statistics and metrics deltas."""
    native, python = _native_cases(), _python_cases()
    mixed = [raw for pair in zip(native * 3, python, strict=False) for raw in pair]
    answers, deltas = {}, {}
    for name, srv in servers.items():
        before = _counters(srv)
        with Wire(srv) as w:
            answers[name] = [_key(w.call(raw)) for raw in mixed]
        deltas[name] = [a - b for a, b in zip(_counters(srv), before, strict=True)]
    assert answers["native"] == answers["python"]
    assert deltas["native"] == deltas["python"] and deltas["native"][2] >= len(mixed) // 2
    SENT["native"] += len(mixed) // 2
    SENT["python"] += len(mixed) // 2


def _stats(srv: ServerProcess) -> dict:
    client = httpclient.InferenceServerClient(srv.http_url)
    return client.get_inference_statistics("mlp_dense")["model_stats"][0]


def test_concurrent_http_and_grpc_infers_count_once(servers: dict[str, ServerProcess]) -> None:
    srv = servers["native"]
    before = _stats(srv)
    errors: list[BaseException] = []
    first_rows: dict[float, np.ndarray] = {}

    def http_worker(t: int) -> None:
        try:
            with Wire(srv) as w:
                for i in range(12):
                    n = 1 + (t + i) % 4
                    x = np.full((n, 256), t * 100 + i, np.float32)
                    _, out = w.call(_infer(_header(x), x.tobytes())).infer()
                    assert np.array_equal(out["y"], np.broadcast_to(out["y"][0], (n, 256)))
                    first_rows[t * 100 + i] = out["y"][0]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def grpc_worker() -> None:
        try:
            client = grpcclient.InferenceServerClient(srv.url)
            for i in range(24):
                inp = grpcclient.InferInput("x", [2, 256], "FP32")
                inp.set_data_from_numpy(np.full((2, 256), i, np.float32))
                assert client.infer("mlp_dense", [inp]).as_numpy("y").shape == (2, 256)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=http_worker, args=(t,)) for t in range(8)]
    threads.append(threading.Thread(target=grpc_worker))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    SENT["native"] += 96
    after = _stats(srv)
    http_rows = sum(1 + (t + i) % 4 for t in range(8) for i in range(12))
    assert after["inference_count"] - before["inference_count"] == http_rows + 24 * 2
    success = [s["inference_stats"]["success"]["count"] for s in (before, after)]
    assert success[1] - success[0] == 96 + 24
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"]
    assert after["execution_count"] > before["execution_count"]
    values = sorted(first_rows)
    want = _session(srv).run(None, {"x": np.repeat(np.array(values, np.float32)[:, None], 256, 1)})
    np.testing.assert_allclose([first_rows[v] for v in values], want[0], rtol=1e-5, atol=1e-4)


def test_expect_100_continue_and_connection_close(servers: dict[str, ServerProcess]) -> None:
    body, size = binary_body(X3)
    head = request("POST", INFER, None, **{"Content-Length": str(len(body)), HLEN: str(size),
                                           "Expect": "100-continue"})  # fmt: skip
    answers = {}
    for name, srv in servers.items():
        with Wire(srv) as w:
            interim = w.call(head)
            assert interim.status == 100 and interim.body == b"", name
            answers[name] = w.call(body)
            assert w.call(request("GET", "/v2/health/ready")).status == 200
    assert _key(answers["native"]) == _key(answers["python"])
    assert answers["native"].status == 200
    closing = request("POST", INFER, body, **{HLEN: str(size), "Connection": "close"})
    for name, srv in servers.items():
        with Wire(srv) as w:
            answers[name] = w.call(closing)
            assert w.closed(), name
    assert _key(answers["native"]) == _key(answers["python"])
    assert answers["native"].status == 200
    SENT["native"] += 2


def _json_infer(**headers: str) -> bytes:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256],
                        "data": X1.reshape(-1).tolist()}]}  # fmt: skip
    return request("POST", INFER, json.dumps(body).encode(), **headers)


def test_expect_100_continue_with_the_body_already_sent(servers: dict[str, ServerProcess]) -> None:
    requests = [_infer(_header(X1), X1.tobytes(), Expect="100-continue"),
                _json_infer(Expect="100-continue")]  # fmt: skip
    SENT["native"] += 1
    SENT["python"] += 1
    first = {name: [_ask(srv, raw).status for raw in requests] for name, srv in servers.items()}
    assert first["native"] == first["python"] == [100, 100]


def test_data_after_connection_close_is_ignored(servers: dict[str, ServerProcess]) -> None:
    """A deliberate difference: after a request with `Connection: close` the native front
    answers it and closes, ignoring what follows (RFC 9112, 9.6); aiohttp's parser answers the
    pair 400 "Data after `Connection: close`" instead."""
    requests = [_infer(_header(X1), X1.tobytes(), Connection="close"),
                _json_infer(Connection="close")]  # fmt: skip
    SENT["native"] += 1
    SENT["python"] += 1
    assert [_ask(servers["native"], raw + raw).status for raw in requests] == [200, 200]


def _http_counts(log: str) -> tuple[int, int] | None:
    found = re.search(r"HTTP infer requests: (\d+) served by native lanes, (\d+) by the Python",
                      log)  # fmt: skip
    return (int(found[1]), int(found[2])) if found else None


def test_without_a_private_socket_http_is_served_by_aiohttp(
    servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    """The front needs a Unix socket in TMPDIR; where it cannot have one (here: a path past
    AF_UNIX's 108 bytes), the server still starts and aiohttp serves HTTP, saying so."""
    long_tmp = tmp_path / ("t" * 120)
    long_tmp.mkdir()
    srv = start_server(servers["python"].repo, tmp_path, ("--grpc-frontend", "native", *ARGS),
                       env={"TMPDIR": str(long_tmp)})  # fmt: skip
    try:
        body, size = binary_body(X1)
        answer = _ask(srv, request("POST", INFER, body, **{HLEN: str(size)}))
        assert answer.status == 200 and HLEN.lower() in answer.headers
        assert "HTTP served by aiohttp alone" in srv.log_text()
        assert "via the python front" in srv.log_text()
    finally:
        assert srv.stop() == 0, srv.log_text()


def test_restricted_infer_needs_its_header(
    servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    body, size = binary_body(X1)
    without = request("POST", INFER, body, **{HLEN: str(size)})
    keyed = request("POST", INFER, body, **{HLEN: str(size), "infer-key": "s3cret"})
    answers: dict[str, list[Response]] = {}
    for frontend in ("native", "python"):
        srv = start_server(servers["python"].repo, tmp_path,
                           ("--grpc-frontend", frontend, *ARGS,
                            "--http-restricted-api", "inference:infer-key=s3cret"))  # fmt: skip
        try:
            answers[frontend] = [_ask(srv, without), _ask(srv, keyed)]
        finally:
            assert srv.stop() == 0
        if frontend == "native":
            assert _http_counts(srv.log_text()) == (1, 1), srv.log_text()
    refused, served = answers["native"]
    assert refused.status == 403
    assert refused.error() == "This API is restricted, expecting header 'infer-key'"
    assert served.status == 200 and HLEN.lower() in served.headers
    for a, b in zip(answers["native"], answers["python"], strict=True):
        assert _key(a) == _key(b)


def test_exit_log_counts_every_http_infer(servers: dict[str, ServerProcess]) -> None:
    """Run last in this module: it stops the native server to read its exit count."""
    srv = servers["native"]
    assert srv.stop() == 0, srv.log_text()
    want = (SENT["native"], SENT["python"])
    assert _http_counts(srv.log_text()) == (want if any(want) else None), srv.log_text()
