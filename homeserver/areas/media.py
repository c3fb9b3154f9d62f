"""Media: metadata in the database, bytes with the storage provider; other servers' media
fetched over federation; URL previews."""

from __future__ import annotations

from dataclasses import dataclass

from federation.discovery import IPRangeFilter
from homeserver.areas.core import Core
from homeserver.areas.federation_transport import FederationTransport
from homeserver.areas.stores import Stores
from media_repo.preview import UrlPreviewer
from media_repo.providers.base import StorageProvider
from media_repo.providers.filesystem import FilesystemProvider
from media_repo.remote import LocationFetcher, RemoteMedia
from media_repo.repository import MediaRepository


@dataclass(frozen=True)
class Media:
    provider: StorageProvider
    repository: MediaRepository
    url_previewer: UrlPreviewer


def build_media(core: Core, stores: Stores, federation: FederationTransport) -> Media:
    config, fed = core.config, core.config.federation
    provider = _storage_provider(core)
    remote = RemoteMedia(
        core.server_name,
        core.clock,
        federation.client,
        stores.media_store,
        provider,
        config.media,
        LocationFetcher(
            core.reactor,
            IPRangeFilter(fed.ip_range_blocklist, fed.ip_range_allowlist),
            federation.connector,
            fed.verify_tls,
        ),
        fed.request_timeout_ms,
    )
    repository = MediaRepository(
        core.server_name,
        core.clock,
        core.reactor,
        config.media,
        stores.media_store,
        provider,
        core.limiter("media_upload_per_user", config.rate_limits.media_upload_per_user),
        remote,
    )
    return Media(
        provider=provider,
        repository=repository,
        url_previewer=UrlPreviewer(core.reactor, core.clock, config.media.url_preview, repository),
    )


def _storage_provider(core: Core) -> StorageProvider:
    media = core.config.media
    if media.s3 is None:
        return FilesystemProvider(core.config.resolve_path(media.store_path), core.reactor)
    # Imported only then: boto3 costs every other server 11 MB of memory.
    from media_repo.providers.s3 import S3Provider

    s3 = media.s3
    return S3Provider(
        s3.bucket,
        s3.endpoint_url,
        s3.region,
        s3.access_key_id,
        s3.secret_access_key,
        core.reactor,
        timeout_s=s3.timeout_ms / 1000,
        key_prefix=s3.key_prefix,
    )
