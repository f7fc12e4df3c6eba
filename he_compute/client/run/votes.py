"""Who votes, and when two answers are the same answer.

**Voters.**  Replicas only check each other when different parties computed them.  A worker's key is
free to make, so a vote belongs to the worker's *operator* when it is known (``operator=NAME`` on the
allow-list, or one of the run's own local workers): one party with many keys gets one vote.  Without
known operators a run with replicas refuses to start, unless its policy accepts that risk; then every
key votes for itself.

**Agreement.**  Honest replicas need not agree byte for byte: TFHE bootstrapping runs floating-point FFTs,
so thread scheduling, instruction sets and GPUs change the noise in the output ciphertexts while the
decrypted values stay the same.  Byte equality stays the fast path; when digests differ, the client
decrypts each candidate (sizes checked first) and puts answers whose values agree in one class: exactly
for TFHE, within a tolerance derived from the CKKS parameters.  An answer that does not decrypt is a
class of its own.  Decrypted values never leave the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ...errors import HECError
from ...formats.signing import short_id
from .allowlist import AllowList

if TYPE_CHECKING:  # numpy is loaded only when values are compared: `hec run` starts faster without it
    import numpy as np

Decrypt = Callable[[bytes, int], "np.ndarray"]


class Voters:
    """Maps a worker id to the voter it counts as (``operators``: worker id -> operator name)."""

    def __init__(self, operators: Mapping[str, str] | None, *, keys_vote: bool,
                 refresh: Callable[[], Mapping[str, str]] | None = None):
        self.operators = dict(operators or {})
        self.keys_vote = keys_vote
        # A coordinator admits workers while a run waits for them: their operators are asked for again, once
        # per worker id that answered (so a stream of unknown ids cannot make the client poll without end).
        self._refresh, self._asked = refresh, set[str]()

    @staticmethod
    def mapping(*sources: AllowList | Mapping[str, str] | None) -> dict[str, str]:
        """One worker id -> operator map from allow-lists and plain maps (later sources win)."""
        out: dict[str, str] = {}
        for src in sources:
            if isinstance(src, AllowList):
                out |= {w: op for w in src.worker_ids if (op := src.operator_of(w))}
            elif src:
                out |= dict(src)
        return out

    def voter(self, worker_id: str) -> str | None:
        """``"op:NAME"`` for a known operator, the worker id when keys vote, else ``None`` (does not count)."""
        operator = self.operators.get(worker_id)
        if not operator and self._refresh is not None and worker_id not in self._asked:
            self._asked.add(worker_id)
            try:
                self.operators = {**self._refresh(), **self.operators}  # what the run knew first still wins
            except HECError:  # the coordinator unreachable for a moment: this worker's next answer asks again
                self._asked.discard(worker_id)
            operator = self.operators.get(worker_id)
        if operator:
            return f"op:{operator}"
        return worker_id if self.keys_vote else None


def voter_name(voter: str) -> str:
    """How summaries name a voter: ``operator NAME``, ``unverified:QUEUE-NAME`` or a worker's short id."""
    if voter.startswith("op:"):
        return f"operator {voter[3:]}"
    if voter.startswith("unverified:"):
        return voter
    return short_id(voter)


def who(voter: str) -> str:
    """How sentences name a voter: ``operator NAME``, ``worker SHORT-ID`` or ``unverified:QUEUE-NAME``."""
    name = voter_name(voter)
    return name if name.startswith(("operator ", "unverified:")) else f"worker {name}"


class DecryptedAgreement:
    """Decides which candidate answers of a job agree once decrypted (see the module docstring)."""

    def __init__(self, fetch: Callable[[str], bytes], decrypt: Decrypt, tolerance: float):
        self.fetch, self.decrypt, self.tolerance = fetch, decrypt, tolerance
        self._values: dict[str, np.ndarray | None] = {}   # candidate digest -> decrypted outputs (None: garbage)
        self.decrypted = 0

    def _decrypted(self, candidate: str, outputs: Sequence[str], counts: Sequence[int]) -> np.ndarray | None:
        if candidate not in self._values:
            import numpy as np

            try:
                parts = [self.decrypt(self.fetch(d), int(n)) for d, n in zip(outputs, counts)]
                self._values[candidate] = np.concatenate(parts, axis=0)
            except (HECError, ValueError, RuntimeError):  # bytes that do not decrypt are a wrong answer
                self._values[candidate] = None
            self.decrypted += 1
        return self._values[candidate]

    def same(self, a: np.ndarray | None, b: np.ndarray | None) -> bool:
        """Whether two decrypted answers agree (exactly, or within the tolerance relative to 1 + |value|)."""
        import numpy as np

        if a is None or b is None or a.shape != b.shape:
            return False
        if self.tolerance == 0:
            return bool(np.array_equal(a, b))
        return bool(np.all(np.abs(a - b) <= self.tolerance * (1.0 + np.maximum(np.abs(a), np.abs(b)))))

    def classes(self, results: dict[str, str | None], outputs: dict[str, list[str]],
                counts: Sequence[int]) -> dict[str, str | None]:
        """Map each voter's candidate digest to the first digest of its agreement class (``None`` stays)."""
        candidates = sorted({d for d in results.values() if d is not None})
        if len(candidates) < 2:
            return dict(results)
        representative: dict[str, str | None] = {}
        reps: list[tuple[str, Any]] = []
        for c in candidates:
            value = self._decrypted(c, outputs[c], counts)
            if value is None:  # a class of its own: a vote that no honest answer will join
                representative[c] = c
                continue
            match = next((r for r, v in reps if self.same(v, value)), None)
            if match is None:
                reps.append((c, value))
                match = c
            representative[c] = match
        return {w: (representative[d] if d is not None else None) for w, d in results.items()}
