"""Count the homomorphic operations a plan needs: the same kernels run on stand-in ciphertexts.

``op_counts(plan, weights, ckks)`` runs :func:`.server.run` with :class:`Counter`
instead of a SEAL engine, so the counts are those of the code that runs, not of
a separate model.  Times the counts by measured per-operation costs
(``bench/bench_ckks_engine.py``) to get the limit of a machine.
"""

from __future__ import annotations

from collections import Counter as _Tally
from dataclasses import dataclass
from typing import Any

import numpy as np

OPS = ("load", "mul_plain", "add", "rescale", "mul_ct", "relin", "rotate", "mod_switch", "add_plain", "dump")
# Relative cost of each operation at one level (mul_plain = 1), measured with SEAL at N=8192 on this machine;
# used only to compare packings for packing="auto".
RELATIVE_COST = {"mul_plain": 1.0, "add": 0.3, "rescale": 3.5, "mul_ct": 1.5, "relin": 13.5, "rotate": 14.0, "mod_switch": 1.0,
                 "add_plain": 0.5, "load": 2.0, "dump": 3.0}


@dataclass
class FakeCt:
    """A ciphertext's level and scale, nothing else."""

    lvl: int
    scale: float
    lazy: bool = False  # three parts: relinearization still owed


class Counter:
    """Mimics :class:`.seal.Engine`'s evaluation methods and tallies operations (weighted by level width)."""

    def __init__(self, depth: int, scale_bits: int = 30):
        self.depth = depth
        self.scales = [2.0**scale_bits] * (depth + 2)
        self.dropped = [2.0**scale_bits] * (depth + 2)
        self.counts: _Tally = _Tally()
        self.work: _Tally = _Tally()  # ops x primes in the ciphertext: what the time is proportional to
        self.by_level: _Tally = _Tally()  # (op, level) -> count, to price with measured per-level costs

    def _tick(self, op: str, lvl: int, times: int = 1) -> None:
        self.counts[op] += times
        self.work[op] += times * (self.depth + 1 - lvl)
        self.by_level[op, lvl] += times

    def level(self, ct: FakeCt) -> int:
        return ct.lvl

    def to_level(self, ct: FakeCt, level: int) -> FakeCt:
        if level > ct.lvl:
            self._tick("mod_switch", ct.lvl, level - ct.lvl)
            return FakeCt(level, ct.scale)
        return ct

    def dot_plain(self, cts: list[FakeCt], values: list[Any], scale: float | None, rescale: bool = True) -> FakeCt:
        lvl = cts[0].lvl
        if any(c.lazy for c in cts):
            self._tick("mul_plain", lvl, len(cts) // 2)  # a third part costs half a product more
        self._tick("mul_plain", lvl, len(cts))
        self._tick("add", lvl, len(cts) - 1)
        out = FakeCt(lvl, cts[0].scale**2 if scale is None else scale, any(c.lazy for c in cts))
        return self.rescale(out, scale) if rescale and scale is not None else out

    def rescale(self, ct: FakeCt, scale: float) -> FakeCt:
        self._tick("rescale", ct.lvl)
        return FakeCt(ct.lvl + 1, scale, ct.lazy)

    def mul_const(self, ct: FakeCt, value: Any, scale: float) -> FakeCt:
        return self.dot_plain([ct], [value], scale)

    def mul(self, a: FakeCt, b: FakeCt, relin: Any, scale: float | None = None) -> FakeCt:
        lvl = max(a.lvl, b.lvl)
        self.to_level(a, lvl), self.to_level(b, lvl)
        self._tick("mul_ct", lvl)
        if relin is not None:
            self._tick("relin", lvl)
        self._tick("rescale", lvl)
        return FakeCt(lvl + 1, scale or a.scale, relin is None)

    def relinearize(self, ct: FakeCt, relin: Any) -> FakeCt:
        if ct.lazy:
            self._tick("relin", ct.lvl)
        return FakeCt(ct.lvl, ct.scale)

    def add(self, a: FakeCt, b: FakeCt) -> FakeCt:
        self._tick("add", a.lvl)
        return a

    def add_const(self, ct: FakeCt, value: Any) -> FakeCt:
        if np.any(np.asarray(value) != 0.0):
            self._tick("add_plain", ct.lvl)
        return ct

    def rotate(self, ct: FakeCt, step: int, galois: Any) -> FakeCt:
        self._tick("rotate", ct.lvl)
        return FakeCt(ct.lvl, ct.scale)


def op_counts(plan: dict[str, Any], weights: dict[str, np.ndarray], packing: str = "batch", block: int = 0,
              slots: int = 0, chain: list[int] | None = None) -> dict[str, Any]:
    """Operations one chunk of a plan costs.

    ``{"counts": {op: n}, "work": {op: n x primes}, "by_level": {(op, level): n}}``.

    A chunk is ``slots`` samples for batch packing and ``slots / (2 block)``
    samples for single packing.  ``chain`` (the coefficient modulus bit sizes):
    a one-prime chain leaves the plan's one product unrescaled, as the engine does.
    """
    from .plan import plan_depth
    from .server import build_steps, run

    depth = plan_depth(plan)
    counter = Counter(0 if chain is not None and len(chain) == 1 else depth)
    steps = build_steps(plan, weights, packing, block, slots)
    n_in = int(np.prod(plan["input_shape"]))
    xs = [FakeCt(0, counter.scales[0]) for _ in range(1 if packing == "single" else n_in)]
    counter._tick("load", 0, len(xs))  # the worker parses every input ciphertext and serializes every output
    out = run(counter, steps, xs, (True, True), packing, block, slots)
    counter._tick("dump", counter.depth, len(out))
    return {"counts": dict(counter.counts), "work": dict(counter.work), "by_level": dict(counter.by_level)}


def relative_cost(counts: dict[str, Any]) -> float:
    """A unitless cost (mul_plain at one prime = 1) for comparing plans and packings."""
    return float(sum(RELATIVE_COST[op] * n for op, n in counts["work"].items()))


def measure(ckks: dict[str, Any], reps: int = 20) -> dict[str, float]:
    """Seconds per operation at each level (``"mul_plain@2"``) with these parameters, on this thread, and the
    byte sizes that go with them (``"bytes@L"``: one ciphertext at level L; ``"input_bytes"``: a client's
    seeded input ciphertext; ``"relin_bytes"``; ``"galois_bytes_per_step"``).  Uses throwaway keys: what a worker's engine does, timed one op at a time.
    """
    import time

    from .seal import Engine, dump, galois_elt, load, sealapi

    s, eng = sealapi(), Engine(ckks)
    gen = s.KeyGenerator(eng.context)
    secret = gen.secret_key()
    one_prime = len(ckks["coeff_mod_bit_sizes"]) == 1  # no key switching: no keys, one unrescaled product
    costs: dict[str, float] = {}
    if not one_prime:
        relin_blob, galois_blob = dump(gen.create_relin_keys()), dump(gen.create_galois_keys([galois_elt(1, eng.n)]))
        relin = load("RelinKeys", eng.context, relin_blob, "relinearization keys")
        galois = load("GaloisKeys", eng.context, galois_blob, "Galois keys")
        costs |= {"relin_bytes": float(len(relin_blob)), "galois_bytes_per_step": float(len(galois_blob))}
    enc, ev = s.Encryptor(eng.context, secret), eng.evaluator
    # A client's input is encrypted with the secret key and sent seeded (half the bytes of a computed one).
    costs["input_bytes"] = float(len(dump(enc.encrypt_symmetric(eng.encode(np.full(eng.slots, 0.5), 0, eng.scales[0])))))

    def timeit(fn: Any) -> float:
        fn()
        best = float("inf")
        for _ in range(max(3, reps // 4)):  # the best of a few batches: the machine's cost, not its neighbours'
            t0 = time.perf_counter()
            for _ in range(4):
                fn()
            best = min(best, (time.perf_counter() - t0) / 4)
        return best

    def fresh(lvl: int) -> Any:
        ct = s.Ciphertext()
        enc.encrypt_symmetric(eng.encode(np.full(eng.slots, 0.5), 0, eng.scales[0]), ct)
        return eng.to_level(ct, lvl)

    for lvl in range(eng.depth + 1):
        ct, out, big = fresh(lvl), s.Ciphertext(), s.Ciphertext()
        blob = dump(ct)
        costs[f"bytes@{lvl}"] = float(len(blob))
        costs[f"load@{lvl}"] = timeit(lambda b=blob: eng.ciphertext(b))
        costs[f"dump@{lvl}"] = timeit(lambda c=ct: dump(c))
        costs[f"add@{lvl}"] = timeit(lambda c=ct: ev.add(c, c, out))
        costs[f"add_plain@{lvl}"] = timeit(lambda c=ct: ev.add_plain(c, eng.encode(0.3, lvl, c.scale), out))
        pt = eng.encode(0.3, lvl, ct.scale)
        if lvl < eng.depth or one_prime:  # a one-prime chain's one level holds one product, left unrescaled
            costs[f"mul_plain@{lvl}"] = timeit(lambda c=ct: ev.multiply_plain(c, pt, out))
        if lvl == eng.depth:  # the last level only adds: a product would not fit its one prime
            continue
        ev.multiply(ct, ct, big)
        costs[f"mul_ct@{lvl}"] = timeit(lambda c=ct: ev.multiply(c, c, out))
        costs[f"relin@{lvl}"] = timeit(lambda: ev.relinearize(big, relin, out))
        costs[f"rotate@{lvl}"] = timeit(lambda c=ct: ev.rotate_vector(c, 1, galois, out))
        costs[f"rescale@{lvl}"] = timeit(lambda: ev.rescale_to_next(big, out))
        costs[f"mod_switch@{lvl}"] = timeit(lambda c=ct: ev.mod_switch_to_next(c, out))
    return costs


def seconds(counts: dict[str, Any], costs: dict[str, float]) -> float:
    """Operation counts (``op_counts``) times measured costs (``measure``): what one core cannot beat for one
    chunk.  An operation at a level that was not timed is priced at its dearest measured level."""
    total = 0.0
    for (op, lvl), n in counts["by_level"].items():
        cost = costs.get(f"{op}@{lvl}")
        if cost is None:
            cost = max((v for k, v in costs.items() if k.startswith(f"{op}@")), default=0.0)
        total += n * cost
    return float(total)
