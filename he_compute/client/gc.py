"""Garbage collection of the blob store: the disk stops growing with every run (``hec gc``).

A run leaves in the blob store its server part, its evaluation keys, one
ciphertext blob per chunk and one result blob per chunk (276 MB after one CNN
run), and nothing ever removed them.  :func:`collect` decides from the queue's
job records, grouped by run:

* a run whose jobs have all ended (done, failed or cancelled) and whose last
  update is older than ``older_than_s`` is *old*: every blob its jobs name
  (inputs, results, and the server part and keys it used) may go;
* every blob named by a job of any other run (live, or finished recently) is
  kept, so a blob that a queued or running job needs is never deleted;
* in a ``file://`` store, which can be listed, the rule is by age alone: every
  blob older than the bound that no kept job names goes (so also uploads of runs
  that crashed before submitting), and no younger one.  Other stores cannot be
  listed cheaply, so there only the blobs named by old runs are deleted.

The job records themselves stay (``hec jobs --since`` filters them), and the
next run uploads again whatever it needs.  The job list is read a second time
just before deleting, so that a run submitted meanwhile keeps its blobs; a run
that checked for a blob but has not yet submitted its jobs is the one case a
concurrent gc can still hurt (its jobs then fail with "blob not in store"), so
keep the bound well above the length of a run.

Example::

    with Connection() as conn:
        report = collect(conn.q, conn.store, older_than_s=7 * 86400, dry_run=True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..formats.digests import is_digest
from ..transport.blobs import BlobStore
from ..transport.queue import TERMINAL, Job, Producer

MAX_JOBS = 10**9
"""Jobs read from the queue (all of them)."""


@dataclass
class GcReport:
    """What :func:`collect` deleted (or, with ``dry_run``, would delete)."""

    runs: int = 0
    deleted: list[str] = field(default_factory=list)
    freed_bytes: int | None = None
    kept: int = 0
    swept_store: bool = False
    logs: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        """Summary for ``hec gc --json``."""
        return {"old_runs": self.runs, "deleted_blobs": len(self.deleted), "freed_bytes": self.freed_bytes,
                "kept_blobs": self.kept, "swept_unreferenced": self.swept_store, "deleted_logs": self.logs,
                "dry_run": self.dry_run}


def referenced(job: Job) -> set[str]:
    """Every blob digest a job record names: its server part, keys, inputs, and the outputs of its result."""
    spec = job.spec if isinstance(job.spec, dict) else {}
    names: list[Any] = [spec.get("server"), spec.get("keys"), *(spec.get("inputs") or [])]
    if isinstance(job.result, dict):
        names += list(job.result.get("outputs") or [])
    return {n for n in names if is_digest(n)}


def _runs(jobs: Iterable[Job]) -> dict[str, list[Job]]:
    runs: dict[str, list[Job]] = {}
    for job in jobs:
        runs.setdefault(job.run or job.id, []).append(job)
    return runs


def _partition(jobs: list[Job], cutoff: float) -> tuple[int, set[str], set[str]]:
    """``(old runs, blobs of old runs, blobs to keep)``."""
    old_runs, old, keep = 0, set(), set()
    for members in _runs(jobs).values():
        refs = set().union(*(referenced(j) for j in members))
        if all(j.state in TERMINAL for j in members) and max(j.updated for j in members) < cutoff:
            old_runs += 1
            old |= refs
        else:
            keep |= refs
    return old_runs, old, keep


def collect(q: Producer, store: BlobStore, *, older_than_s: float, dry_run: bool = False,
            log_dir: Path | None = None, now: float | None = None) -> GcReport:
    """Delete the blobs of finished runs older than ``older_than_s`` and unreferenced old blobs (see module doc)."""
    now = time.time() if now is None else now
    cutoff = now - older_than_s
    report = GcReport(dry_run=dry_run)
    report.runs, doomed, keep = _partition(q.jobs(limit=MAX_JOBS), cutoff)
    sizes: dict[str, int] = {}
    listing = getattr(store, "listing", None)
    if callable(listing):
        # A listable store: every blob older than the bound that no kept job names goes, and none younger
        # (a blob of an old run that was uploaded again lately belongs to a run that is starting).
        report.swept_store, report.freed_bytes = True, 0
        sizes = {digest: size for digest, size, mtime in listing() if mtime < cutoff}
        doomed = set(sizes)
    # Read the jobs again: whatever was submitted since the first read keeps its blobs.
    keep |= _partition(q.jobs(limit=MAX_JOBS), cutoff)[2]
    report.kept = len(keep)
    for digest in sorted(doomed - keep):
        if not dry_run:
            store.delete(digest)
        report.deleted.append(digest)
        if report.freed_bytes is not None:
            report.freed_bytes += sizes.get(digest, 0)
    if log_dir is not None and log_dir.is_dir():
        for log in sorted(log_dir.glob("workers-*.log")):
            if log.stat().st_mtime < cutoff:
                if not dry_run:
                    log.unlink(missing_ok=True)
                report.logs.append(str(log))
    return report
