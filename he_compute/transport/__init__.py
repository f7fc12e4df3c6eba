"""The plumbing between clients and workers: the job queue, the blob store, the audit log's storage.

Nothing here knows what a model or a key is: jobs are JSON, blobs are bytes
named by sha256, audit entries are lines.  :mod:`.locations` turns URLs into
engines' settings; each engine is a context manager.
"""
