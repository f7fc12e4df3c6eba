"""Progress reporting: a rich bar on a terminal, plain lines otherwise.

``HEC_PROGRESS=plain`` (or ``TERM=dumb``) forces plain lines, e.g. for ``!hec ...`` in a notebook,
whose pseudo-terminal would otherwise get one redrawn bar per update; ``HEC_PROGRESS=off`` silences it.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from .. import settings
from ..formats.text import color_system

PLAIN_EVERY_S = 5.0
"""Least seconds between two plain progress lines (a log gets a few lines, not one per sample)."""


@contextmanager
def progress(label: str, total: int, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a bar on a TTY, otherwise prints a few lines (10% steps, 5 s apart) and the last."""
    mode = settings.get("HEC_PROGRESS")
    if not enabled or total <= 0 or mode == "off":
        yield lambda n: None
        return
    if mode != "plain" and os.environ.get("TERM") != "dumb" and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=False, console=Console(color_system=color_system())) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)
        return
    done, step, start = 0, max(1, total // 10), time.monotonic()
    last, last_t = 0, start

    def advance(n: int) -> None:
        nonlocal done, last, last_t
        done += n
        now = time.monotonic()
        # Without a terminal every line stays in the log: a line per 10% and at most one per PLAIN_EVERY_S
        # (so that a handful of samples prints only the final line), and always the last one.
        if done >= total or (done - last >= step and now - last_t >= PLAIN_EVERY_S):
            last, last_t = done, now
            print(f"{label}: {done}/{total} ({now - start:.1f}s)", file=sys.stderr, flush=True)

    yield advance


@contextmanager
def working(label: str) -> Iterator[None]:
    """A spinner with elapsed time for one long step of unknown length (keygen), plain lines otherwise."""
    mode = settings.get("HEC_PROGRESS")
    if mode == "off":
        yield
        return
    start = time.monotonic()
    if mode != "plain" and os.environ.get("TERM") != "dumb" and sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True, color_system=color_system()).status(f"{label} ..."):
            yield
        return
    print(f"{label} ...", file=sys.stderr, flush=True)
    yield
    print(f"{label}: done ({time.monotonic() - start:.1f}s)", file=sys.stderr, flush=True)
