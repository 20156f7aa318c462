import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conftest import make_competition
from kaggle_kit.artifacts import experiment_lock
from kaggle_kit.cli import app, main
from kaggle_kit.keras_loader import _startup_lines_dropped, is_startup_noise
from kaggle_kit.store import experiment_dir

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_importing_the_cli_loads_no_deep_learning_framework():
    code = "import sys, kaggle_kit.cli; bad = {'tensorflow', 'keras', 'jax', 'torch'} & set(sys.modules); print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "set()"


def test_help_lists_the_commands_in_the_order_a_user_runs_them():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    order = ["download", "backbones", "features", "cv", "blend", "submit", "report", "demo"]
    listed = [m.group(1) for m in re.finditer(r"^\W*(\w+)\s{2,}\S", result.output, re.M) if m.group(1) in order]
    assert listed == order


# Lines TensorFlow and absl print when Keras is imported, as seen on this machine (TensorFlow 2.21, CPU).
TF_STARTUP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795994324.184641    2315 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. To turn "
    "them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1795994596.158844    7783 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
]


def test_tensorflow_start_up_lines_are_dropped_and_everything_else_is_kept(capfd):
    assert all(is_startup_noise(line) for line in TF_STARTUP)
    kept = ["error: a real problem while importing", "I0000 is not a log line", "warning: cannot decode x.jpg"]
    assert not any(is_startup_noise(line) for line in kept)
    with _startup_lines_dropped():
        os.write(2, "\n".join([TF_STARTUP[0], kept[0], *TF_STARTUP[1:], *kept[1:]]).encode() + b"\n")
    assert capfd.readouterr().err.splitlines() == kept


@pytest.mark.slow  # starts TensorFlow in a subprocess
def test_features_prints_no_tensorflow_or_absl_line(tmp_path):
    comp = make_competition(tmp_path / "comp", n_per_class=3, n_test=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "GLOG_", "ABSL"))}
    done = subprocess.run([sys.executable, "-m", "kaggle_kit", "features", "--backbone", "squeezenet", "--weights",
                           "none", "--image-size", "32", "--data", str(comp), "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("squeezenet_32: 6 train + 2 test images -> 512 features")
    noise = re.compile(r"tensorflow|absl|onednn|cpu_feature_guard|cuda|xla|^[IWEF]\d{4} ", re.I)
    assert [line for line in (done.stdout + done.stderr).splitlines() if noise.search(line)] == []
    assert done.stderr.splitlines() == ["WARNING: --weights none: random weights, these features are NOT pretrained "
                                        "and will score poorly (use them for plumbing tests only)"]


@pytest.mark.parametrize("argv, fragment", [
    (["cv", "--data", "x"], "No such option: --data (see 'kaggle-kit cv --help')"),
    (["cv", "--folds", "1"], "'--folds'"),
    (["blend", "--method", "median"], "'median' is not one of"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_usage_errors_are_one_line_exit_2(workdir, capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err, err


def test_the_entry_point_still_prints_help_and_runs_commands(workdir, capsys):
    for argv in (["--help"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0 and "Usage: kaggle-kit" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["blend", "--exp", "nothing"])  # a KitError inside a command keeps its own code and line
    assert exit_info.value.code == 1 and capsys.readouterr().err.startswith("error: experiment")


def test_unknown_backbone_is_one_line_exit_2(workdir, small_comp):
    result = runner.invoke(app, ["features", "--backbone", "resnet5", "--data", str(small_comp)])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown backbone 'resnet5'; choose one of:" in result.stderr and "xception" in result.stderr
    assert "Traceback" not in result.output


def test_missing_data_folder_is_exit_2(workdir):
    result = runner.invoke(app, ["features", "--backbone", "resnet50", "--weights", "none"])
    assert result.exit_code == 2
    assert "data folder data does not exist" in result.stderr


def test_invalid_experiment_name_is_refused(workdir, small_comp):
    result = runner.invoke(app, ["features", "--exp", "../escape", "--data", str(small_comp)])
    assert result.exit_code == 2 and "invalid experiment name" in result.stderr


@pytest.mark.slow  # runs a Keras backbone over photos
def test_features_then_cached_and_the_experiment_remembers_its_data(workdir, small_comp):
    args = ["features", "--backbone", "resnet50", "--weights", "none", "--image-size", "32", "-q"]
    first = runner.invoke(app, [*args, "--data", str(small_comp)])
    assert first.exit_code == 0, first.output
    assert "NOT pretrained" in first.stderr
    assert "resnet50_32: 20 train + 6 test images -> 2048 features" in first.stdout
    assert (workdir / "experiments/default/features/resnet50_32/manifest.json").exists()
    second = runner.invoke(app, args)  # no --data: the experiment remembers it
    assert second.exit_code == 0, second.output
    assert "resnet50_32: cached (20 train + 6 test rows, 2048 features)" in second.stdout


def test_a_busy_experiment_refuses_with_exit_3(workdir, small_comp):
    with experiment_lock(experiment_dir("default"), command="features --backbone x"):
        result = runner.invoke(app, ["features", "--backbone", "resnet50", "--weights", "none",
                                     "--image-size", "32", "--data", str(small_comp)])
    assert result.exit_code == 3
    assert "is busy (pid" in result.stderr


def test_backbones_layers_lists_the_cuts_with_their_widths(workdir):
    result = runner.invoke(app, ["backbones", "--layers", "efficientnet_lite0"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("efficientnet_lite0 at 320 px: layers worth cutting at")
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert list(rows) == [f"block{i}{x}" for i in range(1, 8) for x in ("", "x") if (i, x) != (7, "x")] + ["last"]
    assert rows["block5"] == ["20x20", "112"] and rows["last"][:2] == ["10x10", "1280"]
    bad = runner.invoke(app, ["backbones", "--layers", "resnet5"])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "unknown backbone 'resnet5'" in bad.stderr


@pytest.mark.slow  # runs a Keras backbone over photos
def test_features_layer_writes_one_named_set_per_layer(workdir, small_comp):
    args = ["features", "-b", "efficientnet_lite0", "--image-size", "64", "-q", "--data", str(small_comp)]
    first = runner.invoke(app, [*args, "--layer", "block4", "--layer", "last"])
    assert first.exit_code == 0, first.output
    assert "efficientnet_lite0_64-block4: 20 train + 6 test images -> 80 features" in first.stdout
    assert "efficientnet_lite0_64: 20 train + 6 test images -> 1280 features" in first.stdout
    again = runner.invoke(app, [*args, "--layer", "block4"])
    assert again.exit_code == 0 and "efficientnet_lite0_64-block4: cached" in again.stdout
    unknown = runner.invoke(app, [*args, "--layer", "block42"])
    assert unknown.exit_code == 2 and unknown.stderr.count("\n") == 1
    assert "unknown layer 'block42' of efficientnet_lite0; choose one of: block1" in unknown.stderr
    named = runner.invoke(app, [*args, "--layer", "block4", "--layer", "block5", "--name", "mine"])
    assert named.exit_code == 2 and "--name names one feature set" in named.stderr
    assert sorted(p.name for p in (workdir / "experiments/default/features").iterdir()) == [
        "efficientnet_lite0_64", "efficientnet_lite0_64-block4"]
