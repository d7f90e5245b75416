"""Open Inference Protocol v2: server and model metadata, readiness, model config, statistics and
the repository index (what tritonclient's ``get_*`` calls read)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from tta_server import __version__
from tta_server.auth import API
from tta_server.codec.errors import ApiError
from tta_server.codec.oip import INPUT
from tta_server.deps import ServicesDep
from tta_server.routes.docs import OIP_ERRORS

router = APIRouter(prefix="/v2", tags=["open inference protocol"], responses=OIP_ERRORS, dependencies=API)


def check_model(services: ServicesDep, name: str, version: str | None = None) -> None:
    served = services.settings.model
    if name != served:
        raise ApiError(404, "unknown_model", f"model {name!r} is not served; this server serves {served!r}")
    if version not in (None, "", services.source.model_id):
        raise ApiError(404, "unknown_model", f"model {name!r} has version {services.source.model_id!r} only")


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {
        "name": "tta-server",
        "version": __version__,
        "extensions": ["binary_tensor_data", "sequence", "statistics"],
    }


@router.get("/models/stats")
@router.get("/models/{name}/stats")
@router.get("/models/{name}/versions/{version}/stats")
async def model_statistics(
    services: ServicesDep, name: str | None = None, version: str | None = None
) -> dict[str, Any]:
    if name is not None:
        check_model(services, name, version)
    return services.statistics.as_oip(services.settings.model, services.source.model_id)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(name: str, services: ServicesDep, version: str | None = None) -> dict[str, Any]:
    check_model(services, name, version)
    source = services.source
    height, width = source.preprocessing.input_size
    return {
        "name": name,
        "versions": [source.model_id],
        "platform": "pytorch",
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, 3, height, width]}],
        "outputs": [
            {"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, len(source.class_names)]},
            {"name": "CLASS", "datatype": "INT64", "shape": [-1]},
        ],
    }


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(name: str, services: ServicesDep, version: str | None = None) -> Response:
    check_model(services, name, version)
    return Response(status_code=200 if services.is_ready() else 503)


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def model_config(name: str, services: ServicesDep, version: str | None = None) -> dict[str, Any]:
    """The model configuration in Triton's JSON form (inputs, outputs, sequence batching)."""
    check_model(services, name, version)
    source, settings = services.source, services.settings
    height, width = source.preprocessing.input_size
    return {
        "name": name,
        "platform": "pytorch",
        "backend": "tta-server",
        "max_batch_size": settings.max_images_per_request,
        "input": [
            {"name": INPUT, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, height, width]},
        ],
        "output": [
            {"name": "PROBABILITIES", "data_type": "TYPE_FP32", "dims": [len(source.class_names)]},
            {"name": "CLASS", "data_type": "TYPE_INT64", "dims": [1]},
        ],
        "sequence_batching": {"max_sequence_idle_microseconds": int((settings.idle_timeout_s or 0) * 1e6)},
        "parameters": {"default_adapter": {"string_value": settings.default_adapter}},
    }


@router.post("/repository/index")
async def repository_index(services: ServicesDep) -> list[dict[str, Any]]:
    state = "READY" if services.is_ready() else "UNAVAILABLE"
    return [{"name": services.settings.model, "version": services.source.model_id, "state": state}]
