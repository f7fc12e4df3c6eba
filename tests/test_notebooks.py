"""The Jupyter tutorials in ``notebooks/`` execute top to bottom, print what they promise and draw figures.

Each notebook runs in a fresh ``python3`` kernel (this interpreter: jupyter_client
starts kernels whose argv is ``python`` with ``sys.executable``), with
``notebooks/`` as its working directory, as a reader would run it.  The
notebooks write scratch files to a temporary directory only, which is checked
too: the ``notebooks/`` directory holds the same files after a run as before.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# Lines that key cells must print (substring match on the notebook's text outputs).
EXPECTED = {
    "01_quickstart.ipynb": ["agreement between encrypted and clear predictions: 100%",
                            "max |encrypted - clear| probability: 0.0"],
    "02_ckks_batch.ipynb": ["agreement between encrypted and clear predictions: 100%",
                            "samples per ciphertext: 4096"],
    "03_bring_your_own_model.ipynb": ["CKKS encrypted accuracy: 9",
                                      "TFHE agreement with the quantized model: 100%"],
    "04_scale_out.ipynb": ["agreement between encrypted and clear predictions: 100%",
                           "jobs done by 2 different workers", "redis-server stopped"],
    "05_pipeline.ipynb": ["agreement between encrypted and clear pipelines: 100%"],
}


def _text_outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "text/plain" in out.get("data", {}):
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def _figures(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def test_every_notebook_is_listed_and_committed_without_outputs():
    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(EXPECTED), "add new notebooks to EXPECTED in tests/test_notebooks.py"
    for name in found:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3", name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name}: clear the outputs before committing"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_executes(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    t = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on the first failing cell
    elapsed = time.perf_counter() - t
    text = _text_outputs(nb)
    for line in EXPECTED[name]:
        assert line in text, f"{name}: expected output {line!r} not found"
    assert _figures(nb) >= 1, f"{name}: no matplotlib figure was drawn"
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before, f"{name} left files in notebooks/"
    assert elapsed < 300, f"{name} took {elapsed:.0f}s"
