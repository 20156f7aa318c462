import os
import random
from pathlib import Path

import numpy as np
import pytest

from conftest import make_competition
from kaggle_kit.artifacts import KitError
from kaggle_kit.data import discover


def test_kaggle_layout_on_the_real_mini_competition(mini):
    ds = discover(mini)
    assert ds.layout == "kaggle"
    assert (ds.n_train, ds.n_test) == (1600, 400)
    assert ds.classes == ("cat", "dog") and ds.positive == "dog"
    assert int(ds.y.sum()) == 800
    assert all(ds.y[i] == (f.split("/")[-1].startswith("dog")) for i, f in enumerate(ds.train_files))
    # sample_submission.csv exists and its order wins; there it is numeric 1..400
    assert ds.has_sample_submission and ds.test_ids == tuple(str(i) for i in range(1, 401))


def test_test_ids_in_numeric_order_without_sample_submission(tmp_path):
    comp = make_competition(tmp_path / "c", n_per_class=2, n_test=12)
    ds = discover(comp)
    assert ds.test_ids == tuple(str(i) for i in range(1, 13))  # '2' before '10'
    assert ds.train_ids == ("cat.1", "cat.2", "dog.1", "dog.2")


def test_sample_submission_order_wins(tmp_path):
    comp = make_competition(tmp_path / "c", n_per_class=2, n_test=5, sample_submission=True)
    ds = discover(comp)
    assert ds.test_ids == ("5", "4", "3", "2", "1")
    assert ds.test_files == tuple(f"test/{i}.jpg" for i in ds.test_ids)


def test_class_folder_layout_and_positive_class(tmp_path):
    comp = make_competition(tmp_path / "k", n_per_class=3, n_test=2)
    root = tmp_path / "folders"
    for cls, label in (("cat", "Cats"), ("dog", "Dogs")):
        (root / "train" / label).mkdir(parents=True)
        for i in range(1, 4):
            os.link(comp / "train" / f"{cls}.{i}.jpg", root / "train" / label / f"img{i}.jpg")
    (root / "train" / "Cats" / "extra.png").write_bytes((comp / "train" / "cat.1.jpg").read_bytes())
    (root / "test").mkdir()
    os.link(comp / "test" / "1.jpg", root / "test" / "1.jpg")
    ds = discover(root, positive="Cats")
    assert ds.layout == "folders"
    assert ds.classes == ("Dogs", "Cats")
    assert ds.n_train == 7 and int(ds.y.sum()) == 4  # PNG included
    assert all(y == (f.split("/")[1] == "Cats") for f, y in zip(ds.train_files, ds.y))
    with pytest.raises(KitError, match="positive class 'dog' is not among"):
        discover(root)


def test_order_does_not_depend_on_listing_order(tmp_path, monkeypatch):
    comp = make_competition(tmp_path / "c", n_per_class=5, n_test=7)
    reference = discover(comp)
    real_iterdir = Path.iterdir

    def shuffled(self):
        items = list(real_iterdir(self))
        random.Random(len(items)).shuffle(items)
        return iter(items[::-1])

    monkeypatch.setattr(Path, "iterdir", shuffled)
    again = discover(comp)
    assert again.train_files == reference.train_files
    assert again.test_files == reference.test_files
    np.testing.assert_array_equal(again.y, reference.y)


def test_image_list_hash_changes_when_a_file_is_touched(small_comp):
    before = discover(small_comp).image_list_hash()
    assert discover(small_comp).image_list_hash() == before
    f = small_comp / "train" / "dog.3.jpg"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert discover(small_comp).image_list_hash() != before


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda c: __import__("shutil").rmtree(c / "train"), "no training folder"),
        (lambda c: __import__("shutil").rmtree(c / "test"), "no test folder"),
        (lambda c: [p.unlink() for p in (c / "train").glob("dog.*")], "only class 'cat'"),
        (lambda c: (c / "sample_submission.csv").write_text("id,label\n98,0.5\n99,0.5\n"),
         "none of the 2 ids of .*sample_submission.csv names an image"),
    ],
)
def test_unusable_folders_stop_with_code_2(small_comp, breakage, message):
    breakage(small_comp)
    with pytest.raises(KitError, match=message) as info:
        discover(small_comp)
    assert info.value.code == 2


def test_sample_submission_ids_without_an_image_are_kept_for_the_prior(small_comp):
    """One unknown id: warned and kept (the submission gives it the training prior); the others are read."""
    (small_comp / "sample_submission.csv").write_text("id,label\n2,0.5\n99,0.5\n1,0.5\n")
    ds = discover(small_comp)
    assert ds.test_ids == ("2", "1") and ds.submission_ids == ("2", "99", "1") and ds.missing_test_ids == ("99",)
    assert any("1 of 3 ids of sample_submission.csv have no image" in w and "'99'" in w for w in ds.warnings)
    assert any("4 images in" in w and "not in sample_submission.csv" in w for w in ds.warnings)  # 3..6 left out
