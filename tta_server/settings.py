"""Server settings: ``TTA_*`` environment variables, an optional YAML/TOML file, CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from adapters.errors import describe_validation
from adapters.guard_config import GuardConfig
from adapters.models.zoo import BUNDLED_MODEL
from tta_server.streams.ids import validate_stream_id


class Settings(BaseSettings):
    """Everything the server reads at start-up; validated before the model loads."""

    model_config = SettingsConfigDict(env_prefix="TTA_", env_nested_delimiter="__", extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in a container)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    model: str = Field(BUNDLED_MODEL, description="registered model name (see adapters.list_models())")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="arguments of the model factory")
    default_adapter: str = Field("tent", description="adapter of streams created on first use (GET /v1/adapters)")
    default_adapter_config: dict[str, Any] = Field(
        default_factory=dict, description='its config, e.g. {"optimizer": {"lr": 5e-4}}'
    )
    default_stream: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
        description="the stream of requests without X-Stream-Id (or OIP sequence_id): all of them share "
        "this one adapting stream",
    )
    auto_create_streams: bool = Field(
        True,
        description="predict on an unknown stream id creates it with the default adapter (false: 404, "
        "streams are created only through POST /v1/streams)",
    )
    device: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda(:[0-9]+)?)$",
        description="torch device of the model and all adaptation: cpu, cuda or cuda:N (frozen forwards "
        "run in torch there; ONNX Runtime serves them on the CPU)",
    )
    max_streams: int = Field(1024, ge=1, description="streams held in memory at once; more are refused with 503")
    max_streams_total: int = Field(
        65536,
        ge=1,
        description="streams in memory and spilled to snapshot_dir together (with replica_id: every snapshot in the "
        "shared store): a new stream beyond is refused with 503, so clients inventing stream ids cannot fill the disk",
    )
    memory_budget_bytes: int | None = Field(
        None,
        ge=1,
        description="per-stream states plus the working memory of running steps; idle streams beyond it "
        "go to snapshot_dir, steps wait or get 503 (none: no limit)",
    )
    memory_wait_s: float = Field(
        30.0,
        ge=0,
        description="with memory_budget_bytes: how long a step waits for running steps to free working "
        "memory before it is refused with 503",
    )
    max_adapter_configs: int = Field(
        32,
        ge=1,
        description="with memory_budget_bytes: distinct adapter configs whose working memory is measured (each "
        "measurement pauses every step for seconds); a stream with one more gets 503 stream_limit",
    )
    idle_timeout_s: float | None = Field(
        None, gt=0, description="streams unused this long leave memory: to snapshot_dir if set, else dropped"
    )
    max_batch_size: int = Field(256, ge=1, description="dynamic batching: most images grouped into one step")
    max_delay_ms: float = Field(
        0.0, ge=0, description="dynamic batching: how long a stream's first request waits for more (0: off)"
    )
    snapshot_dir: Path | None = Field(
        None, description="stream snapshots: written on request and at shutdown, restored at start (none: off)"
    )
    snapshot_interval_s: float = Field(
        60.0, ge=0, description="with snapshot_dir: snapshot streams that changed every this many seconds (0: off)"
    )
    verify_restored_snapshots: bool = Field(
        True,
        description="with snapshot_dir: after start, verify every restored snapshot in full in the background, "
        "one file at a time, so a file damaged inside is quarantined and counted before a request wakes it",
    )
    verify_snapshots_interval_s: float = Field(
        0.0,
        ge=0,
        description="with snapshot_dir: verify every spilled stream's snapshot in full again this often (0: off), "
        "so a file damaged after it was written is found before its stream wakes; one read of each file per pass",
    )
    replica_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
        description="this replica's name among replicas sharing snapshot_dir (e.g. the pod name); set, each "
        "stream is active on one replica at a time and moves between them through the store (none: one replica)",
    )
    lease_ttl_s: float = Field(
        15.0, gt=0, description="with replica_id: a killed replica's streams move to others after this long"
    )
    handover_wait_s: float = Field(
        10.0, ge=0, description="with replica_id: how long a request waits for another replica to hand its stream over"
    )
    api_tokens: list[str] = Field(
        default_factory=list, description="bearer tokens for every route but health (none: open)"
    )
    admin_tokens: list[str] = Field(
        default_factory=list,
        description="bearer tokens that may also create, reset, delete, snapshot and restore streams and start "
        "or end OIP sequences (none: every api token may)",
    )
    source_signals: bool = Field(
        True,
        description="compare every step's predictions with the frozen source model's (source agreement, ATC "
        "estimates); costs one forward of the source model per step (in fp32 about a Tent step on a CPU)",
    )
    signal_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="precision of the source forward behind the signals (with source_signals; for a model with "
        "BatchNorm): bf16 is faster on a CPU or GPU with native bf16 (benchmarks/results/signal_precision.md), "
        "slower where it is emulated",
    )
    signal_window_steps: int = Field(20, ge=1, description="steps per window of a stream's signals (their trend)")
    dropout_estimate: bool = Field(
        False,
        description="AETTA-style dropout-disagreement accuracy estimate per step (signal dropout_accuracy; adapters "
        "with a captured feature space: norm, tent, cotta, petal, rmt); 10 extra classifier passes per step",
    )
    guard: dict[str, Any] = Field(
        default_factory=dict,
        description='collapse guard of streams created without one, e.g. {"policy": "reset", "thresholds": '
        '[{"signal": "majority_share", "above": 0.5}], "reset_every_steps": 1000}; none by default',
    )
    feedback_max_requests: int = Field(
        10_000, ge=1, description="predictions kept for POST /v1/streams/{id}/feedback (oldest dropped first)"
    )
    shutdown_snapshot_timeout_s: float = Field(
        60.0, gt=0, description="with snapshot_dir: the longest shutdown spends snapshotting streams"
    )
    persistence_failure_grace_s: float = Field(
        300.0, gt=0, description="with snapshot_dir: readiness turns false while snapshots keep failing this long"
    )
    metrics_open: bool = Field(False, description="serve /metrics without a token even when api_tokens are set")
    metrics_streams: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="stream ids that get their own series on /metrics (tta_stream_*; bounded: at most 100)",
    )
    max_images_per_request: int = Field(256, ge=1, description="more images in one request: 413")
    max_request_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1,
        description="images and tensors (/v1/predict, OIP infer): refused while the body streams in (413)",
    )
    max_json_request_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1,
        description="every other route's body (stream configs, feedback): JSON parsed on the event loop, about "
        "25 ms per MiB, so kept small (413)",
    )
    max_inflight_request_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="the bodies of all requests in flight together (at least max_request_bytes): a request that "
        "does not fit now is shed with 503 overloaded and Retry-After, not buffered until memory runs out",
    )
    request_read_timeout_s: float = Field(30.0, gt=0, description="a body stalling this long between chunks: 408")
    request_body_timeout_s: float = Field(
        300.0,
        gt=0,
        description="a whole body taking longer than this: 408 (a largest request needs about 110 KB/s); bounds "
        "how long a trickling upload holds max_inflight_request_bytes",
    )
    request_head_timeout_s: float = Field(
        30.0, gt=0, description="a request line and headers taking longer than this: 408 and the connection closed"
    )
    graceful_shutdown_s: float = Field(
        30.0, gt=0, description="on SIGTERM, how long in-flight requests may take before they are cut"
    )
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="refuse larger images (decompression bombs)")
    max_request_pixels: int = Field(
        2**27,
        ge=1,
        description="the pixels of one request's images together (at least max_image_pixels): decoding time "
        "grows with pixels, not bytes, so more gets 413 too_many_pixels before it is decoded",
    )
    top_k: int = Field(5, ge=1, description="labels and probabilities returned per image")
    workers: int = Field(2, ge=1, description="threads running model work off the event loop")
    min_adapt_batch: int = Field(
        16,
        ge=1,
        description="requests with fewer images are predicted with the stream's recent images as context "
        "and buffered; the stream adapts once this many have accumulated (BatchNorm-based methods fail "
        "on tiny batches)",
    )
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (none: torch's default)")
    log_level: str = Field(
        "info", description="critical, error, warning, info or debug", pattern=r"^(critical|error|warning|info|debug)$"
    )
    log_format: str = Field(
        "text", pattern=r"^(text|json)$", description="access and server logs as text or JSON lines"
    )
    config_file: Path | None = Field(None, description="YAML or TOML file with these settings")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, values: Any) -> Any:
        if isinstance(values, dict):
            unknown = sorted(set(values) - set(cls.model_fields))
            if unknown:
                raise ValueError(
                    f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(cls.model_fields)}"
                )
        return values

    @model_validator(mode="after")
    def _largest_request_can_be_admitted(self) -> Settings:
        if self.max_inflight_request_bytes < self.max_request_bytes:
            raise ValueError(
                f"max_inflight_request_bytes={self.max_inflight_request_bytes} is below max_request_bytes="
                f"{self.max_request_bytes}: the largest request allowed could never be admitted"
            )
        if self.max_request_pixels < self.max_image_pixels:
            raise ValueError(
                f"max_request_pixels={self.max_request_pixels} is below max_image_pixels={self.max_image_pixels}: "
                "the largest image allowed could never be decoded"
            )
        return self

    @model_validator(mode="after")
    def _model_and_adapter_exist(self) -> Settings:
        """A misspelt model, model argument, adapter or adapter option fails here, in one line,
        not as a start-up traceback after the server began loading."""
        import inspect

        from adapters import get_adapter_class
        from adapters.models.zoo import MODELS

        try:
            factory = MODELS.get(self.model)
            inspect.signature(factory).bind(**self.model_kwargs)
            adapter = get_adapter_class(self.default_adapter)
        except KeyError as exc:  # the registries' UnknownNameError, naming what is registered
            raise ValueError(exc.args[0]) from None
        except TypeError as exc:
            raise ValueError(f"model_kwargs for model {self.model!r}: {exc}") from None
        try:
            adapter.Config.model_validate(self.default_adapter_config)
        except ValidationError as exc:
            problems = describe_validation(exc.errors())
            raise ValueError(f"default_adapter_config for {self.default_adapter!r}: {problems}") from None
        return self

    @field_validator("device")
    @classmethod
    def _device_exists(cls, value: str) -> str:
        if value.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"device {value!r}: CUDA is not available here (no GPU, or a CPU-only torch build)")
            index = int(value.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise ValueError(f"device {value!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return value

    @field_validator("metrics_streams")
    @classmethod
    def _stream_ids(cls, value: list[str]) -> list[str]:
        for stream_id in value:
            validate_stream_id(stream_id)
        return value

    @field_validator("guard")
    @classmethod
    def _guard_is_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        return GuardConfig.model_validate(value).model_dump(mode="json", exclude_defaults=True)

    @field_validator("config_file")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"config file {value} does not exist")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        file = _config_file_from(init_settings, env_settings)
        if file is not None:
            if file.suffix in (".yaml", ".yml"):
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=file))
            elif file.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=file))
            else:
                raise ValueError(f"config file {file}: expected .yaml, .yml or .toml")
        return tuple(sources)


def _config_file_from(*sources: PydanticBaseSettingsSource) -> Path | None:
    for source in sources:
        value = source().get("config_file")
        if value:
            return Path(value)
    return None
