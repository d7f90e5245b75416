"""CIFAR-10-C layout reader and the online replay protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapters import SourceModel, create_adapter
from benchmarks.cli import main as bench_main
from benchmarks.data.cifar10 import DatasetError
from benchmarks.data.cifar10c import CORRUPTIONS, load_cifar10c
from benchmarks.evaluation.replay import ReplayConfig, replay, replay_dataset, replay_orders
from benchmarks.evaluation.stream_settings import COTTA_TEN_ORDERS, Segment, build_stream, dirichlet_order
from benchmarks.reporting.replay_report import error_table

PER_SEVERITY = 12


@pytest.fixture(scope="module")
def cifar10c_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of the official layout: 5 severity blocks of 12 images per corruption."""
    root = tmp_path_factory.mktemp("cifar10c")
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(PER_SEVERITY) % 10, 5).astype(np.uint8)
    np.save(root / "labels.npy", labels)
    for index, corruption in enumerate(CORRUPTIONS):
        images = rng.integers(0, 256, size=(5 * PER_SEVERITY, 32, 32, 3), dtype=np.uint8)
        images[:, 0, 0, 0] = np.repeat(np.arange(1, 6), PER_SEVERITY) * 10 + index  # severity marker
        np.save(root / f"{corruption}.npy", images)
    return root


def test_reader_selects_the_severity_block(cifar10c_dir: Path) -> None:
    arrays = load_cifar10c(cifar10c_dir, "fog", 3)
    assert arrays.images.shape == (PER_SEVERITY, 32, 32, 3)
    assert set(arrays.images[:, 0, 0, 0].tolist()) == {30 + CORRUPTIONS.index("fog")}
    assert arrays.labels.dtype == np.int64


def test_reader_errors(cifar10c_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown corruption"):
        load_cifar10c(cifar10c_dir, "rain", 5)
    with pytest.raises(DatasetError, match=r"severity must be 1\.\.5"):
        load_cifar10c(cifar10c_dir, "fog", 6)
    with pytest.raises(DatasetError, match="not found"):
        load_cifar10c(tmp_path, "fog", 5)
    np.save(tmp_path / "labels.npy", np.zeros(7))
    np.save(tmp_path / "fog.npy", np.zeros((7, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match="expected"):
        load_cifar10c(tmp_path, "fog", 5)


def domains(root: Path, names: tuple[str, ...] = CORRUPTIONS[:3], setting: str = "continual") -> list[Segment]:
    return build_stream(lambda c, s: load_cifar10c(root, c, s), names, setting)  # type: ignore[arg-type]


def test_online_error_matches_the_adapter_predictions(tiny_source: SourceModel, cifar10c_dir: Path) -> None:
    stream = domains(cifar10c_dir)
    config = ReplayConfig(adapter="source", adapter_config={"backend": "torch"}, batch_size=5)
    result = replay(tiny_source, stream, config, progress=False)
    adapter = create_adapter("source", tiny_source, {"backend": "torch"})
    for segment in stream:
        x = torch.from_numpy(segment.images).permute(0, 3, 1, 2).float() / 255
        expected = float((adapter.forward_and_adapt(x).argmax(1).numpy() != segment.labels).mean())
        assert result["per_domain_error"][str(segment.tags[0])] == pytest.approx(expected)
    assert [b["images"] for b in result["batches"][:3]] == [5, 5, 2]  # last batch of a domain is partial
    assert result["mean_error"] == pytest.approx(np.mean(list(result["per_domain_error"].values())))


def test_reset_each_shift_differs_from_continual_only_after_the_first_domain(
    tiny_source: SourceModel, cifar10c_dir: Path
) -> None:
    tent = {"optimizer": {"lr": 0.05}}
    config = ReplayConfig(adapter="tent", adapter_config=tent, batch_size=6)
    continual = replay(tiny_source, domains(cifar10c_dir), config, progress=False)
    reset = replay(tiny_source, domains(cifar10c_dir, setting="reset_each_shift"), config, progress=False)
    assert continual["batches"][:2] == reset["batches"][:2]
    assert continual["batches"][2:] != reset["batches"][2:]
    fresh = replay(tiny_source, domains(cifar10c_dir, CORRUPTIONS[1:2]), config, progress=False)
    assert reset["batches"][2:4] == fresh["batches"]  # after a reset the adapter starts from the source


def test_cli_writes_json_and_a_table(cifar10c_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench_main(
        [
            "replay",
            "--data",
            str(cifar10c_dir),
            "--adapters",
            "source,norm",
            "--batch-size",
            "6",
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "norm.json").read_text())
    assert set(result["per_domain_error"]) == set(CORRUPTIONS) and result["images"] == 15 * PER_SEVERITY
    table = (tmp_path / "table.md").read_text()
    assert table.splitlines()[0].startswith("| adapter | gaussian_noise") and "| norm |" in table
    assert table == error_table([json.loads((tmp_path / f"{a}.json").read_text()) for a in ("source", "norm")])
    for plot in ("domain_errors.png", "cumulative_error.png"):
        with Image.open(tmp_path / plot) as image:
            assert image.size[0] > 500 and image.size[1] > 300


def test_report_re_renders_from_json(cifar10c_dir: Path, tmp_path: Path) -> None:
    bench_main(
        ["replay", "--data", str(cifar10c_dir), "--adapters", "norm", "--batch-size", "6", "--out", str(tmp_path)]
    )
    (tmp_path / "table.md").unlink()
    (tmp_path / "cumulative_error.png").unlink()
    bench_main(["report", str(tmp_path / "norm.json"), "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "table.md").is_file() and (tmp_path / "again" / "cumulative_error.png").is_file()


def test_settings_order_and_reset_the_stream(cifar10c_dir: Path) -> None:
    two = CORRUPTIONS[:2]
    assert [s.reset_before for s in domains(cifar10c_dir, two)] == [True, False]
    assert [s.reset_before for s in domains(cifar10c_dir, two, "reset_each_shift")] == [True, True]
    gradual = [str(s.tags[0]) for s in domains(cifar10c_dir, two, "gradual")]
    assert gradual[:9] == [f"gaussian_noise@{v}" for v in (1, 2, 3, 4, 5, 4, 3, 2, 1)] and len(gradual) == 18
    cotta = [str(s.tags[0]) for s in domains(cifar10c_dir, two, "gradual_cotta")]
    assert cotta[:6] == ["gaussian_noise@5", "gaussian_noise@4", "gaussian_noise@3", "gaussian_noise@2",
                         "gaussian_noise@1", "shot_noise@1"] and len(cotta) == 14  # fmt: skip
    (mixed,) = domains(cifar10c_dir, two, "mixed_domains")
    assert sorted(mixed.tags.tolist()) == ["gaussian_noise"] * PER_SEVERITY + ["shot_noise"] * PER_SEVERITY
    assert mixed.tags.tolist() != sorted(mixed.tags.tolist())  # shuffled across domains
    for segment in domains(cifar10c_dir, two, "correlated"):
        assert segment.labels.tolist() == sorted(segment.labels.tolist())


def test_dirichlet_order_is_a_label_correlated_permutation() -> None:
    labels = np.repeat(np.arange(10), 100)
    rng = np.random.default_rng(0).permutation(1000)
    labels = labels[rng]
    order = dirichlet_order(labels, delta=0.1, rng=np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(1000))
    changes = int((np.diff(labels[order]) != 0).sum())
    assert changes < 100  # long single-class runs; an i.i.d. order has about 900 label changes
    weak = dirichlet_order(labels, delta=100.0, rng=np.random.default_rng(1))
    assert int((np.diff(labels[weak]) != 0).sum()) > changes


def test_gradual_replay_reports_the_error_at_severity_5(tiny_source: SourceModel, cifar10c_dir: Path) -> None:
    config = ReplayConfig(adapter="norm", setting="gradual", batch_size=12)
    result = replay(tiny_source, domains(cifar10c_dir, CORRUPTIONS[:1], "gradual"), config, progress=False)
    assert len(result["per_domain_error"]) == 5 and "mean_error_at_severity_5" in result


def test_errors_are_fractions_and_the_stem_report_collects_every_run(cifar10c_dir: Path, tmp_path: Path) -> None:
    options = ["--adapters", "source,tent", "--batch-size", "6", "--out", str(tmp_path)]
    bench_main(["replay", "--data", str(cifar10c_dir), *options])
    runs = [json.loads((tmp_path / f"{a}.json").read_text()) for a in ("source", "tent")]
    for run in runs:
        assert all(0.0 <= e <= 1.0 for e in run["per_domain_error"].values()) and 0.0 <= run["mean_error"] <= 1.0
        assert run["images_per_s"] > 0 and run["peak_rss_bytes"] > 0 and run["versions"]["torch"]
        assert sum(b["images"] for b in run["batches"]) == run["images"]
    runs_json = [str(tmp_path / "source.json"), str(tmp_path / "tent.json")]
    bench_main(["report", *runs_json, "--out", str(tmp_path / "r"), "--stem", "demo"])
    combined = json.loads((tmp_path / "r" / "demo.json").read_text())
    assert [r["config"]["adapter"] for r in combined["runs"]] == ["source", "tent"]
    assert "| tent |" in (tmp_path / "r" / "demo.md").read_text()
    assert (tmp_path / "r" / "demo_domain_errors.png").is_file() and (
        tmp_path / "r" / "demo_cumulative_error.png"
    ).is_file()
    bench_main(["report", str(tmp_path / "r" / "demo.json"), "--out", str(tmp_path / "r2"), "--stem", "again"])
    assert json.loads((tmp_path / "r2" / "again.json").read_text()) == combined


def test_ten_orders_average_runs_that_each_start_from_the_source(tiny_source: SourceModel, cifar10c_dir: Path) -> None:
    orders = [CORRUPTIONS[:3], CORRUPTIONS[:3][::-1]]
    config = ReplayConfig(adapter="tent", batch_size=6, corruptions=CORRUPTIONS[:3])
    result = replay_orders(tiny_source, cifar10c_dir, config, orders, progress=False)
    singles = [
        replay_dataset(tiny_source, cifar10c_dir, config.model_copy(update={"corruptions": tuple(o)}), progress=False)
        for o in orders
    ]
    assert result["mean_error"] == pytest.approx(np.mean([s["mean_error"] for s in singles]))
    for domain in CORRUPTIONS[:3]:
        expected = np.mean([s["per_domain_error"][domain] for s in singles])
        assert result["per_domain_error"][domain] == pytest.approx(expected)
    assert result["config"]["orders"] == [list(o) for o in orders] and len(result["per_order"]) == 2
    assert result["images"] == 2 * 3 * PER_SEVERITY


def test_cotta_ten_orders_are_permutations_of_the_standard_fifteen() -> None:
    assert len(COTTA_TEN_ORDERS) == 10 and len(set(COTTA_TEN_ORDERS)) == 10
    assert all(sorted(order) == sorted(CORRUPTIONS) for order in COTTA_TEN_ORDERS)
    assert COTTA_TEN_ORDERS[0][:3] == ("brightness", "pixelate", "gaussian_noise")


def test_replay_through_the_server_matches_the_in_process_replay(tmp_path: Path) -> None:
    """Same pixels (PNG), same adapter and seed, batches above min_adapt_batch: same predictions.

    Tolerance zero: the server runs the same adapter code on the same float inputs with the same
    thread count, so the predicted classes agree exactly."""
    from adapters import create_source_model
    from tests.server_harness import running_server
    from tta_server import Settings

    rng = np.random.default_rng(1)
    root = tmp_path / "c10c"
    root.mkdir()
    np.save(root / "labels.npy", np.tile(np.arange(32) % 10, 5).astype(np.uint8))
    for name in CORRUPTIONS[:2]:
        coarse = rng.integers(0, 256, size=(160, 8, 8, 3), dtype=np.uint8)
        np.save(root / f"{name}.npy", coarse.repeat(4, axis=1).repeat(4, axis=2))  # smooth, image-like
    config = ReplayConfig(adapter="tent", batch_size=16, corruptions=CORRUPTIONS[:2], setting="reset_each_shift")
    local = replay_dataset(create_source_model(), root, config, progress=False)
    settings = Settings(default_adapter="tent", min_adapt_batch=16)
    with running_server(settings) as url:
        remote = replay_dataset(create_source_model(), root, config, progress=False, server=url)
        norm_config = config.model_copy(update={"adapter": "norm"})  # not the server's default: created per run
        remote_norm = replay_dataset(create_source_model(), root, norm_config, progress=False, server=url)
        local_norm = replay_dataset(create_source_model(), root, norm_config, progress=False)
    assert remote["per_domain_error"] == local["per_domain_error"]
    assert remote_norm["per_domain_error"] == local_norm["per_domain_error"]
    assert [b["errors"] for b in remote["batches"]] == [b["errors"] for b in local["batches"]]
    latency = remote["server"]["latency_ms"]
    assert latency["requests"] == 2 * 2 and 0 < latency["p50"] <= latency["p99"]


def test_load_test_runs_concurrent_streams_and_writes_its_table(tmp_path: Path) -> None:
    from benchmarks.performance.load_test import run_load_test

    table = run_load_test(["norm"], streams=2, batches=2, batch_size=16, workers=2, out_dir=tmp_path)
    result = json.loads((tmp_path / "load_test.json").read_text())
    row = result["rows"][0]
    assert row["server_images_per_s"] > 0 and row["in_process_images_per_s"] > 0
    assert 0 < row["latency_ms_p50"] <= row["latency_ms_p99"] and "| norm |" in table


def test_scale_benchmark_spills_and_wakes_streams_through_the_server(tmp_path: Path) -> None:
    from benchmarks.performance.scale import run_scale

    table = run_scale({"tent": [6]}, requests=2, batch_size=8, clients=2, out_dir=tmp_path)
    (row,) = json.loads((tmp_path / "scale.json").read_text())["rows"]
    assert row["requests"] == 12 and row["images_per_s"] > 0
    assert row["spills"] >= 1 and row["wakes"] >= 1  # the budget really forced streams out and back
    assert row["spill_ms_mean"] > 0 and row["wake_ms_mean"] > 0 and row["snapshot_disk_bytes"] > 0
    assert (tmp_path / "scale.png").stat().st_size > 10_000 and "| tent | 6 |" in table


def test_small_batches_replay_alike_in_process_and_through_the_server(tmp_path: Path) -> None:
    """Batches below the server's min_adapt_batch: the in-process replay with the same
    min_adapt_batch runs the same small-request policy (adapters.online), so predictions agree."""
    from adapters import create_source_model
    from tests.server_harness import running_server
    from tta_server import Settings

    rng = np.random.default_rng(2)
    root = tmp_path / "c10c"
    root.mkdir()
    np.save(root / "labels.npy", np.tile(np.arange(24) % 10, 5).astype(np.uint8))
    coarse = rng.integers(0, 256, size=(120, 8, 8, 3), dtype=np.uint8)
    np.save(root / f"{CORRUPTIONS[0]}.npy", coarse.repeat(4, axis=1).repeat(4, axis=2))
    config = ReplayConfig(adapter="tent", batch_size=6, min_adapt_batch=16, corruptions=CORRUPTIONS[:1])
    local = replay_dataset(create_source_model(), root, config, progress=False)
    with running_server(Settings(default_adapter="tent", min_adapt_batch=16)) as url:
        remote = replay_dataset(create_source_model(), root, config, progress=False, server=url)
    assert [b["errors"] for b in remote["batches"]] == [b["errors"] for b in local["batches"]]
