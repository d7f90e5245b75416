"""The observability benchmarks (tta-bench signals, signal-precision, long-streams) on a small synthetic
CIFAR-10-C: they run end to end and compute what their tables claim."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.data.cifar10 import DatasetError
from benchmarks.data.cifar10c import CORRUPTIONS
from benchmarks.evaluation.long_streams import run_long_streams, series, signal_series
from benchmarks.evaluation.replay import built_with
from benchmarks.evaluation.signal_precision import run_signal_precision, signal_precision_table
from benchmarks.evaluation.signals_vs_truth import correlations, run_signals_vs_truth
from tests.conftest import make_tiny_source


@pytest.fixture(scope="module")
def small_cifar10c(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15 domains of 32 smooth random images each, noisier domain by domain (so errors differ)."""
    root = tmp_path_factory.mktemp("c10c")
    rng = np.random.default_rng(0)
    np.save(root / "labels.npy", np.tile(np.arange(32) % 10, 5).astype(np.uint8))
    base = rng.integers(0, 256, size=(160, 8, 8, 3)).repeat(4, axis=1).repeat(4, axis=2)
    for index, name in enumerate(CORRUPTIONS):
        noise = rng.normal(0, 6 * index, size=base.shape)
        np.save(root / f"{name}.npy", np.clip(base + noise, 0, 255).astype(np.uint8))
    return root


def test_correlations_rank_signals_against_the_error() -> None:
    domains = [f"d{i}" for i in range(5)]
    result = {
        "config": {"adapter": "x"},
        "mean_error": 0.3,
        "per_domain_error": {d: 0.1 * i for i, d in enumerate(domains)},
        "batches": [
            {"domain": d, "signals": {"source_agreement": 1 - 0.1 * i, "atc_accuracy": 1 - 0.1 * i, "bn_shift": 0.5}}
            for i, d in enumerate(domains)
        ],
    }
    row = correlations(result, {d: 0.5 for d in domains})
    assert row["spearman"]["source_agreement"] == pytest.approx(-1.0) and "bn_shift" not in row["spearman"]
    assert row["best_signal"] in {"source_agreement", "atc_accuracy"}
    assert row["estimator_mae"]["atc_accuracy"] == pytest.approx(0.0)  # 1 - estimate equals the error


def test_signals_benchmark_writes_its_table_and_picture(small_cifar10c: Path, tmp_path: Path) -> None:
    report = run_signals_vs_truth(
        make_tiny_source(),
        small_cifar10c,
        ["norm"],
        n_per_domain=32,
        batch_size=16,
        out_dir=tmp_path,
        progress=False,
    )
    (row,) = report["rows"]
    assert row["adapter"] == "norm" and len(row["per_domain"]) == 15 and row["spearman"]
    assert all(-1 <= rho <= 1 for rho in row["spearman"].values())
    assert "| norm |" in (tmp_path / "signals_vs_truth.md").read_text()
    assert (tmp_path / "signals_vs_truth.png").stat().st_size > 10_000


def test_long_streams_compare_variants_per_visit(
    small_cifar10c: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings: dict[str, Any] = {"visits": 2, "n_per_visit": 16, "reset_every_steps": 3, "window_steps": 2}
    report = run_long_streams(
        make_tiny_source(), small_cifar10c, ["tent"], out_dir=tmp_path, progress=False, **settings
    )
    recurring = report["streams"]["recurring"]
    assert [(r["adapter"], r["variant"]) for r in recurring] == [
        ("source", "source"),
        ("tent", "no guard"),
        ("tent", "guard"),
        ("tent", "periodic reset"),
    ]
    assert all(len(r["per_visit_error"]) == 2 for r in recurring)
    assert recurring[0]["per_visit_error"][0] == recurring[0]["per_visit_error"][1]  # the source does not adapt
    assert recurring[3]["guard_actions"]["periodic"] == 30 // 3  # 15 domains x 2 visits, one batch each
    assert len(report["streams"]["dirichlet"][0]["per_domain_error"]) == 15
    saved = json.loads((tmp_path / "long_streams.json").read_text())
    assert saved["streams"]["recurring"][1]["mean_error"] == recurring[1]["mean_error"]
    assert "## dirichlet" in (tmp_path / "long_streams.md").read_text()
    # a second call reuses every saved run: nothing is replayed again, and the report is the same
    import benchmarks.evaluation.long_streams as module

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a saved run was replayed again")

    monkeypatch.setattr(module, "replay_dataset", refuse)
    again = run_long_streams(make_tiny_source(), small_cifar10c, ["tent"], out_dir=tmp_path, progress=False, **settings)
    assert again["streams"] == report["streams"]


BUILT_KEYS = ("format", "split", "fingerprint", "constants", "seed", "shuffled")


def test_a_long_stream_report_says_when_it_ran_on_the_validation_stream(small_cifar10c: Path, tmp_path: Path) -> None:
    validation = tmp_path / "val"
    validation.mkdir()
    for file in small_cifar10c.glob("*.npy"):
        (validation / file.name).symlink_to(file)
    (validation / "manifest.json").write_text(json.dumps({"format": "cifar10c", "split": "holdout"}))
    settings: dict[str, Any] = {"visits": 1, "n_per_visit": 16, "variants": ["no guard"], "streams": ["recurring"]}
    for data, split, named in (
        (small_cifar10c, "test", "CIFAR-10-C, severity 5"),
        (validation, "holdout", "validation stream"),
    ):
        out = tmp_path / split
        report = run_long_streams(make_tiny_source(), data, ["norm"], out_dir=out, progress=False, **settings)
        assert report["split"] == split and named in (out / "long_streams.md").read_text()
    assert built_with(validation) == {**dict.fromkeys(BUILT_KEYS), "format": "cifar10c", "split": "holdout"}
    assert built_with(small_cifar10c) is None  # what every replay records as its data
    for damaged in ("[1,", "[1, 2]", "\xff"):  # an interrupted or foreign manifest: a clear error, not a traceback
        (validation / "manifest.json").write_bytes(damaged.encode("latin-1"))
        with pytest.raises(DatasetError, match=r"manifest\.json"):
            built_with(validation)


def test_long_streams_run_only_the_variants_asked_and_refuse_unknown_ones(small_cifar10c: Path, tmp_path: Path) -> None:
    report = run_long_streams(
        make_tiny_source(),
        small_cifar10c,
        ["norm"],
        visits=1,
        n_per_visit=16,
        variants=["periodic reset"],
        out_dir=tmp_path,
        progress=False,
    )
    assert [r["variant"] for r in report["streams"]["recurring"]] == ["source", "periodic reset"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir())[0] == "dirichlet-norm-periodic-reset.json"
    with pytest.raises(ValueError, match="unknown variants"):
        run_long_streams(make_tiny_source(), small_cifar10c, ["norm"], variants=["sometimes"])


def test_a_periodic_only_guard_replays_without_the_source_forward() -> None:
    from benchmarks.evaluation.local import LocalStream
    from benchmarks.evaluation.replay import ReplayConfig

    source = make_tiny_source()
    periodic = LocalStream(source, ReplayConfig(adapter="tent", guard={"reset_every_steps": 3}))
    assert not periodic.online.source_signals and periodic.online.frozen is None
    thresholds = {"thresholds": [{"signal": "atc_gap", "below": 0}]}
    assert LocalStream(source, ReplayConfig(adapter="tent", guard=thresholds)).online.source_signals
    assert LocalStream(source, ReplayConfig(adapter="tent", guard={"policy": "fallback"})).online.frozen is not None


def test_series_averages_domains_per_visit() -> None:
    result = {"per_domain_error": {"a#1": 0.2, "b#1": 0.4, "a#2": 0.1, "b#2": 0.3}}
    assert series(result, recurring=True) == pytest.approx([0.3, 0.2])
    assert series(result, recurring=False) == [0.2, 0.4, 0.1, 0.3]


def test_signals_benchmark_scores_the_dropout_estimate_when_asked(small_cifar10c: Path, tmp_path: Path) -> None:
    report = run_signals_vs_truth(
        make_tiny_source(),
        small_cifar10c,
        ["tent"],
        n_per_domain=32,
        batch_size=16,
        out_dir=tmp_path,
        progress=False,
        dropout_estimate=True,
    )
    (row,) = report["rows"]
    assert "dropout_accuracy" in row["estimator_mae"] and "dropout_accuracy" in row["spearman"]
    assert report["dropout_estimate"] and set(report["images_per_s"]) == {"source", "tent"}
    assert "DO MAE" in (tmp_path / "signals_vs_truth.md").read_text()


def test_a_saved_run_stays_valid_when_an_option_is_added_at_its_default(small_cifar10c: Path, tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"visits": 1, "n_per_visit": 16, "variants": ["no guard"], "out_dir": tmp_path}
    first = run_long_streams(make_tiny_source(), small_cifar10c, ["norm"], progress=False, **kwargs)
    saved = tmp_path / "runs" / "recurring-norm-no-guard.json"
    content = json.loads(saved.read_text())
    del content["key"]["config"]["dropout_estimate"]  # as written before that option existed
    content["run"]["mean_error"] = -1.0  # a marker: reused, not replayed
    saved.write_text(json.dumps(content))
    again = run_long_streams(make_tiny_source(), small_cifar10c, ["norm"], progress=False, **kwargs)
    assert again["streams"]["recurring"][1]["mean_error"] == -1.0
    content["key"]["config"]["batch_size"] = 32  # other settings: replayed
    saved.write_text(json.dumps(content))
    third = run_long_streams(make_tiny_source(), small_cifar10c, ["norm"], progress=False, **kwargs)
    assert third["streams"]["recurring"][1]["mean_error"] == first["streams"]["recurring"][1]["mean_error"]


def test_long_streams_compare_labelled_configs_of_one_adapter(small_cifar10c: Path, tmp_path: Path) -> None:
    fast = {"adapter": "tent", "optimizer": {"name": "adam", "lr": 0.01}}
    kwargs: dict[str, Any] = {"visits": 1, "n_per_visit": 16, "variants": ["no guard"], "progress": False}
    report = run_long_streams(
        make_tiny_source(), small_cifar10c, ["tent", "tent-fast"], adapter_configs={"tent-fast": fast}, **kwargs
    )
    runs = report["streams"]["recurring"]
    assert [r["adapter"] for r in runs] == ["source", "tent", "tent-fast"]
    assert runs[1]["per_visit_error"] != runs[2]["per_visit_error"]  # ten times the learning rate: other answers
    with pytest.raises(ValueError, match="'tent-slow' is no adapter"):
        run_long_streams(make_tiny_source(), small_cifar10c, ["tent-slow"], **kwargs)


def test_signal_series_are_per_visit_means_aligned_with_the_error() -> None:
    result = {
        "per_domain_error": {"a#1": 0.2, "b#1": 0.4, "a#2": 0.1, "b#2": 0.3},
        "batches": [
            {"domain": "a#1", "signals": {"mean_entropy": 1.0, "parameter_distance": 0.0}},
            {"domain": "a#1", "signals": {"mean_entropy": 3.0, "parameter_distance": 0.1}},
            {"domain": "b#1", "signals": {"mean_entropy": 4.0, "parameter_distance": 0.2}},
            {"domain": "a#2", "signals": {"mean_entropy": 0.0}},  # one domain lacks the distance
            {"domain": "b#2", "signals": {"mean_entropy": 2.0, "parameter_distance": 0.4}},
        ],
    }
    assert signal_series(result, recurring=True) == {"mean_entropy": pytest.approx([3.0, 1.0])}
    assert signal_series(result, recurring=False)["mean_entropy"] == pytest.approx([2.0, 4.0, 0.0, 2.0])


def test_a_recurring_study_reports_each_signals_trend_against_the_error(small_cifar10c: Path, tmp_path: Path) -> None:
    report = run_long_streams(
        make_tiny_source(),
        small_cifar10c,
        ["tent"],
        visits=3,
        n_per_visit=16,
        variants=["no guard"],
        streams=["recurring"],
        source_signals=True,
        out_dir=tmp_path,
        progress=False,
    )
    assert list(report["streams"]) == ["recurring"] and report["source_signals"]
    source, tent = report["streams"]["recurring"]
    assert {"source_agreement", "parameter_distance", "mean_entropy"} <= set(tent["signals"])
    assert all(len(values) == 3 for values in tent["signals"].values())
    assert tent["signals"]["parameter_distance"][0] < tent["signals"]["parameter_distance"][-1]  # tent moves
    assert "source_agreement" not in source["signals"]  # the reference is not compared with itself
    table = (tmp_path / "long_streams.md").read_text()
    assert "Signals per visit" in table and "| `parameter_distance` | " in table
    assert (tmp_path / "long_streams_recurring_signals.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="unknown streams"):
        run_long_streams(make_tiny_source(), small_cifar10c, ["norm"], streams=["endless"])


def test_signal_precision_compares_fp32_and_bf16_signals_in_lockstep(small_cifar10c: Path, tmp_path: Path) -> None:
    report = run_signal_precision(
        make_tiny_source(), small_cifar10c, ["norm"], ["continual"], n_per_domain=32, batch_size=16, progress=False
    )
    (result,) = report["results"]
    assert result["adapter"] == "norm" and result["stream"] == "continual"
    variants = result["variants"]
    assert set(variants) == {"no signals", "fp32", "bf16"}
    assert all(v["median_step_ms"] > 0 and len(v["per_domain_error"]) == 15 for v in variants.values())
    assert variants["no signals"]["decisions"] == []  # no signals, no guard
    assert isinstance(result["same_decisions"], bool) and 0 <= result["source_prediction_disagreement"] <= 1
    shift = result["signals"]["bn_shift"]
    assert shift["domains"] == 15 and 0 < shift["max_domain_difference"] < 0.05 * shift["mean_fp32"]
    text = signal_precision_table(report, tmp_path)
    assert "| norm | continual |" in text and "| bn_shift |" in text
    assert json.loads((tmp_path / "signal_precision.json").read_text())["results"][0]["stream"] == "continual"


def test_the_guard_vs_periodic_table_reads_each_paired_difference() -> None:
    from benchmarks.reporting.long_streams_report import guard_vs_periodic_table, paired_difference

    rng = np.random.default_rng(0)
    periodic = list(0.25 + rng.normal(0, 0.002, 20))
    runs = [{"adapter": "source", "variant": "source", "per_visit_error": [0.4] * 20}]
    for adapter, shift in (("better", -0.01), ("same", 0.0), ("worse", 0.01)):
        guard = [e + shift + n for e, n in zip(periodic, rng.normal(0, 0.001, 20), strict=True)]
        runs += [
            {"adapter": adapter, "variant": "guard", "per_visit_error": guard if shift else periodic},
            {"adapter": adapter, "variant": "periodic reset", "per_visit_error": periodic},
        ]
    runs.append({"adapter": "lonely", "variant": "guard", "per_visit_error": periodic})
    rows = guard_vs_periodic_table(runs, "per_visit_error")
    readings = {row.split(" | ")[0].strip("| "): row.split(" | ")[-1].strip(" |") for row in rows if "[" in row}
    assert readings == {"better": "guard better", "same": "no difference", "worse": "periodic better"}
    mean, low, high = paired_difference([0.30, 0.31, 0.32, 0.33], [0.29, 0.30, 0.31, 0.33])
    assert mean == pytest.approx(0.75) and low <= mean <= high
