"""The architecture holds: workers cannot reach secret keys, the public API is what __all__ says."""

from __future__ import annotations

import subprocess
import sys

import he_compute

SECRET_SIDE = ["he_compute.client", "he_compute.keys", "he_compute.schemes.tfhe.client", "he_compute.schemes.ckks.client"]
WORKER_SIDE = ["he_compute.evaluator", "he_compute.schemes.tfhe.server", "he_compute.worker"]


def test_worker_side_never_loads_the_secret_key_code():
    code = (
        "import importlib, importlib.util, sys\n"
        f"for m in {WORKER_SIDE!r}:\n"
        "    if importlib.util.find_spec(m) is not None:\n"
        "        importlib.import_module(m)\n"
        f"print(sorted(m for m in {SECRET_SIDE!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_control_the_client_side_does_load_it():
    """Positive control for the check above."""
    code = "import he_compute.client, sys; print('he_compute.keys' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"


def test_public_names_resolve_and_are_documented():
    for name in he_compute.__all__:
        obj = getattr(he_compute, name)
        if callable(obj):
            assert obj.__doc__, f"{name} lacks a docstring"


def test_importing_the_cli_does_not_import_concrete_or_tenseal():
    code = "import sys, he_compute.cli; print([m for m in ('concrete', 'tenseal', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
