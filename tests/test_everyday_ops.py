"""A tidy disk (issue 14, item 4): ``hec gc`` and ``hec jobs`` filters, on a real embedded queue and blob store.

Both fail on the code before issue 14: there was no ``hec gc``, and ``hec jobs`` took only ``--state``.
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from he_compute.cli import main
from he_compute.formats.task import Task
from he_compute.transport import blobs, queue


def hec(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def deployment(tmp_path):
    """A finished run A (two chunks), a queued run B that shares A's server part and keys, and an orphan blob."""
    url, store_url = f"sqlite://{tmp_path}/queue.db", f"file://{tmp_path}/blobs"
    with queue.connect(url) as q, blobs.connect(store_url) as store:
        server, keys = store.put(b"server part" * 100), store.put(b"evaluation keys" * 100)
        a_in = [store.put(f"input a{i}".encode()) for i in range(2)]
        a_out = [store.put(f"result a{i}".encode()) for i in range(2)]
        b_in = store.put(b"input b0")
        orphan = store.put(b"uploaded by a run that crashed before submitting")

        def spec(inputs):
            return Task("tfhe", "m" * 64, server, keys, "k" * 64, tuple(inputs), (1,) * len(inputs)).to_json()

        for i in range(2):
            q.submit(spec([a_in[i]]), run="runA")
            lease = q.claim("w1")
            q.complete(lease, {"outputs": [a_out[i]], "inputs": [a_in[i]], "receipt": {}, "stats": {}})
        q.submit(spec([b_in]), run="runB")
    # Everything was written a day ago, as far as file ages go.
    for root, _, files in os.walk(tmp_path / "blobs"):
        for name in files:
            os.utime(os.path.join(root, name), (os.path.getmtime(os.path.join(root, name)) - 86400,) * 2)
    return {"queue": url, "blobs": store_url, "server": server, "keys": keys, "a": a_in + a_out, "b": b_in,
            "orphan": orphan}


def _present(d, digest):
    with blobs.connect(d["blobs"]) as store:
        return store.exists(digest)


def test_gc_deletes_old_runs_and_orphans_but_never_what_a_live_job_needs(deployment):
    d = deployment
    args = ["gc", "--queue", d["queue"], "--blobs", d["blobs"], "--json"]
    r = hec(*args)  # default bound: 7 days; nothing is that old
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["deleted_blobs"] == 0
    r = hec(*args, "--older-than", "0s", "--dry-run")
    assert r.exit_code == 0 and json.loads(r.stdout)["deleted_blobs"] == 5, r.output
    assert all(_present(d, x) for x in d["a"])
    r = hec(*args, "--older-than", "0s")
    summary = json.loads(r.stdout)
    assert summary["old_runs"] == 1 and summary["deleted_blobs"] == 5 and summary["freed_bytes"] > 0, summary
    assert not any(_present(d, x) for x in [*d["a"], d["orphan"]])
    # Run B is queued: its input, and the server part and keys it shares with run A, stay.
    assert _present(d, d["b"]) and _present(d, d["server"]) and _present(d, d["keys"])
    assert "deleted 5 blob(s)" in r.stderr


def test_jobs_filter_by_run_state_and_age(deployment):
    d = deployment

    def ids(*flags):
        r = hec("jobs", "--queue", d["queue"], "--json", *flags)
        assert r.exit_code == 0, r.output
        return [(j["run"], j["state"]) for j in json.loads(r.stdout)]

    assert ids("--run", "runA") == [("runA", "done"), ("runA", "done")]
    assert ids("--state", "queued") == [("runB", "queued")]
    assert len(ids("--since", "1h")) == 3 and ids("--since", "1h", "--limit", "1") == [("runA", "done")]
    r = hec("jobs", "--queue", d["queue"], "--since", "soon")
    assert r.exit_code == 2 and "is not an age" in r.output
