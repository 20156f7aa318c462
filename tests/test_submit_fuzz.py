"""Property-based: random ids, predictions, clip levels, names and CSV contents never crash submission writing
or validation: the result is a valid file or a one-line KitError, never another exception."""

import csv
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kaggle_kit import submit as S
from kaggle_kit.artifacts import KitError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Test ids come from file names (anything but '/' and NUL, never empty) or from sample_submission.csv (any text):
# commas, quotes, newlines, spaces, 'NA', 'nan', leading zeros and non-ASCII must all survive the round trip.
# Lone surrogates (undecodable file names) are left out: discovery ignores such files (tests/test_messy.py).
id_text = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
    st.sampled_from(["NA", "nan", "NaN", "null", "", " ", "007", "1.0", "1e5", '"', ",", "\n", "\r", "id", "#1"]),
    st.integers(-10, 10**9).map(str),
)
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
probabilities = st.one_of(st.floats(0, 1), floats)
clips = st.one_of(st.floats(1e-6, 0.4999), floats)
metrics = st.one_of(st.sampled_from(S.METRICS), st.text(max_size=8))


@pytest.fixture(scope="module")
def folder():
    root = Path(tempfile.mkdtemp())
    yield root
    shutil.rmtree(root)


def fresh_path(root: Path) -> Path:
    out = Path(tempfile.mkdtemp(dir=root)) / "submissions" / "fuzz.csv"
    return out


def read_back(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


@FUZZ
@given(ids=st.lists(id_text, max_size=20), p=st.lists(probabilities, max_size=20), metric=metrics, clip=clips)
def test_labels_then_write_give_a_valid_file_or_a_kit_error(folder, ids, p, metric, clip):
    p = np.array(p[: len(ids)] + [0.5] * (len(ids) - len(p)), dtype=np.float64)
    path = fresh_path(folder)
    try:
        S.check_finite(p, ids)
        labels = S.make_labels(p, metric=metric, clip=clip)
        S.write_submission(path, ids, labels, metric=metric, clip=clip)
    except KitError as exc:
        assert "\n" not in str(exc)
        assert not path.exists() and not list(path.parent.glob("*")) if path.parent.exists() else True
        return
    # Written: only for unique ids, finite predictions, a known metric and a valid clip.
    assert len(set(ids)) == len(ids) and np.isfinite(p).all() and metric in S.METRICS
    rows = read_back(path)
    assert rows[0] == ["id", "label"]
    assert [r[0] for r in rows[1:]] == list(ids)
    written = np.array([float(r[1]) for r in rows[1:]])
    if metric == "logloss":
        lo, hi = S.grid_clip(clip)
        assert ((written >= lo) & (written <= hi)).all()
        assert np.allclose(written, np.clip(p, lo, hi), atol=1e-6)
    elif metric == "auc":
        np.testing.assert_array_equal(written, p)  # in full: only the order counts, and no tie is made
    else:
        assert set(written.tolist()) <= {0.0, 1.0}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left behind


@FUZZ
@given(ids=st.lists(id_text, max_size=12), labels=st.lists(floats, max_size=12), metric=metrics, clip=clips)
def test_write_refuses_any_label_outside_the_range(folder, ids, labels, metric, clip):
    """Labels straight to write_submission (skipping make_labels): validation must catch every bad one."""
    labels = np.array(labels[: len(ids)] + [0.5] * (len(ids) - len(labels)), dtype=np.float64)
    path = fresh_path(folder)
    try:
        S.write_submission(path, ids, labels, metric=metric, clip=clip)
    except KitError as exc:
        assert "\n" not in str(exc) and not path.exists()
        return
    lo, hi = S.grid_clip(clip) if metric == "logloss" else (0, 1)
    assert metric in S.METRICS and len(set(ids)) == len(ids)
    rounded = np.round(labels, S.DECIMALS)
    assert np.isfinite(labels).all() and ((rounded >= lo) & (rounded <= hi)).all()
    if metric == "accuracy":
        assert set(rounded.tolist()) <= {0.0, 1.0}


csv_text = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.lists(st.tuples(id_text, st.one_of(floats.map(repr), st.text(max_size=6))), max_size=8).map(
        lambda rows: ("id,label\n" + "".join(f"{i},{v}\n" for i, v in rows)).encode("utf-8")),
)


@FUZZ
@given(content=csv_text, ids=st.lists(id_text, max_size=8, unique=True), metric=metrics, clip=clips)
def test_validation_of_any_file_passes_or_raises_a_kit_error(folder, content, ids, metric, clip):
    path = fresh_path(folder)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    try:
        S.validate_submission(path, ids=ids, metric=metric, clip=clip)
    except KitError as exc:
        assert "\n" not in str(exc)
        return
    # Passed: the file really holds these ids in order under the header, with labels in range.
    rows = read_back(path)
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == list(ids)


@FUZZ
@given(name=st.one_of(st.none(), st.text(max_size=300), st.text(max_size=20).map(lambda s: s + ".csv"),
                      st.text(min_size=150, max_size=300).map(lambda s: s + ".csv")),
       exp=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True))
def test_submission_path_stays_in_submissions_or_refuses(folder, name, exp):
    from datetime import datetime

    try:
        path = S.submission_path(exp=exp, name=name, now=datetime(2026, 1, 2), root=folder)
    except KitError as exc:
        assert exc.code == 2 and "\n" not in str(exc)
        return
    assert path.parent == folder / S.SUBMISSIONS_DIR and path.name.endswith(".csv")
    assert (folder / S.SUBMISSIONS_DIR / path.name).resolve().parent == (folder / S.SUBMISSIONS_DIR).resolve()
    # The name is usable: a file can be written under it (atomically, through a longer temporary name).
    labels = np.array([0.5])
    try:
        S.write_submission(path, ["1"], labels, metric="logloss", clip=0.01)
    except KitError as exc:
        assert "already exists" in str(exc)
        return
    assert read_back(path) == [["id", "label"], ["1", "0.500000"]]
    path.unlink()
