"""The wire: every byte format both parties read, and nothing either party does.

:mod:`.container` (the one file format), :mod:`.bundle` (compiled models),
:mod:`.evalkeys` (shareable keys), :mod:`.ciphertexts` (inputs and results),
:mod:`.task` (job specs and results), :mod:`.receipt` (signed receipts),
:mod:`.audit` (audit entries), :mod:`.signing` (public keys),
:mod:`.canonical` and :mod:`.digests`.  This package imports neither the client
nor the worker, nor any scheme library: both sides import it.
"""
