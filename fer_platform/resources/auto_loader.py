"""The landing sensor's settings, like the auto-loader's options (logic in core/planner.py)."""

import dagster as dg

from fer_platform.core.errors import ConfigError
from fer_platform.core.ingest import ON_SUCCESS
from fer_platform.core.planner import AutoLoaderSettings


class AutoLoaderResource(dg.ConfigurableResource):
    """``max_files_per_tick`` (maxFilesPerTrigger), ``include_existing_files`` (includeExistingFiles),
    ``settle_seconds`` (files modified more recently wait: they may still be being written),
    ``on_success`` (keep | delete | archive the source once its load is committed), ``retry_after_seconds``
    and ``max_attempts`` (a failed run's files are asked for again this long after it ended, until this many
    runs failed on them)."""

    max_files_per_tick: int = 1000
    include_existing_files: bool = True
    settle_seconds: float = 5.0
    on_success: str = "keep"
    retry_after_seconds: float = 300.0
    max_attempts: int = 3

    def settings(self) -> AutoLoaderSettings:
        if self.on_success not in ON_SUCCESS:
            raise ConfigError(f"on_success must be one of {', '.join(ON_SUCCESS)}, not {self.on_success!r}")
        return AutoLoaderSettings(
            max_files_per_tick=max(1, self.max_files_per_tick),
            include_existing_files=self.include_existing_files,
            settle_seconds=max(0.0, self.settle_seconds),
            on_success=self.on_success,
            retry_after_seconds=max(0.0, self.retry_after_seconds),
            max_attempts=max(1, self.max_attempts),
        )
