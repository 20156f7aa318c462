"""SIGKILL at any moment leaves nothing that a later run could take for finished; the re-run resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import make_competition
from kaggle_kit.features import load_features

FEATURE_ARGS = ["features", "--backbone", "resnet50", "--weights", "none", "--image-size", "32",
                "--batch-size", "4", "--shard-size", "8", "--workers", "1", "--quiet"]


def kit(args, cwd: Path, **kw):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "kaggle_kit", *args], cwd=cwd, env=env,
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


def test_sigkill_during_features_then_resume_equals_a_clean_run(tmp_path):
    comp = make_competition(tmp_path / "comp", n_per_class=30, n_test=12)
    finish(kit([*FEATURE_ARGS, "--data", str(comp), "--exp", "clean"], tmp_path))

    out = tmp_path / "experiments" / "killed" / "features" / "resnet50_32"
    proc = kit([*FEATURE_ARGS, "--data", str(comp), "--exp", "killed"], tmp_path)
    kill_when(proc, lambda: len(list(out.glob(".partial/*/*.npz"))) >= 2)
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.npy")), "no array may exist before the extraction is finished"

    finish(kit([*FEATURE_ARGS, "--exp", "killed"], tmp_path))  # the experiment remembers --data
    resumed = load_features(out)
    clean = load_features(tmp_path / "experiments" / "clean" / "features" / "resnet50_32")
    assert resumed.manifest["images_computed"] < 72  # finished shards were not redone
    for split in ("train", "test"):
        np.testing.assert_allclose(resumed.arrays[split], clean.arrays[split], rtol=1e-4, atol=1e-4)
    assert resumed.train_ids == clean.train_ids and resumed.test_ids == clean.test_ids
