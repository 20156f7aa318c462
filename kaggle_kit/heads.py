"""Heads: small models fitted on cached features, fold by fold. Pure functions over numpy arrays.

Every head has the same shape::

    fit_<head>(views, y, fold, test_views, *, settings, tta_train, tta_predict, seed, on_fold) -> HeadOutput

- ``views``: one or two float32 arrays (n, d) holding the same training rows seen two ways: view 0 the
  images as they are, view 1 (with flip TTA) the horizontally flipped images;
- ``y`` (n,) 0/1 labels; ``fold`` (n,) int: each row's outer fold 0..k-1, or -1 for a row that must be
  neither fitted nor predicted (an unreadable image);
- ``test_views``: the test rows, (m, d) per view, in the same view order;
- ``tta_train``: fit on every view of the training rows (augmentation); ``tta_predict``: predict the mean
  over every view. Both need two views;
- the result: out-of-fold P(positive) (n,) (NaN where ``fold`` is -1) and test P(positive) (m,) averaged
  over the k fold models, each fold model's test P(positive) (m, k), plus the resolved parameters (e.g. the C
  chosen in each fold);
- ``extra`` (optional, :class:`ExtraRows`): more training rows, given per outer fold with their own targets
  and weights (pseudo-labelled test rows: :mod:`kaggle_kit.pseudo`). They are only ever fitted.

subtle: averages (over views, and over fold models for the test rows) are taken in **probability** space.
The quantity every later stage consumes and Kaggle scores is a probability; the mean of probabilities is
bounded by its members, so one over-confident fold model cannot push a row to 0 or 1 on its own (in logit
space a single fold at logit 30 dominates four at 2). For fold models fitted on overlapping 80 % subsets the
two means differ little otherwise.

The heads: ``logreg`` (power normalisation, standardisation + L2 logistic regression whose C is chosen by an
inner stratified CV on the training folds only) and ``mlp`` (a small Keras network, early-stopped on an inner
stratified split).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy.special import expit

from kaggle_kit.logistic import Design, LogisticProblems
from kaggle_kit.metrics import log_loss

# C values tried by the logistic regression, weakest regularisation last (sklearn's meaning: C multiplies
# the summed log loss, the L2 penalty is ||w||^2 / 2).
DEFAULT_CS = tuple(float(c) for c in np.logspace(-5, 1, 13))


@dataclass(frozen=True)
class HeadOutput:
    """``oof`` float32 (n,) out-of-fold P(positive), NaN on rows with fold -1; ``test`` float32 (m,): the
    mean of ``test_folds`` float32 (m, k), column f the test P(positive) of the model of outer fold f."""

    oof: np.ndarray
    test: np.ndarray
    params: dict[str, Any]
    test_folds: np.ndarray | None = None


@dataclass(frozen=True)
class ExtraRows:
    """Training rows beyond the labelled ones, given per outer fold (pseudo-labelled test rows, for one).

    ``views``: one float32 (r, d) array per training view, in the training views' order (the flipped view of
    each extra row where the head trains on flips); ``targets`` float (k, r) in [0, 1]: outer fold f's target
    for extra row i (0/1, or soft); ``weights`` float (k, r) >= 0: its weight in fold f's fits (1 counts as
    much as a labelled row, 0 leaves it out). Extra rows are only ever fitted: they are never held out,
    predicted out of fold or scored, so inner CV and early stopping still judge labelled rows only.
    """

    views: Sequence[np.ndarray]
    targets: np.ndarray
    weights: np.ndarray

    def check(self, k: int, d: int, n_views: int) -> None:
        """Refuse extra rows that do not fit k outer folds, d features and n_views training views."""
        if len(self.views) < n_views:
            raise ValueError(f"extra rows need {n_views} view(s), like the training rows, got {len(self.views)}")
        r = len(self.views[0])
        for v in self.views:
            if v.shape != (r, d):
                raise ValueError(f"every view of the extra rows must be ({r}, {d}), got {v.shape}")
        if np.shape(self.targets) != (k, r) or np.shape(self.weights) != (k, r):
            raise ValueError(f"extra targets and weights must be ({k}, {r}) (folds, rows), got "
                             f"{np.shape(self.targets)} and {np.shape(self.weights)}")
        if not ((self.targets >= 0) & (self.targets <= 1)).all() or (self.weights < 0).any():
            raise ValueError("extra targets must lie in [0, 1] and their weights be >= 0")


@dataclass(frozen=True)
class LogregSettings:
    """Settings of the ``logreg`` head.

    ``Cs``: the grid, walked from the first (strongest regularisation) on; the walk stops for a fold once its
    inner-CV log loss has not improved for ``patience`` consecutive values. ``inner_folds``: folds of the
    inner stratified CV. ``tol``, ``refit_tol``: the solver stops about this far (in mean log loss) from each
    minimum, on the C path and in the final per-fold fits. ``precondition_rank``: principal directions that
    precondition the solver (speed only, not the result). ``power``: every feature x becomes
    sign(x) |x|^power before standardisation (power normalisation, Perronnin et al. 2010: pooled activations
    are skewed, a few large ones dominate; 1 leaves them as they are). 0.5 was chosen out of fold on both dev
    sets (logreg, flip TTA, 5 folds; bench/recipe.py screen --transform sqrt): dogs-vs-cats-mini Lite0 320 px,
    plan seeds 0-2: 0.01815/0.02032/0.02000 -> 0.01784/0.02025/0.01818; malaria-mini, 39 feature sets with
    rotation views, patient-grouped folds: better for 33 of them (Lite2 224 px 0.1890 -> 0.1700), their blend
    0.1484 -> 0.1431.
    """

    Cs: tuple[float, ...] = DEFAULT_CS
    inner_folds: int = 3
    patience: int = 1
    tol: float = 3e-5
    refit_tol: float = 1e-8
    max_iter: int = 300
    precondition_rank: int = 64
    power: float = 0.5


@dataclass(frozen=True)
class MlpSettings:
    """Settings of the ``mlp`` head: Dense(hidden, relu) -> Dropout -> Dense(1, sigmoid), Adam.

    Early stopping watches the log loss of ``validation_fraction`` of the training rows (a stratified split),
    stops after ``patience`` epochs without improvement and keeps the best epoch's weights. Batches hold
    ``batch_size`` rows, fewer on small data sets so that an epoch has at least ``min_steps`` of them.
    """

    hidden: int = 256
    dropout: float = 0.5
    learning_rate: float = 1e-3
    batch_size: int = 256
    min_steps: int = 16
    max_epochs: int = 200
    patience: int = 10
    validation_fraction: float = 0.1


# ------------------------------------------------------------------------------------------------ checks
def _check(views: Sequence[np.ndarray], y: np.ndarray, fold: np.ndarray, test_views: Sequence[np.ndarray], *,
           tta_train: bool, tta_predict: bool) -> int:
    """Validate the common arguments; return the number of outer folds k."""
    if not views or len(views) != len(test_views):
        raise ValueError(f"need as many test views as training views (at least one), got {len(views)} and "
                         f"{len(test_views)}")
    n, d = views[0].shape
    for v in views:
        if v.shape != (n, d):
            raise ValueError(f"every training view must be ({n}, {d}), got {v.shape}")
    for v in test_views:
        if v.ndim != 2 or v.shape[1] != d:
            raise ValueError(f"every test view must have {d} columns, got shape {v.shape}")
    if y.shape != (n,) or fold.shape != (n,):
        raise ValueError(f"y and fold must be ({n},), got {y.shape} and {fold.shape}")
    if (tta_train or tta_predict) and len(views) < 2:
        raise ValueError("tta_train and tta_predict need a second (flipped) view of the features")
    used = fold >= 0
    if not used.any():
        raise ValueError("every row has fold -1: nothing to fit")
    k = int(fold.max()) + 1
    if k < 2 or set(np.unique(fold[used]).tolist()) != set(range(k)):
        raise ValueError(f"fold must number the usable rows' folds 0..k-1 (k >= 2), got {sorted(set(fold.tolist()))}")
    if set(np.unique(y[used]).tolist()) != {0, 1}:
        raise ValueError("y must hold both labels 0 and 1 on the usable rows")
    return k


def _view_mean(probs: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over views of (rows, ...) probabilities (probability space: see the module docstring)."""
    return np.mean(np.stack(probs), axis=0)


def power_normalise(X: np.ndarray, power: float) -> np.ndarray:
    """sign(X) |X|^power, float32 (X itself when power is 1)."""
    X = np.asarray(X, dtype=np.float32)
    if power == 1.0:
        return X
    return (np.sign(X) * np.abs(X) ** np.float32(power)).astype(np.float32)


def _standardiser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (d,) float32 of X (rows, d), zero deviations replaced by 1."""
    mean = X.mean(axis=0, dtype=np.float64)
    sd = X.std(axis=0, dtype=np.float64)
    sd[sd == 0] = 1.0
    return mean.astype(np.float32), sd.astype(np.float32)


def _inner_folds(y: np.ndarray, fold: np.ndarray, k: int, *, n_inner: int, seed: int) -> np.ndarray:
    """(k, n) int: for outer fold f, the inner fold 0..n_inner-1 of each of its training rows, else -1."""
    from sklearn.model_selection import StratifiedKFold

    inner = np.full((k, len(y)), -1, dtype=np.int64)
    for f in range(k):
        rows = np.flatnonzero((fold >= 0) & (fold != f))
        fewest = int(np.bincount(y[rows], minlength=2).min())
        if fewest < n_inner:
            raise ValueError(f"outer fold {f} leaves {fewest} training rows of one class, fewer than "
                             f"inner_folds={n_inner}; use fewer folds or more data")
        splitter = StratifiedKFold(n_splits=n_inner, shuffle=True, random_state=seed + f)
        for j, (_, held_out) in enumerate(splitter.split(rows, y[rows])):
            inner[f, rows[held_out]] = j
    return inner


def fit_logreg(
    views: Sequence[np.ndarray],
    y: np.ndarray,
    fold: np.ndarray,
    test_views: Sequence[np.ndarray],
    *,
    settings: LogregSettings = LogregSettings(),
    tta_train: bool = False,
    tta_predict: bool = False,
    seed: int,
    on_fold: Callable[[int], None] = lambda n: None,
    extra: ExtraRows | None = None,
) -> HeadOutput:
    """StandardScaler + LogisticRegression per outer fold, C chosen by inner stratified CV (log loss).

    The same model as sklearn's ``make_pipeline(StandardScaler(), LogisticRegressionCV(Cs,
    cv=StratifiedKFold(inner_folds), scoring='neg_log_loss'))`` fitted on each outer fold's training rows,
    but solved for every fold at once: the k x inner_folds inner problems share one feature matrix, so a
    solver iteration reads it once for all of them. C is walked from strong to weak regularisation with
    warm starts, and the walk stops for a fold once its inner-CV loss has not improved ``patience`` times in
    a row. Shapes: see the module docstring. ``on_fold(k)`` is called once all k folds are done.

    ``extra`` rows join the inner and the outer fits of their fold (as sample weights and per-problem
    targets); the standardisation stays that of the labelled training rows. subtle: fold f's inner fits see
    fold f's extra rows whole, so where their targets were made from all of fold f's training rows
    (pseudo-labels), the inner scores that choose C can be a little optimistic; that touches the choice of
    C inside fold f only, never the held-out rows of fold f.
    """
    y = np.asarray(y).astype(np.int64)
    fold = np.asarray(fold)
    k = _check(views, y, fold, test_views, tta_train=tta_train, tta_predict=tta_predict)
    n, J = len(y), settings.inner_folds
    if extra is not None:
        extra.check(k, views[0].shape[1], len(views) if tta_train else 1)
    if settings.power != 1.0:
        views = [power_normalise(v, settings.power) for v in views]
        test_views = [power_normalise(v, settings.power) for v in test_views]
        if extra is not None:
            extra = dataclasses.replace(extra, views=[power_normalise(v, settings.power) for v in extra.views])
    n_pred_views = len(views) if tta_predict else 1
    n_fit_views = len(views) if tta_train else 1
    # One float32 matrix of every view needed, globally standardised. This only conditions the numbers (the
    # exact per-fold standardisation is applied on top), so it may use every row: it sees no labels.
    X_all = np.concatenate([np.asarray(v, dtype=np.float32) for v in views[:max(n_pred_views, n_fit_views)]])
    g_mean, g_sd = _standardiser(X_all)
    X_all -= g_mean
    X_all /= g_sd
    X_fit = X_all[: n * n_fit_views]
    pred_views = [X_all[v * n:(v + 1) * n] for v in range(n_pred_views)]

    inner = _inner_folds(y, fold, k, n_inner=J, seed=seed)  # (k, n)
    outer_train = (fold[None, :] >= 0) & (fold[None, :] != np.arange(k)[:, None])  # (k, n)
    inner_train = (outer_train[:, :, None] & (inner[:, :, None] != np.arange(J))).transpose(1, 0, 2)
    inner_train = inner_train.reshape(n, k * J)  # problem f * J + j: fold f's training rows minus inner fold j
    # subtle: masks are made on the original rows and tiled over the views, so a held-out row's flipped
    # twin is held out with it (a twin in training would leak its label).
    inner_fit = np.tile(inner_train, (n_fit_views, 1)).astype(np.float32)
    outer_fit = np.tile(outer_train.T, (n_fit_views, 1)).astype(np.float32)  # (N, k)

    # Each outer fold's standardisation: mean and sd over its training rows, as a StandardScaler fitted on
    # the training folds; the inner problems use their outer fold's, as inside a pipeline.
    sums, sq, total = np.zeros((k, X_fit.shape[1])), np.zeros((k, X_fit.shape[1])), 0.0
    for a in range(0, len(X_fit), 8192):
        block, m = X_fit[a:a + 8192], outer_fit[a:a + 8192]
        block_sq = block * block
        sums += m.T @ block
        sq += m.T @ block_sq
        total += float(block_sq.sum(dtype=np.float64))
    counts = outer_fit.sum(axis=0, dtype=np.float64)[:, None]
    mu = sums / counts
    sd = np.sqrt(np.maximum(sq / counts - mu * mu, 0.0))
    sd[sd < 1e-6] = 1.0
    mu, sd = mu.T.astype(np.float32), sd.T.astype(np.float32)  # (d, k)
    mean_sq = total / len(X_fit)  # of the labelled rows; it only sets the preconditioner (speed, not result)
    y_fit = np.tile(y, n_fit_views)
    inner_targets = outer_targets = None
    if extra is not None:
        X_fit, y_fit, inner_fit, outer_fit, inner_targets, outer_targets = _with_extra(
            extra, X_fit, y_fit, inner_fit, outer_fit, g_mean=g_mean, g_sd=g_sd, n_views=n_fit_views, J=J)
    data = Design(X_fit, y_fit, rank=settings.precondition_rank, total=mean_sq, seed=seed)

    # ---- the inner CV along the C path
    inner_problem = LogisticProblems(data, inner_fit, np.repeat(mu, J, axis=1), np.repeat(sd, J, axis=1),
                                     targets=inner_targets)
    prior = inner_train.T @ y / inner_train.sum(axis=0)
    W = np.zeros((X_fit.shape[1] + 1, k * J))
    W[-1] = np.log(prior / (1 - prior))
    best_loss, best_at, worse = np.full(k, np.inf), np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    best_W = W.copy()
    path: list[list[float]] = [[] for _ in range(k)]
    walking = np.ones(k, dtype=bool)
    iterations = 0
    for ci, C in enumerate(settings.Cs):
        if not walking.any():
            break
        folds_now = np.flatnonzero(walking)
        a = (folds_now[:, None] * J + np.arange(J)).ravel()
        inner_problem.lam[a] = 1.0 / (C * inner_problem.n[a])
        W[:, a], its = inner_problem.solve(W[:, a], a, tol=settings.tol, max_iter=settings.max_iter)
        iterations += int(its.max())
        # every row's probability under each active problem, in one product per view: (n, len(a))
        P = _view_mean([expit(inner_problem.logits(Xv, W[:, a], a)) for Xv in pred_views])
        for i, f in enumerate(folds_now):
            rows = np.flatnonzero(inner[f] >= 0)
            loss = log_loss(y[rows], P[rows, i * J + inner[f, rows]])  # each row by the fit holding it out
            path[f].append(round(loss, 6))
            if loss < best_loss[f]:
                best_loss[f], best_at[f], worse[f] = loss, ci, 0
                best_W[:, f * J:(f + 1) * J] = W[:, f * J:(f + 1) * J]
            else:
                worse[f] += 1
                walking[f] = worse[f] < settings.patience

    # ---- each outer fold refitted on all its training rows at its C, warm-started from its inner fits
    chosen = np.array([settings.Cs[i] for i in best_at])
    outer_problem = LogisticProblems(data, outer_fit, mu, sd, targets=outer_targets)
    folds = np.arange(k)
    outer_problem.lam[:] = 1.0 / (chosen * outer_problem.n)
    W_out, its = outer_problem.solve(best_W.reshape(-1, k, J).mean(axis=2), folds, tol=settings.refit_tol,
                                     max_iter=settings.max_iter)
    iterations += int(its.max())
    P = _view_mean([expit(outer_problem.logits(Xv, W_out, folds)) for Xv in pred_views])  # (n, k)
    used = fold >= 0
    oof = np.full(n, np.nan, dtype=np.float32)
    oof[used] = P[used, fold[used]]
    test_X = [(np.asarray(v, dtype=np.float32) - g_mean) / g_sd for v in test_views[:n_pred_views]]
    test_folds = _view_mean([expit(outer_problem.logits(Xv, W_out, folds)) for Xv in test_X])  # (m, k)
    on_fold(k)
    return HeadOutput(
        oof=oof,
        test=test_folds.mean(axis=1).astype(np.float32),  # the mean over fold models, in probability space
        params={"C": chosen.tolist(), "inner_logloss": [round(float(x), 6) for x in best_loss],
                "inner_logloss_path": path, "solver_iterations": iterations},
        test_folds=test_folds.astype(np.float32),
    )


def _with_extra(extra: ExtraRows, X_fit: np.ndarray, y_fit: np.ndarray, inner_fit: np.ndarray,
                outer_fit: np.ndarray, *, g_mean: np.ndarray, g_sd: np.ndarray, n_views: int, J: int):
    """The logreg fit's arrays with the extra rows appended: rows (N + R, d), shared labels (N + R,), inner
    masks (N + R, k J), outer masks (N + R, k) and per-problem targets (N + R, k J) and (N + R, k). The
    extra rows are standardised as the training rows were (globally) and tiled over the views; rows that
    no fold uses are dropped."""
    E = np.concatenate([(np.asarray(v, dtype=np.float32) - g_mean) / g_sd for v in extra.views[:n_views]])
    weights = np.tile(np.asarray(extra.weights, dtype=np.float32).T, (n_views, 1))  # (R, k)
    targets = np.tile(np.asarray(extra.targets, dtype=np.float32).T, (n_views, 1))
    used = weights.max(axis=1) > 0
    E, weights, targets = E[used], weights[used], targets[used]
    labels = y_fit.astype(np.float32)
    outer_targets = np.concatenate([np.repeat(labels[:, None], weights.shape[1], axis=1), targets])
    return (np.concatenate([X_fit, E]), np.concatenate([labels, targets[:, 0]]),
            np.concatenate([inner_fit, np.repeat(weights, J, axis=1)]), np.concatenate([outer_fit, weights]),
            np.repeat(outer_targets, J, axis=1), outer_targets)


# ------------------------------------------------------------------------------------------------- mlp
def _mlp_model(keras, width: int, settings: MlpSettings, *, prior: float):
    """Dense(hidden, relu) -> Dropout -> Dense(1, sigmoid) on (batch, width) standardised features.

    subtle: the output layer starts at zero weights and the training prior as its bias, so the untrained
    network predicts the prior instead of confident noise, and early stopping can fall back on it.
    """
    inputs = keras.Input((width,))
    x = keras.layers.Dense(settings.hidden, activation="relu")(inputs)
    x = keras.layers.Dropout(settings.dropout)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros",
                                 bias_initializer=keras.initializers.Constant(float(np.log(prior / (1 - prior)))))(x)
    return keras.Model(inputs, outputs)


def _predict(keras, model, X: np.ndarray, *, batch: int = 8192) -> np.ndarray:
    """(rows,) probabilities of X (rows, width), calling the model on slices (``model.predict`` in a loop
    grows memory)."""
    return np.concatenate([keras.ops.convert_to_numpy(model(X[a:a + batch], training=False))[:, 0]
                           for a in range(0, len(X), batch)])


def fit_mlp(
    views: Sequence[np.ndarray],
    y: np.ndarray,
    fold: np.ndarray,
    test_views: Sequence[np.ndarray],
    *,
    settings: MlpSettings = MlpSettings(),
    tta_train: bool = False,
    tta_predict: bool = False,
    seed: int,
    on_fold: Callable[[int], None] = lambda n: None,
    extra: ExtraRows | None = None,
) -> HeadOutput:
    """A small Keras network per outer fold, early-stopped on a stratified split of its training rows.

    Inputs are standardised with the fitting rows' mean and sd. After each epoch the early-stopping rows
    are predicted as the out-of-fold rows will be (averaged over the views with ``tta_predict``); the
    weights of the best epoch are kept, the untrained network (which predicts the prior) included. Each
    fold's randomness (split, initial weights, dropout, batch order) comes from ``seed``. Shapes: see the
    module docstring. ``on_fold(1)`` is called after each fold.

    ``extra`` rows of fold f join its fitting rows with their targets and weights (never its early-stopping
    rows); the standardisation and the initial bias stay those of the labelled fitting rows.
    """
    from sklearn.model_selection import train_test_split

    from kaggle_kit.keras_loader import load_keras

    keras = load_keras()

    y = np.asarray(y).astype(np.int64)
    fold = np.asarray(fold)
    k = _check(views, y, fold, test_views, tta_train=tta_train, tta_predict=tta_predict)
    if extra is not None:
        extra.check(k, views[0].shape[1], len(views) if tta_train else 1)
    fit_views = views if tta_train else views[:1]
    pred_views, pred_test = views[:len(views) if tta_predict else 1], test_views[:len(views) if tta_predict else 1]
    fold_seeds = np.random.SeedSequence(seed).generate_state(k)
    oof = np.full(len(y), np.nan, dtype=np.float32)
    test = np.zeros(len(test_views[0]))
    test_folds = np.zeros((len(test_views[0]), k), dtype=np.float32)
    epochs = []
    # subtle: one compiled model serves every fold (each fold resets its weights and the optimizer's state),
    # because a new model traces its training step anew, at about a second a model.
    keras.utils.set_random_seed(seed)
    model = _mlp_model(keras, views[0].shape[1], settings, prior=0.5)
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss="binary_crossentropy")
    model.optimizer.build(model.trainable_variables)
    fresh_optimizer = [v.numpy() for v in model.optimizer.variables]
    for f in range(k):
        train_rows = np.flatnonzero((fold >= 0) & (fold != f))
        fit_rows, stop_rows = train_test_split(train_rows, test_size=settings.validation_fraction,
                                               stratify=y[train_rows], random_state=int(fold_seeds[f]))
        fit_rows, stop_rows = np.sort(fit_rows), np.sort(stop_rows)
        # subtle: the split is of the original rows and only the fitting rows' views are stacked, so an
        # early-stopping row's flipped twin never trains the model that is stopped on it.
        X_fit = np.concatenate([np.asarray(v[fit_rows], dtype=np.float32) for v in fit_views])
        y_fit = np.tile(y[fit_rows], len(fit_views)).astype(np.float32)
        mean, sd = _standardiser(X_fit)
        prior = float(y_fit.mean())
        w_fit = None
        if extra is not None:
            used = np.flatnonzero(extra.weights[f] > 0)
            X_fit = np.concatenate([X_fit] + [np.asarray(v[used], dtype=np.float32)
                                              for v in extra.views[:len(fit_views)]])
            y_fit = np.concatenate([y_fit, np.tile(extra.targets[f][used], len(fit_views)).astype(np.float32)])
            w_fit = np.concatenate([np.ones(len(fit_rows) * len(fit_views), dtype=np.float32),
                                    np.tile(extra.weights[f][used], len(fit_views)).astype(np.float32)])
        X_fit = (X_fit - mean) / sd

        keras.utils.set_random_seed(int(fold_seeds[f]))
        model.set_weights(_mlp_model(keras, X_fit.shape[1], settings, prior=prior).get_weights())
        for variable, value in zip(model.optimizer.variables, fresh_optimizer):
            variable.assign(value)

        def predict(rows_views: Sequence[np.ndarray]) -> np.ndarray:
            return _view_mean([_predict(keras, model, (np.asarray(v, dtype=np.float32) - mean) / sd)
                               for v in rows_views])

        stop_views = [v[stop_rows] for v in pred_views]
        rng = np.random.default_rng(int(fold_seeds[f]))
        best_loss, best_weights, best_epoch, waited = log_loss(y[stop_rows], predict(stop_views)), \
            model.get_weights(), 0, 0
        # subtle: a hand-written epoch loop, because Keras's fit() spends about 0.1-0.3 s per epoch on
        # setting up its data pipeline and validation: most of the time on a small competition. Every batch
        # has the same size (an epoch skips the remainder of its shuffle): a new batch shape would trace the
        # training step again.
        size = min(settings.batch_size, max(1, len(X_fit) // settings.min_steps))
        for epoch in range(1, settings.max_epochs + 1):
            order = rng.permutation(len(X_fit))
            for start in range(0, len(order) - size + 1, size):
                batch = order[start:start + size]
                if w_fit is None:
                    model.train_on_batch(X_fit[batch], y_fit[batch])
                else:
                    model.train_on_batch(X_fit[batch], y_fit[batch], sample_weight=w_fit[batch])
            loss = log_loss(y[stop_rows], predict(stop_views))
            if loss < best_loss:
                best_loss, best_weights, best_epoch, waited = loss, model.get_weights(), epoch, 0
            else:
                waited += 1
                if waited >= settings.patience:
                    break
        model.set_weights(best_weights)
        epochs.append(best_epoch)
        rows = np.flatnonzero(fold == f)
        oof[rows] = predict([v[rows] for v in pred_views])
        test_folds[:, f] = predict(pred_test)
        test += test_folds[:, f] / k  # the mean over fold models, in probability space
        on_fold(1)
    keras.backend.clear_session()
    return HeadOutput(oof=oof, test=test.astype(np.float32), params={"epochs": epochs}, test_folds=test_folds)


HEADS: dict[str, tuple[Callable[..., HeadOutput], type]] = {
    "logreg": (fit_logreg, LogregSettings),
    "mlp": (fit_mlp, MlpSettings),
}
