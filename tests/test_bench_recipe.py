"""bench/recipe.py: the cuts it finds, that its one-pass extractor gives the kit's own features, the patient ids,
and its screen and ladder on the kit's stores (feature sets, fold plan, cv models) in the experiment's metric."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, SQUEEZENET_H5, make_competition, write_cv_model

BENCH = Path(__file__).resolve().parents[1] / "bench" / "recipe.py"
MALARIA = SHARED / "data" / "malaria-mini"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("bench_recipe", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_recipe"] = module
    spec.loader.exec_module(module)
    return module


def test_lite0_cuts_are_the_seven_stage_ends_their_expansions_and_the_head(recipe):
    from kaggle_kit.backbones import WeightsChoice, build_base, get_backbone

    base = build_base(get_backbone("efficientnet_lite0"), image_size=64, weights=WeightsChoice("none", None, "none"))
    cuts = {c.short: c for c in recipe.stage_ends(base)}
    # Lite0's stage outputs (Tan & Le 2019), and each expanded 6x by the next block's 1x1 conv.
    narrow = {"s1": 16, "s2": 24, "s3": 40, "s4": 80, "s5": 112, "s6": 192, "s7": 320}
    assert {k: cuts[k].width for k in narrow} == narrow
    assert {k: cuts[k + "x"].width for k in narrow if k != "s7"} == {k: 6 * w for k, w in narrow.items() if k != "s7"}
    assert cuts["head"].width == 1280 and cuts["head"].layer == "bn1_relu6"
    assert len(cuts) == 14
    # A stage end is the last block before the width changes: its next block is the expansion's owner.
    assert cuts["s5"].layer == "blocks_10_add" and cuts["s5x"].layer == "blocks_11_bn0_relu6"


def test_unknown_layer_is_refused_with_the_choices(recipe):
    from kaggle_kit.artifacts import KitError

    with pytest.raises(KitError, match="choose from: .*s5x"):
        recipe.build_multi_extractor("efficientnet_lite0", image_size=64, weights="none", shorts=["s9"])


@pytest.mark.slow
def test_one_pass_head_cut_equals_the_kits_extractor_on_real_photos(recipe, mini):
    """The multi-output model's last cut, fed by the kit's decoder, is the kit's own default feature vector."""
    from kaggle_kit.backbones import build_extractor, get_backbone, resolve_weights
    from kaggle_kit.images import iter_batches

    paths = sorted((mini / "train").glob("*.jpg"))[:8]
    spec = get_backbone("squeezenet")
    weights = str(SQUEEZENET_H5)
    model, cuts = recipe.build_multi_extractor("squeezenet", image_size=96, weights=weights, shorts=None)
    plain, flipped, ok = recipe.extract(paths, model, image_size=96, batch_size=4, flip=True, n_cuts=len(cuts))
    assert ok.all() and [c.short for c in cuts][-1] == "fire9"
    kit = build_extractor(spec, image_size=96, weights=resolve_weights(spec, weights))
    batch = np.concatenate([b for b, _ in iter_batches(paths, size=96, batch_size=4)])
    np.testing.assert_allclose(plain[-1], kit.predict_on_batch(batch), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flipped[-1], kit.predict_on_batch(np.ascontiguousarray(batch[:, :, ::-1])),
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(plain[-1], flipped[-1])  # the flip view is a different view
    assert [a.shape for a in plain] == [(8, c.width) for c in cuts]


def test_patient_ids_of_malaria_mini_group_every_training_cell(recipe):
    from kaggle_kit.data import discover

    if not (MALARIA / "train").is_dir():
        pytest.fail(f"malaria-mini is missing at {MALARIA}")
    dataset = discover(MALARIA, positive="Parasitized")
    patients = [recipe.patient_of(f) for f in dataset.train_files]
    assert recipe.patient_of("train/Uninfected/50x50C3thin_original_IMG_20150608_162835_cell_36.png") == "C3"
    assert recipe.patient_of("train/Parasitized/50x50C102P63ThinF_IMG_20150918_162051_cell_141.png") == "C102P63"
    assert 50 < len(set(patients)) < len(patients)  # many cells per patient, many patients
    plan = recipe.grouped_plan(dataset, n_folds=5, seed=0)[0]
    by_patient = {}
    for p, f in zip(patients, plan):
        by_patient.setdefault(p, set()).add(int(f))
    assert all(len(folds) == 1 for folds in by_patient.values())  # no patient on both sides of a split
    assert sorted(set(plan.tolist())) == [0, 1, 2, 3, 4]
    for k in range(5):  # stratified: every fold holds both classes in about the overall ratio
        assert 0.35 < dataset.y[plan == k].mean() < 0.65


@pytest.fixture
def screened_exp(tmp_path, monkeypatch):
    """An experiment in ``tmp_path`` (the working directory) with two feature sets written by the kit's
    ``write_feature_set`` (one with a flip view), its data remembered and a 5-fold plan: 'signal' separates the
    classes, 'noise' does not."""
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
    assert result["all"]["models"] == ["noise__logreg", "signal__logreg"] and result["one"]["models"] == ["signal__logreg"]
    assert list(result["all"]["ladder"]) == ["best single model", "blend", "calibrated", "clipped"]
    assert result["one"]["ladder"]["best single model"] < 0.35
    remember_metric(exp_dir, "auc")  # an AUC competition: no calibration, no clip, scores higher-is-better
    recipe.main(["ladder", "--exp", "t", "--recipe", "all=*__logreg", "--out", str(out)])
    auc = json.loads(out.read_text())["all"]
    assert auc["metric"] == "auc" and list(auc["ladder"]) == ["best single model", "blend"]
    assert auc["ladder"]["best single model"] > 0.95
    with pytest.raises(SystemExit, match="no cv model matches 'mlp_\\*'; the models are: noise__logreg"):
        recipe.main(["ladder", "--exp", "t", "--recipe", "x=mlp_*"])
