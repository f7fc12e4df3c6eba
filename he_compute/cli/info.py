"""``hec info`` and ``hec plan``: what a file holds, and what running a bundle will cost, before paying it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from ._render import render
from ._util import echo
from ._util import size as _size


def describe(path: Path) -> dict[str, Any]:
    """The fields ``hec info`` shows for any he_compute file (the raw form ``--json`` prints)."""
    from ..formats import container

    c = container.read(path)
    meta = {k: v for k, v in c.meta.items() if k != "client_digests"}
    return {
        "file": str(path),
        "kind": c.kind,
        "scheme": c.scheme,
        "size": path.stat().st_size,
        "sections": {name: len(data) for name, data in c.sections.items()},
        **meta,
    }


def _readable(desc: dict[str, Any]) -> dict[str, Any]:
    """Sizes in units, sections summed, and the long per-chunk list shortened to a count."""
    out = dict(desc)
    out["size"] = _size(int(desc["size"]))
    out["sections"] = f"{len(desc['sections'])} ({_size(sum(desc['sections'].values()))})"
    if isinstance(out.get("chunks"), list):
        out["chunks"] = f"{len(out['chunks'])} (samples per chunk: {min(out['chunks'], default=0)}-" \
                        f"{max(out['chunks'], default=0)})"
    return out


@click.command("info")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--no-estimate", is_flag=True, help="Skip the cost estimate of a bundle.")
def info_cmd(path: Path, as_json: bool, no_estimate: bool) -> None:
    """Describe a he_compute file: kind, scheme, model id, key id, shapes, sizes, security level,
    and for a bundle the estimated cost on this machine (see hec plan).

    Example: hec info model.hec
    """
    desc = describe(path)
    est = None
    if desc["kind"] == "bundle" and not no_estimate:
        from ..client.client import load_bundle
        from ..client.estimate import estimate

        est = estimate(load_bundle(path), say=echo)
    if as_json:
        click.echo(json.dumps({**desc, **({"cost_estimate": est.to_json()} if est else {})}, indent=2,
                              default=str))
        return
    for line in render(_readable(desc)):
        click.echo(line)
    if est is not None:
        for line in render({"estimate": estimate_lines(est)}):
            click.echo(line)


def estimate_lines(est: Any, samples: int | None = None) -> dict[str, Any]:
    """The estimate as ``hec info``, ``hec compile`` and ``hec plan`` print it (``samples``: the run's size)."""
    per = "" if est.unit == "sample" else f" (a {est.unit} holds up to {est.samples_per_unit} samples)"
    lines: dict[str, Any] = {
        f"time per {est.unit}": f"{est.seconds_per_unit:.3g} s on one core of this machine{per}",
        "evaluation keys": _size(est.evaluation_key_bytes),
        **_byte_lines(est, samples),
    }
    if est.expected_error is not None:
        lines["expected error"] = f"{est.expected_error:.3g} (largest output error)"
    elif est.scheme == "ckks":
        lines["expected error"] = "unknown (compile with hec compile or he_compute.compile to measure it)"
    if est.p_error is not None:
        lines["p error"] = f"{est.p_error:.3g} per bootstrap"
    lines["basis"] = est.basis
    return lines


def _byte_lines(est: Any, samples: int | None) -> dict[str, str]:
    """Encrypted bytes in and out.  A ciphertext batch costs the same whether it holds one sample or a full
    batch, so where a unit holds several samples the cost is given per unit and for ``samples``: a bytes per
    sample figure of a full batch would understate a small run's cost by up to the batch size."""
    def both(units: float) -> str:
        return f"{_size(units * est.input_bytes_per_unit)} in, {_size(units * est.output_bytes_per_unit)} out"

    units_of = est.unit + ("es" if est.unit.endswith("ch") else "s")  # batches, ciphertexts
    if est.samples_per_unit == 1:
        lines = {"bytes per sample": both(1)}
    else:
        lines = {f"bytes per {est.unit}": f"{both(1)}, whether it holds 1 sample or {est.samples_per_unit} "
                                          f"(per sample in full {units_of}: {both(1 / est.samples_per_unit)})"}
    if samples is not None:
        units = math.ceil(samples / est.samples_per_unit)
        lines[f"bytes for {samples} samples"] = both(units) + (
            "" if est.samples_per_unit == 1 else f" ({units} {est.unit if units == 1 else units_of})")
    return lines


@click.command("plan")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--samples", type=click.IntRange(1), required=True, help="How many samples to evaluate.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Single-core workers sharing the work (hec worker starts one per core).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def plan_cmd(bundle: Path, samples: int, workers: int, as_json: bool) -> None:
    """How long and how many bytes evaluating SAMPLES samples of BUNDLE takes on WORKERS workers like this machine.

    Evaluation time only (add keygen once, and encryption on the client); bytes uploaded
    count the server part and evaluation keys once.

    Example: hec plan model.hec --samples 10000 --workers 8
    """
    from ..client.client import load_bundle
    from ..client.estimate import estimate

    est = estimate(load_bundle(bundle), say=echo)
    p = est.plan(samples, workers)
    if as_json:
        click.echo(json.dumps({"estimate": est.to_json(), "plan": p}, indent=2))
        return
    work = ("one sample at a time per worker" if est.unit == "sample" else
            f"{p['units']} {'batch' if est.unit == 'batch' else 'unit'}(s) of up to {est.samples_per_unit} samples")
    click.echo(f"{samples} samples on {workers} worker(s): about {_duration(p['seconds'])} of evaluation ({work})")
    click.echo(f"upload {_size(p['upload_bytes'])} (server part and evaluation keys once, then the inputs); "
               f"download {_size(p['download_bytes'])}")
    for line in render(estimate_lines(est, samples)):
        click.echo(line)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
