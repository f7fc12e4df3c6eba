"""Redundant execution: decide a job's answer from the answers of distinct voters.

Answers are compared by *class*: the caller maps equal answers (equal digests,
or equal decrypted values, see :mod:`.votes`) to one label.  The rule, for the
answers of distinct voters to a job asked for ``K`` replicas, with ``c`` the
largest agreeing class among the ``n`` valid answers:

* an *invalid* answer (bad receipt, unreadable output, a flagged voter's) counts
  for nothing: no honest worker returns one, so its voter is a dissenter;
* accept the class when ``c`` reaches the quorum ``K // 2 + 1`` **and** is a
  *strict majority* of the valid answers (``K = 1``: one answer; ``K = 2``: two
  agreeing; ``K = 3``: two agreeing, so one cheater among three is outvoted even
  once its answers are struck);
* otherwise ask for the fewest more answers that could still get there: one
  tie-breaker after a 1-1 split;
* when that would exceed ``max_results``, fail loudly with :class:`~he_compute.errors.NoMajority`.

Voters whose answer differs from the accepted one, or was invalid, are
*dissenters*; ``max_results`` counts every answer, invalid ones included.  Nothing about the outcome is sent back to any worker.

Example::

    t = tally({"w1": "sha256:a", "w2": "sha256:b"}, replicas=2)   # t.more == 1: run a tie-breaker
    t = tally({"w1": "sha256:a", "w2": "sha256:b", "w3": "sha256:a"}, replicas=2)
    t.winner == "sha256:a" and t.dissenters == ("w2",)
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

from ...errors import ConfigError, NoMajority
from ...formats.canonical import canonical
from ...formats.signing import short_id


def result_digest(outputs: Sequence[str]) -> str:
    """One digest for a job's ordered list of output digests: what replicas are compared on."""
    return "sha256:" + hashlib.sha256(canonical(list(outputs))).hexdigest()


@dataclass(frozen=True)
class Tally:
    """The state of a vote: ``winner`` (``None`` while undecided), who agreed, who dissented, how many more to run."""

    winner: str | None
    agreeing: tuple[str, ...]
    dissenters: tuple[str, ...]
    more: int

    @property
    def decided(self) -> bool:
        """Whether a result was accepted."""
        return self.winner is not None


def tally(results: Mapping[str, str | None], *, replicas: int, max_results: int | None = None,
          label: str = "job") -> Tally:
    """Decide on ``results`` (worker id -> result digest, ``None`` for an invalid result).

    ``max_results`` bounds replicas plus tie-breakers (default ``replicas + 2``).
    Raises :class:`NoMajority` when no result can reach a majority within it.
    """
    if replicas < 1:
        raise ConfigError("replicas (--replicas) must be at least 1")
    limit = replicas + 2 if max_results is None else max_results
    if limit < replicas:
        raise ConfigError("max_results must be at least replicas")
    valid = [d for d in results.values() if d is not None]
    n, total = len(valid), len(results)
    quorum = replicas // 2 + 1
    winner, c = Counter(valid).most_common(1)[0] if valid else (None, 0)
    if winner is not None and c >= quorum and c * 2 > n:
        agree = tuple(sorted(w for w, d in results.items() if d == winner))
        dissent = tuple(sorted(w for w, d in results.items() if d != winner))
        return Tally(winner, agree, dissent, 0)
    more = max(quorum - c, n - 2 * c + 1)
    if total + more > limit:
        groups = ", ".join(f"{d[7:15] if d else 'invalid'}: {', '.join(short_id(w) for w, v in results.items() if v == d)}"
                           for d in sorted(set(results.values()), key=lambda v: v or ""))
        raise NoMajority(f"{label}: {total} results and no majority can be reached within {limit} "
                         f"({groups or 'none'}); check these workers")
    return Tally(None, (), (), more)
