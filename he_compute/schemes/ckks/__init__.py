"""CKKS scheme backend, built on TenSEAL (see :mod:`he_compute.schemes.base`).

The server part is a plan (``plan.json``, see :mod:`.plan`) plus ``.npy``
weights; payloads use the framed format of :mod:`.payload`.  ``server.py`` is
the worker half, ``client.py`` the data-owner half, ``compiler.py`` builds
bundles.  Sub-modules import TenSEAL, torch and ONNX lazily; importing this
package is cheap.
"""
