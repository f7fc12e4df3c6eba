"""Canaries: jobs whose answers the client already knows, mixed among the real ones.

A fraction ``F`` of extra chunks is built from *known* inputs, freshly
encrypted by the client under the same keys and with the same number of
samples per chunk as the real chunks, so a worker sees ciphertexts of the
same size, the same kind of job, in random order: it cannot tell a canary
from real work.  After evaluation the client decrypts only the canary
chunks (it alone can) and compares them with the known outputs.  A worker
that got one wrong is a cheater: every result it returned in the run is
thrown away and re-run elsewhere.  Nothing about the check goes back to the
workers.

Known outputs come either from the caller (``Y``: e.g. the clear quantized
model's ``predict_proba``), or, when ``Y`` is not given, from evaluating the
canaries once on the client itself (costs a fraction F of the run locally).

Example::

    source = KnownAnswers(client, X_known, Y_known)
    slots = shuffle_in(n_real=40, n_canaries=canary_count(40, 0.05))
    ...
    source.check(canary, result_payload, worker="9f2c...")   # raises CanaryFailed
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ...errors import CanaryFailed, ConfigError, InputError
from ...formats.signing import short_id
from .votes import voter_name, who

if TYPE_CHECKING:
    import numpy as np

    from .supervisor import Supervisor

_RNG = secrets.SystemRandom()


def canary_count(n_real: int, fraction: float) -> int:
    """How many canary chunks go with ``n_real`` real ones: ``ceil(F * n)``, at least one when ``F > 0``."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"the canary fraction (--canaries) must be in [0, 1), not {fraction}")
    return 0 if fraction == 0 or n_real == 0 else max(1, math.ceil(n_real * fraction))


def shuffle_in(n_real: int, n_canaries: int, rng: Any = None) -> list[int]:
    """A random order of real chunks (``0 .. n_real-1``) and canaries (``-1 .. -n_canaries``).

    The whole sequence is shuffled with an unpredictable generator (not even
    the real chunks keep their order), so no position gives a canary away.
    """
    slots = list(range(n_real)) + [-(j + 1) for j in range(n_canaries)]
    (rng or _RNG).shuffle(slots)
    return slots


@dataclass
class Canary:
    """One canary chunk: the encrypted ``payload`` of ``count`` known samples and their ``expected`` outputs."""

    payload: bytes
    count: int
    expected: np.ndarray


class KnownAnswers:
    """A canary source backed by a client (for encryption and decryption) and known samples ``X``.

    ``Y`` are the known outputs of ``X``; without it the client evaluates each
    canary itself once (``server_part`` and ``evalkeys`` are then required).
    ``atol`` is the tolerance of the comparison (0 for TFHE, which is exact;
    a little for CKKS).
    """

    def __init__(self, client: Any, X: Any, Y: Any = None, *, atol: float = 1e-9, server_part: Any = None,
                 evalkeys: Any = None, rng: Any = None):
        import numpy as np  # here, not at the top: `hec run` without canaries need not load numpy

        self.client, self.X = client, np.asarray(X)
        self.Y = None if Y is None else np.asarray(Y, dtype=np.float64)
        if self.Y is not None and len(self.Y) != len(self.X):
            raise InputError(f"the known outputs have {len(self.Y)} rows but the known inputs {len(self.X)}: "
                             "give one output row per input")
        if self.Y is None and (server_part is None or evalkeys is None):
            raise ConfigError("without known outputs Y, pass server_part and evalkeys to compute them locally")
        if len(self.X) == 0:
            raise InputError("canaries need at least one known sample (--canary-inputs is empty)")
        self.atol, self._rng = atol, rng or _RNG
        self._server_part, self._evalkeys = server_part, evalkeys
        self._local: tuple[Any, Any] | None = None  # (Evaluator, its loaded keys), made on first use

    def make(self, counts: list[int]) -> list[Canary]:
        """One canary chunk per entry of ``counts`` (samples in it), drawn at random from the known samples.

        Callers draw ``counts`` from the real chunks' own sizes, so that no chunk size gives a canary away.
        """
        out = []
        for count in counts:
            rows = [self._rng.randrange(len(self.X)) for _ in range(count)]
            enc = self.client.encrypt(self.X[rows])
            if len(enc.sections) != 1:
                raise InputError(f"{count} samples do not fit one chunk of this scheme")
            payload = next(iter(enc.sections.values()))
            expected = self.Y[rows] if self.Y is not None else self._evaluate_locally(payload, count)
            out.append(Canary(payload, count, expected))
        return out

    def _evaluate_locally(self, payload: bytes, count: int) -> np.ndarray:
        from ...evaluator import Evaluator

        if self._local is None:
            evaluator = Evaluator(self._server_part)
            self._local = (evaluator, evaluator.load_keys(self._evalkeys))
        evaluator, keys = self._local
        return self.decrypt(evaluator.evaluate_payload(payload, keys), count)

    def decrypt(self, payload: bytes, count: int) -> np.ndarray:
        """Decrypt one result chunk with the client's keys (its size is checked before it is parsed)."""
        return self.client.decrypt_chunk(payload, count)

    def check(self, canary: Canary, result: bytes, *, worker: str) -> None:
        """Raise :class:`CanaryFailed` naming ``worker`` unless ``result`` decrypts to the canary's known outputs."""
        import numpy as np

        try:
            got = self.decrypt(result, canary.count)
            ok = got.shape == canary.expected.shape and bool(np.allclose(got, canary.expected, rtol=0, atol=self.atol))
        except Exception:  # noqa: BLE001 - bytes that do not even decrypt are a wrong answer like any other
            ok = False
        if not ok:
            raise CanaryFailed(f"{who(worker)} returned a wrong result for a canary: all its results of this run "
                               "are rejected", (voter_name(worker),))


def check_all(source: KnownAnswers, canaries: Sequence[Canary], results: Sequence[tuple[bytes, str]]) -> None:
    """Check every canary (``results[j] = (payload, worker id)``); raise one :class:`CanaryFailed` naming every cheater."""
    bad: list[str] = []
    for canary, (payload, worker) in zip(canaries, results):
        try:
            source.check(canary, payload, worker=worker)
        except CanaryFailed:
            if worker not in bad:
                bad.append(worker)
    if bad:
        names = ", ".join(short_id(w) for w in bad)
        raise CanaryFailed(f"canary check failed: worker(s) {names} returned wrong results; all their results "
                           "of this run are rejected", tuple(short_id(w) for w in bad))


def canary_check(source: KnownAnswers, canaries: list[Canary], slot_of: dict[int, tuple[int, int]],
                 store: Any) -> Any:
    """A callback for :meth:`Supervisor.run`: check every canary, flag cheaters; ``True`` when all pass.

    ``slot_of`` maps canary number ``j`` to ``(group index, position in the group)``.
    """

    def check(sup: Supervisor) -> bool:
        bad = False
        for j, canary in enumerate(canaries):
            g = sup.groups[slot_of[j][0]]
            if g.winner is None:  # undone by a cheater flagged just now: checked again after the re-run
                continue
            payload = store.get(g.winning_outputs()[slot_of[j][1]])
            try:
                source.check(canary, payload, worker=g.agreeing[0])
            except CanaryFailed:
                bad = True
                for w in g.agreeing:
                    sup.flag(w, f"returned a wrong result for a canary (job group {g.index})", canary=True)
        return not bad

    return check
