"""The two JSON byte forms of he_compute, in one place.

:func:`canonical` is what receipts are signed in and audit entries are hashed
in: keys sorted, no whitespace, ASCII only, and no floats at all (a float can
be printed in several ways, ``1e-05`` vs ``0.00001``, and may not round-trip
between languages, so a signature over one would be ambiguous; timings are
integer milliseconds instead).

:func:`compact` is the same layout with floats allowed (never NaN or
infinity), for everything that is hashed or stored but not signed: container
headers, model ids, job records.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import FormatError


def _check(obj: Any, path: str) -> None:
    if obj is None or isinstance(obj, (bool, str)):
        return
    if isinstance(obj, int):
        return
    if isinstance(obj, float):
        raise FormatError(f"canonical JSON has no floats ({path} = {obj!r}): use integers, e.g. milliseconds")
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _check(item, f"{path}[{i}]")
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise FormatError(f"canonical JSON keys are strings ({path} has key {key!r})")
            _check(value, f"{path}.{key}")
        return
    raise FormatError(f"{path} is a {type(obj).__name__}, which canonical JSON cannot hold")


def canonical(obj: Any) -> bytes:
    """Serialize ``obj`` (dicts, lists, strings, ints, bools, None) to canonical JSON bytes.

    Raises :class:`ValueError` for floats and other values with no single form.

    Example::

        canonical({"b": 1, "a": [True, None]}) == b'{"a":[true,null],"b":1}'
    """
    _check(obj, "$")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def compact(obj: Any) -> str:
    """Sorted, whitespace-free JSON text; floats allowed, NaN and infinity refused (``ValueError``)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
