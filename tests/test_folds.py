"""folds: the plan is a stratified partition, reproducible from its seed, and replaced only when asked."""

from __future__ import annotations

import numpy as np
import pytest

from kaggle_kit.artifacts import KitError, read_json, save_npy_atomic, sha256_array, sha256_json, write_json_atomic
from kaggle_kit.folds import ensure_plan, file_groups, make_plan
from kaggle_kit.store import load_plan


def labels(n: int = 503, positive: float = 0.37, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < positive).astype(np.int8)


@pytest.mark.parametrize("n_folds,repeats", [(2, 1), (5, 3), (10, 1)])
def test_plan_partitions_rows_and_keeps_the_class_ratio(n_folds, repeats):
    y = labels()
    plan = make_plan(y, n_folds=n_folds, repeats=repeats, seed=4)
    assert plan.shape == (repeats, len(y)) and plan.dtype == np.int8
    for r in range(repeats):
        # every row in exactly one fold: the folds' sizes add up and every fold is used
        sizes = np.bincount(plan[r], minlength=n_folds)
        assert sizes.sum() == len(y) and len(sizes) == n_folds and sizes.min() > 0
        assert sizes.max() - sizes.min() <= 2
        for f in range(n_folds):
            assert abs(y[plan[r] == f].mean() - y.mean()) < 0.02


def test_same_seed_same_plan_other_seed_other_plan():
    y = labels()
    a = make_plan(y, n_folds=5, repeats=2, seed=7)
    assert np.array_equal(a, make_plan(y, n_folds=5, repeats=2, seed=7))
    assert not np.array_equal(a, make_plan(y, n_folds=5, repeats=2, seed=8))
    assert not np.array_equal(a[0], a[1])  # repeats are different splits


def test_impossible_plans_say_what_to_do():
    y = np.array([0] * 20 + [1] * 3, dtype=np.int8)
    with pytest.raises(KitError, match="--folds 5 is more than the 3 training images of the smaller class; "
                                       "use --folds 3 or fewer"):
        make_plan(y, n_folds=5, repeats=1, seed=0)
    with pytest.raises(KitError, match="--folds 1"):
        make_plan(y, n_folds=1, repeats=1, seed=0)


def ids(n: int) -> tuple[list[str], list[str]]:
    return [f"r{i}" for i in range(n)], ["t1", "t2"]


def test_plan_is_kept_until_settings_or_data_change(tmp_path):
    y = labels(60)
    train_ids, test_ids = ids(60)
    plan, status = ensure_plan(tmp_path, y=y, train_ids=train_ids, test_ids=test_ids, n_folds=None, repeats=None,
                               seed=None)
    assert status == "new" and (plan.n_folds, plan.repeats, plan.seed) == (5, 1, 0)
    manifest = tmp_path / "folds" / "manifest.json"
    mtime = manifest.stat().st_mtime_ns
    same, status = ensure_plan(tmp_path, y=y, train_ids=train_ids, test_ids=test_ids, n_folds=5, repeats=None,
                               seed=None)
    assert status == "kept" and same.sha256 == plan.sha256 and manifest.stat().st_mtime_ns == mtime
    other, status = ensure_plan(tmp_path, y=y, train_ids=train_ids, test_ids=test_ids, n_folds=None,
                                repeats=None, seed=3)
    assert status == "replaced" and other.sha256 != plan.sha256
    assert other.n_folds == 5  # the settings not given carry over
    assert load_plan(tmp_path).sha256 == other.sha256
    relabelled, status = ensure_plan(tmp_path, y=1 - y, train_ids=train_ids, test_ids=test_ids, n_folds=None,
                                     repeats=None, seed=None)
    assert status == "replaced" and relabelled.manifest["y_sha256"] != other.manifest["y_sha256"]
    _, status = ensure_plan(tmp_path, y=1 - y, train_ids=train_ids, test_ids=["t1"], n_folds=None, repeats=None,
                            seed=None)
    assert status == "replaced"


def test_a_plan_file_that_does_not_match_its_manifest_is_refused(tmp_path):
    y = labels(60)
    ensure_plan(tmp_path, y=y, train_ids=ids(60)[0], test_ids=ids(60)[1], n_folds=3, repeats=1, seed=0)
    np.save(tmp_path / "folds" / "plan.npy", np.zeros((1, 60), dtype=np.int8))
    with pytest.raises(KitError, match="do not match its manifest.*re-run 'kaggle-kit cv'"):
        load_plan(tmp_path)


def _rewrite(exp_dir, name: str, value) -> None:
    """Replace one file of ``<exp>/folds/`` and re-hash it in the manifest, as a faulty writer would."""
    out = exp_dir / "folds"
    manifest = read_json(out / "manifest.json")
    if name == "ids.json":
        write_json_atomic(out / name, value)
        manifest["ids_sha256"] = sha256_json(value)
    else:
        save_npy_atomic(out / name, value)
        manifest[{"plan.npy": "plan_sha256", "y.npy": "y_sha256"}[name]] = sha256_array(value)
    write_json_atomic(out / "manifest.json", manifest)


@pytest.mark.parametrize("name, value, message", [
    ("plan.npy", np.zeros((2, 60), dtype=np.int8), r"plan.npy is int8 \(2, 60\), expected integers \(1, 60\)"),
    ("plan.npy", np.zeros((1, 60)), r"plan.npy is float64 \(1, 60\), expected integers"),
    ("plan.npy", np.full((1, 60), 3, dtype=np.int8), r"plan.npy holds folds outside 0..2"),
    ("y.npy", np.full(60, 2, dtype=np.int8), r"y.npy is \(60,\), expected \(60,\) of 0/1 labels"),
    ("ids.json", {"train_ids": ids(60)[0], "test_ids": ["t1"]}, "ids.json does not hold 60 train_ids and 2 test_ids"),
    ("ids.json", ["not", "a", "mapping"], "ids.json does not hold 60 train_ids and 2 test_ids"),
])
def test_a_plan_that_does_not_fit_its_manifest_is_refused_in_one_line(tmp_path, name, value, message):
    y = labels(60)
    ensure_plan(tmp_path, y=y, train_ids=ids(60)[0], test_ids=ids(60)[1], n_folds=3, repeats=1, seed=0)
    _rewrite(tmp_path, name, value)
    with pytest.raises(KitError, match=message) as err:
        load_plan(tmp_path)
    assert "\n" not in str(err.value) and str(err.value).endswith("; re-run 'kaggle-kit cv'")


def test_a_manifest_lacking_keys_is_refused(tmp_path):
    ensure_plan(tmp_path, y=labels(60), train_ids=ids(60)[0], test_ids=ids(60)[1], n_folds=3, repeats=1, seed=0)
    path = tmp_path / "folds" / "manifest.json"
    manifest = read_json(path)
    del manifest["n_test"], manifest["y_sha256"]
    write_json_atomic(path, manifest)
    with pytest.raises(KitError, match=r"lacks n_test, y_sha256; re-run 'kaggle-kit cv'$"):
        load_plan(tmp_path)


def test_the_loaded_plan_is_the_written_one(tmp_path):
    y = labels(60)
    train_ids, test_ids = ids(60)
    written, _ = ensure_plan(tmp_path, y=y, train_ids=train_ids, test_ids=test_ids, n_folds=3, repeats=2, seed=1)
    loaded = load_plan(tmp_path)
    assert np.array_equal(loaded.plan, written.plan) and np.array_equal(loaded.y, y) and loaded.y.dtype == np.int8
    assert (loaded.train_ids, loaded.test_ids) == (tuple(train_ids), tuple(test_ids))
    assert loaded.manifest == written.manifest and loaded.describe() == "3 folds x 2 repeats, seed 1"


# ------------------------------------------------------------------------------------------- group-wise plans
def patient_files(n_patients: int = 23, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Cell images named like malaria-mini's: C<patient>P<n>thinF_..., some patients with both classes."""
    rng = np.random.default_rng(seed)
    files, y = [], []
    for p in range(n_patients):
        share = rng.choice([0.0, 1.0, 0.5])
        for c in range(int(rng.integers(3, 15))):
            label = int(rng.random() < share)
            files.append(f"train/{'Parasitized' if label else 'Uninfected'}/50x50C{p}P{p + 40}thinF_IMG_{c}.png")
            y.append(label)
    return files, np.asarray(y, dtype=np.int8)


def test_file_groups_come_from_the_file_name_and_bad_patterns_say_so():
    files, _ = patient_files()
    groups = file_groups(files, r"^(.*?)[Tt]hin")
    assert groups[0] == "50x50C0P40" and len(set(groups)) == 23  # the class folder is not part of the name
    assert file_groups(["a/x-1.png"], r"x-\d") == ["x-1"]  # no capture group: the whole match
    with pytest.raises(KitError) as info:
        file_groups(files + ["train/Uninfected/other.png"], r"^(.*?)[Tt]hin")
    assert "\n" not in str(info.value) and "finds no group in the file name 'other.png'" in str(info.value)
    with pytest.raises(KitError, match=r"--groups '\(' is not a regular expression"):
        file_groups(files, "(")


def test_a_group_wise_plan_never_splits_a_group_and_is_reproducible():
    files, y = patient_files()
    groups = file_groups(files, r"^(.*?)thin")
    plan = make_plan(y, n_folds=5, repeats=2, seed=1, groups=groups)
    for r in range(2):
        for g in set(groups):
            assert len({plan[r, i] for i, h in enumerate(groups) if h == g}) == 1
        assert set(plan[r]) == set(range(5))
    np.testing.assert_array_equal(plan, make_plan(y, n_folds=5, repeats=2, seed=1, groups=groups))
    by_row = make_plan(y, n_folds=5, repeats=1, seed=1)[0]
    assert any(len({by_row[i] for i, h in enumerate(groups) if h == g}) > 1 for g in set(groups))
    with pytest.raises(KitError, match="--folds 5 is more than the 3 groups --groups finds"):
        make_plan(y[:30], n_folds=5, repeats=1, seed=0, groups=["a", "b", "c"] * 10)


def test_the_groups_pattern_is_part_of_the_plan_and_kept_until_changed(tmp_path):
    files, y = patient_files()
    train_ids, test_ids = [str(i) for i in range(len(y))], ["t1", "t2"]
    common = dict(y=y, train_ids=train_ids, test_ids=test_ids, n_folds=None, repeats=None, seed=None,
                  train_files=files)
    by_row, status = ensure_plan(tmp_path, **common)
    assert status == "new" and by_row.groups is None and "groups" not in by_row.manifest
    grouped, status = ensure_plan(tmp_path, groups=r"^(.*?)thin", **common)
    assert status == "replaced" and grouped.groups == r"^(.*?)thin" and grouped.n_groups == 23
    assert "grouped by --groups '^(.*?)thin' (23 groups)" in grouped.describe()
    kept, status = ensure_plan(tmp_path, **common)  # no --groups: the plan's own
    assert status == "kept" and load_plan(tmp_path).groups == r"^(.*?)thin"
    again, status = ensure_plan(tmp_path, groups="none", **common)
    assert status == "replaced" and again.groups is None and again.sha256 == by_row.sha256
