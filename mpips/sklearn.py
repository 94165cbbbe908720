"""A scikit-learn estimator for mpips' logistic regression.

    from mpips.sklearn import LogisticRegression
    clf = LogisticRegression(n_ranks=4, epochs=5).fit(X_train, y_train)  # X: scipy CSR
    clf.predict_proba(X_test)[:, 1]

``fit`` writes ``X`` and ``y`` as a data set of HDF5 partitions (each column
a feature, hashed to a key so that the keys spread over the servers), writes
a job file, runs it with ``python -m mpips run -n n_ranks`` in a subprocess
(so a notebook can fit again and again in one kernel) and loads the model
the servers wrote. ``fit`` also takes the path of a converted data set
(``python -m data_tools convert``); ``coef_`` then holds one weight per key
and ``feature_ids_`` the keys. Prediction is local (a sparse product).

``warm_start=True`` continues from the previous fit's model, optimizer
state included (``train --init-model``). Needs scikit-learn
(``pip install 'mpips[linear]'``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError("mpips.sklearn needs scikit-learn: pip install 'mpips[linear]'") from e

from .apps.linear.model import Model, read_model, sigmoid, write_model
from .data.manifest import load_manifest
from .data.reader import PartitionReader
from .data.writer import Block, write_dataset
from .driver import run_job
from .keys import hash_feature

COLUMN_SALT = 0x5C1EA2  # keys of column j: hash_feature(j, COLUMN_SALT)


def column_keys(n_features: int) -> np.ndarray:
    """The key of each column of X, as fit writes them."""
    return hash_feature(np.arange(n_features, dtype=np.uint64), COLUMN_SALT)


class LogisticRegression(ClassifierMixin, BaseEstimator):
    """Binary logistic regression trained by an mpips job on ``n_ranks`` ranks.

    Parameters mirror the job file's ``[linear]`` and ``[data]`` keys
    (``python -m mpips config --app linear`` explains each): ``algorithm``
    ftrl (``alpha``, ``beta``), adagrad or sgd (``lr``); ``l1``, ``l2``;
    ``lr_scale`` "auto" divides the rate by the mean |feature value|;
    ``epochs`` passes over the data in minibatches of ``minibatch`` rows.
    ``n_ranks`` ranks in all: 1 scheduler, ``servers`` servers, the rest
    workers. ``workdir`` keeps the data, job file, logs and model (a
    temporary folder, removed after each fit, when None). ``verbose``
    prints the job's output as it runs. ``mpi_args``: extra launcher
    arguments (``mpips run --mpi-arg``).
    """

    def __init__(self, *, n_ranks: int = 4, servers: int = 1, algorithm: str = "ftrl",
                 alpha: float = 0.1, beta: float = 1.0, lr: float = 0.1, l1: float = 0.0,
                 l2: float = 0.0, lr_scale: str = "auto", epochs: int = 5,
                 minibatch: int = 1000, fit_intercept: bool = True, shuffle: bool = True,
                 random_state: int = 1, warm_start: bool = False, workdir: str | None = None,
                 verbose: bool = False, mpi_args: tuple[str, ...] = (),
                 timeout: float | None = None):
        self.n_ranks = n_ranks
        self.servers = servers
        self.algorithm = algorithm
        self.alpha = alpha
        self.beta = beta
        self.lr = lr
        self.l1 = l1
        self.l2 = l2
        self.lr_scale = lr_scale
        self.epochs = epochs
        self.minibatch = minibatch
        self.fit_intercept = fit_intercept
        self.shuffle = shuffle
        self.random_state = random_state
        self.warm_start = warm_start
        self.workdir = workdir
        self.verbose = verbose
        self.mpi_args = mpi_args
        self.timeout = timeout

    # ---- fitting ---------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> LogisticRegression:
        """Train on ``X`` (scipy sparse or array-like, n_samples x n_features)
        and binary ``y``, or on the converted data set at path ``X`` (y None)."""
        workers = self.n_ranks - 1 - self.servers
        if workers < 1:
            raise ValueError(f"n_ranks={self.n_ranks} with servers={self.servers} leaves "
                             "no worker: n_ranks must be at least servers + 2")
        folder = Path(self.workdir) if self.workdir else Path(tempfile.mkdtemp(prefix="mpips-"))
        try:
            if isinstance(X, (str, os.PathLike)):
                if y is not None:
                    raise ValueError("fit(path, y): a data set path carries its labels; "
                                     "pass y=None")
                data = Path(X)
                load_manifest(data)  # a clear error now if it is not a data set
                self.classes_ = np.array([0, 1])
                self.n_features_in_ = 0  # set from the model below
                self._fit_path = True
            else:
                data = folder / "data"
                self._write_data(X, y, data, workers)
                self._fit_path = False
            model = self._run(folder, data)
        finally:
            if not self.workdir:
                shutil.rmtree(folder, ignore_errors=True)
        self._model = model
        self._set_coef(model)
        return self

    def _write_data(self, X: Any, y: Any, folder: Path, workers: int) -> dict[str, Any]:
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float32,
                             reset=not (self.warm_start and hasattr(self, "_model")))
        check_classification_targets(y)
        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind != "binary":
            raise ValueError("Only binary classification is supported (mpips "
                             f"LogisticRegression). The type of the target is {kind}.")
        self.classes_ = np.unique(y)
        if self.classes_.size != 2:
            raise ValueError(f"mpips LogisticRegression needs two classes; y has "
                             f"{self.classes_.size} class(es) ({self.classes_[:5]!r})")
        X = sp.csr_matrix(X, dtype=np.float32)
        X.sum_duplicates()
        X.sort_indices()
        keys = column_keys(X.shape[1])[X.indices]
        labels = (y == self.classes_[1]).astype(np.float32)
        values = None if X.nnz and np.all(X.data == 1.0) else X.data.astype(np.float32)
        if folder.exists():
            shutil.rmtree(folder)
        rows = X.shape[0]
        # two partitions per worker at least, so that every worker has work
        per_part = max(1, -(-rows // (2 * workers)))
        return write_dataset(folder, Block(labels, X.indptr.astype(np.int64), keys, values),
                             {"kind": "columns", "salt": COLUMN_SALT}, per_part,
                             "mpips.sklearn")

    def _job_text(self, folder: Path, data: Path, init: Path | None) -> str:
        def q(v: Any) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, str):
                return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            return repr(v)

        linear = {"data": "partitions", "loss": "logistic", "algorithm": self.algorithm,
                  "alpha": float(self.alpha), "beta": float(self.beta), "lr": float(self.lr),
                  "l1": float(self.l1), "l2": float(self.l2), "lr_scale": self.lr_scale,
                  "bias": bool(self.fit_intercept), "save_model": True, "save_state": True,
                  "init_model": str(init) if init else ""}
        sections = {
            "job": {"name": "sklearn", "app": "linear", "output": str(folder / "run"),
                    "seed": int(self.random_state), "progress_interval": 5.0},
            "layout": {"servers": int(self.servers)},
            "data": {"train": str(data), "test": "", "minibatch": int(self.minibatch),
                     "epochs": int(self.epochs), "shuffle": bool(self.shuffle)},
            "linear": linear}
        return "".join(f"[{name}]\n" + "".join(f"{k} = {q(v)}\n" for k, v in keys.items())
                       + "\n" for name, keys in sections.items())

    def _run(self, folder: Path, data: Path) -> Model:
        folder.mkdir(parents=True, exist_ok=True)
        init = None
        if self.warm_start and hasattr(self, "_model"):
            init = folder / "init_model.h5"
            m = self._model
            write_model(init, m.keys, m.weights, m.state, m.attrs)
        job = folder / "job.toml"
        job.write_text(self._job_text(folder, data, init))
        # a job that does not end "done" raises JobFailed (a RuntimeError)
        # with its exit, state and the end of its log
        run_job(job, self.n_ranks, mpi_args=self.mpi_args, echo=self.verbose, check=True,
                timeout=self.timeout, log=folder / "job.log")
        return read_model(folder / "run" / "model.h5")

    def _set_coef(self, model: Model) -> None:
        if self._fit_path:
            keep = model.keys != np.uint64(model.attrs.get("bias_key", 0))
            self.feature_ids_ = model.keys[keep]
            self.coef_ = model.weights[keep][None, :]
            self.n_features_in_ = int(self.feature_ids_.size)
        else:
            keys = column_keys(self.n_features_in_)
            at = np.minimum(np.searchsorted(model.keys, keys), max(0, model.keys.size - 1))
            found = model.keys[at] == keys if model.keys.size else np.zeros(keys.size, bool)
            self.coef_ = np.where(found, model.weights[at], 0.0)[None, :]
            self.feature_ids_ = np.arange(self.n_features_in_)
        self.intercept_ = np.array([model.bias if self.fit_intercept else 0.0])

    # ---- prediction ---------------------------------------------------------------
    def decision_function(self, X: Any) -> np.ndarray:
        """The margin of each row (of ``X``, or of the data set at path ``X``)."""
        check_is_fitted(self, "coef_")
        if isinstance(X, (str, os.PathLike)):
            return np.concatenate([self._path_margins(p.path)
                                   for p in load_manifest(X).partitions])
        if self._fit_path:
            raise ValueError("this model was fit on a data set path (hashed feature keys): "
                             "score data sets by path, not arrays")
        X = validate_data(self, X, accept_sparse="csr", dtype=np.float64, reset=False)
        return np.asarray(X @ self.coef_[0]).reshape(-1) + self.intercept_[0]

    def _path_margins(self, path: str) -> np.ndarray:
        with PartitionReader(path) as reader:
            mb = reader.read(0, reader.rows)
        return self._model.margins(mb.indptr, mb.keys, mb.values)

    def predict_proba(self, X: Any) -> np.ndarray:
        p = sigmoid(self.decision_function(X))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        margin = self.decision_function(X)  # NotFittedError before any fit
        return self.classes_[(margin > 0).astype(int)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.classifier_tags.multi_class = False
        return tags
