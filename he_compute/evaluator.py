"""The worker role: evaluate a model on ciphertexts with evaluation keys only.

An :class:`Evaluator` is built from a *server part* (never the whole key
directory), checked with :func:`he_compute.bundle.verify_server_part` before
the scheme backend sees it.  This module must not import
:mod:`he_compute.client` or :mod:`he_compute.keys`' secret side; a test checks it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from . import container, schemes
from . import evalkeys as evalkeys_mod
from .bundle import from_container, verify_server_part
from .container import Container, chunk_name, sha256_hex
from .errors import FormatError, KeyMismatchError


@dataclass(frozen=True)
class LoadedKeys:
    """Deserialized evaluation keys, tagged with their key id and model id."""

    key_id: str
    model_id: str
    handle: Any



def inputs_digest(c: Container) -> str:
    """Digest of a ciphertexts container's payloads, recorded in the result it produces."""
    return sha256_hex("".join(sha256_hex(v) for v in c.sections.values()).encode())


def check_inputs_match(ciphertexts: Container, model_id: str, key_id: str) -> None:
    """Raise unless ``ciphertexts`` were encrypted for ``model_id`` under the keys ``key_id``.

    The worker runs this before evaluating, and the runner before uploading anything.
    """
    if ciphertexts.kind != "ciphertexts":
        raise FormatError(f"expected encrypted inputs, got a {ciphertexts.kind} file")
    meta = ciphertexts.meta
    if meta.get("model_id") != model_id:
        raise KeyMismatchError("the ciphertexts were encrypted for another model than this bundle: "
                               "encrypt with keys made for this bundle")
    if meta.get("key_id") != key_id:
        raise KeyMismatchError("the ciphertexts were encrypted under other keys than these evaluation keys")
    if len(meta.get("chunks", [])) != len(ciphertexts.sections):
        raise FormatError("ciphertexts container lists a different number of chunks than it holds")


class Evaluator:
    """Evaluates one model; building it is costly (circuit compilation), so reuse it."""

    def __init__(self, server_part: Container):
        sections = verify_server_part(server_part)
        self.manifest: dict[str, Any] = dict(server_part.meta)
        self.scheme = server_part.scheme
        self._backend = schemes.get(self.scheme).open_server(self.manifest, sections)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Evaluator:
        """Load from a server-part file or from a whole bundle (only its server part is used)."""
        c = container.read(path, expect=("server", "bundle"))
        if c.kind == "bundle":
            c = from_container(c, str(path)).server_part()
        return cls(c)

    @property
    def model_id(self) -> str:
        """The model this evaluator runs."""
        return str(self.manifest["model_id"])

    def load_keys(self, evalkeys: Container) -> LoadedKeys:
        """Deserialize evaluation keys made for this model."""
        key_id = evalkeys_mod.verify(evalkeys)
        if evalkeys.meta.get("model_id") != self.model_id:
            raise KeyMismatchError("the evaluation keys were made for another model than this bundle")
        return LoadedKeys(key_id, self.model_id, self._backend.load_keys(evalkeys.sections["keys"]))

    def check_inputs(self, ciphertexts: Container, keys: LoadedKeys) -> None:
        """Raise unless the ciphertexts were made for this model and these keys."""
        check_inputs_match(ciphertexts, self.model_id, keys.key_id)

    def evaluate_payload(self, payload: bytes, keys: LoadedKeys) -> bytes:
        """Evaluate one encrypted chunk."""
        return self._backend.evaluate(payload, keys.handle)

    def evaluate(
        self, ciphertexts: Container, keys: LoadedKeys, *, progress: Callable[[int], None] | None = None
    ) -> Container:
        """Evaluate every chunk; return a ``results`` container for the client to decrypt."""
        self.check_inputs(ciphertexts, keys)
        sections = {}
        for i, count in enumerate(ciphertexts.meta["chunks"]):
            sections[chunk_name(i)] = self.evaluate_payload(ciphertexts.sections[chunk_name(i)], keys)
            if progress:
                progress(int(count))
        meta = {k: ciphertexts.meta[k] for k in ("model_id", "key_id", "n_samples", "chunks", "output_shape")}
        meta["inputs_digest"] = inputs_digest(ciphertexts)
        return Container("results", self.scheme, meta, sections)
