import subprocess
import sys

import dagster as dg

from fer_platform.definitions import defs


def test_definitions_load_and_validate():
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert {"raw_images", "bronze_images"} <= {
        k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()
    }
    assert {"ingest_images", "landing_triage"} <= {j.name for j in repo.get_all_jobs()}


def test_dagster_cli_validates_the_workspace(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "FER_HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_importing_the_code_location_does_not_import_torch():
    code = "import sys, fer_platform.definitions; print('torch' in sys.modules, 'faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_local_dsn_password_is_not_in_resource_config(monkeypatch):
    """The UI shows resource config: FER_PG_DSN goes there by name (dg.EnvVar), never by value."""
    import json

    from fer_platform.definitions import build_definitions
    from fer_platform.resources.environments import resources_for

    monkeypatch.setenv("FER_PG_DSN", "postgresql://fer:S3CRET-pw@db.example.com:5432/fer")
    resources = resources_for("local")
    defs = build_definitions(resources)
    config = json.dumps(
        {k: getattr(v, "_get_non_default_public_field_values", lambda: {})() for k, v in resources.items()},
        default=str,
    )
    assert "S3CRET" not in config and "FER_PG_DSN" in config
    assert defs.get_repository_def() is not None
