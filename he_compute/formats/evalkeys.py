"""Evaluation keys: the public, shareable half of a keyset.

An ``evalkeys`` container holds two sections: ``keys`` (the scheme's
serialized evaluation keys) and ``nonce`` (32 random bytes drawn at keygen).
The key id is ``sha256(nonce || keys)``: the nonce makes it unique per keygen
even for circuits that need no evaluation keys at all (a quantized linear
model has an empty server keyset), so results can always be bound to the
secret key that must decrypt them.
"""

from __future__ import annotations

import hashlib
import os
import secrets

from . import container
from .container import Container
from ..errors import FormatError


def key_id(nonce: bytes, evaluation: bytes) -> str:
    """The key id of a keyset: sha256 over its nonce and serialized evaluation keys."""
    h = hashlib.sha256(nonce)
    h.update(evaluation)  # not nonce + evaluation: that would copy gigabytes of bootstrapping keys
    return h.hexdigest()


def new_container(scheme: str, model_id: str, evaluation: bytes) -> Container:
    """Wrap freshly generated evaluation keys with a new nonce."""
    nonce = secrets.token_bytes(32)
    meta = {"model_id": model_id, "key_id": key_id(nonce, evaluation)}
    return Container("evalkeys", scheme, meta, {"keys": evaluation, "nonce": nonce})


def verify(c: Container, source: str = "evaluation keys") -> str:
    """Check an ``evalkeys`` container against its key id; return the key id."""
    if c.kind != "evalkeys":
        raise FormatError(f"{source} is a {c.kind} file, expected evaluation keys")
    try:
        kid = key_id(c.sections["nonce"], c.sections["keys"])
    except KeyError as exc:
        raise FormatError(f"{source} lacks section {exc}") from None
    if kid != c.meta.get("key_id"):
        raise FormatError(f"{source} do not match their key id")
    return kid


def read(path: str | os.PathLike[str]) -> Container:
    """Read and verify an evaluation-key file."""
    c = container.read(path, expect="evalkeys")
    verify(c, str(path))
    return c
