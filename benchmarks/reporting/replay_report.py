"""Replay reports: the error table and the ``<stem>.md`` / ``.json`` / plots of a set of runs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.reporting.labels import run_label
from benchmarks.reporting.replay_plots import plot_cumulative_error, plot_domain_errors


def error_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown: adapters (rows) by domain (columns), error in %, the mean, speed and peak memory."""
    domains = list(results[0]["per_domain_error"])
    header = "| adapter | " + " | ".join(domains) + " | mean | img/s | peak memory |"
    lines = [header, "|---" + "|---:" * (len(domains) + 3) + "|"]
    for result in results:
        cells = [f"{100 * result['per_domain_error'][d]:.1f}" for d in domains]
        lines.append(
            f"| {run_label(result)} | "
            + " | ".join(cells)
            + f" | **{100 * result['mean_error']:.1f}** | {result['images_per_s']:.0f} | {_memory(result)} |"
        )
    return "\n".join(lines) + "\n"


def _memory(result: dict[str, Any]) -> str:
    if "peak_gpu_bytes" in result:
        return f"{result['peak_gpu_bytes'] / 2**20:.0f} MiB GPU"
    return f"{result['peak_rss_bytes'] / 2**20:.0f} MiB RSS"


def _setup_line(results: Sequence[dict[str, Any]]) -> str:
    first = results[0]
    config = first["config"]
    n = config.get("n_per_domain") or "all"
    device = first.get("device_name") or f"CPU, {first.get('threads')} threads"
    return (
        f"Model `{first['model']}`, {config.get('dataset', 'cifar10c')}, setting `{config['setting']}`, "
        f"severity {config['severity']}, {n} images per domain, batch {config['batch_size']}, seed {config['seed']}, "
        f"{device}, torch {first['versions']['torch']}. Error in % (online: each batch predicted before its update)."
    )


def write_report(results: Sequence[dict[str, Any]], out_dir: Path, stem: str = "", note: str = "") -> str:
    """The table (``table.md``), error-per-domain and cumulative-error plots in ``out_dir``; with a
    ``stem``, ``<stem>.md``, ``<stem>.json`` (all runs) and ``<stem>_*.png`` instead."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = error_table(results)
    prefix = f"{stem}_" if stem else ""
    plot_domain_errors(results, out_dir / f"{prefix}domain_errors.png")
    plot_cumulative_error(results, out_dir / f"{prefix}cumulative_error.png")
    if not stem:
        (out_dir / "table.md").write_text(table)
        return table
    plots = (
        f"![error per domain]({prefix}domain_errors.png)\n![cumulative online error]({prefix}cumulative_error.png)\n"
    )
    document = f"# {stem}\n\n{_setup_line(results)}\n\n{table}\n" + (f"{note}\n\n" if note else "") + plots
    (out_dir / f"{stem}.md").write_text(document)
    (out_dir / f"{stem}.json").write_text(json.dumps({"runs": list(results)}, indent=1) + "\n")
    return document
