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
from .base import max_blob_bytes, verified


class S3BlobStore(Closing):
    """Blobs as S3 objects.

    Example::

        store = S3BlobStore.from_url("s3://my-bucket/hec?endpoint_url=http://127.0.0.1:9000")
    """

    def __init__(self, client: Any, bucket: str, prefix: str, url: str, *, max_bytes: int | None = None):
        self._s3, self.bucket, self.prefix, self.url = client, bucket, prefix.strip("/"), url
        self.max_bytes = max_bytes or max_blob_bytes()

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
        from botocore.config import Config

        # SigV4 everywhere: presigned URLs (handed out by the coordinator) need it on real S3.
        client = boto3.client("s3", endpoint_url=query.get("endpoint_url"), region_name=query.get("region"),
                              config=Config(signature_version="s3v4"))
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

    # The coordinator hands strangers presigned URLs scoped to one object instead of proxying bytes.  Uploads go
    # to a fresh staging key, never to a blob's own key: the coordinator hashes the staged object before it
    # copies it into place, because not every S3-compatible store enforces a signed checksum.

    def presigned_get(self, digest: str, expires_s: int) -> str:
        """A URL that reads the blob ``digest`` (and nothing else) for ``expires_s`` seconds."""
        url: str = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(digest)}, ExpiresIn=int(expires_s))
        return url

    def presigned_staging_put(self, name: str, size: int, expires_s: int) -> str:
        """A URL that writes ``size`` bytes to the staging object ``name`` for ``expires_s`` seconds."""
        url: str = self._s3.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": self._staging(name), "ContentLength": int(size)},
            ExpiresIn=int(expires_s))
        return url

    def _staging(self, name: str) -> str:
        return f"{self.prefix}/incoming/{name}" if self.prefix else f"incoming/{name}"

    def staged(self, name: str) -> tuple[int, Any]:
        """``(size, chunks)`` of a staging object (a ``BlobNotFound`` if nothing was uploaded)."""
        obj = self._call("get", self._s3.get_object, Key=self._staging(name))
        return int(obj["ContentLength"]), obj["Body"].iter_chunks(1 << 20)

    def promote(self, name: str, digest: str) -> None:
        """Copy a staging object, checked to hash to ``digest``, to the blob's key; drop the staging object."""
        self._call("copy", self._s3.copy_object, Key=self._key(digest),
                   CopySource={"Bucket": self.bucket, "Key": self._staging(name)})
        self.drop_staged(name)

    def drop_staged(self, name: str) -> None:
        """Delete a staging object (absent is fine)."""
        self._call("delete", self._s3.delete_object, Key=self._staging(name))

    def chunks(self, digest: str) -> Any:
        """The blob's bytes chunk by chunk, unverified (the receiver checks the digest)."""
        return self._call("get", self._s3.get_object, Key=self._key(digest))["Body"].iter_chunks(1 << 20)

    def adopt(self, digest: str, src: Any) -> None:
        """Upload the file ``src``, whose sha256 the caller has checked is ``digest`` (boto3 streams it)."""
        if not self.exists(digest):
            self._call("put", self._s3.upload_file, Filename=str(src), Key=self._key(digest))

    def close(self) -> None:
        """Nothing to release (boto3 pools are per client)."""
