"""Worker side of the TFHE scheme: compile the checked MLIR and run it on ciphertexts.

This module never sees a secret key: it gets the server sections (already
checked by :func:`~.artifacts.check_server_sections`), serialized evaluation
keys and serialized ciphertexts.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import EvaluationError, FormatError, KeyMismatchError
from .artifacts import PINNED_OPTIONS, check_result_size, check_server_sections


def _configuration(plain: dict[str, Any]) -> Any:
    from concrete.fhe.compilation import configuration as cfg

    values = dict(plain)
    values.update(PINNED_OPTIONS)
    if "rounding_exactness" in values:
        values["rounding_exactness"] = cfg.Exactness(values["rounding_exactness"])
    if "security_level" in values:
        values["security_level"] = cfg.SecurityLevel(values["security_level"])
    if isinstance(values.get("approximate_rounding_config"), dict):
        values["approximate_rounding_config"] = cfg.ApproximateRoundingConfig(**values["approximate_rounding_config"])
    try:
        return cfg.Configuration().fork(**values)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"configuration.json is not a valid Concrete configuration: {exc}") from exc


class TFHEServer:
    """Evaluates one compiled Concrete circuit; build it once per bundle and reuse it."""

    def __init__(self, sections: dict[str, bytes], *, simulated: bool = False):
        check_server_sections(sections)
        from concrete import fhe
        from concrete.fhe.compilation.composition import CompositionClause, CompositionRule

        rules = json.loads(sections["composition_rules.json"]) or None
        if rules:
            rules = [CompositionRule(CompositionClause(*a), CompositionClause(*b)) for a, b in rules]
        specs = fhe.ClientSpecs.deserialize(sections["client.specs.json"])
        self._function = str(json.loads(sections["client.specs.json"])["circuits"][0].get("name", "main"))
        self._fhe = fhe
        self._server = fhe.Server.create(
            sections["circuit.mlir"].decode(),
            _configuration(json.loads(sections["configuration.json"])),
            simulated,  # simulation (keyless, in the clear) serves the client's `hec simulate` only
            composition_rules=rules,
            tfhers_specs=specs.tfhers_specs,
        )

    def run_simulated(self, value: Any) -> Any:
        """Run a simulated circuit (``simulated=True``) on a value from ``Client.simulate_encrypt``."""
        return self._server.run(value)

    def statistics(self) -> dict[str, float]:
        """Concrete's cost figures for this circuit (complexity, bootstraps), for pre-flight estimates."""
        from .stats import circuit_statistics

        return circuit_statistics(self._server, self._function)

    def load_keys(self, evaluation: bytes) -> Any:
        """Deserialize evaluation keys once; pass the result to :meth:`evaluate`."""
        try:
            return self._fhe.EvaluationKeys.deserialize(evaluation)
        except Exception as exc:  # Concrete raises bare RuntimeError on bad bytes
            raise FormatError(f"evaluation keys are unreadable: {exc}") from exc

    def evaluate(self, payload: bytes, keys: Any) -> bytes:
        """Run the circuit on one serialized encrypted sample."""
        try:
            value = self._fhe.Value.deserialize(payload)
        except Exception as exc:
            raise FormatError(f"ciphertext is unreadable: {exc}") from exc
        try:
            result = self._server.run(value, evaluation_keys=keys)
        except RuntimeError as exc:  # what Concrete raises when keys or ciphertext do not fit the circuit
            raise KeyMismatchError(f"evaluation failed (keys or ciphertext do not fit this circuit): {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise EvaluationError(f"Concrete could not evaluate this ciphertext: {exc}") from exc
        return result.serialize()


class TFHEServerScheme:
    """The TFHE scheme as a worker sees it (:class:`~he_compute.schemes.base.ServerScheme`)."""

    name = "tfhe"

    def check_server_part(self, manifest: dict[str, Any], sections: dict[str, bytes]) -> None:
        """Refuse server sections that Concrete could not load without running foreign code."""
        check_server_sections(sections)

    def open_server(self, manifest: dict[str, Any], sections: dict[str, bytes]) -> TFHEServer:
        """Compile the circuit (costly: workers cache the result by server-part digest)."""
        return TFHEServer(sections)

    def check_result(self, manifest: dict[str, Any], sections: dict[str, bytes], payload: bytes,
                     n_samples: int) -> None:
        """Sizes only: a result is one sample's output ciphertext of this circuit."""
        check_result_size(payload, sections["client.specs.json"], n_samples)


SCHEME = TFHEServerScheme()
