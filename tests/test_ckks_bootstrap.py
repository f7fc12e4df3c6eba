"""The bootstrapping CKKS engine (OpenFHE): deep models that one SEAL chain cannot hold run end to end.

The model is the issue's own: a 6-hidden-layer ReLU MLP (30 -> 16 x 6 -> 2) on sklearn's breast cancer data,
which the TenSEAL engine accepted at depth 29 and then failed on every attempt ("result ciphertext is
transparent").  Tests use the engine's small test ring (``HEC_CKKS_INSECURE_TEST_PARAMS=1``: N=2**12, no
security), which bootstraps in seconds; the 128-bit path is measured by ``python -m bench ckks_boot``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import he_compute
from he_compute.errors import HECError, SecurityError
from he_compute.formats.ciphertexts import chunk_name
from he_compute.formats.task import Task
from he_compute.schemes.ckks import ofhe
from he_compute.transport import blobs, queue
from he_compute.transport.queue import JobState
from he_compute.worker.loop import Worker
from he_compute.worker.sandbox import Limits, Sandbox, boot_limits
from torch_support import clear, standardized_cancer, train

try:
    ofhe.interpreter()
    _MISSING = ""
except HECError as exc:
    _MISSING = str(exc)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(_MISSING), reason=_MISSING)]


@pytest.fixture(scope="module")
def test_params():
    patch = pytest.MonkeyPatch()
    patch.setenv("HEC_CKKS_INSECURE_TEST_PARAMS", "1")
    yield
    patch.undo()


@pytest.fixture(scope="module")
def deep(test_params, tmp_path_factory):
    X_tr, X_te, y_tr, _ = standardized_cancer()
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    width = 30
    for _ in range(6):
        layers += [torch.nn.Linear(width, 16), torch.nn.ReLU()]
        width = 16
    net = train(torch.nn.Sequential(*layers, torch.nn.Linear(16, 2)), X_tr, y_tr, epochs=150)
    bundle = he_compute.compile(net, X_tr, scheme="ckks", activation_degree=15)
    client = he_compute.Client.keygen(bundle, tmp_path_factory.mktemp("boot") / "keys")
    return net, bundle, client, X_te


def _flip(data: bytes, at: int = 16) -> bytes:
    """``data`` with 64 bytes inverted from ``at`` of its last OpenFHE object (its serialization's header and
    first lengths: flipped coefficients would only make another valid ciphertext, which no worker can tell)."""
    from he_compute.schemes.ckks.payload import unpack

    start = len(data) - len(unpack(data, role=_role(data)).ciphertexts[-1]) + at
    b = bytearray(data)
    for i in range(start, start + 64):
        b[i] ^= 0xFF
    return bytes(b)


def _role(data: bytes) -> str:
    return next(r for r in ("input", "keys") if f'"role": "{r}"'.encode() in data[:400])


TAMPER = {"honest": lambda d: d, "truncated": lambda d: d[: len(d) // 2], "flipped": _flip}


@pytest.fixture(scope="module")
def sandboxed(deep, tmp_path_factory):
    """One honest job and two hostile ones (a truncated and a flipped ciphertext) for one sandboxed worker,
    which opens the model once; returns (store, {name: job}, seconds the worker ran)."""
    _, bundle, client, X_te = deep
    tmp = tmp_path_factory.mktemp("sandboxed")
    q = queue.connect(f"sqlite://{tmp / 'queue.db'}", lease_s=600)
    store = blobs.connect(f"file://{tmp / 'blobs'}")
    enc = client.encrypt(X_te[:4])  # one ciphertext: the test ring holds four samples
    evk = he_compute.read_evaluation_keys(client.evaluation_keys_path)
    part = bundle.server_part()
    server, keys = store.put(part.to_bytes()), store.put(evk.to_bytes())
    ids = {}
    for name, tamper in TAMPER.items():
        data = tamper(enc.sections[chunk_name(0)])
        task = Task("ckks", part.meta["model_id"], server, keys, evk.meta["key_id"], (store.put(data),),
                    (enc.meta["chunks"][0],))
        ids[name] = q.submit(task.to_json(), max_attempts=1)
    start = time.monotonic()
    # A base address space of 1 GiB, below what OpenFHE's process needs: the bootstrapping bundle's child gets
    # the limits its keys' size calls for (boot_limits), or the honest job fails.
    sandbox = Sandbox(Limits(memory=1 << 30))
    Worker(q, store, executor=sandbox, log=lambda m: None).run(burst=True)
    sizes = len(store.get(keys))
    return tmp / "blobs", {name: q.status(i) for name, i in ids.items()}, store, time.monotonic() - start, \
        (sandbox, sizes)


def test_the_deep_relu_mlp_that_failed_on_tenseal_runs_in_a_sandboxed_worker(deep, sandboxed):
    net, bundle, client, X_te = deep
    ckks = bundle.manifest["ckks"]
    assert ckks["engine"] == "openfhe-bootstrap"  # chosen automatically: depth 28 is past one good SEAL chain
    assert ckks["bootstraps_per_ciphertext"] >= 4 and bundle.manifest["security_level"] == "none (test parameters)"
    _, jobs, store, _, (sandbox, key_bytes) = sandboxed
    job = jobs["honest"]
    assert job.state is JobState.DONE, job.error
    granted = boot_limits(Limits(memory=1 << 30), key_bytes)
    assert granted.memory == 4 * key_bytes + (8 << 30)
    assert any(f"{granted.memory >> 20} MiB address space" in p for p in sandbox.protections), sandbox.protections
    X = X_te[:4]
    assert ckks["postprocess"] is None  # the net ends in its logits: they come back as they are
    y = client._backend.decrypt(store.get(job.result["outputs"][0]), 4)
    sim = he_compute.simulate(bundle, X)
    assert np.abs(y - sim).max() < 0.05  # CKKS noise and the bootstraps, on top of the plan's polynomials
    assert np.abs(y - clear(net, X)).max() <= ckks["predicted_max_error"]  # the compiler's predicted bound
    assert (y.argmax(1) == sim.argmax(1)).all()


@pytest.mark.parametrize("name", ["truncated", "flipped"])
def test_hostile_ciphertexts_end_in_one_line_errors_inside_the_sandbox(sandboxed, name):
    _, jobs, _, seconds, _ = sandboxed
    job = jobs[name]
    assert job.state is JobState.FAILED and job.error and "\n" not in job.error, job.error
    assert seconds < 300


def test_the_worker_never_receives_the_secret_key(deep, sandboxed):
    _, bundle, client, X_te = deep
    from he_compute.client import keys as key_files
    from he_compute.schemes.ckks.payload import unpack

    secret = key_files.read_secret(client.keys_dir, client.info)

    sk = unpack(secret, role="keys").ciphertexts[1]  # [context, secret key]
    assert len(sk) > 1000
    evk = he_compute.read_evaluation_keys(client.evaluation_keys_path).to_bytes()
    assert sk[-1000:] not in evk  # the last 1,000 bytes of the serialized secret key: its coefficients, not the shared parameters
    blob_dir = sandboxed[0]
    received = [p.read_bytes() for p in blob_dir.rglob("*") if p.is_file()]  # all the worker was given
    assert len(received) >= 4 and not any(sk[-1000:] in data for data in received)
    assert any(sk[-1000:] in data for data in [secret])  # positive control: the window is a real marker


def test_a_worker_refuses_test_parameters_without_the_test_setting(deep, monkeypatch):
    _, bundle, _, _ = deep
    monkeypatch.delenv("HEC_CKKS_INSECURE_TEST_PARAMS")
    with pytest.raises(SecurityError, match="WITHOUT 128-bit security"):
        he_compute.Evaluator(bundle.server_part())


@pytest.mark.parametrize("what", ["truncated", "flipped", "oversized"])
def test_hostile_evaluation_keys_end_in_one_line_errors(deep, what):
    from he_compute.schemes.ckks.boot import BootServer
    from he_compute.schemes.ckks.payload import Payload, pack, unpack

    _, bundle, client, _ = deep
    keys = unpack(he_compute.read_evaluation_keys(client.evaluation_keys_path).sections["keys"], role="keys")
    parts = list(keys.ciphertexts)
    if what == "truncated":
        parts[2] = parts[2][: len(parts[2]) // 2]
    elif what == "flipped":
        parts[0] = bytes(b ^ 0xFF if 16 <= i < 80 else b for i, b in enumerate(parts[0]))
    else:
        parts[1] = parts[1][:8] + b"\xff" * 8 + parts[1][16:]  # a length field claiming 2**64 bytes
    server = BootServer(bundle.manifest, bundle.server)
    start = time.monotonic()
    try:
        with pytest.raises(HECError) as err:
            server.load_keys(pack(Payload("keys", "single", 1, parts, keys.extra)))
    finally:
        server.proc.close()
    assert "\n" not in str(err.value) and time.monotonic() - start < 60


def test_hec_compile_asks_for_the_bootstrapping_engine_and_the_bundle_says_so(test_params, tmp_path):
    from click.testing import CliRunner

    from he_compute.cli import main

    X_tr, _, y_tr, _ = standardized_cancer()
    torch.manual_seed(0)
    net = train(torch.nn.Sequential(torch.nn.Linear(30, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), X_tr, y_tr, 30)
    torch.onnx.export(net, torch.zeros(1, 30), tmp_path / "mlp.onnx", input_names=["x"], output_names=["y"])
    np.save(tmp_path / "calib.npy", X_tr)
    args = ["compile", tmp_path / "mlp.onnx", "--scheme", "ckks", "--calibration", tmp_path / "calib.npy",
            "-o", tmp_path / "m.hec", "--no-accuracy", "--activation-degree", "7"]
    shallow = CliRunner().invoke(main, [str(a) for a in args])
    assert shallow.exit_code == 0, shallow.output
    assert "engine" not in he_compute.load_bundle(tmp_path / "m.hec").manifest["ckks"]  # TenSEAL stays the default
    deep = CliRunner().invoke(main, [str(a) for a in [*args, "--engine", "bootstrap"]])
    assert deep.exit_code == 0, deep.output
    assert "bootstrap(s) per ciphertext" in deep.output and "none (test parameters)" in deep.output
    manifest = he_compute.load_bundle(tmp_path / "m.hec").manifest
    assert manifest["ckks"]["engine"] == "openfhe-bootstrap" and manifest["security_level"] == "none (test parameters)"


def test_a_worker_without_the_openfhe_environment_says_so_in_one_line(deep, monkeypatch, tmp_path):
    _, bundle, _, _ = deep
    monkeypatch.setenv("HEC_OPENFHE_PYTHON", str(tmp_path / "no-such-python"))
    with pytest.raises(HECError, match=r"^this machine has no OpenFHE environment .* run `make openfhe-env`") as err:
        he_compute.Evaluator(bundle.server_part())
    assert "\n" not in str(err.value)


def test_the_sandbox_lets_the_openfhe_interpreter_run_and_nothing_more(tmp_path):
    """Landlock's exec allow-list gains exactly the OpenFHE interpreter; reads gain its environment and base
    installation, never a home directory or the root as a whole."""
    from pathlib import Path

    from he_compute.worker import confine

    programs, dirs = confine.openfhe_environment()
    python = str(ofhe.interpreter().resolve())
    assert programs == [python] and python in confine.executables()
    assert all(Path(d) not in (Path("/"), Path.home(), Path("/root")) for d in dirs)
    assert set(dirs) <= set(confine.readable_paths(str(tmp_path)))


def test_sandbox_limits_scale_with_bootstrapping_keys_up_to_their_cap(monkeypatch):
    """128-bit bootstrapping keys (gigabytes) get an address space and file size from their size, never past
    HEC_SANDBOX_BOOT_MEMORY_MB; keys beyond it are refused in one line that names the setting."""
    from he_compute.errors import LimitExceeded

    base = Limits(memory=16 << 30)
    assert boot_limits(base, 1 << 20) == base  # small keys: the defaults stand
    big = boot_limits(base, 6 << 30)
    assert (big.memory, big.fsize, big.max_blob) == (32 << 30, (6 << 30) + (64 << 20), (6 << 30) + (64 << 20))
    monkeypatch.setenv("HEC_SANDBOX_BOOT_MEMORY_MB", str(20 << 10))
    assert boot_limits(base, 6 << 30).memory == 20 << 30  # capped
    with pytest.raises(LimitExceeded, match=r"HEC_SANDBOX_BOOT_MEMORY_MB \(20480 MiB\) allows: raise it$"):
        boot_limits(base, 21 << 30)


_FORGE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import openfhe as o
import ofhe_child as C
p = json.loads(sys.argv[2])
e = C.Engine()
honest = e._gen(p)
# The same ring, primes and log2 Q, but one key-switching digit: P grows to the size of Q.
forged = e._gen(dict(p, security=0, ring_dim=honest.GetRingDimension(), dnum=1))
o.SerializeToFile(sys.argv[3] + "/honest", honest, o.BINARY)
o.SerializeToFile(sys.argv[3] + "/forged", forged, o.BINARY)
print(json.dumps([e._describe(honest), e._describe(forged)]))
"""


def test_a_worker_refuses_128_bit_keys_whose_special_primes_put_log_qp_past_the_bound(deep, tmp_path):
    """The attack: keys sent for a 128-bit bundle under a context of the bundle's ring and log2 Q but with one
    key-switching digit, so that the special modulus P is as large as Q: log2 QP, which the HE Standard's
    table bounds, is past 128-bit security for the ring.  The old check compared log2 Q alone and let it in."""
    import copy
    import json
    import subprocess

    from he_compute.errors import KeyMismatchError
    from he_compute.schemes.ckks.boot import BootServer
    from he_compute.schemes.ckks.ofhe_child import MAX_LOGQP_128
    from he_compute.schemes.ckks.payload import Payload, pack

    params = {"security": 128, "ring_dim": 0, "slots": 256, "scale_bits": 50, "first_mod_bits": 60, "levels": 1,
              "level_budget": [1, 1], "secret": "uniform", "dnum": 3}
    made = subprocess.run([str(ofhe.interpreter()), "-I", "-c", _FORGE, str(ofhe.CHILD.parent), json.dumps(params),
                           str(tmp_path)], capture_output=True, text=True, timeout=600, check=True)
    honest, forged = json.loads(made.stdout)
    assert (forged["ring_dim"], forged["log_q"]) == (honest["ring_dim"], honest["log_q"])  # all the old check saw
    assert forged["log_q"] <= MAX_LOGQP_128[forged["ring_dim"]] < forged["log_qp"]
    assert honest["log_qp"] <= MAX_LOGQP_128[honest["ring_dim"]]
    _, bundle, _, _ = deep
    manifest = copy.deepcopy(bundle.manifest)
    manifest["ckks"]["openfhe"] = params
    server = BootServer(manifest, bundle.server)
    errors = {}
    try:
        for name in ("forged", "honest"):
            keys = pack(Payload("keys", "single", 1, [(tmp_path / name).read_bytes(), b"relin", b"rotation"],
                                {"parts": ["context", "relin", "rotation"]}))
            with pytest.raises(KeyMismatchError) as err:
                server.load_keys(keys)
            errors[name] = str(err.value)
    finally:
        server.proc.close()
    assert f"log2 QP={forged['log_qp']}" in errors["forged"] and "not the 128-bit context" in errors["forged"]
    assert "\n" not in errors["forged"]
    assert "not readable" in errors["honest"]  # control: the honest context passes, its fake keys do not


def test_composite_relu_runs_on_the_bootstrapping_engine_and_matches_the_clear_model(test_params):
    """relu='composite' with engine='bootstrap' was refused in one line; the sign stages now run on this
    engine, bootstrapping between stages where the levels run out, and decrypt to the plan and the clear model."""
    import json

    from he_compute.schemes.ckks import client as C
    from he_compute.schemes.ckks import server as S

    X_tr, X_te, y_tr, _ = standardized_cancer()
    torch.manual_seed(0)
    net = train(torch.nn.Sequential(torch.nn.Linear(30, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), X_tr, y_tr, 60)
    bundle = he_compute.compile(net, X_tr, scheme="ckks", relu="composite", engine="bootstrap", max_error=0.05)
    ckks = bundle.manifest["ckks"]
    plan = json.loads(bundle.server["plan.json"])
    stages = [la["stages"] for la in plan["layers"] if la["op"] == "relu_composite"]
    assert ckks["engine"] == "openfhe-bootstrap" and len(stages) == 1 and len(stages[0]) >= 2
    cl = C.SCHEME.open_client(bundle.manifest, bundle.client, None)
    keys = cl.keygen()
    srv = S.SCHEME.open_server(bundle.manifest, bundle.server)
    loaded = srv.load_keys(keys.evaluation)
    X = X_te[:4]  # one ciphertext at the test ring
    ((count, payload),) = cl.encrypt(X)
    y = cl.decrypt(srv.evaluate(payload, loaded), count)
    assert srv.bootstraps >= 1  # the composite is deeper than what one bootstrap leaves
    sim, ref = he_compute.simulate(bundle, X), clear(net, X)
    assert np.abs(y - sim).max() < 0.05  # CKKS noise and the bootstraps on top of the plan's composite
    assert np.abs(y - ref).max() <= ckks["predicted_max_error"] + 0.05
    assert (y.argmax(1) == ref.argmax(1)).all()
