"""Blend stage: properties of selection, stacking, calibration, clip search and cross-fitting; the edge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit
from typer.testing import CliRunner

from conftest import write_cv_model
from kaggle_kit import blend as B
from kaggle_kit.artifacts import KitError, save_npy_atomic
from kaggle_kit.folds import ensure_plan
from kaggle_kit.metrics import log_loss
from kaggle_kit.store import load_blend, load_plan


def noisy_models(rng, y, strengths, *, noise=1.0):
    """(n, m) probabilities: column j is sigmoid(strength_j * (2y - 1) + N(0, noise))."""
    signal = (2.0 * y - 1.0)[:, None] * np.asarray(strengths)[None, :]
    return expit(signal + rng.normal(0.0, noise, (len(y), len(strengths))))


def write_experiment(root: Path, *, exp: str = "default", n_train: int = 240, n_test: int = 60, n_folds: int = 4,
                     repeats: int = 1, strengths=(2.0, 1.0, 0.5), seed: int = 0) -> Path:
    """Write ``experiments/<exp>/folds/`` (with the cv stage's own writer) and models ``cv/m<j>/`` (with the
    store's writer); return exp_dir."""
    rng = np.random.default_rng(seed)
    exp_dir = root / "experiments" / exp
    y = rng.integers(0, 2, n_train).astype(np.int8)
    test_ids = [str(i) for i in rng.permutation(np.arange(1, n_test + 1))]  # not sorted: order must be kept
    plan, _ = ensure_plan(exp_dir, y=y, train_ids=[f"t{i}" for i in range(n_train)], test_ids=test_ids,
                          n_folds=n_folds, repeats=repeats, seed=seed)
    y_test = rng.integers(0, 2, n_test)
    for j, s in enumerate(strengths):
        oof = np.stack([noisy_models(rng, y, [s])[:, 0] for _ in range(repeats)])
        write_cv_model(exp_dir, f"m{j}", plan, oof, noisy_models(rng, y_test, [s])[:, 0])
    return exp_dir


# ----------------------------------------------------------------------------------------------- log loss
def test_log_loss_matches_sklearn_and_known_values():
    from sklearn.metrics import log_loss as sk_log_loss

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    P = rng.uniform(0.01, 0.99, (500, 3))
    np.testing.assert_allclose(log_loss(y, P), [sk_log_loss(y, P[:, j]) for j in range(3)], rtol=1e-10)
    assert log_loss(y, y.astype(float)) < 1e-12
    assert log_loss(y, np.full(500, 0.5)) == pytest.approx(math.log(2))


# ---------------------------------------------------------------------------------------------- selection
@pytest.mark.parametrize("seed", range(5))
def test_each_selection_round_adds_the_model_that_lowers_the_loss_most(seed):
    """The docstring's contract, round by round: r rounds extend the selection of r - 1 rounds by the one model
    whose addition gives the lowest log loss of the running average (so one round picks the best model)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    P = noisy_models(rng, y, [1.0, 0.9, 0.9, 0.8, 0.5, 0.2])  # independent noise: averaging helps
    previous = np.zeros(6)
    for rounds in range(1, 9):
        counts = B.select_ensemble(P, y, rounds=rounds) * rounds
        np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
        added = np.round(counts - previous).astype(int)
        assert added.min() == 0 and added.sum() == 1, (rounds, counts, previous)
        candidates = [log_loss(y, (P @ previous + P[:, j]) / rounds) for j in range(6)]
        assert int(np.argmax(added)) == int(np.argmin(candidates))
        previous = np.round(counts)
    assert (previous > 0).sum() >= 2  # not one model repeated: the rounds really choose


def test_selection_weights_follow_the_models_when_they_are_reordered():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 400)
    P = noisy_models(rng, y, [1.5, 0.2, 1.0, 0.7, 1.2])
    order = np.array([3, 0, 4, 1, 2])
    np.testing.assert_array_equal(B.select_ensemble(P[:, order], y), B.select_ensemble(P, y)[order])


def test_perfect_model_gets_the_most_weight():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    P = noisy_models(rng, y, [0.5, 1.0, 0.3])
    P = np.insert(P, 1, np.where(y == 1, 0.99, 0.01), axis=1)  # the perfect model, in the middle
    w = B.select_ensemble(P, y)
    assert np.argmax(w) == 1
    stack = B.fit_blender(P, y, method="stack")
    assert np.argmax(stack.weights) == 1


def test_nan_and_inf_scores_never_win():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    perfect = np.where(y == 1, 0.99, 0.01)
    poisoned_nan = perfect.copy()
    poisoned_nan[7] = np.nan
    poisoned_inf = perfect.copy()
    poisoned_inf[3] = -np.inf  # outside [0, 1]: an invalid score, however good the other rows
    P = np.column_stack([poisoned_nan, poisoned_inf, noisy_models(rng, y, [0.5])[:, 0]])
    w = B.select_ensemble(P, y)
    np.testing.assert_array_equal(w, [0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        B.select_ensemble(P[:, :1], y)


def test_ties_go_to_the_first_model_and_identical_models_blend_to_themselves():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = noisy_models(rng, y, [1.0])[:, 0]
    P = np.repeat(p[:, None], 3, axis=1)
    w = B.select_ensemble(P, y)
    np.testing.assert_array_equal(w, [1.0, 0.0, 0.0])
    for method in ("selection", "mean"):
        np.testing.assert_allclose(B.fit_blender(P, y, method=method).predict(P), p, rtol=1e-12)


def test_zero_weight_model_does_not_poison_predictions():
    blender = B.Blender("selection", np.array([1.0, 0.0]))
    P = np.array([[0.2, np.nan], [0.7, 0.5]])
    np.testing.assert_allclose(blender.predict(P), [0.2, 0.7])


# -------------------------------------------------------------------------------------------- calibration
def test_temperature_must_be_positive():
    p = np.array([0.2, 0.9])
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(B.CalibrationError, match="temperature must be"):
            B.apply_temperature(p, temperature=bad)
        with pytest.raises(B.CalibrationError):
            B.Calibrator("temperature", {"temperature": bad})
    with pytest.raises(B.CalibrationError, match="slope"):
        B.Calibrator("platt", {"slope": -2.0, "intercept": 0.0})


def test_fits_on_inverted_predictions_never_flip_them():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 500)
    inverted = 1.0 - noisy_models(rng, y, [2.0])[:, 0]
    assert B.fit_calibrator(inverted, y, kind="temperature").params["temperature"] > 0
    with pytest.raises(B.CalibrationError, match="slope"):
        B.fit_calibrator(inverted, y, kind="platt")


def test_platt_is_the_unpenalised_fit_on_platts_targets():
    # Few rows and a strong signal: an L2 penalty (scikit-learn's default C=1) would shrink the slope a lot.
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(11)
    n = 40
    z = rng.normal(0.0, 1.0, n)
    y = (rng.uniform(size=n) < expit(3.0 * z - 0.5)).astype(int)
    cal = B.fit_calibrator(expit(z), y, kind="platt")
    # the reference: an unpenalised logistic regression on Platt's targets, each row twice (as label 1 with
    # weight t, as label 0 with weight 1 - t)
    n1, n0 = y.sum(), n - y.sum()
    t = np.where(y == 1, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(
        np.r_[z, z][:, None], np.r_[np.ones(n), np.zeros(n)], sample_weight=np.r_[t, 1 - t])
    assert cal.params["slope"] == pytest.approx(ref.coef_[0, 0], rel=1e-6)
    assert cal.params["intercept"] == pytest.approx(ref.intercept_[0], abs=1e-6)
    penalised = LogisticRegression().fit(z[:, None], y)  # what a penalised Platt fit would give
    assert cal.params["slope"] > penalised.coef_[0, 0] + 0.3


def test_platt_recovers_a_known_slope_and_intercept_and_stays_finite_on_separated_data():
    rng = np.random.default_rng(12)
    z = rng.normal(0.0, 2.0, 20_000)
    y = (rng.uniform(size=z.size) < expit(0.4 * z + 0.8)).astype(int)  # overconfident by 2.5x, shifted
    cal = B.fit_calibrator(expit(z), y, kind="platt")
    assert cal.params["slope"] == pytest.approx(0.4, abs=0.02)
    assert cal.params["intercept"] == pytest.approx(0.8, abs=0.05)
    # logits that separate the classes: an unpenalised fit on 0/1 targets has no finite minimum
    y = (z > 0).astype(int)
    cal = B.fit_calibrator(expit(z), y, kind="platt")
    assert math.isfinite(cal.params["slope"]) and cal.params["slope"] > 1.0  # sharper, but finite
    assert np.mean((cal.predict(expit(z)) > 0.5) == y) > 0.999


def test_calibration_fixes_overconfidence_and_never_raises_oof_loss():
    rng = np.random.default_rng(5)
    n = 2000
    truth = rng.uniform(0.05, 0.95, n)
    y = (rng.uniform(size=n) < truth).astype(int)
    overconfident = expit(3.0 * np.log(truth / (1 - truth)))
    folds = np.arange(n) % 5
    # subtle: with one model, stacking is itself a Platt scaling; the mean leaves calibration to the calibrator.
    result = B.crossfit_blend(overconfident[:, None], y, folds, method="mean")
    assert result.calibrator.kind != "none"
    steps = dict(result.ladder)
    assert steps["calibrated"] < steps["blend"] - 0.01
    assert result.calibrator.kind == "platt" or 2.0 < result.calibrator.params["temperature"] < 4.0


@pytest.mark.parametrize("seed", range(6))
def test_calibration_never_raises_oof_loss_and_is_dropped_when_useless(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    truth = rng.uniform(0.02, 0.98, n)
    y = (rng.uniform(size=n) < truth).astype(int)
    result = B.crossfit_blend(truth[:, None], y, rng.permutation(np.arange(n) % 5))
    steps = dict(result.ladder)
    assert steps["calibrated"] <= steps["blend"]
    assert result.calibration_scores[result.calibrator.kind] == min(result.calibration_scores.values())
    if seed == 0:  # already calibrated: fitting on other folds only adds noise, so it is dropped
        assert result.calibrator.kind == "none"
        assert steps["calibrated"] == steps["blend"]


# -------------------------------------------------------------------------------------------- cross-fitting
@pytest.mark.parametrize("seed", range(4))
def test_crossfitted_scores_are_not_better_than_in_sample_on_noise(seed):
    rng = np.random.default_rng(seed)
    n = 600
    y = rng.integers(0, 2, n)
    P = rng.uniform(0.05, 0.95, (n, 5))  # random predictions of random labels
    result = B.crossfit_blend(P, y, np.arange(n) % 5)
    for method in ("selection", "stack"):
        in_sample = log_loss(y, B.fit_blender(P, y, method=method).predict(P))
        assert result.method_scores[method] >= in_sample
    calibrated_in_sample = log_loss(y, result.calibrator.predict(result.blender.predict(P)))
    assert dict(result.ladder)["calibrated"] >= calibrated_in_sample


def test_crossfit_blend_leaves_out_unreadable_rows_and_orders_the_ladder():
    rng = np.random.default_rng(6)
    n = 400
    y = rng.integers(0, 2, n)
    P = noisy_models(rng, y, [2.0, 1.0, 1.5])
    P[[5, 50], :] = np.nan
    result = B.crossfit_blend(P, y, np.arange(n) % 4)
    assert [s for s, _ in result.ladder] == ["best single model", "blend", "calibrated", "clipped"]
    assert np.isnan(result.oof[[5, 50]]).all()
    assert np.isfinite(np.delete(result.oof, [5, 50])).all()
    assert result.n_used == n - 2
    assert result.best_model == 0
    steps = dict(result.ladder)
    assert steps["blend"] == min(result.method_scores.values())
    assert steps["blend"] < steps["best single model"]  # three informative models beat the best one


def test_a_calibrated_model_is_used_alone_when_no_blend_beats_it_out_of_fold():
    rng = np.random.default_rng(0)
    n = 600
    z = rng.normal(0.0, 3.0, n)
    truth = expit(z)  # the true P(y = 1): nothing can improve on it
    y = (rng.uniform(size=n) < truth).astype(int)
    P = np.column_stack([rng.uniform(0.3, 0.7, n), rng.uniform(0.3, 0.7, n), truth])  # two noise models first
    result = B.crossfit_blend(P, y, np.arange(n) % 5)
    steps = dict(result.ladder)
    assert result.method_scores["single"] == steps["best single model"]  # the same cross-fitted choice
    assert result.blender.method == "single"  # measured: selection ties it, stack 0.3594 vs 0.3566, mean 0.5447
    np.testing.assert_array_equal(result.blender.weights, [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(result.blender.predict(P), truth)
    assert steps["blend"] == steps["best single model"]


def test_rows_of_fold_minus_one_are_left_out_like_nan_rows():
    rng = np.random.default_rng(7)
    n = 300
    y = rng.integers(0, 2, n)
    P = noisy_models(rng, y, [2.0, 1.0])
    folds = np.arange(n) % 3
    P_nan = P.copy()
    P_nan[:10] = np.nan
    folds_out = folds.copy()
    folds_out[:10] = -1
    a, b = B.crossfit_blend(P_nan, y, folds), B.crossfit_blend(P, y, folds_out)
    np.testing.assert_array_equal(a.oof, b.oof)
    assert a.ladder == b.ladder and a.n_used == b.n_used == n - 10


def test_crossfit_refuses_a_single_fold_and_unknown_method():
    y = np.array([0, 1, 0, 1])
    P = np.full((4, 1), 0.5)
    with pytest.raises(ValueError, match="at least 2 folds"):
        B.crossfit_blend(P, y, np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="choose one of"):
        B.crossfit_blend(P, y, np.array([0, 0, 1, 1]), method="median")


# ----------------------------------------------------------------------------------------------- clip search
@pytest.mark.parametrize("error_rate", [0.002, 0.01, 0.03])
def test_best_clip_of_saturated_predictions_is_the_error_rate(error_rate):
    n = 20000
    y = np.zeros(n, dtype=int)
    y[: n // 2] = 1
    p = y.astype(float)
    wrong = np.arange(0, n, round(1 / error_rate))  # exactly error_rate of the rows are confidently wrong
    p[wrong] = 1 - p[wrong]
    e = len(wrong) / n
    c, loss = B.best_clip(p, y)
    assert c == pytest.approx(e, rel=1e-3)
    assert loss == pytest.approx(-(1 - e) * math.log(1 - e) - e * math.log(e), rel=1e-6)


def test_best_clip_stays_in_bounds():
    y = np.array([0, 1] * 50)
    assert B.best_clip(1.0 - y, y)[0] == pytest.approx(0.05)  # all wrong: as much clip as allowed
    assert B.best_clip(y.astype(float), y)[0] == pytest.approx(1e-4)  # all right: as little as allowed


# ---------------------------------------------------------------------------------------------------- edge
def test_run_blend_writes_the_contract(tmp_path):
    exp_dir = write_experiment(tmp_path, repeats=2)
    run = B.run_blend(exp_dir, warn=lambda m: None)
    out_dir = run.out_dir
    assert out_dir == exp_dir / "blend"
    oof, before, test = (np.load(out_dir / f"{name}.npy") for name in ("oof", "oof_uncalibrated", "test"))
    assert oof.dtype == before.dtype == np.float32 and oof.shape == before.shape == (240,)
    assert test.dtype == np.float32 and test.shape == (60,)
    assert np.isfinite(test).all() and ((test >= 0) & (test <= 1)).all()
    on_disk = json.loads((out_dir / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(run.blend.manifest))
    assert on_disk["format"] == "kaggle-kit/blend/2"
    assert [s["step"] for s in on_disk["ladder"]] == ["best single model", "blend", "calibrated", "clipped"]
    y = np.load(exp_dir / "folds" / "y.npy")
    assert on_disk["clip"]["chosen"] == pytest.approx(B.best_clip(oof, y)[0])
    assert set(on_disk["inputs"]["cv"]) == {"m0", "m1", "m2"}
    # The saved OOF predictions are the ones the ladder scores, before and after calibration.
    steps = {s["step"]: s["oof_logloss"] for s in on_disk["ladder"]}
    assert log_loss(y, before) == pytest.approx(steps["blend"], rel=1e-5)
    assert log_loss(y, oof) == pytest.approx(steps["calibrated"], rel=1e-5)
    # The test predictions are the manifest's blend of the cv models' test predictions, then its calibration.
    inputs = B.load_cv_inputs(exp_dir)
    blender = B.Blender(on_disk["method"], np.array([on_disk["weights"][m] for m in inputs.models]),
                        on_disk["intercept"] or 0.0)
    calibrator = B.Calibrator(on_disk["calibration"]["kind"], on_disk["calibration"]["params"])
    np.testing.assert_allclose(test, calibrator.predict(blender.predict(inputs.test)), rtol=1e-6, atol=1e-7)
    loaded = load_blend(exp_dir)
    assert loaded.test_ids == tuple(json.loads((exp_dir / "folds" / "ids.json").read_text())["test_ids"])
    np.testing.assert_array_equal(loaded.oof_uncalibrated, before)


def test_loader_refuses_results_of_another_fold_plan(tmp_path):
    exp_dir = write_experiment(tmp_path)
    plan = load_plan(exp_dir)
    ensure_plan(exp_dir, y=plan.y, train_ids=plan.train_ids, test_ids=plan.test_ids, n_folds=3, repeats=1, seed=0)
    with pytest.raises(KitError, match=r"m0 was fitted on another fold plan.*re-run 'kaggle-kit cv --backbone "
                                       r"synthetic --head logreg'"):
        B.load_cv_inputs(exp_dir)


def test_loader_refuses_wrong_shapes_and_skips_unfinished_models(tmp_path):
    exp_dir = write_experiment(tmp_path)
    (exp_dir / "cv" / "m9").mkdir()
    warnings = []
    assert B.load_cv_inputs(exp_dir, warn=warnings.append).models == ("m0", "m1", "m2")
    assert "m9" in warnings[0]
    save_npy_atomic(exp_dir / "cv" / "m0" / "oof.npy", np.zeros((1, 7), dtype=np.float32))
    with pytest.raises(KitError, match=r"oof.npy is float32 \(1, 7\).*re-run 'kaggle-kit cv"):
        B.load_cv_inputs(exp_dir)
    save_npy_atomic(exp_dir / "cv" / "m0" / "oof.npy", np.full((1, 240), 1.5, dtype=np.float32))
    with pytest.raises(KitError, match=r"oof.npy holds values outside \[0, 1\]"):
        B.load_cv_inputs(exp_dir)


def test_load_blend_refuses_a_stale_blend(tmp_path):
    exp_dir = write_experiment(tmp_path)
    B.run_blend(exp_dir, warn=lambda m: None)
    plan = load_plan(exp_dir)
    m2 = B.load_cv_inputs(exp_dir).results["m2"]
    write_cv_model(exp_dir, "m2", plan, m2.oof, m2.test, seconds=2.0)  # recomputed since the blend
    with pytest.raises(KitError, match="cv results of 'm2' changed .*re-run 'kaggle-kit blend'"):
        load_blend(exp_dir)


def test_cli_blend(tmp_path, monkeypatch):
    from kaggle_kit.cli import app

    write_experiment(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["blend", "--method", "selection"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(Path("experiments") / "default" / "blend")
    assert "clipped" in result.stdout
    assert json.loads(Path("experiments/default/blend/manifest.json").read_text())["method"] == "selection"


def test_cli_blend_errors_are_one_line(tmp_path, monkeypatch):
    from kaggle_kit.cli import app

    exp_dir = write_experiment(tmp_path)
    (exp_dir / "folds" / "manifest.json").unlink()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["blend"])
    assert result.exit_code != 0
    assert result.stderr.count("\n") == 1 and "run 'kaggle-kit cv' first" in result.stderr
    missing = CliRunner().invoke(app, ["blend", "--exp", "nothing"])
    assert missing.exit_code != 0 and missing.stderr.count("\n") == 1
