"""The JSON contract between ``hec run`` and workers: what one evaluation job asks for.

A job spec names everything by blob digest, so it is small, plain JSON and
checked field by field before a worker acts on it (a malformed job fails
with a message saying which field is wrong).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..blobs import check_digest
from ..errors import FormatError, HECError

TASK_VERSION = 1


@dataclass(frozen=True)
class Task:
    """Evaluate ``model_id`` on the ciphertext chunks ``inputs`` with the evaluation keys ``keys``.

    Example::

        Task("tfhe", model_id, server_digest, keys_digest, key_id, (chunk_digest,), (1,)).to_json()
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
            raise FormatError(f"malformed job: unsupported version/op {spec.get('v')!r}/{spec.get('op')!r}; "
                              "upgrade the worker or the client so they match")
        try:
            for name in ("scheme", "model_id", "key_id"):
                if not isinstance(spec[name], str) or not spec[name]:
                    raise FormatError(f"malformed job: {name!r} must be a non-empty string")
            for name in ("server", "keys"):
                check_digest(spec[name])
            inputs, counts = spec["inputs"], spec["counts"]
            if not isinstance(inputs, list) or not isinstance(counts, list) or len(inputs) != len(counts) or not inputs:
                raise FormatError("malformed job: 'inputs' and 'counts' must be non-empty lists of equal length")
            for d in inputs:
                check_digest(d)
            if not all(isinstance(c, int) and c > 0 for c in counts):
                raise FormatError("malformed job: 'counts' must be positive integers")
        except KeyError as exc:
            raise FormatError(f"malformed job: missing field {exc.args[0]!r}") from None
        except FormatError:
            raise
        except HECError as exc:
            raise FormatError(f"malformed job: {exc}") from None
        return cls(spec["scheme"], spec["model_id"], spec["server"], spec["keys"], spec["key_id"],
                   tuple(inputs), tuple(counts))
