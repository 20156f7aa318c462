"""bench/recipe.py: its screen (every view the sets share, the experiment's plan or a group-wise one) and ladder on
the kit's stores (feature sets, fold plan, cv models) in the experiment's metric, and its speed bench through the
kit's own extractor."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_competition, write_cv_model

BENCH = Path(__file__).resolve().parents[1] / "bench" / "recipe.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("bench_recipe", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_recipe"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def screened_exp(tmp_path, monkeypatch):
    """An experiment in ``tmp_path`` (the working directory) with three feature sets written by the kit's
    ``write_feature_set``, its data remembered and a 5-fold plan: 'signal' (with a flip view) separates the
    classes, 'noise' (no flip) does not, 'turned' (flip and the rot90 view, flipped too: four views) does."""
    from kaggle_kit.data import discover
    from kaggle_kit.features import write_feature_set
    from kaggle_kit.folds import ensure_plan
    from kaggle_kit.store import experiment_dir, features_dir, remember_data

    dataset = discover(make_competition(tmp_path / "comp", n_per_class=30, n_test=6, empty=True))
    monkeypatch.chdir(tmp_path)
    exp_dir = experiment_dir("t")
    rng = np.random.default_rng(0)
    shift = np.where(dataset.y[:, None] == 1, 1.0, -1.0)
    signal = {"train": rng.normal(size=(dataset.n_train, 4)) + shift, "test": rng.normal(size=(dataset.n_test, 4))}
    signal.update(train_flip=signal["train"] + 0.1 * rng.normal(size=(dataset.n_train, 4)),
                  test_flip=signal["test"] + 0.1 * rng.normal(size=(dataset.n_test, 4)))
    noise = {"train": rng.normal(size=(dataset.n_train, 3)), "test": rng.normal(size=(dataset.n_test, 3))}
    write_feature_set(features_dir(exp_dir, "signal"), dataset, signal, backbone="synthetic", note="test: signal")
    write_feature_set(features_dir(exp_dir, "noise"), dataset, noise, backbone="synthetic", note="test: noise")
    turned = {}
    for suffix in ("", "_flip", "_rot90", "_rot90_flip"):  # each view a different noisy copy of the signal
        turned["train" + suffix] = shift[:, :2] + rng.normal(size=(dataset.n_train, 2))
        turned["test" + suffix] = rng.normal(size=(dataset.n_test, 2))
    write_feature_set(features_dir(exp_dir, "turned"), dataset, turned, backbone="synthetic", note="test: turned")
    remember_data(exp_dir, dataset, metric=None)
    plan, _ = ensure_plan(exp_dir, y=dataset.y, train_ids=dataset.train_ids, test_ids=dataset.test_ids,
                          n_folds=5, repeats=1, seed=0)
    return exp_dir, plan


def test_screen_scores_sets_side_by_side_out_of_fold_and_blends_them(recipe, screened_exp, tmp_path):
    import json

    recipe.main(["screen", "--exp", "t", "--model", "signal", "--model", "noise:logreg", "--model",
                 "signal+noise:logreg", "--blend", "--out", str(tmp_path / "screen.json")])
    result = json.loads((tmp_path / "screen.json").read_text())
    assert result["metric"] == "logloss" and result["plan"] == "5 folds x 1 repeat, seed 0"
    rows = {r["model"]: r for r in result["models"]}
    assert [rows[m]["width"] for m in ("signal", "noise:logreg", "signal+noise:logreg")] == [4, 3, 7]
    assert rows["signal"]["oof_logloss"] < 0.3 < 0.6 < rows["noise:logreg"]["oof_logloss"]
    assert rows["signal"]["oof_accuracy"] > 0.9
    ladder = result["blend"]["ladder"]
    assert list(ladder) == ["best single model", "blend", "calibrated", "clipped"]
    assert ladder["best single model"] < 0.3


def test_ladder_blends_the_cv_models_a_recipe_names_in_the_experiments_metric(recipe, screened_exp, tmp_path):
    import json

    from kaggle_kit.store import remember_metric

    exp_dir, plan = screened_exp
    rng = np.random.default_rng(1)
    good = np.clip(np.where(plan.y == 1, 0.8, 0.2) + 0.1 * rng.normal(size=plan.n_train), 0.01, 0.99)
    for model, oof in (("signal__logreg", good), ("noise__logreg", rng.uniform(0.3, 0.7, plan.n_train))):
        write_cv_model(exp_dir, model, plan, oof[None, :], np.full(plan.n_test, 0.5, np.float32))
    out = tmp_path / "ladder.json"
    recipe.main(["ladder", "--exp", "t", "--recipe", "all=*__logreg", "--recipe", "one=signal_*", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["all"]["models"] == ["noise__logreg", "signal__logreg"]
    assert result["one"]["models"] == ["signal__logreg"]
    assert list(result["all"]["ladder"]) == ["best single model", "blend", "calibrated", "clipped"]
    assert result["one"]["ladder"]["best single model"] < 0.35
    remember_metric(exp_dir, "auc")  # an AUC competition: no calibration, no clip, scores higher-is-better
    recipe.main(["ladder", "--exp", "t", "--recipe", "all=*__logreg", "--out", str(out)])
    auc = json.loads(out.read_text())["all"]
    assert auc["metric"] == "auc" and list(auc["ladder"]) == ["best single model", "blend"]
    assert auc["ladder"]["best single model"] > 0.95
    with pytest.raises(SystemExit, match="no cv model matches 'mlp_\\*'; the models are: noise__logreg"):
        recipe.main(["ladder", "--exp", "t", "--recipe", "x=mlp_*"])


def spy_cross_validate(monkeypatch) -> list[dict]:
    """Record every call of the kit's cross_validate (which the script imports from kaggle_kit.cv when it runs)."""
    import kaggle_kit.cv

    calls, real = [], kaggle_kit.cv.cross_validate

    def spy(views, y, plan, test_views, **kwargs):
        calls.append({"views": views, "plan": plan, "test_views": test_views, **kwargs})
        return real(views, y, plan, test_views, **kwargs)

    monkeypatch.setattr(kaggle_kit.cv, "cross_validate", spy)
    return calls


def test_screen_fits_on_every_view_the_sets_share_in_cvs_order_and_scores_as_cv(recipe, screened_exp, tmp_path,
                                                                                 monkeypatch):
    import json

    from kaggle_kit.cv import run_cv
    from kaggle_kit.store import features_dir, load_features
    from kaggle_kit.views import array_name

    exp_dir, _ = screened_exp
    calls = spy_cross_validate(monkeypatch)
    out = tmp_path / "screen.json"
    recipe.main(["screen", "--exp", "t", "--model", "turned", "--model", "turned+signal", "--model", "noise+turned",
                 "--out", str(out)])
    rows = json.loads(out.read_text())["models"]
    assert [r["views"] for r in rows] == [4, 2, 1]
    turned, signal, noise = (load_features(features_dir(exp_dir, n)) for n in ("turned", "signal", "noise"))
    alone, with_signal, with_noise = calls
    assert alone["tta_train"] and alone["tta_predict"]
    order = ("", "flip", "rot90", "rot90_flip")  # cv's order
    for got, test, suffix in zip(alone["views"], alone["test_views"], order, strict=True):
        np.testing.assert_array_equal(got, turned.arrays[array_name("train", suffix)])
        np.testing.assert_array_equal(test, turned.arrays[array_name("test", suffix)])
    # beside a set with the flip view only: the two views both have, each side by side
    assert with_signal["tta_train"] and len(with_signal["views"]) == 2
    np.testing.assert_array_equal(with_signal["views"][1], np.concatenate(
        [turned.arrays["train_flip"], signal.arrays["train_flip"]], axis=1))
    # beside a set without flip: the images alone, no TTA
    assert not with_noise["tta_train"] and not with_noise["tta_predict"] and len(with_noise["views"]) == 1
    np.testing.assert_array_equal(with_noise["views"][0], np.concatenate(
        [noise.arrays["train"], turned.arrays["train"]], axis=1))
    # the screen of a model is what 'kaggle-kit cv' scores for it
    cv = run_cv(exp_dir, feature_sets=["turned"], heads=["logreg"], progress=False).results[0]
    assert rows[0]["oof_logloss"] == pytest.approx(cv.score("logloss"), abs=1e-6)


def test_screen_with_groups_scores_on_a_group_wise_plan_and_says_so(recipe, screened_exp, tmp_path, monkeypatch):
    import json
    import re

    from kaggle_kit.data import discover_remembered
    from kaggle_kit.store import experiment_data

    exp_dir, plan = screened_exp
    calls = spy_cross_validate(monkeypatch)
    out = tmp_path / "grouped.json"
    recipe.main(["screen", "--exp", "t", "--groups", r"(\d)\.jpg$", "--model", "signal", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["plan"] == r"5 folds x 1 repeat, seed 0, grouped by --groups '(\d)\.jpg$' (10 groups)"
    assert result["models"][0]["oof_logloss"] < 0.3
    folds = calls[0]["plan"]
    files = discover_remembered(experiment_data(exp_dir)).train_files
    groups = np.array([re.search(r"(\d)\.jpg$", f).group(1) for f in files])  # cat.17.jpg -> '7'
    assert folds.shape == (1, len(files)) and sorted(set(folds[0].tolist())) == [0, 1, 2, 3, 4]
    assert all(len(set(folds[0, groups == g].tolist())) == 1 for g in set(groups))  # a group sits in one fold
    assert any(len(set(plan.plan[0, groups == g].tolist())) > 1 for g in set(groups))  # the by-row plan splits them
    recipe.main(["screen", "--exp", "t", "--model", "signal", "--out", str(out)])  # without --groups: the plan's
    assert json.loads(out.read_text())["plan"] == "5 folds x 1 repeat, seed 0"
    with pytest.raises(SystemExit, match=r"--groups thin finds no group in the file name 'cat\.1\.jpg'"):
        recipe.main(["screen", "--exp", "t", "--groups", "thin", "--model", "signal"])


def test_pruned_oof_flags_the_flipped_labels_from_the_training_folds_only(recipe):
    from kaggle_kit.folds import make_plan

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    X = rng.normal(size=(120, 3)) + np.where(y[:, None] == 1, 2.5, -2.5)  # separable: a flipped label stands out
    noisy = y.copy()
    flipped = np.array([3, 17, 70, 101])
    noisy[flipped] ^= 1
    plan = make_plan(noisy, n_folds=4, repeats=1, seed=0)
    fit = {"head": "logreg"}
    oof, flagged = recipe.pruned_oof([X], noisy, plan, [X[:5]], below=0.2, seed=0, **fit)
    assert flagged.shape == (1, 4, 120) and np.isfinite(oof).all()
    for k in range(4):
        training = plan[0] != k
        assert not flagged[0, k, ~training].any()  # a fold never flags its held-out rows
        np.testing.assert_array_equal(np.flatnonzero(flagged[0, k]), np.intersect1d(flipped, np.flatnonzero(training)))
    # the held-out fold's labels play no part: flip all of fold 0's labels and fold 0 is flagged and predicted alike
    other = noisy.copy()
    other[plan[0] == 0] ^= 1
    oof2, flagged2 = recipe.pruned_oof([X], other, plan, [X[:5]], below=0.2, seed=0, **fit)
    np.testing.assert_array_equal(flagged2[0, 0], flagged[0, 0])
    np.testing.assert_allclose(oof2[0, plan[0] == 0], oof[0, plan[0] == 0], atol=1e-6)
    # group-wise inner folds: the inner plans keep a group's rows together (here: one group per 10 rows)
    groups = [str(i // 10) for i in range(120)]
    _, flagged3 = recipe.pruned_oof([X], noisy, plan, [X[:5]], below=0.2, seed=0, groups=groups, **fit)
    assert flagged3[0].any(axis=0)[flipped].all()


def test_screen_prune_scores_the_pruned_models_beside_the_plain_ones(recipe, screened_exp, tmp_path, capsys):
    import json

    out = tmp_path / "pruned.json"
    recipe.main(["screen", "--exp", "t", "--model", "signal", "--out", str(out)])
    plain = json.loads(out.read_text())["models"][0]
    recipe.main(["screen", "--exp", "t", "--model", "signal", "--prune", "0.05", "--out", str(out)])
    pruned = json.loads(out.read_text())["models"][0]
    import re

    per_fold = float(re.search(r"\(pruned at P < 0\.05: ([\d.]+) training rows a fold\)", capsys.readouterr().out)[1])
    assert 0 < per_fold < 10  # the signal's overlapping tails: a few rows per fold look mislabelled
    assert pruned["oof_logloss"] != plain["oof_logloss"] and pruned["oof_logloss"] < 0.4


def test_speed_refuses_a_bad_config_or_view_count_in_one_line_before_building_anything(recipe, mini):
    with pytest.raises(SystemExit, match="--config 'efficientnet_lite0:big': the size must be a whole number"):
        recipe.main(["speed", "--data", str(mini), "--config", "efficientnet_lite0:big"])
    with pytest.raises(SystemExit, match="unknown backbone 'lite9'; choose one of: .*efficientnet_lite0"):
        recipe.main(["speed", "--data", str(mini), "--config", "lite9:64"])
    with pytest.raises(SystemExit, match="--views 4 is out of range for --view-kind rotations: use 0 to 3"):
        recipe.main(["speed", "--data", str(mini), "--config", "efficientnet_lite0:64", "--views", "4",
                     "--view-kind", "rotations"])
    with pytest.raises(SystemExit, match="--rounds 0 .* must each be 1 or more"):
        recipe.main(["speed", "--data", str(mini), "--config", "efficientnet_lite0:64", "--rounds", "0"])


@pytest.mark.slow  # builds Lite0 three times (7-15 s on this shared machine)
def test_speed_times_configs_through_the_kits_extractor_with_layers_and_views(recipe, mini, tmp_path, monkeypatch):
    import json

    import kaggle_kit.engine

    seen, real = [], kaggle_kit.engine.predict_batches

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(kaggle_kit.engine, "predict_batches", spy)
    out = tmp_path / "speed.json"
    configs = ["efficientnet_lite0:32", "efficientnet_lite0:48"]
    recipe.main(["speed", "--data", str(mini), *[a for c in configs for a in ("--config", c)], "--weights", "none",
                 "--layer", "block5x", "--layer", "last", "--views", "1", "--view-kind", "rotations",
                 "--images", "8", "--rounds", "2", "--batch-size", "4", "--out", str(out)])
    result = json.loads(out.read_text())
    assert list(result["img_per_s"]) == configs and all(r > 0 for r in result["img_per_s"].values())
    assert result["widths"] == {c: [672, 1280] for c in configs}  # Lite0's block5x, then its default features
    assert result["decoded"] == {c: 8 for c in configs} and result["views"] == 4
    # interleaved rounds: config 1, config 2, config 1, config 2; each with flip and the rot90 view
    assert [(k["image_size"], k["tta"], tuple(k["views"])) for k in seen] == [
        (32, "flip", ("rot90",)), (48, "flip", ("rot90",))] * 2
    recipe.main(["speed", "--data", str(mini), "--config", "efficientnet_lite0:32", "--weights", "none", "--layer",
                 "block5x", "--pool", "avgmax", "--images", "4", "--rounds", "1", "--out", str(out)])
    assert json.loads(out.read_text())["widths"] == {"efficientnet_lite0:32": [2 * 672]}  # mean and max, side by side
    with pytest.raises(SystemExit, match="unknown layer 'block9x' of efficientnet_lite0; choose one of: .*block6x"):
        recipe.main(["speed", "--data", str(mini), "--config", "efficientnet_lite0:32", "--weights", "none",
                     "--layer", "block9x", "--images", "4"])
