"""Storage resources: the lake and the landing zone (a folder, s3:// or abfs://)."""


from typing import Optional

import dagster as dg
from pydantic import PrivateAttr

from fer_platform.core.storage import Storage


class _StorageResource(dg.ConfigurableResource):
    url: str
    storage_options: dict[str, str] = {}

    _storage: Optional[Storage] = PrivateAttr(default=None)

    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = Storage(self.url, self.storage_options)
        return self._storage


class LakeResource(_StorageResource):
    """The data lake root: raw/ bronze/ silver/ gold/ index/ quarantine/ _meta/."""


class LandingResource(_StorageResource):
    """The landing zone that new files arrive in, in the FER2013 layout ``[split/]emotion/name``."""
