"""Metrics shared by every stage (cv, heads, blend, report, submit, demo): pure numpy (and scikit-learn's AUC).

The competition's metric is one of :data:`METRICS`, chosen with ``--metric`` and remembered by the experiment:

- ``logloss``: binary log loss as Kaggle scores it (Dogs vs. Cats Redux); lower is better;
- ``auc``: area under the ROC curve (``sklearn.metrics.roc_auc_score``; Aerial Cactus, Histopathologic Cancer
  Detection, SIIM-ISIC Melanoma); higher is better, and only the order of the predictions counts;
- ``accuracy``: the share of hard 0/1 labels (P >= 0.5) that are right (the 2013 Dogs vs. Cats); higher is better.

Every scorer takes ``y`` (n,) 0/1 and ``p`` (n,) -> a float, or (n, m) -> (m,) one score per column. A column
holding NaN or a value outside [0, 1] scores NaN: such a prediction is invalid, and scoring it would hide that.
"""

from __future__ import annotations

import numpy as np

KAGGLE_EPS = 1e-15  # Kaggle clips submitted probabilities to [1e-15, 1 - 1e-15] before scoring

METRICS = ("logloss", "auc", "accuracy")
DEFAULT_METRIC = "logloss"
NAMES = {"logloss": "log loss", "auc": "AUC", "accuracy": "accuracy"}
HIGHER_IS_BETTER = {"logloss": False, "auc": True, "accuracy": True}
THRESHOLD = 0.5  # hard labels: 1 where P >= 0.5


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is one of :data:`METRICS`, else raise ValueError listing them."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    return metric


def _valid(p: np.ndarray) -> np.ndarray:
    """``p`` as float64 with NaN wherever it is not a probability (NaN, inf, below 0, above 1)."""
    p = np.asarray(p, dtype=np.float64)
    return np.where((p >= 0) & (p <= 1), p, np.nan)


def _per_column(values: np.ndarray) -> float | np.ndarray:
    return float(values) if np.ndim(values) == 0 else values


def log_loss(y: np.ndarray, p: np.ndarray) -> float | np.ndarray:
    """Binary log loss as Kaggle scores it (``p`` clipped to [1e-15, 1 - 1e-15]).

    ``y`` (n,) 0/1; ``p`` (n,) -> a float, or (n, m) -> (m,) one loss per column. Vectorised over columns so
    that greedy selection scores every candidate in one pass (``sklearn.metrics.log_loss`` scores one at a
    time and its input checks would dominate). A NaN or a value outside [0, 1] anywhere in a column gives
    NaN for that column: such a prediction is invalid, and clipping it would hide that.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(_valid(p), KAGGLE_EPS, 1.0 - KAGGLE_EPS)
    if p.ndim == 2:
        y = y[:, None]
    return _per_column(-(y * np.log(p) + (1.0 - y) * np.log1p(-p)).mean(axis=0))


def accuracy(y: np.ndarray, p: np.ndarray) -> float | np.ndarray:
    """Share of rows whose hard label (1 where ``p`` >= 0.5) equals ``y``; shapes as :func:`log_loss`."""
    y = np.asarray(y)
    p = _valid(p)
    right = (p >= THRESHOLD) == (y[:, None] if p.ndim == 2 else y).astype(bool)
    acc = right.mean(axis=0)
    return _per_column(np.where(np.isnan(p).any(axis=0), np.nan, acc))


def auc(y: np.ndarray, p: np.ndarray) -> float | np.ndarray:
    """Area under the ROC curve, equal to ``sklearn.metrics.roc_auc_score`` (ties count one half); shapes as
    :func:`log_loss`.

    Computed as the Mann-Whitney statistic from the ranks of each column (ties averaged), so that greedy
    selection scores every candidate in one vectorised pass (``roc_auc_score`` takes one column at a time, and
    its input checks dominate on the blend's sizes). NaN for a column with an invalid value, and for every
    column when ``y`` holds one class only (the AUC is undefined there; scikit-learn would raise).
    """
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    p = _valid(p)
    cols = p[:, None] if p.ndim == 1 else p
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0 or cols.shape[1] == 0:
        out = np.full(cols.shape[1], np.nan)
    else:
        ranks = rankdata(np.nan_to_num(cols), axis=0)  # NaN columns are masked below
        out = (ranks[y].sum(axis=0) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
        out = np.where(np.isnan(cols).any(axis=0), np.nan, out)
    return float(out[0]) if p.ndim == 1 else out


_SCORERS = {"logloss": log_loss, "auc": auc, "accuracy": accuracy}


def score(metric: str, y: np.ndarray, p: np.ndarray) -> float | np.ndarray:
    """``metric``'s score of ``p`` (n,) or (n, m) against ``y`` (n,): a float or (m,) (see :func:`log_loss`)."""
    return _SCORERS[check_metric(metric)](y, p)


def crossfit_score(metric: str, y: np.ndarray, p: np.ndarray, folds: np.ndarray) -> float:
    """The score of (n,) out-of-fold predictions ``p``, each fold's made by another model (``folds`` (n,)).

    Log loss and accuracy: of all rows at once (the same as the row-weighted mean of the folds' scores). AUC:
    the mean of the AUCs within each fold. subtle: a pooled AUC would compare rows scored by different models,
    which no test set ever does, and would reward a blend that only evens out the folds' offsets (rank
    averaging of a single model would gain on it).
    """
    if check_metric(metric) != "auc":
        return float(score(metric, y, p))
    y, p, folds = np.asarray(y), np.asarray(p), np.asarray(folds)
    return float(np.mean([auc(y[folds == f], p[folds == f]) for f in np.unique(folds)]))


def loss(metric: str, y: np.ndarray, p: np.ndarray) -> float | np.ndarray:
    """The score turned so that lower is better (log loss; minus AUC; minus accuracy), NaN mapped to +inf.

    For choosing with ``argmin``/``min``: a NaN score (an invalid prediction) then never wins.
    """
    s = np.asarray(score(metric, y, p), dtype=np.float64)
    s = -s if HIGHER_IS_BETTER[metric] else s
    s = np.where(np.isnan(s), np.inf, s)
    return float(s) if s.ndim == 0 else s


def from_loss(metric: str, value: float) -> float:
    """The score back from :func:`loss` (inf stays inf: the candidate was unusable)."""
    return -value if HIGHER_IS_BETTER[metric] and np.isfinite(value) else value


def hard_labels(p: np.ndarray) -> np.ndarray:
    """0/1 labels (int64) of probabilities: 1 where ``p`` >= 0.5, the label accuracy scores."""
    return (np.asarray(p, dtype=np.float64) >= THRESHOLD).astype(np.int64)
