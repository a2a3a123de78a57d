"""Runs executed in this process that the UI shows like any run of the code location.

``JobDefinition.execute_in_process`` records a run without an origin and with the snapshot of an
ephemeral copy of the job (its executor swapped for the in-process one): the UI's Overview timeline,
which lists runs by their repository, leaves it out, and "Re-execute" warns that the job "may be a
different version". ``execute_as_location_run`` records the run as the webserver does when it launches
one: the job's own snapshot (a subset's parent is the job's) and the origin of the code location that
``fer-platform dev`` serves (``workspace.yaml``: location ``LOCATION``, the module's single repository),
then executes it here with the in-process executor, like ``execute_in_process``: no process per run or
step, one model in memory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from typing import Optional

import dagster as dg
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
from dagster._core.execution.api import (
    ExecuteRunWithPlanIterable,
    create_execution_plan,
    job_execution_iterator,
)
from dagster._core.execution.context_creation_job import (
    PlanOrchestrationContextManager,
    orchestration_context_event_generator,
)
from dagster._core.execution.execute_in_process import merge_run_tags
from dagster._core.remote_origin import ManagedGrpcPythonEnvCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

DEFINITIONS_MODULE = "fer_platform.definitions"  # what workspace.yaml's python_module names
DEFINITIONS_ATTRIBUTE = "defs"  # the Definitions the module builds


class LocationOrigin:
    """The origin of the code location ``location`` as a workspace that loads ``DEFINITIONS_MODULE`` with
    this Python, from ``working_directory``, names it: what runs launched from the UI carry."""

    def __init__(self, location: str, working_directory: Optional[str] = None):
        cwd = working_directory or os.getcwd()
        target = LoadableTargetOrigin(
            executable_path=sys.executable, module_name=DEFINITIONS_MODULE, working_directory=cwd
        )
        self.repository = RemoteRepositoryOrigin(
            ManagedGrpcPythonEnvCodeLocationOrigin(loadable_target_origin=target, location_name=location),
            SINGLETON_REPOSITORY_NAME,
        )
        self.code = ReconstructableRepository.for_module(DEFINITIONS_MODULE, DEFINITIONS_ATTRIBUTE, cwd)

    def of(self, job: str):
        """(remote job origin, job code origin) of ``job``."""
        return self.repository.get_job_origin(job), self.code.get_reconstructable_job(job).get_python_origin()


def execute_as_location_run(
    instance: dg.DagsterInstance,
    job_def: dg.JobDefinition,
    origin: LocationOrigin,
    run_config: Mapping[str, object],
    partition_key: Optional[str] = None,
    tags: Optional[Mapping[str, str]] = None,
    assets: Optional[Iterable[dg.AssetKey]] = None,
) -> dg.DagsterRun:
    """Record a run of ``job_def`` (``assets`` of it, or all) with ``origin``, execute it in this process,
    and return the finished run."""
    selection = frozenset(assets) if assets else None
    local = job_def.as_ephemeral_job(
        resource_defs={}, input_values={}, asset_selection=sorted(selection) if selection else None
    )
    job = InMemoryJob(job_def=local)
    plan = create_execution_plan(job, run_config=run_config, instance_ref=instance.get_ref())
    run_tags = merge_run_tags(
        job_def=job_def,
        partition_key=partition_key,
        tags=tags,
        asset_selection=selection,
        instance=instance,
        run_config=run_config,
    )
    remote_origin, code_origin = origin.of(job_def.name)
    run = instance.create_run_for_job(
        job_def=job_def,  # the job's own snapshot: a subset's parent snapshot is the code location's
        run_config=run_config,
        tags={**job_def.run_tags, **run_tags},
        asset_selection=set(selection) if selection else None,
        remote_job_origin=remote_origin,
        job_code_origin=code_origin,
    )
    events = ExecuteRunWithPlanIterable(
        execution_plan=plan,
        iterator=job_execution_iterator,
        execution_context_manager=PlanOrchestrationContextManager(
            context_event_generator=orchestration_context_event_generator,
            job=job,
            execution_plan=plan,
            dagster_run=run,
            instance=instance,
            run_config=run_config,
            executor_defs=None,
            output_capture=None,
            raise_on_error=False,
        ),
    )
    for _event in events:
        pass  # the events are in the instance's event log; none is held here
    return instance.get_run_by_id(run.run_id)
