"""The verified run loop: replicas on distinct workers, receipts, tie-breakers, flagged workers.

:func:`he_compute.client.run.run` hands every run here; with ``replicas=1``
and no canaries the rules reduce to "one valid receipt per job".  What the
client accepts:

1. Chunks (real ones and canaries, shuffled together) are grouped into job
   *groups*; each group is submitted ``K`` times.
2. Every result must parse as a :class:`~he_compute.formats.task.Result` and
   carry a receipt signed by its worker (on the allow-list, if one is given)
   naming the job, model, keys, inputs and outputs; output blobs must exist.
   Anything else is an invalid result and its worker is flagged.
3. A group's result is what a strict majority of *distinct* workers (by
   public key, not by queue name) returned (:func:`.redundancy.tally`); a
   second result from the same worker is ignored.  On a split, tie-breakers
   go to workers that have not answered this group yet, routed to them
   (:func:`~he_compute.transport.queue.routed_device`) when one is known.
4. Dissenters are flagged for the rest of the run: their other results count
   for nothing and groups that depended on them are re-run.
5. Canary chunks are checked by a callback once all groups are decided; a
   worker that got one wrong is flagged the same way.  When no unflagged
   worker is known to re-run its work, the run fails naming it.

Nothing about any verdict is written to the queue: workers only ever see
ordinary jobs.  Submissions and receipts go to the audit log.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from ...errors import (
    CanaryFailed,
    FormatError,
    JobFailed,
    MissingOutput,
    NoMajority,
    QueueError,
    ReceiptError,
    TransportError,
    VerificationError,
)
from ...formats.receipt import Receipt, verify_receipt
from ...formats.signing import short_id
from ...formats.task import Result
from ...transport.audit import AuditLog
from ...transport.blobs import BlobStore
from ...transport.queue import Job, JobState, Producer, routed_device
from .allowlist import AllowList
from .redundancy import result_digest, tally

POLL_S = 0.05
TARGET_WAIT_S = 3.0
"""How long a job routed to one worker may sit unclaimed before it goes to another (that worker may be gone,
or be a cheater that ignores routed jobs)."""


@dataclass
class Group:
    """One job's worth of chunks and everything learned about it."""

    index: int
    slots: list[int]
    spec: dict[str, Any]
    results: dict[str, str | None] = field(default_factory=dict)   # worker id -> result digest (None: invalid)
    outputs: dict[str, list[str]] = field(default_factory=dict)    # result digest -> output digests
    pending: set[str] = field(default_factory=set)                 # job ids not finished yet
    winner: str | None = None
    agreeing: tuple[str, ...] = ()
    submitted: int = 0

    @property
    def samples(self) -> int:
        """Samples the group's chunks hold."""
        return sum(self.spec["counts"])

    def winning_outputs(self) -> list[str]:
        """The accepted output digests, one per slot."""
        if self.winner is None:
            raise VerificationError(f"job group {self.index} has no accepted result yet")
        return self.outputs[self.winner]


CanaryCheck = Callable[["Supervisor"], bool]


class Supervisor:
    """Runs one verified evaluation through a queue; see the module docstring."""

    def __init__(self, q: Producer, store: BlobStore, *, device: str, replicas: int, allowed: AllowList | None,
                 audit: AuditLog | None, max_attempts: int, max_results: int | None = None, run_id: str | None = None):
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self.run_id = run_id or "r" + uuid.uuid4().hex[:16]
        self.q, self.store, self.device, self.replicas = q, store, device, replicas
        self.allowed, self.audit, self.max_attempts = allowed, audit, max_attempts
        self.max_results = max_results or replicas + 2
        self.groups: list[Group] = []
        self.jobs: dict[str, Group] = {}
        self.flagged: dict[str, str] = {}       # worker id -> why
        self.known: list[str] = list(allowed.worker_ids) if allowed else []
        self.seen: list[str] = []               # workers with a valid receipt this run, in order
        self.targeted: dict[str, tuple[str, float]] = {}  # job id -> (worker it was routed to, when)
        self.unresponsive: set[str] = set()
        self.stats = {"submitted": 0, "tie_breakers": 0, "duplicates": 0, "invalid": 0, "reruns": 0}
        self.job_stats: list[dict[str, Any]] = []  # what each accepted job's worker reported (cache hits, timings)

    # -- the loop -------------------------------------------------------------------------------------------

    def run(self, tasks: list[tuple[list[int], dict[str, Any]]], *, timeout: float | None,
            workers_alive: Callable[[], bool], advance: Callable[[int], None],
            canary_check: CanaryCheck | None = None,
            on_submit: Callable[[list[str]], None] | None = None) -> list[Group]:
        """Submit every group K times and loop until all are decided and the canaries pass.

        ``workers_alive`` says whether local workers (if any) still run; ``on_submit`` gets the first
        round of job ids (for progress and cancellation handles).  On any exception every pending job
        is cancelled before it propagates, so no job of this run stays queued.
        """
        try:
            return self._run(tasks, timeout, workers_alive, advance, canary_check, on_submit)
        except BaseException:
            self.cancel_pending()
            raise

    def _run(self, tasks: list[tuple[list[int], dict[str, Any]]], timeout: float | None,
             workers_alive: Callable[[], bool], advance: Callable[[int], None],
             canary_check: CanaryCheck | None, on_submit: Callable[[list[str]], None] | None) -> list[Group]:
        self.groups = [Group(i, slots, spec) for i, (slots, spec) in enumerate(tasks)]
        for g in self.groups:
            self._submit(g, self.replicas)
        if on_submit is not None:
            on_submit(list(self.jobs))
        deadline = None if timeout is None else time.monotonic() + timeout
        shown: set[int] = set()
        while True:
            self._poll()
            waiting = False
            for g in self.groups:
                more = self._decide(g)
                if g.winner is not None and g.index not in shown:
                    shown.add(g.index)
                    advance(g.samples)
                need = more - len(g.pending)
                if need > 0:
                    self._check_rerun_possible(g)
                    if g.submitted >= self.replicas:
                        self.stats["tie_breakers"] += need
                    self._submit(g, need)
                waiting = waiting or g.winner is None
            if not waiting:
                if canary_check is None or canary_check(self):
                    self.cancel_pending()
                    return self.groups
                continue
            if not workers_alive():
                raise QueueError("all local workers exited with jobs left: see their log under .hec/logs")
            if deadline is not None and time.monotonic() > deadline:
                stuck = next(g for g in self.groups if g.winner is None)
                detail = (f"group {stuck.index}: {len(stuck.results)} result(s), {len(stuck.pending)} job(s) waiting; "
                          f"flagged workers: {self._flag_list() or 'none'}")
                raise QueueError(f"timed out with {len(shown)}/{len(self.groups)} jobs done ({detail}); the jobs were "
                                 f"cancelled: start workers (hec worker --queue {self.q.url}) or pass a longer --timeout")
            time.sleep(POLL_S)

    def _poll(self) -> None:
        """Look at every pending job once: take finished ones, redirect stale routed ones, stop on failures."""
        for job_id in [j for g in self.groups for j in list(g.pending)]:
            job = self.q.status(job_id)
            if job.state is JobState.QUEUED and job_id in self.targeted:
                target, since = self.targeted[job_id]
                if time.monotonic() - since > TARGET_WAIT_S and self.q.cancel(job_id):
                    self.unresponsive.add(target)
                    self.jobs[job_id].pending.discard(job_id)
                    continue
            if job.state is JobState.DONE:
                self._take(job)
            elif job.state in (JobState.FAILED, JobState.CANCELLED):
                verb = "was cancelled" if job.state is JobState.CANCELLED else "failed"
                raise JobFailed(f"job {job_id} {verb} after {job.attempts} attempt(s): {job.error}")

    # -- submission -----------------------------------------------------------------------------------------

    def _submit(self, g: Group, n: int) -> None:
        for _ in range(n):
            target = self._pick_target(g)
            device = routed_device(self.device, target) if target else self.device
            job_id = self.q.submit(g.spec, device=device, max_attempts=self.max_attempts,
                                   group=f"{self.run_id}/{g.index}", run=self.run_id)
            if target:
                self.targeted[job_id] = (target, time.monotonic())
            g.pending.add(job_id)
            self.jobs[job_id] = g
            g.submitted += 1
            self.stats["submitted"] += 1
            if self.audit:
                self.audit.append("submit", job_id, {"spec": g.spec, "device": device})

    def _pick_target(self, g: Group) -> str | None:
        """For replicas beyond the first K: a known, unflagged worker that has not answered this group."""
        if g.submitted < self.replicas:
            return None
        busy = set(g.results) | {self.targeted[j][0] for j in g.pending if j in self.targeted}
        trusted = [w for h in self.groups if h.winner for w in h.agreeing]
        for w in trusted + self.seen + self.known:
            if w not in busy and w not in self.flagged and w not in self.unresponsive:
                return w
        return None

    # -- results --------------------------------------------------------------------------------------------

    def _check_result(self, job: Job, g: Group) -> tuple[Result, Receipt]:
        """Parse and verify one finished job's result; raise a VerificationError or FormatError."""
        result = Result.from_json(job.result)
        if list(result.inputs) != g.spec["inputs"]:
            raise ReceiptError(f"job {job.id} returned a result for other inputs")
        r = verify_receipt(result.receipt, allowed=self.allowed, expected={
            "job_id": job.id, "model_id": g.spec["model_id"], "key_id": g.spec["key_id"],
            "inputs": g.spec["inputs"], "outputs": list(result.outputs)})
        if len(result.outputs) != len(g.spec["inputs"]) or not all(self.store.exists(d) for d in result.outputs):
            raise MissingOutput(f"job {job.id}: worker {r.worker} names output blobs that are not in the store",
                                r.worker_id)
        return result, r

    def _take(self, job: Job) -> None:
        g = self.jobs[job.id]
        g.pending.discard(job.id)
        receipt = job.result.get("receipt") if isinstance(job.result, dict) else None
        if self.audit:
            self.audit.append("receipt", job.id, receipt if _loggable(receipt) else {"unreadable": True})
        try:
            result, r = self._check_result(job, g)
        except (FormatError, VerificationError) as exc:
            self.stats["invalid"] += 1
            # Only a receipt valid for this very job binds its signer (MissingOutput carries it); anything else
            # (a forged or replayed receipt) may name an honest worker, so the blame goes to the queue name.
            who = exc.worker_id if isinstance(exc, MissingOutput) else f"unverified:{job.worker or job.id}"
            self._flag(who, f"returned an invalid result for job {job.id}: {exc}")
            g.results.setdefault(who, None)
            return
        if r.worker_id in g.results or r.worker_id in self.flagged:
            self.stats["duplicates"] += 1
            return
        if r.worker_id not in self.seen:
            self.seen.append(r.worker_id)
        self.job_stats.append({"job": job.id, **result.stats})
        digest = result_digest(result.outputs)
        g.results[r.worker_id] = digest
        g.outputs[digest] = list(result.outputs)

    def flag(self, worker: str, why: str) -> None:
        """Flag a worker for the rest of the run (canary checks call this)."""
        self._flag(worker, why)

    def _flag(self, worker: str, why: str) -> None:
        """Flag a worker and take back every decision that leaned on it."""
        if worker in self.flagged:
            return
        self.flagged[worker] = why
        report = getattr(self.q, "report_flag", None)  # a coordinator shows flagged workers to its operator
        if callable(report) and self.jobs:
            try:
                report(next(iter(self.jobs)), worker)
            except TransportError:
                pass  # the verdict stands on the client whether or not the operator hears of it
        for g in self.groups:
            if worker in g.results:
                if g.results[worker] is not None:
                    g.results[worker] = None  # kept as 'answered, invalid' so it is never asked again
                if g.winner is not None and worker in g.agreeing:
                    g.winner, g.agreeing = None, ()
                    self.stats["reruns"] += 1

    def _decide(self, g: Group) -> int:
        """Decide ``g`` if possible; return how many more results it needs."""
        if g.winner is not None:
            return 0
        if g.submitted > 3 * self.max_results and not g.pending:
            raise NoMajority(f"job group {g.index}: {g.submitted} submissions gave only {len(g.results)} distinct "
                             f"worker(s); start more workers (flagged: {self._flag_list() or 'none'})")
        t = tally(g.results, replicas=self.replicas, max_results=self.max_results, label=f"job group {g.index}")
        if t.decided:
            g.winner, g.agreeing = t.winner, t.agreeing
            for w in t.dissenters:
                if w not in self.flagged:
                    self._flag(w, f"dissented from the majority on job group {g.index}")
            return 0
        return t.more

    def _check_rerun_possible(self, g: Group) -> None:
        """Fail now, naming the flagged workers, when a group can only be re-run by workers already flagged."""
        if not self.flagged or self._pick_target(g) is not None or g.submitted < self.replicas:
            return
        if any(w not in self.flagged for w in self.seen) or (self.allowed is None and not self.flagged):
            return
        if any(h.pending for h in self.groups):
            return  # results still to come may bring an honest worker into view
        reasons = "; ".join(f"worker {worker_name(w)} {why}" for w, why in self.flagged.items())
        raise CanaryFailed(f"cannot verify the run: {reasons}; its results were rejected and no other worker is "
                           "available to re-run them", tuple(worker_name(w) for w in self.flagged))

    def _flag_list(self) -> str:
        return ", ".join(worker_name(w) for w in self.flagged)

    def cancel_pending(self) -> None:
        """Cancel every job of this run that has not finished (best effort: the queue may be gone)."""
        for g in self.groups:
            for job_id in list(g.pending):
                try:
                    self.q.cancel(job_id)
                except TransportError:
                    pass
                g.pending.discard(job_id)

    def summary(self) -> dict[str, Any]:
        """What ``report.verification`` shows."""
        return {"replicas": self.replicas, "groups": len(self.groups), **self.stats,
                "flagged": {worker_name(w): why for w, why in self.flagged.items()},
                "workers": [short_id(w) for w in self.seen]}


def worker_name(worker: str) -> str:
    """How messages name a worker: its short id, or the queue name it used when its receipt was not valid."""
    return worker if worker.startswith("unverified:") else short_id(worker)


def _loggable(receipt: Any) -> bool:
    from ...formats.canonical import canonical

    if not isinstance(receipt, dict):
        return False
    try:
        canonical(receipt)
    except ValueError:
        return False
    return True
