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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import blobs as blob_stores
from . import queue as job_queue
from .container import Container, chunk_name
from .errors import FormatError, KeyMismatchError
from .queue import Task

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
    from .evaluator import check_inputs_match

    for want, got in {"server": server_part.kind, "evalkeys": evalkeys.kind}.items():
        if want != got:
            raise FormatError(f"expected a {want} container, got a {got} file")
    model_id = server_part.meta.get("model_id")
    check_inputs_match(ciphertexts, model_id, evalkeys.meta.get("key_id"))
    if evalkeys.meta.get("model_id") != model_id:
        raise KeyMismatchError("the evaluation keys were made for another model than this bundle")


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

    Verification (:mod:`he_compute.verify`) is always on: every result must
    carry a valid receipt signed by its worker, naming the job, model, keys,
    inputs and outputs, before it is accepted, and submissions and receipts go
    to the audit log next to the queue (``audit=False`` skips the log).  On
    top: ``replicas=K`` distinct workers must agree; a fraction ``canaries`` of
    canary chunks (from ``known_answers``, a :class:`~he_compute.verify.KnownAnswers`)
    is mixed in; ``allowed_workers`` (an :class:`~he_compute.verify.AllowList` or
    its file) pins worker keys.  ``report.verification`` summarizes it.

    Example::

        report = run(enc, bundle.server_part(), evk, queue="sqlite://.hec/queue.db", local_workers=2)
    """
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
    from .verify.supervisor import run_verified

    def submitted(ids: list[str]) -> None:
        report.job_ids = list(ids)
        if on_submit is not None:
            on_submit(list(ids))

    def make_spec(ins: list[str], cs: list[int]) -> dict[str, Any]:
        return Task(server_part.scheme, server_part.meta["model_id"], server_digest, keys_digest,
                    evalkeys.meta["key_id"], tuple(ins), tuple(cs)).to_json()

    return run_verified(report, ciphertexts, inputs, counts, make_spec, q=q, store=store, device=device,
                        per_job=per_job, replicas=replicas, canaries=canaries, known_answers=known_answers,
                        allowed_workers=allowed_workers, audit=audit, max_attempts=max_attempts,
                        timeout=timeout, local_workers=local_workers, worker_env=worker_env,
                        show_progress=show_progress, log_dir=_log_dir(q.url), t0=t0, on_submit=submitted)
