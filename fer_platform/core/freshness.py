"""Freshness of the published layers (gold, the search index): were they rebuilt from their partitioned
upstream (silver; raw for the load-log tables) as it is now, or, if it changed since, is that change younger
than the stated window?

"Changed" follows the upstream's data versions (the images a partition holds, core/convergence.py
content_version), not its materialisations: a run that loaded only duplicates re-materialises silver with
the same version and changes nothing here."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

DEFAULT_WINDOW_MINUTES = 30


@dataclass(frozen=True)
class UpstreamVersion:
    """One materialisation of an upstream (silver, raw) partition: its data version and when."""

    partition: str
    version: str | None
    timestamp: float


@dataclass(frozen=True)
class Freshness:
    state: str  # "current" (built from silver as it is now), "pending" (within the window) or "stale"
    description: str
    minutes_since_change: float | None = None

    @property
    def passed(self) -> bool:
        return self.state != "stale"


def first_change(
    after_build: Iterable[UpstreamVersion], version_at_build: Callable[[str], str | None]
) -> float | None:
    """When the upstream first changed after the build: the first materialisation (``after_build``, in
    time order) whose data version differs from its partition's version before it (``version_at_build``
    for the first one of a partition: None for a partition that did not exist then). Stops at the first
    change, so only the partitions re-materialised since the build are looked up."""
    known: dict[str, str | None] = {}
    for event in after_build:
        before = known[event.partition] if event.partition in known else version_at_build(event.partition)
        if event.version is None or event.version != before:
            return event.timestamp
        known[event.partition] = event.version
    return None


def freshness(
    built_at: float | None,
    changed_at: float | None,
    now: float,
    window_minutes: float,
    upstream: str = "silver",
) -> Freshness:
    """The verdict for one published asset: ``built_at`` is its last materialisation (None: never built),
    ``changed_at`` the first change of its ``upstream`` after it (None: none)."""
    if changed_at is None:
        if built_at is None:
            return Freshness("current", f"{upstream} holds nothing yet: nothing to publish")
        return Freshness("current", f"built from {upstream} as it is now")
    minutes = max(0.0, (now - changed_at) / 60)
    shown = round(minutes, 1)
    if minutes <= window_minutes:
        return Freshness(
            "pending",
            f"rebuild pending: {shown} min since {upstream} changed (within {window_minutes:g})",
            shown,
        )
    never = built_at is None
    return Freshness(
        "stale",
        f"{upstream} changed {shown} min ago (more than {window_minutes:g}) and this asset was "
        + ("never built" if never else "not rebuilt since"),
        shown,
    )
