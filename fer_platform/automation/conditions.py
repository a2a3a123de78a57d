"""Declarative automation conditions of the unpartitioned layers."""

import dagster as dg

# Gold and the index follow silver: when any silver partition (or, for the daily loads, raw) has
# updated since they last ran, once nothing upstream is in progress and they are not running
# already (no pile-up). Most partitions of the emotion x day grid never exist, so eager's
# "no dependency missing" part is left out. A switch of the served model (embedding_model) marks
# them unsynced but does not trigger them: silver of the new model is still empty then; the
# re-embedding backfill's silver updates do, once it is no longer in progress.
FOLLOW_UPSTREAM = (
    dg.AutomationCondition.eager()
    .without(~dg.AutomationCondition.any_deps_missing())
    .ignore(dg.AssetSelection.assets("embedding_model"))
    .with_label("eager_allow_missing")
)
