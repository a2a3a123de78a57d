"""Small renderers for what a person reads: markdown tables, byte sizes, and progress lines."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence


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


def figure(value: float) -> str:
    """A float for people: 3 significant digits (0.178, not 0.17799999999999996; 0.000123), whole numbers
    from 1000 up (12346, never 1.23e+04)."""
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _cell(value) -> str:
    text = "" if value is None else figure(value) if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def distance_decimals(values: Iterable[float], minimum: int = 3, maximum: int = 6) -> int:
    """The fewest decimals (at least ``minimum``, at most ``maximum``) at which the distances of one
    result read as apart as they are: neighbours whose distances differ show different figures, and
    a distance above zero does not show as 0. Untuned vectors lie close together (distances ~0.001):
    three decimals would print them all alike."""
    values = [float(v) for v in values]
    distinct = sorted({round(v, maximum) for v in values})
    for decimals in range(minimum, maximum + 1):
        shown = {f"{v:.{decimals}f}" for v in distinct}
        tiny = any(v > 0 and round(v, decimals) == 0 for v in distinct)
        if len(shown) == len(distinct) and not tiny:
            return decimals
    return maximum


def format_distances(values: Sequence[float], minimum: int = 3, maximum: int = 6) -> list[str]:
    """The distances of one result as text, all at the precision ``distance_decimals`` picks."""
    decimals = distance_decimals(values, minimum, maximum)
    return [f"{float(v):.{decimals}f}" for v in values]


PROGRESS_SECONDS = 10.0  # a load logs its progress at most this often (and once at the end)


def progress_every(
    log: Callable[[str], None],
    seconds: float = PROGRESS_SECONDS,
    done_what: tuple[str, str, str] = ("embedded", "new images", "images/s"),
) -> Callable[[int, int], None]:
    """An ``on_batch`` for ``write_partition`` (or ``ingest``'s ``progress``) that logs "embedded done/todo"
    (``done_what``: the verb, the things, the rate's unit) at most every ``seconds`` and when the last batch
    is in. Each Dagster log line is a write to the run's event log (a connection and an INSERT); one per
    batch of 64 images, ~560 at FER size, and the step took 107 s there instead of 87."""
    verb, things, unit = done_what
    started = last = time.monotonic()

    def on_batch(done: int, todo: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done < todo and now - last < seconds:
            return
        last = now
        rate = done / (now - started) if now > started else 0.0
        log(f"{verb} {done:,}/{todo:,} {things} ({rate:,.0f} {unit})")

    return on_batch
