"""Measure what homomorphic work costs on this machine, once; run in a one-thread child process.

``python -m he_compute.client.estimate.calibrate tfhe`` compiles a small
Concrete circuit of table lookups, generates its keys and times it: seconds per
unit of Concrete's ``complexity``.  ``... ckks N CHAIN SCALE GALOIS`` builds a
TenSEAL context with those parameters and times each operation the CKKS
server performs (at the top level; :mod:`.ckks` scales them by level), and
measures ciphertext and evaluation-key sizes.  Both print one JSON object.

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
CKKS_REPEAT = 8


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


def ckks(n: int, chain: list[int], scale_bits: int, galois: bool) -> dict[str, float]:
    """Per-operation seconds at the top level, and byte sizes, for one CKKS parameter set."""
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=chain)
    ctx.global_scale = 2.0**scale_bits
    ctx.generate_relin_keys()
    if galois:
        ctx.generate_galois_keys()
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, n // 2)
    a, b = ts.ckks_vector(ctx, values.tolist()), ts.ckks_vector(ctx, values[::-1].tolist())
    public = ts.context_from(ctx.serialize(save_secret_key=False, save_galois_keys=galois, save_relin_keys=True))
    data = a.serialize()
    out = {
        "load": _best(lambda: ts.ckks_vector_from(public, data), CKKS_REPEAT),
        "dump": _best(a.serialize, CKKS_REPEAT),
        "encrypt": _best(lambda: ts.ckks_vector(ctx, values.tolist()), CKKS_REPEAT),
        "decrypt": _best(a.decrypt, CKKS_REPEAT),
        "mul_scalar": _best(lambda: a * 0.37, CKKS_REPEAT),  # includes the rescale TenSEAL does after it
        "add": _best(lambda: a + b, CKKS_REPEAT),
        "add_scalar": _best(lambda: a + 0.37, CKKS_REPEAT),
        "mul_ct": _best(lambda: a * b, CKKS_REPEAT),  # ciphertext product, relinearization and rescale
        "ciphertext_bytes": float(len(a.serialize())),
        "evaluation_key_bytes": float(len(ctx.serialize(save_public_key=True, save_secret_key=False,
                                                         save_galois_keys=galois, save_relin_keys=True))),
        "noise": float(np.max(np.abs(np.asarray((a * 0.37).decrypt()) - 0.37 * values))),
    }
    if galois:  # single packing: a vector-matrix product costs about one rotation per matrix row
        rows = 16
        v = ts.ckks_vector(ctx, values[:rows].tolist())
        matrix = rng.uniform(-1, 1, (rows, rows)).tolist()
        out["mm_row"] = _best(lambda: v.mm(matrix), 3) / rows
    return out


def main(argv: list[str]) -> int:
    """Entry point of the child process: print the measurement as JSON."""
    if argv[:1] == ["tfhe"]:
        result = tfhe()
    elif argv[:1] == ["ckks"] and len(argv) == 5:
        result = ckks(int(argv[1]), [int(b) for b in argv[2].split(",")], int(argv[3]), argv[4] == "1")
    else:
        print("usage: calibrate tfhe | ckks N CHAIN SCALE_BITS GALOIS(0|1)", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
