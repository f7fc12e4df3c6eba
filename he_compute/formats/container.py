"""The one binary file format behind every he_compute artefact.

Bundles, server parts, evaluation keys, encrypted inputs and encrypted results
are all *containers*: a small JSON header followed by named binary sections,
closed by a sha256 of everything before it.  Nothing in a container is ever
unpickled or executed; sections are opaque bytes that a scheme backend parses
with its own non-executable deserializer.

Layout (all integers big-endian)::

    magic        8 bytes   b"\\x89HEC\\r\\n\\x1a\\n"
    version      u16       FORMAT_VERSION
    header_len   u32
    header       JSON, UTF-8: {"kind", "scheme", "meta", "sections": [{"name", "size", "sha256"}]}
    sections     the section payloads, concatenated in header order
    trailer      32 bytes  sha256 of every byte above

The PNG-style magic catches text-mode mangling; the trailer catches truncation
and bit rot; per-section digests let a reader name the damaged part.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import FormatError, IntegrityError
from ..files import PUBLIC, atomic_write
from .canonical import compact
from .digests import sha256_hex

MAGIC = b"\x89HEC\r\n\x1a\n"
FORMAT_VERSION = 1
KINDS = ("bundle", "server", "client", "secretkeys", "evalkeys", "ciphertexts", "results")
_PREFIX = struct.Struct(">8sHI")
_MAX_HEADER = 16 * 1024 * 1024


@dataclass
class Container:
    """A parsed container: ``kind``, ``scheme``, free-form JSON ``meta`` and named sections."""

    kind: str
    scheme: str
    meta: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, bytes] = field(default_factory=dict)
    # Digests already computed for a section's exact bytes object (by parse, which verified them, or by an
    # earlier call): a 50 MB ciphertexts file is hashed once per process, not once per use.
    _known: dict[str, tuple[bytes, str]] = field(default_factory=dict, repr=False, compare=False)

    def section_digests(self) -> dict[str, str]:
        """Map each section name to the sha256 of its payload."""
        out = {}
        for name, data in self.sections.items():
            known = self._known.get(name)
            if known is None or known[0] is not data:
                known = self._known[name] = (data, sha256_hex(data))
            out[name] = known[1]
        return out

    def _parts(self) -> list[bytes]:
        if self.kind not in KINDS:
            raise FormatError(f"unknown container kind {self.kind!r}")
        digests = self.section_digests()
        header = {
            "kind": self.kind,
            "scheme": self.scheme,
            "meta": self.meta,
            "sections": [{"name": name, "size": len(data), "sha256": digests[name]}
                         for name, data in self.sections.items()],
        }
        head = compact(header).encode()
        return [_PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head, *self.sections.values()]

    def to_bytes(self) -> bytes:
        """Serialize to the on-disk layout described in the module docstring."""
        body = b"".join(self._parts())
        return body + hashlib.sha256(body).digest()

    def save(self, path: str | os.PathLike[str], mode: int = PUBLIC) -> str:
        """Write atomically to ``path`` (``mode`` narrowed by the umask); return the file's sha256.

        The parts are written one after the other (no copy of the whole file in memory) and hashed once:
        the trailer is the digest of the body, and the file's digest continues the same hash over it.
        """
        parts = self._parts()
        h = hashlib.sha256()
        for part in parts:
            h.update(part)
        trailer = h.digest()
        h.update(trailer)
        atomic_write(path, [*parts, trailer], mode)
        return h.hexdigest()


def parse(data: bytes, *, expect: str | tuple[str, ...] | None = None, source: str = "input") -> Container:
    """Parse and fully verify a container; ``expect`` restricts the accepted kinds.

    Raises :class:`FormatError` (or :class:`IntegrityError`) with a message that
    names ``source``.
    """
    head_len = _head_length(data, source, trailer=32)
    body, trailer = memoryview(data)[:-32], data[-32:]  # a view: each section is copied once, the body never
    if hashlib.sha256(body).digest() != trailer:
        raise IntegrityError(f"{source} is corrupt or truncated (checksum mismatch): fetch or re-create it")
    if head_len > _MAX_HEADER or _PREFIX.size + head_len > len(body):
        raise FormatError(f"{source} has an invalid header length")
    try:
        header = json.loads(bytes(body[_PREFIX.size : _PREFIX.size + head_len]))
        kind, scheme, meta, entries = header["kind"], header["scheme"], header["meta"], header["sections"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{source} has an unreadable header: {exc}") from exc
    _check_kind(kind, expect, source)
    sections: dict[str, bytes] = {}
    known: dict[str, tuple[bytes, str]] = {}
    offset = _PREFIX.size + head_len
    for entry in entries:
        name, size, digest = entry["name"], int(entry["size"]), entry["sha256"]
        chunk = bytes(body[offset : offset + size])
        if len(chunk) != size or sha256_hex(chunk) != digest:
            raise IntegrityError(f"{source}: section {name!r} does not match its sha256")
        sections[name] = chunk
        known[name] = (chunk, digest)
        offset += size
    if offset != len(body):
        raise FormatError(f"{source} has {len(body) - offset} unexpected trailing bytes")
    return Container(kind=kind, scheme=scheme, meta=meta, sections=sections, _known=known)


def read_meta(path: str | os.PathLike[str], *, expect: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """The header's ``meta`` alone, read without the sections and **not verified**: enough to find which keys a
    large file needs before :func:`read` checks all of it."""
    p = Path(path)
    with _reading(p), open(p, "rb") as f:
        head_len = _head_length(f.read(_PREFIX.size), str(p))
        head = f.read(min(head_len, _MAX_HEADER))
    try:
        header = json.loads(head)
        kind, meta = header["kind"], header["meta"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{p} has an unreadable header: {exc}") from exc
    _check_kind(kind, expect, str(p))
    if not isinstance(meta, dict):
        raise FormatError(f"{p} has an unreadable header: meta is not an object")
    return meta


def read(path: str | os.PathLike[str], *, expect: str | tuple[str, ...] | None = None) -> Container:
    """Read and verify the container at ``path``."""
    p = Path(path)
    with _reading(p):
        data = p.read_bytes()
    return parse(data, expect=expect, source=str(p))


def _head_length(data: bytes, source: str, *, trailer: int = 0) -> int:
    """Check the magic and the format version at the start of ``data``; return the header's length."""
    if len(data) < _PREFIX.size + trailer or data[:8] != MAGIC:
        raise FormatError(f"{source} is not a he_compute file (bad magic): pass a file written by hec")
    _, version, head_len = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise FormatError(
            f"{source} uses container format v{version}, this he_compute reads v{FORMAT_VERSION}: "
            "re-create it with this version"
        )
    return int(head_len)


def _check_kind(kind: str, expect: str | tuple[str, ...] | None, source: str) -> None:
    wanted = (expect,) if isinstance(expect, str) else expect
    if wanted and kind not in wanted:
        raise FormatError(f"{source} is a {kind} file, expected {' or '.join(wanted)}")


@contextmanager
def _reading(p: Path) -> Iterator[None]:
    """A file that cannot be read, as one line that names it."""
    try:
        yield
    except FileNotFoundError:
        raise FormatError(f"{p} does not exist") from None
    except IsADirectoryError:
        raise FormatError(f"{p} is a directory, expected a he_compute file") from None
    except OSError as exc:
        raise FormatError(f"cannot read {p}: {exc.strerror}") from exc
