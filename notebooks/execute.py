"""Execute the tutorials in place, so that the repository shows them with their outputs.

Usage (from the repository root): ``python notebooks/execute.py [NAME.ipynb ...]`` (``make notebooks``
runs it on all five).  Each notebook runs in a fresh ``python3`` kernel with ``notebooks/`` as its
working directory, as a reader would run it; the notebooks write scratch files to a temporary
directory only.  tests/test_notebooks.py uses :func:`execute` too, and checks that a fresh run prints
what the stored notebooks show.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent
# Where this checkout lies means nothing to a reader: a warning's location shows as he_compute/....
_CHECKOUT = str(NOTEBOOKS.parent) + "/"

# Terminal control sequences (colours, cursor moves) mean nothing in a stored notebook.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _clean_text(text: str) -> str:
    """Drop escape codes, and keep only what a terminal would finally show of a line redrawn with ``\\r``."""
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace(_CHECKOUT, "")  # `!cmd` output: CRLF
    return "".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r\n") else line
                   for line in text.splitlines(keepends=True))


def execute(path: Path, timeout: int = 600):
    """Run the notebook at ``path`` top to bottom and return it with clean outputs (the file is not touched)."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": str(path.parent)}})
    # A fresh he_compute state directory (key registry, cost measurements) for each run: nothing is written
    # to the user's ~/.hec, and every run prints the same first-use lines.  The prefix is the notebooks'
    # own scratch prefix, which tests/test_notebooks.py masks in paths.
    saved = os.environ.get("HEC_HOME")
    with tempfile.TemporaryDirectory(prefix="hec-tutorial-") as state:
        os.environ["HEC_HOME"] = state
        try:
            client.execute()  # raises CellExecutionError, with the cell and traceback, on the first failing cell
        finally:
            if saved is None:
                os.environ.pop("HEC_HOME", None)
            else:
                os.environ["HEC_HOME"] = saved
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = _clean_text(out["text"])
    return nb


def main(names: list[str]) -> int:
    paths = [NOTEBOOKS / n for n in names] if names else sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        t = time.perf_counter()
        nb = execute(path)
        nbformat.validate(nb)
        nbformat.write(nb, path)
        print(f"{path.name}: executed in {time.perf_counter() - t:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main([Path(a).name for a in sys.argv[1:]]))
