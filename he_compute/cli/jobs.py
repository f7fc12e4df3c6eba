"""The client's queue commands (``hec run / status / jobs / cancel``), registered on the main group.

Each command opens the queue, calls one library function and prints; library
errors become one ``Error: ...`` line through the main group.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import click

from ..errors import HECError
from ..transport.queue import JobState
from ..formats.text import color_system, printable
from ._util import BLOBS_HELP as _BLOBS_HELP
from ._util import Duration, coordinator_options, open_producer, remote_settings
from ._util import echo as _echo
from ._util import queue_option as _queue_option
from ._verify import verify_options, verify_policy

if TYPE_CHECKING:
    from ..client.run import RunReport


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _progress(job: Any) -> str:
    total = sum(job.spec.get("counts", [])) if isinstance(job.spec, dict) else 0
    done = total if job.state is JobState.DONE else int(job.progress.get("done", 0))
    return f"{done}/{total}"


@contextmanager
def _early_workers(n: int, queue: Any, blobs: Any, part: Any) -> Iterator[tuple[Any, Any]]:
    """The run's connection, and its ``n`` local workers started now: they boot while the inputs are read."""
    from ..client.run.connection import Connection
    from ..client.run.local import local_workers

    with Connection(queue, blobs) as conn, \
            local_workers(n, conn.queue_url, conn.blobs_url, conn.where.logs,
                          device=str(part.meta.get("device", "cpu"))) as workers:  # none when n is 0
        yield conn, workers


class _Interrupted(click.ClickException):
    """A run stopped by Ctrl-C or SIGTERM: one line, exit status 130 like any interrupted command."""

    exit_code = 130


@contextmanager
def _interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM ends a run like Ctrl-C does: through KeyboardInterrupt, so its jobs are cancelled."""

    def on_term(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command("run")
@click.argument("encrypted", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--bundle", "bundle_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Bundle or server part; only its server part is uploaded (default: the one keygen kept "
                   "in the key directory).")
@click.option("--eval-keys", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Evaluation-key file (default: DIR/evaluation.keys).")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Key directory; only its evaluation.keys and server.hec are read, never the secret keys "
                   "(default: the one on this machine that holds ENCRYPTED's key id).")
@_queue_option
@click.option("--blobs", "blobs_url", default=None, metavar="URL", help=_BLOBS_HELP)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Encrypted result to write (read by hec decrypt).")
@click.option("--local-workers", type=click.IntRange(0, 256), default=0, show_default=True,
              help="Start N worker processes for this run and stop them after.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Give up after S seconds (the run's jobs are cancelled).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="After a crash or Ctrl-C, running the same command collects the jobs that finished and "
                   "submits only what is missing; --no-resume starts over.")
@click.option("--samples-per-job", type=click.IntRange(1), default=None,
              help="Ciphertext chunks per job (default: split into at most 64 jobs).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@verify_options
@coordinator_options
def run_cmd(encrypted: Path, bundle_path: Path | None, eval_keys: Path | None, keys_dir: Path | None,
            queue_url: str | None, blobs_url: str | None, output: Path, local_workers: int,
            timeout: float | None, resume: bool, samples_per_job: int | None, as_json: bool,
            **verify: Any) -> None:
    """Evaluate ENCRYPTED on queue workers and write the encrypted result.

    Uploads what the blob store lacks (server part, evaluation keys, ciphertexts),
    submits one job per chunk of samples, waits and verifies every result. Ctrl-C (or
    SIGTERM) cancels the run's jobs; running the same command again resumes it.

    Example: hec run x.enc -o y.enc --local-workers 2
    """
    from ..client.run import RunOptions, run
    from ..formats import container

    part, evk, keys_dir = _run_inputs(encrypted, bundle_path, eval_keys, keys_dir)
    remote = remote_settings(verify, queue_url)
    policy = verify_policy(verify, keys_dir=keys_dir, server_part=part, evalkeys=evk)
    q = store = None
    if remote is not None:
        from ..transport.remote import open_tenant

        if local_workers:
            raise HECError("--local-workers runs workers on the embedded queue; with a coordinator, start "
                           "hec worker --coordinator URL instead")
        q, store = open_tenant(remote["coordinator"], token_file=remote["token_file"], ca_file=remote["ca_file"])
    try:
        with _interrupts_as_keyboard_interrupt(), \
                _early_workers(local_workers, q or queue_url, store or blobs_url, part) as (conn, workers):
            enc = container.read(encrypted, expect="ciphertexts")  # the workers boot meanwhile
            try:
                report = run(enc, part, evk, queue=conn.q, blobs=conn.store, policy=policy, local_workers=workers,
                             options=RunOptions(timeout=timeout, samples_per_job=samples_per_job, resume=resume))
            except KeyboardInterrupt:
                raise _Interrupted("interrupted: the run's unfinished jobs were cancelled; run the same command "
                                   "again to resume (finished jobs are kept)") from None
    finally:
        if q is not None:
            q.close()
    if report.resumed:
        _echo(f"resumed run {report.run_id}: {report.resumed} job group(s) had jobs from the earlier attempt")
    report.result.save(output)
    _print_run(report, output, enc.meta["n_samples"], as_json)


def _run_inputs(encrypted: Path, bundle_path: Path | None, eval_keys: Path | None,
                keys_dir: Path | None) -> tuple[Any, Any, Path | None]:
    """The server part and evaluation keys ``hec run`` uploads, and the key directory they came from: what the
    flags leave out comes from the key directory that holds ENCRYPTED's key id."""
    from ..client import registry
    from ..formats import container
    from ..formats.evalkeys import read as read_evaluation_keys

    key_id = container.read_meta(encrypted, expect="ciphertexts").get("key_id")
    if eval_keys is None or bundle_path is None:
        keys_dir = registry.keys_for(str(key_id), keys_dir, str(encrypted))
        eval_keys = eval_keys or keys_dir / "evaluation.keys"
        bundle_path = bundle_path or registry.server_part_path(keys_dir)
    return container.read(bundle_path, expect=("bundle", "server")), read_evaluation_keys(eval_keys), keys_dir


def _print_run(report: RunReport, output: Path, n: int, as_json: bool) -> None:
    """What ``hec run`` did: a JSON summary when asked, and lines on stderr (timings, verification, warnings)."""
    if as_json:
        click.echo(json.dumps({"output": str(output), **report.to_json()}, indent=2))
    _echo(f"wrote {output}: {n} samples in {len(report.job_ids)} job(s) of run {report.run_id}, "
          f"{report.seconds['total']:.1f}s "
          f"({report.seconds['total'] / max(1, n):.2f}s/sample); uploaded {sum(report.uploaded.values())} "
          f"blob(s), reused {sum(report.reused.values())}")
    if report.verification:
        v = report.verification
        audit = v.get("audit", {})
        _echo(f"verified: {v['replicas']} replica(s), {v['canaries']} canaries, {v['tie_breakers']} "
              f"tie-breaker(s); flagged: {', '.join(v['flagged']) or 'none'}"
              + (f"; audit root {audit['root']}" if "root" in audit else ""))
        if "error" in audit:
            _echo(f"warning: the audit log {audit['log']} failed verification ({audit['error']}); the results "
                  "were verified by their receipts and kept; run hec audit verify")
        if v.get("rotate_keys"):
            _echo("warning: a check failed (flagged workers above); workers who can choose ciphertexts may have "
                  "learnt from how this run reacted: make new keys with hec keygen BUNDLE --keys DIR --rotate "
                  "and encrypt again")

@click.command("status")
@click.argument("job_id", metavar="[JOB]", required=False)
@_queue_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@coordinator_options
def status_cmd(job_id: str | None, queue_url: str | None, as_json: bool, **remote: Any) -> None:
    """Show one job (state, attempts, progress, last error), or job counts by state.

    Example: hec status j3f2a... --queue sqlite:///srv/hec/queue.db
    """
    with open_producer(queue_url, remote_settings(remote, queue_url)) as q:
        _status(q, job_id, as_json)

def _status(q: Any, job_id: str | None, as_json: bool) -> None:
    if job_id:
        job = q.status(job_id)
        if as_json:
            click.echo(json.dumps(job.to_json(), indent=2))
            return
        rows = {"job": job.id, "state": job.state.value, "device": job.device,
                "attempts": f"{job.attempts}/{job.max_attempts}", "progress": _progress(job),
                "worker": job.worker or "-", "created": _when(job.created), "updated": _when(job.updated),
                "error": job.error or "-"}
        for key, value in rows.items():
            click.echo(f"{key:>9}: {printable(value)}")  # a worker wrote the error, progress and name
        return
    counts = {state.value: n for state, n in q.counts().items()}
    if as_json:
        click.echo(json.dumps({"queue": q.url, "counts": counts}, indent=2))
        return
    click.echo(f"{q.url}: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no jobs"))

@click.command("jobs")
@_queue_option
@click.option("--state", type=click.Choice(["queued", "running", "done", "failed", "cancelled"]), default=None,
              help="Only jobs in this state (failed = the dead letter).")
@click.option("--run", "run_id", default=None, metavar="RUN", help="Only the jobs of this run (hec run --json "
              "prints its id).")
@click.option("--since", type=Duration(), default=None,
              help="Only jobs submitted within this age (90s, 30m, 12h, 7d).")
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True,
              help="Show at most this many (the oldest of those that match).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@coordinator_options
def jobs_cmd(queue_url: str | None, state: str | None, run_id: str | None, since: float | None, limit: int,
             as_json: bool, **remote: Any) -> None:
    """List jobs, oldest first, filtered by state, run and age.

    Example: hec jobs --state failed --since 1d
    """
    with open_producer(queue_url, remote_settings(remote, queue_url)) as q:
        jobs = q.jobs(JobState(state) if state else None, limit, run=run_id,
                      since=None if since is None else time.time() - since)
        url = q.url
    if as_json:
        click.echo(json.dumps([j.to_json() for j in jobs], indent=2))
        return
    if not jobs:
        filtered = state or run_id or since is not None
        _echo(f"no jobs in {url}{' match these filters' if filtered else ''}")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table()
    table.add_column("job", no_wrap=True, min_width=max(len(j.id) for j in jobs))
    table.add_column("run", no_wrap=True)
    for col in ("state", "attempts", "progress", "device", "updated"):
        table.add_column(col, no_wrap=True)
    table.add_column("error")
    for j in jobs:  # plain Text: no rich markup from a stranger's words, and no control characters
        table.add_row(*(Text(printable(cell, 60)) for cell in (
            j.id, j.run or "-", j.state.value, f"{j.attempts}/{j.max_attempts}", _progress(j), j.device,
            _when(j.updated), j.error or "")))
    Console(width=None if sys.stdout.isatty() else 160, color_system=color_system()).print(table)

@click.command("cancel")
@click.argument("job_id", metavar="JOB")
@_queue_option
@coordinator_options
def cancel_cmd(job_id: str, queue_url: str | None, **remote: Any) -> None:
    """Cancel a queued or running job (its worker stops at the next heartbeat).

    Example: hec cancel j3f2a...
    """
    with open_producer(queue_url, remote_settings(remote, queue_url)) as q:
        if not q.cancel(job_id):
            raise HECError(f"job {job_id} already ended ({q.status(job_id).state.value}); nothing to cancel")
    _echo(f"cancelled {job_id}")
