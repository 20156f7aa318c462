"""The metrics (log loss, AUC, accuracy) and what each changes in cv's scores and the blend."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import accuracy_score, roc_auc_score
from typer.testing import CliRunner

from kaggle_kit import blend as B
from kaggle_kit import metrics as M
from kaggle_kit.cli import app
from kaggle_kit.cv import score_oof
from kaggle_kit.store import save_experiment
from test_blend import noisy_models, write_experiment


# ---------------------------------------------------------------------------------------------- the scorers
def test_auc_and_accuracy_match_scikit_learn_column_by_column():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    P = noisy_models(rng, y, [2.0, 0.5, 0.0])
    P[:5, 1] = 0.5  # exactly 0.5 is a positive label, as submit writes it
    np.testing.assert_allclose(M.auc(y, P), [roc_auc_score(y, P[:, j]) for j in range(3)], rtol=1e-12)
    np.testing.assert_allclose(M.accuracy(y, P), [accuracy_score(y, P[:, j] >= 0.5) for j in range(3)])
    assert M.auc(y, P[:, 0]) == pytest.approx(roc_auc_score(y, P[:, 0]))
    assert M.score("auc", y, P[:, 0]) == M.auc(y, P[:, 0])


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_roc_auc_score_with_many_ties_and_few_rows(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
    P = np.round(rng.uniform(0, 1, (n, 4)), 1)  # ten distinct values: ties everywhere
    np.testing.assert_allclose(M.auc(y, P), [roc_auc_score(y, P[:, j]) for j in range(4)], rtol=1e-12, atol=1e-15)


def test_auc_depends_only_on_the_order():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = noisy_models(rng, y, [1.0])[:, 0]
    assert M.auc(y, p) == pytest.approx(M.auc(y, p ** 7)) == pytest.approx(M.auc(y, B.normalised_ranks(p[:, None])[:, 0]))
    assert M.auc(y, np.where(y == 1, 0.51, 0.49)) == 1.0 and M.auc(y, np.full(300, 0.3)) == 0.5


def test_invalid_columns_and_one_class_score_nan_and_never_win():
    y = np.array([0, 1, 0, 1])
    P = np.array([[0.1, np.nan], [0.9, 0.9], [0.2, 0.1], [0.8, 1.5]])
    for metric in M.METRICS:
        scores = M.score(metric, y, P)
        assert np.isfinite(scores[0]) and np.isnan(scores[1]), metric
        assert M.loss(metric, y, P)[1] == math.inf
    assert math.isnan(M.auc(np.ones(4), P[:, 0]))


def test_loss_is_lower_for_the_better_prediction_in_every_metric():
    y = np.array([0, 0, 1, 1, 1, 0])
    good, bad = np.array([0.1, 0.2, 0.8, 0.9, 0.7, 0.3]), np.array([0.6, 0.2, 0.4, 0.9, 0.3, 0.7])
    for metric in M.METRICS:
        assert M.loss(metric, y, good) < M.loss(metric, y, bad), metric
        assert M.from_loss(metric, M.loss(metric, y, good)) == pytest.approx(M.score(metric, y, good))


def test_crossfit_auc_is_the_mean_of_the_folds_aucs_and_log_loss_is_pooled():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 600)
    folds = np.arange(600) % 3
    p = noisy_models(rng, y, [1.0])[:, 0]
    p = np.where(folds == 0, p * 0.2, p)  # fold 0's model is offset: its rows rank low among the others
    expected = np.mean([roc_auc_score(y[folds == f], p[folds == f]) for f in range(3)])
    assert M.crossfit_score("auc", y, p, folds) == pytest.approx(expected)
    assert M.crossfit_score("auc", y, p, folds) > roc_auc_score(y, p)  # the pooled AUC pays for the offset
    assert M.crossfit_score("logloss", y, p, folds) == pytest.approx(M.log_loss(y, p))


def test_unknown_metric_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown metric 'rmse'; choose one of: logloss, auc, accuracy"):
        M.score("rmse", np.array([0, 1]), np.array([0.2, 0.8]))


def test_cv_scores_every_metric_per_fold_and_out_of_fold():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    plan = np.stack([np.arange(300) % 3, (np.arange(300) + 1) % 3])
    oof = np.stack([noisy_models(rng, y, [1.5])[:, 0] for _ in range(2)])
    usable = np.ones(300, dtype=bool)
    usable[:7] = False
    s = score_oof(y, oof, plan, usable)
    rows = usable
    assert s["oof_auc"] == pytest.approx(np.mean([
        np.mean([roc_auc_score(y[rows & (plan[r] == f)], oof[r, rows & (plan[r] == f)]) for f in range(3)])
        for r in range(2)]), abs=1e-6)
    assert s["oof_accuracy"] == pytest.approx(np.mean([accuracy_score(y[rows], oof[r, rows] >= 0.5) for r in range(2)]),
                                              abs=1e-6)
    assert len(s["fold_auc"]) == len(s["fold_logloss"]) == len(s["fold_accuracy"]) == 6


# ------------------------------------------------------------------------------------------------ the blend
def _folds(n: int, k: int = 4) -> np.ndarray:
    return np.random.default_rng(9).permutation(np.arange(n) % k)


def test_auc_blend_fits_no_calibration_and_no_clip_and_reports_scikit_learns_auc():
    rng = np.random.default_rng(4)
    n = 800
    y = rng.integers(0, 2, n)
    P = expit(4.0 * np.log(noisy_models(rng, y, [1.5, 1.0, 0.7]) / (1 - noisy_models(rng, y, [1.5, 1.0, 0.7]))))
    folds = _folds(n)
    result = B.crossfit_blend(P, y, folds, metric="auc")  # overconfident models: log loss would calibrate
    assert result.metric == "auc" and result.calibrator.kind == "none" and result.calibration_scores == {}
    assert result.clip is None and result.clip_logloss is None
    assert [step for step, _ in result.ladder] == ["best single model", "blend"]
    assert set(result.method_scores) == set(B.METHODS) and "rank" in result.method_scores
    expected = np.mean([roc_auc_score(y[folds == f], result.oof[folds == f]) for f in range(4)])
    assert dict(result.ladder)["blend"] == pytest.approx(expected, rel=1e-12)
    assert result.method_scores[result.blender.method] == max(result.method_scores.values())
    # the same models under log loss: every calibration is fitted and scored out of fold, and a clip chosen
    # (subtle: which calibration wins is not the point: on this stack, already near-separable, Platt's
    # out-of-sample targets cost more than they gain, so 'none' may win)
    logloss = B.crossfit_blend(P, y, folds, metric="logloss")
    assert set(logloss.calibration_scores) == set(B.CALIBRATIONS) and logloss.clip is not None
    assert [step for step, _ in logloss.ladder] == ["best single model", "blend", "calibrated", "clipped"]
    assert logloss.calibration_scores[logloss.calibrator.kind] == min(logloss.calibration_scores.values())


def test_selection_for_auc_picks_the_perfect_ranker_that_log_loss_would_not():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 500)
    ranker = np.where(y == 1, 0.52, 0.48) + rng.uniform(-0.01, 0.01, 500)  # perfect order, near 0.5: AUC 1
    calibrated = noisy_models(rng, y, [2.5])[:, 0]  # confident and mostly right: the lower log loss
    P = np.column_stack([calibrated, ranker])
    assert M.log_loss(y, calibrated) < M.log_loss(y, ranker) and M.auc(y, ranker) == 1.0 > M.auc(y, calibrated)
    assert np.argmax(B.select_ensemble(P, y, metric="logloss")) == 0
    assert np.argmax(B.select_ensemble(P, y, metric="auc")) == 1
    assert B.fit_blender(P, y, method="single", metric="auc").weights.tolist() == [0.0, 1.0]


def test_rank_averaging_is_the_mean_of_normalised_ranks_and_only_for_auc():
    P = np.array([[0.1, 0.9], [0.4, 0.2], [0.3, 0.3], [0.9, 0.95]])
    blender = B.fit_blender(P, np.array([0, 1, 0, 1]), method="rank", metric="auc")
    ranks = (np.array([[1, 3], [3, 1], [2, 2], [4, 4]]) - 0.5) / 4
    np.testing.assert_allclose(blender.predict(P), ranks.mean(axis=1))
    assert "rank" in B.methods_for("auc") and "rank" not in B.methods_for("logloss")
    with pytest.raises(ValueError, match="unknown blend method 'rank' for the metric logloss"):
        B.crossfit_blend(P, np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]), method="rank")


def test_accuracy_blend_calibrates_without_a_clip_and_chooses_by_accuracy():
    rng = np.random.default_rng(6)
    n = 800
    y = rng.integers(0, 2, n)
    P = noisy_models(rng, y, [1.5, 1.0, 0.7])
    folds = _folds(n)
    result = B.crossfit_blend(P, y, folds, metric="accuracy")
    assert [step for step, _ in result.ladder] == ["best single model", "blend", "calibrated"]
    assert result.clip is None
    assert result.method_scores[result.blender.method] == max(result.method_scores.values())
    assert dict(result.ladder)["calibrated"] == pytest.approx(accuracy_score(y, result.oof >= 0.5))


# ------------------------------------------------------------------------------------------- the stage, CLI
def test_blend_metric_goes_into_the_manifest_and_the_experiment(tmp_path, monkeypatch):
    exp_dir = write_experiment(tmp_path)
    save_experiment(exp_dir, data_dir=tmp_path, positive="dog", metric="logloss")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["blend", "--metric", "auc"])
    assert result.exit_code == 0, result.output
    assert "cross-fitted OOF AUC by method" in result.stdout and "no calibration and no clip" in result.stdout
    m = json.loads((exp_dir / "blend" / "manifest.json").read_text())
    assert m["metric"] == "auc" and m["clip"] is None and m["calibration"]["kind"] == "none"
    assert [s["step"] for s in m["ladder"]] == ["best single model", "blend"] and "oof_auc" in m["ladder"][0]
    assert json.loads((exp_dir / "experiment.json").read_text())["metric"] == "auc"  # remembered
    again = CliRunner().invoke(app, ["blend"])  # no --metric: the experiment's
    assert again.exit_code == 0 and "OOF AUC, cross-fitted" in again.stdout

    refused = CliRunner().invoke(app, ["blend", "--metric", "logloss", "--method", "rank"])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert "--method rank is not used for the metric logloss" in refused.stderr


def test_an_auc_blend_cannot_make_a_log_loss_submission(tmp_path, monkeypatch):
    exp_dir = write_experiment(tmp_path)
    monkeypatch.chdir(tmp_path)
    B.run_blend(Path("experiments/default"), metric="auc", warn=lambda m: None)
    result = CliRunner().invoke(app, ["submit", "--metric", "logloss"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "made for auc" in result.stderr and "kaggle-kit blend --metric logloss" in result.stderr
    ok = CliRunner().invoke(app, ["submit", "--name", "auc.csv"])  # the blend's metric: AUC, unclipped
    assert ok.exit_code == 0, ok.output
    rows = [line.split(",") for line in Path("submissions/auc.csv").read_text().splitlines()[1:]]
    test = np.load(exp_dir / "blend" / "test.npy").astype(np.float64)
    np.testing.assert_array_equal([float(r[1]) for r in rows], test)  # every digit kept
