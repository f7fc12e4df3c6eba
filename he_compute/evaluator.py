"""The one evaluation engine: a model's server part and evaluation keys, applied to ciphertexts.

An :class:`Evaluator` is built from a *server part* (never the whole key
directory), checked twice before the scheme library sees it: its structure and
model id (:func:`he_compute.formats.bundle.check_server_part`) and its safety
(the scheme's ``check_server_part``).  Workers, ``hec eval`` and in-process
evaluation all use it.  It never imports the client side of a scheme; an
import contract in the tests checks it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from . import schemes
from .errors import FormatError, KeyMismatchError
from .formats import container
from .formats import evalkeys as evalkeys_format
from .formats.bundle import check_server_part, from_container
from .formats.ciphertexts import check_inputs_match, chunk_name, results_container
from .formats.container import Container
from .schemes.base import ServerBackend


@dataclass(frozen=True)
class LoadedKeys:
    """Deserialized evaluation keys, tagged with the key id recomputed from the container they came from."""

    key_id: str
    model_id: str
    handle: Any


class Evaluator:
    """Evaluates one model; building it is costly (circuit compilation), so reuse it."""

    def __init__(self, server_part: Container):
        sections = check_server_part(server_part)
        scheme = schemes.server(server_part.scheme)
        scheme.check_server_part(server_part.meta, sections)
        self.manifest: dict[str, Any] = dict(server_part.meta)
        self.scheme = server_part.scheme
        self._backend: ServerBackend = scheme.open_server(self.manifest, sections)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Evaluator:
        """Load from a server-part file or from a whole bundle (only its server part is used)."""
        c = container.read(path, expect=("server", "bundle"))
        if c.kind == "bundle":
            c = from_container(c, str(path)).server_part()
        return cls(c)

    @property
    def model_id(self) -> str:
        """The model this evaluator runs, as recomputed from its server part's digests."""
        return str(self.manifest["model_id"])

    def load_keys(self, evalkeys: Container) -> LoadedKeys:
        """Deserialize evaluation keys made for this model; the key id is recomputed, never taken on trust."""
        key_id = evalkeys_format.verify(evalkeys)
        if evalkeys.meta.get("model_id") != self.model_id:
            raise KeyMismatchError("the evaluation keys were made for another model than this bundle")
        return LoadedKeys(key_id, self.model_id, self._backend.load_keys(evalkeys.sections["keys"]))

    def evaluate_payload(self, payload: bytes, keys: LoadedKeys) -> bytes:
        """Evaluate one encrypted chunk."""
        if keys.model_id != self.model_id:
            raise KeyMismatchError("these evaluation keys were loaded for another model")
        return self._backend.evaluate(payload, keys.handle)

    def evaluate(
        self, ciphertexts: Container, keys: LoadedKeys, *, progress: Callable[[int], None] | None = None
    ) -> Container:
        """Evaluate every chunk; return a ``results`` container for the client to decrypt."""
        check_inputs_match(ciphertexts, self.model_id, keys.key_id)
        if ciphertexts.scheme != self.scheme:
            raise FormatError(f"these are {ciphertexts.scheme} ciphertexts, this model is {self.scheme}")
        sections = {}
        for i, count in enumerate(ciphertexts.meta["chunks"]):
            sections[chunk_name(i)] = self.evaluate_payload(ciphertexts.sections[chunk_name(i)], keys)
            if progress:
                progress(int(count))
        return results_container(ciphertexts, sections)
