"""The data owner's side: secret keys, encryption, decryption, and running work on untrusted workers.

:class:`~.client.Client` (keys, encrypt, decrypt), :func:`~.client.load_bundle`,
:mod:`.run` (the queue run and its verification), :mod:`.api`
(``EncryptedModel``), :mod:`.sklearn` (``EncryptedPredictor``).  Nothing in
the worker package imports this one, and this one imports no worker code.
"""
