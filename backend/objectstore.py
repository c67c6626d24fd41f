"""Save blobs on S3-compatible object storage (SeaweedFS, MinIO, AWS S3) through presigned URLs
(seed 3.1.5): the client PUTs and GETs the bytes straight to storage; the backend only signs
URLs, checks what arrived on confirm, copies (restore) and deletes (pruning) objects.

The presigned PUT signs ``Content-Length`` and ``Content-Type``, so storage itself refuses a
body of another size than announced (the quota cannot be bypassed with a bigger upload). The
object goes straight to its final key ``<user_id>/<product_id>/<savegame_id>`` (seed 4.2.3); a
version exists only once ``confirm-upload`` found the object with the announced size and SHA-256
and wrote the database row, so an object without a row is at worst an orphan, never a save.

Storage unreachable: every call raises ``ServiceUnavailable`` (503 ``SERVICE_UNAVAILABLE``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Protocol

from backend.errors import ServiceUnavailable

READ_BLOCK = 1024 * 1024


class SaveStorage(Protocol):
    presigned: bool  # clients transfer straight to storage through presigned URLs

    def upload_target(self, key: str, size: int, ttl: int) -> tuple[str, dict[str, str]]: ...
    def download_url(self, key: str, ttl: int) -> str: ...
    def uploaded(self, key: str) -> tuple[int, str] | None: ...
    def discard(self, upload_id: str, key: str) -> None: ...
    def commit(self, upload_id: str, key: str) -> None: ...
    def delete(self, key: str) -> None: ...
    def copy(self, src_key: str, dst_key: str) -> None: ...
    def check(self) -> None: ...


class LocalSaveStorage:
    """The embedded default: blobs as files, DATA/saves/incoming/<upload id> until confirmed,
    then objects/<key>; the backend's own blob routes take and serve the bytes."""

    presigned = False

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "incoming").mkdir(parents=True, exist_ok=True)
        (root / "objects").mkdir(parents=True, exist_ok=True)

    def incoming_path(self, upload_id: str) -> Path:
        return self.root / "incoming" / upload_id

    def upload_target(self, key: str, size: int, ttl: int) -> tuple[str, dict[str, str]]:
        raise NotImplementedError("local uploads go to the backend's blob route")

    def download_url(self, key: str, ttl: int) -> str:
        raise NotImplementedError("local downloads come from the backend's blob route")

    def uploaded(self, key: str) -> tuple[int, str] | None:
        raise NotImplementedError("the blob route records what arrived")

    def discard(self, upload_id: str, key: str) -> None:
        self.incoming_path(upload_id).unlink(missing_ok=True)

    def commit(self, upload_id: str, key: str) -> None:
        dest = self.open_path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.incoming_path(upload_id), dest)

    def open_path(self, key: str) -> Path:
        return self.root / "objects" / key

    def delete(self, key: str) -> None:
        self.open_path(key).unlink(missing_ok=True)

    def copy(self, src_key: str, dst_key: str) -> None:
        dest = self.open_path(dst_key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(self.open_path(src_key), tmp)
        os.replace(tmp, dest)  # a crash never leaves a half-copied version under its key

    def check(self) -> None:
        if not os.access(self.root / "objects", os.W_OK):
            raise ServiceUnavailable(f"save folder {self.root} is not writable")


class S3SaveStorage:
    presigned = True

    def __init__(self, endpoint: str, bucket: str, access_key: str, secret_key: str, *,
                 region: str = "us-east-1", public_endpoint: str | None = None) -> None:
        self.endpoint = endpoint
        self.public_endpoint = public_endpoint or endpoint
        self.bucket = bucket
        self._creds = (access_key, secret_key, region)
        self._local = threading.local()
        self._pid = os.getpid()

    def _client(self, public: bool = False) -> Any:
        """One boto3 client per thread and per process (boto3 clients are not fork-safe and
        their connection pools are per client); ``public`` signs URLs for the clients' host."""
        if self._pid != os.getpid():
            self._local = threading.local()
            self._pid = os.getpid()
        name = "public" if public else "internal"
        client = getattr(self._local, name, None)
        if client is None:
            import boto3
            from botocore.config import Config

            access, secret, region = self._creds
            client = boto3.client(
                "s3", endpoint_url=self.public_endpoint if public else self.endpoint,
                aws_access_key_id=access, aws_secret_access_key=secret, region_name=region,
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                              connect_timeout=2, read_timeout=10,
                              retries={"max_attempts": 1, "mode": "standard"}))
            setattr(self._local, name, client)
        return client

    def _call(self, what: str, fn: Any, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kw)
        except ClientError:
            raise
        except BotoCoreError as exc:
            raise ServiceUnavailable(f"save storage unreachable ({what}): {exc}") from exc

    # -- presigned transfer --------------------------------------------------------------------

    def upload_target(self, key: str, size: int, ttl: int) -> tuple[str, dict[str, str]]:
        """A presigned PUT for exactly ``size`` bytes, and the headers the client must send."""
        content_type = "application/octet-stream"
        url = self._client(public=True).generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type,
                                  "ContentLength": size}, ExpiresIn=ttl)
        return str(url), {"Content-Type": content_type}

    def download_url(self, key: str, ttl: int) -> str:
        return str(self._client(public=True).generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=ttl))

    # -- objects -------------------------------------------------------------------------------

    def uploaded(self, key: str) -> tuple[int, str] | None:
        """Size and SHA-256 of the object (read from storage: S3's ETag is no SHA-256), None
        when nothing was uploaded."""
        from botocore.exceptions import ClientError

        try:
            obj = self._call("get", self._client().get_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise ServiceUnavailable(f"save storage refused a read: {exc}") from exc
        digest = hashlib.sha256()
        size = 0
        body = obj["Body"]
        try:
            for block in iter(lambda: body.read(READ_BLOCK), b""):
                size += len(block)
                digest.update(block)
        except Exception as exc:  # a connection lost mid-read: storage is not usable now
            raise ServiceUnavailable(f"save storage read failed: {exc}") from exc
        finally:
            body.close()
        return size, digest.hexdigest()

    def commit(self, upload_id: str, key: str) -> None:
        """Nothing to move: the presigned PUT wrote the final key."""

    def discard(self, upload_id: str, key: str) -> None:
        self.delete(key)

    def delete(self, key: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self._call("delete", self._client().delete_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            raise ServiceUnavailable(f"save storage refused a delete: {exc}") from exc

    def copy(self, src_key: str, dst_key: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self._call("copy", self._client().copy_object, Bucket=self.bucket, Key=dst_key,
                       CopySource={"Bucket": self.bucket, "Key": src_key})
        except ClientError as exc:
            raise ServiceUnavailable(f"save storage refused a copy: {exc}") from exc

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        client = self._client()
        try:
            self._call("head bucket", client.head_bucket, Bucket=self.bucket)
        except ClientError:
            self._call("create bucket", client.create_bucket, Bucket=self.bucket)

    def check(self) -> None:
        """Readiness: the bucket answers (``ServiceUnavailable`` otherwise)."""
        from botocore.exceptions import ClientError

        try:
            self._call("head bucket", self._client().head_bucket, Bucket=self.bucket)
        except ClientError as exc:
            raise ServiceUnavailable(f"save bucket {self.bucket!r} not usable: {exc}") from exc
