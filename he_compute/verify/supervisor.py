"""The verified run: replicas on distinct workers, receipts, tie-breakers, canaries, audit log.

:func:`he_compute.runner.run` hands every run here (with ``replicas=1`` and
no canaries by default, steps 3-5 reduce to "one valid receipt per job").
What the client accepts:

1. Chunks (real ones and canaries, shuffled together) are grouped into job
   *groups*; each group is submitted ``K`` times.
2. Every result must carry a receipt signed by its worker (and the signer must
   be on the allow-list, if one is given) naming the job, model, keys, inputs
   and outputs it came with; output blobs must exist.  A bad receipt is an
   invalid result: its worker is flagged.
3. A group's result is what a strict majority of *distinct* workers (by
   public key, not by queue name) returned (:func:`.redundancy.tally`);
   a second result from the same worker is ignored.  On a split, tie-breakers
   go to workers that have not answered this group yet, by routing the job to
   them (:func:`.identity.routed_device`) when one is known, else to anyone.
4. Dissenters are flagged for the rest of the run: their other results count
   for nothing and groups that depended on them are re-run.
5. Canary chunks are decrypted and checked (:mod:`.canaries`) once all groups
   are decided; a worker that got one wrong is flagged the same way.  When no
   unflagged worker is known to re-run its work, the run fails naming it.

Nothing about any verdict is written to the queue: workers only ever see
ordinary jobs.  Submissions and receipts go to the audit log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..container import Container, chunk_name
from ..errors import JobFailed, QueueError
from .audit import AuditLog
from .canaries import Canary, canary_count, shuffle_in
from .errors import CanaryFailed, NoMajority, ReceiptError, VerificationError
from .identity import AllowList, routed_device, short_id
from .receipts import verify_receipt
from .redundancy import result_digest, tally

POLL_S = 0.05
TARGET_WAIT_S = 3.0
"""How long a job routed to one worker may sit unclaimed before it goes to another (that worker may be gone,
or be a cheater that ignores routed jobs)."""


@dataclass
class _Group:
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


class Supervisor:
    """Runs one verified evaluation through a queue; see the module docstring.  Used by :func:`runner.run`."""

    def __init__(self, q: Any, store: Any, *, device: str, replicas: int, allowed: AllowList | None,
                 audit: AuditLog | None, max_attempts: int, max_results: int | None = None):
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self.q, self.store, self.device, self.replicas = q, store, device, replicas
        self.allowed, self.audit, self.max_attempts = allowed, audit, max_attempts
        self.max_results = max_results or replicas + 2
        self.groups: list[_Group] = []
        self.jobs: dict[str, _Group] = {}
        self.flagged: dict[str, str] = {}       # worker id -> why
        self.known: list[str] = list(allowed.worker_ids) if allowed else []
        self.seen: list[str] = []               # workers with a valid receipt this run, in order
        self.targeted: dict[str, tuple[str, float]] = {}  # job id -> (worker it was routed to, when)
        self.unresponsive: set[str] = set()
        self.stats = {"submitted": 0, "tie_breakers": 0, "duplicates": 0, "invalid": 0, "reruns": 0}
        self.job_stats: list[dict[str, Any]] = []  # what each accepted job's worker reported (cache hits, timings)

    # -- submission -----------------------------------------------------------------------------------------

    def _submit(self, g: _Group, n: int) -> None:
        for _ in range(n):
            target = self._pick_target(g)
            device = routed_device(self.device, target) if target else self.device
            job_id = self.q.submit(g.spec, device=device, max_attempts=self.max_attempts)
            if target:
                self.targeted[job_id] = (target, time.monotonic())
            g.pending.add(job_id)
            self.jobs[job_id] = g
            g.submitted += 1
            self.stats["submitted"] += 1
            if self.audit:
                self.audit.append("submit", job_id, {"spec": g.spec, "device": device})

    def _pick_target(self, g: _Group) -> str | None:
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

    def _take(self, job: Any) -> None:
        g = self.jobs[job.id]
        g.pending.discard(job.id)
        result = job.result or {}
        outputs = result.get("outputs")
        receipt = result.get("receipt")
        if self.audit:
            self.audit.append("receipt", job.id, receipt if _loggable(receipt) else {"unreadable": True})
        try:
            if result.get("inputs") != g.spec["inputs"] or not isinstance(outputs, list):
                raise ReceiptError(f"job {job.id} returned a result for other inputs")
            r = verify_receipt(receipt, allowed=self.allowed, expected={
                "job_id": job.id, "model_id": g.spec["model_id"], "key_id": g.spec["key_id"],
                "inputs": g.spec["inputs"], "outputs": outputs})
            if len(outputs) != len(g.spec["inputs"]) or not all(self.store.exists(d) for d in outputs):
                raise ReceiptError(f"job {job.id}: worker {r.worker} names output blobs that are not in the store",
                                   r.worker)
        except VerificationError as exc:
            self.stats["invalid"] += 1
            # Only a receipt valid for this very job binds its signer; anything else (a forged or replayed
            # receipt) may name an honest worker, so the blame goes to the queue name that completed the job.
            signed = isinstance(exc, ReceiptError) and "not in the store" in str(exc)
            who = _signer(receipt) if signed else None
            who = who or f"unverified:{job.worker or job.id}"
            self._flag(who, f"returned an invalid result for job {job.id}: {exc}")
            if who not in g.results:
                g.results[who] = None
            return
        if r.worker_id in g.results or r.worker_id in self.flagged:
            self.stats["duplicates"] += 1
            return
        if r.worker_id not in self.seen:
            self.seen.append(r.worker_id)
        self.job_stats.append({"job": job.id, **(result.get("stats") or {})})
        digest = result_digest(outputs)
        g.results[r.worker_id] = digest
        g.outputs[digest] = list(outputs)

    def _flag(self, worker: str, why: str) -> None:
        """Flag a worker for the rest of the run and take back every decision that leaned on it."""
        if worker in self.flagged:
            return
        self.flagged[worker] = why
        for g in self.groups:
            if worker in g.results:
                if g.results[worker] is not None:
                    g.results[worker] = None  # kept as 'answered, invalid' so it is never asked again
                if g.winner is not None and worker in g.agreeing:
                    g.winner, g.agreeing = None, ()
                    self.stats["reruns"] += 1

    def _decide(self, g: _Group) -> int:
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

    # -- the loop -------------------------------------------------------------------------------------------

    def run(self, tasks: list[tuple[list[int], dict[str, Any]]], *, timeout: float | None, procs: list[Any],
            advance: Any, canary_check: Any = None, on_submit: Any = None) -> list[_Group]:
        """Submit every group K times and loop until all are decided and the canaries pass.

        ``on_submit`` gets the first round of job ids (for progress and cancellation handles).
        """
        self.groups = [_Group(i, slots, spec) for i, (slots, spec) in enumerate(tasks)]
        for g in self.groups:
            self._submit(g, self.replicas)
        if on_submit is not None:
            on_submit(list(self.jobs))
        deadline = None if timeout is None else time.monotonic() + timeout
        shown: set[int] = set()
        while True:
            for job_id in [j for g in self.groups for j in list(g.pending)]:
                job = self.q.status(job_id)
                if job.state.value == "queued" and job_id in self.targeted:
                    target, since = self.targeted[job_id]
                    if time.monotonic() - since > TARGET_WAIT_S and self.q.cancel(job_id):
                        self.unresponsive.add(target)
                        self.jobs[job_id].pending.discard(job_id)
                        continue
                if job.state.value == "done":
                    self._take(job)
                elif job.state.value in ("failed", "cancelled"):
                    self._cancel_all()
                    raise JobFailed(f"job {job_id} {'was cancelled' if job.state.value == 'cancelled' else 'failed'}"
                                    f" after {job.attempts} attempt(s): {job.error}")
            waiting = False
            for g in self.groups:
                more = self._decide(g)
                if g.winner is not None and g.index not in shown:
                    shown.add(g.index)
                    advance(sum(g.spec["counts"]))
                need = more - len(g.pending)
                if need > 0:
                    self._check_rerun_possible(g)
                    if g.submitted >= self.replicas:
                        self.stats["tie_breakers"] += need
                    self._submit(g, need)
                waiting = waiting or g.winner is None
            if not waiting:
                if canary_check is None or canary_check(self):
                    self._cancel_all()
                    return self.groups
                continue
            if procs and all(p.poll() is not None for p in procs):
                raise QueueError(f"all {len(procs)} local workers exited with jobs left: see their log under .hec/logs")
            if deadline is not None and time.monotonic() > deadline:
                stuck = next(g for g in self.groups if g.winner is None)
                detail = (f"group {stuck.index}: {len(stuck.results)} result(s), {len(stuck.pending)} job(s) waiting; "
                          f"flagged workers: {self._flag_list() or 'none'}")
                self._cancel_all()
                raise QueueError(f"timed out with {len(shown)}/{len(self.groups)} jobs done ({detail}); the jobs were "
                                 f"cancelled: start workers (hec worker --queue {self.q.url}) or pass a longer --timeout")
            time.sleep(POLL_S)

    def _check_rerun_possible(self, g: _Group) -> None:
        """Fail now, naming the flagged workers, when a group can only be re-run by workers already flagged."""
        if not self.flagged or self._pick_target(g) is not None or g.submitted < self.replicas:
            return
        if any(w not in self.flagged for w in self.seen) or (self.allowed is None and not self.flagged):
            return
        if any(h.pending for h in self.groups):
            return  # results still to come may bring an honest worker into view
        self._cancel_all()
        reasons = "; ".join(f"worker {_name(w)} {why}" for w, why in self.flagged.items())
        raise CanaryFailed(f"cannot verify the run: {reasons}; its results were rejected and no other worker is "
                           "available to re-run them", tuple(_name(w) for w in self.flagged))

    def _flag_list(self) -> str:
        return ", ".join(_name(w) for w in self.flagged)

    def _cancel_all(self) -> None:
        for g in self.groups:
            for job_id in list(g.pending):
                try:
                    self.q.cancel(job_id)
                except QueueError:
                    pass
                g.pending.discard(job_id)


def _name(worker: str) -> str:
    """How messages name a worker: its short id, or the queue name it used when its receipt was not valid."""
    return worker if worker.startswith("unverified:") else short_id(worker)


def _signer(receipt: Any) -> str | None:
    """The worker a receipt claims, if it at least names one (for flagging; its signature may be bad)."""
    if isinstance(receipt, dict) and isinstance(receipt.get("worker"), str) and len(receipt["worker"]) == 64:
        return receipt["worker"]
    return None


def _loggable(receipt: Any) -> bool:
    from .canonical import canonical

    if not isinstance(receipt, dict):
        return False
    try:
        canonical(receipt)
    except ValueError:
        return False
    return True


def make_canary_check(source: Any, canaries: list[Canary], slot_of: dict[int, tuple[int, int]], store: Any) -> Any:
    """A callback for :meth:`Supervisor.run`: check every canary, flag cheaters; ``True`` when all pass.

    ``slot_of`` maps canary number ``j`` to ``(group index, position in the group)``.
    """

    def check(sup: Supervisor) -> bool:
        bad = False
        for j, canary in enumerate(canaries):
            g = sup.groups[slot_of[j][0]]
            if g.winner is None:  # undone by a cheater flagged just now: checked again after the re-run
                continue
            payload = store.get(g.outputs[g.winner][slot_of[j][1]])
            try:
                source.check(canary, payload, worker=g.agreeing[0])
            except CanaryFailed:
                bad = True
                for w in g.agreeing:
                    sup._flag(w, f"returned a wrong result for a canary (job group {g.index})")
        return not bad

    return check


def verified_run(ciphertexts: Container, inputs: list[str], counts: list[int], make_spec: Any, *, q: Any,
                 store: Any, device: str, replicas: int, canaries: Any, canary_fraction: float,
                 allowed: AllowList | None, audit: AuditLog | None, per_job: int, max_attempts: int,
                 timeout: float | None, procs: list[Any], advance: Any,
                 on_submit: Any = None) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Run and verify; return the result sections (real chunks, in order) and a verification summary."""
    n_real = len(inputs)
    n_canary = canary_count(n_real, canary_fraction) if canaries is not None else 0
    made = canaries.make(n_canary, max(counts)) if n_canary else []
    canary_digests = [store.put(k.payload) for k in made]
    order = shuffle_in(n_real, n_canary)
    digest_of = lambda s: inputs[s] if s >= 0 else canary_digests[-s - 1]  # noqa: E731
    count_of = lambda s: counts[s] if s >= 0 else made[-s - 1].count  # noqa: E731
    tasks, slot_of = [], {}
    for gi, start in enumerate(range(0, len(order), per_job)):
        slots = order[start : start + per_job]
        for pos, s in enumerate(slots):
            if s < 0:
                slot_of[-s - 1] = (gi, pos)
        tasks.append((slots, make_spec([digest_of(s) for s in slots], [count_of(s) for s in slots])))
    sup = Supervisor(q, store, device=device, replicas=replicas, allowed=allowed, audit=audit,
                     max_attempts=max_attempts)
    check = make_canary_check(canaries, made, slot_of, store) if made else None
    groups = sup.run(tasks, timeout=timeout, procs=procs, advance=advance, canary_check=check, on_submit=on_submit)
    by_slot: dict[int, str] = {}
    for g in groups:
        for pos, s in enumerate(g.slots):
            by_slot[s] = g.outputs[g.winner][pos]
    sections = {chunk_name(i): store.get(by_slot[i]) for i in range(n_real)}
    summary = {"replicas": replicas, "canaries": n_canary, "groups": len(groups), **sup.stats,
               "flagged": {_name(w): why for w, why in sup.flagged.items()},
               "workers": [short_id(w) for w in sup.seen], "job_stats": sup.job_stats}
    if audit:
        summary["audit"] = {"log": audit.location, **audit.verify().to_json()}
    return sections, summary


def run_verified(report: Any, ciphertexts: Container, inputs: list[str], counts: list[int], make_spec: Any, *,
                 q: Any, store: Any, device: str, per_job: int, replicas: int, canaries: float,
                 known_answers: Any, allowed_workers: Any, audit: bool, max_attempts: int, timeout: float | None,
                 local_workers: int, worker_env: dict[str, str] | None, show_progress: bool, log_dir: Any,
                 t0: float, on_submit: Any = None) -> Any:
    """The verified branch of :func:`he_compute.runner.run`: fills and returns ``report``."""
    import os
    from pathlib import Path

    from ..errors import InputError
    from ..evaluator import inputs_digest
    from ..progress import progress
    from ..worker import spawn, stop_all

    if canaries and known_answers is None:
        raise InputError("canaries need known answers: pass known_answers=KnownAnswers(client, X, Y) "
                         "(or hec run --canary-inputs X.npy --keys DIR)")
    allowed = allowed_workers
    if allowed is not None and not isinstance(allowed, AllowList):
        allowed = AllowList.from_file(allowed)
    log = AuditLog.for_queue(q.url) if audit else None
    procs: list[Any] = []
    log_file = None
    if local_workers > 0:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        log_file = open(Path(log_dir) / f"workers-{os.getpid()}.log", "ab")  # noqa: SIM115 - closed below
        # Each local worker gets its own throwaway identity, so that they count as distinct replicas.
        procs = spawn(q.url, store.url, local_workers, device=device, env={**(worker_env or {}), "HEC_WORKER_STATE": ""},
                      stderr=log_file)
    t1 = time.perf_counter()
    try:
        with progress("run", sum(counts), enabled=show_progress) as advance:
            sections, summary = verified_run(
                ciphertexts, inputs, counts, make_spec, q=q, store=store, device=device, replicas=replicas,
                canaries=known_answers if canaries else None, canary_fraction=canaries, allowed=allowed, audit=log,
                per_job=per_job, max_attempts=max_attempts, timeout=timeout, procs=procs, advance=advance,
                on_submit=on_submit)
    finally:
        if procs:
            stop_all(procs)
        if log_file:
            log_file.close()
    report.seconds["wait"] = round(time.perf_counter() - t1, 4)
    meta = {k: ciphertexts.meta[k] for k in ("model_id", "key_id", "n_samples", "chunks", "output_shape")}
    meta["inputs_digest"] = inputs_digest(ciphertexts)
    report.result = Container("results", ciphertexts.scheme, meta, sections)
    report.seconds["total"] = round(time.perf_counter() - t0, 4)
    report.worker_stats = summary.pop("job_stats")
    report.verification = summary
    return report
