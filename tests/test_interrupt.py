"""SIGKILL at any moment leaves nothing that a later run could take for finished, and the re-run resumes; a second
process on a busy experiment refuses; stale results are refused, naming the command that recomputes them."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_competition
from kaggle_kit.artifacts import KitError, experiment_lock, save_npy_atomic
from kaggle_kit.blend import load_cv_inputs
from kaggle_kit.cli import app
from kaggle_kit.cv import run_cv
from kaggle_kit.data import Dataset, discover
from kaggle_kit.features import write_feature_set
from kaggle_kit.store import experiment_dir, features_dir, load_cv_result, load_features, save_experiment

runner = CliRunner()

FEATURE_ARGS = ["features", "--backbone", "resnet50", "--weights", "none", "--image-size", "32",
                "--batch-size", "4", "--shard-size", "8", "--workers", "1", "--quiet"]


def kit(args, cwd: Path, **kw):
    return subprocess.Popen([sys.executable, "-m", "kaggle_kit", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


def kill_when(proc, condition, *, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run never reached the point to kill it"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow  # runs a Keras backbone over photos, in subprocesses
def test_sigkill_during_features_then_resume_equals_a_clean_run(tmp_path):
    comp = make_competition(tmp_path / "comp", n_per_class=30, n_test=12)
    finish(kit([*FEATURE_ARGS, "--data", str(comp), "--exp", "clean"], tmp_path))

    out = tmp_path / "experiments" / "killed" / "features" / "resnet50_32"
    proc = kit([*FEATURE_ARGS, "--data", str(comp), "--exp", "killed"], tmp_path)
    kill_when(proc, lambda: len(list(out.glob(".partial/*/*.npz"))) >= 2)
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.npy")), "no array may exist before the extraction is finished"
    (out / ".train.npy.x1y2z3.npy.tmp").write_bytes(b"\0" * 1000)  # as a kill while assembling leaves it

    finish(kit([*FEATURE_ARGS, "--exp", "killed"], tmp_path))  # the experiment remembers --data
    assert not list(out.glob(".*.tmp")), "the killed run's temporary arrays are removed"
    resumed = load_features(out)
    clean = load_features(tmp_path / "experiments" / "clean" / "features" / "resnet50_32")
    assert resumed.manifest["images_computed"] < 72  # finished shards were not redone
    for split in ("train", "test"):
        np.testing.assert_allclose(resumed.arrays[split], clean.arrays[split], rtol=1e-4, atol=1e-4)
    assert resumed.train_ids == clean.train_ids and resumed.test_ids == clean.test_ids


# ----------------------------------------------------------------------------------------------------- cv
CV_ARGS = ["cv", "--head", "logreg", "--folds", "3", "--repeats", "2", "--quiet"]
SETS = ("a", "b", "c")


def synthetic_experiments(root: Path, exps, *, n_per_class: int = 750, n_test: int = 40, width: int = 128) -> Dataset:
    """A data folder of empty image files (cv never decodes them) and, in each experiment of ``exps``, the same
    feature sets ``SETS`` (signal in the first column, noise elsewhere), written as features.py writes them."""
    dataset = discover(make_competition(root / "data", n_per_class=n_per_class, n_test=n_test, empty=True))
    for exp in exps:
        exp_dir = experiment_dir(exp, root=root)
        for j, name in enumerate(SETS):
            rng = np.random.default_rng(j)
            train = rng.standard_normal((dataset.n_train, width)).astype(np.float32)
            train[:, 0] += 0.8 * (2 * dataset.y - 1)
            test = rng.standard_normal((dataset.n_test, width)).astype(np.float32)
            write_feature_set(features_dir(exp_dir, name), dataset, {"train": train, "test": test},
                              backbone=name, note="synthetic")
        save_experiment(exp_dir, data_dir=dataset.root, positive="dog")
    return dataset


def finished_models(exp_dir: Path) -> set[str]:
    return {p.parent.name for p in (exp_dir / "cv").glob("*/manifest.json")}


@pytest.mark.slow  # runs the kit in subprocesses, killed and run again
def test_sigkill_during_cv_then_rerun_equals_a_clean_run(tmp_path):
    dataset = synthetic_experiments(tmp_path, ["clean", "killed"])
    clean_dir, exp_dir = experiment_dir("clean", root=tmp_path), experiment_dir("killed", root=tmp_path)
    clean = run_cv(clean_dir, data_dir=dataset.root, positive="dog", n_folds=3, repeats=2, heads=["logreg"],
                   progress=False)
    models = [r.model for r in clean.results]
    assert models == [f"{s}__logreg" for s in SETS]

    # Killed as soon as the fold plan is written: no model may look finished.
    proc = kit([*CV_ARGS, "--exp", "killed"], tmp_path)
    kill_when(proc, lambda: (exp_dir / "folds" / "manifest.json").exists())
    assert not finished_models(exp_dir)

    # Killed after two models: those two are whole; the third is not taken for finished.
    proc = kit([*CV_ARGS, "--exp", "killed"], tmp_path)
    kill_when(proc, lambda: len(finished_models(exp_dir)) >= 2)
    done = finished_models(exp_dir)
    assert done == set(models[:2])
    for model in done:
        result = load_cv_result(exp_dir, model)  # the arrays match their manifest
        assert np.isfinite(result.oof).all() and np.isfinite(result.test).all()
    # As a kill between a model's arrays and its manifest leaves it: arrays, no manifest.
    half = exp_dir / "cv" / models[2]
    save_npy_atomic(half / "oof.npy", np.zeros((1, 3), np.float32))
    warnings = []
    inputs = load_cv_inputs(exp_dir, warn=warnings.append)  # the blend's view: finished models only
    assert inputs.models == tuple(models[:2])
    assert any(f"{half} has no manifest.json" in w for w in warnings)
    # A finished model whose array was damaged afterwards is not trusted either: blend refuses, cv recomputes.
    damaged = exp_dir / "cv" / models[1] / "test.npy"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(KitError, match=re.escape(f"cannot read {damaged}: ") + ".*; re-run 'kaggle-kit cv"):
        load_cv_inputs(exp_dir, warn=warnings.append)

    out = finish(kit([*CV_ARGS, "--exp", "killed"], tmp_path))
    lines = {line.split()[0]: line for line in out.splitlines() if "__logreg" in line}
    assert lines[models[0]].endswith("cached")
    assert not lines[models[1]].endswith("cached") and not lines[models[2]].endswith("cached")
    for model in models:
        resumed, reference = load_cv_result(exp_dir, model), load_cv_result(clean_dir, model)
        np.testing.assert_allclose(resumed.oof, reference.oof, rtol=0, atol=1e-6)
        np.testing.assert_allclose(resumed.test, reference.test, rtol=0, atol=1e-6)
        assert resumed.manifest["plan_sha256"] == reference.manifest["plan_sha256"]


# ---------------------------------------------------------------------------------------- blend and submit
def kit_paused(args, cwd: Path, *, target: str, file_name: str | None, marker: Path):
    """``kaggle-kit ARGS`` in a subprocess that stops for good inside ``target`` (module.function), when its
    first argument is a path named ``file_name`` (any name: None), after touching ``marker``: a process
    caught at exactly that moment, to be killed."""
    code = "\n".join([
        "import importlib, pathlib, sys, time",
        f"module, name = {target!r}.rsplit('.', 1)",
        "mod = importlib.import_module(module)",
        "real = getattr(mod, name)",
        "def paused(path, *args, **kwargs):",
        f"    if {file_name!r} in (None, pathlib.Path(path).name):",
        f"        pathlib.Path({str(marker)!r}).touch()",
        "        time.sleep(600)",
        "    return real(path, *args, **kwargs)",
        "setattr(mod, name, paused)",
        "from kaggle_kit.cli import main",
        f"sys.argv = ['kaggle-kit', *{list(args)!r}]",
        "main()",
    ])
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # runs the kit in subprocesses, killed and run again
def test_sigkill_during_blend_and_submit_leaves_nothing_half_written(tmp_path, monkeypatch):
    dataset = synthetic_experiments(tmp_path, ["default"], n_per_class=60, n_test=10, width=8)
    exp_dir = experiment_dir("default", root=tmp_path)
    run_cv(exp_dir, data_dir=dataset.root, positive="dog", n_folds=3, heads=["logreg"], progress=False)
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["blend"]).exit_code == 0

    # A second blend killed after its arrays, before its manifest: the old manifest is already gone, so the
    # new arrays are never paired with it.
    marker = tmp_path / "paused"
    proc = kit_paused(["blend", "--method", "mean"], tmp_path, target="kaggle_kit.artifacts.write_json_atomic",
                      file_name="manifest.json", marker=marker)
    kill_when(proc, marker.exists)
    assert not (exp_dir / "blend" / "manifest.json").exists()
    refused = runner.invoke(app, ["submit"])
    assert refused.exit_code == 1
    assert refused.stderr == ("error: experiments/default/blend/manifest.json does not exist; "
                              "run 'kaggle-kit blend' first\n")
    assert not Path("submissions").exists()
    assert runner.invoke(app, ["blend", "--method", "mean"]).exit_code == 0

    # A submit killed while its file is written and checked: no partial CSV under submissions/.
    marker.unlink()
    proc = kit_paused(["submit", "--name", "final.csv"], tmp_path, target="kaggle_kit.submit.validate_submission",
                      file_name=None, marker=marker)
    kill_when(proc, marker.exists)
    assert not list(Path("submissions").glob("*.csv"))
    again = runner.invoke(app, ["submit", "--name", "final.csv"])  # the name is still free
    assert again.exit_code == 0, again.output
    rows = Path("submissions/final.csv").read_text().splitlines()
    assert rows[0] == "id,label" and [r.split(",")[0] for r in rows[1:]] == list(dataset.test_ids)


# ------------------------------------------------------------------------------------------- concurrency
def test_taking_the_lock_removes_what_killed_runs_left_half_written(tmp_path):
    exp_dir = experiment_dir("left", root=tmp_path)
    stale = [exp_dir / "cv" / "m__logreg" / ".oof.npy.k2j4.tmp", exp_dir / "blend" / ".test.npy.a1b2.npy.tmp",
             exp_dir / "folds" / ".manifest.json.zz.tmp"]
    kept = [exp_dir / "cv" / "m__logreg" / "oof.npy", exp_dir / "features" / "f" / ".partial" / "k" / "0.npz",
            exp_dir / "notes.tmp"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 64)
    with experiment_lock(exp_dir, command="cv"):
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in kept)


@pytest.mark.slow  # runs a Keras backbone over photos, in subprocesses
def test_a_second_process_on_a_busy_experiment_refuses_with_exit_3(tmp_path):
    comp = make_competition(tmp_path / "comp", n_per_class=30, n_test=12)
    first = kit([*FEATURE_ARGS, "--data", str(comp), "--exp", "busy"], tmp_path)
    lock = tmp_path / "experiments" / "busy" / "lock"
    kill_at = time.monotonic() + 120
    while not (lock.exists() and "running" in lock.read_text()):
        assert first.poll() is None and time.monotonic() < kill_at, "the first run never took the lock"
        time.sleep(0.05)
    others = [kit([*FEATURE_ARGS, "--data", str(comp), "--exp", "busy"], tmp_path),
              kit(["blend", "--exp", "busy"], tmp_path)]
    answers = [p.communicate(timeout=120) for p in others]
    first_still_running = first.poll() is None
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert first_still_running, "the first run ended before the others tried: nothing was tested"
    busy = (f"error: experiment experiments/busy is busy (pid {first.pid} running 'features --backbone resnet50'); "
            "wait for it to finish or use another --exp\n")
    for proc, (out, err) in zip(others, answers):
        assert proc.returncode == 3 and err == busy, err
    # The lock dies with its holder: the next command is not refused as busy.
    after = kit(["blend", "--exp", "busy"], tmp_path)
    _, err = after.communicate(timeout=120)
    assert after.returncode == 1 and "is busy" not in err and "run 'kaggle-kit cv --exp busy' first" in err


# ------------------------------------------------------------------------------------------- stale state
def invoke_ok(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow  # runs a Keras backbone over photos, in subprocesses
def test_stale_results_are_refused_naming_the_command_that_recomputes_them(tmp_path, monkeypatch):
    comp = make_competition(tmp_path / "comp", n_per_class=10, n_test=6)
    monkeypatch.chdir(tmp_path)
    exp_dir = Path("experiments/default")
    features = [*FEATURE_ARGS[:-3], "--quiet"]  # the default --workers
    invoke_ok([*features, "--data", str(comp)])
    cv = ["cv", "--head", "logreg", "--folds", "3", "--quiet"]
    invoke_ok(cv)
    invoke_ok(["blend"])

    # 1. The data changed after 'features': cv refuses and names the command that recomputes this feature set.
    os.utime(comp / "train" / "cat.1.jpg")
    refused = runner.invoke(app, cv)
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    advice = "kaggle-kit features --backbone resnet50 --image-size 32 --weights none"
    assert refused.stderr == ("error: features in experiments/default/features/resnet50_32 were computed on other "
                              f"images than the data folder now holds; re-run '{advice}'\n")
    command = shlex.split(advice)[1:]  # the advice, as given
    again = invoke_ok([*command, "--quiet"])  # (the experiment knows --data)
    assert "cached" not in again.stdout

    # 2. The features changed after 'cv': blend (and submit, through the blend) refuse, naming 'kaggle-kit cv'.
    stale = runner.invoke(app, ["blend"])
    assert stale.exit_code == 1 and stale.stderr.count("\n") == 1
    assert ("error: the features 'resnet50_32' changed after experiments/default/cv/resnet50_32__logreg was "
            "fitted on them; re-run 'kaggle-kit cv" in stale.stderr)
    submit = runner.invoke(app, ["submit"])
    assert submit.exit_code == 1 and ("re-run 'kaggle-kit cv --backbone resnet50_32 --head logreg', then "
                                      "'kaggle-kit blend'") in submit.stderr
    assert "cached" not in invoke_ok(cv).stdout
    invoke_ok(["blend"])

    # 3. Re-extracted into the same name at another size: the same refusal; --force recomputes where offered.
    invoke_ok([*features, "--image-size", "40", "--name", "resnet50_32"])
    assert "changed after" in runner.invoke(app, ["blend"]).stderr
    assert "cached" in invoke_ok([*features, "--image-size", "40", "--name", "resnet50_32"]).stdout
    forced = invoke_ok([*features, "--image-size", "40", "--name", "resnet50_32", "--force"])
    assert "cached" not in forced.stdout and "20 train + 6 test images" in forced.stdout
    assert "cached" not in invoke_ok(cv).stdout
    assert "cached" in invoke_ok(cv).stdout
    assert "cached" not in invoke_ok([*cv, "--force"]).stdout
    invoke_ok(["blend"])

    # 4. A new fold plan: cv names the models it leaves stale, blend refuses them, cv recomputes them.
    dataset = discover(comp)
    rng = np.random.default_rng(0)
    write_feature_set(features_dir(exp_dir, "ext"), dataset,
                      {"train": rng.standard_normal((dataset.n_train, 4)).astype(np.float32),
                       "test": rng.standard_normal((dataset.n_test, 4)).astype(np.float32)},
                      backbone="ext", note="synthetic")
    invoke_ok(cv)
    replaced = invoke_ok(["cv", "--head", "logreg", "--folds", "4", "--backbone", "resnet50_32", "--quiet"])
    assert "(new: cv results made on the previous plan are stale)" in replaced.stdout
    assert "made on another fold plan, so 'kaggle-kit blend' refuses them: ext__logreg" in replaced.stderr
    refused = runner.invoke(app, ["blend"])
    assert refused.exit_code == 1
    assert "ext__logreg was fitted on another fold plan" in refused.stderr and "kaggle-kit cv" in refused.stderr
    invoke_ok(["cv", "--head", "logreg", "--quiet"])
    invoke_ok(["blend"])
    invoke_ok(["submit"])
