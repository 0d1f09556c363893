"""Where finished clips go: a local folder served by ``web``, or S3 (MinIO, R2) through boto3."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Protocol

from clipqueue.config import Settings
from clipqueue.exceptions import StorageRejected, StorageUnavailable

CONTENT_TYPES = {".mp4": "video/mp4", ".jpg": "image/jpeg"}

# Each object a clip may store, by name, as the end of its key after the clip's id: the clip, its thumbnail,
# its thumbnails by size, its preview and its portrait version. A canceled clip's objects are found by these.
OBJECT_SUFFIXES = {
    "video": ".mp4", "thumbnail": ".jpg", "small": "-small.jpg", "medium": "-medium.jpg", "large": "-large.jpg",
    "preview": "-preview.mp4", "portrait": "-portrait.mp4",
}


def object_key(clip_id: str, suffix: str) -> str:
    """The stored object's key comes from the clip id alone, so a rerun overwrites it."""
    return f"clips/{clip_id}{suffix}"


class Storage(Protocol):
    def put_file(self, path: Path, key: str) -> str:
        """Store ``path`` under ``key`` and return the object's public URL."""

    def delete(self, key: str) -> None:
        """Remove the object under ``key``, if there is one (a canceled clip's files)."""

    def copy(self, source_key: str, key: str) -> str:
        """Store a copy of the object under ``source_key`` under ``key``; return the copy's public URL.

        Raises ``StorageRejected`` when there is no object under ``source_key``.
        """


class LocalStorage:
    """A folder; ``web`` serves it under ``/media/``."""

    def __init__(self, root: str, public_base_url: str):
        self.root = Path(root)
        self.public_base_url = public_base_url.rstrip("/")

    def put_file(self, path: Path, key: str) -> str:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        # Copy beside the target, then rename: readers never see half a file.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)  # in the kernel (sendfile), not through Python buffers
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return f"{self.public_base_url}/{key}"

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def copy(self, source_key: str, key: str) -> str:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        # A hard link: deleting or replacing either name leaves the other's bytes alone.
        staged = target.parent / f".copy-{uuid.uuid4().hex}"
        try:
            os.link(self.root / source_key, staged)
        except FileNotFoundError:
            raise StorageRejected(f"nothing stored under {source_key} to copy") from None
        except OSError:
            try:
                shutil.copyfile(self.root / source_key, staged)
            except FileNotFoundError:
                raise StorageRejected(f"nothing stored under {source_key} to copy") from None
        try:
            os.replace(staged, target)
        finally:
            staged.unlink(missing_ok=True)
        return f"{self.public_base_url}/{key}"


# S3 error codes that mean "try again later".
_RETRYABLE_S3_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded",
}


class S3Storage:
    """An S3 bucket, uploaded with boto3's transfer manager (multipart past 8 MiB)."""

    def __init__(self, bucket: str, endpoint_url: str = "", public_base_url: str = ""):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                s3={"addressing_style": "path"} if endpoint_url else {},
            ),
        )
        self.transfer_config = TransferConfig(multipart_threshold=8 * 1024 * 1024, max_concurrency=4)
        if public_base_url:
            self.public_base_url = public_base_url.rstrip("/")
        elif endpoint_url:
            self.public_base_url = f"{endpoint_url.rstrip('/')}/{bucket}"
        else:
            region = self.client.meta.region_name or "us-east-1"
            self.public_base_url = f"https://{bucket}.s3.{region}.amazonaws.com"

    def put_file(self, path: Path, key: str) -> str:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        content_type = CONTENT_TYPES.get(Path(key).suffix, "application/octet-stream")
        try:
            self.client.upload_file(
                str(path), self.bucket, key,
                ExtraArgs={"ContentType": content_type},
                Config=self.transfer_config,
            )
        except ClientError as exc:
            raise _classify_client_error(exc) from exc
        except S3UploadFailedError as exc:
            cause = exc.__context__
            if isinstance(cause, ClientError):
                raise _classify_client_error(cause) from exc
            raise StorageUnavailable(f"upload to s3://{self.bucket}/{key} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"object store unreachable: {exc}") from exc
        return f"{self.public_base_url}/{key}"

    def copy(self, source_key: str, key: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:  # inside the object store: no bytes through this host
            self.client.copy_object(Bucket=self.bucket, Key=key,
                                    CopySource={"Bucket": self.bucket, "Key": source_key})
        except ClientError as exc:
            raise _classify_client_error(exc) from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"object store unreachable: {exc}") from exc
        return f"{self.public_base_url}/{key}"

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            raise _classify_client_error(exc) from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"object store unreachable: {exc}") from exc


def _classify_client_error(exc) -> Exception:
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    message = f"object store refused the upload: {code or status} {error.get('Message', '')}".strip()
    if code in _RETRYABLE_S3_CODES or status >= 500 or status == 429:
        return StorageUnavailable(message)
    return StorageRejected(message)


def storage_from_settings(settings: Settings, public_base_url: str | None = None) -> Storage:
    """S3 when ``S3_BUCKET`` is set, else the local folder, linked under ``public_base_url``
    (default ``PUBLIC_BASE_URL``; see :mod:`clipqueue.publicurl`)."""
    if settings.s3_bucket:
        return S3Storage(settings.s3_bucket, settings.s3_endpoint_url, settings.cdn_base_url)
    base = settings.cdn_base_url or f"{public_base_url or settings.public_base_url}/media"
    return LocalStorage(settings.storage_local_dir, base)
