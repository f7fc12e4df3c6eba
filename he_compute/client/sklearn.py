"""A scikit-learn estimator whose predictions run encrypted, for the last step of a ``Pipeline``.

Clear preprocessing runs on the client as usual; :class:`EncryptedPredictor`
fits its wrapped estimator in the clear (on the client, which owns the
training data), compiles it, generates keys, and from then on every
``predict`` encrypts, evaluates on workers and decrypts.

Example::

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from concrete.ml.sklearn import LogisticRegression
    from he_compute.sklearn import EncryptedPredictor

    pipe = make_pipeline(StandardScaler(), EncryptedPredictor(LogisticRegression(), in_process=True))
    pipe.fit(X_train, y_train).predict(X_test)
"""

from __future__ import annotations

import tempfile
import weakref
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone

from ..errors import ConfigError
from .api import EncryptedModel, labels_from_outputs


class EncryptedPredictor(ClassifierMixin, BaseEstimator):
    """Fit in the clear, predict under encryption.

    ``estimator``: a Concrete ML model, scikit-learn linear model or tree, or
    torch module (then pass ``bundle`` instead of fitting); ``bundle``: a
    precompiled bundle path (``fit`` then only records the classes).
    ``keys``: key directory (default: a fresh private temporary directory, deleted with the
    fitted model or by :meth:`close`, so no secret key outlives it).
    Queue options are those of :class:`~he_compute.EncryptedModel`.
    """

    def __init__(self, estimator: Any = None, *, bundle: Any = None, scheme: str = "tfhe", keys: Any = None,
                 queue: str | None = None, blobs: str | None = None, local_workers: int = 0,
                 timeout: float | None = None, in_process: bool = False,
                 compile_options: dict[str, Any] | None = None):
        self.estimator = estimator
        self.bundle = bundle
        self.scheme = scheme
        self.keys = keys
        self.queue = queue
        self.blobs = blobs
        self.local_workers = local_workers
        self.timeout = timeout
        self.in_process = in_process
        self.compile_options = compile_options

    def fit(self, X: Any, y: Any) -> EncryptedPredictor:
        """Fit the wrapped estimator on clear data, compile it and generate keys."""
        from .. import schemes
        from ..formats.bundle import Bundle
        from .client import load_bundle

        self.close()
        X = np.asarray(X, dtype=np.float64)
        if self.bundle is not None:
            bundle = self.bundle if isinstance(self.bundle, Bundle) else load_bundle(self.bundle)
        else:
            if self.estimator is None:
                raise ConfigError("EncryptedPredictor needs an estimator to fit or a precompiled bundle")
            fitted = clone(self.estimator).fit(X, y)
            bundle = schemes.client(self.scheme).compile(fitted, X, **(self.compile_options or {}))
        keys = self.keys
        if keys is None:
            # mkdtemp makes the directory 0700; the finalizer removes it (secret key included) with this object.
            self._keys_tmp = tempfile.TemporaryDirectory(prefix="hec-keys-")
            keys = f"{self._keys_tmp.name}/keys"
        self.model_ = EncryptedModel(bundle, keys, queue=self.queue, blobs=self.blobs, local_workers=self.local_workers,
                                     timeout=self.timeout, in_process=self.in_process)
        self._finalizer = weakref.finalize(self, self.model_.close)
        self.n_features_in_ = X.shape[1]
        if bundle.manifest.get("task") == "classifier":
            self.classes_ = np.unique(y)
        return self

    def _is_classifier(self) -> bool:
        return self.model_.bundle.manifest.get("task") == "classifier"

    def predict_proba(self, X: Any) -> np.ndarray:
        """Encrypted class probabilities."""
        return self.model_.predict_proba(X)

    def decision_function(self, X: Any) -> np.ndarray:
        """Encrypted raw model outputs."""
        return self.model_.decision_function(X)

    def predict(self, X: Any) -> np.ndarray:
        """Encrypted predictions: labels seen in ``fit`` for a classifier, values for a regressor."""
        if not self._is_classifier():
            return self.model_.predict(X)
        return labels_from_outputs(self.model_.predict_proba(X), self.classes_)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Accuracy for a classifier, R^2 for a regressor (as scikit-learn's mixins), from encrypted predictions."""
        if self._is_classifier():
            return float(super().score(X, y, sample_weight=sample_weight))
        from sklearn.metrics import r2_score

        return float(r2_score(y, self.predict(X), sample_weight=sample_weight))

    def close(self) -> None:
        """Close the encrypted model and delete a temporary key directory (secret key included)."""
        model = self.__dict__.pop("model_", None)
        if model is not None:
            model.close()
        tmp = self.__dict__.pop("_keys_tmp", None)
        if tmp is not None:
            tmp.cleanup()
