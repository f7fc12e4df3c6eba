"""The client's own record of the audit logs it relies on: signed checkpoints, kept where the log is not.

Whoever stores an audit log (the queue's host, a worker with its credentials) can rewrite it whole and
recompute every hash.  So after each run the client appends a *checkpoint* entry (the log's size and
Merkle root, signed with the client's own Ed25519 key, ``STATE/client.key``) and keeps the same size and
root in ``STATE/audit-checkpoints.jsonl`` (0600), filed under the log's location and, at a coordinator, the
tenant (one user may hold several tenants there).  Verifying later checks the log against the newest kept
checkpoint: a log rewritten or cut below it fails, and a forged checkpoint entry fails its signature.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..files import PRIVATE, private_dir
from ..formats.audit import LogHead
from ..formats.signing import SigningKey
from ..transport.audit import AuditLog

KEY_FILE = "client.key"
CHECKPOINTS = "audit-checkpoints.jsonl"


def client_key(state: Path) -> SigningKey:
    """This client's signing key, created in ``state`` (0700/0600) on first use."""
    key, _ = SigningKey.load_or_create(state, KEY_FILE)
    return key


def latest(state: Path, key: str) -> tuple[int, str] | None:
    """The newest checkpoint this client kept of the log filed under ``key`` (:attr:`AuditLog.checkpoint_key`),
    as ``(size, root)``."""
    try:
        lines = (Path(state) / CHECKPOINTS).read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            c = json.loads(line)
            if c.get("log") == key:
                return int(c["size"]), str(c["root"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def verify(log: AuditLog, state: Path) -> tuple[LogHead, tuple[int, str] | None]:
    """Verify ``log`` and check it against the newest checkpoint kept in ``state``; return the head and it."""
    kept = latest(state, log.checkpoint_key)
    return log.verify(checkpoint=kept), kept


def checkpoint(log: AuditLog, state: Path) -> dict[str, Any]:
    """Verify ``log`` against the kept checkpoint, then append a new signed one and keep it too."""
    verify(log, state)
    entry = log.checkpoint(client_key(state))
    body = entry["body"]
    private_dir(state)
    fd = os.open(Path(state) / CHECKPOINTS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE)
    with os.fdopen(fd, "a") as fh:
        fh.write(json.dumps({"log": log.checkpoint_key, "size": body["size"], "root": body["root"]}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return entry
