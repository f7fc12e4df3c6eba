"""The one run: encrypted input in, verified encrypted result out, through a queue and untrusted workers.

:func:`run` takes a ``ciphertexts`` container, the bundle's server part and
the evaluation keys (never the secret keys) and returns a :class:`RunReport`
whose ``result`` is the ``results`` container that :meth:`Client.decrypt`
and ``hec decrypt`` read, in exactly the layout in-process evaluation gives.

Top to bottom: check that the three belong together; upload what the blob
store lacks (everything travels by sha256); cut the chunks (and canaries) into
job groups; start local workers if asked; let the :class:`Supervisor` submit,
verify and decide; assemble the result.  How a run is verified is a
:class:`Policy`.

Example::

    from he_compute.client.run import Policy, run
    report = run(enc, bundle.server_part(), read_evaluation_keys("keys/evaluation.keys"),
                 local_workers=2, policy=Policy(replicas=2))
    report.result.save("y.enc")
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ... import schemes
from ...errors import AuditError, FormatError, InputError, KeyMismatchError
from ...formats.bundle import from_container
from ...formats.ciphertexts import check_inputs_match, chunk_name, inputs_digest, results_container
from ...formats.container import Container
from ...formats.digests import digest_of
from ...formats.task import Task
from ...transport.audit import AuditLog
from ...transport.queue import DEFAULT_MAX_ATTEMPTS
from ..progress import progress
from .allowlist import AllowList
from .canaries import Canary, KnownAnswers, canary_check, canary_count, shuffle_in
from .connection import Connection
from .local import local_workers as start_local_workers
from .record import RunRecord, run_key
from .supervisor import Group, Supervisor

MAX_JOBS_AUTO = 64
"""With ``samples_per_job`` left to chance, inputs are split into at most this many jobs."""


@dataclass(frozen=True)
class Policy:
    """How a run is verified: ``replicas`` distinct workers per job, a fraction of ``canaries`` drawn from
    ``known_answers``, receipts only from ``allowed`` keys, an audit log, and ``max_attempts`` per job
    (capped by the queue)."""

    replicas: int = 1
    canaries: float = 0.0
    known_answers: KnownAnswers | None = None
    allowed: AllowList | None = None
    audit: bool = True
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise InputError("replicas must be at least 1")
        if not 0 <= self.canaries < 1:
            raise InputError(f"the canary fraction must be in [0, 1), not {self.canaries}")
        if self.canaries and self.known_answers is None:
            raise InputError("canaries need known answers: pass known_answers=KnownAnswers(client, X, Y) "
                             "(or hec run --canary-inputs X.npy --keys DIR)")


@dataclass
class RunReport:
    """What :func:`run` did: the result, the jobs, what was uploaded or reused, and timings."""

    result: Container
    job_ids: list[str]
    run_id: str = ""
    resumed: int = 0          # job groups that already had jobs from an earlier, interrupted attempt
    uploaded: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    worker_stats: list[dict[str, Any]] = field(default_factory=list)
    verification: dict[str, Any] = field(default_factory=dict)

    def count(self, name: str, uploaded: bool) -> None:
        """Record one blob ``name`` as uploaded or reused."""
        box = self.uploaded if uploaded else self.reused
        box[name] = box.get(name, 0) + 1

    def to_json(self) -> dict[str, Any]:
        """Summary for ``hec run --json``."""
        return {"run": self.run_id, "resumed_groups": self.resumed, "jobs": self.job_ids, "uploaded": self.uploaded, "reused": self.reused, "seconds": self.seconds,
                "n_samples": self.result.meta["n_samples"], "workers": self.worker_stats,
                **({"verification": self.verification} if self.verification else {})}


def run(
    ciphertexts: Container,
    server_part: Container,
    evalkeys: Container,
    *,
    queue: Any = None,
    blobs: Any = None,
    policy: Policy | None = None,
    local_workers: int = 0,
    timeout: float | None = None,
    samples_per_job: int | None = None,
    show_progress: bool = True,
    worker_env: dict[str, str] | None = None,
    on_submit: Callable[[list[str]], None] | None = None,
    resume: bool = True,
) -> RunReport:
    """Evaluate ``ciphertexts`` on queue workers and return the verified encrypted result.

    ``queue``/``blobs`` are URLs or opened engines (default ``$HEC_QUEUE`` or the embedded
    queue under ``./.hec/``, blobs next to it); ``local_workers=N`` runs N worker processes
    for the call.  Raises :class:`~he_compute.errors.JobFailed` when a job ends in the dead
    letter or is cancelled, :class:`~he_compute.errors.QueueError` on timeout, a
    :class:`~he_compute.errors.VerificationError` when results cannot be trusted; in every
    case (Ctrl-C included) the run's unfinished jobs are cancelled first.

    The run is recorded (:mod:`.record`): calling it again with the same ciphertexts, model, keys,
    queue and settings after a crash or an interrupt collects the jobs that finished and submits only
    what is missing (``resume=False`` starts over).
    """
    policy = policy or Policy()
    server_part = _server_part_of(server_part)
    _check(ciphertexts, server_part, evalkeys)
    t0 = time.perf_counter()
    report = RunReport(result=Container("results", ciphertexts.scheme), job_ids=[])
    with Connection(queue, blobs) as conn:
        server, keys, inputs = _upload(conn, ciphertexts, server_part, evalkeys, report)
        counts = [int(c) for c in ciphertexts.meta["chunks"]]
        report.seconds["upload"] = round(time.perf_counter() - t0, 4)

        per_job = samples_per_job or max(1, math.ceil(len(inputs) / MAX_JOBS_AUTO))
        key = run_key(inputs=inputs_digest(ciphertexts), model=server_part.meta["model_id"],
                      keys=evalkeys.meta["key_id"], queue=conn.queue_url, replicas=policy.replicas,
                      canaries=policy.canaries, per_job=per_job)
        record = RunRecord.load_or_none(conn.where.state, key) if resume else None
        if record is None:
            record = _new_record(conn, policy, key, inputs, counts, per_job,
                                 _spec_maker(server_part, evalkeys, server, keys))
        else:
            report.resumed = sum(1 for g in record.groups if g["jobs"])
        tasks = [(g["slots"], g["spec"]) for g in record.groups]
        canaries = [Canary(b"", int(c["count"]), np.asarray(c["expected"], dtype=np.float64))
                    for c in record.canaries]

        device = str(server_part.meta.get("device", "cpu"))
        t1 = time.perf_counter()
        with start_local_workers(local_workers, conn.queue_url, conn.blobs_url, conn.where.logs, device=device,
                                 env=worker_env) as procs, \
                progress("run", sum(counts), enabled=show_progress) as advance, \
                conn.audit_log(policy.audit) as log:
            sup = Supervisor(conn.q, conn.store, device=device, replicas=policy.replicas, allowed=policy.allowed,
                             audit=log, max_attempts=policy.max_attempts, check_output=_output_check(server_part),
                             run_id=record.run_id, on_submitted=record.add_job)
            report.run_id = sup.run_id
            check = (canary_check(policy.known_answers, canaries, _canary_positions(tasks), conn.store)
                     if canaries else None)

            def submitted(ids: list[str]) -> None:
                report.job_ids = list(ids)
                if on_submit is not None:
                    on_submit(list(ids))

            try:
                groups = sup.run(tasks, timeout=timeout, advance=advance, canary_check=check, on_submit=submitted,
                                 adopt=record.adopted(),
                                 workers_alive=lambda: not procs or any(p.poll() is None for p in procs))
            except KeyboardInterrupt:
                record.finish("interrupted")
                raise
            except BaseException:
                record.finish("failed")
                raise
            sections = _collect(conn, groups, len(inputs))
            record.finish("done")
            report.verification = {**sup.summary(), "canaries": len(canaries)}
            if log is not None:
                report.verification["audit"] = _audit_summary(log)
        report.worker_stats = sup.job_stats
        report.seconds["wait"] = round(time.perf_counter() - t1, 4)
    report.result = results_container(ciphertexts, sections)
    report.seconds["total"] = round(time.perf_counter() - t0, 4)
    return report


def _audit_summary(log: AuditLog) -> dict[str, Any]:
    """The log's head after the run; a broken log is reported, never a reason to drop verified results."""
    try:
        return {"log": log.location, **log.verify().to_json()}
    except AuditError as exc:
        return {"log": log.location, "error": str(exc)}


def _output_check(server_part: Container) -> Callable[[bytes, int], None]:
    """The scheme's size-and-framing check of one result chunk (see ``ServerScheme.check_result``)."""
    scheme = schemes.server(server_part.scheme)

    def check(payload: bytes, n_samples: int) -> None:
        scheme.check_result(server_part.meta, server_part.sections, payload, n_samples)

    return check


def _server_part_of(part: Container) -> Container:
    """Accept a whole bundle where a server part is expected: only its server part travels."""
    return from_container(part).server_part() if part.kind == "bundle" else part


def _check(ciphertexts: Container, server_part: Container, evalkeys: Container) -> None:
    """Fail fast on the client, before anything is uploaded, if the three do not belong together."""
    for want, got in {"server": server_part.kind, "evalkeys": evalkeys.kind}.items():
        if want != got:
            raise FormatError(f"expected a {want} container, got a {got} file")
    model_id = server_part.meta.get("model_id")
    check_inputs_match(ciphertexts, model_id, evalkeys.meta.get("key_id"))
    if evalkeys.meta.get("model_id") != model_id:
        raise KeyMismatchError("the evaluation keys were made for another model than this bundle")


def _upload(conn: Connection, ciphertexts: Container, server_part: Container, evalkeys: Container,
            report: RunReport) -> tuple[str, str, list[str]]:
    """Put what the store lacks; return the digests of the server part, the keys and every chunk."""

    def put(data: bytes, name: str) -> str:
        digest = digest_of(data)
        fresh = not conn.store.exists(digest)
        if fresh:
            conn.store.put(data)
        report.count(name, fresh)
        return digest

    server = put(server_part.to_bytes(), "server")
    keys = put(evalkeys.to_bytes(), "keys")
    inputs = [put(ciphertexts.sections[chunk_name(i)], "inputs") for i in range(len(ciphertexts.sections))]
    return server, keys, inputs


def _canaries(conn: Connection, policy: Policy, n_real: int, count: int) -> list[tuple[str, Canary]]:
    """Make and upload the run's canary chunks: ``(digest, canary)`` each."""
    if not policy.canaries or policy.known_answers is None:
        return []
    made = policy.known_answers.make(canary_count(n_real, policy.canaries), count)
    return [(conn.store.put(c.payload), c) for c in made]


def _spec_maker(server_part: Container, evalkeys: Container, server: str,
                keys: str) -> Callable[[list[str], list[int]], dict[str, Any]]:
    def make(inputs: list[str], counts: list[int]) -> dict[str, Any]:
        return Task(server_part.scheme, server_part.meta["model_id"], server, keys, evalkeys.meta["key_id"],
                    tuple(inputs), tuple(counts)).to_json()

    return make


def _new_record(conn: Connection, policy: Policy, key: str, inputs: list[str], counts: list[int], per_job: int,
                make_spec: Callable[[list[str], list[int]], dict[str, Any]]) -> RunRecord:
    """Make the run's canaries, shuffle them in with the real chunks into job groups, and write it down."""
    canaries = _canaries(conn, policy, len(inputs), max(counts))
    order = shuffle_in(len(inputs), len(canaries))
    digest_of_slot = lambda s: inputs[s] if s >= 0 else canaries[-s - 1][0]  # noqa: E731
    count_of_slot = lambda s: counts[s] if s >= 0 else canaries[-s - 1][1].count  # noqa: E731
    groups = []
    for start in range(0, len(order), per_job):
        slots = order[start : start + per_job]
        spec = make_spec([digest_of_slot(s) for s in slots], [count_of_slot(s) for s in slots])
        groups.append({"slots": slots, "spec": spec, "jobs": []})
    record = RunRecord("r" + uuid.uuid4().hex[:16], key, groups,
                       [{"count": c.count, "expected": c.expected} for _, c in canaries])
    record.save(conn.where.state)
    return record


def _canary_positions(tasks: list[tuple[list[int], dict[str, Any]]]) -> dict[int, tuple[int, int]]:
    """For canary ``j`` (slot ``-j-1``), its ``(group, position)``."""
    return {-s - 1: (gi, pos) for gi, (slots, _) in enumerate(tasks) for pos, s in enumerate(slots) if s < 0}


def _collect(conn: Connection, groups: list[Group], n_real: int) -> dict[str, bytes]:
    """Fetch the accepted output of every real chunk, in order."""
    by_slot: dict[int, str] = {}
    for g in groups:
        for pos, s in enumerate(g.slots):
            by_slot[s] = g.winning_outputs()[pos]
    return {chunk_name(i): conn.store.get(by_slot[i]) for i in range(n_real)}
