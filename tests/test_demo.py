import functools
import hashlib
import math
import shutil
import urllib.error
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from kaggle_kit import demo
from kaggle_kit.artifacts import KitError
from kaggle_kit.cli import app
from kaggle_kit.data import discover

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-mini"
runner = CliRunner()


def _key(root: Path) -> dict[str, int]:
    lines = (root / demo.ANSWER_KEY).read_text().splitlines()
    assert lines[0] == "id,label"
    return {i: int(y) for i, y in (line.split(",") for line in lines[1:])}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("no network")


# ------------------------------------------------------------------------------ the synthetic competition
def test_synthetic_competition_is_kaggle_layout_with_an_answer_key(tmp_path):
    root = demo.make_synthetic_competition(tmp_path / "syn", n_per_class=6, n_test=5, seed=1)
    ds = discover(root)
    assert ds.layout == "kaggle" and ds.classes == ("cat", "dog") and ds.positive == "dog"
    assert ds.n_train == 12 and int(ds.y.sum()) == 6
    assert ds.test_ids == ("1", "2", "3", "4", "5") and ds.has_sample_submission and not ds.warnings
    key = _key(root)
    assert list(key) == list(ds.test_ids) and sorted(key.values()) == [0, 0, 0, 1, 1]
    for f in ds.train_files + ds.test_files:
        image = cv2.imread(str(root / f))
        assert image is not None and 200 <= image.shape[0] <= 360 and 240 <= image.shape[1] <= 400


def test_synthetic_competition_is_a_function_of_its_seed(tmp_path):
    a, b, c = (demo.make_synthetic_competition(tmp_path / name, n_per_class=2, n_test=2, seed=seed)
               for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert [_sha(a / f) for f in files] == [_sha(b / f) for f in files]
    assert [_sha(a / f) for f in files] != [_sha(c / f) for f in files]


def test_synthetic_classes_differ_visibly():
    rng = np.random.default_rng(0)
    blue_minus_red = {
        positive: np.mean([(lambda im: im[..., 0].mean() - im[..., 2].mean())(
            demo.synthetic_photo(rng, positive=positive, height=64, width=80)) for _ in range(20)])
        for positive in (False, True)
    }
    assert blue_minus_red[True] > 20 > -20 > blue_minus_red[False]


# ----------------------------------------------------------------------------- the cats_and_dogs sample
def _fake_archive(path: Path) -> dict[str, tuple[str, int]]:
    """A small cats_and_dogs_filtered.zip of real photos; returns validation photo hash -> (name, label)."""
    validation = {}
    with zipfile.ZipFile(path, "w") as zf:
        for split, numbers in (("train", (1, 2, 3)), ("validation", (4, 5))):
            for cls in ("cat", "dog"):
                for n in numbers:
                    source = MINI / "train" / f"{cls}.{n}.jpg"
                    number = n + 1000 * (split == "validation")
                    zf.write(source, f"cats_and_dogs_filtered/{split}/{cls}s/{cls}.{number}.jpg")
                    if split == "validation":
                        validation[_sha(source)] = (source.name, int(cls == "dog"))
    return validation


def test_the_archive_is_arranged_in_kaggle_layout_with_a_true_answer_key(tmp_path, monkeypatch):
    archive = tmp_path / "fake.zip"
    validation = _fake_archive(archive)
    monkeypatch.setattr(demo, "download_file", lambda url, dest, *, timeout: shutil.copyfile(archive, dest))
    cache = tmp_path / "cache"
    root = demo.fetch_cats_and_dogs(cache, seed=0, progress=lambda msg: None)

    ds = discover(root)
    assert root == cache / "cats_and_dogs_filtered" and ds.layout == "kaggle"
    assert ds.train_ids == ("cat.1", "cat.2", "cat.3", "dog.1", "dog.2", "dog.3")
    for cls in ("cat", "dog"):
        for n in (1, 2, 3):
            assert _sha(root / "train" / f"{cls}.{n}.jpg") == _sha(MINI / "train" / f"{cls}.{n}.jpg")
    assert ds.test_ids == ("1", "2", "3", "4") and ds.has_sample_submission
    key = _key(root)
    assert list(key) == list(ds.test_ids)
    assert sorted((validation[_sha(root / "test" / f"{i}.jpg")][1], y) for i, y in key.items()) == \
        [(0, 0), (0, 0), (1, 1), (1, 1)]
    assert not (cache / "cats_and_dogs_filtered.zip").exists()
    assert sorted(p.name for p in cache.iterdir()) == ["cats_and_dogs_filtered"]

    monkeypatch.setattr(demo, "download_file", _no_network)  # a finished arrangement is reused, offline too
    assert demo.fetch_cats_and_dogs(cache, seed=0, progress=lambda msg: None) == root


def test_a_damaged_archive_is_deleted_and_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "download_file", lambda url, dest, *, timeout: dest.write_bytes(b"not a zip"))
    with pytest.raises(KitError, match="cannot be used .* it was deleted"):
        demo.fetch_cats_and_dogs(tmp_path, progress=lambda msg: None)
    assert list(tmp_path.iterdir()) == []


def test_the_download_is_atomic(tmp_path, monkeypatch):
    class Broken:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n=-1):
            raise TimeoutError("timed out")

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Broken())
    with pytest.raises(TimeoutError):
        demo.download_file("https://example.invalid/x.zip", tmp_path / "x.zip")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- the offline fallback
def test_without_network_the_demo_falls_back_to_a_synthetic_smoke_run(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "download_file", _no_network)
    prepared = demo.prepare_demo_data(tmp_path / "cache", n_per_class=3, n_test=2, progress=lambda msg: None)
    assert prepared.smoke and prepared.root == tmp_path / "cache" / "synthetic"
    assert prepared.note.startswith("SMOKE RUN: cannot get cats_and_dogs_filtered (no network)")
    assert "\n" not in prepared.note
    assert discover(prepared.root).n_train == 6 and _key(prepared.root)

    monkeypatch.setattr(demo, "make_synthetic_competition", lambda *a, **k: pytest.fail("not reused"))
    assert demo.prepare_demo_data(tmp_path / "cache", n_per_class=3, n_test=2).root == prepared.root


# ---------------------------------------------------------------------------------------------- scoring
def test_score_against_an_answer_key(tmp_path):
    key = tmp_path / "key.csv"
    key.write_text("id,label\n1,1\n2,0\n3,1\n4,0\n")
    perfect, half, unknown = (tmp_path / n for n in ("perfect.csv", "half.csv", "unknown.csv"))
    perfect.write_text("id,label\n4,0.000001\n3,0.999999\n2,0.000001\n1,0.999999\n")
    half.write_text("id,label\n1,0.5\n2,0.5\n3,0.5\n4,0.5\n")
    unknown.write_text("id,label\n1,0.5\n2,0.5\n3,0.5\n5,0.5\n")
    best = demo.score_submission(perfect, key)
    assert best.n == 4 and best.accuracy == 1.0 and best.logloss < 1e-5
    assert demo.score_submission(half, key).logloss == pytest.approx(math.log(2))
    with pytest.raises(KitError, match="different ids .1 only in the key, 1 only in the submission"):
        demo.score_submission(unknown, key)


def test_demo_refuses_a_bad_experiment_name_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "--exp", "../escape", "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "invalid experiment name" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and not (tmp_path / "cache").exists()


@pytest.mark.slow  # runs EfficientNet-Lite0 over photos
# ------------------------------------------------------------------------------------------ end to end
def test_smoke_run_end_to_end(tmp_path, monkeypatch):
    """The whole offline demo on a tiny synthetic competition: labelled, scored, the submission path last."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "download_file", _no_network)
    monkeypatch.setattr(demo, "prepare_demo_data",
                        functools.partial(demo.prepare_demo_data, n_per_class=15, n_test=6))
    result = runner.invoke(app, ["demo", "--cache", str(tmp_path / "cache"), "--head", "logreg"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("SMOKE RUN:")
    submission = Path(lines[-1])
    assert submission.parent == Path("submissions") and submission.name.startswith("SMOKE-RUN-demo-smoke-")
    rows = submission.read_text().splitlines()
    assert rows[0] == "id,label" and [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 7)]
    assert any(line.startswith("OOF log loss (5-fold, cross-fitted): best single model ") for line in lines)
    assert any(line.startswith("scored against the answer key ") for line in lines)
    assert (tmp_path / "experiments" / "demo-smoke" / "blend" / "manifest.json").exists()
