"""``hec gc``: delete what finished runs left in the blob store (see :mod:`he_compute.client.gc`)."""

from __future__ import annotations

import json

import click

from ._util import BLOBS_HELP, Duration, echo, size
from ._util import queue_option as _queue_option


@click.command("gc")
@_queue_option
@click.option("--blobs", "blobs_url", default=None, metavar="URL", help=BLOBS_HELP)
@click.option("--older-than", "older_than", type=Duration(), default="7d", show_default=True,
              help="Collect runs that ended, and blobs written, longer ago than this (90s, 30m, 12h, 7d, 2w).")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def gc_cmd(queue_url: str | None, blobs_url: str | None, older_than: float, dry_run: bool,
           as_json: bool) -> None:
    """Delete the inputs and results of finished runs older than --older-than, and unreferenced blobs.

    A blob that a queued or running job (or a recent run) names is never deleted; job records
    stay (filter them with hec jobs --since).  Old worker logs go too.

    Example: hec gc --older-than 2d --dry-run
    """
    from ..client.gc import collect
    from ..client.run import Connection

    with Connection(queue_url, blobs_url) as conn:
        report = collect(conn.q, conn.store, older_than_s=older_than, dry_run=dry_run, log_dir=conn.where.logs)
        store = conn.store.url
    if as_json:
        click.echo(json.dumps({"blobs": store, **report.to_json()}, indent=2))
    verb = "would delete" if dry_run else "deleted"
    freed = f" ({size(report.freed_bytes)})" if report.freed_bytes is not None else ""
    echo(f"{verb} {len(report.deleted)} blob(s){freed} from {store}: {report.runs} finished run(s) older than "
         f"the bound{'' if report.swept_store else ' (this store is not listed: only blobs named by those runs)'}"
         f"; kept {report.kept} blob(s) that live or recent jobs name; {len(report.logs)} old worker log(s)")
