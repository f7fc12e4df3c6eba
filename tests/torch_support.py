"""The torch side of the CKKS tests: one data split, one training loop, one clear reference.

Every test that compares an encrypted torch model with the clear one trains it here, the same way, so
that a threshold tuned in one file means the same in another.  The split and the loop are the
benchmarks' own (:mod:`bench.common`): a figure measured there is a model tested here.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.common import standardized_cancer, train_classifier

__all__ = ["Square", "clear", "standardized_cancer", "train"]


class Square(torch.nn.Module):
    """``x * x``: exported to ONNX as Mul(x, x)."""

    def forward(self, x):
        return x * x


def train(net, X, y, epochs=60, lr=1e-2):
    """Full-batch Adam on cross-entropy, seeded (:func:`bench.common.train_classifier`); ``net`` in eval mode."""
    return train_classifier(net, X, y, epochs, lr)


def clear(net, X):
    """The clear float model's outputs, float64."""
    with torch.no_grad():
        return net(torch.tensor(X, dtype=torch.float32)).numpy().astype(np.float64)
