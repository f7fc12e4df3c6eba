"""Shared fixtures: real sklearn data, compiled bundles and keys, built once per session.

Compiling and key generation cost seconds per model, so every test module
shares the same TFHE bundles and key directories.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split


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
