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


@contextmanager
def progress(label: str, total: int, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a bar on a TTY, prints a line per ~10% otherwise."""
    mode = os.environ.get("HEC_PROGRESS", "auto")
    if not enabled or total <= 0 or mode == "off":
        yield lambda n: None
        return
    if mode != "plain" and os.environ.get("TERM") != "dumb" and sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)
        return
    done, step, start = 0, max(1, total // 10), time.monotonic()
    last = 0

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        if done - last >= step or done >= total:
            last = done
            print(f"{label}: {done}/{total} ({time.monotonic() - start:.1f}s)", file=sys.stderr, flush=True)

    yield advance


@contextmanager
def working(label: str) -> Iterator[None]:
    """A spinner with elapsed time for one long step of unknown length (keygen), plain lines otherwise."""
    mode = os.environ.get("HEC_PROGRESS", "auto")
    if mode == "off":
        yield
        return
    start = time.monotonic()
    if mode != "plain" and os.environ.get("TERM") != "dumb" and sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(f"{label} ..."):
            yield
        return
    print(f"{label} ...", file=sys.stderr, flush=True)
    yield
    print(f"{label}: done ({time.monotonic() - start:.1f}s)", file=sys.stderr, flush=True)
