"""``hec compile``: an ONNX model into a bundle, with every knob the Python API has.

Each knob is one :class:`Knob`: its flag, the scheme it belongs to, the
keyword argument of ``he_compute.compile`` it sets, and a help text giving the
default and the trade-off measured in ``bench/bench_knobs.py`` and
``bench/bench_tfhe.py`` (2 cores; see the README).  A knob given for the other
scheme is refused in one line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..errors import HECError
from ._util import echo as _echo


@dataclass(frozen=True)
class Knob:
    """One ``hec compile`` option that maps onto one compile keyword argument."""

    flag: str
    option: str
    scheme: str
    type: Any
    help: str
    is_flag: bool = False


KNOBS = (
    Knob("--n-bits", "n_bits", "tfhe", click.IntRange(2, 16),
         "Quantization bits of a torch/ONNX model's weights and activations (default 5; skl2onnx models: "
         "Concrete ML's from_sklearn_model default, 8; trees get much faster at 4-6). 30-16-2 MLP: 4 bits lost 5 accuracy points; 6 bits (rounded to 6) "
         "took twice the time for the same accuracy."),
    Knob("--rounding-bits", "rounding_threshold_bits", "tfhe", click.IntRange(2, 16),
         "Round accumulators to this many bits before each activation (default 5). 30-16-2 MLP: 5/5 runs 5.8 s/"
         "sample at 0.974 accuracy; 6 bits unrounded, 176 s at 0.982."),
    Knob("--no-rounding", "rounding_threshold_bits", "tfhe", None,
         "Keep accumulators exact (slowest; see --rounding-bits).", is_flag=True),
    Knob("--p-error", "p_error", "tfhe", click.FloatRange(0, 0.5, min_open=True),
         "Probability that one bootstrap is wrong (default 2^-40). Depth-4 tree: 1e-3 cut Concrete's cost to "
         "0.76x at the same simulated accuracy; 0.01 to 0.73x but lost 4 accuracy points (README has the table)."),
    Knob("--packing", "packing", "ckks", click.Choice(["auto", "batch", "single"]),
         "Samples across slots (batch: thousands per ciphertext, best throughput) or a few samples per ciphertext "
         "with rotations (single: lowest latency); auto compares the two plans' operation counts for --batch-size "
         "and says why in hec info (default auto). Digits 64-32-10 square MLP, one sample: single 0.17 s with "
         "17 MB of keys."),
    Knob("--batch-size", "batch_size", "ckks", click.IntRange(1),
         "Expected samples per request, for --packing auto (default: unknown, so batch)."),
    Knob("--max-error", "max_error", "ckks", click.FloatRange(min=0, min_open=True),
         "Largest output error to aim for; each activation's polynomial degree (3, 7, 15, 31, 63: one level "
         "each step) is raised until the predicted bound meets it (default 5% of the output span on the "
         "calibration data). 30-16-2 ReLU MLP: bound 2.09 at degree 3 (7,189 samples/s on one core), 0.49 at "
         "31 (558/s), 0.12 at 63 (392/s); below that each ReLU becomes a composite sign polynomial (0.03: bound 0.0225, "
         "observed 0.0092, depth 14, N=32768); refused in one line if 128-bit parameters cannot hold the depth."),
    Knob("--engine", "engine", "ckks", click.Choice(["auto", "tenseal", "bootstrap"]),
         "tenseal: SEAL, one modulus chain; bootstrap: OpenFHE with bootstrapping (deep models; its own CPython "
         "3.10 environment, `make openfhe-env`); auto (default) picks bootstrap only when one chain cannot hold "
         "the plan. 6-hidden-layer ReLU MLP: 5 bootstraps per ciphertext."),
    Knob("--activation-degree", "activation_degree", "ckks", click.IntRange(2, 63),
         "Force the degree of every activation polynomial instead of choosing it from --max-error (the "
         "predicted error is still reported, with a warning when it misses the target)."),
)


def _options(fn: Any) -> Any:
    for knob in reversed(KNOBS):
        scheme = knob.scheme.upper()
        if knob.is_flag:
            fn = click.option(knob.flag, is_flag=True, help=f"{scheme}: {knob.help}")(fn)
        else:
            fn = click.option(knob.flag, type=knob.type, default=None, help=f"{scheme}: {knob.help}")(fn)
    return fn


def _param(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def compile_options(scheme: str, given: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for ``he_compute.compile`` from the knobs given; one-line error for a misplaced one."""
    misplaced = [k.flag for k in KNOBS if given.get(_param(k.flag)) not in (None, False) and k.scheme != scheme]
    if misplaced:
        raise HECError(f"{', '.join(misplaced)} do(es) not apply to --scheme {scheme}: drop it or change the scheme")
    options: dict[str, Any] = {}
    for knob in KNOBS:
        value = given.get(_param(knob.flag))
        if value is None or value is False:
            continue
        options[knob.option] = None if knob.is_flag else value
    return options


ACCURACY_ROWS = 200
"""Rows of the calibration (or validation) data the compiled model is compared with the float model on."""


@click.command("compile")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--scheme", type=click.Choice(["tfhe", "ckks"]), default="tfhe", show_default=True)
@click.option("--calibration", "calibration", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Representative inputs (.npy or .csv, rows = samples) for quantization / range fitting.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Bundle to write.")
@click.option("--task", type=click.Choice(["classifier", "regressor"]), default=None,
              help="What the model is (default: a graph ending in Softmax/Sigmoid or with several outputs is "
                   "a classifier; one output is a regressor). predict_proba needs a classifier.")
@click.option("--validation", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Inputs to measure the compiled model against the float model on (default: the "
                   f"calibration data); the first {ACCURACY_ROWS} rows are used.")
@click.option("--no-accuracy", is_flag=True, help="Skip measuring the compiled model against the float model.")
@click.option("--no-estimate", is_flag=True, help="Skip the cost estimate printed after compiling.")
@_options
def compile_cmd(model: Path, scheme: str, calibration: Path, output: Path, task: str | None,
                validation: Path | None, no_accuracy: bool, no_estimate: bool, **knobs: Any) -> None:
    """Compile an ONNX model (torch export, or scikit-learn through skl2onnx) into a bundle.

    Prints how the compiled (quantized or approximated) model agrees with the float model on the
    calibration data (or --validation), as hec simulate computes it, and the pre-flight estimate
    (hec plan gives it for N samples).

    Example: hec compile mlp.onnx --scheme tfhe --calibration X_train.npy -o mlp.hec
    """
    import he_compute

    from ..client.data import read_input

    options = compile_options(scheme, knobs)
    if task is not None:
        options["task"] = task
    if model.suffix.lower() != ".onnx":
        raise HECError(f"{model}: expected an .onnx file; compile other models with he_compute.compile() in Python")
    if not model.is_file():
        raise HECError(f"{model} does not exist")
    X = read_input(calibration)
    start = time.perf_counter()
    bundle = he_compute.compile(model, X, scheme=scheme, **options)
    bundle.save(output)
    _echo(f"wrote {output} ({bundle.scheme} {bundle.manifest.get('task', 'model')}, model "
          f"{bundle.model_id[:12]}, {bundle.manifest['security_level']}-bit security) in "
          f"{time.perf_counter() - start:.1f}s")
    if not no_accuracy:
        _echo(accuracy_line(model, bundle, read_input(validation) if validation else X,
                            "validation" if validation else "calibration"))
    if not no_estimate and bundle.manifest.get("ckks", {}).get("engine"):
        _echo(f"no pre-flight estimate for the bootstrapping engine: "
              f"{bundle.manifest['ckks']['bootstraps_per_ciphertext']} bootstrap(s) per ciphertext")
    elif not no_estimate:
        from ..client.estimate import estimate
        from ._render import render
        from .info import estimate_lines

        for line in render({"estimate": estimate_lines(estimate(bundle, say=_echo))}):
            _echo(line)

@click.command("simulate")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Outputs to write (.csv or .npy), samples x outputs, as hec decrypt writes them.")
def simulate_cmd(bundle: Path, input_path: Path, output: Path) -> None:
    """What encrypting INPUT, running and decrypting would give, computed here without keys or workers.

    TFHE: Concrete's simulation of the bundle's own circuit (as Concrete ML's fhe="simulate"); CKKS: the
    bundle's polynomials in the clear. Inputs are clipped or saturated exactly as hec encrypt does.

    Example: hec simulate mlp.hec X_test.npy -o y_simulated.csv
    """
    import he_compute

    from ..client.data import read_input, write_output

    values = he_compute.simulate(he_compute.load_bundle(bundle), read_input(input_path))
    write_output(output, values)
    _echo(f"wrote {output}: {values.shape[0]} simulated samples x {values.shape[1]} outputs")



def accuracy_line(model: Path, bundle: Any, X: Any, source: str) -> str:
    """One line: the compiled model against the float ONNX graph (run by onnxruntime) on up to
    ``ACCURACY_ROWS`` rows of ``X``."""
    import numpy as np

    from ..client.simulate import compare, simulate
    from ..schemes._onnx import run_onnx

    X = np.asarray(X)[:ACCURACY_ROWS]
    width = int(np.prod(bundle.manifest["output_shape"]))
    reference = run_onnx(model, X.reshape(len(X), *bundle.manifest["input_shape"]), width)
    report = compare(simulate(bundle, X), reference, bundle.manifest.get("task"))
    agree = f"agreement {report['agreement']:.1%} with the float model, " if "agreement" in report else ""
    return (f"accuracy on {len(X)} {source} rows: {agree}max output error {report['max_error']:.3g} "
            f"(hec simulate shows it for any input)")
