"""The JSON contract between clients and workers: what a job asks for (:class:`Task`) and what it returns (:class:`Result`).

Both travel through queues that strangers can write to, so both are parsed
field by field, with bounded sizes, before anyone acts on them: a malformed
record raises :class:`~he_compute.errors.FormatError` naming the bad field.
A job names everything by blob digest, so it is small, plain JSON.

Example::

    spec = Task("tfhe", model_id, server_digest, keys_digest, key_id, (chunk,), (1,)).to_json()
    task = Task.from_json(spec)                    # the worker's view, validated
    result = Result.from_json(job.result)          # the client's view of the answer, validated
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatError, LimitExceeded
from .digests import check_digest, is_digest

TASK_VERSION = 1
MAX_CHUNKS_PER_JOB = 4096
"""Ciphertext chunks one job may name; more is refused before anything is fetched."""
MAX_SAMPLES_PER_CHUNK = 1 << 20
"""Samples one chunk may claim (a CKKS ciphertext holds at most 2**15 with the largest ring)."""
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SCHEME = re.compile(r"[a-z0-9]{1,16}")


def _hex64(spec: dict[str, Any], name: str) -> str:
    value = spec.get(name)
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise FormatError(f"malformed job: {name!r} must be 64 lowercase hex digits")
    return value


@dataclass(frozen=True)
class Task:
    """Evaluate ``model_id`` on the ciphertext chunks ``inputs`` with the evaluation keys ``keys``.

    ``server`` and ``keys`` are blob digests of the server part and the evaluation-key container;
    ``key_id`` is the keys' own id (sha256 of nonce and keys, see :mod:`.evalkeys`), which the
    worker recomputes from the container it loads.
    """

    scheme: str
    model_id: str
    server: str
    keys: str
    key_id: str
    inputs: tuple[str, ...]
    counts: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """The job spec submitted to the queue."""
        return {"v": TASK_VERSION, "op": "evaluate", "scheme": self.scheme, "model_id": self.model_id,
                "server": self.server, "keys": self.keys, "key_id": self.key_id,
                "inputs": list(self.inputs), "counts": list(self.counts)}

    @classmethod
    def from_json(cls, spec: Any) -> Task:
        """Validate a job spec; raise :class:`FormatError` naming the bad field."""
        if not isinstance(spec, dict):
            raise FormatError("malformed job: the spec is not a JSON object")
        if spec.get("v") != TASK_VERSION or spec.get("op") != "evaluate":
            raise FormatError(f"malformed job: unsupported version/op {str(spec.get('v'))[:20]!r}/"
                              f"{str(spec.get('op'))[:20]!r}; upgrade the worker or the client so they match")
        scheme = spec.get("scheme")
        if not isinstance(scheme, str) or not _SCHEME.fullmatch(scheme):
            raise FormatError("malformed job: 'scheme' must be a scheme name such as 'tfhe'")
        model_id, key_id = _hex64(spec, "model_id"), _hex64(spec, "key_id")
        for name in ("server", "keys"):
            check_digest(spec.get(name))
        inputs, counts = spec.get("inputs"), spec.get("counts")
        if not isinstance(inputs, list) or not isinstance(counts, list) or len(inputs) != len(counts) or not inputs:
            raise FormatError("malformed job: 'inputs' and 'counts' must be non-empty lists of equal length")
        if len(inputs) > MAX_CHUNKS_PER_JOB:
            raise LimitExceeded(f"malformed job: {len(inputs)} chunks in one job, the limit is {MAX_CHUNKS_PER_JOB}")
        for d in inputs:
            check_digest(d)
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 < c <= MAX_SAMPLES_PER_CHUNK for c in counts):
            raise FormatError(f"malformed job: 'counts' must be integers in 1..{MAX_SAMPLES_PER_CHUNK}")
        return cls(scheme, model_id, spec["server"], spec["keys"], key_id, tuple(inputs), tuple(counts))


@dataclass(frozen=True)
class Result:
    """What a worker returns for a job: output blob digests (one per input chunk), the inputs it
    evaluated, its signed receipt (checked by the client, see :mod:`.receipt`) and free-form stats."""

    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    receipt: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The result stored in the queue."""
        return {"outputs": list(self.outputs), "inputs": list(self.inputs), "receipt": self.receipt,
                "stats": self.stats}

    @classmethod
    def from_json(cls, obj: Any) -> Result:
        """Validate a stored result (written by an untrusted worker); raise :class:`FormatError`."""
        if not isinstance(obj, dict):
            raise FormatError(f"the job's result is a {type(obj).__name__}, not a JSON object")
        digests: dict[str, tuple[str, ...]] = {}
        for name in ("outputs", "inputs"):
            value = obj.get(name)
            if not isinstance(value, list) or not value or len(value) > MAX_CHUNKS_PER_JOB:
                raise FormatError(f"the job's result has no valid {name!r} list")
            if not all(is_digest(d) for d in value):
                raise FormatError(f"the job's result lists {name!r} that are not blob digests")
            digests[name] = tuple(value)
        receipt, stats = obj.get("receipt"), obj.get("stats", {})
        if not isinstance(receipt, dict):
            raise FormatError("the job's result carries no receipt object")
        if not isinstance(stats, dict):
            stats = {}
        return cls(digests["outputs"], digests["inputs"], receipt, stats)
