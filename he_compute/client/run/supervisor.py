"""The verified run loop: replicas on distinct operators, receipts, answers compared by decrypted value, decoys.

:func:`he_compute.client.run.run` hands every run here; with ``replicas=1`` and no canaries the rules
reduce to "one valid receipt per job".  What the client accepts:

1. Chunks (real ones and canaries, shuffled together) are grouped into job *groups*; each group is
   submitted ``K`` times, and the queue never gives one operator two of them.
2. Every result is checked (:mod:`.checks`); an invalid one flags its worker.
3. Each valid answer votes as its worker's *voter* (:mod:`.votes`): its operator when known, so one party
   with many keys votes once.  Answers are compared by digest, and when digests differ, by their
   decrypted values (honest TFHE replicas differ in bytes).  A strict majority of voters decides
   (:func:`.redundancy.tally`); on a split, tie-breakers go to other voters, routed when one is known.
4. Dissenters are flagged for the rest of the run: their other answers count for nothing and groups that
   depended on them are re-run.  Canaries are checked by a callback once all groups are decided.
5. **No reaction oracle**: a random sample of groups (``decoys``) gets one more run on another voter in
   every verified run, scheduled like a tie-breaker, so a re-run tells a worker nothing about a check.

Nothing about any verdict is written to the queue: workers only ever see ordinary jobs.
"""

from __future__ import annotations

import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

from ... import settings
from ...errors import warn
from .group import Group, Verification
from ...errors import (
    AuthError,
    BadOutput,
    CanaryFailed,
    ConfigError,
    FormatError,
    JobFailed,
    NoMajority,
    QueueError,
    TransportError,
    Unverified,
    VerificationError,
)
from ...formats.text import printable
from ...transport.audit import AuditLog
from ...transport.blobs import BlobStore
from ...transport.queue import Job, JobState, Producer, routed_device
from .checks import check_result, loggable
from .redundancy import result_digest, tally
from .votes import Voters, voter_name, who

POLL_S = 0.05
FAILED_WAIT_S = 60.0
"""How long a group some worker failed may wait for another worker to take it before the run fails."""
TARGET_WAIT_S = 3.0
"""How long a job routed to one worker may sit unclaimed before it goes to another (that worker may be gone,
or be a cheater that ignores routed jobs)."""


def idle_notice_s() -> float:
    """``HEC_IDLE_NOTICE_S`` (default 60): how long a run waits with no job claimed before saying so."""
    value: float = settings.get("HEC_IDLE_NOTICE_S")
    return value


CanaryCheck = Callable[["Supervisor"], bool]


class Supervisor:
    """Runs one verified evaluation through a queue; see the module docstring."""

    def __init__(self, q: Producer, store: BlobStore, rules: Verification, *, device: str, audit: AuditLog | None,
                 run_id: str | None = None, on_submitted: Callable[[int, str], None] | None = None,
                 decoys: frozenset[int] = frozenset()):
        replicas, allowed, max_attempts = rules.replicas, rules.allowed, rules.max_attempts
        check_output, voters, agreement = rules.check_output, rules.voters, rules.agreement
        if replicas < 1:
            raise ConfigError("replicas (--replicas) must be at least 1")
        self.run_id = run_id or "r" + uuid.uuid4().hex[:16]
        self.q, self.store, self.device, self.replicas = q, store, device, replicas
        self.allowed, self.audit, self.max_attempts = allowed, audit, max_attempts
        self.check_output, self.on_submitted = check_output, on_submitted  # (group, job id): write the run down
        self.voters = voters or Voters(Voters.mapping(allowed), keys_vote=True)
        self.agreement, self.decoys = agreement, decoys
        self.groups: list[Group] = []
        self.jobs: dict[str, Group] = {}
        self.flagged: dict[str, str] = {}       # voter (or unverified:name) -> why
        self.caught_by_canary: set[str] = set()  # flagged voters a canary caught (CanaryFailed, not Unverified)
        self.known: list[str] = list(allowed.worker_ids) if allowed else []
        self.seen: list[str] = []               # workers with a valid receipt this run, in order
        self.voter_of: dict[str, str] = {}      # worker id -> voter
        self.targeted: dict[str, tuple[str, float]] = {}  # job id -> (worker it was routed to, when)
        self.unresponsive: set[str] = set()
        self.decoy_jobs: set[str] = set()   # nobody waits for these: the run may end before they do
        self.stats = {"submitted": 0, "tie_breakers": 0, "duplicates": 0, "invalid": 0, "reruns": 0,
                      "unattributed": 0, "decoys": len(decoys), "decoys_sent": 0, "failed": 0}
        self.failed_by: dict[str, int] = {}     # queue worker name -> jobs it sent to the dead letter
        self.claimed = False                    # whether any job of this run was seen claimed
        self.job_stats: list[dict[str, Any]] = []  # what each accepted job's worker reported (cache hits, timings)

    def _worker_command(self) -> str:
        """The command that starts a worker for this run's queue (a coordinator's workers enrol with it)."""
        url = self.q.url
        flag = "--coordinator" if url.startswith(("https://", "http://")) else "--queue"
        return f"hec worker {flag} {url}"

    # -- the loop -------------------------------------------------------------------------------------------

    def run(self, tasks: list[tuple[list[int], dict[str, Any]]], *, timeout: float | None,
            workers_alive: Callable[[], bool], advance: Callable[[int], None],
            canary_check: CanaryCheck | None = None, on_submit: Callable[[list[str]], None] | None = None,
            adopt: dict[int, list[str]] | None = None) -> list[Group]:
        """Submit every group K times and loop until all are decided and the canaries pass.

        ``workers_alive`` says whether local workers (if any) still run; ``on_submit`` gets the first
        round of job ids; ``adopt`` maps group indices to jobs an earlier attempt of this run submitted
        (finished ones are collected, live ones waited for).  On any exception every pending job is
        cancelled before it propagates, so no job of this run stays queued.
        """
        try:
            return self._run(tasks, timeout, workers_alive, advance, canary_check, on_submit, adopt or {})
        except BaseException:
            self.cancel_pending()
            raise

    def _run(self, tasks: list[tuple[list[int], dict[str, Any]]], timeout: float | None,
             workers_alive: Callable[[], bool], advance: Callable[[int], None],
             canary_check: CanaryCheck | None, on_submit: Callable[[list[str]], None] | None,
             adopt: dict[int, list[str]]) -> list[Group]:
        self.groups = [Group(i, slots, spec, decoy=i in self.decoys) for i, (slots, spec) in enumerate(tasks)]
        with self._logged_together():
            for g in self.groups:
                self._adopt(g, adopt.get(g.index, []))
                self._submit(g, max(0, self.replicas - g.submitted))
        if on_submit is not None:
            on_submit(list(self.jobs))
        deadline = None if timeout is None else time.monotonic() + timeout
        shown: set[int] = set()
        idle_since: float | None = time.monotonic()  # until a worker claims a job of this run (None: one has)
        while True:
            with self._logged_together():
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
            if idle_since is not None and (self.claimed or time.monotonic() - idle_since > idle_notice_s()):
                if not self.claimed:  # said once, and the run goes on waiting: a worker started later takes it
                    warn(f"no worker has claimed any of this run's {len(self.jobs)} job(s) in "
                         f"{time.monotonic() - idle_since:.0f} s: start one ({self._worker_command()}); "
                         f"this run keeps waiting, and after Ctrl-C the same command resumes it")
                idle_since = None
            if deadline is not None and time.monotonic() > deadline:
                stuck = next(g for g in self.groups if g.winner is None)
                detail = (f"group {stuck.index}: {len(stuck.results)} result(s), {len(stuck.pending)} job(s) waiting; "
                          f"flagged: {self._flag_list() or 'none'}")
                message = (f"timed out with {len(shown)}/{len(self.groups)} jobs done ({detail}); the jobs were "
                           f"cancelled: start workers ({self._worker_command()}) or pass a longer --timeout")
                # With workers flagged, what is missing is a trustworthy result, not capacity alone.
                raise VerificationError(message) if self.flagged else QueueError(message)
            self.q.wait(POLL_S)

    def _logged_together(self) -> AbstractContextManager[None]:
        """The audit entries of one pass (submissions, receipts) stored together, with one durable write."""
        return self.audit.batch() if self.audit is not None else nullcontext()

    def _adopt(self, g: Group, job_ids: list[str]) -> None:
        """Take over jobs of an earlier attempt that finished or are still alive; the rest are resubmitted."""
        try:
            found = self.q.statuses(job_ids) if job_ids else {}
        except QueueError:  # an id that is not one (a damaged run record): its jobs are submitted afresh
            found = {}
        for job_id in job_ids:
            if job_id in found and found[job_id].state in (JobState.QUEUED, JobState.RUNNING, JobState.DONE):
                g.pending.add(job_id)
                self.jobs[job_id] = g
                g.submitted += 1

    def _poll(self) -> None:
        """Look at every pending job once, all in one batch-status call: take finished ones, redirect stale
        routed ones, stop on failures."""
        pending = [j for g in self.groups for j in list(g.pending)]
        found = self.q.statuses(pending) if pending else {}
        for job_id in pending:
            # A job the queue no longer knows: asked alone, so the error names it as before.
            job = found[job_id] if job_id in found else self.q.status(job_id)
            if job.state is JobState.QUEUED and job_id in self.targeted:
                target, since = self.targeted[job_id]
                if time.monotonic() - since > TARGET_WAIT_S and self.q.cancel(job_id):
                    self.unresponsive.add(target)
                    self.jobs[job_id].pending.discard(job_id)
                    continue
            self.claimed = self.claimed or job.state in (JobState.RUNNING, JobState.DONE)
            g = self.jobs[job_id]
            if job.state is JobState.QUEUED and g.failed_at and time.monotonic() - g.failed_at > FAILED_WAIT_S:
                raise JobFailed(f"job group {g.index} failed on {printable(g.failures[-1][0], 80)} and no other worker "
                                f"took it within {FAILED_WAIT_S:.0f}s: {printable(g.failures[-1][1], 300)}")
            if job.state is JobState.DONE:
                self._take(job)
            elif job.state is JobState.FAILED:
                self._failed(job)
            elif job.state is JobState.CANCELLED:
                raise JobFailed(f"job {job_id} was cancelled after {job.attempts} attempt(s): "
                                f"{printable(job.error, 300)}")

    def _failed(self, job: Job) -> None:
        """A job in the dead letter: it counts against the worker that failed it, and the group goes to another.

        Whether a job is tried again is the client's decision, not the worker's: a worker that fails a job
        "for good" only takes itself out of that group (the queue gives no operator two jobs of one group),
        and the group is submitted again.  A group that fails on more workers than it could ever need ends
        the run, as does a failed group that no other worker takes within ``FAILED_WAIT_S``.
        """
        g = self.jobs[job.id]
        g.pending.discard(job.id)
        worker = job.worker or "an unnamed worker"
        error = job.error or "no reason given"
        g.failures.append((worker, error))
        g.failed_at = time.monotonic()
        self.failed_by[worker] = self.failed_by.get(worker, 0) + 1
        self.stats["failed"] += 1
        if len(g.failures) > self.replicas + 1:
            names = ", ".join(sorted({printable(w, 80) for w, _ in g.failures}))
            raise JobFailed(f"job group {g.index} failed on {len(g.failures)} workers ({names}); the last said: "
                            f"{printable(error, 300)}")

    # -- submission -----------------------------------------------------------------------------------------

    def _submit(self, g: Group, n: int) -> list[str]:
        ids = []
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
            if self.on_submitted is not None:
                self.on_submitted(g.index, job_id)
            if self.audit:
                self.audit.append("submit", job_id, {"spec": g.spec, "device": device})
            ids.append(job_id)
        return ids

    def _pick_target(self, g: Group) -> str | None:
        """For runs beyond the first K: a known worker of an unflagged voter that has not answered this group."""
        if g.submitted < self.replicas:
            return None
        busy = set(g.results) | {self.voter_of.get(self.targeted[j][0], self.targeted[j][0])
                                 for j in g.pending if j in self.targeted}
        trusted = [w for w, v in self.voter_of.items() if any(v in h.agreeing for h in self.groups if h.winner)]
        for w in trusted + self.seen + self.known:
            v = self.voter_of.get(w) or self.voters.voter(w) or w
            if v not in busy and v not in self.flagged and w not in self.unresponsive:
                return w
        return None

    # -- results --------------------------------------------------------------------------------------------

    def _take(self, job: Job) -> None:
        g = self.jobs[job.id]
        g.pending.discard(job.id)
        receipt = job.result.get("receipt") if isinstance(job.result, dict) else None
        if self.audit:
            self.audit.append("receipt", job.id, receipt if loggable(receipt) else {"unreadable": True})
        try:
            result, r = check_result(job, g.spec, self.store, allowed=self.allowed, check_output=self.check_output)
        except (FormatError, VerificationError) as exc:
            self.stats["invalid"] += 1
            signer = exc.worker_id if isinstance(exc, BadOutput) else None
            who = (self.voters.voter(signer) or signer) if signer else f"unverified:{job.worker or job.id}"
            self._flag(who, f"returned an invalid result for job {job.id}: {exc}")
            g.results.setdefault(who, None)
            return
        voter = self.voters.voter(r.worker_id)
        if voter is None:  # a worker whose operator nobody vouches for: its answer does not count
            self.stats["unattributed"] += 1
            return
        self.voter_of[r.worker_id] = voter
        if voter in g.results or voter in self.flagged:
            self.stats["duplicates"] += 1
            return
        g.revisit = g.winner is not None  # a decoy's answer: it is checked against the decision
        if r.worker_id not in self.seen:
            self.seen.append(r.worker_id)
        self.job_stats.append({"job": job.id, **result.stats})
        digest = result_digest(result.outputs)
        g.results[voter] = digest
        g.outputs[digest] = list(result.outputs)

    def flag(self, voter: str, why: str, *, canary: bool = False) -> None:
        """Flag a voter for the rest of the run (canary checks call this, with ``canary=True``)."""
        if canary:
            self.caught_by_canary.add(voter)
        self._flag(voter, why)

    def _flag(self, voter: str, why: str) -> None:
        """Flag a voter and take back every decision that leaned on it."""
        if voter in self.flagged:
            return
        self.flagged[voter] = why
        self._report_flag(voter)
        for g in self.groups:
            if voter in g.results:
                if g.results[voter] is not None:
                    g.results[voter] = None  # kept as 'answered, invalid' so it is never asked again
                if g.winner is not None and voter in g.agreeing:
                    g.winner, g.agreeing = None, ()
                    self.stats["reruns"] += 1

    def _report_flag(self, voter: str) -> None:
        """Tell a coordinator (its operator's status page) which workers this run flagged; never the workers."""
        report = getattr(self.q, "report_flag", None)
        if not callable(report) or not self.jobs:
            return
        workers = [w for w, v in self.voter_of.items() if v == voter] or ([voter] if len(voter) == 64 else [])
        for worker in workers:
            try:
                report(next(iter(self.jobs)), worker)
            except (TransportError, AuthError):
                pass  # the verdict stands on the client whether or not the operator hears of it

    def _decide(self, g: Group) -> int:
        """Decide ``g`` if possible (again, when a late answer came in); return how many more answers it needs."""
        if g.winner is not None and not g.revisit:
            return 0
        g.revisit = False
        limit = self.replicas + 2
        if g.submitted > 3 * limit and not g.pending:
            raise NoMajority(f"job group {g.index}: {g.submitted} submissions gave only {len(g.results)} distinct "
                             f"voter(s); start more workers (flagged: {self._flag_list() or 'none'})")
        results = g.results
        if self.agreement is not None and len({d for d in results.values() if d is not None}) > 1:
            results = self.agreement.classes(results, g.outputs, g.spec["counts"])
        t = tally(results, replicas=self.replicas, max_results=limit, label=f"job group {g.index}")
        if t.decided:
            g.winner, g.agreeing = t.winner, t.agreeing
            for w in t.dissenters:
                if w not in self.flagged:
                    self._flag(w, f"dissented from the majority on job group {g.index}")
            if g.decoy and not g.decoy_sent:  # looks like a tie-breaker to workers; the run does not wait for it
                g.decoy_sent = True
                self.stats["decoys_sent"] += 1
                self.decoy_jobs.update(self._submit(g, 1))
            return 0
        if g.winner is not None:  # a late answer broke the majority: decide again with more answers
            g.winner, g.agreeing = None, ()
            self.stats["reruns"] += 1
        return t.more

    def _check_rerun_possible(self, g: Group) -> None:
        """Fail now, naming the flagged voters, when a group can only be re-run by voters already flagged."""
        if not self.flagged or self._pick_target(g) is not None or g.submitted < self.replicas:
            return
        if any(self.voter_of.get(w, w) not in self.flagged for w in self.seen) or \
                (self.allowed is None and not self.flagged):
            return
        if any(j not in self.decoy_jobs for h in self.groups for j in h.pending):
            return  # results still to come may bring an honest worker into view
        reasons = "; ".join(f"{who(w)} {why}" for w, why in self.flagged.items())
        # CanaryFailed only when a canary caught someone; dissent or invalid results alone are Unverified.
        kind = CanaryFailed if self.caught_by_canary & set(self.flagged) else Unverified
        raise kind(f"cannot verify the run: {reasons}; its results were rejected and no other worker is "
                           "available to re-run them", tuple(worker_name(w) for w in self.flagged))

    def _flag_list(self) -> str:
        return ", ".join(worker_name(w) for w in self.flagged)

    def cancel_pending(self) -> None:
        """Cancel every job of this run that has not finished (best effort: the queue may be gone)."""
        for g in self.groups:
            for job_id in list(g.pending):
                try:
                    self.q.cancel(job_id)
                except (TransportError, AuthError):
                    pass
                g.pending.discard(job_id)

    def summary(self) -> dict[str, Any]:
        """What ``report.verification`` shows; ``rotate_keys`` when a check failed (see the README)."""
        return {"replicas": self.replicas, "groups": len(self.groups), **self.stats,
                "flagged": {worker_name(w): why for w, why in self.flagged.items()},
                "workers": [worker_name(w) for w in self.seen],
                "voters": sorted({voter_name(self.voter_of[w]) for w in self.seen if w in self.voter_of}),
                "compared_by_meaning": self.agreement.decrypted if self.agreement else 0,
                "failed_by": {printable(w, 80): n for w, n in self.failed_by.items()},
                "rotate_keys": bool(self.flagged)}


def worker_name(voter: str) -> str:
    """How messages name a voter or worker."""
    return voter_name(voter)
