"""The contract every registered adapter keeps, checked by construction over list_adapters()."""

from __future__ import annotations

import math
import typing

import pytest
import torch
from pydantic import BaseModel
from torch import nn

from adapters import Adapter, InputError, SourceModel, list_adapters
from adapters import create_adapter as _create_adapter
from adapters.source_model import state_sha256
from tests.conftest import image_batch, make_tiny_source
from tests.helpers import FEWER_VIEWS

ADAPTERS = list_adapters()
_precision = ["fp32"]


@pytest.fixture(autouse=True, params=["fp32", "bf16"])
def precision(request: pytest.FixtureRequest) -> str:
    """Every contract holds in each compute precision."""
    _precision[0] = request.param
    return str(request.param)


def create_adapter(name: str, source: SourceModel, config: dict[str, object] | None = None) -> Adapter:
    return _create_adapter(name, source, {"precision": _precision[0], **FEWER_VIEWS.get(name, {}), **(config or {})})


def test_baselines_are_registered() -> None:
    assert {"source", "norm", "tent"} <= set(ADAPTERS)


def run(adapter, batches: list[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    return [adapter.forward_and_adapt(x) for x in batches]


@pytest.fixture
def batches() -> list[torch.Tensor]:
    return [image_batch(16, seed) for seed in range(4)]


@pytest.mark.parametrize("name", ADAPTERS)
def test_reset_is_bit_identical_to_a_fresh_adapter(
    name: str, tiny_source: SourceModel, batches: list[torch.Tensor]
) -> None:
    adapter = create_adapter(name, tiny_source)
    run(adapter, batches)
    adapter.reset()
    assert adapter.steps == 0
    fresh = create_adapter(name, tiny_source)
    for got, want in zip(run(adapter, batches), run(fresh, batches), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", ADAPTERS)
def test_state_dict_round_trip_gives_identical_outputs(
    name: str, tiny_source: SourceModel, batches: list[torch.Tensor]
) -> None:
    adapter = create_adapter(name, tiny_source)
    run(adapter, batches[:2])
    restored = create_adapter(name, tiny_source)
    restored.load_state_dict(adapter.state_dict())
    assert restored.steps == adapter.steps == 2
    for got, want in zip(run(restored, batches[2:]), run(adapter, batches[2:]), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", ADAPTERS)
def test_state_bytes_equals_the_per_stream_tensors(
    name: str, tiny_source: SourceModel, batches: list[torch.Tensor]
) -> None:
    adapter = create_adapter(name, tiny_source)
    run(adapter, batches[:2])
    tensors = adapter.state_dict()["tensors"]
    assert adapter.state_bytes() == sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.mark.parametrize("name", ADAPTERS)
def test_no_gradient_outlives_its_step(name: str, tiny_source: SourceModel, batches: list[torch.Tensor]) -> None:
    """Gradients are rebuilt by every step; kept between steps they would cost memory outside
    state_bytes, which the memory budget counts."""
    adapter = create_adapter(name, tiny_source)
    run(adapter, batches[:2])
    kept = [t for t in _cached_tensors(vars(adapter)) if t.grad is not None]
    assert not kept, f"{len(kept)} tensors keep a gradient after the step"


def _cached_tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, nn.Module):
        return [*value.parameters(), *value.buffers()]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _cached_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _cached_tensors(v)]
    return []


@pytest.mark.parametrize("name", ADAPTERS)
def test_frozen_parts_are_shared_and_never_modified(
    name: str, tiny_source: SourceModel, batches: list[torch.Tensor]
) -> None:
    before = state_sha256(tiny_source.module.state_dict())
    adapter = create_adapter(name, tiny_source)
    run(adapter, batches)
    assert state_sha256(tiny_source.module.state_dict()) == before
    shared = {t.data_ptr() for t in [*tiny_source.module.parameters(), *tiny_source.module.buffers()]}
    shared |= {t.data_ptr() for t in _cached_tensors(tiny_source.cache)}  # built once per model, for all streams
    own = {t.data_ptr() for t in adapter._state_tensors().values()}
    for module in (v for v in vars(adapter).values() if isinstance(v, nn.Module)):
        for tensor in [*module.parameters(), *module.buffers()]:
            assert tensor.data_ptr() in shared | own, (
                f"{name} holds a tensor that is neither shared nor per-stream state"
            )


@pytest.mark.parametrize("name", ADAPTERS)
def test_two_adapters_on_one_source_do_not_interact(
    name: str, tiny_source: SourceModel, batches: list[torch.Tensor]
) -> None:
    busy, quiet, reference = (create_adapter(name, tiny_source) for _ in range(3))
    other = [image_batch(16, 100 + i) * 0.5 for i in range(4)]
    interleaved = []
    for mine, theirs in zip(batches, other, strict=True):
        busy.forward_and_adapt(theirs)
        interleaved.append(quiet.forward_and_adapt(mine))
    for got, want in zip(interleaved, run(reference, batches), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", ADAPTERS)
def test_deterministic_under_a_seed(name: str, batches: list[torch.Tensor]) -> None:
    first = run(create_adapter(name, make_tiny_source(), {"seed": 3}), batches)
    second = run(create_adapter(name, make_tiny_source(), {"seed": 3}), batches)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ADAPTERS)
@pytest.mark.parametrize("batch_size", [1, 200])
def test_batch_sizes_1_and_200(name: str, batch_size: int, tiny_source: SourceModel, precision: str) -> None:
    # bf16 at 64: emulated bf16 (CPUs without AVX-512 BF16) made the 200-image cases 48 s of the suite
    batch_size = min(batch_size, 64) if precision == "bf16" else batch_size
    adapter = create_adapter(name, tiny_source)
    for seed in range(2):
        logits = adapter.forward_and_adapt(image_batch(batch_size, seed))
        assert logits.shape == (batch_size, 10)
        assert torch.isfinite(logits).all()
    assert adapter.predict(image_batch(batch_size, 5)).shape == (batch_size, 10)


@pytest.mark.parametrize("name", ADAPTERS)
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(2, 3, 16, 16), "expected shape"),
        (torch.zeros(3, 32, 32), "expected shape"),
        (torch.zeros(2, 1, 32, 32), "expected shape"),
        (torch.zeros(0, 3, 32, 32), "expected shape"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "dtype"),
        (torch.full((2, 3, 32, 32), float("nan")), "NaN"),
        (torch.full((2, 3, 32, 32), 255.0), "[0, 1]"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(
    name: str, bad: object, message: str, tiny_source: SourceModel
) -> None:
    adapter = create_adapter(name, tiny_source)
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        adapter.forward_and_adapt(bad)  # type: ignore[arg-type]
    assert adapter.steps == 0


@pytest.mark.parametrize("name", ADAPTERS)
def test_unknown_config_keys_are_refused(name: str, tiny_source: SourceModel) -> None:
    from adapters import AdapterError

    with pytest.raises(AdapterError, match="no_such_option"):
        create_adapter(name, tiny_source, {"no_such_option": 1})


@pytest.mark.parametrize("name", ADAPTERS)
def test_a_stream_continues_identically_through_the_snapshot_file_layout(name: str, tiny_source: SourceModel) -> None:
    """``OnlineStream`` (adapter + small-request buffer) through ``encode_state``/``decode_state``,
    the layout the snapshot store writes: the resumed stream answers exactly as the original."""
    from adapters import get_frozen_forward
    from adapters.online import OnlineStream
    from adapters.state_io import decode_state, encode_state

    frozen = get_frozen_forward(tiny_source, "torch")
    sizes = [8, 3, 2, 5, 2, 8]
    batches = [image_batch(n, seed) for seed, n in enumerate(sizes)]
    original = OnlineStream(create_adapter(name, tiny_source), 4, frozen)
    for x in batches[:2]:
        original.step(x)
    tensors, metadata = encode_state(original.state_dict())
    resumed = OnlineStream(create_adapter(name, tiny_source), 4, frozen)
    resumed.load_state_dict(decode_state(tensors, metadata))
    assert resumed.buffered_images == original.buffered_images == 3
    for x in batches[3:]:
        assert torch.equal(resumed.step(x), original.step(x))


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("name", ADAPTERS)
def test_adapting_works_inside_no_grad_and_inference_mode(name: str, context: str, tiny_source: SourceModel) -> None:
    """Serving code wraps inference in these; the step must neither fail nor change its answer."""
    plain, wrapped = create_adapter(name, tiny_source), create_adapter(name, tiny_source)
    batches = [image_batch(8, seed) for seed in range(2)]
    expected = [plain.forward_and_adapt(x) for x in batches]
    with getattr(torch, context)():
        got = [wrapped.forward_and_adapt(x.clone()) for x in batches]
    assert wrapped.steps == 2 and all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("cotta", {"n_augmentations": 10**6}),
        ("cotta", {"augment": {"views_per_pass": 10**6}}),
        ("petal", {"augment": {"blur_kernel": 10001}}),
        ("cotta", {"augment": {"blur_kernel": 4}}),
        ("vida", {"n_passes": 10**6}),
        ("vida", {"low_rank": 10**6}),
        ("vida", {"high_rank_factor": 1e6}),
        ("rmt", {"projection_dim": 10**9}),
    ],
)
def test_configs_that_would_exhaust_memory_are_refused(name: str, config: dict[str, object]) -> None:
    """A client's config sizes views, passes and layers: each is bounded, so a stream cannot ask
    for gigabytes of views in one pass or a billion-wide layer."""
    from adapters import AdapterError, get_adapter_class

    with pytest.raises(AdapterError, match="invalid config"):
        get_adapter_class(name).parse_config(config)


def _float_options(config: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], bool]]:
    """(path, is a pair) of every float option of a config, nested configs (optimizer, augment)
    included; a pair is a range such as ``brightness`` or Adam's ``betas``."""
    paths: list[tuple[tuple[str, ...], bool]] = []
    for key, field in config.model_fields.items():
        kinds = typing.get_args(field.annotation) or (field.annotation,)
        if float in kinds:
            paths.append(((*prefix, key), typing.get_origin(field.annotation) is tuple))
        paths += [
            path
            for kind in kinds
            if isinstance(kind, type) and issubclass(kind, BaseModel)
            for path in _float_options(kind, (*prefix, key))
        ]
    return paths


@pytest.mark.parametrize("name", ADAPTERS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_config_values_are_refused(name: str, value: float) -> None:
    """A client's NaN or infinite option (JSON NaN, or 1e999) never builds a stream: a NaN limit
    compares false and an infinite weight makes every step diverge, both silently."""
    from adapters import AdapterError, get_adapter_class

    config_class = get_adapter_class(name).Config
    paths = _float_options(config_class)
    assert paths or name in ("source", "norm", "tent")
    for path, pair in paths:
        config: dict[str, object] = {path[-1]: [0.5, value] if pair else value}
        for key in reversed(path[:-1]):
            config = {key: config}
        with pytest.raises(AdapterError, match="invalid config"):
            get_adapter_class(name).parse_config(config)
