"""The local Dagster instance's configuration (cli/instance.py)."""

import dagster as dg
import yaml

from fer_platform.cli.instance import USER_YAML, prepare_dagster_home, sqlalchemy_url
from fer_platform.core.home import Home


def test_the_dagster_instance_url_requires_tls_for_remote_hosts_like_the_application():
    assert sqlalchemy_url("postgresql://u:p@db.example.com:5432/fer") == (
        "postgresql+psycopg2://u:p@db.example.com:5432/fer?sslmode=require",
        True,
    )
    assert sqlalchemy_url("postgresql://u@db.example.com/fer?sslmode=verify-full")[0].endswith(
        "sslmode=verify-full"
    )
    assert "sslmode" not in sqlalchemy_url("postgresql://u@localhost:5432/fer")[0]
    assert sqlalchemy_url("user=postgres host=/tmp/sock dbname=dagster")[0] == (
        "postgresql+psycopg2://postgres@/dagster?host=%2Ftmp%2Fsock"
    )


def test_the_user_s_instance_settings_survive_the_cli_rewriting_dagster_yaml(
    pg_server, tmp_path, monkeypatch
):
    """`db start`, `dev`, `demo` and `bulk-load` rewrite dagster.yaml (prepare_dagster_home): the keys the CLI
    writes follow the settings (here FER_RUN_LAUNCHER=celery, then back), a key added by hand stays, and
    dagster.local.yaml's keys are laid over the CLI's; the result loads as a Dagster instance."""
    for var in ("FER_EXECUTOR", "FER_RUN_LAUNCHER", "FER_COMPUTE_LOGS", "FER_PG_DSN", "FER_ENV"):
        monkeypatch.delenv(var, raising=False)
    home = Home.resolve(tmp_path / "home")
    monkeypatch.setenv("FER_PG_DSN", pg_server)  # the distributed launcher needs a shared server
    monkeypatch.setenv("FER_RUN_LAUNCHER", "celery")
    monkeypatch.setenv("FER_CELERY_BROKER", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("FER_COMPUTE_LOGS", "s3://logs/dagster")
    prepare_dagster_home(home, pg_server)
    target = home.dagster / "dagster.yaml"
    written = yaml.safe_load(target.read_text())
    assert written["run_launcher"]["class"] == "CeleryRunLauncher"
    assert written["compute_logs"]["class"] == "S3ComputeLogManager"
    assert written["run_launcher"]["config"]["broker"] == {"env": "FER_CELERY_BROKER"}

    edited = dict(written, sensors={"use_threads": True, "num_workers": 2})  # the user's own key
    target.write_text(yaml.safe_dump(edited))
    (home.dagster / USER_YAML).write_text("run_retries:\n  enabled: false\n")
    monkeypatch.delenv("FER_RUN_LAUNCHER")
    monkeypatch.delenv("FER_COMPUTE_LOGS")
    prepare_dagster_home(home, pg_server)  # as the next `fer-platform dev` does
    again = yaml.safe_load(target.read_text())
    assert "compute_logs" not in again  # a key the CLI owns, no longer set: gone, not kept as the user's
    assert again["run_launcher"]["class"] == "MonitoredRunLauncher"  # the CLI's key follows the setting
    assert again["sensors"] == {"use_threads": True, "num_workers": 2}
    assert again["run_retries"] == {"enabled": False}
    assert again["run_coordinator"]["config"]["max_concurrent_runs"] == 2
    with dg.DagsterInstance.from_config(str(home.dagster)) as instance:
        assert not instance.run_retries_enabled
        assert type(instance.run_launcher).__name__ == "MonitoredRunLauncher"
