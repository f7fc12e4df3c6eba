"""Small helpers the command modules share."""

from __future__ import annotations

from typing import Any, Callable

import click

from ..formats.text import printable

QUEUE_HELP = "Queue URL: sqlite:///PATH/queue.db or redis://HOST:PORT/DB (default $HEC_QUEUE, else ./.hec/queue.db)."
BLOBS_HELP = "Blob store URL: file://DIR, redis://HOST:PORT/DB or s3://BUCKET/PREFIX (default: next to the queue)."


def queue_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--queue URL`` option."""
    return click.option("--queue", "queue_url", default=None, metavar="URL", help=QUEUE_HELP)(fn)


def echo(message: str) -> None:
    """Print a status line on stderr (stdout is kept for --json output), made printable: status lines name
    workers and operators, and quote what they said."""
    click.echo(printable(message), err=True)


def size(n: float) -> str:
    """Bytes in a readable unit."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def coordinator_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--coordinator URL --token-file FILE --ca-file FILE`` (else ``HEC_COORDINATOR``, ``HEC_TOKEN_FILE``,
    ``HEC_CA_FILE``, else ``~/.hec/config.toml``); they arrive as the keyword argument ``remote`` (a dict)."""
    options = [
        click.option("--coordinator", default=None, metavar="URL",
                     help="Use this coordinator (https://HOST:PORT[,https://...]) instead of a queue ($HEC_COORDINATOR)."),
        click.option("--token-file", default=None, metavar="FILE", help="This tenant's token ($HEC_TOKEN_FILE)."),
        click.option("--ca-file", default=None, metavar="FILE", help="CA certificates for the coordinator ($HEC_CA_FILE)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def remote_settings(opts: dict[str, Any], queue_url: str | None) -> dict[str, Any] | None:
    """The coordinator settings from :func:`coordinator_options` values, or ``None`` to use a queue directly."""
    from ..transport.remote import client_settings

    given = {k: opts.pop(k, None) for k in ("coordinator", "token_file", "ca_file")}
    if queue_url and not given["coordinator"]:
        return None
    s = client_settings(given["coordinator"], given["token_file"], given["ca_file"])
    return s if s["coordinator"] else None


def open_producer(queue_url: str | None, remote: dict[str, Any] | None) -> Any:
    """The tenant's producer at a coordinator, or the queue engine at ``queue_url``."""
    if remote is None:
        from ..transport import queue

        return queue.connect(queue_url)
    from ..transport.remote import open_tenant

    q, _ = open_tenant(remote["coordinator"], token_file=remote["token_file"], ca_file=remote["ca_file"])
    return q


class Duration(click.ParamType):
    """An age such as ``90s``, ``30m``, ``12h``, ``7d`` or ``2w`` (plain numbers are seconds), in seconds."""

    name = "AGE"
    _UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        unit = text[-1:] if text[-1:] in self._UNITS else "s"
        try:
            number = float(text[:-1] if text[-1:] in self._UNITS else text)
        except ValueError:
            self.fail(f"{value!r} is not an age: use e.g. 90s, 30m, 12h, 7d or 2w", param, ctx)
        if number < 0:
            self.fail(f"{value!r}: an age cannot be negative", param, ctx)
        return number * self._UNITS[unit]
