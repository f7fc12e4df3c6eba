"""Every shared fixture, once: real sklearn data, compiled bundles and keys, and the services.

Compiling and key generation cost seconds per model, so every test module shares the same TFHE
bundles and key directories; the session starts one redis-server, one moto S3 server and one set
of TLS certificates, whichever tests ask first.  Helpers (no fixtures) live in ``*_support.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from he_compute.commands import keep_exit_status
from queue_support import LEASE, RedisServer, free_port
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split


# `make test-fast` leaves out the tests marked slow: these whole modules (FHE evaluation in worker processes,
# neural networks compiled for TFHE or deep ones for CKKS, the notebooks: 30-250 s each on 2 cores, measured
# with pytest --durations=0) and the tests marked one by one.  `make test` runs everything.
SLOW_MODULES = {"test_ckks_engine", "test_coordinator_scale", "test_notebooks", "test_run", "test_sandbox",
                "test_tfhe_circuit_check", "test_tfhe_models", "test_verify_agreement", "test_verify_cheaters",
                "test_worker", "test_worker_faults", "test_worker_signals"}
# Also slow, to keep `make test-fast` under 3 minutes of CPU: modules that compile CKKS networks, generate TFHE
# keys for their own models, or run FHE jobs through workers or `hec` processes (the first 45% of the old fast
# tier alone took 469 s of CPU; the rest took 197 s with the CKKS zstd bombs).  test_cli keeps the small TFHE
# models' end-to-end path in the fast tier.
SLOW_MODULES |= {"test_api", "test_batch_status", "test_canaries_hidden", "test_ckks", "test_ckks_relu",
                 "test_ckks_security", "test_client_hostile", "test_coordinator_e2e", "test_everyday_api",
                 "test_everyday_cli", "test_everyday_estimate", "test_everyday_onnx_ml", "test_guide",
                 "test_hostile_results", "test_import_concrete", "test_newuser", "test_newuser_replicas",
                 "test_run_resume", "test_sandbox_escape", "test_secrets", "test_verify_canaries",
                 "test_wire_compression"}
SLOW_TESTS = {"test_verify_audit::test_the_redis_store_detects_a_rewrite",
              "test_verify_audit::test_a_run_keeps_its_verified_results_when_the_audit_log_was_tampered_with",
              "test_errors_one_line::test_a_revoked_worker_stops_with_one_line_instead_of_retrying_for_ever",
              "test_errors_one_line::test_a_command_failing_after_an_fhe_circuit_ran_in_its_process_exits_non_zero",
              "test_ckks_limits::test_only_known_key_errors_become_key_mismatch",
              "test_sandbox_limits::test_compilation_past_its_cpu_budget_kills_only_the_child",
              "test_sandbox_limits::test_a_child_that_writes_without_end_leaves_a_bounded_log"}
"""FHE tests marked slow one by one (``module::function``) in modules whose other tests are quick."""


def pytest_collection_modifyitems(items):
    for item in items:
        name = getattr(item, "originalname", item.name)
        if item.module.__name__ in SLOW_MODULES or f"{item.module.__name__}::{name}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def private_hec_home(tmp_path_factory):
    """The key registry and per-machine cost measurements go to a temporary HEC_HOME, never the user's ~/.hec."""
    patch = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("hec-home")
    patch.setenv("HEC_HOME", str(home))
    yield home
    patch.undo()


@pytest.fixture(scope="session")
def cancer():
    """Breast-cancer data: (X_train, X_test, y_train, y_test)."""
    X, y = load_breast_cancer(return_X_y=True)
    return train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)


def _fit_model(kind: str, X, y):
    from concrete.ml.sklearn import DecisionTreeClassifier, LogisticRegression, NeuralNetClassifier

    if kind == "linear":
        return LogisticRegression(n_bits=8).fit(X, y)
    if kind == "tree":
        return DecisionTreeClassifier(max_depth=4, n_bits=6, random_state=0).fit(X, y)
    if kind == "nn":
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(X)
        model = NeuralNetClassifier(
            module__n_layers=2, module__n_hidden_neurons_multiplier=1, module__n_w_bits=4, module__n_a_bits=4,
            module__n_accum_bits=12, max_epochs=40, lr=0.01, verbose=0,
        )
        import torch

        torch.manual_seed(0)
        model.fit(scaler.transform(X).astype(np.float32), y)
        model.scaler_ = scaler
        return model
    raise ValueError(kind)


class Compiled:
    """A fitted Concrete ML model, its bundle on disk and a client with keys."""

    def __init__(self, model, bundle, bundle_path, client, prepare):
        self.model, self.bundle, self.bundle_path, self.client, self.prepare = model, bundle, bundle_path, client, prepare


@pytest.fixture(scope="session")
def compiled(cancer, tmp_path_factory):
    """compiled(kind) -> Compiled, cached per kind ("linear", "tree", "nn")."""
    import he_compute

    X_train, _, y_train, _ = cancer
    cache: dict[str, Compiled] = {}

    def get(kind: str) -> Compiled:
        if kind not in cache:
            model = _fit_model(kind, X_train, y_train)
            prepare = (lambda X: model.scaler_.transform(X)) if kind == "nn" else (lambda X: X)
            bundle = he_compute.compile(model, prepare(X_train), scheme="tfhe")
            root = tmp_path_factory.mktemp(kind)
            bundle.save(root / "model.hec")
            client = he_compute.Client.keygen(he_compute.load_bundle(root / "model.hec"), root / "keys")
            cache[kind] = Compiled(model, bundle, root / "model.hec", client, prepare)
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def tiny_mlp(cancer):
    """A 30-4-2 ReLU torch MLP trained briefly on standardized breast-cancer data: (net, X_train, X_test)."""
    import torch
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, _ = cancer
    scaler = StandardScaler().fit(X_train)
    Xtr, Xte = scaler.transform(X_train), scaler.transform(X_test)
    from torch_support import train

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(30, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    return train(net, Xtr, y_train, 60, lr=0.05), Xtr, Xte


# ---- services and working directories -----------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def q(request, tmp_path):
    """A queue engine of each kind, with short leases (``queue_support.LEASE``)."""
    from he_compute.transport import queue

    url = f"sqlite://{tmp_path / 'queue.db'}" if request.param == "sqlite" else request.getfixturevalue("redis_url")
    with queue.connect(url, lease_s=LEASE) as jq:
        yield jq


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh current directory with no queue named in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HEC_QUEUE", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    """``(ca.pem, cert.pem, key.pem)`` for 127.0.0.1 and localhost, signed by a throwaway CA (trustme)."""
    import trustme

    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    for pem in cert.cert_chain_pems[1:]:
        with open(d / "cert.pem", "ab") as fh:
            fh.write(pem.bytes())
    return d / "ca.pem", d / "cert.pem", d / "key.pem"


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


def pytest_unconfigure(config):
    """Leave with pytest's own status when tests failed: Concrete's exit handler ends a process in which an FHE
    circuit has run with status 0, so a full run printed "3 failed" and ``make test`` still passed
    (``test_errors_one_line.py::test_a_command_failing_after_an_fhe_circuit_ran_in_its_process_exits_non_zero``
    shows the handler doing it)."""
    keep_exit_status(config.stash.get(_EXIT_STATUS, 0))

