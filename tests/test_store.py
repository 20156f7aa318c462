"""The store: each format's writer and loader agree, the loader refuses what does not fit, and every re-run hint
is a command line the CLI accepts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_params, make_competition
from kaggle_kit import store
from kaggle_kit.artifacts import KitError, new_manifest, write_json_atomic
from kaggle_kit.data import discover
from kaggle_kit.folds import ensure_plan


parses = cli_params  # the options the CLI would run a re-run hint with


@pytest.fixture
def experiment(tmp_path):
    """experiments/x with a competition of empty image files, one feature set 'alpha' and a fold plan."""
    dataset = discover(make_competition(tmp_path / "comp", n_per_class=12, n_test=5, empty=True))
    exp_dir = store.experiment_dir("x", root=tmp_path)
    rng = np.random.default_rng(0)
    arrays = {"train": rng.standard_normal((dataset.n_train, 3)).astype(np.float32),
              "test": rng.standard_normal((dataset.n_test, 3)).astype(np.float32)}
    store.save_feature_set(store.features_dir(exp_dir, "alpha"), dataset, arrays, key="k1",
                           image_list_hash=dataset.image_list_hash(), backbone="resnet50", weights="w",
                           weights_kind="none", input_size=32,
                           unreadable={"train": [], "test": [dataset.test_files[1]]})
    store.save_experiment(exp_dir, data_dir=dataset.root, positive="dog")
    plan, _ = ensure_plan(exp_dir, y=dataset.y, train_ids=dataset.train_ids, test_ids=dataset.test_ids, n_folds=3,
                          repeats=2, seed=0)
    return exp_dir, dataset, plan, arrays


def write_model(exp_dir: Path, plan, *, model: str = "alpha__logreg", feature_keys=None, oof=None):
    rng = np.random.default_rng(1)
    oof = rng.uniform(0.05, 0.95, (plan.repeats, plan.n_train)) if oof is None else oof
    return store.write_cv_result(
        exp_dir, model, plan=plan, oof=oof, test=rng.uniform(0, 1, plan.n_test), head="logreg",
        features=["alpha"], feature_keys={"alpha": "k1"} if feature_keys is None else feature_keys, key="m1",
        params={}, tta_train=False, tta_predict=False, scores={"oof_logloss": 0.5, "oof_accuracy": 0.7}, seconds=1.0,
        n_excluded_train=0, n_excluded_test=1)


# ------------------------------------------------------------------------------------------ the layout
def test_the_writers_make_the_documented_layout(experiment):
    exp_dir, dataset, plan, _ = experiment
    write_model(exp_dir, plan)
    from kaggle_kit.blend import run_blend

    run_blend(exp_dir, warn=lambda m: None)
    files = {p.relative_to(exp_dir).as_posix() for p in exp_dir.rglob("*") if p.is_file()}
    assert files == {
        "experiment.json", "lock",
        "features/alpha/train.npy", "features/alpha/test.npy", "features/alpha/ids.json",
        "features/alpha/manifest.json",
        "folds/plan.npy", "folds/y.npy", "folds/ids.json", "folds/manifest.json",
        "cv/alpha__logreg/oof.npy", "cv/alpha__logreg/test.npy", "cv/alpha__logreg/manifest.json",
        "blend/oof.npy", "blend/oof_uncalibrated.npy", "blend/test.npy", "blend/manifest.json",
    }
    formats = {name: json.loads((exp_dir / name).read_text())["format"] for name in
               ("experiment.json", "features/alpha/manifest.json", "folds/manifest.json",
                "cv/alpha__logreg/manifest.json", "blend/manifest.json")}
    assert formats == {"experiment.json": "kaggle-kit/experiment/1", "features/alpha/manifest.json":
                       "kaggle-kit/features/1", "folds/manifest.json": "kaggle-kit/folds/1",
                       "cv/alpha__logreg/manifest.json": "kaggle-kit/cv/1", "blend/manifest.json":
                       "kaggle-kit/blend/2"}


# ------------------------------------------------------------------------------------------- features
def test_a_feature_set_keeps_the_weights_file_it_was_made_from(experiment, tmp_path):
    """The report's heatmaps rebuild the backbone from it: kind, identity, file and size read back as written."""
    exp_dir, dataset, _, arrays = experiment
    alpha = store.load_features(store.features_dir(exp_dir, "alpha"))
    assert (alpha.weights_kind, alpha.weights, alpha.weights_path, alpha.input_size, alpha.layer) == \
        ("none", "w", None, 32, None)
    weights_file = tmp_path / "attached" / "resnet50_notop.h5"
    beta = store.save_feature_set(store.features_dir(exp_dir, "beta"), dataset, arrays, key="k3",
                                  image_list_hash=dataset.image_list_hash(), backbone="resnet50",
                                  weights="sha256:abc", weights_kind="file", weights_path=weights_file,
                                  input_size=64)
    again = store.load_features(beta.path)
    assert (again.weights_kind, again.weights, again.weights_path, again.input_size) == \
        ("file", "sha256:abc", str(weights_file), 64)


# ------------------------------------------------------------------------------------------------- cv
def test_a_cv_result_reads_back_as_written_with_its_feature_sets_prior_rows(experiment):
    exp_dir, dataset, plan, _ = experiment
    written = write_model(exp_dir, plan)
    loaded = store.load_cv_result(exp_dir, "alpha__logreg")
    np.testing.assert_array_equal(loaded.oof, written.oof)
    np.testing.assert_array_equal(loaded.test, written.test)
    assert loaded.manifest == json.loads(json.dumps(written.manifest)) and loaded.sha256 == written.sha256
    assert loaded.prior_test_ids == {dataset.test_ids[1]}  # the test image alpha could not decode
    assert (loaded.head, loaded.features, loaded.oof_logloss, loaded.seconds) == ("logreg", ("alpha",), 0.5, 1.0)


def test_the_cv_writer_refuses_arrays_that_do_not_fit_the_plan(experiment):
    exp_dir, _, plan, _ = experiment
    with pytest.raises(ValueError, match=r"oof.npy is float32 \(1, 24\), but the experiment has 2 repeat"):
        write_model(exp_dir, plan, oof=np.full((1, plan.n_train), 0.5))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        write_model(exp_dir, plan, oof=np.full((2, plan.n_train), 1.5))
    assert not (store.cv_dir(exp_dir, "alpha__logreg")).exists()


def test_a_cv_result_on_re_extracted_features_is_refused_and_not_taken_from_the_cache(experiment):
    exp_dir, dataset, plan, arrays = experiment
    write_model(exp_dir, plan)
    assert store.cached_cv_result(exp_dir, "alpha__logreg", key="m1", plan=plan).cached
    store.save_feature_set(store.features_dir(exp_dir, "alpha"), dataset, arrays, key="k2",
                           image_list_hash=dataset.image_list_hash(), backbone="resnet50", weights="w",
                           weights_kind="none", input_size=32)
    with pytest.raises(KitError, match=r"the features 'alpha' changed after .*alpha__logreg was fitted on them; "
                                       r"re-run 'kaggle-kit cv --exp x --backbone alpha --head logreg'$"):
        store.load_cv_result(exp_dir, "alpha__logreg")
    assert store.cached_cv_result(exp_dir, "alpha__logreg", key="m1", plan=plan) is None


def test_a_cv_manifest_lacking_keys_is_refused_naming_them(experiment):
    exp_dir, _, plan, _ = experiment
    path = store.cv_dir(exp_dir, "alpha__logreg") / "manifest.json"
    write_json_atomic(path, new_manifest(store.CV_FORMAT, model="alpha__logreg", plan_sha256=plan.sha256))
    with pytest.raises(KitError, match="lacks head, features, feature_keys, key, scores, seconds, n_train, n_test; "
                                       "re-run 'kaggle-kit cv --exp x'"):
        store.load_cv_result(exp_dir, "alpha__logreg")


# ---------------------------------------------------------------------------------------------- blend
def test_a_blend_of_the_previous_format_is_refused_with_the_command_that_remakes_it(experiment):
    exp_dir, _, plan, _ = experiment
    write_model(exp_dir, plan)
    from kaggle_kit.blend import run_blend

    run_blend(exp_dir, warn=lambda m: None)
    path = store.blend_dir(exp_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    write_json_atomic(path, {**manifest, "format": "kaggle-kit/blend/1"})
    with pytest.raises(KitError, match=r"has format 'kaggle-kit/blend/1', expected 'kaggle-kit/blend/2'; "
                                       r"re-run 'kaggle-kit blend --exp x'"):
        store.load_blend(exp_dir)
    write_json_atomic(path, manifest)
    (store.blend_dir(exp_dir) / "oof_uncalibrated.npy").unlink()
    with pytest.raises(KitError, match="oof_uncalibrated.npy.*re-run 'kaggle-kit blend --exp x'"):
        store.load_blend(exp_dir)


# ----------------------------------------------------------------------------------------- re-run hints
def test_every_re_run_hint_is_a_command_line_the_cli_accepts(tmp_path):
    x, default = store.experiment_dir("x", root=tmp_path), store.experiment_dir("default", root=tmp_path)
    hints = {
        store.command(x, "blend"): {"command": "blend", "exp": "x"},
        store.command(default, "cv"): {"command": "cv", "exp": "default"},
        store.cv_command(x, model="a__mlp", head="mlp", features=["a"]):
            {"command": "cv", "exp": "x", "backbone": ["a"]},
        store.cv_command(default, model="concat__mlp", head="mlp", features=["a", "b"]):
            {"command": "cv", "backbone": ["a", "b"]},
        store.features_command(store.features_dir(x, "resnet50_32")):
            {"command": "features", "exp": "x", "backbone": "resnet50", "image_size": 32, "name": None},
        store.features_command(store.features_dir(default, "mine"), {"backbone": "squeezenet", "input_size": 227,
                                                                      "weights_kind": "file", "tta": "flip"}):
            {"command": "features", "backbone": "squeezenet", "image_size": None, "weights": "FILE", "name": "mine"},
        store.features_command(store.features_dir(default, "efficientnet_lite0"), {
            "backbone": "efficientnet_lite0", "input_size": 320, "weights_kind": "imagenet", "tta": "none"},
            force=True): {"command": "features", "backbone": "efficientnet_lite0", "name": None, "force": True},
        store.features_command(store.features_dir(default, "resnet50"), {
            "backbone": "resnet50", "input_size": 224, "weights_kind": "imagenet", "tta": "none", "decoder": "dali"}):
            {"command": "features", "backbone": "resnet50", "decoder": "dali", "name": None},
        store.features_command(store.features_dir(default, "squeezenet_128"), {
            "backbone": "squeezenet", "input_size": 128, "weights_kind": "imagenet", "tta": "flip",
            "views": ["rot90", "rot180"]}): {"command": "features", "backbone": "squeezenet", "views": 2, "name": None},
    }
    for hint, expected in hints.items():
        params = parses(hint)
        assert {k: params[k] for k in expected} | {"command": params["command"]} == expected, hint
    assert [h.value for h in parses(store.cv_command(default, model="concat__mlp", head="mlp",
                                                     features=["a", "b"]))["head"]] == ["concat_mlp"]
    assert parses(store.features_command(store.features_dir(default, "mine"), {"backbone": "squeezenet",
                                                                                "tta": "flip"}))["tta"].value == "flip"
    assert parses(store.features_command(store.features_dir(default, "squeezenet_128"), {
        "backbone": "squeezenet", "input_size": 128, "tta": "none", "views": ["rot90"],
    }))["view_kind"].value == "rotations"


def test_a_features_hint_falls_back_to_the_folder_name_without_a_manifest(tmp_path):
    exp_dir = store.experiment_dir("default", root=tmp_path)
    assert store.features_command(store.features_dir(exp_dir, "xception")) == "kaggle-kit features --backbone xception"
    assert (store.features_command(store.features_dir(exp_dir, "odd")) ==
            "kaggle-kit features --backbone BACKBONE --name odd")
    with pytest.raises(KitError, match=r"manifest.json does not exist; run 'kaggle-kit features --backbone resnet50 "
                                       r"--image-size 64' first"):
        store.load_features(store.features_dir(exp_dir, "resnet50_64"))


def test_the_experiment_remembers_its_data_and_a_damaged_one_says_what_to_run(tmp_path):
    exp_dir = store.experiment_dir("x", root=tmp_path)
    assert store.load_experiment(exp_dir) is None
    assert store.experiment_data(exp_dir) == store.DataSettings(Path("data"))  # discover decides the rest
    assert store.experiment_metric(exp_dir) == "logloss"
    store.save_experiment(exp_dir, data_dir=Path("/comp"), positive="cat")
    assert store.experiment_data(exp_dir) == store.DataSettings(Path("/comp"), positive="cat")
    assert store.experiment_data(exp_dir, data=Path("other"), positive="dog") == store.DataSettings(Path("other"),
                                                                                                   positive="dog")
    assert store.experiment_data(exp_dir, data=Path("other")) == store.DataSettings(Path("other"))  # nothing kept


def test_the_experiment_remembers_how_its_folder_is_read_and_its_metric(tmp_path):
    exp_dir = store.experiment_dir("x", root=tmp_path)
    comp = (tmp_path / "comp").resolve()
    store.save_experiment(exp_dir, data_dir=comp, positive="1", layout="csv", labels=str(comp / "t.csv"),
                          id_col="image", target_col="target", metric="auc")
    remembered = store.load_experiment(exp_dir)
    assert (remembered.layout, remembered.id_col, remembered.target_col, remembered.metric) == (
        "csv", "image", "target", "auc")
    kept = store.DataSettings(comp, positive="1", layout="csv", labels=str(comp / "t.csv"), id_col="image",
                              target_col="target")
    assert store.experiment_data(exp_dir) == kept
    same = store.experiment_data(exp_dir, data=tmp_path / "comp" / ".." / "comp")  # the same folder, spelt apart
    assert same.options() == kept.options() and same.data_dir.resolve() == comp
    # A new labels file or layout starts from none of the columns: they belonged to the old file.
    assert store.experiment_data(exp_dir, labels="u.csv") == store.DataSettings(comp, positive="1", labels="u.csv")
    assert store.experiment_data(exp_dir, layout="folders") == store.DataSettings(comp, positive="1",
                                                                                 layout="folders")
    assert store.experiment_data(exp_dir, target_col="y").target_col == "y"
    assert store.experiment_metric(exp_dir) == "auc" and store.experiment_metric(exp_dir, "accuracy") == "accuracy"
    with pytest.raises(KitError, match="unknown metric 'f1'; choose one of: logloss, auc, accuracy"):
        store.experiment_metric(exp_dir, "f1")
    store.remember_metric(exp_dir, "logloss")
    assert store.load_experiment(exp_dir) == replace(remembered, metric="logloss")  # nothing else changes
    write_json_atomic(exp_dir / "experiment.json", new_manifest(store.EXPERIMENT_FORMAT, data_dir=str(comp),
                                                                positive="1", metric="f1", layout=3))
    with pytest.raises(KitError, match=r"layout 3 is not text; metric 'f1' is not one of logloss, auc, accuracy; "
                                       r"re-run 'kaggle-kit features --exp x --data DIR'"):
        store.load_experiment(exp_dir)


def test_an_experiment_json_damaged_says_what_to_run(tmp_path):
    exp_dir = store.experiment_dir("x", root=tmp_path)
    write_json_atomic(exp_dir / "experiment.json", new_manifest(store.EXPERIMENT_FORMAT, data_dir="/comp"))
    with pytest.raises(KitError, match="lacks positive; re-run 'kaggle-kit features --exp x --data DIR'"):
        store.load_experiment(exp_dir)
