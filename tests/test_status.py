"""kaggle-kit status: on every state an experiment can be in, the right next command (and following it leads
on); stale results marked as such; damaged or half-written experiments shown, never a traceback; 80 columns;
JSON with the same content; nothing written, no lock, no Keras."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from datetime import datetime
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import cli_params, make_competition
from kaggle_kit import store
from kaggle_kit.artifacts import experiment_lock, new_manifest, write_json_atomic
from kaggle_kit.blend import run_blend
from kaggle_kit.cli import app
from kaggle_kit.cv import run_cv
from kaggle_kit.data import discover
from kaggle_kit.status import BROKEN, OK, STALE, UNFINISHED, WIDTH, experiment_status, render_json, render_text
from kaggle_kit.submit import make_submission

FEATURES = "resnet50_32"  # the name 'kaggle-kit features --backbone resnet50 --image-size 32' gives
FEATURES_CMD = "kaggle-kit features --backbone resnet50 --image-size 32 --weights none"


@pytest.fixture
def comp(tmp_path, monkeypatch):
    """A competition of empty image files in ./data, with the test's folder as the working directory."""
    monkeypatch.chdir(tmp_path)
    return discover(make_competition(tmp_path / "data", n_per_class=12, n_test=5, empty=True))


def extract(dataset, name: str = FEATURES, *, exp: str = "default", key: str = "k1", backbone: str = "resnet50",
            seed: int = 0, tta: bool = False):
    """Write a feature set as 'kaggle-kit features --weights none' would, from separable synthetic features."""
    exp_dir = store.experiment_dir(exp)
    rng = np.random.default_rng(seed)
    shift = 2.0 * dataset.y.astype(np.float32)[:, None]
    arrays = {"train": (rng.standard_normal((dataset.n_train, 4)) + shift).astype(np.float32),
              "test": rng.standard_normal((dataset.n_test, 4)).astype(np.float32)}
    if tta:
        arrays.update(train_flip=arrays["train"] + 0.1, test_flip=arrays["test"] + 0.1)
    store.save_experiment(exp_dir, data_dir=dataset.root, positive=dataset.positive)
    return store.save_feature_set(store.features_dir(exp_dir, name), dataset, arrays, key=key,
                                  image_list_hash=dataset.image_list_hash(), backbone=backbone, weights="random",
                                  weights_kind="none", input_size=32, details={"images_per_second": 321.5})


def status(exp: str = "default"):
    return experiment_status(store.experiment_dir(exp))


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def follow(command: str) -> None:
    """Run a suggested command through the CLI, as the user would type it."""
    words = shlex.split(command)
    assert words[0] == "kaggle-kit"
    invoke(*words[1:], *(["-q"] if words[1] == "cv" else []))


def parses(command: str) -> None:
    """Refuse a command line the CLI would refuse (an unknown option or choice)."""
    cli_params(command)


def check_text(st) -> list[str]:
    lines = render_text(st)
    assert all(len(line) <= WIDTH for line in lines), [line for line in lines if len(line) > WIDTH]
    return lines


# ---------------------------------------------------------------------------------------- the pipeline
def test_an_empty_experiment_says_extract_features_first_and_creates_nothing(comp, tmp_path, monkeypatch):
    st = status()
    assert (st.exists, st.features, st.plan, st.models, st.blend, st.submission) == (False, [], None, [], None, None)
    assert (st.data.source, st.data.layout, st.data.classes, st.data.n_test) == ("default", "kaggle",
                                                                                 {"cat": 12, "dog": 12}, 5)
    assert st.next.command == "kaggle-kit features --backbone xception"
    assert not (tmp_path / "experiments").exists()
    # without a competition in ./data it asks for the folder
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    other = status("other")
    assert other.data.state == BROKEN and "does not exist" in other.data.reason
    assert other.next.command == "kaggle-kit features --exp other --backbone xception --data DIR"
    parses(other.next.command)
    assert "next: kaggle-kit features --exp other --backbone xception --data DIR" in check_text(other)


def test_following_the_next_command_walks_the_pipeline_to_a_submission(comp, tmp_path):
    extract(comp)
    extract(comp, "squeezenet", backbone="squeezenet", key="k2", seed=1, tta=True)
    st = status()
    assert [(f.name, f.backbone, f.size, f.tta, f.views, f.n_train, f.n_test, f.width, f.images_per_second, f.state)
            for f in st.features] == [(FEATURES, "resnet50", 32, "none", 1, 24, 5, 4, 321.5, OK),
                                      ("squeezenet", "squeezenet", 32, "flip", 2, 24, 5, 4, 321.5, OK)]
    assert st.next.command == "kaggle-kit cv"
    run_cv(store.experiment_dir("default"), heads=["logreg", "concat"], progress=False)  # mlp heads need Keras
    st = status()
    commands = []
    while st.next.command is not None and len(commands) < 5:
        commands.append(st.next.command)
        follow(st.next.command)
        st = status()
    assert commands == ["kaggle-kit blend", "kaggle-kit submit"]
    # every stage is shown as it was written
    assert st.plan.n_folds == 5 and st.plan.state == OK
    assert [m.model for m in st.models] == ["concat__logreg", f"{FEATURES}__logreg", "squeezenet__logreg"]
    for m in st.models:
        loaded = store.load_cv_result(store.experiment_dir("default"), m.model)
        assert (m.oof_logloss, m.oof_accuracy, m.state) == (loaded.oof_logloss, loaded.oof_accuracy, OK)
    blend = store.load_blend(store.experiment_dir("default"))
    assert (st.blend.method, st.blend.calibration, st.blend.clip, st.blend.state) == (
        blend.method, blend.calibration, blend.clip, OK)
    assert [s["score"] for s in st.blend.ladder] == [s.score for s in blend.ladder]
    sub = Path(st.submission.path)
    assert sub.parent == Path("submissions") and sub.name.startswith("default-") and st.submission.rows == 5
    assert "--upload" in st.next.why and str(sub) in st.next.why
    lines = check_text(st)
    assert lines[-2].startswith(f"next: nothing to do: upload {sub}")


def test_mid_pipeline_the_next_command_is_the_first_missing_stage(comp):
    extract(comp)
    assert status().next.command == "kaggle-kit cv"
    run_cv(store.experiment_dir("default"), heads=["logreg"], progress=False)
    assert status().next.command == "kaggle-kit blend"
    # a feature set extracted after cv: cv again, with the heads the experiment uses (cached models are kept)
    extract(comp, "squeezenet", backbone="squeezenet", key="k2", seed=1)
    st = status()
    assert st.next.command == "kaggle-kit cv --head logreg" and "squeezenet" in st.next.why
    follow(st.next.command)
    assert [m.model for m in status().models] == [f"{FEATURES}__logreg", "squeezenet__logreg"]
    assert status().next.command == "kaggle-kit blend"


def test_after_a_submission_nothing_is_left_until_the_blend_is_made_again(comp, tmp_path):
    extract(comp)
    exp_dir = store.experiment_dir("default")
    run_cv(exp_dir, heads=["logreg"], progress=False)
    run_blend(exp_dir, warn=lambda m: None)
    first = make_submission(exp_dir, now=datetime(2020, 1, 1))  # another name than the one made below
    st = status()
    assert (st.submission.path, st.submission.state, st.submission.earlier) == (str(first.path), OK, 0)
    assert st.next.command is None
    # a blend made again after the submission: the submission is stale, submit is next
    past = first.path.stat().st_mtime - 60
    os.utime(first.path, (past, past))
    run_blend(exp_dir, method="mean", warn=lambda m: None)
    st = status()
    assert (st.submission.state, st.submission.reason) == (STALE, "older than the blend")
    assert st.next.command == "kaggle-kit submit"
    follow(st.next.command)
    st = status()
    assert st.submission.earlier == 1 and st.submission.path != str(first.path) and st.next.command is None
    # another experiment's files ('default-b-...') are not this one's
    (tmp_path / "submissions" / "default-b-20990101-000000.csv").write_text("id,label\n")
    assert status().submission.path == st.submission.path


# ------------------------------------------------------------------------------------------- staleness
def test_features_extracted_again_after_cv_make_their_models_and_the_blend_stale(comp):
    extract(comp)
    extract(comp, "squeezenet", backbone="squeezenet", key="k2", seed=1)
    exp_dir = store.experiment_dir("default")
    run_cv(exp_dir, heads=["logreg"], progress=False)
    run_blend(exp_dir, warn=lambda m: None)
    extract(comp, key="k1-again", seed=5)  # the same feature set, extracted again
    st = status()
    states = {m.model: (m.state, m.reason) for m in st.models}
    assert states == {f"{FEATURES}__logreg": (STALE, f"its features '{FEATURES}' were extracted again since"),
                      "squeezenet__logreg": (OK, None)}
    assert st.blend.state == STALE and f"{FEATURES}__logreg" in st.blend.reason
    assert st.next.command == f"kaggle-kit cv --backbone {FEATURES} --head logreg"
    lines = check_text(st)
    assert f"    STALE: its features '{FEATURES}' were extracted again since" in lines
    follow(st.next.command)
    st = status()
    assert all(m.state == OK for m in st.models) and st.next.command == "kaggle-kit blend"
    follow(st.next.command)
    assert status().blend.state == OK


def test_a_touched_image_makes_every_feature_set_stale_and_re_extraction_is_next(comp, tmp_path):
    extract(comp)
    run_cv(store.experiment_dir("default"), heads=["logreg"], progress=False)
    image = tmp_path / "data" / comp.train_files[3]
    later = image.stat().st_mtime + 10
    os.utime(image, (later, later))
    st = status()
    assert [(f.name, f.state, f.reason) for f in st.features] == [
        (FEATURES, STALE, "computed on other images than the data folder now holds")]
    assert st.next.command == FEATURES_CMD
    parses(st.next.command)


def test_a_new_fold_plan_makes_the_models_made_on_the_old_one_stale(comp):
    extract(comp)
    extract(comp, "squeezenet", backbone="squeezenet", key="k2", seed=1)
    exp_dir = store.experiment_dir("default")
    run_cv(exp_dir, heads=["logreg"], progress=False)
    run_cv(exp_dir, n_folds=3, feature_sets=["squeezenet"], heads=["logreg"], progress=False)
    st = status()
    assert (st.plan.n_folds, st.plan.state) == (3, OK)
    stale = [(m.model, m.reason) for m in st.models if m.state == STALE]
    assert stale == [(f"{FEATURES}__logreg", "made on another fold plan than the current one (3 folds x 1 repeat, "
                                             "seed 0)")]
    assert st.next.command == f"kaggle-kit cv --backbone {FEATURES} --head logreg"


def test_a_group_wise_plan_is_current_and_shown_with_its_pattern(comp):
    extract(comp)
    run_cv(store.experiment_dir("default"), heads=["logreg"], groups=r"(\d)\.jpg$", progress=False)
    st = status()
    assert (st.plan.state, st.plan.groups, st.plan.n_groups) == (OK, r"(\d)\.jpg$", 10)
    assert [m.state for m in st.models] == [OK]
    assert "by 10 groups of --groups '(\\d)\\.jpg$'" in " ".join(" ".join(render_text(st)).split())


def test_several_stale_models_are_refreshed_by_one_command_that_adds_no_new_model(comp):
    extract(comp)
    extract(comp, "squeezenet", backbone="squeezenet", key="k2", seed=1)
    exp_dir = store.experiment_dir("default")
    run_cv(exp_dir, heads=["logreg", "concat"], progress=False)  # no mlp models: the command must not add any
    extract(comp, key="k1-again", seed=5)
    extract(comp, "squeezenet", backbone="squeezenet", key="k2-again", seed=6)
    st = status()
    assert [m.state for m in st.models] == [STALE] * 3
    assert st.next.command == "kaggle-kit cv --head logreg --head concat"
    follow(st.next.command)
    st = status()
    assert [(m.model, m.state) for m in st.models] == [("concat__logreg", OK), (f"{FEATURES}__logreg", OK),
                                                       ("squeezenet__logreg", OK)]


# --------------------------------------------------------------------------------- damaged experiments
@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A folder holding ./data and experiments/default with features, a logreg model and a blend (made once)."""
    root = tmp_path_factory.mktemp("template")
    with contextlib.chdir(root):
        dataset = discover(make_competition(root / "data", n_per_class=12, n_test=5, empty=True))
        extract(dataset)
        exp_dir = store.experiment_dir("default")
        run_cv(exp_dir, heads=["logreg"], progress=False)
        run_blend(exp_dir, warn=lambda m: None)
    return root


@pytest.fixture
def pipeline(template, tmp_path, monkeypatch):
    """A copy of the template's experiment in the test's folder, the working directory (its data stays there)."""
    shutil.copytree(template / "experiments", tmp_path / "experiments")  # copy2: modification times kept
    monkeypatch.chdir(tmp_path)
    return store.experiment_dir("default")


DAMAGE = {"not json": "{oops", "a list": "[1, 2]", "another format": json.dumps({"format": "kaggle-kit/other/9"})}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("target, section, command", [
    (f"features/{FEATURES}/manifest.json", "features", "kaggle-kit features --backbone resnet50 --image-size 32"),
    ("folds/manifest.json", "plan", "kaggle-kit cv --head logreg"),
    (f"cv/{FEATURES}__logreg/manifest.json", "models", "kaggle-kit cv --head logreg"),
    ("blend/manifest.json", "blend", "kaggle-kit blend"),
])
def test_a_damaged_manifest_is_shown_broken_with_the_command_that_writes_it_again(pipeline, target, section,
                                                                                   command, damage):
    exp_dir = pipeline
    (exp_dir / target).write_text(DAMAGE[damage])
    st = status()
    item = getattr(st, section)
    item = item[0] if isinstance(item, list) else item
    assert item.state == BROKEN and "\n" not in item.reason and target.split("/")[-2] in item.reason
    assert st.next.command == command
    parses(command)
    assert any(line.lstrip().startswith("BROKEN: ") for line in check_text(st))
    assert json.loads("\n".join(render_json(st)))["next"]["command"] == command


def test_a_manifest_with_values_of_the_wrong_type_is_broken_not_a_traceback(pipeline):
    exp_dir = pipeline
    path = store.cv_dir(exp_dir, f"{FEATURES}__logreg") / "manifest.json"
    manifest = json.loads(path.read_text())
    write_json_atomic(path, {**manifest, "feature_keys": ["not", "a", "mapping"], "scores": 5})
    st = status()
    assert st.models[0].state == BROKEN and st.next.command == "kaggle-kit cv --head logreg"
    output = invoke("status")
    assert "BROKEN" in output and "Traceback" not in output


def test_an_unreadable_experiment_json_says_delete_it_then_point_the_experiment_at_the_data(pipeline):
    exp_dir = pipeline
    (exp_dir / "experiment.json").write_text("[]")
    st = status()
    assert st.data.source == "unreadable" and st.data.state == BROKEN
    assert st.next.command == f"{FEATURES_CMD} --data DIR" and st.next.why.startswith("delete ")
    parses(st.next.command)


def test_half_finished_work_is_shown_unfinished_with_the_command_that_resumes_it(pipeline):
    exp_dir = pipeline
    store.begin_feature_set(store.features_dir(exp_dir, "squeezenet"))  # an extraction killed midway
    (store.features_dir(exp_dir, "squeezenet") / ".partial").mkdir()
    st = status()
    assert [(f.name, f.state) for f in st.features] == [(FEATURES, OK), ("squeezenet", UNFINISHED)]
    assert st.next.command == "kaggle-kit features --backbone squeezenet"
    shutil.rmtree(store.features_dir(exp_dir, "squeezenet"))
    (store.cv_dir(exp_dir, f"{FEATURES}__mlp")).mkdir()  # a cv run killed before its manifest
    st = status()
    assert [(m.model, m.state) for m in st.models] == [(f"{FEATURES}__logreg", OK), (f"{FEATURES}__mlp", UNFINISHED)]
    assert st.next.command == "kaggle-kit cv --head mlp"
    parses(st.next.command)


# ---------------------------------------------------------------------------------------- read-only
def test_status_takes_no_lock_and_writes_nothing(pipeline, template, tmp_path):
    exp_dir = pipeline
    make_submission(exp_dir)

    def snapshot():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for top in (tmp_path, template) for p in top.rglob("*")}

    with experiment_lock(exp_dir, command="cv"):  # a second lock, even in this process, would be refused
        before = snapshot()
        st = status()
        output = invoke("status", "--json")
        after = snapshot()
    assert st.next.command is None and json.loads(output)["next"]["command"] is None
    assert after == before


def test_the_status_module_loads_no_keras_or_tensorflow(comp):
    extract(comp)
    code = ("import sys; from pathlib import Path; from kaggle_kit.status import experiment_status; "
            "experiment_status(Path('experiments/default')); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'jax', 'torch')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------ rendering
def test_the_text_fits_80_columns_with_long_names_and_the_wrapped_command_is_the_same_command(comp):
    exp = "a-rather-long-experiment-name-" + "x" * 65  # 95 characters: wider than a line
    long_set = "efficientnet_lite0_with_a_very_long_feature_set_name_" + "y" * 30
    extract(comp, long_set, exp=exp, backbone="efficientnet_lite0")
    extract(comp, "squeezenet", exp=exp, backbone="squeezenet", key="k2", seed=1)
    exp_dir = store.experiment_dir(exp)
    run_cv(exp_dir, heads=["logreg"], progress=False)
    run_blend(exp_dir, warn=lambda m: None)
    extract(comp, long_set, exp=exp, backbone="efficientnet_lite0", key="again", seed=3)
    st = status(exp)
    assert st.next.command == shlex.join(["kaggle-kit", "cv", "--exp", exp, "--backbone", long_set, "--head",
                                          "logreg"])
    lines = check_text(st)
    start = next(i for i, line in enumerate(lines) if line.startswith("next: "))
    end = next(i for i in range(start, len(lines)) if not lines[i].endswith("\\"))
    assert end - start >= 2
    pasted = "\n".join(lines[start:end + 1])[len("next: "):]
    assert shlex.split(pasted.replace("\\\n", "")) == shlex.split(st.next.command)  # what a shell runs
    rows = [line for line in lines if line.startswith("  efficient")]
    assert len(rows) == 2 and all("..." in row for row in rows)  # the feature set and its model, elided
    assert rows[1].split()[0].endswith("yyy__logreg")  # the end of a name, which tells models apart, is kept
    invoke("status", "--exp", exp)


def test_json_has_the_same_content_and_parses(pipeline):
    exp_dir = pipeline
    output = invoke("status", "--json")
    data = json.loads(output)
    assert set(data) == {"experiment", "path", "exists", "metric", "data", "features", "plan", "models", "blend",
                         "submission", "next"}
    st = status()
    assert data == json.loads(json.dumps(st.to_json()))
    assert data["models"][0]["oof_logloss"] == store.load_cv_result(exp_dir, f"{FEATURES}__logreg").oof_logloss
    assert data["next"] == {"command": "kaggle-kit submit", "why": st.next.why}
    text = invoke("status")
    assert text.splitlines() == render_text(st)


def test_the_experiments_recorded_metric_gets_its_own_column(pipeline, template):
    exp_dir = pipeline
    plan = store.load_plan(exp_dir)
    write_json_atomic(exp_dir / "experiment.json", new_manifest(
        store.EXPERIMENT_FORMAT, data_dir=str(template / "data"), positive="dog", metric="auc"))
    result = store.load_cv_result(exp_dir, f"{FEATURES}__logreg", plan=plan)
    store.write_cv_result(exp_dir, "extra__logreg", plan=plan, oof=result.oof, test=result.test, head="logreg",
                          features=[FEATURES], feature_keys={}, key="x", params={}, tta_train=False,
                          tta_predict=False, scores={**result.scores, "oof_auc": 0.987654}, seconds=1.0,
                          n_excluded_train=0, n_excluded_test=0)
    st = status()
    # cv scores every metric: the pipeline's own model has its AUC too
    assert st.metric == "auc" and [m.metric_score for m in st.models] == [0.987654, result.scores["oof_auc"]]
    assert (st.blend.state, st.blend.reason) == (STALE, "made before these cv models: extra__logreg")
    lines = check_text(st)
    assert any(line.rstrip().endswith("auc  seconds") for line in lines)
    assert any("extra__logreg" in line and "0.98765" in line for line in lines)


def test_help_lists_status_after_the_pipeline_commands():
    output = invoke("--help")
    order = [output.index(f" {name} ") for name in ("features", "cv", "blend", "submit", "report", "status", "demo")]
    assert order == sorted(order)
