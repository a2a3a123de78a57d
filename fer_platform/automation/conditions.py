"""Declarative automation conditions of the unpartitioned layers.

Their freshness is the rebuilt_after_silver check (automation/freshness.py), not a time-window freshness
policy: that one counts materialisations only, so a day without new data (gold rightly not rebuilt) would
fail it, a false alarm."""

import dagster as dg

# Gold and the index follow silver: when any silver partition (or, for the daily loads, raw) has
# updated since they last ran, once nothing upstream is in progress and they are not running
# already (no pile-up). Most partitions of the emotion x day grid never exist, so eager's
# "no dependency missing" part is left out. A switch of the served model (embedding_model) marks
# them unsynced but does not trigger them: silver of the new model is still empty then; the
# re-embedding backfill's silver updates do, once it is no longer in progress.
#
# "Updated" means a new data version, not a new materialisation: silver's and raw's data versions are the
# images they hold (core/convergence.py content_version), so a run that loaded only duplicates (silver as it
# was) rebuilds neither the silver-fed gold tables nor the index; the load-log tables (daily loads,
# duplicates), whose counts it did change, follow raw's new version.
DEPS_CHANGED = (
    dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.data_version_changed() | dg.AutomationCondition.will_be_requested()
    )
    .ignore(dg.AssetSelection.assets("embedding_model"))
    .with_label("any_deps_data_version_changed")
)
FOLLOW_UPSTREAM = (
    (dg.AutomationCondition.newly_missing() | DEPS_CHANGED).since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("follow_upstream_changes")
