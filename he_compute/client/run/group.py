"""One job group of a run: its chunks, the answers its voters gave, and its failures (the Supervisor's record)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import VerificationError


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
