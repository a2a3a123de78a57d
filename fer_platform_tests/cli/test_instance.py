"""The local Dagster instance's configuration (cli/instance.py)."""

from fer_platform.cli.instance import sqlalchemy_url


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
