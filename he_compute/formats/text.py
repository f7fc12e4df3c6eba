"""Text a stranger wrote, made safe to show: what a worker or a tenant says reaches terminals and logs.

A worker's error message, a queue name, a job's progress or an operator name may hold terminal control
sequences: an OSC title or clipboard write (``ESC ] 52 ;``), a carriage return that paints over the line
before ("All jobs verified OK"), cursor moves, bidirectional overrides that reorder what a reader sees.
:func:`printable` turns every such character into a visible escape and bounds the length, so a line shows
exactly one line of what was said.  Everything that prints or logs text from a worker or a tenant goes
through it (the CLI's error line, ``hec jobs`` and ``hec status``, the worker's log).
"""

from __future__ import annotations

import os
import unicodedata
from typing import Literal

MAX_CHARS = 4000
"""The longest text shown from a stranger; the rest is cut with an ellipsis."""


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object, limit: int = MAX_CHARS) -> str:
    """``text`` as one line of visible characters, at most ``limit`` of them (plus an ellipsis).

    Control characters (C0, DEL, C1: escape, carriage return, newline, tab...), format characters such as
    bidirectional overrides and zero-width joiners, line and paragraph separators and surrogates become
    ``\\xNN`` / ``\\uNNNN`` escapes; a backslash stays itself.  Non-strings are shown through ``str``.
    """
    s = text if isinstance(text, str) else str(text)
    out: list[str] = []
    size = 0
    for ch in s:
        piece = _escape(ch) if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") else ch
        if size + len(piece) > limit:
            out.append("…")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def color_system() -> Literal["auto"] | None:
    """The ``color_system`` for a rich console: ``None`` (no escape codes at all) when ``NO_COLOR`` is set.

    rich obeys ``FORCE_COLOR`` (Jupyter sets it for every child process) and under ``NO_COLOR`` still
    writes bold and underline codes; per no-color.org a non-empty ``NO_COLOR`` wins over everything else.
    """
    return None if os.environ.get("NO_COLOR") else "auto"
