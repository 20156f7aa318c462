"""logistic: every problem of a batch is the model an independent per-problem solve finds (scikit-learn, or
scipy on the same objective), and the problems of a batch converge independently of each other."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit

from kaggle_kit.logistic import fit_logistic, lbfgs


def scaled_problem(n: int = 400, d: int = 12, seed: int = 0):
    """Features on very different scales and offsets (as pooled CNN features are), a noisy linear label."""
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d) + rng.uniform(-5, 5, d)).astype(np.float32)
    signal = (X[:, 0] - X[:, 0].mean()) / X[:, 0].std() - (X[:, 1] - X[:, 1].mean()) / X[:, 1].std()
    y = (signal + rng.standard_normal(n) > 0.3).astype(np.int8)
    return X, y


def sklearn_fit(X, y, C, weight=None):
    """An independent solve of one problem: StandardScaler + LogisticRegression, in float64."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-12, max_iter=100_000))
    pipe.fit(X.astype(np.float64), y, standardscaler__sample_weight=weight, logisticregression__sample_weight=weight)
    return pipe


def scipy_fit(X, t, weight, C):
    """An independent solve of the documented objective with soft targets t: the weighted-standardised
    features, sum_i weight_i * crossentropy(t_i, z_i) * C + ||w||^2 / 2, by scipy's L-BFGS-B in float64."""
    X = X.astype(np.float64)
    mu = weight @ X / weight.sum()
    sd = np.sqrt(weight @ (X - mu) ** 2 / weight.sum())
    Xs = (X - mu) / sd

    def f(v):
        z = Xs @ v[:-1] + v[-1]
        loss = C * weight @ (np.logaddexp(0, z) - t * z) + 0.5 * v[:-1] @ v[:-1]
        r = C * weight * (expit(z) - t)
        return loss, np.append(Xs.T @ r + v[:-1], r.sum())

    v = minimize(f, np.zeros(X.shape[1] + 1), jac=True, method="L-BFGS-B",
                 options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 100_000}).x
    return v[:-1] / sd, v[-1] - (mu / sd) @ v[:-1]


def objective(X, t, weight, C, coef, intercept):
    """The documented objective of one problem (summed form, float64) at raw coefficients and intercept."""
    X = X.astype(np.float64)
    mu = weight @ X / weight.sum()
    sd = np.sqrt(weight @ (X - mu) ** 2 / weight.sum())
    z = X @ coef + intercept
    w = coef * sd  # the coefficients on standardised features carry the penalty
    return C * weight @ (np.logaddexp(0, z) - t * z) + 0.5 * w @ w


def assert_same_minimum(X, t, weight, C, fit, j, coef, intercept):
    """Problem j of ``fit`` is the minimum (coef, intercept) of an independent float64 solve: its objective is
    as low to float32 precision (the kit computes logits in float32 and stops about 1e-9 in mean log loss
    from the minimum: a C 1 % off already costs more), and its predictions agree."""
    weight = np.asarray(weight, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    scale = C * weight.sum()  # the summed objective / scale is the solver's: weighted mean log loss + penalty
    f_kit = objective(X, t, weight, C, fit.coef[:, j], fit.intercept[j]) / scale
    f_ref = objective(X, t, weight, C, coef, intercept) / scale
    assert f_ref - 1e-12 <= f_kit <= f_ref + 1e-8, (j, f_kit - f_ref)
    p_ref = expit(X.astype(np.float64) @ coef + intercept)
    np.testing.assert_allclose(fit.predict_proba(X)[:, j], p_ref, atol=3e-4)


def sklearn_minimum(pipe):
    """(raw coefficients, intercept) of a StandardScaler + LogisticRegression pipeline."""
    scaler, lr = pipe[0], pipe[-1]
    return lr.coef_[0] / scaler.scale_, lr.intercept_[0] - (scaler.mean_ / scaler.scale_) @ lr.coef_[0]


def test_each_problem_of_a_batch_is_sklearns_model_on_its_rows():
    X, y = scaled_problem()
    rng = np.random.default_rng(1)
    masks = (rng.random((len(y), 5)) < [[0.3, 0.5, 0.7, 0.9, 1.0]]).astype(np.float32)  # 5 row subsets
    Cs = np.array([1e-3, 0.05, 1.0, 30.0, 0.3])  # from heavy to almost no regularisation
    fit = fit_logistic(X, y, masks, C=Cs)
    for j, C in enumerate(Cs):
        rows = masks[:, j] > 0
        assert_same_minimum(X, y, masks[:, j], C, fit, j, *sklearn_minimum(sklearn_fit(X[rows], y[rows], C)))


def test_row_weights_are_sklearns_sample_weights():
    X, y = scaled_problem(seed=2)
    rng = np.random.default_rng(3)
    weights = rng.uniform(0, 3, (len(y), 3)).astype(np.float32)
    weights[rng.random(weights.shape) < 0.3] = 0.0
    Cs = np.array([0.01, 0.5, 5.0])
    fit = fit_logistic(X, y, weights, C=Cs)
    for j, C in enumerate(Cs):
        ref = sklearn_fit(X, y, C, weight=weights[:, j].astype(np.float64))
        assert_same_minimum(X, y, weights[:, j], C, fit, j, *sklearn_minimum(ref))


def test_soft_targets_per_problem_minimise_the_cross_entropy():
    X, y = scaled_problem(n=300, d=8, seed=4)
    rng = np.random.default_rng(5)
    T = np.clip(y[:, None] * 0.8 + 0.1 + 0.1 * rng.standard_normal((len(y), 2)), 0, 1).astype(np.float32)
    T[:, 1] = rng.random(len(y))  # the second problem's targets: unrelated to the features
    masks = np.ones((len(y), 2), dtype=np.float32)
    masks[::3, 0] = 0.5
    Cs = np.array([0.2, 2.0])
    fit = fit_logistic(X, T, masks, C=Cs)
    for j, C in enumerate(Cs):
        ref = scipy_fit(X, T[:, j].astype(np.float64), masks[:, j].astype(np.float64), C)
        assert_same_minimum(X, T[:, j], masks[:, j], C, fit, j, *ref)


def test_fast_and_slow_problems_in_one_batch_get_their_solo_answers():
    X, y = scaled_problem(n=500, d=20, seed=6)
    X[:, 2] = (2 * y - 1) * (0.5 + np.abs(X[:, 2]))  # one feature nearly separates: weak C needs many iterations
    masks = np.ones((len(y), 2), dtype=np.float32)
    Cs = np.array([1e-4, 1e3])  # problem 0 is almost the prior (few iterations), problem 1 almost unpenalised
    both = fit_logistic(X, y, masks, C=Cs, tol=1e-12)
    assert both.n_iter[1] > 5 * both.n_iter[0]  # the test needs a fast and a slow problem
    for j in range(2):
        alone = fit_logistic(X, y, masks[:, [j]], C=Cs[j], tol=1e-12)
        # the same answer to float32 rounding (a batch multiplies matrices where a lone problem multiplies a
        # vector, so the two stop at different points of the float32 floor), in about as many iterations
        np.testing.assert_allclose(both.predict_proba(X)[:, j], alone.predict_proba(X)[:, 0], atol=1e-4)
        assert abs(int(both.n_iter[j]) - int(alone.n_iter[0])) <= 0.1 * alone.n_iter[0] + 2
        assert_same_minimum(X, y, masks[:, j], Cs[j], both, j, *sklearn_minimum(sklearn_fit(X, y, Cs[j])))


def test_degenerate_problems_do_not_spoil_the_others():
    X, y = scaled_problem(n=400, d=10, seed=7)
    sep = X.copy()
    X = np.concatenate([X, np.zeros((len(X), 1), dtype=np.float32)], axis=1)  # a constant column too
    n = len(y)
    targets = np.tile(y[:, None], (1, 4)).astype(np.float32)
    masks = np.ones((n, 4), dtype=np.float32)
    # problem 1: one class only (its intercept runs off to -inf); problem 2: separable by feature 3 with
    # almost no penalty (its weights grow until the floating-point floor or max_iter stops it)
    masks[y == 1, 1] = 0.0
    targets[:, 2] = (sep[:, 3] > np.median(sep[:, 3])).astype(np.float32)
    Cs = np.array([0.5, 0.5, 1e8, 5.0])
    batch = fit_logistic(X, targets, masks, C=Cs, tol=1e-12, max_iter=300)
    assert np.isfinite(batch.coef).all() and np.isfinite(batch.intercept).all()
    P = batch.predict_proba(X)
    assert P[:, 1].max() < 0.01  # the one-class problem predicts its class
    assert ((P[:, 2] > 0.5) == (targets[:, 2] > 0.5)).all()  # the separable problem separates
    for j in (0, 3):  # the ordinary problems: their solo answers, and sklearn's
        alone = fit_logistic(X, targets[:, j], masks[:, [j]], C=Cs[j], tol=1e-12, max_iter=300)
        np.testing.assert_allclose(P[:, j], alone.predict_proba(X)[:, 0], atol=1e-4)
        assert_same_minimum(X, y, masks[:, j], Cs[j], alone, 0, *sklearn_minimum(sklearn_fit(X, y, Cs[j])))
        assert_same_minimum(X, y, masks[:, j], Cs[j], batch, j, *sklearn_minimum(sklearn_fit(X, y, Cs[j])))


def test_lbfgs_solves_independent_quadratics_of_different_conditioning():
    # f_j(u) = u' A_j u / 2 - b_j' u with minimum A_j^-1 b_j; condition numbers 1, 1e2, 1e4.
    rng = np.random.default_rng(8)
    p, conds = 30, [1.0, 1e2, 1e4]
    A = []
    for c in conds:
        Q, _ = np.linalg.qr(rng.standard_normal((p, p)))
        A.append(Q @ np.diag(np.geomspace(1, c, p)) @ Q.T)
    A = np.stack(A)
    B = rng.standard_normal((p, len(conds)))

    def fg(U, ids):
        AU = np.einsum("kij,jk->ik", A[ids], U)
        return np.einsum("ik,ik->k", U, 0.5 * AU - B[:, ids]), AU - B[:, ids]

    # subtle: tol is about the floor that rounding in f allows (the Armijo test compares objective values)
    U, n_iter = lbfgs(fg, np.zeros((p, len(conds))), np.arange(len(conds)), tol=1e-14, max_iter=2000)
    for j in range(len(conds)):
        exact = np.linalg.solve(A[j], B[:, j])
        assert np.linalg.norm(U[:, j] - exact) <= 1e-5 * np.linalg.norm(exact)
    assert n_iter[0] < n_iter[1] < n_iter[2]  # each stops on its own test
    solo, solo_iter = lbfgs(fg, np.zeros((p, 1)), np.array([1]), tol=1e-14, max_iter=2000)
    np.testing.assert_allclose(solo[:, 0], U[:, 1], rtol=1e-6)
    assert abs(int(solo_iter[0]) - int(n_iter[1])) <= 0.1 * n_iter[1]


def test_bad_arguments_name_the_problem():
    X, y = scaled_problem(n=50, d=3)
    with pytest.raises(ValueError, match="C must be finite and > 0"):
        fit_logistic(X, y, C=0.0)
    with pytest.raises(ValueError, match="targets in \\[0, 1\\]"):
        fit_logistic(X, y * 2.0, C=1.0)
    with pytest.raises(ValueError, match="problems \\[1\\] have none"):
        fit_logistic(X, y, np.c_[np.ones(50), np.zeros(50)], C=1.0)
