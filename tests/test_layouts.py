"""The three layouts a competition can come in (Redux names, class folders, a labels CSV), built from the same
photos: the same feature rows and labels whichever layout holds them, the sample submission's header, ids and
order copied into the submission, the AUC path end to end, and every bad case of the CSV layout in one line."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from conftest import MINI, SHARED, SQUEEZENET_H5
from kaggle_kit.artifacts import KitError
from kaggle_kit.cli import app
from kaggle_kit.data import discover
from kaggle_kit.store import load_features

runner = CliRunner()
N_PER_CLASS, N_TEST = 9, 6
FEATURES = ["features", "--backbone", "squeezenet", "--weights", str(SQUEEZENET_H5), "--image-size", "64", "-q"]
MALARIA = SHARED / "data" / "malaria-mini"


def hex_id(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:16]


@dataclass
class Competition:
    """A competition folder and, for each of its training and test ids, the mini photo it holds."""

    root: Path
    photo: dict[str, str]  # dataset id -> 'train/cat.1.jpg' / 'test/3.jpg' of the mini competition


def _sample_order(n_test: int) -> list[int]:
    return random.Random(7).sample(range(1, n_test + 1), n_test)  # not numeric: the order must be copied


def make_redux(dest: Path, *, n_per_class: int = N_PER_CLASS, n_test: int = N_TEST) -> Competition:
    (dest / "train").mkdir(parents=True)
    (dest / "test").mkdir()
    photo = {}
    for cls in ("cat", "dog"):
        for i in range(1, n_per_class + 1):
            shutil.copy(MINI / "train" / f"{cls}.{i}.jpg", dest / "train" / f"{cls}.{i}.jpg")
            photo[f"{cls}.{i}"] = f"train/{cls}.{i}.jpg"
    for j in range(1, n_test + 1):
        shutil.copy(MINI / "test" / f"{j}.jpg", dest / "test" / f"{j}.jpg")
        photo[str(j)] = f"test/{j}.jpg"
    (dest / "sample_submission.csv").write_text("id,label\n" + "".join(f"{j},0.5\n" for j in _sample_order(n_test)))
    return Competition(dest, photo)


def make_folders(dest: Path, *, n_per_class: int = N_PER_CLASS, n_test: int = N_TEST) -> Competition:
    (dest / "test").mkdir(parents=True)
    photo = {}
    for cls in ("cat", "dog"):
        (dest / "train" / cls).mkdir(parents=True)
        for i in range(1, n_per_class + 1):
            shutil.copy(MINI / "train" / f"{cls}.{i}.jpg", dest / "train" / cls / f"photo{i}.jpg")
            photo[f"{cls}/photo{i}"] = f"train/{cls}.{i}.jpg"
    for j in range(1, n_test + 1):
        shutil.copy(MINI / "test" / f"{j}.jpg", dest / "test" / f"{j}.jpg")
        photo[str(j)] = f"test/{j}.jpg"
    (dest / "sample_submission.csv").write_text("id,label\n" + "".join(f"{j},0.5\n" for j in _sample_order(n_test)))
    return Competition(dest, photo)


def make_csv(dest: Path, *, n_per_class: int = N_PER_CLASS, n_test: int = N_TEST) -> Competition:
    """``train/<hex>.jpg`` (every third in a nested folder), ``train_labels.csv`` = ``id,has_dog`` in shuffled
    order (ids with the extension for odd rows, without for even ones), ``test/<hex>.jpg``,
    ``sample_submission.csv`` = ``id,has_dog`` and the answer key ``test_labels.csv`` in the same columns."""
    (dest / "train" / "part2").mkdir(parents=True)
    (dest / "test").mkdir()
    photo, rows = {}, []
    for k, (cls, i) in enumerate((c, i) for c in ("cat", "dog") for i in range(1, n_per_class + 1)):
        h = hex_id(f"{cls}.{i}")
        rel = f"part2/{h}.jpg" if k % 3 == 2 else f"{h}.jpg"
        shutil.copy(MINI / "train" / f"{cls}.{i}.jpg", dest / "train" / rel)
        image_id = f"{h}.jpg" if k % 2 else h
        photo[image_id] = f"train/{cls}.{i}.jpg"
        rows.append((image_id, int(cls == "dog")))
    random.Random(3).shuffle(rows)
    (dest / "train_labels.csv").write_text("id,has_dog\n" + "".join(f"{i},{y}\n" for i, y in rows))
    test_labels = dict(line.split(",") for line in (MINI / "test_labels.csv").read_text().splitlines()[1:])
    order = _sample_order(n_test)
    for j in order:
        h = hex_id(f"test.{j}")
        shutil.copy(MINI / "test" / f"{j}.jpg", dest / "test" / f"{h}.jpg")
        photo[h] = f"test/{j}.jpg"
    hexes = [hex_id(f"test.{j}") for j in order]
    (dest / "sample_submission.csv").write_text("id,has_dog\n" + "".join(f"{h},0.5\n" for h in hexes))
    (dest / "test_labels.csv").write_text("id,has_dog\n" + "".join(
        f"{hex_id(f'test.{j}')},{test_labels[str(j)]}\n" for j in order))
    return Competition(dest, photo)


MAKERS = {"kaggle": make_redux, "folders": make_folders, "csv": make_csv}


def invoke(args: list[str]):
    result = runner.invoke(app, args)
    assert "Traceback" not in result.output
    return result


def invoke_ok(args: list[str]):
    result = invoke(args)
    assert result.exit_code == 0, f"{args}: {result.output}"
    return result


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "lock"}


# ------------------------------------------------------------------------------------------------ fixtures
@dataclass
class Work:
    root: Path
    comps: dict[str, Competition]
    features: dict[str, object]  # CliRunner results of 'features' per layout


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Work:
    root = tmp_path_factory.mktemp("layouts")
    comps = {layout: make(root / layout) for layout, make in MAKERS.items()}
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for layout, comp in comps.items():
            metric = ["--metric", "auc"] if layout == "csv" else []
            results[layout] = invoke_ok([*FEATURES, "--data", str(comp.root), "--exp", layout, *metric])
    return Work(root=root, comps=comps, features=results)


@pytest.fixture
def in_work(work, monkeypatch) -> Work:
    monkeypatch.chdir(work.root)
    return work


# ---------------------------------------------------------------------------------------- the same photos
def test_each_layout_is_detected_and_reads_the_same_photos_and_labels(work):
    by_photo = {}
    for layout, comp in work.comps.items():
        ds = discover(comp.root, positive="dog" if layout != "csv" else None)
        assert ds.layout == layout and not ds.warnings, ds.warnings
        assert ds.positive == ("1" if layout == "csv" else "dog")
        by_photo[layout] = ({comp.photo[i]: int(y) for i, y in zip(ds.train_ids, ds.y)},
                            [comp.photo[i] for i in ds.test_ids])
        assert all(Path(comp.root / f).is_file() for f in ds.train_files + ds.test_files)
    assert by_photo["csv"] == by_photo["kaggle"] == by_photo["folders"]
    assert [f"test/{j}.jpg" for j in _sample_order(N_TEST)] == by_photo["csv"][1]  # the sample submission's order


def test_feature_rows_and_labels_are_identical_to_the_redux_layouts(work):
    sets = {layout: load_features(work.root / "experiments" / layout / "features" / "squeezenet_64")
            for layout in work.comps}
    for layout in ("csv", "folders"):
        for split, ids in (("train", "train_ids"), ("test", "test_ids")):
            ref = {work.comps["kaggle"].photo[i]: row for i, row in zip(getattr(sets["kaggle"], ids),
                                                                        sets["kaggle"].arrays[split])}
            mine = {work.comps[layout].photo[i]: row for i, row in zip(getattr(sets[layout], ids),
                                                                       sets[layout].arrays[split])}
            assert mine.keys() == ref.keys()
            for photo, row in mine.items():
                np.testing.assert_array_equal(row, ref[photo], err_msg=f"{layout} {photo}")
        labels = {work.comps[layout].photo[i]: y for i, y in zip(sets[layout].train_ids, sets[layout].y)}
        assert labels == {work.comps["kaggle"].photo[i]: y for i, y in zip(sets["kaggle"].train_ids, sets["kaggle"].y)}
    assert len(sets["csv"].train_ids) == 2 * N_PER_CLASS and int(sets["csv"].y.sum()) == N_PER_CLASS


def test_the_experiment_remembers_how_the_csv_layout_was_read(work):
    remembered = json.loads((work.root / "experiments" / "csv" / "experiment.json").read_text())
    assert remembered["layout"] == "csv" and remembered["id_col"] == "id" and remembered["target_col"] == "has_dog"
    assert remembered["labels"] == str(work.comps["csv"].root.resolve() / "train_labels.csv")
    assert remembered["metric"] == "auc" and remembered["positive"] == "1"
    old = json.loads((work.root / "experiments" / "kaggle" / "experiment.json").read_text())
    assert old["layout"] == "kaggle" and old["metric"] == "logloss" and "labels" not in old


# ---------------------------------------------------------------------------------- the AUC path, the file
def test_auc_path_end_to_end_copies_the_sample_submission(in_work):
    comp = in_work.comps["csv"]
    cv = invoke_ok(["cv", "--exp", "csv", "--folds", "3", "--head", "logreg", "-q"])  # nothing repeated
    assert cv.stdout.splitlines()[1].split()[1:3] == ["OOF", "AUC"]  # the experiment's metric first
    blend = invoke_ok(["blend", "--exp", "csv"])
    assert "cross-fitted OOF AUC by method" in blend.stdout
    m = json.loads(Path("experiments/csv/blend/manifest.json").read_text())
    assert m["metric"] == "auc" and m["clip"] is None and m["calibration"]["kind"] == "none"
    assert [s["step"] for s in m["ladder"]] == ["best single model", "blend"]
    oof = np.load("experiments/csv/blend/oof.npy").astype(np.float64)
    folds = np.load("experiments/csv/folds/plan.npy")[0]
    y = np.load("experiments/csv/folds/y.npy")
    expected = np.mean([roc_auc_score(y[folds == f], oof[folds == f]) for f in range(3)])
    assert m["ladder"][-1]["oof_auc"] == pytest.approx(expected, abs=1e-6)  # scikit-learn's AUC, fold by fold

    submit = invoke_ok(["submit", "--exp", "csv", "--name", "csv.csv"])
    assert "'id,has_dog'" in submit.stdout and "(auc)" in submit.stdout
    lines = Path("submissions/csv.csv").read_text().splitlines()
    sample = (comp.root / "sample_submission.csv").read_text().splitlines()
    assert lines[0] == sample[0] == "id,has_dog"
    assert [line.split(",")[0] for line in lines[1:]] == [line.split(",")[0] for line in sample[1:]]
    scores = np.array([float(line.split(",")[1]) for line in lines[1:]])
    assert ((scores >= 0) & (scores <= 1)).all() and len(set(scores)) > 1

    report = invoke_ok(["report", "--exp", "csv", "-q"])
    assert f"OOF AUC {m['ladder'][-1]['oof_auc']:.5f} (the blend, cross-fitted)" in report.stdout
    assert "No leaderboard estimate" in report.stdout and "≈ rank" not in report.stdout
    page = Path("experiments/csv/report.html").read_text(encoding="utf-8")
    assert "metric: AUC" in page and "<th>OOF AUC</th>" in page and "ROC curve" in page
    assert "clip_curve" not in report.stdout


def test_a_log_loss_experiment_on_the_redux_layout_keeps_its_estimate(in_work):
    invoke_ok(["cv", "--exp", "kaggle", "--folds", "3", "--head", "logreg", "-q"])
    blend = invoke_ok(["blend", "--exp", "kaggle"])
    assert "chosen clip" in blend.stdout
    report = invoke_ok(["report", "--exp", "kaggle", "-q"])
    assert "on the final Dogs vs. Cats Redux leaderboard" in report.stdout
    submit = invoke_ok(["submit", "--exp", "kaggle", "--name", "redux.csv"])
    lines = Path("submissions/redux.csv").read_text().splitlines()
    assert lines[0] == "id,label" and [line.split(",")[0] for line in lines[1:]] == [str(j) for j in
                                                                                     _sample_order(N_TEST)]
    assert "(logloss)" in submit.stdout


def test_label_rows_images_and_sample_ids_that_do_not_match_are_warned_and_the_prior_fills_in(in_work, tmp_path):
    comp = make_csv(tmp_path / "messy")
    labels = (comp.root / "train_labels.csv").read_text().splitlines()
    labels += ["ghost1,1", "ghost2,0"]  # label rows without an image
    (comp.root / "train_labels.csv").write_text("\n".join(labels) + "\n")
    shutil.copy(MINI / "train" / "cat.30.jpg", comp.root / "train" / "stray.jpg")  # an image without a row
    shutil.copy(MINI / "test" / "30.jpg", comp.root / "test" / "extra.jpg")  # a test image not in the sample
    sample = (comp.root / "sample_submission.csv").read_text().splitlines()
    sample.insert(3, "lost.jpg,0.5")  # a sample id without a test image
    (comp.root / "sample_submission.csv").write_text("\n".join(sample) + "\n")

    features = invoke_ok([*FEATURES, "--data", str(comp.root), "--exp", "messy"])
    err = features.stderr
    assert "warning: 2 of 20 rows of train_labels.csv have no image" in err and "'ghost1', 'ghost2'" in err
    assert "warning: 1 images in" in err and "have no row in train_labels.csv ('train/stray.jpg')" in err
    assert "warning: 1 of 7 ids of sample_submission.csv have no image" in err and "'lost.jpg'" in err
    assert "not in sample_submission.csv ('test/extra.jpg'); they are left out" in err
    invoke_ok(["cv", "--exp", "messy", "--folds", "3", "--head", "logreg", "-q"])
    invoke_ok(["blend", "--exp", "messy"])
    submit = invoke_ok(["submit", "--exp", "messy", "--name", "messy.csv"])
    assert "1 ids of the sample submission have no test image" in submit.stderr
    rows = [line.split(",") for line in Path("submissions/messy.csv").read_text().splitlines()]
    assert rows[0] == ["id", "has_dog"]
    assert [r[0] for r in rows[1:]] == [line.split(",")[0] for line in sample[1:]]  # 'lost.jpg' in its place
    lost = dict(rows[1:])["lost.jpg"]
    assert float(lost) == pytest.approx(np.load("experiments/messy/folds/y.npy").mean(), abs=1e-6)  # the prior
    assert "extra" not in {r[0] for r in rows}


# ------------------------------------------------------------------------------------------- the bad cases
def _rewrite(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def _two_ids_one_image(lines):
    first = lines[1].split(",")[0]
    other = first[:-4] if first.endswith(".jpg") else f"{first}.jpg"
    return lines + [f"{other},{lines[1].split(',')[1]}"]


BAD = {
    "duplicate id": (lambda c: _rewrite(c / "train_labels.csv", lambda ls: ls + [ls[1]]), [],
                     "lists id .* more than once (1 duplicate rows)"),
    "one image named twice": (lambda c: _rewrite(c / "train_labels.csv", _two_ids_one_image), [],
                              "both name the image"),
    "target not binary": (lambda c: _rewrite(c / "train_labels.csv",
                                             lambda ls: ls[:1] + [ls[1].split(",")[0] + ",2"] + ls[2:]), [],
                          "column 'has_dog' of .* holds 3 values ('0', '1', '2')"),
    "empty target": (lambda c: _rewrite(c / "train_labels.csv",
                                        lambda ls: ls[:1] + [ls[1].split(",")[0] + ","] + ls[2:]), [],
                     "1 rows of .* have no 'has_dog'"),
    "class names need --positive": (lambda c: _rewrite(c / "train_labels.csv", lambda ls: ls[:1] + [
        r.replace(",1", ",dog").replace(",0", ",cat") for r in ls[1:]]), [],
        "holds the class names 'cat' and 'dog'; pass --positive"),
    "unknown --id-col": (lambda c: None, ["--id-col", "image"],
                         "has no column 'image' (columns: 'id', 'has_dog'); pass --id-col"),
    "unknown --target-col": (lambda c: None, ["--target-col", "label"],
                             "has no column 'label' (columns: 'id', 'has_dog'); pass --target-col"),
    "target column ambiguous": (lambda c: (
        _rewrite(c / "train_labels.csv", lambda ls: [ls[0] + ",is_cute"] + [r + ",1" if k % 2 else r + ",0"
                                                                          for k, r in enumerate(ls[1:])]),
        _rewrite(c / "sample_submission.csv", lambda ls: ["id,prediction"] + ls[1:])), [],
        "cannot tell the target column .*'has_dog', 'is_cute' all hold two values; pass --target-col"),
    "id column ambiguous": (lambda c: (
        _rewrite(c / "train_labels.csv", lambda ls: ["file,has_dog,name"] + [r + "," + r.split(",")[0]
                                                                            for r in ls[1:]])), [],
        "cannot tell the id column .*'file', 'name' all name images"),
    "no row has an image": (lambda c: _rewrite(c / "train_labels.csv", lambda ls: ls[:1] + [
        f"nothing{k},{r.split(',')[1]}" for k, r in enumerate(ls[1:])]), [],
        "none of the 18 ids in column 'id' of .* names an image"),
    "no sample id has an image": (lambda c: _rewrite(c / "sample_submission.csv", lambda ls: ls[:1] + [
        f"gone{k},0.5" for k in range(len(ls) - 1)]), [], "none of the 6 ids of .*sample_submission.csv names an image"),
    "labels file not a CSV": (lambda c: (c / "train_labels.csv").write_bytes(b"\xff\xfe\x00garbage\x00\x81"), [],
                              "is not a readable CSV file"),
    "--layout csv without a labels file": (lambda c: (c / "train_labels.csv").unlink(), ["--layout", "csv"],
                                           "the csv layout needs a labels file"),
    "sample submission of three columns": (lambda c: _rewrite(c / "sample_submission.csv",
                                                              lambda ls: [r + ",x" for r in ls]), [],
                                           "has the header 'id,has_dog,x'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_case_is_one_line_and_loses_nothing(in_work, tmp_path, case):
    """A bad copy of the CSV competition, read into the finished experiment 'csv': exit 2, one 'error:' line
    that names the problem (every '.*'-separated part of the fragment, in order), and every file of the
    experiment as it was."""
    breakage, args, fragment = BAD[case]
    comp = tmp_path / "bad"
    shutil.copytree(in_work.comps["csv"].root, comp)
    breakage(comp)
    before = snapshot(Path("experiments/csv"))
    result = invoke([*FEATURES, "--data", str(comp), "--exp", "csv", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    at = 0
    for part in fragment.split(".*"):
        at = result.stderr.find(part, at)
        assert at >= 0, f"{part!r} not in {result.stderr!r}"
    assert snapshot(Path("experiments/csv")) == before


# ------------------------------------------------------------------------------------------------ the demo
@pytest.mark.slow
@pytest.mark.parametrize("layout", list(MAKERS))
def test_demo_runs_on_each_layout(tmp_path, monkeypatch, layout):
    comp = MAKERS[layout](tmp_path / layout, n_per_class=8, n_test=6)
    if layout != "csv":  # an answer key in the Redux layouts too
        truth = dict(line.split(",") for line in (MINI / "test_labels.csv").read_text().splitlines()[1:])
        (comp.root / "test_labels.csv").write_text("id,label\n" + "".join(f"{j},{truth[str(j)]}\n"
                                                                          for j in range(1, 7)))
    monkeypatch.chdir(tmp_path)
    result = invoke_ok(["demo", "--data", str(comp.root), "--folds", "3", "--head", "logreg"])
    lines = result.stdout.strip().splitlines()
    submission = Path(lines[-1])
    header = (comp.root / "sample_submission.csv").read_text().splitlines()[0]
    assert submission.read_text().splitlines()[0] == header
    assert any(line.startswith("scored against the answer key ") and "AUC" in line for line in lines)


# --------------------------------------------------------------------------------------- malaria as a CSV
def malaria_as_csv(dest: Path) -> tuple[Path, dict[str, int]]:
    """Rewrite ../shared/data/malaria-mini (class folders) into the CSV layout: ``train/<hex>.png`` (half in
    ``train/batch2/``), ``train.csv`` = ``id,slide,label`` with the class names (``--positive Parasitized``),
    ``test/<hex>.png`` and ``sample_submission.csv`` = ``id,label`` (ids with the extension) in the original
    test order. Returns the folder and, for the end only, the answer key by new id."""
    (dest / "train" / "batch2").mkdir(parents=True)
    (dest / "test").mkdir()
    rows = []
    for k, path in enumerate(sorted((MALARIA / "train").glob("*/*.png"))):
        h = hex_id(path.as_posix())
        shutil.copy(path, dest / "train" / ("batch2" if k % 2 else "") / f"{h}.png")
        slide = path.name.split("_")[0]
        rows.append(f"{h},{slide},{path.parent.name}")
    random.Random(0).shuffle(rows)
    (dest / "train.csv").write_text("id,slide,label\n" + "\n".join(rows) + "\n")
    sample = (MALARIA / "sample_submission.csv").read_text().splitlines()[1:]
    new_ids = {}
    for line in sample:
        old = line.split(",")[0]
        new_ids[old] = f"{hex_id('test/' + old)}.png"
        shutil.copy(MALARIA / "test" / f"{old}.png", dest / "test" / new_ids[old])
    (dest / "sample_submission.csv").write_text("id,label\n" + "".join(f"{new_ids[line.split(',')[0]]},0.5\n"
                                                                       for line in sample))
    key = {}

    def answer_key() -> dict[str, int]:  # read once, at the end
        if not key:
            for line in (MALARIA / "test_labels.csv").read_text().splitlines()[1:]:
                old, y = line.split(",")
                key[new_ids[old]] = int(y)
        return key

    return dest, answer_key


@pytest.mark.slow
def test_malaria_as_a_csv_competition_runs_end_to_end_under_auc(tmp_path, monkeypatch, capsys):
    comp, answer_key = malaria_as_csv(tmp_path / "malaria")
    monkeypatch.chdir(tmp_path)
    features = invoke_ok(["features", "--data", str(comp), "--backbone", "squeezenet", "--weights",
                          str(SQUEEZENET_H5), "--positive", "Parasitized", "--metric", "auc", "-q"])
    assert "1600 train + 400 test images" in features.stdout and not features.stderr.count("warning")
    invoke_ok(["cv", "--folds", "5", "--head", "logreg", "-q"])
    blend = invoke_ok(["blend"])
    submit = invoke_ok(["submit", "--name", "malaria.csv"])
    assert "'id,label'" in submit.stdout
    m = json.loads(Path("experiments/default/blend/manifest.json").read_text())
    assert m["metric"] == "auc" and m["clip"] is None
    lines = Path("submissions/malaria.csv").read_text().splitlines()
    ids = [line.split(",")[0] for line in lines[1:]]
    assert ids == [line.split(",")[0] for line in (comp / "sample_submission.csv").read_text().splitlines()[1:]]
    key = answer_key()
    y = np.array([key[i] for i in ids])
    p = np.array([float(line.split(",")[1]) for line in lines[1:]])
    test_auc = roc_auc_score(y, p)
    with capsys.disabled():
        print(f"\nmalaria-mini as a CSV competition, squeezenet + logreg, metric AUC: OOF AUC "
              f"{m['ladder'][-1]['oof_auc']:.4f} ({m['method']}), test AUC {test_auc:.4f} on {len(ids)} images")
    assert test_auc > 0.9, blend.stdout


# ------------------------------------------------------------------------------------ reading the CSV layout
def test_csv_ids_may_carry_the_folder_and_targets_may_read_as_numbers(tmp_path):
    comp = make_csv(tmp_path / "c")
    _rewrite(comp.root / "train_labels.csv", lambda ls: ["image,target,extra"] + [
        f"train/{i},{'1.0' if y == '1' else '0.0'},{k}" for k, (i, y) in enumerate(r.split(",") for r in ls[1:])])
    (comp.root / "sample_submission.csv").rename(comp.root / "old_sample.csv")  # nothing to take the names from
    ds = discover(comp.root)
    assert ds.id_col == "image" and ds.target_col == "target" and ds.classes == ("0", "1")
    assert {comp.photo[i.removeprefix("train/")]: int(y) for i, y in zip(ds.train_ids, ds.y)} == {
        f"train/{c}.{i}.jpg": int(c == "dog") for c in ("cat", "dog") for i in range(1, N_PER_CLASS + 1)}
    assert ds.submission_header == ("id", "label") and not ds.has_sample_submission
    flipped = discover(comp.root, positive="0")  # --positive names the 0 value: labels flip
    np.testing.assert_array_equal(flipped.y, 1 - ds.y)
    assert flipped.classes == ("1", "0")


def test_labels_given_by_path_and_both_default_files_refused(tmp_path, monkeypatch):
    comp = make_csv(tmp_path / "c")
    elsewhere = tmp_path / "my_labels.csv"
    (comp.root / "train_labels.csv").rename(elsewhere)
    with pytest.raises(KitError, match="has only class 'part2'.*pass --labels FILE"):  # no labels: folders
        discover(comp.root)
    ds = discover(comp.root, labels=elsewhere)
    assert ds.layout == "csv" and ds.labels_file == str(elsewhere.resolve()) and ds.n_train == 2 * N_PER_CLASS
    shutil.copy(elsewhere, comp.root / "train.csv")
    shutil.copy(elsewhere, comp.root / "train_labels.csv")
    with pytest.raises(KitError, match="holds both train.csv and train_labels.csv; pass --labels FILE"):
        discover(comp.root)
    assert discover(comp.root, labels="train.csv").labels_file == str((comp.root / "train.csv").resolve())


def test_an_experiment_json_without_the_new_keys_still_reads_its_data(tmp_path):
    from kaggle_kit.artifacts import new_manifest, write_json_atomic
    from kaggle_kit.data import discover_remembered
    from kaggle_kit.store import EXPERIMENT_FORMAT, load_experiment

    comp = make_redux(tmp_path / "r")
    exp_dir = tmp_path / "experiments" / "old"
    write_json_atomic(exp_dir / "experiment.json", new_manifest(EXPERIMENT_FORMAT, data_dir=str(comp.root),
                                                                positive="dog"))
    remembered = load_experiment(exp_dir)
    assert remembered.metric is None and remembered.layout is None and remembered.labels is None
    ds = discover_remembered(remembered)
    assert ds.layout == "kaggle" and ds.n_train == 2 * N_PER_CLASS
