"""The verification options of ``hec run`` and the :class:`~he_compute.client.run.Policy` they make."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from ..errors import ConfigError, HECError


def verify_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ``hec run`` options of verification; they arrive as keyword arguments for :func:`verify_policy`."""
    options = [
        click.option("--replicas", type=click.IntRange(1, 16), default=1, show_default=True,
                     help="Run every job on K distinct workers and accept the majority result."),
        click.option("--canaries", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                     help="Mix in this fraction of canary chunks with known answers (needs --keys and "
                          "--canary-inputs; the secret keys encrypt and check them on this machine)."),
        click.option("--canary-inputs", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Known samples (.npy/.csv) to make canaries from."),
        click.option("--canary-outputs", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Their known outputs (default: evaluate the canaries once on this machine)."),
        click.option("--allow-workers", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Accept results only from the worker public keys in FILE (hec audit worker-key); "
                          "operator=NAME on a line says who runs that worker: replicas need distinct operators."),
        click.option("--accept-sybil-risk", is_flag=True,
                     help="Let every worker key vote on its own with --replicas, without known operators (one "
                          "party with several keys could then supply every replica)."),
        click.option("--decoys", type=click.FloatRange(0, 1), default=None,
                     help="Fraction of jobs re-run at random on another worker in verified runs, so that a re-run "
                          "says nothing about a check [default: 0.02 with --replicas or --canaries]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def verify_policy(opts: dict[str, Any], *, keys_dir: Any, server_part: Any, evalkeys: Any) -> Any:
    """Turn the :func:`verify_options` values into the :class:`~he_compute.client.run.Policy` of a run."""
    from ..client.run import AllowList, KnownAnswers, Policy

    allowed = AllowList.from_file(opts["allow_workers"]) if opts["allow_workers"] else None
    known = None
    if opts["canaries"]:
        if keys_dir is None or opts["canary_inputs"] is None:
            raise HECError("--canaries needs --keys DIR (to encrypt and check them) and --canary-inputs FILE")
        from ..client.client import Client
        from ..client.data import read_input
        from ..formats.bundle import from_container

        X, Y = read_input(opts["canary_inputs"]), read_input(opts["canary_outputs"]) if opts["canary_outputs"] else None
        if Y is not None and len(Y) != len(X):
            raise ConfigError(f"--canary-outputs has {len(Y)} rows but --canary-inputs has {len(X)}: give one known "
                              "output row per input")
        part = from_container(server_part).server_part() if server_part.kind == "bundle" else server_part
        known = KnownAnswers(Client(keys_dir), X, Y, server_part=part,
                             evalkeys=evalkeys)
    decryptor = None
    if opts["replicas"] > 1 and keys_dir is not None:
        from ..client.client import Client

        decryptor = known.client if known is not None else Client(keys_dir)  # compares replicas by meaning
    return Policy(replicas=opts["replicas"], canaries=opts["canaries"], known_answers=known, allowed=allowed,
                  keys=decryptor, accept_sybil_risk=opts["accept_sybil_risk"], decoys=opts["decoys"])
