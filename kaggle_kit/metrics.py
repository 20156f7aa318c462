"""Metrics shared by every stage (cv, heads, blend, report, demo): pure numpy."""

from __future__ import annotations

import numpy as np

KAGGLE_EPS = 1e-15  # Kaggle clips submitted probabilities to [1e-15, 1 - 1e-15] before scoring


def log_loss(y: np.ndarray, p: np.ndarray) -> float | np.ndarray:
    """Binary log loss as Kaggle scores it (``p`` clipped to [1e-15, 1 - 1e-15]).

    ``y`` (n,) 0/1; ``p`` (n,) -> a float, or (n, m) -> (m,) one loss per column. Vectorised over columns so
    that greedy selection scores every candidate in one pass (``sklearn.metrics.log_loss`` scores one at a
    time and its input checks would dominate). A NaN or a value outside [0, 1] anywhere in a column gives
    NaN for that column: such a prediction is invalid, and clipping it would hide that.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    p = np.clip(np.where((p >= 0) & (p <= 1), p, np.nan), KAGGLE_EPS, 1.0 - KAGGLE_EPS)
    if p.ndim == 2:
        y = y[:, None]
    losses = -(y * np.log(p) + (1.0 - y) * np.log1p(-p)).mean(axis=0)
    return float(losses) if np.ndim(losses) == 0 else losses
