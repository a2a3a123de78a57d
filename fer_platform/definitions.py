"""The one Definitions: assets, checks, jobs, schedules, sensors, and the resources of FER_ENV."""

import dagster as dg

from fer_platform.assets.bronze import bronze_images
from fer_platform.assets.embeddings import image_embeddings
from fer_platform.assets.gold import GOLD_ASSETS
from fer_platform.assets.model import MODEL_ASSETS
from fer_platform.assets.raw import landing_zone, raw_images
from fer_platform.assets.search import search_index
from fer_platform.assets.silver import silver_embeddings
from fer_platform.automation.freshness import FRESHNESS_CHECKS
from fer_platform.automation.jobs import (
    RUN_CHECKS,
    bulk_load_job,
    expand_csv_job,
    ingest_job,
    landing_triage,
    publish_job,
    reembed_job,
    train_model_job,
)
from fer_platform.automation.migrate import migrate_vectors_job
from fer_platform.automation.reconcile import landing_reconciled, reconcile_job
from fer_platform.automation.schedules import daily_refresh, weekly_reconcile
from fer_platform.automation.sensors import landing_sensor, publish_automation
from fer_platform.resources.environments import executor_for, resources_for

ASSETS = [
    landing_zone,
    raw_images,
    bronze_images,
    image_embeddings,
    silver_embeddings,
    *GOLD_ASSETS,
    search_index,
    *MODEL_ASSETS,
]
JOBS = [
    ingest_job,
    bulk_load_job,
    publish_job,
    reconcile_job,
    landing_triage,
    migrate_vectors_job,
    train_model_job,
    reembed_job,
    expand_csv_job,
]
CHECKS = [*RUN_CHECKS, *FRESHNESS_CHECKS, landing_reconciled]
SENSORS = [landing_sensor, publish_automation]
SCHEDULES = [daily_refresh, weekly_reconcile]


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=JOBS,
        sensors=SENSORS,
        schedules=SCHEDULES,
        # FER_EXECUTOR: in one process by default (a partition's steps are sequential anyway, and torch
        # is imported once per run); Celery or Kubernetes when the user scales out. Configured from the
        # environment, so runs launched by automation, backfills and the UI need no run config.
        executor=executor_for(),
        resources=resources if resources is not None else resources_for(),
    )


defs = build_definitions()
