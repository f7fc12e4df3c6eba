"""The Supervisor's records: what a run demands of results (:class:`Verification`) and, per job group, its chunks,
the answers its voters gave, and its failures (:class:`Group`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import VerificationError
from ...transport.queue import DEFAULT_MAX_ATTEMPTS
from .allowlist import AllowList
from .checks import OutputCheck
from .votes import DecryptedAgreement, Voters


@dataclass(frozen=True)
class Verification:
    """What a run demands of results before it accepts them: ``replicas`` agreeing answers from distinct
    ``voters`` (operators), workers from ``allowed`` only (``None``: any worker with a valid receipt), at most
    ``max_attempts`` per job, each result passing ``check_output``; ``agreement`` compares disagreeing replicas
    by their decrypted values."""

    replicas: int = 1
    allowed: AllowList | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    voters: Voters | None = None
    agreement: DecryptedAgreement | None = None
    check_output: OutputCheck | None = None


@dataclass
class Group:
    """One job's worth of chunks and everything learned about it."""

    index: int
    slots: list[int]
    spec: dict[str, Any]
    results: dict[str, str | None] = field(default_factory=dict)   # voter -> answer digest (None: invalid)
    outputs: dict[str, list[str]] = field(default_factory=dict)    # answer digest -> output digests
    pending: set[str] = field(default_factory=set)                 # job ids not finished yet
    winner: str | None = None
    agreeing: tuple[str, ...] = ()
    submitted: int = 0
    decoy: bool = False        # gets one more run once decided, like a tie-breaker (not waited for)
    decoy_sent: bool = False
    revisit: bool = False      # an answer arrived after the decision: tally again
    failures: list[tuple[str, str]] = field(default_factory=list)  # (worker, error) of its dead-lettered jobs
    failed_at: float = 0.0     # when the last of them was seen

    @property
    def samples(self) -> int:
        """Samples the group's chunks hold."""
        return sum(self.spec["counts"])

    def winning_outputs(self) -> list[str]:
        """The accepted output digests, one per slot."""
        if self.winner is None:
            raise VerificationError(f"job group {self.index} has no accepted result yet")
        return self.outputs[self.winner]
