"""The one run: encrypted input in, verified encrypted result out, through a queue and untrusted workers.

:func:`run` takes a ``ciphertexts`` container, the bundle's server part and
the evaluation keys (never the secret keys) and returns a :class:`RunReport`
whose ``result`` is the ``results`` container that :meth:`Client.decrypt`
and ``hec decrypt`` read, in exactly the layout in-process evaluation gives.

Top to bottom: check that the three belong together; start local workers if
asked (or take the ones the caller started), which boot meanwhile; upload what
the blob store lacks (everything travels by sha256); cut the chunks (and
canaries) into job groups; let the :class:`Supervisor` submit, verify and
decide; assemble the result.  How a run is verified is a
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
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ... import schemes
from ...errors import AuditError, FormatError, InputError, KeyMismatchError, warn
from ...formats.bundle import from_container
from ...formats.ciphertexts import check_inputs_match, chunk_name, inputs_digest, results_container
from ...formats.container import Container
from ...formats.task import Task
from ...transport.audit import AuditLog
from .. import checkpoints
from ..progress import progress
from .allowlist import AllowList
from . import staging
from .canaries import Canary, canary_check
from .connection import Connection
from .local import LocalWorkers
from .local import local_workers as start_local_workers
from .policy import Policy
from .record import RunRecord, run_key
from .supervisor import Group, Supervisor, Verification
from .votes import DecryptedAgreement, Voters

MAX_JOBS_AUTO = 64
"""With ``samples_per_job`` left to chance, inputs are split into at most this many jobs."""


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


@dataclass(frozen=True)
class RunOptions:
    """How a run proceeds, apart from how it is verified (that is the :class:`Policy`).

    ``timeout``: seconds the whole run may take (``None``: no limit); ``samples_per_job``: ciphertext chunks
    per job (default: inputs split into at most ``MAX_JOBS_AUTO`` jobs); ``resume``: collect what an
    interrupted attempt with the same inputs finished (``False`` starts over); ``show_progress``: a progress
    bar on stderr; ``on_submit``: called with the job ids once the jobs are submitted."""

    timeout: float | None = None
    samples_per_job: int | None = None
    resume: bool = True
    show_progress: bool = True
    on_submit: Callable[[list[str]], None] | None = None


@dataclass(frozen=True)
class _Parts:
    """The three containers a run takes, checked to belong together."""

    ciphertexts: Container
    server_part: Container
    evalkeys: Container

    @classmethod
    def checked(cls, ciphertexts: Container, server_part: Container, evalkeys: Container) -> _Parts:
        parts = cls(ciphertexts, _server_part_of(server_part), evalkeys)
        _check(parts.ciphertexts, parts.server_part, parts.evalkeys)
        return parts

    @property
    def device(self) -> str:
        return str(self.server_part.meta.get("device", "cpu"))

    @property
    def counts(self) -> list[int]:
        """Samples in each ciphertext chunk."""
        return [int(c) for c in self.ciphertexts.meta["chunks"]]

    def spec_maker(self, server: str, keys: str) -> Callable[[list[str], list[int]], dict[str, Any]]:
        """Job specs for chunks of these ciphertexts, given the digests of the uploaded server part and keys."""
        def make(inputs: list[str], counts: list[int]) -> dict[str, Any]:
            return Task(self.server_part.scheme, self.server_part.meta["model_id"], server, keys,
                        self.evalkeys.meta["key_id"], tuple(inputs), tuple(counts)).to_json()

        return make


def run(
    ciphertexts: Container,
    server_part: Container,
    evalkeys: Container,
    *,
    queue: Any = None,
    blobs: Any = None,
    policy: Policy | None = None,
    local_workers: int | LocalWorkers = 0,
    options: RunOptions | None = None,
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
    what is missing (``RunOptions(resume=False)`` starts over).

    ``local_workers`` may also be :class:`~.local.LocalWorkers` the caller started already on this queue
    (``hec run`` starts them before it reads the ciphertexts, so that they boot meanwhile).
    """
    parts = _Parts.checked(ciphertexts, server_part, evalkeys)
    t0 = time.perf_counter()
    report = RunReport(result=Container("results", ciphertexts.scheme), job_ids=[])
    with Connection(queue, blobs) as conn, _workers(local_workers, conn, parts.device) as local:
        one = _Run(parts, policy or Policy(), options or RunOptions(), conn, local, report)
        one.check_operators()
        record = one.record()
        report.seconds["upload"] = round(time.perf_counter() - t0, 4)
        t1 = time.perf_counter()
        sections = one.supervise(record)
        report.seconds["wait"] = round(time.perf_counter() - t1, 4)
    report.result = results_container(ciphertexts, sections)
    report.seconds["total"] = round(time.perf_counter() - t0, 4)
    return report


def _workers(local_workers: int | LocalWorkers, conn: Connection,
             device: str) -> AbstractContextManager[LocalWorkers]:
    """The caller's local workers, or ``local_workers`` new ones, started while the run uploads."""
    if isinstance(local_workers, LocalWorkers):
        return nullcontext(local_workers)
    return start_local_workers(local_workers, conn.queue_url, conn.blobs_url, conn.where.logs, device=device)


@dataclass
class _Run:
    """One run under way: its parts and settings, its connection and local workers, the report it fills in."""

    parts: _Parts
    policy: Policy
    options: RunOptions
    conn: Connection
    local: LocalWorkers
    report: RunReport

    def __post_init__(self) -> None:
        self.vouched = _coordinator_operators(self.conn)

    def check_operators(self) -> None:
        """Refuse (or warn about) replicas that the workers' operators cannot supply."""
        n_local = len(self.local.procs)
        self.policy.check_operators(n_local, self.vouched is not None)
        _check_enough_operators(self.policy, n_local, self.vouched, self.conn.queue_url)

    def record(self) -> RunRecord:
        """The record of an earlier, interrupted attempt of this very run, else a fresh run's."""
        counts, policy = self.parts.counts, self.policy
        per_job = self.options.samples_per_job or max(1, math.ceil(len(counts) / MAX_JOBS_AUTO))
        key = run_key(inputs=inputs_digest(self.parts.ciphertexts), model=self.parts.server_part.meta["model_id"],
                      keys=self.parts.evalkeys.meta["key_id"], queue=self.conn.queue_url, replicas=policy.replicas,
                      canaries=policy.canaries, per_job=per_job)
        record = RunRecord.load_or_none(self.conn.where.state, key) if self.options.resume else None
        if record is None:
            return self.prepare(key, counts, per_job)
        staging.upload(self.conn, Container("ciphertexts", self.parts.ciphertexts.scheme), self.parts.server_part,
                       self.parts.evalkeys, [], self.report.count,
                       rerandomize=False)  # the public parts, in case the store lost them
        self.report.resumed = sum(1 for g in record.groups if g["jobs"])
        return record

    def prepare(self, key: str, counts: list[int], per_job: int) -> RunRecord:
        """A fresh run: make canaries, upload everything in one shuffled batch, cut groups, write the record."""
        policy, conn, ciphertexts, evalkeys = self.policy, self.conn, self.parts.ciphertexts, self.parts.evalkeys
        canaries: list[Canary] = []
        rerandomize = False
        if policy.canaries and policy.known_answers is not None:
            if len(set(counts)) > 1:  # a short chunk would be the one chunk no canary looks like
                raise InputError(f"canaries need chunks of one size, and these have {min(counts)} to {max(counts)} "
                                 "samples: encrypt the inputs again with this version (it pads every chunk)")
            rerandomize = staging.can_rerandomize(ciphertexts.scheme, evalkeys, ciphertexts.sections[chunk_name(0)])
            canaries = staging.make_canaries(policy.known_answers, counts, policy.canaries, state=conn.where.state,
                                             inputs_digest=inputs_digest(ciphertexts), key_id=evalkeys.meta["key_id"],
                                             reuse=not rerandomize)
        uploads = staging.upload(conn, ciphertexts, self.parts.server_part, evalkeys, canaries, self.report.count,
                                 rerandomize=rerandomize)
        make_spec = self.parts.spec_maker(uploads.server, uploads.keys)
        return staging.new_record(conn, key, uploads, counts, per_job, make_spec, policy.decoy_fraction)

    def supervise(self, record: RunRecord) -> dict[str, bytes]:
        """Submit, verify and decide every job group of ``record``; the accepted result chunks, in order."""
        policy, conn, report = self.policy, self.conn, self.report
        tasks = [(g["slots"], g["spec"]) for g in record.groups]
        canaries = _recorded_canaries(record.canaries)
        with progress("run", sum(self.parts.counts), enabled=self.options.show_progress) as advance, \
                conn.audit_log(policy.audit) as log:
            sup = Supervisor(conn.q, conn.store, self.rules(), device=self.parts.device, audit=log,
                             run_id=record.run_id, on_submitted=record.add_job, decoys=frozenset(record.decoys))
            report.run_id = sup.run_id
            known = policy.known_answers  # canaries are made only from known answers
            check = (canary_check(known, canaries, staging.canary_positions(tasks), conn.store)
                     if canaries and known is not None else None)
            try:
                groups = sup.run(tasks, timeout=self.options.timeout, advance=advance, canary_check=check,
                                 on_submit=self.submitted, adopt=record.adopted(), workers_alive=self.local.alive)
            except KeyboardInterrupt:
                record.finish("interrupted")
                raise
            except BaseException:
                record.finish("failed")
                raise
            self.local.release()  # they wind down while the results are collected
            sections = _collect(conn, groups, len(self.parts.counts))
            record.finish("done")
            report.verification = {**sup.summary(), "canaries": len(canaries)}
            if log is not None:
                report.verification["audit"] = _audit_summary(log, conn.where.state)
        report.worker_stats = sup.job_stats
        return sections

    def rules(self) -> Verification:
        """The supervisor's rules for this run's policy, voters and result checks."""
        policy, vouched = self.policy, self.vouched
        refresh = getattr(self.conn.q, "operators", None) if vouched is not None else None
        return Verification(replicas=policy.replicas, allowed=policy.allowed, max_attempts=policy.max_attempts,
                            voters=_voters(policy, self.local.known(), vouched, refresh),
                            agreement=_agreement(policy, self.conn, self.parts.ciphertexts),
                            check_output=_output_check(self.parts.server_part))

    def submitted(self, ids: list[str]) -> None:
        self.report.job_ids = list(ids)
        if self.options.on_submit is not None:
            self.options.on_submit(list(ids))


def _coordinator_operators(conn: Connection) -> dict[str, str] | None:
    """The operators a coordinator vouches for (worker id -> name), or ``None`` for a plain queue."""
    operators = getattr(conn.q, "operators", None)
    return operators() if callable(operators) else None


def _check_enough_operators(policy: Policy, local_workers: int, vouched: dict[str, str] | None, where: str) -> None:
    """Refuse replicas that the allow-list's operators can never supply; warn, in one line, when a coordinator
    has admitted too few operators so far (more may enrol: the run waits for them, and stays resumable)."""
    n = policy.replicas
    if n == 1 or local_workers or (policy.allowed is None and vouched is None):
        return
    voters = _voters(policy, AllowList(), vouched)
    candidates = policy.allowed.worker_ids if policy.allowed is not None else sorted(vouched or {})
    found = {v for w in candidates if (v := voters.voter(w))}
    if len(found) >= n:
        return
    need = f"--replicas {n} needs workers of {n} distinct operators"
    if policy.allowed is not None and (vouched is None or all(voters.voter(w) for w in candidates)):
        raise InputError(f"{need}, and the allow-list's workers answer to {len(found)}: add workers of other "
                         "operators to it (operator=NAME on each line) or pass a lower --replicas")
    more = "a second operator" if n - len(found) == 1 and found else f"{n - len(found)} more operator(s)"
    warn(f"waiting for {more}: {need}, and the coordinator at {where} has admitted workers of {len(found)} so far; enrol "
         f"another operator's workers (hec coordinator enroll-token --operator NAME), or press Ctrl-C: "
         f"the same command resumes this run")


def _voters(policy: Policy, local: AllowList, vouched: dict[str, str] | None,
            refresh: Callable[[], dict[str, str]] | None = None) -> Voters:
    """Who votes: operators from the coordinator, the allow-list and the run's own local workers; keys only
    if the policy lets them."""
    operators = Voters.mapping(vouched, policy.allowed, local)
    return Voters(operators, keys_vote=policy.replicas == 1 or policy.accept_sybil_risk, refresh=refresh)


def _agreement(policy: Policy, conn: Connection, ciphertexts: Container) -> DecryptedAgreement | None:
    """Compare disagreeing replicas by decrypted values when the run holds keys that can decrypt them."""
    client = policy.decryptor
    if policy.replicas == 1 or client is None or client.key_id != ciphertexts.meta.get("key_id"):
        return None
    return DecryptedAgreement(conn.store.get, client.decrypt_chunk, client.agreement_tolerance)


def _audit_summary(log: AuditLog, state: Path) -> dict[str, Any]:
    """Check the log against this client's kept checkpoint and sign a new one; a broken log is reported
    (and not signed), never a reason to drop results that their receipts verified."""
    try:
        entry = checkpoints.checkpoint(log, state)
    except AuditError as exc:
        return {"log": log.location, "error": str(exc)}
    return {"log": log.location, "size": entry["i"] + 1, "checkpoint": entry["body"]["size"],
            "root": entry["body"]["root"]}


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
    model_id, key_id = server_part.meta.get("model_id"), evalkeys.meta.get("key_id")
    if not isinstance(model_id, str) or not isinstance(key_id, str):
        raise FormatError("the server part or the evaluation keys name no model or key id: make them again with "
                          "hec keygen")
    check_inputs_match(ciphertexts, model_id, key_id)
    if evalkeys.meta.get("model_id") != model_id:
        raise KeyMismatchError("the evaluation keys were made for another model than this bundle")


def _collect(conn: Connection, groups: list[Group], n_real: int) -> dict[str, bytes]:
    """Fetch the accepted output of every real chunk, in order."""
    by_slot: dict[int, str] = {}
    for g in groups:
        for pos, s in enumerate(g.slots):
            by_slot[s] = g.winning_outputs()[pos]
    return {chunk_name(i): conn.store.get(by_slot[i]) for i in range(n_real)}


def _recorded_canaries(recorded: list[dict[str, Any]]) -> list[Canary]:
    """The canaries a run record holds (no payloads: those are in the store); numpy only when there are some."""
    if not recorded:
        return []
    import numpy as np

    return [Canary(b"", int(c["count"]), np.asarray(c["expected"], dtype=np.float64)) for c in recorded]
