"""One CKKS bootstrap on a CUDA GPU, for a machine that has one (``python -m bench gpu``).

OpenFHE, the bootstrapping engine's library, has no GPU build on the registry (its GPU route, FIDESlib, is C++
only).  The library this script measures is desilofhe with its CUDA wheel (``pip install desilofhe-cu12x``
or ``-cu13x`` to match the driver; see shared/research/ckks-libraries.md): its licence allows non-commercial
use only, so it can only ever be an optional extra, never the default.  The script makes every key on the
GPU, then bootstraps one ciphertext of inputs in [-1, 1] three times (the first run warms the device) and
reports seconds per bootstrap, precision in bits against the input, and the device memory in use with the
keys loaded (nvidia-smi); the same
on the CPU (one thread) for comparison.  It writes bench/results/gpu.md.

Where no CUDA device is visible (``nvidia-smi`` finds none) or the CUDA wheel is missing, it prints one line
saying so and exits 0 without writing anything: nothing is faked.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "gpu.md"


def _nvidia_smi(query: str) -> str:
    """The first device's answer to an ``nvidia-smi --query-gpu`` query ("" without one)."""
    if shutil.which("nvidia-smi") is None:
        return ""
    out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=60, check=False)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


def gpu_name() -> str | None:
    """The first CUDA device's name and memory, or None when there is none."""
    return _nvidia_smi("name,memory.total") or None


def bootstrap(mode: str, repeats: int = 3) -> dict[str, float]:
    """Keys and ``repeats`` bootstraps on ``mode`` ("gpu" or "cpu"); the fastest time and the worst error."""
    import numpy as np
    from desilofhe import Engine

    engine = Engine(use_bootstrap=True, mode=mode, **({"thread_count": 1} if mode == "cpu" else {}))
    t = time.perf_counter()
    secret = engine.create_secret_key()
    public = engine.create_public_key(secret)
    relin = engine.create_relinearization_key(secret)
    conj = engine.create_conjugation_key(secret)
    boot_key = engine.create_bootstrap_key(secret, stage_count=3)
    keygen = time.perf_counter() - t
    x = np.random.default_rng(0).uniform(-1, 1, engine.slot_count)
    ct = engine.encrypt(x, public, level=0)
    times, errors = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        out = engine.bootstrap(ct, relin, conj, boot_key)
        times.append(time.perf_counter() - t)
        errors.append(float(np.abs(engine.decrypt(out, secret) - x).max()))
    used = _nvidia_smi("memory.used") if mode == "gpu" else "-"
    return {"keygen_s": keygen, "boot_s": min(times[1:] or times), "bits": -float(np.log2(max(errors))),
            "slots": engine.slot_count, "memory": used}


def main(argv: list[str]) -> int:
    name = gpu_name()
    if name is None:
        print("bench gpu: no CUDA device on this machine (nvidia-smi finds none): not run")
        return 0
    try:
        import desilofhe  # noqa: F401
    except ImportError:
        print(f"bench gpu: {name} found, but no desilofhe CUDA wheel: pip install desilofhe-cu12x (non-commercial "
              "licence), then run again")
        return 0
    rows = [("gpu", bootstrap("gpu"))]
    if "--gpu-only" not in argv:
        rows.append(("cpu, 1 thread", bootstrap("cpu", repeats=1)))
    lines = ["# One CKKS bootstrap on a GPU (desilofhe, its CUDA wheel)", "",
             f"`python -m bench gpu`, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, device: {name}.", "",
             "| where | slots | keygen s | s / bootstrap | bits after | device memory in use |", "|---|---|---|---|---|---|"]
    lines += [f"| {where} | {r['slots']} | {r['keygen_s']:.1f} | {r['boot_s']:.3f} | {r['bits']:.1f} | {r['memory']} |"
              for where, r in rows]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
