"""Appending a run's section to a results file under benchmarks/results/.

The scripts here are run as ``python benchmarks/X.py``, so this folder is on ``sys.path`` and
``from report import append_result`` works.
"""

from __future__ import annotations

import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def append_to(out: Path, header: str, text: str) -> Path:
    """Append ``text`` to ``out`` (one trailing newline added where it has none), writing
    ``header`` first when the file does not exist yet."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text(header)
    with out.open("a") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    return out


def append_result(name: str, header: str, text: str) -> Path:
    """Append ``text`` to benchmarks/results/``name``.md, created with ``header`` if missing."""
    return append_to(RESULTS / f"{name}.md", header, text)


def section_lines(title: str, command: str, columns: list[str], note: str = "") -> list[str]:
    """The lines that open a results section: ``## <date>, <title>``, the command (`` - note``
    after it when given) and the head of a table with ``columns``."""
    return [f"\n## {time.strftime('%Y-%m-%d')}, {title}", "", f"`{command}`" + (f" - {note}" if note else ""), "",
            "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
