"""Writing a measurement as ``<stem>.json`` plus a Markdown table ``<stem>.md``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_result(
    out_dir: Path,
    stem: str,
    result: dict[str, Any],
    title: str,
    note: str,
    columns: Sequence[str],
    rows: list[list[str]],
) -> str:
    """Save ``result`` as JSON and a titled Markdown table; returns the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {title}", "", note, "", "| " + " | ".join(columns) + " |", "|---" + "|---:" * (len(columns) - 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    table = "\n".join(lines) + "\n"
    (out_dir / f"{stem}.md").write_text(table)
    return table
