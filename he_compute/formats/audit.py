"""The audit log's entries and hashes: a transparency log (RFC 6962 / 9162), pure data, no storage.

Entry ``i`` is one JSON line::

    {"v": 1, "i": i, "t": <unix ms>, "kind": "submit" | "receipt", "job": <job id>, "body": {...},
     "leaf": sha256(0x00 || canonical({i, t, kind, job, body})),
     "chain": sha256(chain[i-1] || leaf)}            # chain[-1] = 32 zero bytes

Three things make it tamper-evident:

* the **leaf hash** binds an entry's content and its index: an edit shows as a leaf mismatch;
* the **running chain hash** binds each entry to all before it: a deletion, an insertion or a
  reordering breaks the chain at the first entry that moved;
* the **head** ``(size, chain)`` is rewritten after every append, and the **Merkle root** over all
  leaves is a checkpoint a client can keep elsewhere: a truncated tail shows against the head, and a
  log rewritten wholesale (every hash recomputed) shows against any root kept outside it.
  :func:`inclusion_proof` and :func:`verify_inclusion` prove that one entry is in a log of a given root.

:func:`verify_lines` raises :class:`~he_compute.errors.AuditError` naming the first bad index.
Where the lines are kept is :mod:`he_compute.transport.audit`'s business.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..errors import AuditError, FormatError
from .canonical import canonical

AUDIT_VERSION = 1
KINDS = ("submit", "receipt", "checkpoint")
_CHECKPOINT_DOMAIN = b"he_compute audit checkpoint v1\x00"
_ZERO = bytes(32)


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf_hash(entry: dict[str, Any]) -> str:
    """The leaf hash of an entry's content (hex), as RFC 6962 hashes a leaf: sha256(0x00 || data)."""
    content = {k: entry.get(k) for k in ("i", "t", "kind", "job", "body")}
    return _h(b"\x00" + canonical(content)).hex()


def _node(left: bytes, right: bytes) -> bytes:
    return _h(b"\x01" + left + right)


def _split(n: int) -> int:
    """The largest power of two below ``n`` (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash of ``leaves`` (each already a leaf hash)."""
    if not leaves:
        return _h(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return _path(m, leaves[:k]) + [merkle_root(leaves[k:])]
    return _path(m - k, leaves[k:]) + [merkle_root(leaves[:k])]


def verify_inclusion(leaf: str, index: int, size: int, proof: list[str], root: str) -> None:
    """Raise :class:`AuditError` unless ``proof`` shows leaf ``index`` is in the tree of ``size`` leaves with ``root``.

    The verification algorithm of RFC 9162, section 2.1.3.2.
    """
    if not 0 <= index < size:
        raise AuditError(f"entry {index} cannot be in a log of {size} entries", index)
    fn, sn, r = index, size - 1, bytes.fromhex(leaf)
    for p_hex in proof:
        p = bytes.fromhex(p_hex)
        if sn == 0:
            raise AuditError(f"inclusion proof for entry {index} is too long", index)
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r.hex() != root:
        raise AuditError(f"entry {index} is not in the log with root {root[:16]}", index)


@dataclass(frozen=True)
class LogHead:
    """A checkpoint of the log: its ``size``, last ``chain`` hash and Merkle ``root`` (hex)."""

    size: int
    chain: str
    root: str
    torn_bytes: int = 0   # bytes of a torn last line after the entries (a crash during an append)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON view."""
        out: dict[str, Any] = {"size": self.size, "chain": self.chain, "root": self.root}
        if self.torn_bytes:
            out["torn_bytes"] = self.torn_bytes
        return out


def empty_head() -> str:
    """The head record of a log with no entries (written before the first entry: see ``JsonlStore``)."""
    return canonical({"size": 0, "chain": _ZERO.hex()}).decode()


def next_entry(last: str | None, kind: str, job_id: str, body: dict[str, Any], t: int,
               where: str = "the audit log") -> tuple[dict[str, Any], str]:
    """The entry that follows the line ``last`` (``None`` for the first), and the new head record."""
    if kind not in KINDS:
        raise FormatError(f"audit entry kind must be one of {KINDS}")
    if last is None:
        i, prev = 0, _ZERO
    else:
        try:
            previous = json.loads(last)
            i, prev = int(previous["i"]) + 1, bytes.fromhex(previous["chain"])
        except (ValueError, KeyError, TypeError):
            raise AuditError(f"the last entry of {where} is unreadable: run hec audit verify") from None
    entry: dict[str, Any] = {"v": AUDIT_VERSION, "i": i, "t": t, "kind": kind, "job": job_id, "body": body}
    entry["leaf"] = leaf_hash(entry)
    entry["chain"] = _h(prev + bytes.fromhex(entry["leaf"])).hex()
    return entry, canonical({"size": i + 1, "chain": entry["chain"]}).decode()


def parse_lines(lines: list[str]) -> list[dict[str, Any]]:
    """Every entry, parsed but not verified."""
    out = []
    for n, line in enumerate(lines):
        try:
            e = json.loads(line)
            if not isinstance(e, dict):
                raise ValueError
        except ValueError:
            raise AuditError(f"audit entry {n} is not valid JSON (rewritten or damaged)", n) from None
        out.append(e)
    return out


def verify_lines(lines: list[str], head: str | None, *,
                 checkpoint: LogHead | tuple[int, str] | None = None) -> LogHead:
    """Check every entry, the chain, the head record and ``checkpoint`` (a ``(size, root)`` kept elsewhere).

    Returns the current head; raises :class:`AuditError` at the first bad index.
    """
    parsed = parse_lines(lines)
    indices = [e.get("i") for e in parsed]
    prev, leaves = _ZERO, list[bytes]()
    for n, e in enumerate(parsed):
        if e.get("i") != n:
            if n in indices[n + 1:]:
                raise AuditError(f"audit entry {n} is out of place (found entry {e.get('i')!r} there): "
                                 "the log was reordered", n)
            raise AuditError(f"audit entry {n} is missing (found entry {e.get('i')!r} in its place): "
                             "entries were deleted", n)
        if e.get("v") != AUDIT_VERSION or e.get("kind") not in KINDS:
            raise AuditError(f"audit entry {n} has an unknown version or kind (rewritten)", n)
        try:
            leaf = leaf_hash(e)
        except (ValueError, FormatError):
            raise AuditError(f"audit entry {n} holds values no honest entry holds (rewritten)", n) from None
        if e.get("leaf") != leaf:
            raise AuditError(f"audit entry {n} was rewritten: its content no longer matches its leaf hash", n)
        if e["kind"] == "checkpoint":
            verify_checkpoint(e.get("body"), n, leaves)
        chain = _h(prev + bytes.fromhex(leaf)).hex()
        if e.get("chain") != chain:
            raise AuditError(f"audit entry {n} does not chain to entry {n - 1}: entries before it were "
                             "rewritten, inserted or reordered", n)
        prev = bytes.fromhex(chain)
        leaves.append(bytes.fromhex(leaf))
    _check_head(parsed, head)
    result = LogHead(len(parsed), prev.hex(), merkle_root(leaves).hex())
    if checkpoint is not None:
        size, root = (checkpoint.size, checkpoint.root) if isinstance(checkpoint, LogHead) else checkpoint
        if size > len(leaves):
            raise AuditError(f"the log has {len(leaves)} entries but the checkpoint has {size}: entries from "
                             f"{len(leaves)} on were deleted", len(leaves))
        if merkle_root(leaves[:size]).hex() != root:
            raise AuditError(f"the first {size} entries do not match the checkpoint root {root[:16]}: "
                             "the log was rewritten", None)
    return result


def _check_head(parsed: list[dict[str, Any]], raw: str | None) -> None:
    if raw is None:
        if parsed:
            raise AuditError("the log's head record is missing: it was deleted or replaced", None)
        return
    try:
        head = json.loads(raw)
        size, chain = int(head["size"]), str(head["chain"])
    except (ValueError, KeyError, TypeError):
        raise AuditError("the log's head record is unreadable (rewritten or damaged)", None) from None
    if size > len(parsed):
        raise AuditError(f"the log has {len(parsed)} entries but its head records {size}: entries from "
                         f"{len(parsed)} on were deleted", len(parsed))
    if size and parsed[size - 1].get("chain") != chain:
        raise AuditError(f"audit entry {size - 1} does not match the log's head: the log was rewritten", size - 1)


def inclusion_proof(leaves: list[bytes], index: int) -> list[str]:
    """Hashes proving leaf ``index`` is in the tree of ``leaves`` (for :func:`verify_inclusion`)."""
    if not 0 <= index < len(leaves):
        raise AuditError(f"the log has no entry {index}", index)
    return [p.hex() for p in _path(index, leaves)]


def _checkpoint_message(size: int, root: str) -> bytes:
    return _CHECKPOINT_DOMAIN + canonical({"size": size, "root": root})


def checkpoint_body(size: int, root: str, signer: Any) -> dict[str, Any]:
    """A checkpoint entry's body: the log's first ``size`` entries have Merkle root ``root``, signed by the
    client (``signer`` has ``public_raw`` and ``sign``), so whoever stores the log cannot rewrite it unnoticed."""
    import base64

    return {"size": size, "root": root, "public_key": base64.b64encode(signer.public_raw).decode(),
            "sig": base64.b64encode(signer.sign(_checkpoint_message(size, root))).decode()}


def verify_checkpoint(body: Any, index: int, leaves: list[bytes]) -> str:
    """Check a checkpoint entry at ``index``: it covers exactly the entries before it, with their root, and
    its signature is good; return the signer's key id.  Raise :class:`AuditError` otherwise."""
    import base64
    import binascii

    from .signing import fingerprint, verify_signature

    try:
        size, root = int(body["size"]), str(body["root"])
        public = base64.b64decode(body["public_key"], validate=True)
        sig = base64.b64decode(body["sig"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise AuditError(f"audit entry {index} is a malformed checkpoint", index) from None
    if size != index or merkle_root(leaves[:size]).hex() != root:
        raise AuditError(f"audit entry {index} is a checkpoint of other entries than those before it: "
                         "the log was rewritten", index)
    try:
        verify_signature(public, sig, _checkpoint_message(size, root))
    except Exception:  # noqa: BLE001 - a bad key or signature: the checkpoint was forged
        raise AuditError(f"audit entry {index} is a checkpoint with a bad signature: it was forged", index) from None
    return fingerprint(public)
