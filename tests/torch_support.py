"""The torch side of the CKKS tests: one data split, one training loop, one clear reference.

Every test that compares an encrypted torch model with the clear one trains it here, the same way, so
that a threshold tuned in one file means the same in another.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler


def standardized_cancer():
    """Breast cancer, split 80/20 (stratified, seeded) and standardized on the training part."""
    X, y = load_breast_cancer(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_tr)
    return scaler.transform(X_tr), scaler.transform(X_te), y_tr, y_te


class Square(torch.nn.Module):
    """``x * x``: exported to ONNX as Mul(x, x)."""

    def forward(self, x):
        return x * x


def train(net, X, y, epochs=60, lr=1e-2):
    """Full-batch Adam on cross-entropy, seeded; returns ``net`` in eval mode."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    Xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()
    return net.eval()


def clear(net, X):
    """The clear float model's outputs, float64."""
    with torch.no_grad():
        return net(torch.tensor(X, dtype=torch.float32)).numpy().astype(np.float64)
