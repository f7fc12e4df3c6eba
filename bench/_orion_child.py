"""Runs inside ``.venv-orion`` (``make orion-env``), started by :mod:`bench.bench_orion`: Orion 1.0.2 on the
weights the main environment trained, one sample per ciphertext, as Orion's own examples do.

Arguments: an ``.npz`` holding the layers' weights (``w0``, ``b0``, ...), the test inputs ``X`` and the float
model's outputs ``clear`` on them; a JSON file with the layer list and Orion's configuration; the path of the
JSON result to write.  Nothing here imports he_compute: this environment has another scipy and torchvision.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import orion
import orion.nn as on


def build(layers: list[dict], weights) -> torch.nn.Module:
    """The same network as the main environment's, from Orion's layers, with its trained weights."""
    mods: list[torch.nn.Module] = []
    k = 0
    for layer in layers:
        kind = layer["kind"]
        if kind == "linear":
            m = on.Linear(layer["in"], layer["out"])
        elif kind == "conv":
            m = on.Conv2d(layer["in"], layer["out"], layer["kernel"], stride=layer["stride"],
                          padding=layer["padding"])
        elif kind == "relu":
            mods.append(on.ReLU(degrees=layer["degrees"]))
            continue
        elif kind == "flatten":
            mods.append(on.Flatten())
            continue
        else:
            raise SystemExit(f"unknown layer kind {kind!r}")
        with torch.no_grad():
            m.weight.copy_(torch.tensor(weights[f"w{k}"]))
            m.bias.copy_(torch.tensor(weights[f"b{k}"]))
        k += 1
        mods.append(m)

    class Net(on.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(*mods)

        def forward(self, x):
            return self.body(x)

    net = Net()
    net.eval()  # Orion's Module.eval returns nothing
    return net


def main() -> None:
    weights_path, spec_path, out_path = sys.argv[1:4]
    data = np.load(weights_path)
    spec = json.loads(open(spec_path).read())
    torch.manual_seed(0)
    net = build(spec["layers"], data)
    X = torch.tensor(data["X"], dtype=torch.float32)
    fit_X = torch.tensor(data["fit_X"], dtype=torch.float32)
    with torch.no_grad():
        own_clear = net(X).numpy()  # Orion's modules in clear mode: must equal the main environment's model
    orion.init_scheme(spec["config"])
    t = time.perf_counter()
    # A loader of batch size 1, as Orion's examples fit: with a plain tensor, Orion packs the whole batch as
    # one input and its matrices grow with the batch.
    orion.fit(net, DataLoader(TensorDataset(fit_X, torch.zeros(len(fit_X))), batch_size=1))
    input_level = orion.compile(net)
    compile_s = time.perf_counter() - t
    net.he()
    outs, seconds = [], []
    for i in range(len(X)):
        t = time.perf_counter()
        ctxt = orion.encrypt(orion.encode(X[i:i + 1], input_level))
        out = net(ctxt)
        outs.append(out.decrypt().decode().reshape(-1)[: spec["outputs"]].numpy())
        seconds.append(time.perf_counter() - t)
    fhe = np.stack(outs).astype(np.float64)
    clear = data["clear"]
    result = {
        "samples": len(X), "compile_s": compile_s, "seconds_per_sample": float(np.median(seconds)),
        "max_error": float(np.abs(fhe - clear).max()),
        "agreement": float((fhe.argmax(1) == clear.argmax(1)).mean()),
        "clear_mismatch": float(np.abs(own_clear - clear).max()),
        "input_level": int(input_level) if input_level is not None else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
