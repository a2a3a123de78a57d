"""Fixtures of the cloud tests: Azurite, moto's S3 server and a password-protected PostgreSQL,
each started once per session on 127.0.0.1 and stopped at the end; per test, a fresh container
or bucket and the environment variables of FER_ENV=azure or aws pointing at them."""

import itertools
import os
from dataclasses import dataclass
from typing import Callable

import pytest

from fer_platform_tests import servers

# Never a developer's cloud settings, never the instance metadata service.
for _var in [v for v in os.environ if v.startswith(("AZURE_", "AWS_"))] + [
    "FER_S3_ENDPOINT_URL",
    "FER_PG_ENTRA_AUTH",
]:
    os.environ.pop(_var, None)
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

_names = itertools.count()


def _server(start):
    try:
        server = start()
    except servers.ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


@pytest.fixture(scope="session")
def azurite():
    server = _server(servers.start_azurite)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_s3():
    server = _server(servers.start_moto)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_cloud():
    server = _server(servers.start_cloud_postgres)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis():
    server = _server(servers.start_redis)
    yield server
    server.stop()


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_names)}"


@dataclass
class CloudStore:
    """One test's container or bucket and the settings of its FER_ENV."""

    env: str
    lake_url: str
    landing_url: str
    storage_options: dict  # what a standard fsspec reader (pandas, pyarrow) needs
    list_keys: Callable[[str], list[str]]  # keys under a prefix, listed with the cloud SDK itself
    put: Callable[[str, bytes], None]  # an upload by the cloud SDK (another client than fsspec's)
    remove: Callable[[str], None]  # a delete by the cloud SDK
    variables: dict


@pytest.fixture
def azure_store(azurite, monkeypatch) -> CloudStore:
    container = unique("fer")
    client = azurite.service().create_container(container)
    base = f"abfs://{container}@{azurite.account}.dfs.core.windows.net"
    variables = {
        "FER_LAKE_URL": f"{base}/lake",
        "FER_LANDING": f"{base}/landing",
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
    }
    for k, v in variables.items():
        monkeypatch.setenv(k, v)
    return CloudStore(
        "azure",
        variables["FER_LAKE_URL"],
        variables["FER_LANDING"],
        {"connection_string": azurite.connection_string},
        lambda prefix: sorted(b.name for b in client.list_blobs(name_starts_with=prefix)),
        lambda key, data: client.upload_blob(key, data, overwrite=True),
        client.delete_blob,
        variables,
    )


@pytest.fixture
def aws_store(moto_s3, monkeypatch) -> CloudStore:
    bucket = unique("fer-")
    client = moto_s3.client()
    client.create_bucket(Bucket=bucket)
    variables = {
        "FER_LAKE_URL": f"s3://{bucket}/lake",
        "FER_LANDING": f"s3://{bucket}/landing",
        "FER_S3_ENDPOINT_URL": moto_s3.endpoint,
        **servers.MOTO_CREDENTIALS,
    }
    for k, v in variables.items():
        monkeypatch.setenv(k, v)

    def list_keys(prefix: str) -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    return CloudStore(
        "aws",
        variables["FER_LAKE_URL"],
        variables["FER_LANDING"],
        {"endpoint_url": moto_s3.endpoint, "key": "testing", "secret": "testing"},
        list_keys,
        lambda key, data: client.put_object(Bucket=bucket, Key=key, Body=data),
        lambda key: client.delete_object(Bucket=bucket, Key=key),
        variables,
    )


@pytest.fixture(params=["azure", "aws"])
def cloud_store(request) -> CloudStore:
    """The same test on Azure (Azurite) and on AWS (moto S3)."""
    return request.getfixturevalue(f"{request.param}_store")
