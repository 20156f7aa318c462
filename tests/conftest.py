"""Shared fixtures: the real mini competition in ../shared, and small copies of it made per test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
