"""What Concrete says a compiled circuit costs: the figures behind he_compute's pre-flight estimates.

Concrete's optimizer gives each circuit a ``complexity`` (its cost model, in
abstract units that track running time closely: 4.8-5.5e-10 s per unit on one
core here, for trees, forests and a plain lookup table alike) and counts its
programmable bootstraps and key switches.  The compiler records these in the
manifest (``circuit``); a bundle made without them gets them from the server
half (:meth:`~.server.TFHEServer.statistics`), at the price of compiling it.
"""

from __future__ import annotations

from typing import Any

FIELDS = {
    "complexity": "complexity",
    "pbs": "programmable_bootstrap_count",
    "key_switches": "key_switch_count",
    "input_bytes": "size_of_inputs",
    "output_bytes": "size_of_outputs",
}


def circuit_statistics(circuit: Any, function: str | None = None) -> dict[str, float]:
    """The cost figures of a ``fhe.Circuit`` (properties) or of ``function`` in a ``fhe.Server`` (the same
    names, as methods; ``complexity`` covers the whole program)."""
    figures = {}
    for name, attr in FIELDS.items():
        value = getattr(circuit, attr)
        if callable(value):
            value = value() if name == "complexity" else value(function)
        figures[name] = float(value)
    return figures
