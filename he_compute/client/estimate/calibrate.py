"""Measure what homomorphic work costs on this machine, once; run in a one-thread child process.

``python -m he_compute.client.estimate.calibrate tfhe`` compiles a small
Concrete circuit of table lookups, generates its keys and times it: seconds per
unit of Concrete's ``complexity``.  ``... ckks PARAMS_JSON`` builds the CKKS
worker's SEAL engine with those parameters and times each operation it
performs at each level, with ciphertext and evaluation-key sizes
(:func:`he_compute.schemes.ckks.opcount.measure`).  Both print one JSON object.

The child runs with ``OMP_NUM_THREADS=1``, as a default worker job does (one
job per core), so the figures are per worker.  :mod:`.costs` caches them.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

import numpy as np

TFHE_LOOKUPS = 6
"""Table lookups in the TFHE reference circuit (about a second of work on one core)."""
OVERHEAD_WIDTH = 30
"""Inputs of the circuit without bootstraps whose time is the per-sample overhead (a typical feature count)."""


def _best(fn: Callable[[], Any], repeat: int) -> float:
    """The fastest of ``repeat`` runs: the machine's cost, with other processes' interference left out."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def tfhe() -> dict[str, float]:
    """Seconds per complexity unit, from a circuit of 6-bit table lookups; and a circuit with none (overhead)."""
    from concrete import fhe

    rng = np.random.default_rng(0)
    table = fhe.LookupTable([(7 * i + 3) % 64 for i in range(64)])

    @fhe.compiler({"x": "encrypted"})
    def lookups(x: Any) -> Any:
        return table[x]

    @fhe.compiler({"x": "encrypted"})
    def additions(x: Any) -> Any:
        return x + 1

    measured = {}
    for name, fn, width in (("lookups", lookups, TFHE_LOOKUPS), ("additions", additions, OVERHEAD_WIDTH)):
        inputset = [rng.integers(0, 64, size=(width,)) for _ in range(16)]
        circuit = fn.compile(inputset)
        circuit.keygen()
        payload = circuit.encrypt(inputset[0]).serialize()
        keys = circuit.keys.evaluation

        def run(c: Any = circuit, p: bytes = payload, k: Any = keys) -> bytes:
            # What a worker does per sample: read the ciphertext, run the circuit, write the result.
            return c.server.run(fhe.Value.deserialize(p), evaluation_keys=k).serialize()

        run()  # warm-up
        measured[name] = (_best(run, 3), float(circuit.complexity))
    (t_pbs, complexity), (t_none, _) = measured["lookups"], measured["additions"]
    return {"s_per_complexity": max(t_pbs - t_none, 1e-9) / complexity, "overhead_s": t_none}


def ckks(params: dict[str, Any]) -> dict[str, float]:
    """Per-operation seconds at each level, and byte sizes, for one CKKS parameter set (the worker's engine)."""
    from ...schemes.ckks.opcount import measure

    return measure(params)


def main(argv: list[str]) -> int:
    """Entry point of the child process: print the measurement as JSON."""
    if argv[:1] == ["tfhe"]:
        result = tfhe()
    elif argv[:1] == ["ckks"] and len(argv) == 2:
        result = ckks(json.loads(argv[1]))
    else:
        print('usage: calibrate tfhe | ckks \'{"poly_modulus_degree": N, "coeff_mod_bit_sizes": [...], '
              '"scale_bits": S}\'', file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
