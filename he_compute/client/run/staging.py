"""Getting a run ready: what goes to the blob store, in which order, and how chunks become job groups.

Canaries must be indistinguishable from real chunks, to a worker that watches the blob store (upload
order, modification times, which digests are new) and remembers earlier runs:

* every chunk of a run, canaries included, is uploaded in **one shuffled batch**, after the public parts;
* canaries have the **sizes of real chunks** (their sample counts are drawn from the real ones);
* **nothing repeats in a way that singles canaries out**: a scheme that could re-randomize a ciphertext
  with public material would get every chunk re-randomized for the run (all digests new); neither can
  today (TFHE has no public-key encryption, and CKKS inputs are encrypted with the secret key, no public
  key being made), so the canaries made for a given input file are kept and used again with it, and a
  re-run repeats every digest alike.

Groups (``per_job`` chunks each) are drawn from one shuffle of real and canary slots; a random sample of
groups is marked as *decoys* (see :mod:`.supervisor`).  Everything is written to the run's record.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ... import schemes
from ...errors import UnsupportedModelError
from ...files import PRIVATE, atomic_write, private_dir
from ...formats.ciphertexts import chunk_name
from ...formats.container import Container
from ...formats.digests import digest_of
from .canaries import Canary, KnownAnswers, canary_count, shuffle_in
from .connection import Connection
from .record import RunRecord

_RNG = secrets.SystemRandom()
MakeSpec = Callable[[list[str], list[int]], dict[str, Any]]


@dataclass
class Uploads:
    """Digests of what a run put in the store."""

    server: str
    keys: str
    inputs: list[str]
    canaries: list[tuple[str, Canary]]


UPLOAD_THREADS = 2
"""Chunks uploaded at once: hashing, writing and fsync (or a network round trip) release the GIL."""


def _put(conn: Connection, data: bytes, name: str, count: Callable[[str, bool], None],
         digest: str | None = None) -> str:
    digest, fresh = _store(conn, data, digest)
    count(name, fresh)
    return digest


def _store(conn: Connection, data: bytes, digest: str | None = None) -> tuple[str, bool]:
    """Put ``data`` unless the store has it; ``digest`` is ours to give only where this process computed it."""
    digest = digest or digest_of(data)
    fresh = not conn.store.exists(digest)
    if fresh:
        conn.store.put(data)
    return digest, fresh


def upload(conn: Connection, ciphertexts: Container, server_part: Container, evalkeys: Container,
           canaries: list[Canary], count: Callable[[str, bool], None], *, rerandomize: bool) -> Uploads:
    """Put the public parts, then every chunk (real and canary) in one shuffled batch."""
    server = _put(conn, server_part.to_bytes(), "server", count)
    keys = _put(conn, evalkeys.to_bytes(), "keys", count)
    names = [chunk_name(i) for i in range(len(ciphertexts.sections))]
    real = [ciphertexts.sections[n] for n in names]
    known: list[str | None] = [None] * len(real)
    if rerandomize:
        scheme = schemes.client(ciphertexts.scheme)
        real = [scheme.rerandomize(evalkeys.sections["keys"], p) for p in real]
    elif real:
        known = ["sha256:" + ciphertexts.section_digests()[n] for n in names]  # verified when the file was read
    batch = ([("inputs", i, p, known[i]) for i, p in enumerate(real)]
             + [("canaries", j, c.payload, None) for j, c in enumerate(canaries)])
    _RNG.shuffle(batch)
    inputs: list[str] = [""] * len(real)
    canary_digests: list[str] = [""] * len(canaries)
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS, thread_name_prefix="hec-upload") as pool:
        stored = list(pool.map(lambda item: _store(conn, item[2], item[3]), batch))
    for (name, i, _, _), (digest, fresh) in zip(batch, stored):
        count(name, fresh)
        if name == "inputs":
            inputs[i] = digest
        else:
            canary_digests[i] = digest
    return Uploads(server, keys, inputs, list(zip(canary_digests, canaries)))


def can_rerandomize(scheme: str, evalkeys: Container, sample: bytes) -> bool:
    """Whether this scheme can re-randomize a ciphertext with public material (tried on one chunk)."""
    try:
        schemes.client(scheme).rerandomize(evalkeys.sections["keys"], sample)
    except UnsupportedModelError:
        return False
    return True


def make_canaries(known: KnownAnswers, counts: list[int], fraction: float, *, state: Path, inputs_digest: str,
                  key_id: str, reuse: bool) -> list[Canary]:
    """The run's canaries, their sizes drawn from the real chunks'; with ``reuse``, the same ones every time
    this input file runs under these keys (kept in ``state``, 0600)."""
    n = canary_count(len(counts), fraction)
    if not n:
        return []
    import numpy as np  # only runs with canaries load numpy

    store = Path(state) / "canaries" / f"{inputs_digest[:32]}-{key_id[:16]}-{n}.json"
    if reuse:
        try:
            kept = json.loads(store.read_text())
            return [Canary(base64.b64decode(c["payload"]), int(c["count"]), np.asarray(c["expected"], dtype=float))
                    for c in kept]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    made = known.make([_RNG.choice(counts) for _ in range(n)])
    if reuse:
        private_dir(store.parent)
        body = [{"payload": base64.b64encode(c.payload).decode(), "count": c.count,
                 "expected": np.asarray(c.expected).tolist()} for c in made]
        atomic_write(store, json.dumps(body).encode(), PRIVATE)
    return made


def new_record(conn: Connection, key: str, uploads: Uploads, counts: list[int], per_job: int, make_spec: MakeSpec,
               decoys: float) -> RunRecord:
    """Shuffle real chunks and canaries into job groups, pick the decoy groups, and write the run down."""
    inputs, canaries = uploads.inputs, uploads.canaries
    order = shuffle_in(len(inputs), len(canaries))
    digest_of_slot = lambda s: inputs[s] if s >= 0 else canaries[-s - 1][0]  # noqa: E731
    count_of_slot = lambda s: counts[s] if s >= 0 else canaries[-s - 1][1].count  # noqa: E731
    groups = []
    for start in range(0, len(order), per_job):
        slots = order[start : start + per_job]
        groups.append({"slots": slots, "spec": make_spec([digest_of_slot(s) for s in slots],
                                                         [count_of_slot(s) for s in slots]), "jobs": []})
    chosen = [i for i in range(len(groups)) if _RNG.random() < decoys]
    record = RunRecord("r" + uuid.uuid4().hex[:16], key, groups,
                       [{"count": c.count, "expected": c.expected} for _, c in canaries], decoys=chosen)
    record.save(conn.where.state)
    return record


def canary_positions(tasks: list[tuple[list[int], dict[str, Any]]]) -> dict[int, tuple[int, int]]:
    """For canary ``j`` (slot ``-j-1``), its ``(group, position)``."""
    return {-s - 1: (gi, pos) for gi, (slots, _) in enumerate(tasks) for pos, s in enumerate(slots) if s < 0}
