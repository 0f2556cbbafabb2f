"""The S3 backend's two clients, built from one Settings with the same endpoint, credentials
(explicit, else the standard AWS chain), region, TLS verification, timeouts and retries.

* a plain botocore client: object bodies, listings, the bucket check and the lease's
  conditional reads and replaces, in the calling thread (and a second one that makes a single
  attempt, to tell whether a failed write landed);
* an s3fs filesystem: deletes. s3fs (with aiobotocore and aiohttp) is imported only when it
  is built.

Every botocore client of the process reads its service model and endpoint data through one
shared loader (:data:`botocore_models`): parsing them took about 0.1 s of CPU for each new
session, so a process that opens a second store (a restore after a connect, a verify after a
restore) no longer pays it again. Only those read-only data files are shared; each client
still has a session of its own, so credentials are looked up afresh for each store.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import botocore.config
import botocore.loaders
import botocore.session

if TYPE_CHECKING:
    import s3fs

    from bottomless.settings import Settings


class BotocoreModels:
    """The botocore data loader every S3 client of this process shares; the one owner of it.

    Built by the first session that asks, so that it honours that session's ``data_path``
    (``AWS_DATA_PATH``); :meth:`reset` forgets it (a hook for tests).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loader: botocore.loaders.Loader | None = None

    def session(self) -> botocore.session.Session:
        """A new botocore session whose service data comes from the shared loader."""
        session = botocore.session.get_session()
        with self._lock:
            if self._loader is None:
                self._loader = session.get_component("data_loader")
            else:
                session.register_component("data_loader", self._loader)
        return session

    def reset(self) -> None:
        """Forget the shared loader: the next session reads the data files again."""
        with self._lock:
            self._loader = None


#: the service data shared by the S3 clients of this process
botocore_models = BotocoreModels()


def config_kwargs(settings: Settings) -> dict[str, Any]:
    """botocore client options shared by the s3fs client and the plain one."""
    return {
        "connect_timeout": settings.timeout,
        "read_timeout": settings.timeout,
        # total_max_attempts counts the first try; botocore's max_attempts would not
        "retries": {"total_max_attempts": settings.max_retries + 1, "mode": "standard"},
    }


def botocore_client(settings: Settings) -> Any:
    """The plain botocore S3 client ``settings`` describe."""
    return botocore_models.session().create_client(
        "s3",
        endpoint_url=settings.endpoint or None,
        region_name=settings.region or None,
        verify=settings.verify_tls,
        aws_access_key_id=secret(settings.access_key_id),
        aws_secret_access_key=secret(settings.secret_access_key),
        aws_session_token=secret(settings.session_token),
        config=botocore.config.Config(
            # snapshot parts are uploaded, and restored, by several threads at once
            max_pool_connections=max(10, settings.parallelism + 2),
            **config_kwargs(settings),
        ),
    )


def s3fs_filesystem(settings: Settings) -> s3fs.S3FileSystem:
    """The s3fs filesystem ``settings`` describe, configured as :func:`botocore_client`."""
    import s3fs

    client_kwargs: dict[str, Any] = {"verify": settings.verify_tls}
    if settings.region:
        client_kwargs["region_name"] = settings.region
    fs = s3fs.S3FileSystem(
        endpoint_url=settings.endpoint or None,
        key=secret(settings.access_key_id),
        secret=secret(settings.secret_access_key),
        token=secret(settings.session_token),
        client_kwargs=client_kwargs,
        config_kwargs=config_kwargs(settings),
        use_listings_cache=False,
        skip_instance_cache=True,
        max_concurrency=1,  # a GET is one request (no HEAD first to plan ranged reads)
    )
    fs.retries = 1  # botocore retries (config_kwargs); s3fs's own loop would multiply them
    return fs


def secret(value: Any) -> str | None:
    """The text of a SecretStr setting, or None."""
    return value.get_secret_value() if value is not None else None
