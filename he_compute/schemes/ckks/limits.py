"""Bounds on everything a plan or payload from a stranger makes a worker allocate, checked before allocating.

A plan is a few hundred bytes of JSON, but the sizes it names (features per
layer, matrix entries, kernel sizes, polynomial degrees) decide how much
memory and time a worker spends.  Every such size is checked against these
limits before any array is built; each refusal is one :class:`FormatError` line.
Workers may raise a limit with ``HEC_CKKS_LIMITS='{"max_features": 131072}'``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace

from ... import settings
from ...errors import ConfigError, FormatError


@dataclass(frozen=True)
class Limits:
    """Upper bounds for one plan and one payload (defaults fit every model the README describes, 50x over)."""

    max_layers: int = 64  # plan layers
    max_dim: int = 4096  # any one entry of a shape
    max_features: int = 65536  # features of any layer's input or output
    max_matrix_entries: int = 1 << 22  # out x in of one linear op's matrix (32 MiB as float64)
    max_weight_entries: int = 1 << 22  # values in one .npy weight section
    max_kernel: int = 16  # conv / pool kernel side, stride and padding
    max_degree: int = 63  # activation polynomial degree
    max_stages: int = 8  # polynomials composed in one composite activation (relu_composite)
    max_depth: int = 40  # multiplicative depth of the whole plan
    max_ciphertexts: int = 65536  # ciphertexts in one payload
    max_samples: int = 1 << 16  # samples in one payload (never above the slot count either)


def current() -> Limits:
    """The limits in force: the defaults, overridden by the JSON object in ``$HEC_CKKS_LIMITS``."""
    raw = settings.get("HEC_CKKS_LIMITS")
    if not raw:
        return Limits()
    try:
        given = json.loads(raw)
        names = {f.name for f in fields(Limits)}
        if not isinstance(given, dict) or not set(given) <= names or not all(isinstance(v, int) and v > 0 for v in given.values()):
            raise ValueError(f"expected an object of positive integers with keys among {sorted(names)}")
        return replace(Limits(), **given)
    except ValueError as exc:
        raise ConfigError(f"HEC_CKKS_LIMITS is invalid ({exc}): fix or unset it") from exc


def check(value: int, limit: int, what: str) -> None:
    """Refuse ``value`` above ``limit`` in one line naming what and the knob."""
    if value > limit:
        raise FormatError(f"{what} is {value}, above the limit of {limit}: refuse this plan, or raise the limit "
                          f"in HEC_CKKS_LIMITS if you trust its author")
