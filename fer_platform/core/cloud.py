"""Settings of the cloud environments: required variables, object-store URLs, fsspec options.

Plain Python (no dagster): ``resources/environments.py`` reads the environment
through these helpers at load time, so a missing or malformed setting fails with
one line that names the variable, and hands the values to the resources as
``dg.EnvVar`` so they are resolved (and kept out of the UI) at run time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from fer_platform.core.errors import ConfigError

AZURE_SCHEMES = ("abfs", "abfss", "az")
S3_SCHEMES = ("s3", "s3a")
AZURE_CREDENTIAL_VARS = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
)
TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")


def require(env: str, name: str, meaning: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of variable ``name``, or ConfigError naming it and what it is for."""
    value = (environ if environ is not None else os.environ).get(name, "").strip()
    if not value:
        raise ConfigError(f"FER_ENV={env} needs {name} ({meaning}); it is not set")
    return value


def is_set(name: str, environ: Mapping[str, str] | None = None) -> bool:
    return bool((environ if environ is not None else os.environ).get(name, "").strip())


def flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    value = (environ if environ is not None else os.environ).get(name, "").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def check_url(env: str, name: str, url: str, schemes: tuple[str, ...], example: str) -> str:
    """``url`` if its scheme is one of ``schemes`` and it names a container/bucket."""
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.netloc:
        raise ConfigError(f"FER_ENV={env}: {name} must look like {example}, not {url!r}")
    return url


def azure_account(url: str) -> str | None:
    """The storage account of ``abfs://container@account.dfs.core.windows.net/...``, if named."""
    host = urlsplit(url).netloc
    if "@" not in host:
        return None
    return host.split("@", 1)[1].split(".", 1)[0] or None


def azure_credential_var(env: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Which storage credential variable is set (None: DefaultAzureCredential); more than one is an error."""
    found = [name for name in AZURE_CREDENTIAL_VARS if is_set(name, environ)]
    if len(found) > 1:
        raise ConfigError(
            f"FER_ENV={env}: set only one of {', '.join(found)} (or none, for DefaultAzureCredential)"
        )
    return found[0] if found else None


def adlfs_options(
    account_name: str | None = None,
    connection_string: str | None = None,
    account_key: str | None = None,
    sas_token: str | None = None,
) -> dict:
    """fsspec/adlfs options for one way of authenticating.

    A connection string (also the way to reach Azurite), an account key or a SAS
    token; none of them: ``DefaultAzureCredential`` (managed identity, workload
    identity, environment service principal, Azure CLI), never anonymous access.
    """
    options: dict = {}
    if account_name:
        options["account_name"] = account_name
    if connection_string:
        options["connection_string"] = connection_string
    elif account_key:
        options["account_key"] = account_key
    elif sas_token:
        options["sas_token"] = sas_token.lstrip("?")
    else:
        options["anon"] = False
    return options


def s3fs_options(endpoint_url: str | None = None, region_name: str | None = None) -> dict:
    """fsspec/s3fs options; credentials come from the standard AWS chain (environment,
    profile, web identity / IRSA, ECS or EC2 instance role)."""
    options: dict = {}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    if region_name:
        options["client_kwargs"] = {"region_name": region_name}
    return options
