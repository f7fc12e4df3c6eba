"""What decrypting in a bounded child costs: ``Client.decrypt`` (one forked child per result, see
``he_compute/client/bounded.py``) against the same chunks decrypted in process (the path before the child).

A TFHE logistic regression (100 samples, one chunk each) and a CKKS logistic regression batch (9,000 rows,
three chunks of 4096).  Interleaved rounds, medians.  Writes ``bench/results/decrypt.md``.

Run: ``python -m bench decrypt``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import standardized_cancer, table, write

ROUNDS = 7


def _in_process(client, result) -> np.ndarray:
    """The old path: every chunk decrypted in this process."""
    from he_compute.formats.ciphertexts import chunk_name

    parts = [client._backend.decrypt(result.sections[chunk_name(i)], int(c))
             for i, c in enumerate(result.meta["chunks"])]
    return np.concatenate(parts)[: result.meta["n_samples"]]


def _case(scheme: str, model, X_cal, X, root: Path):
    import he_compute

    bundle = he_compute.compile(model, X_cal, scheme=scheme)
    client = he_compute.Client.keygen(bundle, root / scheme, register=False)
    ev = he_compute.Evaluator(bundle.server_part())
    keys = ev.load_keys(he_compute.read_evaluation_keys(client.evaluation_keys_path))
    return client, ev.evaluate(client.encrypt(X), keys)


def main() -> None:
    from concrete.ml.sklearn import LogisticRegression as ConcreteLogistic
    from sklearn.linear_model import LogisticRegression

    X_tr, X_te, y_tr, _ = standardized_cancer()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "TFHE logistic regression, 100 samples": _case(
                "tfhe", ConcreteLogistic(n_bits=8).fit(X_tr, y_tr), X_tr, X_te[:100], Path(tmp)),
            "CKKS logistic regression, 9,000 rows": _case(
                "ckks", LogisticRegression(max_iter=1000).fit(X_tr, y_tr), X_tr, np.resize(X_te, (9000, 30)),
                Path(tmp)),
        }
        for name, (client, result) in cases.items():
            times: dict[str, list[float]] = {"in process": [], "bounded child": []}
            for _ in range(ROUNDS):
                for label, fn in (("in process", _in_process), ("bounded child", lambda c, r: c.decrypt(r))):
                    t = time.perf_counter()
                    y = fn(client, result)
                    times[label].append(time.perf_counter() - t)
                    assert len(y) == result.meta["n_samples"]
            a, b = (statistics.median(times[k]) * 1e3 for k in ("in process", "bounded child"))
            rows.append([name, f"{a:.1f} ms", f"{b:.1f} ms", f"{b - a:+.1f} ms"])
    write("decrypt", "# Decrypting a result: in process vs in a bounded child\n\n"
          + table(["result", "in process (median)", "bounded child (median)", "difference"], rows)
          + f"\n\n{ROUNDS} interleaved rounds each; `python -m bench decrypt`.")


if __name__ == "__main__":
    main()
