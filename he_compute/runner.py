"""The client side of the queue: upload what is missing, submit jobs, wait, assemble the encrypted result.

:func:`run` takes an encrypted-input container, the bundle's server part and
the evaluation keys (never the secret keys), and returns the ``results``
container that :meth:`he_compute.Client.decrypt` and ``hec decrypt`` read, in
exactly the layout :meth:`he_compute.Evaluator.evaluate` produces.

Everything travels by digest: the server part and the evaluation keys are
uploaded once and reused by every later run; each ciphertext chunk is one
blob; a job names ``samples_per_job`` chunks.  Results are verified twice:
each output blob against its digest (on read), and each job's echo of its
input digests against what was submitted.

Example::

    from he_compute import runner
    report = runner.run(enc, bundle.server_part(), he_compute.read_evaluation_keys("keys/evaluation.keys"),
                        local_workers=2)
    report.result.save("y.enc")
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import blobs as blob_stores
from . import queue as job_queue
from .container import Container, chunk_name
from .errors import FormatError, IntegrityError, JobFailed, KeyMismatchError, QueueError
from .queue import JobState, Task

POLL_S = 0.1
MAX_JOBS_AUTO = 64
"""With ``samples_per_job`` left to chance, inputs are split into at most this many jobs."""


@dataclass
class RunReport:
    """What :func:`run` did: the result, the jobs, what was uploaded or reused, and timings."""

    result: Container
    job_ids: list[str]
    uploaded: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    worker_stats: list[dict[str, Any]] = field(default_factory=list)
    verification: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Summary for ``hec run --json``."""
        return {"jobs": self.job_ids, "uploaded": self.uploaded, "reused": self.reused, "seconds": self.seconds,
                "n_samples": self.result.meta["n_samples"], "workers": self.worker_stats,
                **({"verification": self.verification} if self.verification else {})}


def _check(ciphertexts: Container, server_part: Container, evalkeys: Container) -> None:
    """Fail fast on the client, before anything is uploaded, if the three do not belong together."""
    kinds = {"ciphertexts": ciphertexts.kind, "server": server_part.kind, "evalkeys": evalkeys.kind}
    for want, got in kinds.items():
        if want != got:
            raise FormatError(f"expected a {want} container, got a {got} file")
    model_id = server_part.meta.get("model_id")
    if ciphertexts.meta.get("model_id") != model_id:
        raise KeyMismatchError("the ciphertexts were encrypted for another model than this bundle: "
                               "encrypt with keys made for this bundle")
    if evalkeys.meta.get("model_id") != model_id:
        raise KeyMismatchError("the evaluation keys were made for another model than this bundle")
    if ciphertexts.meta.get("key_id") != evalkeys.meta.get("key_id"):
        raise KeyMismatchError("the ciphertexts were encrypted under other keys than these evaluation keys")
    if len(ciphertexts.meta.get("chunks", [])) != len(ciphertexts.sections):
        raise FormatError("ciphertexts container lists a different number of chunks than it holds")


def _upload(store: Any, data: bytes, name: str, report: RunReport) -> str:
    digest = blob_stores.digest_of(data)
    if store.exists(digest):
        report.reused[name] = report.reused.get(name, 0) + 1
    else:
        store.put(data)
        report.uploaded[name] = report.uploaded.get(name, 0) + 1
    return digest


def _log_dir(queue_url: str) -> Path:
    if queue_url.startswith("sqlite://"):
        return Path(queue_url[len("sqlite://"):].split("?", 1)[0]).parent / "logs"
    return Path(tempfile.gettempdir()) / "hec-logs"


def run(
    ciphertexts: Container,
    server_part: Container,
    evalkeys: Container,
    *,
    queue: str | Any | None = None,
    blobs: str | Any | None = None,
    local_workers: int = 0,
    timeout: float | None = None,
    samples_per_job: int | None = None,
    max_attempts: int = job_queue.DEFAULT_MAX_ATTEMPTS,
    show_progress: bool = True,
    worker_env: dict[str, str] | None = None,
    on_submit: Callable[[list[str]], None] | None = None,
    replicas: int = 1,
    canaries: float = 0.0,
    known_answers: Any = None,
    allowed_workers: Any = None,
    audit: bool = True,
) -> RunReport:
    """Evaluate ``ciphertexts`` through the queue and return the encrypted result.

    ``queue``/``blobs`` are URLs or opened engines (default ``$HEC_QUEUE`` or
    the embedded queue under ``./.hec/``, blobs next to it).  With
    ``local_workers=N``, N worker processes run for the duration of the call.
    ``on_submit`` receives the job ids as soon as they are queued (for
    progress and cancellation handles).  Raises :class:`JobFailed` when a job ends in the dead letter or is
    cancelled (the other jobs are cancelled), :class:`QueueError` on timeout.

    Verification (:mod:`he_compute.verify`): with ``replicas=K``, a fraction
    ``canaries`` of canary chunks (from ``known_answers``, a
    :class:`~he_compute.verify.KnownAnswers`) or ``allowed_workers`` (an
    :class:`~he_compute.verify.AllowList` or its file), every result must carry a
    valid signed receipt, K distinct workers must agree, and the run is
    recorded in the audit log next to the queue (``report.verification``).

    Example::

        report = run(enc, bundle.server_part(), evk, queue="sqlite://.hec/queue.db", local_workers=2)
    """
    from .evaluator import inputs_digest
    from .progress import progress
    from .worker import spawn, stop_all

    if server_part.kind == "bundle":
        from .bundle import from_container

        server_part = from_container(server_part).server_part()
    _check(ciphertexts, server_part, evalkeys)
    q = job_queue.connect(queue) if queue is None or isinstance(queue, str) else queue
    store = (blob_stores.connect(blobs or blob_stores.for_queue(q.url))
             if blobs is None or isinstance(blobs, str) else blobs)
    t0 = time.perf_counter()
    report = RunReport(result=Container("results", ciphertexts.scheme), job_ids=[])
    server_digest = _upload(store, server_part.to_bytes(), "server", report)
    keys_digest = _upload(store, evalkeys.to_bytes(), "keys", report)
    counts = [int(c) for c in ciphertexts.meta["chunks"]]
    inputs = [_upload(store, ciphertexts.sections[chunk_name(i)], "inputs", report) for i in range(len(counts))]
    report.seconds["upload"] = round(time.perf_counter() - t0, 4)

    per_job = samples_per_job or max(1, math.ceil(len(counts) / MAX_JOBS_AUTO))
    device = str(server_part.meta.get("device", "cpu"))
    if replicas > 1 or canaries or allowed_workers is not None:
        from .verify.supervisor import run_verified

        def make_spec(ins: list[str], cs: list[int]) -> dict[str, Any]:
            return Task(server_part.scheme, server_part.meta["model_id"], server_digest, keys_digest,
                        evalkeys.meta["key_id"], tuple(ins), tuple(cs)).to_json()

        return run_verified(report, ciphertexts, inputs, counts, make_spec, q=q, store=store, device=device,
                            per_job=per_job, replicas=replicas, canaries=canaries, known_answers=known_answers,
                            allowed_workers=allowed_workers, audit=audit, max_attempts=max_attempts,
                            timeout=timeout, local_workers=local_workers, worker_env=worker_env,
                            show_progress=show_progress, log_dir=_log_dir(q.url), t0=t0)
    tasks = [Task(server_part.scheme, server_part.meta["model_id"], server_digest, keys_digest,
                  evalkeys.meta["key_id"], tuple(inputs[i : i + per_job]), tuple(counts[i : i + per_job]))
             for i in range(0, len(counts), per_job)]
    report.job_ids = [q.submit(t.to_json(), device=device, max_attempts=max_attempts) for t in tasks]
    if on_submit is not None:
        on_submit(list(report.job_ids))

    procs: list[Any] = []
    if local_workers > 0:
        logs = _log_dir(q.url)
        logs.mkdir(parents=True, exist_ok=True)
        log_file = open(logs / f"workers-{os.getpid()}.log", "ab")  # noqa: SIM115 - closed below
        procs = spawn(q.url, store.url, local_workers, device=device, env=worker_env, stderr=log_file)
    t1 = time.perf_counter()
    try:
        with progress("run", sum(counts), enabled=show_progress) as advance:
            jobs = _wait(q, report.job_ids, timeout, advance, procs)
    finally:
        if procs:
            stop_all(procs)
            log_file.close()
    report.seconds["wait"] = round(time.perf_counter() - t1, 4)

    sections: dict[str, bytes] = {}
    for task, job in zip(tasks, jobs):
        result = job.result or {}
        outputs = result.get("outputs")
        if result.get("inputs") != list(task.inputs) or not isinstance(outputs, list) or len(outputs) != len(task.inputs):
            raise IntegrityError(f"job {job.id} returned a result for other inputs than it was given: "
                                 "run again, and check the workers")
        for digest in outputs:
            sections[chunk_name(len(sections))] = store.get(digest)  # verified against its digest
        report.worker_stats.append({"job": job.id, **result.get("stats", {})})
    meta = {k: ciphertexts.meta[k] for k in ("model_id", "key_id", "n_samples", "chunks", "output_shape")}
    meta["inputs_digest"] = inputs_digest(ciphertexts)
    report.result = Container("results", ciphertexts.scheme, meta, sections)
    report.seconds["total"] = round(time.perf_counter() - t0, 4)
    return report


def _wait(q: Any, job_ids: list[str], timeout: float | None, advance: Any, procs: list[Any]) -> list[Any]:
    """Poll until every job is done; report progress; raise on failure, cancellation, timeout or dead workers."""
    deadline = None if timeout is None else time.monotonic() + timeout
    finished: dict[str, Any] = {}
    shown: dict[str, int] = {}
    while True:
        for job_id in job_ids:
            if job_id in finished:
                continue
            job = q.status(job_id)
            done = int(job.progress.get("done", 0)) if job.state != JobState.DONE else sum(job.spec["counts"])
            if done > shown.get(job_id, 0):
                advance(done - shown.get(job_id, 0))
                shown[job_id] = done
            if job.state == JobState.DONE:
                finished[job_id] = job
            elif job.state in (JobState.FAILED, JobState.CANCELLED):
                for other in job_ids:
                    if other not in finished and other != job_id:
                        q.cancel(other)
                what = "was cancelled" if job.state == JobState.CANCELLED else (
                    f"failed after {job.attempts} attempt(s): {job.error}")
                raise JobFailed(f"job {job_id} {what}")
        if len(finished) == len(job_ids):
            return [finished[j] for j in job_ids]
        if procs and all(p.poll() is not None for p in procs):
            raise QueueError(f"all {len(procs)} local workers exited (status {procs[0].returncode}) with "
                             f"{len(job_ids) - len(finished)} job(s) left: see their log under .hec/logs")
        if deadline is not None and time.monotonic() > deadline:
            raise QueueError(f"timed out with {len(finished)}/{len(job_ids)} jobs done; the rest stay queued: "
                             f"start workers (hec worker --queue {q.url}) or pass a longer --timeout")
        time.sleep(POLL_S)
