"""The adapter reference (``docs/adapters.md``), rendered from the registry itself.

Each adapter's section is its module and class docstrings (algorithm, state, deviations from the
paper), its paper, the source artefacts it needs and a table of every config option with its
default and description, nested options flattened with dots. Measured figures come from the
committed benchmark results when they are given. Rendering from the code means the reference
cannot drift from it; a test checks that the committed file is current
(``python -m adapters.reference > docs/adapters.md`` rewrites it).
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from adapters.adapter_registry import ADAPTERS
from adapters.base import Adapter

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def _options(model: type[BaseModel], instance: BaseModel, prefix: str = "") -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        value = getattr(instance, name)
        if isinstance(value, BaseModel):
            rows += _options(type(value), value, f"{prefix}{name}.")
            continue
        default = json.dumps(value.model_dump(mode="json") if isinstance(value, BaseModel) else value, default=str)
        rows.append((f"{prefix}{name}", default, (field.description or "").replace("|", "\\|")))
    return rows


def _figures(name: str, results: Path) -> list[str]:
    lines: list[str] = []
    continual = results / "cifar10c_jpeg_continual.json"
    if continual.is_file():
        for run in json.loads(continual.read_text()).get("runs", []):
            if run["config"]["adapter"] == name and set(run["config"]["adapter_config"]) <= {"backend"}:
                lines.append(
                    f"continual CIFAR-10-C (severity 5, 10,000 images per domain, fp32): mean online error "
                    f"**{100 * run['mean_error']:.1f} %**"
                )
    speed = results / "adapter_speed.json"
    if speed.is_file():
        for row in json.loads(speed.read_text())["rows"]:
            if row["adapter"] == name:
                lines.append(
                    f"batch 200 on the 2-core CPU: **{row['images_per_s']:.0f} images/s** by default "
                    f"({row['precision']}), {row['speedup']:.2f}x the exact fp32 path; per-stream state "
                    f"{row['state_bytes'] / 2**20:.2f} MiB"
                )
    equal = results / "equal_error.json"
    if equal.is_file():
        for row in json.loads(equal.read_text())["rows"]:
            if row["adapter"] == name:
                lines.append(
                    f"default vs fp32 on the same stream ({row['n_per_domain']} images per domain): "
                    f"{100 * row['default_mean_error']:.2f} % vs {100 * row['baseline_mean_error']:.2f} % "
                    f"({row['difference_points']:+.2f} points)"
                )
    return lines


def adapter_section(cls: type[Adapter], results: Path = RESULTS) -> str:
    module = inspect.getdoc(sys.modules[cls.__module__]) or ""
    title = module.splitlines()[0] if module else f"``{cls.name}``"
    parts = [f"## {cls.name}", "", title.replace("``", "`"), ""]
    if cls.paper:
        parts += [f"Paper: {cls.paper}.", ""]
    parts += [(inspect.getdoc(cls) or "").replace("``", "`"), ""]
    if cls.required_artefacts:
        parts += [f"Source artefacts: {', '.join(f'`{a}`' for a in cls.required_artefacts)}.", ""]
    figures = _figures(cls.name, results)
    if figures:
        parts += ["Measured:", "", *[f"* {line}" for line in figures], ""]
    parts += ["| option | default | description |", "|---|---|---|"]
    parts += [f"| `{name}` | `{default}` | {text} |" for name, default, text in _options(cls.Config, cls.Config())]
    return "\n".join(parts) + "\n"


def render(results: Path = RESULTS) -> str:
    header = (
        "# Adapters\n\n"
        "Generated from the adapter registry by `python -m adapters.reference > docs/adapters.md` (a test keeps "
        "it current): each adapter's algorithm, per-stream state and deviations from its paper, as its "
        "docstrings state them; every config option with its default; measured figures from "
        "`benchmarks/results/`. Options are given to `create_adapter(name, source, config)` in Python or as "
        '`{"adapter": name, "config": {...}}` to `POST /v1/streams`; nested options are objects '
        '(`{"optimizer": {"lr": 5e-4}}`). The shared building blocks are described in [methods.md](methods.md).\n'
    )
    return header + "".join("\n" + adapter_section(ADAPTERS.get(name), results) for name in ADAPTERS.names())


def main() -> Any:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
