"""cv: the core (cross_validate, scores, model choice), the edge (run_cv, caching, stale plans, loaders)
and the ``kaggle-kit cv`` command, on small synthetic feature sets written to disk as features.py writes them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_competition
from kaggle_kit.artifacts import KitError, sha256_json
from kaggle_kit.cli import app
from kaggle_kit.cv import TTA_PREDICT, TTA_TRAIN, cross_validate, model_specs, run_cv, score_oof
from kaggle_kit.data import Dataset, discover
from kaggle_kit.folds import make_plan
from kaggle_kit.store import features_dir, load_cv_result, load_cv_results, save_experiment, save_feature_set

runner = CliRunner()


# ------------------------------------------------------------------------------------------------ helpers
def make_data(root: Path, *, n_per_class: int = 40, n_test: int = 20) -> Dataset:
    """A competition folder in Kaggle's layout with empty image files (cv never decodes them)."""
    return discover(make_competition(root, n_per_class=n_per_class, n_test=n_test, empty=True))


def synthetic_features(dataset: Dataset, *, width: int = 8, signal: float = 1.5, seed: int = 0) -> dict:
    """float32 arrays 'train' (n_train, width), 'test', 'train_flip', 'test_flip': the label shifts the
    first column; the flipped view is the same rows plus a little noise."""
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((dataset.n_train, width)).astype(np.float32)
    train[:, 0] += signal * (2 * dataset.y - 1)
    test = rng.standard_normal((dataset.n_test, width)).astype(np.float32)
    return {"train": train, "test": test,
            "train_flip": train + 0.1 * rng.standard_normal(train.shape).astype(np.float32),
            "test_flip": test + 0.1 * rng.standard_normal(test.shape).astype(np.float32)}


def write_features(exp_dir: Path, name: str, dataset: Dataset, arrays: dict, *, unreadable: dict | None = None,
                   key: str | None = None) -> Path:
    """Write a finished feature set with the store's writer, as if extracted ('train_flip' in ``arrays``
    makes it a flip-TTA set), and remember the data folder in the experiment."""
    out = features_dir(exp_dir, name)
    save_feature_set(out, dataset, arrays, key=key or sha256_json({"name": name, "width": arrays["train"].shape[1]}),
                     image_list_hash=dataset.image_list_hash(), backbone=name, weights="synthetic",
                     weights_kind="external", unreadable=unreadable)
    save_experiment(exp_dir, data_dir=dataset.root, positive="dog")
    return out


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working folder with a small competition and two cached feature sets (one with flip views)."""
    monkeypatch.chdir(tmp_path)
    dataset = make_data(tmp_path / "data")
    exp_dir = Path("experiments") / "default"
    write_features(exp_dir, "alpha", dataset, synthetic_features(dataset, seed=1))
    plain = synthetic_features(dataset, width=5, signal=1.0, seed=2)
    write_features(exp_dir, "beta", dataset, {"train": plain["train"], "test": plain["test"]})
    return tmp_path, exp_dir, dataset


def run_logreg(exp_dir: Path, dataset: Dataset, **kw):
    return run_cv(exp_dir, data_dir=dataset.root, positive="dog", heads=["logreg"], progress=False, **kw)


# --------------------------------------------------------------------------------------------------- core
def test_score_oof_of_perfect_and_constant_predictions():
    y = np.array([0, 1] * 50)
    plan = make_plan(y, n_folds=5, repeats=1, seed=0)
    usable = np.ones(100, dtype=bool)
    perfect = score_oof(y, y[None].astype(np.float32), plan, usable)
    assert perfect["oof_logloss"] < 1e-12 and perfect["oof_accuracy"] == 1.0
    half = score_oof(y, np.full((1, 100), 0.5, dtype=np.float32), plan, usable)
    assert half["oof_logloss"] == pytest.approx(math.log(2))
    assert len(half["fold_logloss"]) == len(half["fold_accuracy"]) == 5


def test_cross_validate_predicts_each_row_once_per_repeat_by_a_model_that_never_saw_it():
    rng = np.random.default_rng(0)
    y = (rng.random(150) < 0.4).astype(np.int8)
    X = rng.standard_normal((150, 6)).astype(np.float32)
    X[:, 0] += 2 * y
    plan = make_plan(y, n_folds=4, repeats=2, seed=3)
    usable = np.ones(150, dtype=bool)
    usable[[5, 77]] = False
    out = cross_validate([X], y, plan, [X[:30]], head="logreg", usable=usable, seed=0)
    assert out.oof.shape == (2, 150) and out.oof.dtype == np.float32
    assert np.isnan(out.oof[:, [5, 77]]).all()
    # Unfilled rows would be NaN (the heads start from NaN): every usable row got a prediction in each repeat.
    assert np.isfinite(out.oof[:, usable]).all() and ((out.oof[:, usable] > 0) & (out.oof[:, usable] < 1)).all()
    assert out.test.shape == (30,) and np.isfinite(out.test).all()
    assert len(out.params["per_repeat"]) == 2 and len(out.params["per_repeat"][0]["C"]) == 4
    assert out.scores["oof_logloss"] < 0.5
    # Any labels at all on the rows of fold 0 in repeat 0 leave their repeat-0 predictions as they were: each was
    # made once, by the model that never saw it. In repeat 1 those rows were mostly training rows: they change.
    held = plan[0] == 0
    again = cross_validate([X], np.where(held, 1 - y, y), plan, [X[:30]], head="logreg", usable=usable, seed=0)
    np.testing.assert_allclose(again.oof[0, held], out.oof[0, held], atol=1e-4)
    assert np.nanmax(np.abs(again.oof[1, held] - out.oof[1, held])) > 0.05


def test_model_specs_default_and_concat():
    names = [s.name for s in model_specs(["a", "b"])]
    assert names == ["a__logreg", "a__mlp", "b__logreg", "b__mlp", "concat__logreg"]
    assert [s.name for s in model_specs(["a"])] == ["a__logreg", "a__mlp"]
    concat = model_specs(["a", "b"], ["concat_mlp"])[0]
    assert (concat.name, concat.head, concat.features) == ("concat__mlp", "mlp", ("a", "b"))
    with pytest.raises(KitError, match="only \\['a'\\]"):
        model_specs(["a"], ["concat"])


# --------------------------------------------------------------------------------------------------- edge
def test_run_cv_writes_the_contract(project):
    _, exp_dir, dataset = project
    run = run_logreg(exp_dir, dataset, n_folds=4)
    assert run.plan_status == "new" and [r.model for r in run.results] == ["alpha__logreg", "beta__logreg"]
    plan_manifest = json.loads((exp_dir / "folds" / "manifest.json").read_text())
    assert plan_manifest["format"] == "kaggle-kit/folds/1" and plan_manifest["n_folds"] == 4
    out = exp_dir / "cv" / "alpha__logreg"
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "kaggle-kit/cv/1" and m["model"] == "alpha__logreg" and m["head"] == "logreg"
    assert m["features"] == ["alpha"] and set(m["feature_keys"]) == {"alpha"}
    assert m["plan_sha256"] == plan_manifest["plan_sha256"]
    assert (m["tta_train"], m["tta_predict"]) == (TTA_TRAIN, TTA_PREDICT)  # alpha has flipped features
    assert set(m["scores"]) >= {"oof_logloss", "oof_accuracy", "fold_logloss", "fold_accuracy"}
    assert len(m["params"]["per_repeat"][0]["C"]) == 4 and m["n_excluded_train"] == 0
    oof, test = np.load(out / "oof.npy"), np.load(out / "test.npy")
    assert oof.shape == (1, dataset.n_train) and oof.dtype == np.float32 and np.isfinite(oof).all()
    assert test.shape == (dataset.n_test,) and test.dtype == np.float32
    beta = json.loads((exp_dir / "cv" / "beta__logreg" / "manifest.json").read_text())
    assert beta["tta_train"] is False and beta["tta_predict"] is False  # no flipped features to use


def test_second_run_is_cached_and_force_recomputes(project):
    _, exp_dir, dataset = project
    run_logreg(exp_dir, dataset)
    manifest = exp_dir / "cv" / "alpha__logreg" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    again = run_logreg(exp_dir, dataset)
    assert all(r.cached for r in again.results) and again.plan_status == "kept"
    assert manifest.stat().st_mtime_ns == before
    forced = run_logreg(exp_dir, dataset, force=True)
    assert not any(r.cached for r in forced.results) and manifest.stat().st_mtime_ns != before


def test_new_plan_makes_old_results_stale_and_the_loader_refuses_them(project):
    _, exp_dir, dataset = project
    run_logreg(exp_dir, dataset, n_folds=5)
    assert load_cv_result(exp_dir, "beta__logreg").oof.shape == (1, dataset.n_train)
    run = run_cv(exp_dir, data_dir=dataset.root, positive="dog", n_folds=3, feature_sets=["alpha"],
                 heads=["logreg"], progress=False)
    assert run.plan_status == "replaced" and run.stale == ["beta__logreg"]
    assert len(load_cv_result(exp_dir, "alpha__logreg").manifest["params"]["per_repeat"][0]["C"]) == 3
    with pytest.raises(KitError, match="fitted on another fold plan.*re-run 'kaggle-kit cv --backbone beta --head "
                                       "logreg'"):
        load_cv_result(exp_dir, "beta__logreg")
    with pytest.raises(KitError, match="kaggle-kit cv"):
        load_cv_results(exp_dir)
    # an unchanged request keeps the plan: no surprise invalidation
    assert run_logreg(exp_dir, dataset, feature_sets=["alpha"]).plan_status == "kept"


def test_unreadable_images_are_excluded_and_get_the_prior(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = make_data(tmp_path / "data")
    exp_dir = Path("experiments") / "default"
    bad_train, bad_test = dataset.train_files[3], dataset.test_files[2]
    write_features(exp_dir, "alpha", dataset, synthetic_features(dataset),
                   unreadable={"train": [bad_train], "test": [bad_test]})
    run = run_logreg(exp_dir, dataset)
    result = run.results[0]
    assert result.manifest["n_excluded_train"] == 1 and result.manifest["n_excluded_test"] == 1
    assert np.isnan(result.oof[:, 3]).all() and np.isfinite(np.delete(result.oof, 3, axis=1)).all()
    prior = np.delete(dataset.y, 3).mean()
    assert result.test[2] == pytest.approx(prior)


def test_features_of_other_images_are_refused(project):
    _, exp_dir, dataset = project
    os.utime(dataset.root / "train" / "cat.1.jpg", ns=(1, 1))  # the image list changed since extraction
    with pytest.raises(KitError, match="features in .*alpha were computed on other images than the data folder now "
                                       "holds; write it again with the tool that made it"):
        run_logreg(exp_dir, dataset)


# ---------------------------------------------------------------------------------------------------- cli
def test_cli_without_features_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["cv"])
    assert result.exit_code == 1
    assert ("no cached features in experiments/default/features; run 'kaggle-kit features --backbone ...' "
            "first") in result.output
    assert not (tmp_path / "experiments").exists()


def test_cli_runs_reports_and_caches(project):
    # (the mlp head is left out for speed: tests/test_heads.py covers it)
    result = runner.invoke(app, ["cv", "--folds", "3", "--head", "logreg", "--head", "concat", "--quiet"])
    assert result.exit_code == 0, result.output
    for model in ("alpha__logreg", "beta__logreg", "concat__logreg"):
        assert model in result.output
    assert "fold plan: 3 folds x 1 repeat, seed 0 (new)" in result.output
    again = runner.invoke(app, ["cv", "--quiet", "--head", "logreg"])
    assert again.exit_code == 0, again.output
    assert "cached" in again.output and "(new" not in again.output


def test_cli_user_errors(project):
    unknown = runner.invoke(app, ["cv", "--backbone", "gamma", "--quiet"])
    assert unknown.exit_code == 2 and "no cached feature set 'gamma'" in unknown.output
    assert "cached: alpha, beta" in unknown.output
    alone = runner.invoke(app, ["cv", "--backbone", "alpha", "--head", "concat", "--quiet"])
    assert alone.exit_code == 2 and "--head concat" in alone.output
    too_many = runner.invoke(app, ["cv", "--folds", "50", "--head", "logreg", "--quiet"])
    assert too_many.exit_code == 2 and "--folds 50" in too_many.output


def test_cli_warns_about_stale_results(project):
    assert runner.invoke(app, ["cv", "--head", "logreg", "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["cv", "--backbone", "alpha", "--head", "logreg", "--seed", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "beta__logreg" in result.output and "re-run 'kaggle-kit cv'" in result.output


def test_cli_group_wise_folds_keep_each_group_in_one_fold(project):
    from kaggle_kit.store import load_plan

    _, exp_dir, dataset = project
    result = runner.invoke(app, ["cv", "--folds", "3", "--head", "logreg", "--groups", r"(\d)\.jpg$", "--quiet"])
    assert result.exit_code == 0, result.output
    assert r"grouped by --groups '(\d)\.jpg$' (10 groups) (new)" in result.output
    plan = load_plan(exp_dir)
    last_digit = [f[-5] for f in dataset.train_files]
    for digit in set(last_digit):
        assert len({int(plan.plan[0, i]) for i, d in enumerate(last_digit) if d == digit}) == 1
    bad = runner.invoke(app, ["cv", "--groups", "(", "--quiet"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1
    assert "--groups '(' is not a regular expression" in bad.output
    unmatched = runner.invoke(app, ["cv", "--groups", "^(dog)", "--quiet", "--head", "logreg"])
    assert unmatched.exit_code == 2 and "finds no group in the file name 'cat.1.jpg'" in unmatched.output
    assert load_plan(exp_dir).sha256 == plan.sha256  # a refused pattern leaves the plan as it was
