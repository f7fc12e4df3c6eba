"""``make demo``: encrypted inference through the embedded job queue with two local workers.

Trains a Concrete ML decision tree on scikit-learn's breast-cancer data,
compiles it to a bundle, generates keys, encrypts a few test samples, runs
them through the embedded SQLite queue with two worker processes (which see
only the server part, the evaluation keys and ciphertexts), decrypts, and
prints clear vs encrypted predictions with timings.  Files go to ``./demo-out/``.

Example::

    python -m he_compute.demo --samples 8 --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return 0 when every encrypted prediction matches the clear quantized model."""
    p = argparse.ArgumentParser(prog="python -m he_compute.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    a = p.parse_args(argv)

    from rich.console import Console
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    from .errors import show_warning
    from .formats.text import color_system
    from .schemes._quiet import import_torch_quietly

    console = Console(color_system=color_system())  # none at all under NO_COLOR
    warnings.showwarning = show_warning  # he_compute's warnings as one "Warning: ..." line, as hec prints them
    import_torch_quietly()  # before Concrete ML: without it torch prints a CUDA_HOME notice on CPU machines
    out = a.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    X_test, y_test = X_test[: a.samples], y_test[: a.samples]
    times: dict[str, float] = {}
    model, proba, report = _encrypted_inference(X_train, y_train, X_test, out, a.workers, times, console)
    clear = model.predict_proba(X_test, fhe="disable")
    warm = [float(j["seconds"]) for j in report.worker_stats if j.get("server") == "hit" and j.get("keys") == "hit"]
    if warm:  # one sample per job: a warm worker's job time is its time per sample, without process start-up
        times["evaluation per sample, warm worker"] = sum(warm) / len(warm)
    agree = _show(console, clear, proba, y_test, times)
    console.print(f"jobs: {len(report.job_ids)}; uploaded {report.uploaded}; files in {out}/")
    return 0 if agree == 1.0 else 1


def _encrypted_inference(X_train: Any, y_train: Any, X_test: Any, out: Path, workers: int, times: dict[str, float],
                         console: Any) -> tuple[Any, Any, Any]:
    """Train and compile the tree, make keys, encrypt ``X_test``, run it through the embedded queue with
    ``workers`` local workers and decrypt; each step's seconds go to ``times``."""
    from concrete.ml.sklearn import DecisionTreeClassifier

    import he_compute

    t = time.perf_counter()
    model = DecisionTreeClassifier(max_depth=4, n_bits=6, random_state=0).fit(X_train, y_train)
    bundle = he_compute.compile(model, X_train, scheme="tfhe")
    bundle.save(out / "model.hec")
    times["train + compile"] = time.perf_counter() - t

    t = time.perf_counter()
    client = he_compute.Client.keygen(bundle, out / "keys")
    times["keygen"] = time.perf_counter() - t

    t = time.perf_counter()
    enc = client.encrypt(X_test)
    enc.save(out / "x.enc")
    times["encrypt"] = time.perf_counter() - t

    console.print(f"[bold]running {len(X_test)} encrypted samples through sqlite://{out}/queue.db "
                  f"with {workers} local workers[/bold]")
    t = time.perf_counter()
    report = he_compute.run(enc, bundle.server_part(), he_compute.read_evaluation_keys(client.evaluation_keys_path),
                 queue=f"sqlite://{out / 'queue.db'}", blobs=f"file://{out / 'blobs'}", local_workers=workers,
                 options=he_compute.RunOptions(timeout=1800, samples_per_job=1))
    report.result.save(out / "y.enc")
    times["run (queue + workers)"] = time.perf_counter() - t

    t = time.perf_counter()
    proba = client.decrypt(report.result)
    times["decrypt"] = time.perf_counter() - t
    return model, proba, report


def _show(console: Any, clear: Any, proba: Any, y_test: Any, times: dict[str, float]) -> float:
    """Print clear vs encrypted predictions and the timings; return the fraction of agreeing predictions."""
    from rich.table import Table

    enc_pred, clear_pred = proba.argmax(axis=1), clear.argmax(axis=1)
    table = Table(title="breast cancer: clear vs encrypted (TFHE) decision tree")
    for col in ("sample", "label", "clear pred", "encrypted pred", "P(benign) clear", "P(benign) encrypted", "match"):
        table.add_column(col)
    for i in range(len(y_test)):
        ok = enc_pred[i] == clear_pred[i] and np.allclose(proba[i], clear[i], atol=1e-6)
        table.add_row(str(i), str(y_test[i]), str(clear_pred[i]), str(enc_pred[i]), f"{clear[i, 1]:.3f}",
                      f"{proba[i, 1]:.3f}", "[green]yes[/green]" if ok else "[red]NO[/red]")
    console.print(table)
    agree = float(np.mean(enc_pred == clear_pred))
    console.print(f"agreement encrypted vs clear: {agree:.0%}; accuracy vs labels: {np.mean(enc_pred == y_test):.0%}")

    timing = Table(title="timings")
    timing.add_column("step")
    timing.add_column("seconds", justify="right")
    for step, seconds in times.items():
        timing.add_row(step, f"{seconds:.2f}")
    timing.add_row("run, per sample (with the workers' start-up)", f"{times['run (queue + workers)'] / len(y_test):.2f}")
    console.print(timing)
    return agree


if __name__ == "__main__":
    from .commands import keep_exit_status

    status = main()
    keep_exit_status(status)  # a failed demo must not exit 0 because Concrete's exit handler says so
    sys.exit(status)
