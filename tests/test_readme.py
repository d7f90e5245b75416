"""The README's code blocks run as written, top to bottom, against a freshly started server.

Every fenced block is executed unless the line before it says
``<!-- readme-test: skip, <reason> -->``; a skipped block must give its reason. Bash blocks run
under ``set -euo pipefail`` with ``curl --fail-with-body`` (an HTTP error fails the block), from the
repository root with the project's ``.venv/bin`` first on ``PATH``; Python blocks run in their own
interpreter (so the adapter the README registers stays out of this process). The server is the
real ``tta-server serve`` on a free port; the README's ``127.0.0.1:8000`` and ``localhost:8000``
point at it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.server_harness import free_port

REPO = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"(?:<!-- readme-test: (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    code: str
    skip: str | None


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(text):
        marker = match.group("marker")
        skip = None
        if marker is not None:
            assert marker.startswith("skip, ") and len(marker) > 12, f"a skip needs a reason: {marker!r}"
            skip = marker.removeprefix("skip, ")
        line = text[: match.start("code")].count("\n") + 1
        blocks.append(Block(line, match.group("lang"), match.group("code"), skip))
    return blocks


BLOCKS = readme_blocks((REPO / "README.md").read_text())


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    binary = Path(sys.executable).parent / "tta-server"
    process = subprocess.Popen(
        [str(binary), "serve", "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if httpx.get(f"http://{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else "server exited"
            assert time.monotonic() < deadline, "server not ready in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_every_block_is_run_or_says_why_not() -> None:
    assert len(BLOCKS) >= 10
    run = [b for b in BLOCKS if b.skip is None]
    assert len(run) >= 6 and {b.lang for b in run} == {"bash", "python"}
    assert all(b.lang in ("bash", "python") for b in BLOCKS)


def test_readme_blocks_run_in_order_against_a_fresh_server(server: str) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for block in (b for b in BLOCKS if b.skip is None):
        code = block.code.replace("127.0.0.1:8000", server).replace("localhost:8000", server)
        if block.lang == "bash":
            script = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; }\n' + code
            command = ["bash", "-c", script]
        else:
            command = [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"README.md line {block.line} ({block.lang}):\n{done.stdout}\n{done.stderr}"
        if block.lang == "bash" and "curl" in code:
            assert '"error"' not in done.stdout, f"README.md line {block.line}: {done.stdout}"


def test_the_sample_images_are_classified_as_named(server: str) -> None:
    files = [("files", (p.name, p.read_bytes())) for p in sorted((REPO / "examples").glob("*.*g"))]
    answer = httpx.post(f"http://{server}/v1/predict", files=files, headers={"X-Stream-Id": "samples"}).json()
    labels = [prediction["label"] for prediction in answer["predictions"]]
    assert labels == [p.stem for p in sorted((REPO / "examples").glob("*.*g"))]
