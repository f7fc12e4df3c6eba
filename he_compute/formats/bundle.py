"""The model bundle: one file holding a compiled encrypted-inference model.

A bundle is a :mod:`container <he_compute.container>` of kind ``bundle`` whose
``meta`` is the *manifest* and whose sections are split in two parts:

* ``client/*``: what the client needs to encode, encrypt and decrypt;
* ``server/*``: what a worker needs to evaluate (see :meth:`Bundle.server_part`).

The model id is the sha256 of the canonical JSON ``{"scheme", "sections"}``
where ``sections`` maps every section name to its sha256.  The server part
carries the client sections' digests, so a worker can recompute the model id
from the server part alone and know it evaluates the model a job names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatError, IntegrityError
from . import container
from .canonical import compact
from .container import Container
from .digests import sha256_hex

MANIFEST_VERSION = 1


def compute_model_id(scheme: str, digests: dict[str, str]) -> str:
    """Model id from the scheme and the sha256 of every section (client and server)."""
    return sha256_hex(compact({"scheme": scheme, "sections": digests}).encode())


@dataclass
class Bundle:
    """A compiled model: manifest, client part and server part."""

    manifest: dict[str, Any]
    client: dict[str, bytes] = field(default_factory=dict)
    server: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def create(cls, scheme: str, manifest: dict[str, Any], client: dict[str, bytes], server: dict[str, bytes]) -> Bundle:
        """Assemble a bundle, stamping format version, scheme and model id into the manifest."""
        digests = {f"client/{k}": sha256_hex(v) for k, v in client.items()}
        digests |= {f"server/{k}": sha256_hex(v) for k, v in server.items()}
        full = {"format_version": MANIFEST_VERSION, "scheme": scheme, **manifest}
        full["model_id"] = compute_model_id(scheme, digests)
        return cls(manifest=full, client=dict(client), server=dict(server))

    @property
    def scheme(self) -> str:
        """``"tfhe"`` or ``"ckks"``."""
        return str(self.manifest["scheme"])

    @property
    def model_id(self) -> str:
        """sha256 identifying the compiled model."""
        return str(self.manifest["model_id"])

    def to_container(self) -> Container:
        """The whole bundle as a container of kind ``bundle``."""
        sections = {f"client/{k}": v for k, v in self.client.items()}
        sections |= {f"server/{k}": v for k, v in self.server.items()}
        return Container("bundle", self.scheme, self.manifest, sections)

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the bundle atomically; return the file's sha256."""
        return self.to_container().save(path)

    def server_part(self) -> Container:
        """What a worker receives: the manifest, the server sections and the client digests."""
        meta = dict(self.manifest)
        meta["client_digests"] = {f"client/{k}": sha256_hex(v) for k, v in self.client.items()}
        return Container("server", self.scheme, meta, dict(self.server))

    def client_part(self) -> Container:
        """What the key directory keeps so that decryption needs no bundle."""
        return Container("client", self.scheme, dict(self.manifest), dict(self.client))


def _check_manifest(meta: dict[str, Any], source: str) -> None:
    if meta.get("format_version") != MANIFEST_VERSION:
        raise FormatError(f"{source}: unsupported manifest version {meta.get('format_version')!r}")
    for key in ("scheme", "model_id", "input_shape", "output_shape"):
        if key not in meta:
            raise FormatError(f"{source}: manifest lacks {key!r}; re-create the bundle with hec compile")


def from_container(c: Container, source: str = "bundle") -> Bundle:
    """Validate a parsed ``bundle`` container and return the :class:`Bundle`."""
    if c.kind != "bundle":
        raise FormatError(f"{source} is a {c.kind} file, expected a bundle")
    _check_manifest(c.meta, source)
    if c.meta["scheme"] != c.scheme:
        raise FormatError(f"{source}: manifest scheme does not match the container")
    if compute_model_id(c.scheme, c.section_digests()) != c.meta["model_id"]:
        raise IntegrityError(f"{source}: content does not match its model id; re-create the bundle")
    client = {k[len("client/") :]: v for k, v in c.sections.items() if k.startswith("client/")}
    server = {k[len("server/") :]: v for k, v in c.sections.items() if k.startswith("server/")}
    if len(client) + len(server) != len(c.sections):
        raise FormatError(f"{source}: sections must be named client/* or server/*")
    return Bundle(manifest=dict(c.meta), client=client, server=server)


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read the bundle at ``path`` and check its structure and digests; never unpickles anything."""
    return from_container(container.read(path, expect="bundle"), source=str(path))


def check_server_part(c: Container, source: str = "server part") -> dict[str, bytes]:
    """Check a ``server`` container's structure, digests and model id; return its sections."""
    if c.kind != "server":
        raise FormatError(f"{source} is a {c.kind} file, expected a server part")
    _check_manifest(c.meta, source)
    digests = dict(c.meta.get("client_digests", {}))
    digests |= {f"server/{k}": v for k, v in c.section_digests().items()}
    if compute_model_id(c.scheme, digests) != c.meta["model_id"]:
        raise IntegrityError(f"{source}: content does not match model id {c.meta['model_id'][:12]}")
    return dict(c.sections)
