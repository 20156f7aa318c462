"""Stage 4: blend the cv models' out-of-fold predictions, calibrate, choose a clip, with honest scores.

Core (pure numpy, every setting a keyword argument): ``P`` is always (n_rows, n_models) probabilities of the
positive class, ``y`` (n_rows,) 0/1 labels, ``folds`` (n_rows,) the fold index of each row.

- blending methods: ``selection`` (greedy ensemble selection with replacement, Caruana et al. 2004, as in
  AutoGluon), ``stack`` (logistic regression on clipped logits) and ``mean`` (the baseline);
- calibration of the blend: ``temperature`` (one T > 0 on the logit) or ``platt`` (slope and intercept on the
  logit), kept only if it lowers the cross-fitted log loss;
- the clip level c minimising the log loss of clip(p, c, 1 - c).

Every reported score is cross-fitted: for each fold of the experiment's plan the blender, the calibrator and
the clip are fitted on the other folds' rows and scored on the held-out fold, so a gain is never the
in-sample one. The final blender and calibrator, used for the test predictions, are fitted on every row.

Edge: :func:`load_cv_inputs` reads ``experiments/<exp>/folds/`` (with :func:`kaggle_kit.folds.load_plan`) and
``experiments/<exp>/cv/<model>/``; :func:`run_blend` writes ``experiments/<exp>/blend/``:

- ``oof.npy`` float32 (n_train,): cross-fitted blended + calibrated OOF predictions (NaN on unreadable rows);
- ``test.npy`` float32 (n_test,): blended + calibrated test predictions, not yet clipped;
- ``manifest.json`` (format ``kaggle-kit/blend/1``), written last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.special import expit, logit

from kaggle_kit.cv import FORMAT as CV_FORMAT
from kaggle_kit.features import FORMAT as FEATURES_FORMAT
from kaggle_kit.folds import FoldPlan, load_plan
from kaggle_kit.metrics import log_loss

FORMAT = "kaggle-kit/blend/1"
METHODS = ("selection", "stack", "mean", "single")
CALIBRATIONS = ("none", "temperature", "platt")
LOGIT_EPS = 1e-6  # probabilities are clipped to [1e-6, 1 - 1e-6] before taking logits (|logit| <= 13.8)
CLIP_BOUNDS = (1e-4, 0.05)
DEFAULT_ROUNDS = 25

# subtle: when two methods (or calibrations) score the same, the simpler one wins: ties between a one-model
# selection and the mean are common with few models. 'single' (the model best on the fitting rows alone) is
# the honest fallback: picked whenever no blend beats it out of fold, as when one backbone dominates.
_METHOD_PREFERENCE = ("single", "mean", "selection", "stack")


# ------------------------------------------------------------------------------------------------ the core
def logits(p: np.ndarray) -> np.ndarray:
    """Logits of probabilities clipped to [1e-6, 1 - 1e-6]: finite even for saturated 0/1 predictions."""
    return logit(np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPS, 1.0 - LOGIT_EPS))


def select_ensemble(P: np.ndarray, y: np.ndarray, *, rounds: int = DEFAULT_ROUNDS) -> np.ndarray:
    """Greedy ensemble selection with replacement; return the (n_models,) weights (>= 0, summing to 1).

    Start from an empty ensemble; in each of ``rounds`` rounds add the model (again, if it is already in)
    whose addition gives the lowest log loss of the running average of probabilities. Ties go to the earlier
    model; a candidate whose score is NaN or inf never wins.
    """
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] == 0:
        raise ValueError(f"P must be (n_rows, n_models) with at least one model, got shape {P.shape}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    counts = np.zeros(P.shape[1], dtype=np.int64)
    total = np.zeros(P.shape[0])
    for r in range(rounds):
        scores = log_loss(y, (total[:, None] + P) / (r + 1))
        # subtle: argmin would happily return a NaN position (NaN compares as the minimum), so map NaN to inf.
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
    ``stack`` is sigmoid(logits(P) @ weights + intercept), whose weights may have any sign.
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
        return P[:, used] @ self.weights[used]


def fit_blender(P: np.ndarray, y: np.ndarray, *, method: str, rounds: int = DEFAULT_ROUNDS,
                stack_c: float = 1.0) -> Blender:
    """Fit a blender of ``method`` on finite (n, n_models) probabilities ``P`` and (n,) labels ``y``.

    ``rounds`` is the number of greedy selection rounds; ``stack_c`` the inverse L2 strength of the stacking
    logistic regression.
    """
    P = np.asarray(P, dtype=np.float64)
    if method == "mean":
        return Blender("mean", np.full(P.shape[1], 1.0 / P.shape[1]))
    if method == "selection":
        return Blender("selection", select_ensemble(P, y, rounds=rounds))
    if method == "single":
        scores = log_loss(np.asarray(y), P)  # (n_models,)
        weights = np.zeros(P.shape[1])
        weights[int(np.argmin(np.where(np.isfinite(scores), scores, np.inf)))] = 1.0
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

    ``oof`` (n,): cross-fitted blended + calibrated predictions (not clipped). ``ladder``: (step, cross-fitted
    log loss) for best single model -> blend -> calibrated -> clipped; in the cross-fitted best single model
    each held-out fold gets the model best on the other folds, and in the clipped step the clip chosen on
    the other folds. ``best_model`` is the column with the lowest log loss on every row. ``clip`` is chosen on ``oof``;
    ``clip_logloss`` is the log loss of ``oof`` clipped there. ``method_scores`` and ``calibration_scores``
    are the cross-fitted log losses that chose ``blender.method`` and ``calibrator.kind``.
    """

    blender: Blender
    calibrator: Calibrator
    oof: np.ndarray
    ladder: list[tuple[str, float]]
    best_model: int
    clip: float
    clip_logloss: float
    method_scores: dict[str, float]
    calibration_scores: dict[str, float]
    n_used: int


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
                   rounds: int = DEFAULT_ROUNDS) -> BlendResult:
    """Blend, calibrate and choose a clip with cross-fitted scores; fit the final blender on every row.

    ``P`` (n, n_models) OOF probabilities, ``y`` (n,) 0/1, ``folds`` (n,) fold index per row; rows with a
    non-finite value in ``P`` or fold -1 (unreadable images) are left out and get NaN in ``oof``. ``method``
    None picks the method with the
    lowest cross-fitted log loss. Within each held-out fold, everything (blender, calibrator, clip) is fitted
    on the other folds only: on those rows the calibrator sees the blender's in-sample predictions, which is
    what the final fit on every row does too.

    subtle: choosing the best of three methods (and of three calibrations) by their cross-fitted scores makes
    the chosen score slightly optimistic; each candidate's own score is honest.
    """
    P = np.asarray(P, dtype=np.float64)
    y = np.asarray(y)
    folds = np.asarray(folds)
    _check_shapes(P, y, folds)
    valid = np.isfinite(P).all(axis=1) & (folds >= 0)
    Pv, yv, fv = P[valid], y[valid], folds[valid]
    _check_usable(yv, fv)
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown blend method {method!r}; choose one of: {', '.join(METHODS)}")
    splits = [(fv != f, fv == f) for f in np.unique(fv)]

    fold_blenders: dict[str, list[Blender]] = {}
    blended: dict[str, np.ndarray] = {}
    for m in METHODS:
        fold_blenders[m] = [fit_blender(Pv[train], yv[train], method=m, rounds=rounds) for train, _ in splits]
        blended[m] = np.empty(len(yv))
        for (train, held), b in zip(splits, fold_blenders[m]):
            blended[m][held] = b.predict(Pv[held])
    method_scores = {m: log_loss(yv, blended[m]) for m in METHODS}
    chosen = method or min(_METHOD_PREFERENCE, key=lambda m: (method_scores[m], _METHOD_PREFERENCE.index(m)))

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

    clipped = np.empty(len(yv))
    for (train, held), b_train, cal in zip(splits, in_sample, fold_calibrators[kind]):
        c, _ = best_clip(cal.predict(b_train), yv[train])
        clipped[held] = clip_probabilities(calibrated[kind][held], c)

    blender = fit_blender(Pv, yv, method=chosen, rounds=rounds)
    calibrator = fit_calibrator(blender.predict(Pv), yv, kind=kind)
    clip, clip_loss = best_clip(calibrated[kind], yv)
    best_model = int(np.argmin(log_loss(yv, Pv)))
    oof = np.full(len(y), np.nan)
    oof[valid] = calibrated[kind]
    ladder = [
        ("best single model", method_scores["single"]),  # each held-out fold: the model best on the others
        ("blend", method_scores[chosen]),
        ("calibrated", calibration_scores[kind]),
        ("clipped", log_loss(yv, clipped)),
    ]
    return BlendResult(blender=blender, calibrator=calibrator, oof=oof, ladder=ladder, best_model=best_model,
                       clip=clip, clip_logloss=clip_loss, method_scores=method_scores,
                       calibration_scores=calibration_scores, n_used=int(valid.sum()))


# ------------------------------------------------------------------------------------------------- the edge
@dataclass(frozen=True)
class CvInputs:
    """The cv models' predictions, checked against the fold plan.

    ``oof`` float64 (n_train, n_models): OOF probabilities averaged over repeats (NaN on unreadable rows);
    ``test`` float64 (n_test, n_models); ``cv_sha256`` maps each model to the hash of its cv manifest;
    ``prior_rows`` bool (n_test,): test images that no model could decode (every model gave them the
    training prior), or None when the feature sets do not say.
    """

    folds: FoldPlan
    models: tuple[str, ...]
    oof: np.ndarray
    test: np.ndarray
    cv_sha256: dict[str, str]
    prior_rows: np.ndarray | None = None


def check_features(exp_dir: Path, model_dir: Path, manifest: dict[str, Any], *, rerun: str) -> set[str] | None:
    """Refuse a cv model whose feature sets were re-extracted since it was fitted (``rerun``: the advice).

    Returns the ids of the test images its feature sets could not decode (the model gave them the training
    prior), or None when that is not known (no feature keys in the cv manifest, or a feature set since removed:
    the cv result itself is still whole, so it is used).
    """
    from kaggle_kit.artifacts import KitError, features_dir, read_manifest

    keys = manifest.get("feature_keys")
    if not isinstance(keys, dict):
        return None
    prior_ids: set[str] | None = set()
    for name, key in keys.items():
        path = features_dir(exp_dir, name) / "manifest.json"
        if not path.exists():
            prior_ids = None
            continue
        features = read_manifest(path, fmt=FEATURES_FORMAT, rerun=f"kaggle-kit features (feature set '{name}')")
        if features.get("key") != key:
            raise KitError(f"the features '{name}' changed after {model_dir} was fitted on them; {rerun}")
        unreadable = features.get("unreadable_ids", {}).get("test")
        if prior_ids is not None and unreadable is not None:
            prior_ids |= set(unreadable)
        else:
            prior_ids = None
    return prior_ids


def load_cv_inputs(exp_dir: Path, *, warn: Callable[[str], None] = print) -> CvInputs:
    """Read every finished model under ``<exp>/cv/`` and check it against the fold plan.

    A model folder without ``manifest.json`` is an unfinished cv run: it is skipped with a warning.
    """
    from kaggle_kit.artifacts import KitError, load_npy, read_manifest, sha256_json

    folds = load_plan(exp_dir)
    n_train, n_test = folds.manifest["n_train"], folds.manifest["n_test"]
    repeats = folds.manifest["repeats"]
    cv_dir = exp_dir / "cv"
    model_dirs = sorted(p for p in cv_dir.iterdir() if p.is_dir()) if cv_dir.is_dir() else []
    models, oofs, tests, hashes, priors = [], [], [], {}, []
    for model_dir in model_dirs:
        if not (model_dir / "manifest.json").exists():
            warn(f"warning: {model_dir} has no manifest.json (an unfinished cv run); it is left out of the blend")
            continue
        rerun = f"kaggle-kit cv (model '{model_dir.name}')"
        manifest = read_manifest(model_dir / "manifest.json", fmt=CV_FORMAT, rerun=rerun)
        if manifest.get("plan_sha256") != folds.manifest["plan_sha256"]:
            raise KitError(f"{model_dir} was fitted on another fold plan than {exp_dir / 'folds'}; re-run '{rerun}'")
        priors.append(check_features(exp_dir, model_dir, manifest, rerun=f"re-run '{rerun}'"))
        oof = np.asarray(load_npy(model_dir / "oof.npy", mmap=False, rerun=rerun), dtype=np.float64)
        test = np.asarray(load_npy(model_dir / "test.npy", mmap=False, rerun=rerun), dtype=np.float64)
        if oof.shape != (repeats, n_train) or test.shape != (n_test,):
            raise KitError(
                f"{model_dir}: oof.npy is {oof.shape} and test.npy {test.shape}, but the experiment has "
                f"({repeats}, {n_train}) and ({n_test},); re-run '{rerun}'"
            )
        for name, arr in (("oof.npy", oof), ("test.npy", test)):
            if np.isinf(arr).any() or ((arr < 0) | (arr > 1)).any():  # NaN compares False: allowed here
                raise KitError(f"{model_dir / name} holds values outside [0, 1]; re-run '{rerun}'")
        models.append(model_dir.name)
        # subtle: a row unreadable in one repeat is NaN in the mean too, so it stays out of fitting and scoring.
        oofs.append(oof.mean(axis=0))
        tests.append(test)
        hashes[model_dir.name] = sha256_json(manifest)
    if not models:
        raise KitError(f"no finished cv results in {cv_dir}; run 'kaggle-kit cv' first")
    prior_rows = None
    if all(p is not None for p in priors):
        pinned = set.intersection(*priors)
        prior_rows = np.array([i in pinned for i in folds.test_ids], dtype=bool)
    return CvInputs(folds=folds, models=tuple(models), oof=np.stack(oofs, axis=1), test=np.stack(tests, axis=1),
                    cv_sha256=hashes, prior_rows=prior_rows)


def _json_scores(scores: dict[str, float]) -> dict[str, float | None]:
    """Scores for JSON: an unusable candidate's inf becomes null (JSON has no infinity)."""
    return {k: (v if math.isfinite(v) else None) for k, v in scores.items()}


def _ladder_details(result: BlendResult, models: tuple[str, ...]) -> dict[str, str]:
    c = result.calibrator
    params = ", ".join(f"{k}={v:.4g}" for k, v in c.params.items())
    return {
        "best single model": f"{models[result.best_model]} is best on all rows",
        "blend": result.blender.method,
        "calibrated": f"{c.kind} ({params})" if params else c.kind,
        "clipped": "clip chosen on the other folds",
    }


def run_blend(exp_dir: Path, *, method: str | None = None, rounds: int = DEFAULT_ROUNDS,
              warn: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """Blend the experiment's cv models; write ``<exp>/blend/``; return (that folder, its manifest)."""
    from kaggle_kit.artifacts import KitError, new_manifest, save_npy_atomic, write_json_atomic

    inputs = load_cv_inputs(exp_dir, warn=warn)
    folds = inputs.folds
    try:
        result = crossfit_blend(inputs.oof, folds.y, folds.plan[0], method=method, rounds=rounds)
    except ValueError as exc:
        raise KitError(f"cannot blend the cv results in {exp_dir / 'cv'}: {exc}") from None
    test = result.calibrator.predict(result.blender.predict(inputs.test))
    # subtle: a test image nobody could decode keeps the training prior the cv models gave it; the blender and
    # the calibrator were fitted on the models' scores of real images and would move it.
    prior_rows = inputs.prior_rows if inputs.prior_rows is not None else np.zeros(len(test), dtype=bool)
    test[prior_rows] = inputs.test[prior_rows].mean(axis=1)
    details = _ladder_details(result, inputs.models)
    out_dir = exp_dir / "blend"
    # subtle: drop the old manifest first, so a crash never pairs it with new arrays.
    (out_dir / "manifest.json").unlink(missing_ok=True)
    save_npy_atomic(out_dir / "oof.npy", result.oof.astype(np.float32))
    save_npy_atomic(out_dir / "test.npy", test.astype(np.float32))
    manifest = new_manifest(
        FORMAT,
        method=result.blender.method,
        method_scores=_json_scores(result.method_scores),
        models=list(inputs.models),
        weights={m: float(w) for m, w in zip(inputs.models, result.blender.weights)},
        intercept=result.blender.intercept if result.blender.method == "stack" else None,
        rounds=rounds,
        calibration={"kind": result.calibrator.kind, "params": result.calibrator.params,
                     "scores": _json_scores(result.calibration_scores)},
        ladder=[{"step": step, "oof_logloss": loss, "detail": details[step]} for step, loss in result.ladder],
        clip={"chosen": result.clip, "oof_logloss": result.clip_logloss, "bounds": list(CLIP_BOUNDS)},
        n_train=folds.manifest["n_train"],
        n_test=folds.manifest["n_test"],
        n_scored=result.n_used,
        n_test_prior=int(prior_rows.sum()),
        n_folds=folds.manifest["n_folds"],
        repeats=folds.manifest["repeats"],
        plan_sha256=folds.manifest["plan_sha256"],
        inputs={"cv": inputs.cv_sha256},
        shapes={"oof": [folds.manifest["n_train"]], "test": [folds.manifest["n_test"]]},
    )
    write_json_atomic(out_dir / "manifest.json", manifest)
    return out_dir, manifest


@dataclass(frozen=True)
class BlendOutput:
    """A finished blend: ``test`` float32 (n_test,) blended + calibrated, unclipped, in ``test_ids`` order."""

    manifest: dict[str, Any]
    test: np.ndarray
    test_ids: tuple[str, ...]


def load_blend(exp_dir: Path) -> BlendOutput:
    """Load ``<exp>/blend/``, refusing a blend made from another fold plan or from since-changed cv results."""
    from kaggle_kit.artifacts import KitError, load_npy, read_manifest, sha256_json

    blend_dir = exp_dir / "blend"
    manifest = read_manifest(blend_dir / "manifest.json", fmt=FORMAT, rerun="kaggle-kit blend")
    folds = load_plan(exp_dir)
    if manifest["plan_sha256"] != folds.manifest["plan_sha256"]:
        raise KitError(f"{blend_dir} was made on another fold plan; re-run 'kaggle-kit blend'")
    for model, digest in manifest["inputs"]["cv"].items():
        path = exp_dir / "cv" / model / "manifest.json"
        current = read_manifest(path, fmt=CV_FORMAT, rerun="kaggle-kit cv") if path.exists() else None
        if current is None or sha256_json(current) != digest:
            raise KitError(f"the cv results of '{model}' changed since {blend_dir} was made; re-run 'kaggle-kit blend'")
        check_features(exp_dir, path.parent, current, rerun="re-run 'kaggle-kit cv', then 'kaggle-kit blend'")
    test = np.asarray(load_npy(blend_dir / "test.npy", mmap=False, rerun="kaggle-kit blend"))
    if test.shape != (len(folds.test_ids),):
        raise KitError(f"{blend_dir / 'test.npy'} has shape {test.shape}, expected ({len(folds.test_ids)},); "
                       "re-run 'kaggle-kit blend'")
    return BlendOutput(manifest=manifest, test=test, test_ids=folds.test_ids)
