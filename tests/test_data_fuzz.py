"""Property-based: random file names, ids and sample_submission contents never crash discovery."""

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaggle_kit.artifacts import KitError
from kaggle_kit.data import discover

_PNG = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
names = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
                min_size=1, max_size=30).filter(lambda s: s not in (".", ".."))
train_names = st.one_of(
    names,
    st.builds(lambda c, n, e: f"{c}.{n}.{e}", st.sampled_from(["cat", "dog", "Cat", "bird", "x"]),
              st.integers(0, 10**6), st.sampled_from(["jpg", "JPG", "png", "jpeg", "txt", ""])),
)
test_names = st.one_of(names, st.builds(lambda n, e: f"{n}.{e}", st.integers(-5, 10**6),
                                        st.sampled_from(["jpg", "png", "gif", ""])))


def _write(folder: Path, name: str) -> None:
    try:
        (folder / name).write_bytes(_PNG)
    except OSError:  # a name the file system refuses (too long in bytes, ...): not the kit's concern
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(train=st.lists(train_names, max_size=12), test=st.lists(test_names, max_size=8),
       sample=st.one_of(st.none(), st.binary(max_size=200), st.text(max_size=200)),
       positive=st.sampled_from(["dog", "cat", "bird"]))
def test_discovery_returns_a_dataset_or_a_kit_error(train, test, sample, positive):
    root = Path(tempfile.mkdtemp())
    try:
        (root / "train").mkdir()
        (root / "test").mkdir()
        for n in train:
            _write(root / "train", n)
        for n in test:
            _write(root / "test", n)
        if sample is not None:
            data = sample if isinstance(sample, bytes) else sample.encode()
            (root / "sample_submission.csv").write_bytes(data)
        try:
            ds = discover(root, positive=positive)
        except KitError as exc:
            assert exc.code == 2 and "\n" not in str(exc)
            return
        assert ds.n_train == len(ds.y) == len(ds.train_ids) and ds.n_test == len(ds.test_ids) > 0
        assert len(set(ds.test_ids)) == ds.n_test
        assert set(np.unique(ds.y)) == {0, 1}
        assert all((ds.root / f).is_file() for f in ds.train_files + ds.test_files)
    finally:
        shutil.rmtree(root)


# Gaps of the test above: image names with odd stems ('²', '١٢', spaces) are rare there (a free name has no image
# extension), names that are not UTF-8 (bytes from a zip made on another system), the class-folder layout and
# test images in subfolders never occur.
image_names = st.builds(lambda s, e: f"{s}.{e}", names, st.sampled_from(["jpg", "PNG", "jpeg"]))
raw_names = st.binary(min_size=1, max_size=16).filter(lambda b: b"/" not in b and b"\0" not in b).map(
    lambda b: b + b".jpg")
odd_names = st.one_of(image_names, raw_names, st.sampled_from(["\u00b2.jpg", "\u0661\u0662.jpg", " 7.jpg", "7 .jpg"]))


def _write_raw(folder: Path, name) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        raw = name if isinstance(name, bytes) else os.fsencode(name)
        with open(os.path.join(os.fsencode(folder), raw), "wb") as fh:
            fh.write(_PNG)
    except OSError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(folders=st.booleans(), train=st.lists(st.tuples(st.sampled_from(["cat", "dog", "caf\u00e9"]), odd_names),
                                             min_size=1, max_size=10),
       test=st.lists(st.tuples(st.one_of(st.just(""), names), odd_names), max_size=8))
def test_discovery_of_odd_names_gives_text_ids_or_a_kit_error(folders, train, test):
    root = Path(tempfile.mkdtemp())
    try:
        (root / "test").mkdir()
        for cls, name in train:
            if folders:
                _write_raw(root / "train" / cls, name)
            else:
                _write_raw(root / "train", f"{cls}.{len(name)}.jpg" if isinstance(name, bytes) else f"{cls}.{name}")
        for sub, name in test:
            _write_raw(root / "test" / sub if sub not in (".", "..") else root / "test", name)
        (root / "train").mkdir(exist_ok=True)
        try:
            ds = discover(root, positive="dog")
        except KitError as exc:
            assert exc.code == 2 and "\n" not in str(exc)
            return
        for i in ds.train_ids + ds.test_ids + ds.train_files + ds.test_files:
            i.encode("utf-8")  # every id can be written into the submission CSV
        assert len(set(ds.test_ids)) == ds.n_test > 0 and set(np.unique(ds.y)) == {0, 1}
        assert all((ds.root / f).is_file() for f in ds.train_files + ds.test_files)
        ds.image_list_hash()
    finally:
        shutil.rmtree(root)
