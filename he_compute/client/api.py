"""The pipeline API: an encrypted model that looks like a clear one.

:class:`EncryptedModel` ties a bundle, a key directory and a queue together:
``predict(X)`` encrypts on the client, evaluates on workers (through the job
queue, or in this process), decrypts on the client and returns numpy arrays
shaped like the clear model's.  ``submit`` returns a future-like
:class:`EncryptedJob`; ``map`` streams many batches with bounded memory.  The
model owns its queue connection and closes it (``with`` or :meth:`close`).

Example::

    with he_compute.EncryptedModel("tree.hec", keys="keys/", local_workers=2) as model:
        proba = model.predict_proba(X_test)
"""

from __future__ import annotations

import collections
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import HECError
from ..formats.bundle import Bundle
from ..formats.container import Container
from ..formats.evalkeys import read as read_evaluation_keys
from ..schemes._kind import require_classifier, to_probabilities
from ..transport.queue import JobState, Producer
from .client import Client, load_bundle
from .keys import KEYINFO
from .pool import WorkerPool


def labels_from_outputs(out: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class labels from decrypted classifier outputs: one column is P(class 1), several are per-class scores."""
    index = (out[:, 0] > 0.5).astype(int) if out.shape[1] == 1 else out.argmax(axis=1)
    return np.asarray(classes)[index]


class EncryptedJob:
    """A running encrypted prediction: ``result(timeout)``, ``done()``, ``cancel()``, ``progress()``."""

    def __init__(self, future: Future[np.ndarray], n_samples: int, queue: Producer | None):
        self._future = future
        self._job_ids: list[str] = []
        self._queue = queue
        self.n_samples = n_samples

    def _set_job_ids(self, ids: list[str]) -> None:
        self._job_ids = list(ids)

    @property
    def job_ids(self) -> list[str]:
        """Queue job ids (empty until submitted, and for in-process evaluation)."""
        return list(self._job_ids)

    def result(self, timeout: float | None = None) -> np.ndarray:
        """Block until the decrypted outputs are ready (raises what the run raised)."""
        return self._future.result(timeout)

    def done(self) -> bool:
        """True once the result (or an error) is available."""
        return self._future.done()

    def cancel(self) -> bool:
        """Cancel the queue jobs (or the pending run); ``result()`` then raises."""
        if self._future.cancel():
            return True
        if self._queue is not None and self._job_ids:
            return any([self._queue.cancel(job_id) for job_id in self._job_ids])
        return False

    def progress(self) -> float:
        """Fraction of samples evaluated so far, from the jobs' records (0.0 to 1.0)."""
        if self._queue is None or not self._job_ids:
            return 1.0 if self._future.done() and self._future.exception() is None else 0.0
        done = 0
        for job in self._queue.statuses(self._job_ids).values():  # one round trip for every job
            done += sum(job.spec["counts"]) if job.state is JobState.DONE else int(job.progress.get("done", 0))
        return min(1.0, done / max(1, self.n_samples))


@dataclass(frozen=True)
class TenantAccess:
    """A tenant's way into a coordinator: its ``https://`` URL, the tenant's ``token`` (or a ``token_file``
    holding it) and the ``ca_file`` its certificate chains to; what is left out comes from ``HEC_*`` settings
    and ``config.toml``, as for ``hec --coordinator``."""

    coordinator: str
    token: str | None = None
    token_file: str | None = None
    ca_file: str | None = None


class EncryptedModel:
    """A compiled model used like a clear one; all encryption and decryption stays on this side.

    ``bundle`` is a :class:`Bundle` or a bundle path.  ``keys`` is a key
    directory: used if it holds keys for this bundle, created (``keygen``) if
    it does not exist.  ``queue``/``blobs`` are URLs (default ``$HEC_QUEUE`` or
    the embedded queue under ``./.hec/`` *in the current directory*); or ``queue`` is a
    :class:`TenantAccess` to a coordinator, which then holds this tenant's jobs and blobs both;
    ``local_workers=N`` starts N worker processes on first use and keeps them
    (with their compiled circuit and keys) until :meth:`close` or the end of the
    ``with`` block (not with a coordinator, whose workers are remote); ``in_process=True``
    evaluates here, without a queue.
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike[str],
        keys: str | os.PathLike[str],
        *,
        queue: str | TenantAccess | None = None,
        blobs: str | None = None,
        local_workers: int = 0,
        timeout: float | None = None,
        in_process: bool = False,
        show_progress: bool = False,
    ):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        keys_dir = Path(keys)
        self.client = Client(keys_dir) if (keys_dir / KEYINFO).exists() else Client.keygen(self.bundle, keys_dir)
        self.client.check_bundle(self.bundle)
        self.queue, self.blobs, self.local_workers, self.timeout = queue, blobs, local_workers, timeout
        if isinstance(queue, TenantAccess) and local_workers:
            raise HECError("local_workers runs workers on the embedded queue; with a coordinator, start "
                           "hec worker --coordinator URL on the worker machines instead")
        self.in_process, self.show_progress = in_process, show_progress
        self._server_part = self.bundle.server_part()
        self._evalkeys = read_evaluation_keys(self.client.evaluation_keys_path)
        self._evaluator: Any = None
        self._connection: Any = None
        self._remote_q: Any = None
        self._workers: WorkerPool | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hec-job")

    @property
    def classes_(self) -> np.ndarray:
        """Class labels in output order (classifiers)."""
        classes = self.bundle.manifest.get("classes")
        n_out = int(np.prod(self.bundle.manifest["output_shape"]))
        return np.asarray(classes if classes is not None else np.arange(max(n_out, 2)))

    @property
    def local_worker_pids(self) -> list[int]:
        """Process ids of the local workers this model started (empty before the first call, and after close)."""
        return self._workers.pids if self._workers is not None else []

    def _conn(self) -> Any:
        """The queue connection, opened on first use and kept until :meth:`close`."""
        with self._lock:
            if self._connection is None:
                from .run import Connection

                if isinstance(self.queue, TenantAccess):  # a coordinator: this tenant's jobs and blobs only
                    from ..transport.remote import open_tenant

                    t = self.queue
                    q, store = open_tenant(t.coordinator, token=t.token, token_file=t.token_file, ca_file=t.ca_file)
                    self._connection = Connection(q, store)
                    self._remote_q = q  # closed in close(): it owns the session the store shares
                else:
                    self._connection = Connection(self.queue, self.blobs)
            if self.local_workers and self._workers is None:
                conn = self._connection
                self._workers = WorkerPool(self.local_workers, conn.queue_url, conn.blobs_url, conn.where.logs,
                                           device=str(self._server_part.meta.get("device", "cpu")))
            return self._connection

    def _evaluate(self, enc: Container, job: EncryptedJob | None) -> Container:
        if self.in_process:
            from ..evaluator import Evaluator

            with self._lock:
                if self._evaluator is None:
                    self._evaluator = Evaluator(self._server_part)
                    self._keys = self._evaluator.load_keys(self._evalkeys)
            return self._evaluator.evaluate(enc, self._keys)
        conn = self._conn()
        if self._workers is None:
            return self._run(conn, enc, job)
        # The model's own workers serve every call; the run starts none (local_workers=0).
        self._workers.ensure()
        ids: list[str] = []
        with self._workers.watch(lambda: [conn.q.cancel(i) for i in list(ids)]):
            return self._run(conn, enc, job, ids)

    def _run(self, conn: Any, enc: Container, job: EncryptedJob | None, ids: list[str] | None = None) -> Container:
        from .run import RunOptions, run

        def submitted(job_ids: list[str]) -> None:
            if ids is not None:
                ids.extend(job_ids)
            if job is not None:
                job._set_job_ids(job_ids)

        report = run(enc, self._server_part, self._evalkeys, queue=conn.q, blobs=conn.store, local_workers=0,
                     options=RunOptions(timeout=self.timeout, show_progress=self.show_progress, on_submit=submitted))
        return report.result

    def _predict_raw(self, X: Any, job: EncryptedJob | None = None) -> np.ndarray:
        enc = self.client.encrypt(X)
        return self.client.decrypt(self._evaluate(enc, job))

    def decision_function(self, X: Any) -> np.ndarray:
        """The model's decrypted outputs, ``(n_samples, n_outputs)``: probabilities, logits or values, as the
        manifest's ``outputs`` says."""
        return self._predict_raw(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, ``(n_samples, n_classes)``; a softmax (or sigmoid) is applied here, on the
        client, where the bundle decrypts to logits.  A regressor is refused before anything is encrypted."""
        require_classifier(self.bundle.manifest)
        return to_probabilities(self._predict_raw(X), self.bundle.manifest)

    def predict(self, X: Any) -> np.ndarray:
        """Class labels for classifiers, values for regressors, shaped like the clear model's output."""
        out = self._predict_raw(X)
        if self.bundle.manifest.get("task") == "classifier":
            return labels_from_outputs(to_probabilities(out, self.bundle.manifest), self.classes_)
        return out[:, 0] if out.shape[1] == 1 else out

    def submit(self, X: Any) -> EncryptedJob:
        """Start an encrypted prediction (raw outputs) in the background and return its handle."""
        n = int(np.asarray(X).shape[0])
        holder: list[EncryptedJob] = []
        ready = threading.Event()

        def work() -> np.ndarray:
            ready.wait()
            return self._predict_raw(X, holder[0])

        job = EncryptedJob(self._pool.submit(work), n, None if self.in_process else self._conn().q)
        holder.append(job)
        ready.set()
        return job

    def map(self, batches: Iterable[Any], *, max_in_flight: int = 2) -> Iterator[np.ndarray]:
        """Yield the raw outputs of each batch, in order, with at most ``max_in_flight`` batches in memory."""
        pending: collections.deque[EncryptedJob] = collections.deque()
        for batch in batches:
            pending.append(self.submit(batch))
            if len(pending) >= max_in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        """Wait for background work, stop the local workers, then close the queue connection."""
        self._pool.shutdown(wait=True)
        with self._lock:
            if self._workers is not None:
                self._workers.close()
                self._workers = None
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            if self._remote_q is not None:
                self._remote_q.close()
                self._remote_q = None

    def __enter__(self) -> EncryptedModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
