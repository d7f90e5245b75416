"""Online test-time adapters over a shared frozen source model, and the model zoo."""

from adapters import methods as _methods  # noqa: F401  (registers the built-in adapters)
from adapters.adapter_registry import create_adapter, get_adapter_class, list_adapters, register_adapter
from adapters.artefacts import ArtefactStore, SourceData, list_artefacts, prepare_artefacts, register_artefact
from adapters.base import Adapter, AdapterConfig
from adapters.errors import AdapterError, CheckpointError, InputError, MissingArtefactError
from adapters.frozen import create_frozen_forward, export_onnx, get_frozen_forward
from adapters.models.zoo import BUNDLED_MODEL, create_source_model, list_models, register_model
from adapters.source_model import Preprocessing, SourceModel

__all__ = [
    "BUNDLED_MODEL",
    "Adapter",
    "AdapterConfig",
    "AdapterError",
    "ArtefactStore",
    "CheckpointError",
    "InputError",
    "MissingArtefactError",
    "Preprocessing",
    "SourceData",
    "SourceModel",
    "create_adapter",
    "create_frozen_forward",
    "create_source_model",
    "export_onnx",
    "get_adapter_class",
    "get_frozen_forward",
    "list_adapters",
    "list_artefacts",
    "list_models",
    "prepare_artefacts",
    "register_adapter",
    "register_artefact",
    "register_model",
]
