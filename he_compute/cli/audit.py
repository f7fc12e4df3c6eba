"""``hec audit ...``: check and read the tamper-evident log of submissions and receipts.

Registered on the main group by :func:`register`.  Each command opens the log
kept with the queue (``DIR/audit.jsonl`` next to ``sqlite://DIR/queue.db``, or
the Redis server of a Redis queue) or the one named by ``--log``, calls one
method of :class:`he_compute.transport.audit.AuditLog` and prints; a broken log exits
with one ``Error: ...`` line naming the first bad entry.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import click

from .. import settings
from ..errors import ConfigError, HECError
from ..formats.text import printable

_QUEUE_HELP = "Queue URL whose audit log to read (default $HEC_QUEUE, else ./.hec/queue.db)."


def _log_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    from ._util import coordinator_options

    fn = coordinator_options(fn)
    fn = click.option("--log", "log_path", default=None, metavar="PATH|URL",
                      help="Audit log to read instead of the queue's (a .jsonl file or redis:// URL).")(fn)
    return click.option("--queue", "queue_url", default=None, metavar="URL", help=_QUEUE_HELP)(fn)


def _open(queue_url: str | None, log_path: str | None, remote: dict[str, Any] | None = None) -> Any:
    from ..transport.audit import AuditLog
    from ..transport.locations import Locations, is_redis
    from ._util import open_producer, remote_settings

    settings = remote_settings(dict(remote or {}), queue_url or log_path)
    if settings is not None:  # the tenant's log at the coordinator, checked against this client's checkpoint
        return AuditLog(open_producer(None, settings).audit_store())

    location = log_path or Locations.resolve(queue_url).audit
    if not is_redis(location):
        if not Path(location).exists():
            raise HECError(f"no audit log at {location}: runs with verification write one there")
    return AuditLog.open(location)


@click.group("audit")
def audit() -> None:
    """Check and read the tamper-evident audit log of job submissions and worker receipts.

    Example: hec audit verify --queue sqlite:///srv/hec/queue.db
    """

@audit.command("verify")
@_log_options
@click.option("--size", type=click.IntRange(0), default=None, help="Checkpoint: entries the log had.")
@click.option("--root", default=None, metavar="HEX", help="Checkpoint: Merkle root it had then (with --size).")
@click.option("--json", "as_json", is_flag=True, help="Print the head as JSON on stdout.")
def verify_cmd(queue_url: str | None, log_path: str | None, size: int | None, root: str | None,
               as_json: bool, **remote: Any) -> None:
    """Check every entry, the hash chain, the head, the signed checkpoints, and the newest checkpoint this
    client kept of the log (or the one given with --size and --root).

    Reports the first rewritten, deleted or reordered entry by its index.

    Example: hec audit verify --queue sqlite:///srv/hec/queue.db --size 120 --root 3fa1...
    """
    from ..client import checkpoints
    from ..transport.locations import Locations, state_dir

    if (size is None) != (root is None):
        raise HECError("pass --size and --root together (a checkpoint printed by an earlier verify)")
    log = _open(queue_url, log_path, remote)
    where = Locations.resolve(queue_url)
    # A coordinator's log is checked against the checkpoints its runs kept in $HEC_HOME (state_dir of its URL).
    state = where.state if log.location in (where.audit, log_path) else state_dir(log.location)
    kept = (size, root) if size is not None else checkpoints.latest(state, log.checkpoint_key)
    head = log.verify(checkpoint=kept)
    if kept is not None and size is None:
        click.echo(f"{log.location}: matches the checkpoint of its first {kept[0]} entries this client signed "
                   "and kept", err=True)
    if as_json:
        click.echo(json.dumps({"log": log.location, **head.to_json()}, indent=2))
    click.echo(f"{log.location}: {head.size} entries intact; checkpoint --size {head.size} --root {head.root}",
               err=as_json)
    if head.torn_bytes:
        click.echo(f"warning: {head.torn_bytes} bytes of a torn last line follow entry {head.size - 1} (a crash "
                   "during an append); the next append sets them aside", err=True)

@audit.command("show")
@click.argument("job_id", metavar="JOB")
@_log_options
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def show_cmd(job_id: str, queue_url: str | None, log_path: str | None, as_json: bool, **remote: Any) -> None:
    """Show the submission and receipts recorded for JOB (the log is verified first).

    Example: hec audit show j3f2a...
    """
    log = _open(queue_url, log_path, remote)
    log.verify()
    entries = log.show(job_id)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        raise HECError(f"the audit log has no entry for job {job_id}")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["t"] / 1000))
        body = e["body"]
        if e["kind"] == "receipt":
            what = (f"receipt from worker {str(body.get('worker'))[:16]}: {len(body.get('outputs', []))} "
                    f"output(s), eval {body.get('timings', {}).get('eval_ms', '?')} ms")
        else:
            spec = body.get("spec", {})
            what = f"submitted {len(spec.get('inputs', []))} input(s) for model {str(spec.get('model_id'))[:12]}"
        click.echo(printable(f"#{e['i']:<6} {when}  {printable(e['kind'], 20):<8} {what}"))  # workers' words

@audit.command("worker-key")
@click.option("--state", "state_dir", default=None, metavar="DIR",
              help="Worker state directory (default $HEC_WORKER_STATE).")
@click.option("--operator", default=None, metavar="NAME",
              help="Who runs this worker, written as operator=NAME on the line (replicas need distinct operators).")
def worker_key_cmd(state_dir: str | None, operator: str | None) -> None:
    """Print a worker's public key as an allow-list line (creating the identity on first use).

    Example: hec audit worker-key --state /var/lib/hec-worker --operator alice >> workers.allow
    """
    from ..worker.identity import STATE_ENV, WorkerIdentity

    state_dir = state_dir or settings.get(STATE_ENV)
    if not state_dir:
        raise ConfigError(f"pass --state DIR or set {STATE_ENV} to the worker's state directory")
    me = WorkerIdentity.load_or_create(state_dir)
    if operator is not None and not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", operator):
        raise HECError(f"{operator[:70]!r} is not an operator name: letters, digits and . _ @ - only")
    click.echo(me.public_line((f"operator={operator} " if operator else "") + f"worker {me.short_id}"))
