"""Limits enforced while the body streams in, on a real server, over raw sockets (chunked uploads)."""

from __future__ import annotations

import base64
import contextlib
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import pytest

from tests.helpers import png
from tests.server_harness import running_server
from tta_server import Settings

LIMIT = 256 * 1024
JSON_LIMIT = 16 * 1024  # the routes whose JSON bodies are parsed on the event loop
HEAD_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = Settings(
        default_adapter="norm",
        max_request_bytes=LIMIT,
        max_json_request_bytes=JSON_LIMIT,
        request_read_timeout_s=0.5,
        request_head_timeout_s=HEAD_TIMEOUT_S,
        min_adapt_batch=4,
    )
    with running_server(settings) as base:
        yield base


def chunked_upload(
    url: str, path: str, content_type: str, chunks: Iterator[bytes], budget: int, extra: str = ""
) -> tuple[int, int]:
    """Send a chunked body until the server answers (or ``budget`` bytes went out); returns
    (status, bytes sent)."""
    address = urlparse(url)
    sock = socket.create_connection((address.hostname, address.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)  # little hidden in kernel buffers
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n{extra}Transfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode())
    sent = 0
    sock.setblocking(False)
    response = b""
    try:
        for chunk in chunks:
            with contextlib.suppress(BlockingIOError):
                response += sock.recv(65536)
            if response or sent > budget:
                break
            try:
                sock.setblocking(True)
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sock.setblocking(False)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.setblocking(True)
        sock.settimeout(10)
        while b"\r\n\r\n" not in response:
            data = sock.recv(65536)
            if not data:
                break
            response += data
    finally:
        sock.close()
    return int(response.split(b" ", 2)[1]), sent


def endless(chunk: bytes) -> Iterator[bytes]:
    while True:
        yield chunk


@pytest.mark.parametrize(
    ("path", "content_type", "first", "extra"),
    [
        ("/v1/predict", "application/json", b'{"images": ["', ""),
        (
            "/v1/predict",
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n',
            "",
        ),
        ("/v1/predict", "application/octet-stream", b"\x00", "X-Tensor-Shape: 1,32,32,3\r\nX-Tensor-Dtype: uint8\r\n"),
        ("/v2/models/cifar10-airbench/infer", "application/json", b'{"inputs": [', ""),
    ],
)
def test_an_oversized_chunked_upload_is_refused_early(
    url: str, path: str, content_type: str, first: bytes, extra: str
) -> None:
    chunks = (first if i == 0 else b"A" * 16384 for i in range(10**6))
    status, sent = chunked_upload(url, path, content_type, chunks, budget=256 * LIMIT, extra=extra)
    # the answer came while the client was still sending, soon after the limit (not after 64 MiB)
    assert status == 413 and sent < 16 * LIMIT


def test_a_declared_length_over_the_limit_is_refused_before_the_body(url: str) -> None:
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {10 * LIMIT}\r\n\r\n".encode())
        response = b""
        while data := sock.recv(65536):  # the server closes the connection after its answer
            response += data
    assert response.startswith(b"HTTP/1.1 413") and b"max_request_bytes" in response


def test_a_stalled_upload_times_out(url: str) -> None:
    def stalling() -> Iterator[bytes]:
        yield b'{"images": ['
        time.sleep(2)  # longer than request_read_timeout_s
        yield b"]}"

    started = time.monotonic()
    status, _ = chunked_upload(url, "/v1/predict", "application/json", stalling(), budget=LIMIT)
    assert status == 408 and time.monotonic() - started < 5


def test_slow_and_silent_heads_are_cut_and_the_server_keeps_serving(url: str) -> None:
    """Slowloris: connections that never finish their headers (or send nothing, or trickle a byte
    at a time) would otherwise be held forever and use up the server's file descriptors."""
    address = urlparse(url)

    def connect(first: bytes) -> socket.socket:
        sock = socket.create_connection((address.hostname, address.port), timeout=10)
        sock.sendall(first)
        return sock

    partial = [connect(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n") for _ in range(50)]
    silent = [connect(b"") for _ in range(50)]
    trickler = connect(b"G")
    started = time.monotonic()
    for byte in b"ET /health/live HTTP/1.1\r\nX-Slow: 1":  # each byte resets uvicorn's keep-alive timer
        with contextlib.suppress(OSError):
            trickler.sendall(bytes([byte]))
        time.sleep(0.1)
        if time.monotonic() - started > 3 * HEAD_TIMEOUT_S:
            break
    assert httpx.get(f"{url}/health/live", timeout=10).status_code == 200  # serving meanwhile
    for sock in [*partial, *silent, trickler]:
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(65536):  # the server closes the connection after its answer
                answer += data
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer
    assert time.monotonic() - started < 10


def test_the_head_deadline_spares_idle_keep_alive_and_slow_bodies(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/health/live").status_code == 200
        time.sleep(HEAD_TIMEOUT_S + 0.5)  # idle between requests: uvicorn's keep-alive timeout applies
        assert client.get("/health/live").status_code == 200

    address = urlparse(url)
    payload = f'{{"images": ["{base64.b64encode(png(1)).decode()}"]}}'.encode()
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(payload), len(payload) // 8 + 1):
            time.sleep(0.3)  # within request_read_timeout_s, longer than the head deadline in all
            chunk = payload[i : i + len(payload) // 8 + 1]
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("path", ["/v1/streams/cam/feedback", "/v1/streams"])
def test_json_routes_take_small_bodies_only(url: str, path: str) -> None:
    """A 29 MiB feedback body (15 million labels) held the event loop for 0.7 s while it was parsed:
    every other request and the health probes waited."""
    labels = ",".join(["0"] * (JSON_LIMIT // 2))
    body = f'{{"items": [{{"request_id": "r", "labels": [{labels}]}}]}}'.encode()
    assert JSON_LIMIT < len(body) < LIMIT
    refused = httpx.post(f"{url}{path}", content=body, headers={"content-type": "application/json"})
    assert refused.status_code == 413 and "max_json_request_bytes" in refused.json()["error"]["message"]
    chunks = (body[:100] if i == 0 else b"0," * 8192 for i in range(10**6))
    status, sent = chunked_upload(url, path, "application/json", chunks, budget=4096 * JSON_LIMIT)
    assert status == 413 and sent < 256 * JSON_LIMIT  # refused while it streamed in (kernel buffers hide some)
    # images are not JSON parsed on the loop: the larger limit holds for them
    files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(24)]
    predicted = httpx.post(f"{url}/v1/predict", files=files, timeout=60)
    assert predicted.status_code == 200 and JSON_LIMIT < sum(len(png(i)) for i in range(24)) < LIMIT


def test_requests_within_the_limit_still_work(url: str) -> None:
    files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(4)]
    assert httpx.post(f"{url}/v1/predict", files=files, timeout=60).status_code == 200


def test_graceful_shutdown_does_not_wait_forever_on_a_slow_upload() -> None:
    import signal
    import subprocess
    import sys

    from tests.server_harness import free_port

    port = free_port()
    command = [sys.executable, "-m", "tta_server.cli", "serve", "--port", str(port), "--adapter", "norm"]
    command += ["--graceful-shutdown-s", "1", "--request-read-timeout-s", "600"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            sock.sendall(b'Content-Length: 100000\r\n\r\n{"images": [')  # and then nothing more
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            process.wait(timeout=30)
            assert time.monotonic() - started < 10
    finally:
        process.kill()
        process.wait()


def test_bodies_in_flight_are_bounded_and_a_request_beyond_is_shed_at_once() -> None:
    """A burst of large uploads is shed (503 overloaded, Retry-After) before its bodies are read,
    while small requests and probes pass; the room comes back when the uploads end."""
    settings = Settings(
        default_adapter="norm", max_request_bytes=LIMIT, max_inflight_request_bytes=2 * LIMIT, min_adapt_batch=4
    )
    with running_server(settings) as url:
        address = urlparse(url)

        def upload(declared: int, body: bytes) -> socket.socket:
            sock = socket.create_connection((address.hostname, address.port), timeout=10)
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            sock.sendall(f"Content-Length: {declared}\r\n\r\n".encode() + body)
            return sock

        silent = [upload(250 * 1024, b"") for _ in range(4)]  # declare 1000 KiB, send nothing: hold nothing
        time.sleep(0.3)
        large = httpx.post(
            f"{url}/v1/predict", content=b"x" * (LIMIT - 1), headers={"Content-Type": "application/json"}
        )
        assert large.status_code == 400 and large.json()["error"]["code"] != "overloaded", large.text  # not JSON
        holders = [upload(250 * 1024, b'{"images": [' + b" " * (200 * 1024 - 12)) for _ in range(2)]
        time.sleep(0.3)  # 400 of 512 KiB received and held
        shed = httpx.post(f"{url}/v1/predict", content=b"x" * (LIMIT - 1), headers={"Content-Type": "application/json"})
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1", shed.text
        assert shed.json()["error"]["code"] == "overloaded" and "max_inflight_request_bytes" in shed.text
        chunks = endless(b"x" * 16384)  # a chunked body is counted as it arrives
        assert chunked_upload(url, "/v1/predict", "application/json", chunks, budget=LIMIT)[0] == 503
        small = [("files", (f"{i}.png", png(i), "image/png")) for i in range(4)]
        assert httpx.post(f"{url}/v1/predict", files=small, timeout=60).status_code == 200
        assert httpx.get(f"{url}/health/live").status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
        assert "tta_refused_requests_overloaded_total 2.0" in metrics
        assert f"tta_request_body_in_flight_bytes {float(2 * 200 * 1024)}" in metrics
        for sock in holders + silent:
            sock.close()
        time.sleep(0.3)
        again = httpx.post(f"{url}/v1/predict", files=small, timeout=60)
        assert again.status_code == 200 and "tta_request_body_in_flight_bytes 0.0" in httpx.get(f"{url}/metrics").text


def test_an_inflight_bound_below_the_largest_request_is_refused() -> None:
    with pytest.raises(ValueError, match="could never be admitted"):
        Settings(max_request_bytes=LIMIT, max_inflight_request_bytes=LIMIT - 1)


def test_a_trickling_upload_cannot_hold_its_room_past_the_body_deadline() -> None:
    """Most of a large body sent at once, then a byte at a time, each within the read timeout: cut
    at the whole-body deadline, and the bytes it held are free for other uploads again."""
    settings = Settings(
        default_adapter="norm",
        max_request_bytes=LIMIT,
        max_inflight_request_bytes=LIMIT,
        request_read_timeout_s=1.5,
        request_body_timeout_s=2.0,
        min_adapt_batch=4,
    )
    with running_server(settings) as url:
        address = urlparse(url)
        sock = socket.create_connection((address.hostname, address.port), timeout=10)
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(f"Content-Length: {LIMIT}\r\n\r\n".encode() + b'{"images": [' + b" " * (200 * 1024))
        time.sleep(0.3)
        shed = httpx.post(
            f"{url}/v1/predict", content=b" " * (LIMIT // 2), headers={"Content-Type": "application/json"}
        )
        assert shed.status_code == 503, shed.text  # the trickler holds 200 KiB of the 256
        started, answer = time.monotonic(), b""
        sock.setblocking(False)
        while not answer and time.monotonic() - started < 10:
            with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                sock.sendall(b" ")  # a byte every 0.5 s: never stalls for the read timeout
            time.sleep(0.5)
            with contextlib.suppress(BlockingIOError):
                answer = sock.recv(65536)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408") and b"not complete within 2.0 s" in answer, answer
        assert time.monotonic() - started < 4
        assert "tta_request_body_in_flight_bytes 0.0" in httpx.get(f"{url}/metrics").text
        again = httpx.post(
            f"{url}/v1/predict", content=b" " * (LIMIT // 2), headers={"Content-Type": "application/json"}
        )
        assert again.status_code == 400 and again.json()["error"]["code"] != "overloaded", again.text
