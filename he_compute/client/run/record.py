"""What a run wrote down so that a crashed or interrupted ``hec run`` can be resumed instead of repeated.

A run keeps one small JSON file, ``STATE/runs/<key>.json`` (0600), next to an embedded queue (or in
``~/.hec`` for a remote one).  The *key* is a digest of what the run computes: the ciphertexts, the model,
the keys, the queue and the verification settings.  The record holds the job groups (their slots and job
specs), the id of every job submitted for each, and, when canaries are on, their expected outputs
(decrypted values the client already knew).  Running the same command again finds the record: finished
jobs are collected, jobs still queued or running are waited for, and only what is missing is submitted.

Example::

    record = RunRecord.load_or_none(state_dir, key)        # None: a fresh run
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...files import PRIVATE, atomic_write, private_dir
from ...formats.canonical import compact
from ...formats.digests import sha256_hex

RECORD_VERSION = 1
STATES = ("running", "interrupted", "failed", "done")


def run_key(**fields: Any) -> str:
    """The digest naming a run by what it computes (ciphertexts, model, keys, queue, settings)."""
    return sha256_hex(compact(fields).encode())[:32]


@dataclass
class RunRecord:
    """The plan and the job ids of one run (see the module docstring)."""

    run_id: str
    key: str
    groups: list[dict[str, Any]]                      # {"slots": [...], "spec": {...}, "jobs": [...]}
    canaries: list[dict[str, Any]] = field(default_factory=list)  # {"count": n, "expected": [[...]]}
    decoys: list[int] = field(default_factory=list)   # groups that get one more run, like a tie-breaker
    state: str = "running"
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    path: Path | None = None

    @staticmethod
    def location(state_dir: Path, key: str) -> Path:
        """Where the record of run ``key`` lives."""
        return Path(state_dir) / "runs" / f"{key}.json"

    @classmethod
    def load_or_none(cls, state_dir: Path, key: str) -> RunRecord | None:
        """The unfinished record of run ``key``, or ``None`` (none, finished, or unreadable: start afresh)."""
        path = cls.location(state_dir, key)
        try:
            raw = json.loads(path.read_text())
            if raw.get("v") != RECORD_VERSION or raw.get("state") == "done":
                return None
            groups = [{"slots": [int(x) for x in g["slots"]], "spec": dict(g["spec"]),
                       "jobs": [str(j) for j in g["jobs"]]} for g in raw["groups"]]
            canaries = [{"count": int(c["count"]), "expected": c["expected"]} for c in raw.get("canaries", [])]
            decoys = [int(i) for i in raw.get("decoys", [])]
            return cls(str(raw["run_id"]), key, groups, canaries, decoys, str(raw["state"]), float(raw["created"]),
                       float(raw["updated"]), path)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def adopted(self) -> dict[int, list[str]]:
        """Job ids already submitted, by group index."""
        return {i: list(g["jobs"]) for i, g in enumerate(self.groups) if g["jobs"]}

    def add_job(self, group: int, job_id: str) -> None:
        """Note a submitted job and save at once (a crash right after must not lose it)."""
        self.groups[group]["jobs"].append(job_id)
        self.save()

    def finish(self, state: str) -> None:
        """Record how the run ended."""
        if state not in STATES:
            raise ValueError(state)
        self.state = state
        self.save()

    def save(self, state_dir: Path | None = None) -> None:
        """Write the record atomically, readable by its owner only (canary answers are the owner's data)."""
        if self.path is None:
            if state_dir is None:
                raise ValueError("a new record needs the state directory to live in")
            private_dir(Path(state_dir) / "runs")
            self.path = self.location(state_dir, self.key)
        self.updated = time.time()
        body = {k: v for k, v in asdict(self).items() if k != "path"}
        atomic_write(self.path, json.dumps({"v": RECORD_VERSION, **body}, default=_plain).encode(), PRIVATE)


def _plain(value: Any) -> Any:
    # numpy arrays and scalars (canary outputs) without importing numpy: JSON needs only lists and numbers
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")
