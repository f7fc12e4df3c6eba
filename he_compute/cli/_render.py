"""Plain-text rendering of nested metadata for ``hec info`` (``--json`` keeps the raw form).

Scalars print as ``label: value``, shapes as ``30`` or ``1×8×8``, lists of
numbers joined by commas (cut after a few), dicts as indented blocks, lists of
dicts one line each.  No Python repr ever reaches the terminal.
"""

from __future__ import annotations

from typing import Any

LIST_SHOWN = 8
"""Items of a long list shown before '... (N in all)'."""
INDENT = "  "


def _label(key: str) -> str:
    return key.replace("_", " ")


def scalar(value: Any) -> str:
    """One value as text: floats in short form, booleans as yes/no, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _inline(key: str, value: list[Any]) -> str:
    if key.endswith("shape"):
        return "×".join(scalar(v) for v in value) or "scalar"
    shown = ", ".join(scalar(v) for v in value[:LIST_SHOWN])
    return shown + (f", ... ({len(value)} in all)" if len(value) > LIST_SHOWN else "")


def _pairs(d: dict[str, Any]) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
            v = _inline(k, v)
        elif isinstance(v, dict):
            v = "{" + _pairs(v) + "}"
        parts.append(f"{k} {scalar(v) if not isinstance(v, str) else v}")  # inner keys kept: package names
    return ", ".join(parts)


def render(desc: dict[str, Any], depth: int = 0, width: int = 18) -> list[str]:
    """The lines that describe ``desc``, nested blocks indented."""
    lines: list[str] = []
    pad = INDENT * depth
    for key, value in desc.items():
        label = f"{pad}{_label(key)}:".ljust(width + 1)
        if isinstance(value, dict):
            if value and all(not isinstance(v, (dict, list)) for v in value.values()) and len(value) <= 4:
                lines.append(f"{label} {_pairs(value)}")
            else:
                lines.append(f"{pad}{_label(key)}:")
                lines.extend(render(value, depth + 1, width))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{_label(key)}:")
            lines.extend(f"{pad}{INDENT}- {_pairs(v)}" for v in value)
        elif isinstance(value, list):
            lines.append(f"{label} {_inline(key, value)}")
        else:
            lines.append(f"{label} {scalar(value)}")
    return lines
