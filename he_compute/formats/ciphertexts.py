"""Encrypted inputs and results: how a ``ciphertexts`` container and its ``results`` container relate.

A ``ciphertexts`` container holds one section per chunk (``chunk/000000``...)
and its meta names the model, the keys, the samples per chunk and the shapes.
The ``results`` container made from it keeps those fields and adds
``inputs_digest``, so a result can always be traced to what it was computed
from.  The in-process evaluator and the queue runner build results with the
same function here.
"""

from __future__ import annotations

from ..errors import FormatError, KeyMismatchError
from .container import Container
from .digests import sha256_hex

_CARRIED = ("model_id", "key_id", "n_samples", "chunks", "output_shape")


def chunk_name(i: int) -> str:
    """Section name of the ``i``-th chunk of samples in a ciphertexts or results container."""
    return f"chunk/{i:06d}"


def inputs_digest(c: Container) -> str:
    """Digest of a ciphertexts container's payloads, recorded in the result it produces."""
    return sha256_hex("".join(c.section_digests().values()).encode())


def check_inputs_match(ciphertexts: Container, model_id: str, key_id: str) -> None:
    """Raise unless ``ciphertexts`` were encrypted for ``model_id`` under the keys ``key_id``.

    The evaluator runs this before evaluating, and the runner before uploading anything.
    """
    if ciphertexts.kind != "ciphertexts":
        raise FormatError(f"expected encrypted inputs, got a {ciphertexts.kind} file")
    meta = ciphertexts.meta
    if meta.get("model_id") != model_id:
        raise KeyMismatchError("the ciphertexts were encrypted for another model than this bundle: "
                               "encrypt with keys made for this bundle")
    if meta.get("key_id") != key_id:
        raise KeyMismatchError("the ciphertexts were encrypted under other keys than these evaluation keys")
    chunks = meta.get("chunks", [])
    if not isinstance(chunks, list) or len(chunks) != len(ciphertexts.sections):
        raise FormatError("ciphertexts container lists a different number of chunks than it holds")
    if sorted(ciphertexts.sections) != [chunk_name(i) for i in range(len(chunks))]:
        raise FormatError("ciphertexts container sections are not chunk/000000 ... in order")


def results_container(ciphertexts: Container, sections: dict[str, bytes]) -> Container:
    """The ``results`` container of ``ciphertexts`` evaluated into ``sections`` (one per chunk, same names)."""
    meta = {k: ciphertexts.meta[k] for k in _CARRIED}
    meta["inputs_digest"] = inputs_digest(ciphertexts)
    return Container("results", ciphertexts.scheme, meta, dict(sections))
