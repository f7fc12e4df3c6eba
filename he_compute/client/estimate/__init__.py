"""Pre-flight estimates: what evaluating a bundle will cost on this machine, before paying for it.

:func:`estimate` gives, for a bundle, the evaluation time of one unit of work
(a sample for TFHE, a ciphertext batch for CKKS batch packing, a sample for
CKKS single packing) on one core of this machine, the evaluation-key size, the
encrypted bytes per sample in and out, and (CKKS) the expected output error.
:meth:`Estimate.plan` scales it to N samples on W workers (``hec plan``).

TFHE times come from Concrete's circuit complexity (:mod:`.tfhe`), CKKS times
from operation counts (:mod:`.ckks`); both use costs measured once per machine
(:mod:`.costs`, :mod:`.calibrate`).  ``tests/test_everyday_estimate.py`` and
``bench/bench_everyday.py`` check them against measurements.

Example::

    est = estimate(load_bundle("model.hec"))
    est.plan(samples=1000, workers=4)["seconds"]
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

from ...formats.bundle import Bundle

Say = Callable[[str], None]


@dataclass(frozen=True)
class Estimate:
    """A bundle's costs on this machine, per unit of work (one worker, one core)."""

    scheme: str
    unit: str
    samples_per_unit: int
    seconds_per_unit: float
    evaluation_key_bytes: int
    input_bytes_per_unit: float
    output_bytes_per_unit: float
    server_part_bytes: int
    expected_error: float | None
    p_error: float | None
    basis: str

    @property
    def input_bytes_per_sample(self) -> float:
        """Encrypted input bytes per sample (a full batch shares its ciphertexts)."""
        return self.input_bytes_per_unit / self.samples_per_unit

    @property
    def output_bytes_per_sample(self) -> float:
        """Encrypted result bytes per sample."""
        return self.output_bytes_per_unit / self.samples_per_unit

    def plan(self, samples: int, workers: int = 1) -> dict[str, float]:
        """Time and bytes for ``samples`` samples on ``workers`` single-core workers.

        Units of work (samples, or batches) are spread evenly; upload counts the server part and evaluation
        keys once (a blob store that already holds them skips them) and every input ciphertext.
        """
        units = math.ceil(samples / self.samples_per_unit)
        rounds = math.ceil(units / max(1, workers))
        return {"samples": samples, "workers": workers, "units": units, "seconds": rounds * self.seconds_per_unit,
                "upload_bytes": self.server_part_bytes + self.evaluation_key_bytes + units * self.input_bytes_per_unit,
                "download_bytes": units * self.output_bytes_per_unit}

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (for ``--json`` output)."""
        return {**asdict(self), "input_bytes_per_sample": self.input_bytes_per_sample,
                "output_bytes_per_sample": self.output_bytes_per_sample}


def estimate(bundle: Bundle, say: Say | None = None) -> Estimate:
    """The costs of ``bundle`` on this machine (measuring the machine once, if it never was)."""
    from .costs import measured

    server_bytes = len(bundle.server_part().to_bytes())
    if bundle.scheme == "tfhe":
        from . import tfhe

        figures = tfhe.estimate(bundle, measured("tfhe", ["tfhe"], say), say)
    else:
        from . import ckks

        c = bundle.manifest["ckks"]
        if c.get("engine"):
            from ...errors import UnsupportedModelError

            raise UnsupportedModelError(f"no cost estimate for the bootstrapping CKKS engine yet: it runs "
                                        f"{c.get('bootstraps_per_ciphertext')} bootstrap(s) per ciphertext of "
                                        f"{c.get('samples_per_ciphertext')} samples (bench/results/ckks_boot.md)")
        params = {k: c[k] for k in ("poly_modulus_degree", "coeff_mod_bit_sizes", "scale_bits")}
        key = "ckks:" + json.dumps(params, sort_keys=True, separators=(",", ":"))
        figures = ckks.estimate(bundle, measured(key, ["ckks", json.dumps(params)], say))
    return Estimate(scheme=bundle.scheme, server_part_bytes=server_bytes, **figures)
