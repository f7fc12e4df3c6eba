"""``hec coordinator``: run the coordinator, and manage its tenants, enrolment tokens and workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import HECError

_DATA_HELP = "The coordinator's data directory (its config, tokens, and the embedded queue and blobs)."


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint="--listen")
    return host.strip("[]"), int(port)


def _open(data: str) -> Any:
    from ..coordinator import Coordinator, Settings

    if not (Path(data) / "coordinator.json").exists():
        raise HECError(f"{data} is not a coordinator's data directory: start hec coordinator --data {data} first")
    return Coordinator(Settings.load(data))


def _emit(token: str, output: Path | None, what: str) -> None:
    from ..coordinator.config import write_token

    if output is None:
        click.echo(token)
        return
    write_token(output, token)
    click.echo(f"wrote {what} to {output} (0600)", err=True)


@click.group("coordinator", invoke_without_command=True)
@click.option("--listen", default="127.0.0.1:8443", show_default=True, metavar="HOST:PORT",
              help="Address to serve on (0.0.0.0:PORT for every interface).")
@click.option("--data", default=".hec-coordinator", show_default=True, metavar="DIR", help=_DATA_HELP)
@click.option("--queue", "queue_url", default=None, metavar="URL",
              help="Queue engine (default sqlite://DIR/queue.db; redis://[USER:PASS@]HOST:PORT/DB to scale out).")
@click.option("--blobs", "blobs_url", default=None, metavar="URL",
              help="Blob store (default file://DIR/blobs; s3://BUCKET/PREFIX hands out presigned URLs).")
@click.option("--tls-cert", default=None, type=click.Path(dir_okay=False, exists=True), help="TLS certificate (PEM).")
@click.option("--tls-key", default=None, type=click.Path(dir_okay=False, exists=True), help="TLS private key (PEM).")
@click.option("--lease", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds a worker's claim lasts without heartbeat (default 30).")
@click.option("--worker-rate", default=None, metavar="RATE", help="Requests per worker key, e.g. 200/second.")
@click.option("--max-result-mb", type=click.IntRange(1), default=None, help="Largest result blob a worker uploads.")
@click.option("--gate", default=None, metavar="URL",
              help="Send workers' blob reads to the blob gate at URL (hec coordinator gate), off this process.")
@click.pass_context
def coordinator(ctx: click.Context, listen: str, data: str, queue_url: str | None, blobs_url: str | None,
                tls_cert: str | None, tls_key: str | None, lease: float | None, worker_rate: str | None,
                max_result_mb: int | None, gate: str | None) -> None:
    """Serve the coordinator: the only party that holds the queue and blob store.

    Workers and clients get narrow, authenticated access over HTTPS. On first start DIR
    gets client.token (tenant "default"), enroll.token (operator "default") and
    operator.token (the status page at /status), all 0600.

    Example: hec coordinator --listen 0.0.0.0:8443 --data /srv/hec --tls-cert cert.pem --tls-key key.pem
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..coordinator import Settings, serve

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("pass --tls-cert and --tls-key together")
    host, port = _listen(listen)
    if tls_cert is None and host not in ("127.0.0.1", "localhost", "::1"):
        raise HECError(f"refusing to serve tokens in the clear on {host}: pass --tls-cert and --tls-key "
                       "(or listen on 127.0.0.1 behind a TLS proxy)")
    settings = Settings.load(data, queue=queue_url, blobs=blobs_url, lease_s=lease, worker_rate=worker_rate,
                             max_result_mb=max_result_mb, gate=gate)
    scheme = "https" if tls_cert else "http"
    click.echo(f"hec coordinator: serving {scheme}://{host}:{port} (queue {settings.queue.split('://')[0]}, "
               f"blobs {settings.blobs.split('://')[0]}); tokens in {data}", err=True)
    serve(settings, host, port, certfile=tls_cert, keyfile=tls_key)

@coordinator.command("gate")
@click.option("--listen", default="127.0.0.1:8444", show_default=True, metavar="HOST:PORT", help="Address to serve on.")
@click.option("--data", default=".hec-coordinator", show_default=True, metavar="DIR", help=_DATA_HELP)
@click.option("--tls-cert", default=None, type=click.Path(dir_okay=False, exists=True), help="TLS certificate (PEM).")
@click.option("--tls-key", default=None, type=click.Path(dir_okay=False, exists=True), help="TLS private key (PEM).")
def gate(listen: str, data: str, tls_cert: str | None, tls_key: str | None) -> None:
    """Serve the blob gate: workers' lease blobs on URLs the coordinator signs, so its process carries no bytes.

    Runs over the coordinator's data directory (same queue, blob store and records); start the
    coordinator with --gate pointing here.

    Example: hec coordinator gate --listen 0.0.0.0:8444 --data /srv/hec --tls-cert cert.pem --tls-key key.pem
    """
    from ..coordinator.gate import serve_gate

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("pass --tls-cert and --tls-key together")
    host, port = _listen(listen)
    if tls_cert is None and host not in ("127.0.0.1", "localhost", "::1"):
        raise HECError(f"refusing to serve blobs in the clear on {host}: pass --tls-cert and --tls-key")
    serve_gate(_open(data), host, port, certfile=tls_cert, keyfile=tls_key)


@coordinator.command("add-tenant")
@click.argument("name")
@click.option("--data", default=".hec-coordinator", show_default=True, metavar="DIR", help=_DATA_HELP)
@click.option("--max-jobs", type=click.IntRange(1), default=10_000, show_default=True, help="Jobs in flight.")
@click.option("--max-gb", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Blob storage quota.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the token to FILE (0600) instead of printing it.")
def add_tenant(name: str, data: str, max_jobs: int, max_gb: float, output: Path | None) -> None:
    """Create a tenant (or set its quotas) and issue a new token for it.

    Example: hec coordinator add-tenant acme --data /srv/hec -o acme.token
    """
    coord = _open(data)
    try:
        token = coord.state.add_tenant(name, max_jobs=max_jobs, max_bytes=int(max_gb * 1024**3))
    finally:
        coord.close()
    _emit(token, output, f"tenant {name}'s token")

@coordinator.command("enroll-token")
@click.option("--operator", default="default", show_default=True, help="Who answers for workers enrolled with it.")
@click.option("--data", default=".hec-coordinator", show_default=True, metavar="DIR", help=_DATA_HELP)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the token to FILE (0600) instead of printing it.")
@click.option("--uses", type=click.IntRange(1), default=1, show_default=True,
              help="How many new worker keys it admits.")
@click.option("--valid-hours", type=click.FloatRange(min=0, min_open=True), default=24.0, show_default=True,
              help="How long it works.")
def enroll_token(operator: str, data: str, output: Path | None, uses: int, valid_hours: float) -> None:
    """Issue an enrolment token: up to USES new worker keys presenting it within VALID_HOURS are admitted
    under OPERATOR (revoking one of them burns the token).

    Example: hec coordinator enroll-token --operator lab-b --uses 4 --data /srv/hec -o lab-b.token
    """
    coord = _open(data)
    try:
        token = coord.state.add_enroll_token(operator, uses=uses, valid_s=valid_hours * 3600)
    finally:
        coord.close()
    _emit(token, output, f"an enrolment token for operator {operator}")

@coordinator.command("allow-worker")
@click.argument("key_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--operator", required=True, help="Who answers for these workers.")
@click.option("--data", default=".hec-coordinator", show_default=True, metavar="DIR", help=_DATA_HELP)
def allow_worker(key_file: Path, operator: str, data: str) -> None:
    """Admit the worker keys in KEY_FILE (allow-list lines, as hec audit worker-key prints) under OPERATOR.

    Example: hec coordinator allow-worker lab-b.allow --operator lab-b --data /srv/hec
    """
    from ..formats.signing import parse_public_key

    keys = [parse_public_key(line) for line in key_file.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    coord = _open(data)
    try:
        for raw in keys:
            rec = coord.state.admit_worker(raw, operator, "allow-list")
            click.echo(f"admitted worker {rec.worker_id[:16]} under operator {rec.operator}", err=True)
    finally:
        coord.close()

@coordinator.command("revoke-worker")
@click.argument("worker_id")
@click.option("--data", default=".hec-coordinator", show_default=True, metavar="DIR", help=_DATA_HELP)
def revoke_worker(worker_id: str, data: str) -> None:
    """Refuse every later request of a worker (its 64-hex id, as the status page shows it).

    Example: hec coordinator revoke-worker 3fa1...e9 --data /srv/hec
    """
    coord = _open(data)
    try:
        if not coord.state.revoke_worker(worker_id):
            raise HECError(f"no admitted worker {worker_id[:16]}: see the status page for worker ids")
    finally:
        coord.close()
    click.echo(f"revoked worker {worker_id[:16]}", err=True)
