"""Small helpers the command modules share."""

from __future__ import annotations

from typing import Any, Callable

import click

QUEUE_HELP = "Queue URL: sqlite:///PATH/queue.db or redis://HOST:PORT/DB (default $HEC_QUEUE, else ./.hec/queue.db)."
BLOBS_HELP = "Blob store URL: file://DIR, redis://HOST:PORT/DB or s3://BUCKET/PREFIX (default: next to the queue)."


def queue_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--queue URL`` option."""
    return click.option("--queue", "queue_url", default=None, metavar="URL", help=QUEUE_HELP)(fn)


def echo(message: str) -> None:
    """Print a status line on stderr (stdout is kept for --json output)."""
    click.echo(message, err=True)


def size(n: float) -> str:
    """Bytes in a readable unit."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


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
