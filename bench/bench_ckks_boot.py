"""The bootstrapping CKKS engine (OpenFHE): one bootstrap at 128-bit, and the deep ReLU MLP at the test ring.

``python -m bench ckks_boot`` writes bench/results/ckks_boot.md:

* 128-bit (``HEStd_128_classic``, enforced by OpenFHE), into bench/results/ckks_boot_secure.md: client key
  generation, evaluation-key bytes, one bootstrap at 1 and 2 threads in a second process that holds only the
  public keys, precision after it, each process's peak memory.  A configuration is skipped with its reason
  when the machine has less free memory than it needs.
* test ring (N=2**12, no security): the 6-hidden-layer ReLU MLP 30 -> 16 x 6 -> 2 on breast cancer, compiled
  by ``he_compute.compile(..., scheme="ckks")`` (the engine is chosen automatically), run in process:
  seconds per ciphertext, bootstraps, max error against the plan and the clear model, argmax agreement.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "ckks_boot.md"
SECURE_RESULTS = Path(__file__).parent / "results" / "ckks_boot_secure.md"


def _free_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) / 2**20
    return 0.0


def _peak_gb(pid: int) -> float:
    """A process's peak resident memory (VmHWM) in GB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1e6
    return 0.0


def secure_bootstrap(slots: int = 256, levels: int = 4, budget: tuple[int, int] = (3, 3), dnum: int = 3,
                     threads: tuple[int, ...] = (1, 2), scale_bits: int | None = None,
                     first_mod_bits: int | None = None) -> dict[str, Any]:
    """Keygen at 128-bit, then one bootstrap per thread count in a worker process that holds only the public
    keys (read from the files the client's process wrote); precision of the bootstrap's output against its
    input; every process's peak memory.  One OpenFHE process of 128-bit keys runs at a time."""
    import shutil
    import tempfile

    from he_compute.schemes.ckks.boot import FIRST_MOD_BITS, SCALE_BITS
    from he_compute.schemes.ckks.ofhe import Process

    p = {"security": 128, "ring_dim": 0, "slots": slots, "scale_bits": scale_bits or SCALE_BITS,
         "first_mod_bits": first_mod_bits or FIRST_MOD_BITS[True], "levels": levels,
         "level_budget": list(budget), "secret": "uniform", "dnum": dnum}
    directory = tempfile.mkdtemp(prefix="hec-bench-keys-")
    out: dict[str, Any] = {"slots": slots, "budget": list(budget), "dnum": dnum, "scale": p["scale_bits"],
                           "first_mod": p["first_mod_bits"], "levels": levels}
    try:
        keygen = Process()
        t = time.perf_counter()
        info, (context, secret) = keygen.call("keygen", {"params": p, "rotations": [], "dir": directory})
        out |= {"keygen_s": time.perf_counter() - t, "ring": info["ring_dim"], "log_q": info["log_q"],
                "log_qp": info["log_qp"], "relin_MB": info["key_bytes"]["relin"] / 1e6,
                "rotation_MB": info["key_bytes"]["rotation"] / 1e6, "keygen_peak_GB": _peak_gb(keygen.proc.pid)}
        keygen.close()
        Path(directory, "context").write_bytes(context)
        print(out, flush=True)
        # OpenFHE bootstraps a ciphertext whose levels are used up (a fresh one holds too many primes for its
        # correction factor): levels - 1 squares first, of inputs whose 2**(levels - 1)-th powers are uniform
        # in [0, 1], then the bootstrap; its precision is against that clear input, its time the difference
        # with the squares alone.
        t_in = np.random.default_rng(0).uniform(0, 1, slots)
        x = t_in ** (1 / 2 ** (levels - 1))
        for n in threads:
            os.environ["OMP_NUM_THREADS"] = str(n)
            worker = Process()
            t = time.perf_counter()
            worker.call("open_worker", {"params": p, "insecure_ok": False,
                                        "paths": [str(Path(directory, f)) for f in ("context", "relin", "rotation")]})
            out[f"load_s_{n}"] = time.perf_counter() - t
            client = Process()  # the secret key's process: megabytes, started after the keys are loaded
            client.call("open_client", {"params": p}, [context, secret])
            _, (ct,) = client.call("encrypt", {}, [x.tobytes()])
            worker.call("plan", {"steps": [["square"]] * (levels - 1)}, [])
            t = time.perf_counter()
            worker.call("eval", {}, [ct])
            squares = time.perf_counter() - t
            worker.call("plan", {"steps": [["square"]] * (levels - 1) + [["bootstrap"]]}, [])
            t = time.perf_counter()
            reply, (res,) = worker.call("eval", {}, [ct])
            out[f"boot_s_{n}"] = time.perf_counter() - t - squares
            out[f"worker_peak_GB_{n}"] = _peak_gb(worker.proc.pid)
            worker.close()
            _, (vec,) = client.call("decrypt", {}, [res])
            out["client_peak_GB"] = _peak_gb(client.proc.pid)
            client.close()
            err = float(np.abs(np.frombuffer(vec, dtype=np.float64) - t_in).max())
            out[f"bits_{n}"] = -np.log2(max(err, 1e-30))
            assert reply["bootstraps"] == 1
            print(out, flush=True)
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)
        shutil.rmtree(directory, ignore_errors=True)
    import resource

    out["parent_peak_GB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return out


def deep_mlp(n: int = 8) -> dict[str, float | str]:
    """The issue's 6-hidden-layer ReLU MLP on the test ring, in process."""
    import torch

    from bench.common import standardized_cancer, train_classifier
    import he_compute
    from he_compute.schemes.ckks import client as C
    from he_compute.schemes.ckks import server as S

    os.environ["HEC_CKKS_INSECURE_TEST_PARAMS"] = "1"
    X_tr, X_te, y_tr, _ = standardized_cancer()
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    width = 30
    for _ in range(6):
        layers += [torch.nn.Linear(width, 16), torch.nn.ReLU()]
        width = 16
    net = train_classifier(torch.nn.Sequential(*layers, torch.nn.Linear(16, 2)), X_tr, y_tr, 150, 1e-2)
    t = time.perf_counter()
    bundle = he_compute.compile(net, X_tr, scheme="ckks", activation_degree=15)
    compile_s = time.perf_counter() - t
    cl = C.SCHEME.open_client(bundle.manifest, bundle.client, None)
    t = time.perf_counter()
    keys = cl.keygen()
    keygen = time.perf_counter() - t
    srv = S.SCHEME.open_server(bundle.manifest, bundle.server)
    k = srv.load_keys(keys.evaluation)
    X = X_te[:n]
    outs, evals, boots = [], [], 0
    for count, payload in cl.encrypt(X):
        t = time.perf_counter()
        r = srv.evaluate(payload, k)
        evals.append(time.perf_counter() - t)
        boots = srv.bootstraps
        outs.append(cl.decrypt(r, count))
    y = np.concatenate(outs)[:n]
    sim = C.SCHEME.simulate(bundle.manifest, bundle.client, bundle.server, X)
    with torch.no_grad():
        ref = net(torch.tensor(X, dtype=torch.float32)).numpy().astype(np.float64)
    return {"depth": bundle.manifest["ckks"]["multiplicative_depth"], "compile_s": compile_s, "keygen_s": keygen,
            "eval_key_MB": len(keys.evaluation) / 1e6, "s_per_ct": float(np.mean(evals)),
            "samples_per_ct": bundle.manifest["ckks"]["samples_per_ciphertext"], "bootstraps": boots,
            "err_plan": float(np.abs(y - sim).max()), "err_clear": float(np.abs(y - ref).max()),
            "predicted": bundle.manifest["ckks"]["predicted_max_error"],
            "agree_plan": float((y.argmax(1) == sim.argmax(1)).mean()),
            "agree_clear": float((y.argmax(1) == ref.argmax(1)).mean())}


# The 128-bit configurations measured, one at a time: the engine's own (keys of 3.7 GB) and OpenFHE's precise
# one (59-bit scale; 9 key-switching digits keep log2 QP within N=2**16's bound, at about 2.5x the keys).
SECURE = [("engine: scale 50, first prime 57, dnum 3", {"dnum": 3, "scale_bits": 50, "first_mod_bits": 57}, 8),
          ("precise: scale 59, first prime 60, dnum 9", {"dnum": 9, "scale_bits": 59, "first_mod_bits": 60}, 14)]


def secure_lines(configs: list[tuple[str, dict[str, int], int]]) -> list[str]:
    """The 128-bit table, one row per configuration that this machine's free memory allows."""
    lines = ["# One bootstrap at 128-bit (HEStd_128_classic), OpenFHE 1.6.1", "",
             f"`python -m bench.bench_ckks_boot --secure`, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
             f"load {os.getloadavg()[0]:.1f} on 2 cores. 256 slots, level budget [3, 3], 4 levels after a bootstrap, "
             "uniform ternary secret. Keys are made by one process and written to files; a second process that "
             "holds only the public keys reads them and bootstraps (one OpenFHE process of 128-bit keys at a time). "
             "Bits: -log2 of the largest error of the bootstrap's output against its clear input in [0, 1]. "
             "Bootstrap seconds exclude the squares that use up the input's levels first.", "",
             "| parameters | N | log2 Q / QP | keygen s | eval keys MB (relin + rotation/bootstrap) | key load s | "
             "bootstrap s, 1 thread | 2 threads | bits after | peak GB keygen / worker / client |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, cfg, need in configs:
        free = _free_gb()
        if free < need:
            lines.append(f"| {name} | not run: {free:.1f} GB free, it needs about {need} GB | | | | | | | | |")
            continue
        r = secure_bootstrap(**cfg)  # type: ignore[arg-type]
        lines.append(f"| {name} | {r['ring']} | {r['log_q']} / {r['log_qp']} | {r['keygen_s']:.0f} | "
                     f"{r['relin_MB'] + r['rotation_MB']:.0f} ({r['relin_MB']:.0f} + {r['rotation_MB']:.0f}) | "
                     f"{r['load_s_1']:.0f} | {r['boot_s_1']:.1f} | {r['boot_s_2']:.1f} | "
                     f"{min(r['bits_1'], r['bits_2']):.1f} | {r['keygen_peak_GB']:.1f} / "
                     f"{max(r['worker_peak_GB_1'], r['worker_peak_GB_2']):.1f} / {r['client_peak_GB']:.2f} |")
        print(lines[-1], flush=True)
    return lines


def main(argv: list[str]) -> int:
    """``--secure``: the 128-bit table alone (bench/results/ckks_boot_secure.md); ``--test-only``: the test
    ring's deep MLP alone (bench/results/ckks_boot.md); neither: both."""
    if "--secure" not in argv:
        lines = ["# The bootstrapping CKKS engine (OpenFHE 1.6.1, CPython 3.10 child), one thread", "",
                 f"`python -m bench ckks_boot`, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
                 f"load {os.getloadavg()[0]:.1f}. The 128-bit bootstrap: ckks_boot_secure.md.", ""]
        d = deep_mlp()
        lines += ["## 6-hidden-layer ReLU MLP, test ring N=2**12 (no security), degree-15 ReLU polynomials", "",
                  "| depth | compile s | keygen s | eval keys MB | s / ciphertext | samples / ciphertext | bootstraps "
                  "/ ciphertext | max err vs plan | max err vs clear (predicted) | argmax agree plan / clear |",
                  "|---|---|---|---|---|---|---|---|---|---|",
                  f"| {d['depth']} | {d['compile_s']:.0f} | {d['keygen_s']:.1f} | {d['eval_key_MB']:.0f} | "
                  f"{d['s_per_ct']:.1f} | {d['samples_per_ct']} | {d['bootstraps']} | {d['err_plan']:.3g} | "
                  f"{d['err_clear']:.3g} ({d['predicted']:.3g}) | {d['agree_plan']:.0%} / {d['agree_clear']:.0%} |", ""]
        RESULTS.write_text("\n".join(lines))
        print("\n".join(lines), flush=True)
    if "--test-only" not in argv:
        lines = secure_lines(SECURE)
        SECURE_RESULTS.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
