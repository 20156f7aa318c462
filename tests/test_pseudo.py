"""pseudo: fold-safe pseudo-labelling. A held-out fold's labels never reach its own predictions (while the
naive recipe, pseudo-labels from the fold-averaged test predictions, leaks them); the feature helps where it
should; the settings and the cv wiring."""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from kaggle_kit.folds import make_plan
from kaggle_kit.heads import ExtraRows, LogregSettings, MlpSettings, fit_logreg
from kaggle_kit.metrics import log_loss
from kaggle_kit.pseudo import (
    LogregPseudoSettings,
    MlpPseudoSettings,
    PseudoSettings,
    fit_logreg_pl,
    fit_mlp_pl,
    pseudo_labels,
)

QUICK_MLP = MlpSettings(hidden=32, learning_rate=1e-2, min_steps=4, max_epochs=30, patience=5)


def clusters(n: int, m: int, d: int, *, sep: float, seed: int):
    """Two Gaussian classes (unit variance, means +-sep along a random direction): n labelled training rows,
    m test rows with their true labels."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)

    def draw(k):
        labels = (rng.random(k) < 0.5).astype(np.int8)
        return (rng.standard_normal((k, d)) + np.outer(2 * labels - 1, sep * direction)).astype(np.float32), labels

    X, y = draw(n)
    T, t = draw(m)
    return X, y, T, t


@pytest.mark.parametrize("fit,settings", [
    (fit_logreg_pl, LogregPseudoSettings()),
    pytest.param(fit_mlp_pl, MlpPseudoSettings(head=QUICK_MLP, pseudo=PseudoSettings(threshold=0.9)),
                 marks=pytest.mark.slow),  # trains Keras networks (TensorFlow starts)
], ids=["logreg", "mlp"])
def test_a_fold_is_predicted_by_a_model_that_never_saw_its_labels(fit, settings):
    X, y, T, _ = clusters(300, 400, 20, sep=1.0, seed=0)
    fold = make_plan(y, n_folds=5, repeats=1, seed=0)[0]
    before = fit([X], y, fold, [T], settings=settings, seed=0)
    assert min(before.params["pseudo_rows"]) > 50  # the test rows do take part
    relabelled = np.where(fold == 0, 1 - y, y)  # any labels at all in fold 0
    after = fit([X], relabelled, fold, [T], settings=settings, seed=0)
    # subtle: not bit for bit, since fold 0's problems are solved in a batch with the other folds' (float32
    # products of other shapes), each stopping within 1e-8 of its minimum; a leak moves them by > 0.01 (below)
    np.testing.assert_allclose(after.oof[fold == 0], before.oof[fold == 0], atol=3e-4)
    assert np.abs(after.oof[fold != 0] - before.oof[fold != 0]).max() > 0.01  # the other folds did change


def test_the_naive_recipe_leaks_the_held_out_labels():
    # Pseudo-labels from the fold-averaged test predictions: fold 0's refit trains on test labels made by
    # models that saw fold 0's rows. The same relabelling then moves fold 0's out-of-fold predictions: the
    # property above is not one that any pseudo-labelling has by construction.
    X, y, T, _ = clusters(300, 400, 20, sep=1.0, seed=0)
    fold = make_plan(y, n_folds=5, repeats=1, seed=0)[0]

    def naive(labels):
        first = fit_logreg([X], labels, fold, [T], seed=0)
        targets, weights = pseudo_labels(np.repeat(first.test[:, None], 5, axis=1), settings=PseudoSettings())
        return fit_logreg([X], labels, fold, [T], seed=0, extra=ExtraRows([T], targets, weights)).oof

    before, after = naive(y), naive(np.where(fold == 0, 1 - y, y))
    assert np.abs(after[fold == 0] - before[fold == 0]).max() > 0.01


def test_pseudo_labels_help_where_the_classes_form_clusters():
    # Few labelled rows in many dimensions: the supervised direction is noisy, while 2,000 unlabelled test
    # rows show where the two clusters are. The truth of the test rows is known here, so score it.
    X, y, T, t = clusters(50, 2000, 200, sep=2.0, seed=0)
    fold = make_plan(y, n_folds=5, repeats=1, seed=0)[0]
    plain = fit_logreg([X], y, fold, [T], seed=0)
    pl = fit_logreg_pl([X], y, fold, [T], seed=0)
    assert log_loss(t, pl.test) < 0.8 * log_loss(t, plain.test)
    assert np.mean((pl.test > 0.5) == t) > np.mean((plain.test > 0.5) == t) + 0.02
    assert log_loss(y, pl.oof) < log_loss(y, plain.oof)


@pytest.mark.parametrize("pseudo", [PseudoSettings(), PseudoSettings(labels="soft", threshold=0.5)],
                         ids=["default", "soft-all"])
def test_random_labels_still_score_log2_out_of_fold(pseudo):
    # subtle: hard labels on every test row (threshold 0.5) would not: a model that knows nothing predicts
    # about the prior everywhere, and rounding that at 0.5 labels every test row with the majority class.
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 30)).astype(np.float32)
    y = (rng.random(400) < 0.5).astype(np.int8)
    T = rng.standard_normal((600, 30)).astype(np.float32)
    fold = make_plan(y, n_folds=5, repeats=1, seed=0)[0]
    out = fit_logreg_pl([X], y, fold, [T], settings=LogregPseudoSettings(pseudo=pseudo), seed=0)
    assert abs(log_loss(y, out.oof) - math.log(2)) < 0.03


def test_flipped_twins_of_test_rows_train_with_them_and_predictions_average_over_folds():
    X, y, T, _ = clusters(200, 300, 10, sep=1.0, seed=2)
    flip = X + 0.05 * np.random.default_rng(3).standard_normal(X.shape).astype(np.float32)
    T_flip = T + 0.05 * np.random.default_rng(4).standard_normal(T.shape).astype(np.float32)
    fold = make_plan(y, n_folds=4, repeats=1, seed=0)[0]
    out = fit_logreg_pl([X, flip], y, fold, [T, T_flip], tta_train=True, tta_predict=True, seed=0)
    assert out.test_folds.shape == (300, 4)
    np.testing.assert_allclose(out.test, out.test_folds.mean(axis=1), atol=1e-6)
    assert np.isfinite(out.oof).all()
    with pytest.raises(ValueError, match="extra rows need 2 view"):
        fit_logreg([X, flip], y, fold, [T, T_flip], tta_train=True, seed=0,
                   extra=ExtraRows([T], np.zeros((4, 300)), np.ones((4, 300))))


def test_pseudo_labels_keep_sure_usable_rows_with_their_weight():
    P = np.array([[0.99, 0.5], [0.02, 0.97], [0.7, 0.2], [0.999, 0.999]])  # 4 test rows, 2 fold models
    targets, weights = pseudo_labels(P, settings=PseudoSettings(threshold=0.95, weight=0.5),
                                     usable=np.array([True, True, True, False]))
    np.testing.assert_array_equal(weights, [[0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    np.testing.assert_array_equal(targets, [[1, 0, 1, 1], [0, 1, 0, 1]])
    soft, _ = pseudo_labels(P, settings=PseudoSettings(labels="soft", threshold=0.5))
    np.testing.assert_allclose(soft, P.T)


def test_bad_settings_name_the_problem():
    with pytest.raises(ValueError, match="unknown pseudo-label kind 'fuzzy'; choose one of: hard, soft"):
        PseudoSettings(labels="fuzzy")
    with pytest.raises(ValueError, match="threshold must be in \\[0.5, 1\\), got 1.0"):
        PseudoSettings(threshold=1.0)
    with pytest.raises(ValueError, match="weight must be a finite number > 0, got 0"):
        PseudoSettings(weight=0)


# ------------------------------------------------------------------------------------------ the cv wiring
def test_cv_pseudo_makes_pl_models_that_cv_blend_and_report_treat_like_any_other(tmp_path, monkeypatch):
    import html
    import re

    from conftest import make_competition
    from kaggle_kit.artifacts import KitError, sha256_json
    from kaggle_kit.cli import app
    from kaggle_kit.cv import model_specs
    from kaggle_kit.data import discover
    from kaggle_kit.metrics import NAMES
    from kaggle_kit.report import write_report
    from kaggle_kit.store import (
        experiment_dir,
        features_dir,
        load_blend,
        load_cv_results,
        remember_metric,
        save_experiment,
        save_feature_set,
    )

    dataset = discover(make_competition(tmp_path / "data", n_per_class=60, n_test=80, empty=True))
    exp_dir = experiment_dir("pl", root=tmp_path)  # not the default: every hint names --exp
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        X = rng.standard_normal((dataset.n_train + dataset.n_test, 6)).astype(np.float32)
        X[:dataset.n_train, 0] += 2 * dataset.y - 1
        save_feature_set(features_dir(exp_dir, name), dataset, {"train": X[:dataset.n_train],
                         "test": X[dataset.n_train:]}, key=sha256_json({"name": name}),
                         image_list_hash=dataset.image_list_hash(), backbone=name, weights="synthetic",
                         weights_kind="external")
    save_experiment(exp_dir, data_dir=dataset.root, positive="dog")
    remember_metric(exp_dir, "auc")  # the cv table leads with the experiment's metric, for _pl models too
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["cv", "--exp", "pl", "--folds", "4", "--head", "logreg", "--head", "concat",
                                      "--pseudo", "--quiet"])
    assert result.exit_code == 0, result.output
    exp_dir = experiment_dir("pl")
    models = load_cv_results(exp_dir)
    assert set(models) == {"a__logreg", "b__logreg", "concat__logreg", "a__logreg_pl", "b__logreg_pl",
                           "concat__logreg_pl"}
    pl = models["a__logreg_pl"]
    assert pl.head == "logreg_pl" and sum(pl.params["per_repeat"][0]["pseudo_rows"]) > 0
    assert not np.array_equal(pl.oof, models["a__logreg"].oof)
    lines = result.stdout.splitlines()
    assert lines[1].split()[:3] == ["model", "OOF", NAMES["auc"]]
    for model, r in models.items():
        row = next(line.split() for line in lines if line.split()[:1] == [model])
        assert row[1] == f"{r.score('auc'):.5f}" and row[2] == f"{r.score('logloss'):.5f}"
    # the re-run hints come from the store: --exp, the concat option and --pseudo
    specs = {s.name: s for s in model_specs(["a", "b"], ["logreg", "concat"], pseudo=True)}
    assert specs["concat__logreg_pl"].command(exp_dir) == (
        "kaggle-kit cv --exp pl --backbone a --backbone b --head concat --pseudo")
    assert specs["a__logreg_pl"].command(exp_dir) == "kaggle-kit cv --exp pl --backbone a --head logreg --pseudo"
    assert specs["a__logreg"].command(exp_dir) == "kaggle-kit cv --exp pl --backbone a --head logreg"

    result = CliRunner().invoke(app, ["blend", "--exp", "pl"])
    assert result.exit_code == 0, result.output
    blend = load_blend(exp_dir)
    assert blend.metric == "auc" and set(blend.models) == set(models)
    page = write_report(exp_dir, progress=False, warn=lambda _: None).path.read_text(encoding="utf-8")
    body = re.search(r'<table id="models">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    rows = {cells[0]: cells for cells in ([html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
                                          for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S))}
    assert set(rows) == set(models)
    assert rows["concat__logreg_pl"][1:3] == ["logreg_pl", "a, b"]
    assert float(rows["a__logreg_pl"][3]) == pytest.approx(pl.score("auc"), abs=5e-6)

    # a _pl model made on an older plan: the loader's hint recomputes it with --pseudo
    assert CliRunner().invoke(app, ["cv", "--exp", "pl", "--backbone", "a", "--head", "logreg", "--seed", "1",
                                    "--quiet"]).exit_code == 0
    with pytest.raises(KitError, match=re.escape(
            "re-run 'kaggle-kit cv --exp pl --backbone a --head logreg --pseudo'")):
        load_cv_results(exp_dir, ["a__logreg_pl"])
