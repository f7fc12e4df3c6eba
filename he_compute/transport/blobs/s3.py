"""``s3://bucket/prefix`` blobs: one object per blob at ``prefix/sha256/<hex>``.

An S3 PUT is atomic (an object is either absent or whole), which gives the
write-once, all-or-nothing property without temp files.  The endpoint comes
from ``?endpoint_url=...`` in the URL or from boto3's usual configuration
(``AWS_ENDPOINT_URL``, ``~/.aws``), so S3-compatible stores (MinIO, moto) work.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from ...errors import BlobNotFound, IntegrityError, LimitExceeded, StoreError
from ...formats.digests import check_digest, digest_of
from .._closing import Closing
from .base import DEFAULT_MAX_BLOB_BYTES, verified


class S3BlobStore(Closing):
    """Blobs as S3 objects.

    Example::

        store = S3BlobStore.from_url("s3://my-bucket/hec?endpoint_url=http://127.0.0.1:9000")
    """

    def __init__(self, client: Any, bucket: str, prefix: str, url: str, *, max_bytes: int = DEFAULT_MAX_BLOB_BYTES):
        self._s3, self.bucket, self.prefix, self.url = client, bucket, prefix.strip("/"), url
        self.max_bytes = max_bytes

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        """Build a boto3 client (imported here, lazily) for the bucket the URL names."""
        try:
            import boto3
        except ImportError:
            raise StoreError("s3:// blob stores need boto3: pip install boto3") from None
        parts = urlsplit(url)
        if not parts.netloc:
            raise StoreError(f"{url!r} names no bucket: use s3://BUCKET/PREFIX")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        client = boto3.client("s3", endpoint_url=query.get("endpoint_url"), region_name=query.get("region"))
        return cls(client, parts.netloc, parts.path, url)

    def _key(self, digest: str) -> str:
        hexd = check_digest(digest)
        return f"{self.prefix}/sha256/{hexd}" if self.prefix else f"sha256/{hexd}"

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise BlobNotFound(f"blob is not in {self.url}: upload it again (hec run does)") from None
            raise StoreError(f"blob store {self.url}: {what} failed ({code or exc}): check the bucket and credentials") from exc
        except BotoCoreError as exc:
            raise StoreError(f"blob store {self.url}: {what} failed ({exc})") from exc

    def put(self, data: bytes) -> str:
        """Upload unless an object with this digest is already there."""
        digest = digest_of(data)
        if not self.exists(digest):
            self._call("put", self._s3.put_object, Key=self._key(digest), Body=bytes(data))
        return digest

    def get(self, digest: str) -> bytes:
        """Download (bounded by the store's limit) and verify; a blob that fails its digest is removed."""
        obj = self._call("get", self._s3.get_object, Key=self._key(digest))
        size = int(obj.get("ContentLength") or 0)
        if size > self.max_bytes:
            obj["Body"].close()
            raise LimitExceeded(f"blob {digest[:19]} is {size} bytes, larger than this store's limit of "
                                f"{self.max_bytes} (HEC_MAX_BLOB_MB)")
        data = obj["Body"].read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise LimitExceeded(f"blob {digest[:19]} is larger than this store's limit of {self.max_bytes} bytes")
        try:
            return verified(digest, data, self.url)
        except IntegrityError:
            self.delete(digest)
            raise

    def exists(self, digest: str) -> bool:
        """HEAD the object."""
        try:
            self._call("exists", self._s3.head_object, Key=self._key(digest))
        except BlobNotFound:
            return False
        return True

    def delete(self, digest: str) -> None:
        """Delete the object (absent is fine)."""
        self._call("delete", self._s3.delete_object, Key=self._key(digest))

    def close(self) -> None:
        """Nothing to release (boto3 pools are per client)."""
