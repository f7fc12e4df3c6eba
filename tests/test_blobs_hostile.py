"""A hostile party with write access to the blob store (a worker today, anyone with the credentials) against
whoever reads from it: lying chunk counts, oversized chunks, links to devices and FIFOs, poisoned bytes.

Every read must be bounded before it allocates, must never hang, and a blob that fails its digest is removed
so that the next upload repairs it.
"""

from __future__ import annotations

import os
import threading

import pytest

from he_compute.errors import IntegrityError, LimitExceeded
from he_compute.formats.digests import digest_of
from he_compute.transport import blobs
from he_compute.transport.blobs.file import FileBlobStore
from he_compute.transport.blobs.redis import RedisBlobStore


def _within(seconds: float, fn):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it takes longer than ``seconds``."""
    box: dict = {}

    def go():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the read did not return within {seconds}s (it hangs)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_redis_lying_chunk_count_is_refused_before_allocating(redis_url):
    import redis

    r = redis.Redis.from_url(redis_url)
    store = blobs.connect(redis_url)
    digest = store.put(b"honest bytes")
    hexd = digest.split(":")[1]
    r.set(f"hec:blob:{hexd}", 10**12)
    with pytest.raises(LimitExceeded, match="chunks"):
        _within(5, lambda: store.get(digest))
    r.set(f"hec:blob:{hexd}", "lots")
    with pytest.raises(IntegrityError, match="chunk count"):
        _within(5, lambda: store.get(digest))


def test_redis_oversized_chunk_is_refused_before_reading(redis_url):
    import redis

    store = RedisBlobStore(redis.Redis.from_url(redis_url), redis_url, max_bytes=1 << 20)
    digest = store.put(b"small")
    redis.Redis.from_url(redis_url).set(f"hec:blob:{digest.split(':')[1]}:0", b"x" * (2 << 20))
    with pytest.raises(LimitExceeded, match="larger than"):
        store.get(digest)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_file_blob_that_is_a_link_or_a_fifo_is_refused_without_hanging(tmp_path, target):
    store = FileBlobStore(tmp_path / "blobs")
    digest = store.put(b"real bytes")
    path = tmp_path / "blobs" / digest[7:9] / digest[7:]
    path.unlink()
    if target == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(target)
    with pytest.raises(IntegrityError, match="not a regular file"):
        _within(5, lambda: store.get(digest))
    assert not store.exists(digest)


def test_file_blob_behind_a_linked_directory_is_refused(tmp_path):
    store = FileBlobStore(tmp_path / "blobs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = b"planted"
    digest = digest_of(data)
    (elsewhere / digest[7:]).write_bytes(data)
    (tmp_path / "blobs" / digest[7:9]).symlink_to(elsewhere)
    with pytest.raises(IntegrityError, match="not a regular directory"):
        store.get(digest)


def test_file_blob_larger_than_the_limit_is_refused_before_reading(tmp_path):
    store = FileBlobStore(tmp_path / "blobs", max_bytes=1024)
    with pytest.raises(LimitExceeded, match="larger than"):
        store.get(store.put(b"x" * 4096))
