"""CKKS scheme backend: Microsoft SEAL through TenSEAL's ``sealapi`` (see :mod:`he_compute.schemes.base`).

The server part is a plan (``plan.json``, see :mod:`.plan`) plus ``.npy``
weights; payloads and evaluation keys use the framed format of :mod:`.payload`.
``server.py`` is the worker half, ``client.py`` the data-owner half.
Compile: :mod:`.frontend` -> :mod:`.approx` / :mod:`.accuracy` -> :mod:`.params`;
evaluate: :mod:`.server` -> :mod:`.kernels` on :mod:`.seal`; :mod:`.opcount`
counts what a plan costs and :mod:`.limits` bounds what a stranger's plan may ask.
Sub-modules import TenSEAL, torch and ONNX lazily; importing this package is cheap.
"""
