"""TFHE scheme backend, built on Zama Concrete ML (see :mod:`he_compute.schemes.base`).

``server.py`` is the worker half (checked MLIR compiled with ``fhe.Server.create``),
``client.py`` the data-owner half (quantizers, keyset), ``compiler.py`` builds
bundles, ``artifacts.py`` reads Concrete ML deployments without executing them.
Sub-modules import Concrete lazily; importing this package is cheap.
"""
