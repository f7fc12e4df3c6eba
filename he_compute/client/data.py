"""Reading user data (.npy / .csv) and writing model outputs, with one-line errors."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..files import PRIVATE, atomic_write

SUFFIXES = (".npy", ".csv")
CELL_SHOWN = 24
"""Characters of a bad CSV cell an error message shows."""


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .npy or .csv")
    return suffix


def _read_csv(path: Path) -> np.ndarray:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = [row for row in csv.reader(fh) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path} is not a readable CSV file: {exc}") from exc
    if rows and _is_header(rows[0]):
        rows = rows[1:]
    if not rows:
        raise InputError(f"{path} holds no data rows")
    width = len(rows[0])
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InputError(f"{path}: data row {i + 1} has {len(row)} columns, the first has {width}")
        for j, cell in enumerate(row):
            try:
                values[i, j] = float(cell)
            except ValueError:
                raise InputError(f"{path}: data row {i + 1}, column {j + 1}: {_cell(cell)} is not a number"
                                 f"{_separator_hint(cell)}") from None
    return values


def _cell(cell: str) -> str:
    """A cell as an error message shows it: quoted, and cut short (a wrongly separated row is one long cell)."""
    return repr(cell if len(cell) <= CELL_SHOWN else cell[: CELL_SHOWN - 3] + "...")


def _separator_hint(cell: str) -> str:
    for sep, name in ((";", "';'"), ("\t", "tabs"), ("|", "'|'")):
        if sep in cell:
            return f" (the file seems to separate values with {name}: save it comma-separated)"
    return ""


def _is_header(row: Sequence[str]) -> bool:
    """A first row in which no cell is a number is a header; a partly numeric row is data (and an error)."""
    for cell in row:
        try:
            float(cell)
            return False
        except ValueError:
            continue
    return True


def read_input(path: str | os.PathLike[str]) -> np.ndarray:
    """Load samples (rows) from ``.npy`` or ``.csv`` as float64."""
    p = Path(path)
    suffix = _suffix(p)
    if not p.is_file():
        raise InputError(f"{p} does not exist")
    if suffix == ".csv":
        return _read_csv(p)
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{p} is not a readable .npy file (object arrays are refused): {exc}") from exc
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{p} holds {arr.dtype} values; expected real numbers")
    return arr.astype(np.float64)


def validate_input(X: Any, input_shape: Sequence[int], source: str = "input") -> np.ndarray:
    """Check and reshape ``X`` to ``(n_samples, *input_shape)``; refuse NaN/inf and wrong sizes."""
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source} is not numeric: {exc}") from exc
    shape = tuple(int(d) for d in input_shape)
    n_per_sample = int(np.prod(shape))
    if arr.ndim == len(shape):  # a single sample
        arr = arr[np.newaxis, ...]
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise InputError(f"{source} holds no samples; expected rows of {n_per_sample} features")
    if arr.shape[1:] != shape:
        got = int(np.prod(arr.shape[1:]))
        if got != n_per_sample:
            raise InputError(
                f"{source} has {got} features per sample, the model expects {n_per_sample}: check the columns"
            )
        arr = arr.reshape((arr.shape[0], *shape))
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise InputError(f"{source}: sample {row} contains NaN or infinity; clean or impute it first")
    return arr


def write_output(path: str | os.PathLike[str], values: np.ndarray) -> None:
    """Write ``values`` (samples × outputs) atomically as ``.npy`` or ``.csv``, readable by the owner only."""
    p = Path(path)
    suffix = _suffix(p)
    arr = np.asarray(values)
    if suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        atomic_write(p, buf.getvalue(), PRIVATE)
    else:
        text = io.StringIO()
        np.savetxt(text, arr.reshape(arr.shape[0], -1), delimiter=",", fmt="%.10g")
        atomic_write(p, text.getvalue().encode(), PRIVATE)
