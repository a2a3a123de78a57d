"""Small renderers for metadata a person reads: markdown tables and byte sizes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def markdown_table(rows: Iterable[Mapping], columns: Sequence[str], limit: int = 20) -> str:
    rows = list(rows)
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows[:limit]:
        out.append("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |")
    if len(rows) > limit:
        out.append(f"\n_{len(rows) - limit} more rows not shown_")
    if not rows:
        out.append("| " + " | ".join("" for _ in columns) + " |")
    return "\n".join(out)


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
