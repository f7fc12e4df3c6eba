"""TFHE estimates: time from Concrete's circuit complexity, sizes from the circuit's key and value descriptions.

* Time per sample = overhead + complexity × (seconds per complexity unit measured on this machine).
* Evaluation-key bytes are computed from ``client.specs.json``: each bootstrap key holds
  ``input_lwe_dimension × level × (glwe_dimension + 1)`` GLWE ciphertexts of ``polynomial_size`` 64-bit
  words (one polynomial each when seeded: Concrete keeps only the body and regenerates the mask from a
  seed), each keyswitch key ``input_lwe_dimension × level`` LWE ciphertexts (one word each when seeded,
  ``output_lwe_dimension + 1`` otherwise).
* Ciphertext bytes per sample: the concrete shape of the circuit's input (and output) times 8 bytes,
  plus the serialization's framing.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

FRAMING_BYTES = 270
"""Bytes Concrete's value serialization adds around the ciphertext words (measured: 264-272)."""


def _seeded(entry: dict[str, Any]) -> bool:
    return entry.get("compression") == "seed"


def evaluation_key_bytes(specs: dict[str, Any]) -> int:
    """Bytes of the serialized evaluation keys, from the circuit's key description."""
    total = 0
    for bsk in specs["keyset"].get("lweBootstrapKeys", []):
        p = bsk["params"]
        glwe = (p["glweDimension"] + 1) * p["polynomialSize"] * (1 if _seeded(bsk) else p["glweDimension"] + 1)
        total += p["inputLweDimension"] * p["levelCount"] * glwe * 8
    for ksk in specs["keyset"].get("lweKeyswitchKeys", []):
        p = ksk["params"]
        total += p["inputLweDimension"] * p["levelCount"] * (1 if _seeded(ksk) else p["outputLweDimension"] + 1) * 8
    for pksk in specs["keyset"].get("packingKeyswitchKeys", []):
        p = pksk["params"]
        total += p["inputLweDimension"] * p["levelCount"] * (p["glweDimension"] + 1) * p["polynomialSize"] * 8
    return int(total)


def value_bytes(specs: dict[str, Any], side: str) -> int:
    """Serialized bytes of one sample's encrypted input (``inputs``) or result (``outputs``)."""
    (circuit,) = specs["circuits"]
    total = 0
    for value in circuit[side]:
        shape = value["typeInfo"]["lweCiphertext"]["concreteShape"]["dimensions"]
        total += int(np.prod(shape)) * 8 + FRAMING_BYTES
    return total


def statistics(bundle: Any, say: Any = None) -> dict[str, float]:
    """The circuit's cost figures: from the manifest, or by compiling the server part (imported bundles)."""
    recorded = bundle.manifest.get("circuit")
    if isinstance(recorded, dict) and "complexity" in recorded:
        return {k: float(v) for k, v in recorded.items()}
    if say:
        say("this bundle records no circuit statistics: compiling its circuit to read them ...")
    from ...schemes.tfhe.server import TFHEServer

    return TFHEServer(bundle.server).statistics()


def estimate(bundle: Any, costs: dict[str, float], say: Any = None) -> dict[str, Any]:
    """The figures of :class:`~he_compute.client.estimate.Estimate` for a TFHE bundle."""
    specs = json.loads(bundle.client["client.specs.json"])
    stats = statistics(bundle, say)
    seconds = costs["overhead_s"] + stats["complexity"] * costs["s_per_complexity"]
    return {
        "unit": "sample", "samples_per_unit": 1, "seconds_per_unit": seconds,
        "evaluation_key_bytes": evaluation_key_bytes(specs),
        "input_bytes_per_unit": value_bytes(specs, "inputs"), "output_bytes_per_unit": value_bytes(specs, "outputs"),
        "expected_error": None, "p_error": bundle.manifest.get("tfhe", {}).get("p_error"),
        "basis": f"Concrete complexity {stats['complexity']:.3g} ({int(stats['pbs'])} bootstraps) x "
                 f"{costs['s_per_complexity']:.3g} s/unit measured here on one core",
    }
