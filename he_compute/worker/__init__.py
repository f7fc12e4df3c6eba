"""The untrusted worker's side: claim jobs, evaluate on ciphertexts, sign receipts.

:mod:`.loop` (the :class:`~.loop.Worker` loop and its heartbeat), :mod:`.executor`
(caches of compiled models and keys; where evaluation happens), :mod:`.identity`
(the worker's signing key), :mod:`.host` (devices, cores, child processes:
what ``hec worker`` runs).  Nothing here imports the client package or a
scheme's client half; an import contract in the tests checks it.
"""
