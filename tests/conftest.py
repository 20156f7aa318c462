"""Shared fixtures: the real mini competition in ../shared, and small copies of it made per test."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
MINI = SHARED / "data" / "dogs-vs-cats-mini"
SQUEEZENET_H5 = SHARED / "weights" / "squeezenet_v1.1" / "squeezenet_v1.1_imagenet_notop.h5"


@pytest.fixture(scope="session")
def mini() -> Path:
    if not (MINI / "train").is_dir():
        pytest.fail(f"the mini competition is missing at {MINI}; ../shared must sit beside the checkout")
    return MINI


def make_competition(dest: Path, *, n_per_class: int, n_test: int, sample_submission: bool = False,
                     empty: bool = False) -> Path:
    """Copy a few real photos into ``dest`` in Kaggle's layout (never into the repository); ``empty``: empty
    files of the same names instead, for stages that never decode an image (cv, blend, submit)."""
    (dest / "train").mkdir(parents=True)
    (dest / "test").mkdir()
    names = [f"train/{cls}.{i}.jpg" for cls in ("cat", "dog") for i in range(1, n_per_class + 1)]
    for name in names + [f"test/{i}.jpg" for i in range(1, n_test + 1)]:
        if empty:
            (dest / name).touch()
        else:
            shutil.copy(MINI / name, dest / name)
    if sample_submission:
        ids = list(range(n_test, 0, -1))
        (dest / "sample_submission.csv").write_text("id,label\n" + "".join(f"{i},0.5\n" for i in ids))
    return dest


@pytest.fixture
def small_comp(tmp_path) -> Path:
    return make_competition(tmp_path / "comp", n_per_class=10, n_test=6)


def write_cv_model(exp_dir: Path, model: str, plan, oof: np.ndarray, test: np.ndarray, *, head: str = "logreg",
                   features: Sequence[str] = ("synthetic",), seconds: float = 1.0):
    """Write ``<exp>/cv/<model>/`` through the store's writer, as the cv stage would: ``oof`` (repeats, n_train)
    and ``test`` (n_test,) predictions on the fold plan ``plan``, scored as cv scores them (NaN rows left out).
    The feature sets are not checked (no feature keys): they need not exist."""
    from kaggle_kit.artifacts import sha256_array, sha256_json
    from kaggle_kit.cv import score_oof
    from kaggle_kit.store import write_cv_result

    oof = np.asarray(oof, dtype=np.float32)
    usable = np.isfinite(oof).all(axis=0)
    return write_cv_result(
        exp_dir, model, plan=plan, oof=oof, test=test, head=head, features=features, feature_keys={},
        key=sha256_json({"model": model, "oof": sha256_array(oof), "test": sha256_array(np.asarray(test))}),
        params={}, tta_train=False, tta_predict=False, scores=score_oof(plan.y, oof, plan.plan, usable),
        seconds=seconds, n_excluded_train=int((~usable).sum()), n_excluded_test=0)


def intercept_keras_weights_requests(monkeypatch) -> list[tuple[str, str | None]]:
    """For the rest of the test, keras.applications' requests for a weights file are recorded, as (file name,
    hash), and answered without a file: nothing is downloaded and the loading is skipped, so a model built with
    ``weights="imagenet"`` keeps its random initial weights. Returns the list the requests go into."""
    from kaggle_kit.keras_loader import load_keras

    keras = load_keras()
    from keras.src.utils import file_utils

    requests: list[tuple[str, str | None]] = []

    def get_file(fname=None, origin=None, **kwargs):
        requests.append((fname, kwargs.get("file_hash")))
        return f"/nonexistent/{fname}"

    monkeypatch.setattr(file_utils, "get_file", get_file)
    monkeypatch.setattr(keras.Model, "load_weights", lambda self, *args, **kwargs: None)
    return requests


def cli_params(command_line: str) -> dict:
    """The options ``kaggle-kit ...`` would run with, as the CLI's parser gives them (choices as their enums);
    raises click's UsageError where the CLI would refuse the line (an unknown option or choice)."""
    import shlex

    import typer

    from kaggle_kit.cli import app

    words = shlex.split(command_line)
    assert words[0] == "kaggle-kit"
    group = typer.main.get_command(app)
    with group.make_context("kaggle-kit", words[1:]) as ctx:
        command = group.get_command(ctx, words[1])
        assert command is not None, f"no command {words[1]!r}"
        with command.make_context(words[1], words[2:], parent=ctx) as sub:
            return {"command": words[1], **sub.params}
