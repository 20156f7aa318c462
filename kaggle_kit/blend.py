"""Stage 4: blend the cv models' out-of-fold predictions, calibrate, choose a clip, with honest scores.

Core (pure numpy, every setting a keyword argument): ``P`` is always (n_rows, n_models) probabilities of the
positive class, ``y`` (n_rows,) 0/1 labels, ``folds`` (n_rows,) the fold index of each row.

- blending methods: ``selection`` (greedy ensemble selection with replacement, Caruana et al. 2004, as in
  AutoGluon), ``stack`` (logistic regression on clipped logits), ``mean`` (the baseline), ``single`` (the
  model best on the fitting rows) and, for AUC only, ``rank`` (the mean of each model's normalised ranks);
- calibration of the blend: ``temperature`` (one T > 0 on the logit) or ``platt`` (slope and intercept on the
  logit), kept only if it lowers the cross-fitted log loss;
- the clip level c minimising the log loss of clip(p, c, 1 - c).

The competition's metric (:mod:`kaggle_kit.metrics`) decides what is scored and which steps run:

- ``logloss``: methods chosen by log loss; calibration; clip. The ladder: best single model -> blend ->
  calibrated -> clipped;
- ``accuracy``: methods chosen by accuracy (ties by log loss); calibration (by log loss: the 0/1 labels are
  the calibrated probabilities thresholded at 0.5); no clip. Ladder: best single model -> blend -> calibrated;
- ``auc``: selection and the single model fitted for AUC, methods chosen by AUC, ``rank`` among them; no
  calibration and no clip (a monotone map cannot change an AUC). Ladder: best single model -> blend.

Every reported score is cross-fitted: for each fold of the experiment's plan the blender, the calibrator and
the clip are fitted on the other folds' rows and scored on the held-out fold, so a gain is never the
in-sample one. The final blender and calibrator, used for the test predictions, are fitted on every row.

Edge: :func:`load_cv_inputs` reads the fold plan and the cv models through :mod:`kaggle_kit.store`;
:func:`run_blend` (``kaggle-kit blend``) writes the blend through it: the cross-fitted OOF predictions
float32 (n_train,) after and before calibration (NaN on unreadable rows; the report draws both), the
calibrated test predictions float32 (n_test,), not yet clipped, and the metric, methods, weights, ladder
(scored in the metric) and clip (none unless log loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.special import expit, logit

from kaggle_kit.artifacts import KitError, experiment_lock
from kaggle_kit.metrics import (
    DEFAULT_METRIC,
    HIGHER_IS_BETTER,
    NAMES,
    check_metric,
    crossfit_score,
    from_loss,
    log_loss,
    loss,
)
from kaggle_kit.store import (
    BlendRecord,
    CvResult,
    FoldPlan,
    LadderStep,
    cv_root,
    experiment_metric,
    load_cv_results,
    load_plan,
    remember_metric,
    require_experiment,
    write_blend,
)

METHODS = ("selection", "stack", "mean", "single", "rank")
CALIBRATIONS = ("none", "temperature", "platt")
LOGIT_EPS = 1e-6  # probabilities are clipped to [1e-6, 1 - 1e-6] before taking logits (|logit| <= 13.8)
CLIP_BOUNDS = (1e-4, 0.05)
DEFAULT_ROUNDS = 25

# subtle: when two methods (or calibrations) score the same, the simpler one wins: ties between a one-model
# selection and the mean are common with few models. 'single' (the model best on the fitting rows alone) is
# the honest fallback: picked whenever no blend beats it out of fold, as when one backbone dominates.
_METHOD_PREFERENCE = ("single", "mean", "rank", "selection", "stack")


def methods_for(metric: str) -> tuple[str, ...]:
    """The blending methods tried for ``metric``: ``rank`` only for AUC (its output is a rank, not a probability)."""
    check_metric(metric)
    return METHODS if metric == "auc" else tuple(m for m in METHODS if m != "rank")


def fit_metric(metric: str) -> str:
    """The metric a blender is fitted for: AUC for AUC; log loss otherwise (accuracy thresholds calibrated
    probabilities, and log loss is the smooth, proper score that makes them)."""
    return "auc" if check_metric(metric) == "auc" else "logloss"


def normalised_ranks(P: np.ndarray) -> np.ndarray:
    """Each column of (n, m) replaced by its ranks (ties averaged) scaled into (0, 1): (rank - 0.5) / n."""
    from scipy.stats import rankdata

    P = np.asarray(P, dtype=np.float64)
    return (rankdata(P, axis=0) - 0.5) / P.shape[0]


# ------------------------------------------------------------------------------------------------ the core
def logits(p: np.ndarray) -> np.ndarray:
    """Logits of probabilities clipped to [1e-6, 1 - 1e-6]: finite even for saturated 0/1 predictions."""
    return logit(np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPS, 1.0 - LOGIT_EPS))


def select_ensemble(P: np.ndarray, y: np.ndarray, *, rounds: int = DEFAULT_ROUNDS,
                    metric: str = "logloss") -> np.ndarray:
    """Greedy ensemble selection with replacement; return the (n_models,) weights (>= 0, summing to 1).

    Start from an empty ensemble; in each of ``rounds`` rounds add the model (again, if it is already in)
    whose addition gives the best ``metric`` score (log loss or AUC) of the running average of probabilities.
    Ties go to the earlier model; a candidate whose score is NaN or inf never wins.
    """
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] == 0:
        raise ValueError(f"P must be (n_rows, n_models) with at least one model, got shape {P.shape}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    counts = np.zeros(P.shape[1], dtype=np.int64)
    total = np.zeros(P.shape[0])
    for r in range(rounds):
        # subtle: argmin would happily return a NaN position (NaN compares as the minimum): loss() maps NaN to inf.
        scores = np.asarray(loss(metric, y, (total[:, None] + P) / (r + 1)))
        scores = np.where(np.isfinite(scores), scores, np.inf)
        if not np.isfinite(scores).any():
            raise ValueError("every candidate ensemble scores NaN or inf; the predictions must be finite in [0, 1]")
        best = int(np.argmin(scores))  # the first minimum: ties go to the earlier model
        counts[best] += 1
        total += P[:, best]
    return counts / rounds


@dataclass(frozen=True)
class Blender:
    """A fitted blend: ``predict`` maps (n, n_models) probabilities to (n,).

    ``selection``, ``mean`` and ``single`` (one weight 1) average probabilities with ``weights`` (>= 0, sum 1);
    ``stack`` is sigmoid(logits(P) @ weights + intercept), whose weights may have any sign; ``rank`` averages
    the columns' normalised ranks within the rows predicted (for AUC: the result orders rows, it is no
    probability).
    """

    method: str
    weights: np.ndarray
    intercept: float = 0.0

    def predict(self, P: np.ndarray) -> np.ndarray:
        P = np.asarray(P, dtype=np.float64)
        # subtle: a model with weight 0 must not turn a row into NaN (NaN * 0 is NaN), so use only the others.
        used = self.weights != 0
        if self.method == "stack":
            return expit(logits(P[:, used]) @ self.weights[used] + self.intercept)
        if self.method == "rank":
            return normalised_ranks(P[:, used]) @ self.weights[used]
        return P[:, used] @ self.weights[used]


def fit_blender(P: np.ndarray, y: np.ndarray, *, method: str, rounds: int = DEFAULT_ROUNDS,
                stack_c: float = 1.0, metric: str = "logloss") -> Blender:
    """Fit a blender of ``method`` on finite (n, n_models) probabilities ``P`` and (n,) labels ``y``.

    ``rounds`` is the number of greedy selection rounds; ``stack_c`` the inverse L2 strength of the stacking
    logistic regression; ``metric`` what ``selection`` and ``single`` optimise (log loss or AUC, see
    :func:`fit_metric`).
    """
    P = np.asarray(P, dtype=np.float64)
    if method in ("mean", "rank"):
        return Blender(method, np.full(P.shape[1], 1.0 / P.shape[1]))
    if method == "selection":
        return Blender("selection", select_ensemble(P, y, rounds=rounds, metric=fit_metric(metric)))
    if method == "single":
        weights = np.zeros(P.shape[1])
        weights[int(np.argmin(loss(fit_metric(metric), np.asarray(y), P)))] = 1.0  # (n_models,) losses
        return Blender("single", weights)
    if method == "stack":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=stack_c, max_iter=1000).fit(logits(P), np.asarray(y))
        return Blender("stack", lr.coef_[0].astype(np.float64), float(lr.intercept_[0]))
    raise ValueError(f"unknown blend method {method!r}; choose one of: {', '.join(METHODS)}")


class CalibrationError(ValueError):
    """A calibration that would flip or saturate every prediction (non-positive temperature or slope)."""


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise CalibrationError(
            f"temperature must be a finite number > 0, got {temperature}: a non-positive temperature flips "
            "every prediction"
        )


def apply_temperature(p: np.ndarray, *, temperature: float) -> np.ndarray:
    """Temperature scaling: sigmoid(logits(p) / T) for (n,) probabilities; T must be finite and > 0."""
    _check_temperature(temperature)
    return expit(logits(p) / temperature)


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibration of (n,) probabilities.

    ``kind`` 'none' (``params`` {}), 'temperature' ({'temperature': T > 0}) or 'platt'
    ({'slope': a > 0, 'intercept': b}, giving sigmoid(a * logit + b)).
    """

    kind: str
    params: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {self.kind!r}; choose one of: {', '.join(CALIBRATIONS)}")
        if self.kind == "temperature":
            _check_temperature(self.params["temperature"])
        if self.kind == "platt" and not (math.isfinite(self.params["slope"]) and self.params["slope"] > 0):
            raise CalibrationError(
                f"Platt slope must be a finite number > 0, got {self.params['slope']}: a non-positive slope "
                "flips or flattens every prediction (the blend is not positively related to the labels)"
            )

    def predict(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if self.kind == "temperature":
            return apply_temperature(p, temperature=self.params["temperature"])
        if self.kind == "platt":
            return expit(self.params["slope"] * logits(p) + self.params["intercept"])
        return p


def fit_calibrator(p: np.ndarray, y: np.ndarray, *, kind: str) -> Calibrator:
    """Fit a calibration of ``kind`` on (n,) probabilities and (n,) labels.

    Raises CalibrationError when Platt scaling fits a non-positive slope.
    """
    if kind == "none":
        return Calibrator("none")
    z = logits(p)
    y = np.asarray(y)
    if kind == "temperature":
        from scipy.optimize import minimize_scalar

        # subtle: search log T, so T is positive by construction; the loss is unimodal in log T (convex in 1/T).
        res = minimize_scalar(lambda t: log_loss(y, expit(z / math.exp(t))),
                              bounds=(math.log(1e-2), math.log(1e2)), method="bounded")
        return Calibrator("temperature", {"temperature": float(math.exp(res.x))})
    if kind == "platt":
        from scipy.optimize import minimize

        # Platt (1999) as scikit-learn's sigmoid calibration does it: no penalty on slope or intercept (an L2
        # penalty would shrink the slope towards 0, i.e. towards the prior), and targets (n1 + 1) / (n1 + 2)
        # and 1 / (n0 + 2) instead of 1 and 0, the out-of-sample prior that keeps the fit finite when the
        # logits separate the classes. Convex in (slope, intercept): Newton steps in a trust region.
        n1 = float(np.sum(y > 0))
        n0 = len(y) - n1
        t = np.where(y > 0, (n1 + 1.0) / (n1 + 2.0), 1.0 / (n0 + 2.0))

        def loss(ab):
            s = ab[0] * z + ab[1]
            r = expit(s) - t
            return float(np.sum(np.logaddexp(0.0, s) - t * s)), np.array([r @ z, r.sum()])

        def hessian(ab):
            h = expit(ab[0] * z + ab[1])
            h = h * (1.0 - h)
            return np.array([[h @ (z * z), h @ z], [h @ z, h.sum()]])

        res = minimize(loss, np.array([1.0, 0.0]), jac=True, hess=hessian, method="trust-exact",
                       options={"gtol": 1e-9})
        return Calibrator("platt", {"slope": float(res.x[0]), "intercept": float(res.x[1])})
    raise ValueError(f"unknown calibration {kind!r}; choose one of: {', '.join(CALIBRATIONS)}")


def clip_probabilities(p: np.ndarray, c: float) -> np.ndarray:
    """clip(p, c, 1 - c) for 0 <= c < 0.5."""
    if not 0 <= c < 0.5:
        raise ValueError(f"clip level must be in [0, 0.5), got {c}")
    return np.clip(p, c, 1.0 - c)


def best_clip(p: np.ndarray, y: np.ndarray, *, low: float = CLIP_BOUNDS[0],
              high: float = CLIP_BOUNDS[1]) -> tuple[float, float]:
    """The clip level c in [low, high] minimising log loss of clip(p, c, 1 - c); return (c, that loss).

    ``p`` and ``y`` are (n,). The loss need not be unimodal in c, so a log-spaced grid finds the basin and a
    bounded scalar search (in log c) refines it between the grid neighbours of the best point.
    """
    from scipy.optimize import minimize_scalar

    p = np.asarray(p, dtype=np.float64)
    grid = np.geomspace(low, high, 97)
    losses = log_loss(y, np.clip(p[:, None], grid, 1.0 - grid))
    i = int(np.argmin(losses))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = minimize_scalar(lambda t: log_loss(y, clip_probabilities(p, math.exp(t))),
                          bounds=(math.log(lo), math.log(hi)), method="bounded")
    c, loss = float(math.exp(res.x)), float(res.fun)
    if loss <= losses[i]:
        return c, loss
    return float(grid[i]), float(losses[i])


@dataclass(frozen=True)
class BlendResult:
    """Everything the blend stage learned; arrays are over all n rows of the input (NaN on unusable rows).

    ``metric``: what every score here is (see :mod:`kaggle_kit.metrics`). ``oof`` (n,): cross-fitted blended
    + calibrated predictions (not clipped); ``oof_uncalibrated`` (n,) the same before calibration (for each
    held-out fold, the blender fitted on the other folds; equal to ``oof`` for AUC). ``ladder``: (step,
    cross-fitted score) for best single model -> blend -> calibrated -> clipped (calibrated for log loss and
    accuracy, clipped for log loss only); in the cross-fitted best single model each held-out fold gets the
    model best on the other folds, and in the clipped step the clip chosen on the other folds. ``best_model``
    is the column best on every row. ``clip`` (log loss only, else None) is chosen on ``oof``;
    ``clip_logloss`` is the log loss of ``oof`` clipped there. ``method_scores`` are the cross-fitted scores
    that chose ``blender.method``; ``calibration_scores`` the cross-fitted log losses that chose
    ``calibrator.kind`` (empty for AUC).
    """

    blender: Blender
    calibrator: Calibrator
    oof: np.ndarray
    oof_uncalibrated: np.ndarray
    ladder: list[tuple[str, float]]
    best_model: int
    clip: float | None
    clip_logloss: float | None
    method_scores: dict[str, float]
    calibration_scores: dict[str, float]
    n_used: int
    metric: str = DEFAULT_METRIC


def _check_shapes(P: np.ndarray, y: np.ndarray, folds: np.ndarray) -> None:
    if P.ndim != 2 or P.shape[1] == 0:
        raise ValueError(f"P must be (n_rows, n_models) with at least one model, got shape {P.shape}")
    if y.shape != (P.shape[0],) or folds.shape != (P.shape[0],):
        raise ValueError(f"y {y.shape} and folds {folds.shape} must both be ({P.shape[0]},) like P's rows")


def _check_usable(y: np.ndarray, folds: np.ndarray) -> None:
    """Checks on the usable rows: 0/1 labels, at least 2 folds, both classes outside every fold."""
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold only 0 and 1")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds with usable rows, got {len(fold_ids)}")
    for f in fold_ids:
        if len(np.unique(y[folds != f])) < 2:
            raise ValueError(f"the rows outside fold {f} hold only one class; cannot fit a blender on them")


def crossfit_blend(P: np.ndarray, y: np.ndarray, folds: np.ndarray, *, method: str | None = None,
                   rounds: int = DEFAULT_ROUNDS, metric: str = DEFAULT_METRIC) -> BlendResult:
    """Blend, calibrate and choose a clip with cross-fitted scores; fit the final blender on every row.

    ``P`` (n, n_models) OOF probabilities, ``y`` (n,) 0/1, ``folds`` (n,) fold index per row; rows with a
    non-finite value in ``P`` or fold -1 (unreadable images) are left out and get NaN in ``oof``. ``method``
    None picks the method with the best cross-fitted ``metric`` score among :func:`methods_for` ``metric``.
    Within each held-out fold, everything (blender, calibrator, clip) is fitted on the other folds only: on
    those rows the calibrator sees the blender's in-sample predictions, which is what the final fit on every
    row does too. Which of the calibration and clip steps run depends on ``metric`` (module docstring).

    subtle: choosing the best of several methods (and of three calibrations) by their cross-fitted scores makes
    the chosen score slightly optimistic; each candidate's own score is honest.
    """
    metric = check_metric(metric)
    P = np.asarray(P, dtype=np.float64)
    y = np.asarray(y)
    folds = np.asarray(folds)
    _check_shapes(P, y, folds)
    valid = np.isfinite(P).all(axis=1) & (folds >= 0)
    Pv, yv, fv = P[valid], y[valid], folds[valid]
    _check_usable(yv, fv)
    methods = methods_for(metric)
    if method is not None and method not in methods:
        raise ValueError(f"unknown blend method {method!r} for the metric {metric}; choose one of: "
                         f"{', '.join(methods)}")
    splits = [(fv != f, fv == f) for f in np.unique(fv)]

    def fitted(m: str, rows: np.ndarray) -> Blender:
        return fit_blender(Pv[rows], yv[rows], method=m, rounds=rounds, metric=metric)

    fold_blenders: dict[str, list[Blender]] = {}
    blended: dict[str, np.ndarray] = {}
    for m in methods:
        fold_blenders[m] = [fitted(m, train) for train, _ in splits]
        blended[m] = np.empty(len(yv))
        for (train, held), b in zip(splits, fold_blenders[m]):
            blended[m][held] = b.predict(Pv[held])
    method_losses = {m: _crossfit_loss(metric, yv, blended[m], fv) for m in methods}
    # subtle: accuracy ties are common (a few rows decide it), so they go to the lower log loss first.
    tie = {m: log_loss(yv, blended[m]) if metric == "accuracy" else 0.0 for m in methods}
    chosen = method or min((m for m in _METHOD_PREFERENCE if m in methods),
                           key=lambda m: (method_losses[m], tie[m], _METHOD_PREFERENCE.index(m)))
    method_scores = {m: _score(metric, v) for m, v in method_losses.items()}
    ladder = [("best single model", method_scores["single"]),  # each held-out fold: the model best on the others
              ("blend", method_scores[chosen])]

    blender = fit_blender(Pv, yv, method=chosen, rounds=rounds, metric=metric)
    best_model = int(np.argmin(loss(fit_metric(metric), yv, Pv)))
    oof = np.full(len(y), np.nan)
    oof_uncalibrated = np.full(len(y), np.nan)
    oof_uncalibrated[valid] = blended[chosen]
    if metric == "auc":  # a monotone calibration or a clip cannot change an AUC: neither is fitted
        oof[valid] = blended[chosen]
        return BlendResult(blender=blender, calibrator=Calibrator("none"), oof=oof,
                           oof_uncalibrated=oof_uncalibrated, ladder=ladder, best_model=best_model, clip=None,
                           clip_logloss=None, method_scores=method_scores, calibration_scores={},
                           n_used=int(valid.sum()), metric=metric)

    in_sample = [b.predict(Pv[train]) for (train, _), b in zip(splits, fold_blenders[chosen])]
    fold_calibrators: dict[str, list[Calibrator]] = {}
    calibrated: dict[str, np.ndarray] = {}
    calibration_scores: dict[str, float] = {}
    for kind in CALIBRATIONS:
        try:
            fold_calibrators[kind] = [fit_calibrator(b_train, yv[train], kind=kind)
                                      for (train, _), b_train in zip(splits, in_sample)]
        except CalibrationError:
            calibration_scores[kind] = math.inf  # unusable on some fold: never chosen
            continue
        calibrated[kind] = np.empty(len(yv))
        for (_, held), cal in zip(splits, fold_calibrators[kind]):
            calibrated[kind][held] = cal.predict(blended[chosen][held])
        calibration_scores[kind] = log_loss(yv, calibrated[kind])
    # subtle: 'none' comes first and wins ties, so a calibration is kept only if it strictly lowers the loss.
    kind = min(CALIBRATIONS, key=lambda k: (calibration_scores[k], CALIBRATIONS.index(k)))
    calibrator = fit_calibrator(blender.predict(Pv), yv, kind=kind)
    oof[valid] = calibrated[kind]
    ladder.append(("calibrated", _score(metric, _crossfit_loss(metric, yv, calibrated[kind], fv))))
    if metric != "logloss":  # accuracy: the labels are 0/1, a clip changes none of them
        return BlendResult(blender=blender, calibrator=calibrator, oof=oof, oof_uncalibrated=oof_uncalibrated,
                           ladder=ladder, best_model=best_model, clip=None, clip_logloss=None,
                           method_scores=method_scores, calibration_scores=calibration_scores,
                           n_used=int(valid.sum()), metric=metric)

    clipped = np.empty(len(yv))
    for (train, held), b_train, cal in zip(splits, in_sample, fold_calibrators[kind]):
        c, _ = best_clip(cal.predict(b_train), yv[train])
        clipped[held] = clip_probabilities(calibrated[kind][held], c)
    clip, clip_loss = best_clip(calibrated[kind], yv)
    ladder.append(("clipped", log_loss(yv, clipped)))
    return BlendResult(blender=blender, calibrator=calibrator, oof=oof, oof_uncalibrated=oof_uncalibrated,
                       ladder=ladder, best_model=best_model,
                       clip=clip, clip_logloss=clip_loss, method_scores=method_scores,
                       calibration_scores=calibration_scores, n_used=int(valid.sum()), metric=metric)


def _crossfit_loss(metric: str, y: np.ndarray, p: np.ndarray, folds: np.ndarray) -> float:
    """:func:`kaggle_kit.metrics.crossfit_score` turned so that lower is better (NaN -> inf)."""
    value = crossfit_score(metric, y, p, folds)
    value = -value if HIGHER_IS_BETTER[metric] else value
    return value if math.isfinite(value) else math.inf


def _score(metric: str, value: float) -> float:
    """A score from its :func:`kaggle_kit.metrics.loss` (inf, an unusable candidate, stays inf)."""
    return float(from_loss(metric, value))


# ------------------------------------------------------------------------------------------------- the edge
@dataclass(frozen=True)
class CvInputs:
    """The cv models' predictions, checked against the fold plan.

    ``oof`` float64 (n_train, n_models): OOF probabilities averaged over repeats (NaN on unreadable rows);
    ``test`` float64 (n_test, n_models); ``results`` the loaded models, in column order; ``prior_rows`` bool
    (n_test,): test images that no model could decode (every model gave them the training prior), or None when
    the feature sets do not say.
    """

    folds: FoldPlan
    results: dict[str, CvResult]
    oof: np.ndarray
    test: np.ndarray
    prior_rows: np.ndarray | None = None

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.results)


def load_cv_inputs(exp_dir: Path, *, warn: Callable[[str], None] = print) -> CvInputs:
    """Every finished model under ``<exp>/cv/`` (see :func:`kaggle_kit.store.load_cv_results`), side by side.

    A model folder without a manifest is an unfinished cv run: it is skipped with a warning.
    """
    folds = load_plan(exp_dir)
    results = load_cv_results(exp_dir, plan=folds, warn=warn)
    # subtle: a row unreadable in one repeat is NaN in the mean too, so it stays out of fitting and scoring.
    oof = np.stack([np.asarray(r.oof, dtype=np.float64).mean(axis=0) for r in results.values()], axis=1)
    test = np.stack([np.asarray(r.test, dtype=np.float64) for r in results.values()], axis=1)
    priors = [r.prior_test_ids for r in results.values()]
    prior_rows = None
    if all(p is not None for p in priors):
        pinned = frozenset.intersection(*priors)
        prior_rows = np.array([i in pinned for i in folds.test_ids], dtype=bool)
    return CvInputs(folds=folds, results=results, oof=oof, test=test, prior_rows=prior_rows)


def _ladder_details(result: BlendResult, models: tuple[str, ...]) -> dict[str, str]:
    c = result.calibrator
    params = ", ".join(f"{k}={v:.4g}" for k, v in c.params.items())
    return {
        "best single model": f"{models[result.best_model]} is best on all rows",
        "blend": result.blender.method,
        "calibrated": f"{c.kind} ({params})" if params else c.kind,
        "clipped": "clip chosen on the other folds",
    }


@dataclass(frozen=True)
class BlendRun:
    """What ``run_blend`` wrote: the blend as the store loads it."""

    blend: BlendRecord

    @property
    def out_dir(self) -> Path:
        return self.blend.path

    def lines(self) -> list[str]:
        """What ``kaggle-kit blend`` prints: methods, weights, the cross-fitted ladder in the blend's metric, the
        clip (or why there is none); the folder last."""
        b = self.blend
        name = NAMES[b.metric]
        scores = ", ".join(f"{k} {'-' if v is None else f'{v:.5f}'}" for k, v in b.method_scores.items())
        out = [f"{len(b.models)} models, {b.n_scored} of {b.n_train} training rows, {b.n_folds} folds; "
               f"cross-fitted OOF {name} by method: {scores} -> {b.method}",
               "weights: " + ", ".join(f"{k} {v:.4g}" for k, v in b.weights.items() if v != 0),
               f"OOF {name}, cross-fitted:"]
        out += [f"  {s.step:<18} {s.score:.5f}  {s.detail}" for s in b.ladder]
        if b.clip is not None:
            out.append(f"chosen clip {b.clip:.4g} (OOF log loss {b.clip_logloss:.5f}), applied by 'kaggle-kit submit'")
        elif b.metric == "auc":
            out.append("AUC: no calibration and no clip (neither can change an AUC)")
        return [*out, str(b.path)]

    def ladder_line(self) -> str:
        """'OOF log loss (5-fold, cross-fitted): best single model 0.1 -> blend 0.09 -> ...' in one line, in the
        blend's metric."""
        steps = " -> ".join(f"{s.step} {s.score:.5f}" for s in self.blend.ladder)
        return f"OOF {NAMES[self.blend.metric]} ({self.blend.n_folds}-fold, cross-fitted): {steps}"


def run_blend(exp_dir: Path, *, method: str | None = None, rounds: int = DEFAULT_ROUNDS, metric: str | None = None,
              warn: Callable[[str], None] = print) -> BlendRun:
    """``kaggle-kit blend``: blend the experiment's cv models for a metric and write ``<exp>/blend/``; holds the
    lock.

    ``metric`` None is the experiment's (else log loss); one given becomes the experiment's. ``method`` None
    picks the method with the best cross-fitted score among :func:`methods_for` the metric (see
    :func:`crossfit_blend`).
    """
    if method is not None and method not in METHODS:
        raise KitError(f"unknown blend method {method!r}; choose one of: {', '.join(METHODS)}", code=2)
    require_experiment(exp_dir)
    chosen = experiment_metric(exp_dir, metric)
    if method is not None and method not in methods_for(chosen):
        raise KitError(f"--method {method} is not used for the metric {chosen}; choose one of: "
                       f"{', '.join(methods_for(chosen))}", code=2)
    with experiment_lock(exp_dir, command="blend"):
        inputs = load_cv_inputs(exp_dir, warn=warn)
        folds = inputs.folds
        try:
            result = crossfit_blend(inputs.oof, folds.y, folds.plan[0], method=method, rounds=rounds, metric=chosen)
        except ValueError as exc:
            raise KitError(f"cannot blend the cv results in {cv_root(exp_dir)}: {exc}") from None
        test = result.calibrator.predict(result.blender.predict(inputs.test))
        # subtle: a test image nobody could decode keeps the training prior the cv models gave it; the blender
        # and the calibrator were fitted on the models' scores of real images and would move it. A rank blend
        # already puts it where the prior falls among each model's predictions.
        prior_rows = inputs.prior_rows if inputs.prior_rows is not None else np.zeros(len(test), dtype=bool)
        if result.blender.method != "rank":
            test[prior_rows] = inputs.test[prior_rows].mean(axis=1)
        details = _ladder_details(result, inputs.models)
        record = write_blend(
            exp_dir, plan=folds, inputs=inputs.results, oof=result.oof, oof_uncalibrated=result.oof_uncalibrated,
            test=test, metric=chosen, method=result.blender.method, method_scores=result.method_scores,
            weights=dict(zip(inputs.models, result.blender.weights)),
            intercept=result.blender.intercept if result.blender.method == "stack" else None, rounds=rounds,
            calibration=result.calibrator.kind, calibration_params=result.calibrator.params,
            calibration_scores=result.calibration_scores,
            ladder=[LadderStep(step, score, details[step]) for step, score in result.ladder],
            clip=result.clip, clip_logloss=result.clip_logloss, clip_bounds=CLIP_BOUNDS,
            n_scored=result.n_used, n_test_prior=int(prior_rows.sum()),
        )
        if metric is not None:
            remember_metric(exp_dir, chosen)
    return BlendRun(record)
