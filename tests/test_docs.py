"""The project's documentation is current and cites only files in the repository."""

from __future__ import annotations

import re
from pathlib import Path

from adapters.reference import render

REPO = Path(__file__).resolve().parent.parent


def test_the_committed_adapter_reference_is_current() -> None:
    committed = (REPO / "docs" / "adapters.md").read_text()
    assert committed == render(), "docs/adapters.md is stale: python -m adapters.reference > docs/adapters.md"


def test_every_adapter_option_is_described_in_the_reference() -> None:
    rows = [re.split(r"(?<!\\)\|", line.strip())[1:-1] for line in render().splitlines() if line.startswith("| `")]
    undescribed = [cells[0].strip() for cells in rows if not cells[2].strip()]
    assert len(rows) > 50 and not undescribed, undescribed


def test_code_and_docs_cite_only_files_that_exist_in_the_repository() -> None:
    cited = re.compile(
        r"\b((?:docs|benchmarks/results)/[\w./-]+\.(?:md|json|png)|tests/[\w/]+\.py|benchmarks/[\w/]+\.py)"
    )
    missing = []
    for path in [*REPO.glob("adapters/**/*.py"), *REPO.glob("tta_server/**/*.py"), *REPO.glob("benchmarks/**/*.py")]:
        for match in cited.findall(path.read_text()):
            if not (REPO / match).exists():
                missing.append(f"{path.relative_to(REPO)}: {match}")
    for path in [REPO / "README.md", *REPO.glob("docs/*.md")]:
        for match in cited.findall(path.read_text()):
            if not (REPO / match).exists() and "{" not in match:
                missing.append(f"{path.relative_to(REPO)}: {match}")
    assert not missing, missing
    # nothing refers to documents that are not part of the repository
    bare = re.compile(r"(?<![/\w])(?:methods|benchmarks|serving|architecture|style)\.md \d")
    offenders = [
        str(p.relative_to(REPO)) for p in REPO.glob("**/*.py") if ".venv" not in p.parts and bare.search(p.read_text())
    ]
    assert not offenders, offenders
