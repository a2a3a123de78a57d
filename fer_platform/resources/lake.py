"""Storage resources: the lake and the landing zone (a folder, s3:// or abfs://), and the object
store credentials they share."""

import os
from typing import ClassVar, Optional

import dagster as dg
from pydantic import PrivateAttr

from fer_platform.core.cloud import adlfs_options, s3fs_options
from fer_platform.core.errors import ConfigError
from fer_platform.core.storage import Storage, StorageUnavailable


class ObjectStore(dg.ConfigurableResource):
    """How to reach the object store behind ``abfs://`` or ``s3://`` URLs (none for a folder)."""

    def storage_options(self) -> dict:
        return {}


class AzureBlobStore(ObjectStore):
    """ADLS Gen2 / Blob Storage through adlfs: a connection string (also how Azurite is reached),
    an account key, a SAS token, or none of them for ``DefaultAzureCredential`` (managed identity)."""

    account_name: Optional[str] = None
    connection_string: Optional[str] = None
    account_key: Optional[str] = None
    sas_token: Optional[str] = None

    def storage_options(self) -> dict:
        return adlfs_options(self.account_name, self.connection_string, self.account_key, self.sas_token)


class S3Store(ObjectStore):
    """S3 through s3fs; credentials from the standard AWS chain. ``endpoint_url`` for MinIO, moto,
    LocalStack or a VPC endpoint."""

    endpoint_url: Optional[str] = None
    region_name: Optional[str] = None

    def storage_options(self) -> dict:
        return s3fs_options(self.endpoint_url, self.region_name)


def merged_options(store: Optional[ObjectStore], extra: dict) -> dict:
    return {**(store.storage_options() if store is not None else {}), **extra}


class _StorageResource(dg.ConfigurableResource):
    url: str
    store: Optional[ObjectStore] = None
    storage_options: dict[str, str] = {}

    _storage: Optional[Storage] = PrivateAttr(default=None)
    CONFINED: ClassVar[bool] = False  # reads only regular files inside the root, never through a link

    def storage(self) -> Storage:
        if isinstance(
            self.url, dg.EnvVar
        ):  # not initialised by Dagster: the value would be the variable's name
            raise ConfigError(
                f"{type(self).__name__}.url is {self.url.env_var_name} unresolved: "
                "use it inside a run or through dg.build_resources"
            )
        if self._storage is None:
            self._storage = Storage(
                self.url, merged_options(self.store, self.storage_options), confined=self.CONFINED
            )
        return self._storage

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.storage().check()  # a wrong credential or container fails the run at start, in one line


class LakeResource(_StorageResource):
    """The data lake root: raw/ bronze/ silver/ gold/ index/ quarantine/ _meta/."""


DEFAULT_MAX_FILE_BYTES = 64 * 1024  # a 48x48 grayscale image is 1-3 KB as PNG or JPEG


class LandingResource(_StorageResource):
    """The landing zone that new files arrive in, in the FER2013 layout ``[split/]emotion/name``."""

    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    """Files larger than this are quarantined by their size without being read (FER_MAX_FILE_BYTES)."""
    CONFINED: ClassVar[bool] = True  # nothing outside the landing root is ever read

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        super().setup_for_execution(context)
        storage = self.storage()
        if storage.local and not os.path.isdir(storage.root):  # a typo would otherwise list as "no new files"
            raise StorageUnavailable(
                f"the landing zone {storage.url} is not a folder: create it, or point "
                "FER_LANDING (or --landing) at the right one"
            )
