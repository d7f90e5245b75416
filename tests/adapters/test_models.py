"""The model zoo loads public checkpoint layouts exactly and refuses what does not match."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adapters import AdapterError, CheckpointError, create_adapter, create_source_model, list_models
from adapters.models.resnet import resnet50
from adapters.models.wide_resnet import WideResNet
from tests.conftest import image_batch, make_tiny_source


def test_registry_lists_the_zoo() -> None:
    assert {"cifar10-airbench", "wrn28-10-cifar10", "resnet50-imagenet", "torchscript", "onnx"} <= set(list_models())


def test_unknown_model_names_the_registered_ones() -> None:
    with pytest.raises(KeyError, match=r"registered: .*cifar10-airbench"):
        create_source_model("no-such-model")


@pytest.fixture(scope="module")
def wrn_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return WideResNet(depth=28, widen_factor=10).state_dict()


def test_wrn_has_robustbench_parameter_names(wrn_state: dict[str, torch.Tensor]) -> None:
    for key in (
        "conv1.weight",
        "block1.layer.0.bn1.running_mean",
        "block1.layer.0.convShortcut.weight",
        "block2.layer.3.conv2.weight",
        "block3.layer.0.convShortcut.weight",
        "bn1.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert key in wrn_state
    assert "block1.layer.1.convShortcut.weight" not in wrn_state
    assert sum(v.numel() for k, v in wrn_state.items() if "running" not in k and "num_batches" not in k) == 36_479_194


def test_wrn_loads_a_robustbench_style_checkpoint(tmp_path: Path, wrn_state: dict[str, torch.Tensor]) -> None:
    # RobustBench stores {"state_dict": {"module.<name>": tensor}} (DataParallel prefix).
    path = tmp_path / "Standard.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in wrn_state.items()}}, path)
    source = create_source_model("wrn28-10-cifar10", checkpoint=path)
    assert source.preprocessing.mean == (0.0, 0.0, 0.0) and source.preprocessing.std == (1.0, 1.0, 1.0)
    assert torch.equal(source.module.net.fc.weight, wrn_state["fc.weight"])
    reference = WideResNet(depth=28, widen_factor=10)
    reference.load_state_dict(wrn_state)
    x = image_batch(2)
    torch.testing.assert_close(source.module(x), reference.eval()(x))


def test_resnet50_loads_torchvision_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = resnet50().state_dict()
    for key in (
        "conv1.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_var",
        "layer4.2.bn3.bias",
        "fc.weight",
        "fc.bias",
    ):
        assert key in state
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == 25_557_032
    path = tmp_path / "resnet50.safetensors"
    save_file(state, str(path))
    source = create_source_model("resnet50-imagenet", checkpoint=path)
    assert source.input_shape == (3, 224, 224)
    assert source.preprocessing.resize == "resize_center_crop" and source.preprocessing.resize_size == 256
    assert source.module(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


def test_mismatched_checkpoint_lists_the_problems(tmp_path: Path, wrn_state: dict[str, torch.Tensor]) -> None:
    broken = dict(wrn_state)
    del broken["fc.bias"]
    broken["extra.weight"] = torch.zeros(1)
    broken["fc.weight"] = torch.zeros(5, 640)
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path))
    with pytest.raises(
        CheckpointError, match=r"1 missing \(e.g. fc.bias\).*1 unexpected \(e.g. extra.weight\).*fc.weight"
    ):
        create_source_model("wrn28-10-cifar10", checkpoint=path)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        create_source_model("wrn28-10-cifar10", checkpoint=tmp_path / "absent.pt")


def test_pickled_modules_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole module, not a state dict
    with pytest.raises(CheckpointError, match="weights-only"):
        create_source_model("wrn28-10-cifar10", checkpoint=path)


def test_torchscript_file_matches_the_eager_model(tmp_path: Path) -> None:
    tiny = make_tiny_source()
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.trace(tiny.module.net.eval(), torch.rand(2, 3, 32, 32)), str(path))
    source = create_source_model(
        "torchscript",
        path=path,
        input_size=(32, 32),
        class_names=tiny.class_names,
        mean=tiny.preprocessing.mean,
        std=tiny.preprocessing.std,
    )
    x = image_batch(4)
    torch.testing.assert_close(source.module(x), tiny.module(x))
    assert create_adapter("source", source, {"backend": "torch"}).forward_and_adapt(x).shape == (4, 10)
    with pytest.raises(AdapterError, match="inference-only"):
        create_adapter("tent", source)


def test_onnx_file_runs_in_onnxruntime_and_refuses_gradient_adapters(tmp_path: Path) -> None:
    tiny = make_tiny_source()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(
        tiny.module.net.eval(),
        (torch.rand(1, 3, 32, 32),),
        str(path),
        dynamic_axes={"input": {0: "batch"}},
        input_names=["input"],
        dynamo=False,
    )
    source = create_source_model(
        "onnx",
        path=path,
        input_size=(32, 32),
        class_names=tiny.class_names,
        mean=tiny.preprocessing.mean,
        std=tiny.preprocessing.std,
    )
    x = image_batch(5)
    torch.testing.assert_close(
        create_adapter("source", source).forward_and_adapt(x), tiny.module(x), atol=1e-4, rtol=1e-4
    )
    if not source.trainable:
        with pytest.raises(AdapterError, match="inference-only"):
            create_adapter("tent", source)
