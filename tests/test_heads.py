"""heads: no leakage (random labels score log 2 out of fold, flipped twins included), real signal is found,
and the batched logistic regression is the model sklearn fits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kaggle_kit.folds import make_plan
from kaggle_kit.heads import LogregSettings, MlpSettings, fit_logreg, fit_mlp
from kaggle_kit.metrics import log_loss

# The mlp settings of these tests: a few fast epochs are enough to show the properties.
QUICK_MLP = MlpSettings(hidden=32, learning_rate=1e-2, min_steps=4, max_epochs=30, patience=5)
# The mlp head trains Keras networks (TensorFlow starts): slow on a loaded 2-core machine.
HEAD_CASES = [(fit_logreg, LogregSettings()), pytest.param(fit_mlp, QUICK_MLP, marks=pytest.mark.slow)]


def random_problem(n: int = 600, d: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.int8)
    return X, y, make_plan(y, n_folds=5, repeats=1, seed=seed)[0]


def separable_problem(n: int = 600, d: int = 50, seed: int = 1):
    X, y, fold = random_problem(n, d, seed)
    X[:, 7] = (2 * y - 1) * (2.0 + np.abs(X[:, 7]))  # one feature alone separates the classes
    return X, y, fold


@pytest.mark.parametrize("fit,settings", HEAD_CASES, ids=["logreg", "mlp"])
def test_random_labels_score_log2_out_of_fold(fit, settings):
    X, y, fold = random_problem()
    out = fit([X], y, fold, [X[:10]], settings=settings, seed=0)
    assert abs(log_loss(y, out.oof) - math.log(2)) < 0.03


@pytest.mark.parametrize("fit,settings", HEAD_CASES, ids=["logreg", "mlp"])
def test_a_separating_feature_gives_a_small_oof_log_loss(fit, settings):
    X, y, fold = separable_problem()
    out = fit([X], y, fold, [X[:50]], settings=settings, seed=0)
    assert log_loss(y, out.oof) < 0.1
    assert np.mean((out.test > 0.5) == y[:50]) > 0.95


@pytest.mark.parametrize("fit,settings", HEAD_CASES, ids=["logreg", "mlp"])
def test_flipped_twins_of_held_out_rows_never_train(fit, settings):
    # Random labels and a second view that is each row again plus a little noise: a model that saw a held-out
    # row's twin could memorise its label (many features, few rows) and score far below log 2.
    X, y, fold = random_problem(n=300, d=200, seed=2)
    twin = X + 0.01 * np.random.default_rng(3).standard_normal(X.shape).astype(np.float32)
    out = fit([X, twin], y, fold, [X[:10], twin[:10]], settings=settings, tta_train=True, tta_predict=True,
              seed=0)
    assert log_loss(y, out.oof) > math.log(2) - 0.03


@pytest.mark.parametrize("fit,settings", HEAD_CASES, ids=["logreg", "mlp"])
def test_a_fold_is_predicted_by_a_model_that_never_saw_its_labels(fit, settings):
    X, y, fold = separable_problem(n=300, d=20)
    before = fit([X], y, fold, [X[:5]], settings=settings, seed=0).oof
    relabelled = np.where(fold == 0, 1 - y, y)  # any labels at all in fold 0
    after = fit([X], relabelled, fold, [X[:5]], settings=settings, seed=0).oof
    np.testing.assert_allclose(after[fold == 0], before[fold == 0], atol=1e-4)
    assert np.isfinite(after).all()


def test_rows_with_fold_minus_one_are_left_out():
    X, y, fold = separable_problem()
    fold = fold.astype(np.int64)
    fold[[0, 10, 20]] = -1
    X[[0, 10, 20]] = 1e6  # garbage features, as an unreadable image might have: must not disturb the fit
    out = fit_logreg([X], y, fold, [X[30:40]], seed=0)
    assert np.isnan(out.oof[[0, 10, 20]]).all()
    assert np.isfinite(np.delete(out.oof, [0, 10, 20])).all()
    assert log_loss(np.delete(y, [0, 10, 20]), np.delete(out.oof, [0, 10, 20])) < 0.1


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_logreg_is_sklearns_pipeline_at_the_chosen_C(power):
    """The default (power 0.5) and plain (power 1) heads are scikit-learn's signed-power transform, scaler and
    logistic regression at the C each fold chose."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    rng = np.random.default_rng(5)
    X = (rng.standard_normal((400, 12)) * rng.uniform(0.1, 10, 12) + rng.uniform(-5, 5, 12)).astype(np.float32)
    y = (X[:, 0] / X[:, 0].std() + rng.standard_normal(400) > 0.3).astype(np.int8)
    fold = make_plan(y, n_folds=4, repeats=1, seed=0)[0]
    settings = LogregSettings(power=power)
    assert LogregSettings().power == 0.5
    out = fit_logreg([X], y, fold, [X[:25]], settings=settings, seed=0)
    X64 = X.astype(np.float64)  # sklearn fits float32 input in float32, which is less exact than the kit
    signed_power = FunctionTransformer(lambda Z: np.sign(Z) * np.abs(Z) ** power)
    for f, C in enumerate(out.params["C"]):
        train = fold != f
        pipe = make_pipeline(signed_power, StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=10_000))
        pipe.fit(X64[train], y[train])
        np.testing.assert_allclose(out.oof[fold == f], pipe.predict_proba(X64[fold == f])[:, 1], atol=1e-4)


def test_logreg_picks_weaker_regularisation_for_stronger_signal():
    X, y, fold = random_problem(d=20, seed=6)
    noisy = fit_logreg([X], y, fold, [X[:5]], seed=0).params["C"]
    X[:, 0] += 3 * y
    clear = fit_logreg([X], y, fold, [X[:5]], seed=0).params["C"]
    assert min(clear) > max(noisy)


@pytest.mark.slow  # trains Keras networks
def test_the_same_seed_gives_the_same_predictions():
    X, y, fold = random_problem(n=200, d=10)
    a = fit_mlp([X], y, fold, [X[:10]], settings=QUICK_MLP, seed=3)
    b = fit_mlp([X], y, fold, [X[:10]], settings=QUICK_MLP, seed=3)
    np.testing.assert_allclose(a.oof, b.oof, atol=1e-6)
    np.testing.assert_allclose(a.test, b.test, atol=1e-6)


def test_bad_arguments_name_the_problem():
    X, y, fold = random_problem(n=100, d=5)
    with pytest.raises(ValueError, match="second \\(flipped\\) view"):
        fit_logreg([X], y, fold, [X], tta_train=True, seed=0)
    with pytest.raises(ValueError, match="every test view must have 5 columns"):
        fit_logreg([X], y, fold, [X[:, :4]], seed=0)
