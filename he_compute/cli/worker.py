"""``hec worker``: the only worker command line (local workers of ``hec run`` run it too)."""

from __future__ import annotations

import click

from ._util import BLOBS_HELP as _BLOBS_HELP
from ._util import queue_option as _queue_option


@click.command("worker")
@_queue_option
@click.option("--blobs", "blobs_url", default=None, metavar="URL", help=_BLOBS_HELP)
@click.option("--concurrency", type=click.IntRange(1, 1024), default=None,
              help="Jobs at once (worker processes); default: one per core, one thread each.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="Threads per job (OMP_NUM_THREADS); default: cores / concurrency.")
@click.option("--burst", is_flag=True, help="Exit once the queue has no job for this worker.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Jobs to take: cuda needs Concrete's CUDA build and a GPU.")
@click.option("--lease", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds a claim lasts without heartbeat (default 30).")
@click.option("--cpus", default=None, metavar="LIST", help="Comma-separated cores to pin this worker to.")
@click.option("--state", "state_dir", default=None, metavar="DIR",
              help="State directory keeping the worker's signing identity (default $HEC_WORKER_STATE; "
                   "without either, a throwaway identity).")
@click.option("--coordinator", default=None, metavar="URL",
              help="Work for this coordinator (https://HOST:PORT) instead of a queue; needs --state.")
@click.option("--token-file", default=None, metavar="FILE",
              help="The operator's enrolment token (enroll.token), used once to enrol this worker's key.")
@click.option("--ca-file", default=None, metavar="FILE", help="CA certificates to trust for the coordinator.")
def worker_cmd(queue_url: str | None, blobs_url: str | None, concurrency: int | None, threads: int | None,
               burst: bool, device: str, lease: float | None, cpus: str | None, state_dir: str | None,
               coordinator: str | None, token_file: str | None, ca_file: str | None) -> None:
    """Run a worker: claim jobs, evaluate on ciphertexts, store encrypted results.

    The worker holds evaluation keys only. SIGTERM lets the job in hand finish its
    current sample and releases the rest to other workers.

    Example: hec worker --coordinator https://coord:8443 --token-file enroll.token --state /var/lib/hec-worker
    """
    import os

    from ..commands import WorkerOptions
    from ..worker.host import serve

    if coordinator and (queue_url or blobs_url):
        raise click.UsageError("a worker of a coordinator never sees the queue or blob store: drop --queue/--blobs")
    if ca_file:
        os.environ["HEC_CA_FILE"] = ca_file  # child worker processes trust the same CA

    try:
        cores = [int(c) for c in cpus.split(",")] if cpus else None
    except ValueError:
        raise click.BadParameter(f"{cpus!r} is not a comma-separated list of core numbers", param_hint="--cpus") from None
    from ..errors import AuthError
    from ..worker.host import EXIT_REFUSED

    try:
        options = WorkerOptions(device=device, concurrency=concurrency, threads=threads,
                                cpus=tuple(cores) if cores else None, burst=burst, lease_s=lease, state=state_dir,
                                coordinator=coordinator, token_file=token_file)
        status = serve(queue_url, blobs_url, options)
    except AuthError as exc:  # final: a distinct status, so that a supervising `hec worker` stops too
        click.echo(f"Error: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_REFUSED) from None
    if status:
        raise click.exceptions.Exit(status)
