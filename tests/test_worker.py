"""The worker: evaluates real TFHE jobs, caches evaluators and keys, refuses crafted bundles, survives bad jobs.

In-process workers here (burst mode); crash and kill tests live in test_worker_faults.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import he_compute
from he_compute.transport import blobs, queue
from he_compute.formats.bundle import Bundle
from he_compute.errors import DeviceError
from he_compute.transport.queue import JobState
from he_compute.worker.executor import ByteLRU
from he_compute.worker.host import detect_devices, split_cores
from he_compute.worker.loop import Worker
from queue_support import decrypt_jobs, submit_samples


@pytest.fixture
def env(tmp_path):
    q = queue.connect(f"sqlite://{tmp_path / 'queue.db'}", lease_s=10)
    store = blobs.connect(f"file://{tmp_path / 'blobs'}")
    return q, store


def _worker(q, store, lines=None):
    return Worker(q, store, name="test-worker", log=(lines.append if lines is not None else lambda m: None))


def test_worker_results_decrypt_to_the_clear_model(env, compiled, cancer):
    q, store = env
    c = compiled("linear")
    X = cancer[1][:4]
    ids, _ = submit_samples(q, store, c, X, per_job=2)
    w = _worker(q, store)
    assert w.run(burst=True) == 2
    assert all(q.status(j).state is JobState.DONE for j in ids)
    np.testing.assert_allclose(decrypt_jobs(q, store, c, ids), c.model.predict_proba(X, fhe="disable"), atol=1e-9)


def test_repeated_jobs_skip_download_and_deserialization(env, compiled, cancer):
    q, store = env
    c = compiled("linear")
    ids, _ = submit_samples(q, store, c, cancer[1][:3], per_job=1)
    w = _worker(q, store)
    w.run(burst=True)
    stats = [q.status(j).result["stats"] for j in ids]
    assert [(s["server"], s["keys"]) for s in stats] == [("miss", "miss"), ("hit", "hit"), ("hit", "hit")]
    assert w.stats["keys_loads"] == 1 and w.stats["server_loads"] == 1 and w.stats["keys_hits"] == 2


def test_malformed_job_fails_with_a_clear_message_and_the_worker_goes_on(env, compiled, cancer):
    q, store = env
    bad = [q.submit({"op": "evaluate"}), q.submit("not a dict"),
           q.submit({"v": 1, "op": "evaluate", "scheme": "tfhe", "model_id": "m", "key_id": "k",
                     "server": "sha256:../../etc/passwd", "keys": "x", "inputs": [], "counts": []})]
    good, _ = submit_samples(q, store, compiled("linear"), cancer[1][:1])
    lines: list[str] = []
    _worker(q, store, lines).run(burst=True)
    for job_id in bad:
        job = q.status(job_id)
        assert job.state is JobState.FAILED and job.attempts == 1  # not retried
        assert job.error.startswith("FormatError: malformed job")
    assert q.status(good[0]).state is JobState.DONE


def _crafted(bundle: Bundle, server: dict[str, bytes]) -> he_compute.Container:
    """A server part with a self-consistent model id, as a hostile client would craft it."""
    evil = Bundle.create("tfhe", {k: v for k, v in bundle.manifest.items() if k not in ("model_id", "format_version",
                                                                                       "scheme")},
                         bundle.client, server)
    return evil.server_part()


@pytest.mark.parametrize("attack", ["shared_library", "jsonpickle"])
def test_crafted_server_part_is_refused_and_the_worker_goes_on(env, compiled, cancer, attack):
    q, store = env
    c = compiled("linear")
    server = dict(c.bundle.server)
    if attack == "shared_library":  # a server.zip-style part: precompiled server.so instead of circuit.mlir
        del server["circuit.mlir"]
        server["server.so"] = b"\x7fELF" + b"\0" * 64
    else:  # a configuration that jsonpickle would turn into a call
        config = json.loads(server["configuration.json"])
        config["verbose"] = {"py/reduce": [{"py/function": "os.system"}, {"py/tuple": ["touch /tmp/pwned"]}]}
        server["configuration.json"] = json.dumps(config).encode()
    evil_ids, _ = submit_samples(q, store, c, cancer[1][:1], server_part=_crafted(c.bundle, server))
    good_ids, _ = submit_samples(q, store, c, cancer[1][:1])
    _worker(q, store).run(burst=True)
    job = q.status(evil_ids[0])
    assert job.state is JobState.FAILED and job.attempts == 1
    assert job.error.startswith("UnsafeArtifactError: ")
    assert ("server.so" in job.error) if attack == "shared_library" else ("Python object" in job.error)
    assert q.status(good_ids[0]).state is JobState.DONE


def test_job_naming_another_model_is_refused(env, compiled, cancer):
    q, store = env
    c = compiled("linear")
    ids, _ = submit_samples(q, store, c, cancer[1][:1])
    spec = q.status(ids[0]).spec
    q.cancel(ids[0])
    spec["model_id"] = "0" * 64
    wrong = q.submit(spec)
    _worker(q, store).run(burst=True)
    assert q.status(wrong).state is JobState.FAILED
    assert "KeyMismatchError" in q.status(wrong).error


def test_cancelled_job_is_dropped(env, compiled, cancer, monkeypatch):
    q, store = env
    ids, _ = submit_samples(q, store, compiled("linear"), cancer[1][:3], per_job=3)
    w = _worker(q, store)
    lease = q.claim(w.name)
    q.cancel(ids[0])
    w.run_one(lease)
    job = q.status(ids[0])
    assert job.state is JobState.CANCELLED and job.result is None


def test_device_detection_and_routing(env):
    q, store = env
    assert detect_devices("cpu") == ["cpu"]
    assert detect_devices("auto") == ["cpu"]  # no GPU on these machines
    with pytest.raises(DeviceError, match="no usable GPU"):
        detect_devices("cuda")
    gpu_job = q.submit({"op": "evaluate"}, device="cuda")
    assert Worker(q, store, devices=detect_devices("auto")).run(burst=True) == 0
    assert q.status(gpu_job).state is JobState.QUEUED


def test_split_cores_into_jobs_and_threads():
    assert split_cores(8) == (8, 1)
    assert split_cores(8, concurrency=2) == (2, 4)
    assert split_cores(8, threads=4) == (2, 4)
    assert split_cores(2, concurrency=4) == (4, 1)


def test_byte_lru_evicts_least_recent():
    cache = ByteLRU(100)
    cache.put("a", 1, 60)
    cache.put("b", 2, 30)
    cache.get("a")
    cache.put("c", 3, 30)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3 and cache.bytes == 90
    cache.put("huge", 4, 500)  # never evicts the entry just added
    assert cache.get("huge") == 4 and len(cache) == 1
