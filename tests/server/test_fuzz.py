"""Fuzzing the public surface with a fixed example budget: schemathesis over the OpenAPI document
(no 5xx, responses conform to the documented statuses and schemas) and hypothesis for the binary
bodies the schema cannot describe (raw tensors, OIP binary data)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server_harness import running_server
from tta_server import Settings

EXAMPLES = int(os.environ.get("TTA_FUZZ_EXAMPLES", "25"))  # per operation; raise it for a longer run
MODEL = "cifar10-airbench"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = Settings(default_adapter="norm", min_adapt_batch=2, max_images_per_request=4, max_request_bytes=1 << 20)
    with running_server(server) as base:
        yield base


@pytest.fixture(scope="module")
def api_schema(url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


CHECKS = (status_code_conformance, content_type_conformance, response_schema_conformance)


def test_generated_requests_never_get_a_5xx_and_match_the_schema(api_schema: schemathesis.BaseSchema) -> None:
    statuses: Counter[int] = Counter()
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def call(case: schemathesis.Case) -> None:
            response = case.call(timeout=60)
            statuses[response.status_code] += 1
            assert response.status_code < 500, (
                f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
            )
            case.validate_response(response, checks=CHECKS)

        call()
    print(f"schemathesis: {sum(statuses.values())} cases, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= EXAMPLES and not [s for s in statuses if s >= 500]


dimensions = st.lists(st.integers(min_value=-2, max_value=2**63), min_size=0, max_size=6)


@settings(max_examples=4 * EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.binary(max_size=4096),
    shape=st.one_of(dimensions.map(lambda d: ",".join(map(str, d))), st.text(max_size=20)),
    dtype=st.sampled_from(["uint8", "float32", "FLOAT32", "int8", "", "uint8\x00"]),
)
def test_raw_tensor_bodies_never_get_a_5xx(url: str, body: bytes, shape: str, dtype: str) -> None:
    headers = {"content-type": "application/octet-stream", "x-tensor-shape": shape, "x-tensor-dtype": dtype}
    try:
        response = httpx.post(f"{url}/v1/predict", content=body, headers=headers, timeout=60)
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        return  # the client refuses to send such a header at all
    assert 200 <= response.status_code < 500 and response.json()


@settings(max_examples=4 * EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    shape=dimensions,
    datatype=st.sampled_from(["FP32", "UINT8", "INT64", "BYTES", 7]),
    tail=st.binary(max_size=2048),
    size=st.one_of(st.none(), st.integers(min_value=-5, max_value=10**12), st.text(max_size=5)),
    split=st.one_of(st.none(), st.integers(min_value=-3, max_value=5000).map(str), st.text(max_size=6)),
    parameters=st.dictionaries(
        st.sampled_from(["sequence_id", "sequence_start", "sequence_end", "x"]),
        st.one_of(st.integers(), st.booleans(), st.text(max_size=8), st.none()),
    ),
)
def test_oip_binary_bodies_never_get_a_5xx(
    url: str,
    shape: list[int],
    datatype: object,
    tail: bytes,
    size: object,
    split: str | None,
    parameters: dict[str, object],
) -> None:
    spec: dict[str, object] = {"name": "INPUT", "datatype": datatype, "shape": shape}
    if size is not None:
        spec["parameters"] = {"binary_data_size": size}
    header = json.dumps({"inputs": [spec], "parameters": parameters}).encode()
    headers = {"Inference-Header-Content-Length": split if split is not None else str(len(header))}
    try:
        response = httpx.post(f"{url}/v2/models/{MODEL}/infer", content=header + tail, headers=headers, timeout=60)
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        return
    assert 200 <= response.status_code < 500
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)
