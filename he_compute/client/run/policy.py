"""How a run is verified: replicas from distinct operators, canaries, an allow-list of worker keys, decoy
re-runs, an audit log (see :mod:`.supervisor`, which applies it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import InputError
from ...transport.queue import DEFAULT_MAX_ATTEMPTS
from .allowlist import AllowList
from .canaries import KnownAnswers

DEFAULT_DECOYS = 0.02
"""Fraction of job groups that get one more run in every run where a check can fail (see the Supervisor)."""


@dataclass(frozen=True)
class Policy:
    """How a run is verified.

    ``replicas`` answers per job from distinct operators (known from ``allowed``'s ``operator=`` entries or
    the run's own local workers; ``accept_sybil_risk`` lets every key vote for itself instead); a fraction
    of ``canaries`` drawn from ``known_answers``; receipts only from ``allowed`` keys; ``keys``, a
    :class:`~he_compute.client.client.Client` that compares disagreeing replicas by their decrypted values;
    ``decoys``, the fraction of groups re-run at random (default 2% when a check can fail); an audit log;
    ``max_attempts`` per job (capped by the queue)."""

    replicas: int = 1
    canaries: float = 0.0
    known_answers: KnownAnswers | None = None
    allowed: AllowList | None = None
    audit: bool = True
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    keys: Any = None
    accept_sybil_risk: bool = False
    decoys: float | None = None

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise InputError("replicas must be at least 1")
        if not 0 <= self.canaries < 1:
            raise InputError(f"the canary fraction must be in [0, 1), not {self.canaries}")
        if self.canaries and self.known_answers is None:
            raise InputError("canaries need known answers: pass known_answers=KnownAnswers(client, X, Y) "
                             "(or hec run --canary-inputs X.npy --keys DIR)")
        if self.decoys is not None and not 0 <= self.decoys <= 1:
            raise InputError(f"the decoy fraction must be in [0, 1], not {self.decoys}")

    @property
    def decoy_fraction(self) -> float:
        """Decoys asked for, or the default when a check can fail (replicas or canaries), else none."""
        if self.decoys is not None:
            return self.decoys
        return DEFAULT_DECOYS if self.replicas > 1 or self.canaries else 0.0

    @property
    def decryptor(self) -> Any:
        """The client that can compare answers by their decrypted values: ``keys``, else the canaries' client."""
        return self.keys if self.keys is not None else getattr(self.known_answers, "client", None)

    def check_operators(self, local_workers: int, vouched: bool = False) -> None:
        """Refuse replicas that one party could supply alone (see :mod:`.votes`); ``vouched``: a coordinator
        names the operator of every worker it admitted."""
        if self.replicas == 1 or self.accept_sybil_risk or local_workers > 0 or vouched:
            return
        if self.allowed is None or not self.allowed.knows_operators:
            raise InputError(f"--replicas {self.replicas} needs workers whose operators are known, or one party "
                             "with several keys could supply every replica: pass --allow-workers FILE with "
                             "operator=NAME on each line, run --local-workers N, or accept the risk with "
                             "--accept-sybil-risk")
