"""Blob stores: content addressing, write-once, digest checked on every read; file, redis and s3 (moto)."""

from __future__ import annotations

import os

import pytest

from he_compute.transport import blobs
from he_compute.errors import BlobNotFound, FormatError, IntegrityError, StoreError
from he_compute.formats.digests import digest_of
from he_compute.transport.locations import blobs_for_queue


@pytest.fixture(params=["file", "redis", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return blobs.connect(f"file://{tmp_path / 'blobs'}")
    if request.param == "redis":
        return blobs.connect(request.getfixturevalue("redis_url"))
    import boto3

    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"b{os.getpid()}{abs(hash(str(tmp_path))) % 10**8}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return blobs.connect(f"s3://{bucket}/hec?endpoint_url={endpoint}")


def _tamper(store, digest: str, data: bytes) -> None:
    """Replace a stored blob's bytes behind the store's back."""
    hexd = digest.split(":")[1]
    kind = type(store).__name__
    if kind == "FileBlobStore":
        path = store.root / hexd[:2] / hexd
        os.chmod(path, 0o644)
        path.write_bytes(data)
    elif kind == "RedisBlobStore":
        store._r.set(f"hec:blob:{hexd}:0", data)
    else:
        store._s3.put_object(Bucket=store.bucket, Key=store._key(digest), Body=data)


def test_put_get_roundtrip_and_digest(store):
    data = os.urandom(1000)
    digest = store.put(data)
    assert digest == digest_of(data) and digest.startswith("sha256:")
    assert store.exists(digest)
    assert store.get(digest) == data
    assert isinstance(store, blobs.BlobStore)


def test_write_once(store):
    data = b"same bytes"
    assert store.put(data) == store.put(data)
    assert store.get(digest_of(data)) == data


def test_tampered_blob_is_detected_on_read(store):
    digest = store.put(b"genuine ciphertext")
    _tamper(store, digest, b"forged ciphertext!")
    with pytest.raises(IntegrityError, match="does not match its digest"):
        store.get(digest)


def test_missing_blob_and_delete(store):
    digest = store.put(b"to delete")
    store.delete(digest)
    assert not store.exists(digest)
    with pytest.raises(BlobNotFound, match="upload it again"):
        store.get(digest)


def test_malformed_digest_is_refused_before_touching_the_store(store):
    for bad in ("sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64, 42):
        with pytest.raises(FormatError, match="not a blob digest"):
            store.get(bad)


def test_redis_chunks_large_blobs(redis_url):
    from he_compute.transport.blobs import redis as _redis

    store = blobs.connect(redis_url)
    data = os.urandom(2 * _redis.CHUNK + 123)
    digest = store.put(data)
    assert int(store._r.get(f"hec:blob:{digest[7:]}")) == 3
    assert store.get(digest) == data


def test_file_put_is_atomic_and_leaves_no_temp_files(tmp_path):
    store = blobs.connect(f"file://{tmp_path}")
    store.put(b"x" * 10000)
    names = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert len(names) == 1 and not names[0].startswith(".")


def test_connect_refuses_unknown_urls():
    with pytest.raises(StoreError, match="unknown blob store URL"):
        blobs.connect("ftp://example.org/x")


def test_default_blob_store_follows_the_queue():
    assert blobs_for_queue("sqlite://.hec/queue.db") == "file://.hec/blobs"
    assert blobs_for_queue("sqlite:///srv/q/queue.db") == "file:///srv/q/blobs"
    assert blobs_for_queue("redis://h:6379/1") == "redis://h:6379/1"


def test_a_blob_that_fails_its_digest_is_removed_and_the_next_upload_repairs_it(store):
    data = b"ciphertext chunk" * 100
    digest = store.put(data)
    _tamper(store, digest, b"poison")
    with pytest.raises(IntegrityError, match="does not match its digest"):
        store.get(digest)
    assert not store.exists(digest)  # removed, so the next run uploads it again instead of reusing it
    with pytest.raises(BlobNotFound):
        store.get(digest)
    assert store.put(data) == digest and store.get(digest) == data
